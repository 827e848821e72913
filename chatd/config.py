"""chatd configuration: ``chatd.toml`` plus ``CHATD_*`` environment overrides.

Every key lives in one declarative table, :data:`KEYS` (name, type, default,
range check). Loading is three steps:

1. collect settings from the defaults, the file and the environment, each
   strictly typed (a TOML string where an integer is expected is refused, an
   environment string is converted to the key's type);
2. range-check the merged values;
3. build the frozen attrs classes through their named ``from_values``
   constructors.

Any mistake raises :class:`ConfigError` with one line naming the key at fault
(and the environment variable, when one was the source), because a server
that silently ignores a misspelt key runs with a configuration nobody wrote.
"""

from __future__ import annotations

import math
import os
import socket
import tomllib
from collections.abc import Callable, Mapping
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
    "PresenceConfig",
    "PushConfig",
    "ReceiptsConfig",
    "SecurityConfig",
    "ServerConfig",
    "config_from_mapping",
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

_T = TypeVar("_T", str, int, float, bool)


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


# --- the table ----------------------------------------------------------------


@attrs.frozen
class Key:
    """One configuration key: where it lives, its type, default and range check.

    ``section`` is ``""`` for top-level keys. ``kind`` is the Python type of
    the value; ``float`` keys also accept TOML integers and store a float;
    ``tuple`` keys are lists of strings (see :data:`Strings`).
    """

    section: str
    name: str
    kind: type[str] | type[int] | type[float] | type[bool] | type[tuple[str, ...]]
    default: Value
    check: Check | None = None

    @property
    def dotted(self) -> str:
        """The name used in messages: ``server.port``, or ``data_dir``."""
        return f"{self.section}.{self.name}" if self.section else self.name

    @property
    def env_var(self) -> str:
        """The overriding variable: ``CHATD_SERVER_PORT``, ``CHATD_DATA_DIR``."""
        return ENV_PREFIX + self.dotted.replace(".", "_").upper()


KEYS: tuple[Key, ...] = (
    Key("", "data_dir", str, "./var", _not_empty),
    Key("", "node_name", str, ""),  # empty: host name + pid, computed at load
    Key("server", "host", str, "127.0.0.1", _not_empty),
    Key("server", "port", int, 8080, _between(0, 65535)),
    Key("server", "heartbeat_s", int, 30, _positive),
    Key("server", "drain_timeout_s", float, 10.0, _positive),
    Key("server", "outgoing_queue", int, 256, _positive),
    Key("server", "send_stall_s", float, 5.0, _positive),
    Key("server", "head_timeout_s", float, 10.0, _positive),
    Key("server", "body_timeout_s", float, 30.0, _positive),
    Key("server", "keepalive_timeout_s", float, 75.0, _positive),
    Key("database", "url", str, ""),  # empty: embedded server under data_dir
    Key("database", "pg_bin_dir", str, ""),  # empty: search for the binaries
    Key("database", "pool_min", int, 2, _positive),
    Key("database", "pool_max", int, 10, _positive),
    Key("database", "embedded_tcp_port", int, -1, _between(-1, 65535)),
    Key("limits", "max_frame_bytes", int, 65536, _positive),
    Key("limits", "max_text_chars", int, 4000, _positive),
    Key("limits", "max_group_members", int, 10000, _positive),
    Key("limits", "media_max_bytes", int, 10485760, _positive),
    Key("limits", "send_rate_per_s", float, 20.0, _positive),
    Key("limits", "send_burst", int, 40, _positive),
    Key("limits", "channel_ops_per_min", float, 30.0, _positive),
    Key("limits", "channel_ops_burst", int, 10, _positive),
    Key("limits", "channel_invites_per_min", float, 120.0, _positive),
    Key("limits", "channel_invites_burst", int, 200, _positive),
    Key("fanout", "inbox_max_members", int, 1000, _positive),
    Key("receipts", "fanout_max_members", int, 50, _positive),
    Key("presence", "timeout_s", int, 60, _positive),
    Key("push", "include_preview", bool, True),
    Key("security", "allowed_origins", tuple, (), _origins),
    Key("security", "login_attempts_per_min", int, 10, _positive),
    Key("security", "token_ttl_days", int, 0, _not_negative),
)

SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(k.section for k in KEYS if k.section))

_BY_DOTTED: dict[str, Key] = {k.dotted: k for k in KEYS}
_BY_ENV_VAR: dict[str, Key] = {k.env_var: k for k in KEYS}


# --- the value classes --------------------------------------------------------


@attrs.frozen
class _Values:
    """Checked values by dotted key, with a typed getter.

    Lets each section class name its fields explicitly in ``from_values``
    instead of being built with ``Cls(**mapping)``.
    """

    by_key: Mapping[str, Value]

    def get(self, dotted: str, kind: type[_T]) -> _T:
        value = self.by_key[dotted]
        if not isinstance(value, kind):  # unreachable once _check_type ran
            raise TypeError(f"{dotted}: {value!r} is not {kind.__name__}")
        return value

    def strings(self, dotted: str) -> Strings:
        value = self.by_key[dotted]
        if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
            raise TypeError(f"{dotted}: {value!r} is not a tuple of strings")
        return value


@attrs.frozen(kw_only=True)
class ServerConfig:
    """``[server]``: where HTTP and WebSocket listen, and per-connection limits."""

    host: str
    port: int
    heartbeat_s: int
    drain_timeout_s: float
    outgoing_queue: int
    send_stall_s: float
    head_timeout_s: float
    body_timeout_s: float
    keepalive_timeout_s: float

    @classmethod
    def from_values(cls, values: _Values) -> ServerConfig:
        return cls(
            host=values.get("server.host", str),
            port=values.get("server.port", int),
            heartbeat_s=values.get("server.heartbeat_s", int),
            drain_timeout_s=values.get("server.drain_timeout_s", float),
            outgoing_queue=values.get("server.outgoing_queue", int),
            send_stall_s=values.get("server.send_stall_s", float),
            head_timeout_s=values.get("server.head_timeout_s", float),
            body_timeout_s=values.get("server.body_timeout_s", float),
            keepalive_timeout_s=values.get("server.keepalive_timeout_s", float),
        )


@attrs.frozen(kw_only=True)
class DatabaseConfig:
    """``[database]``: an external PostgreSQL URL, or the embedded server."""

    url: str
    pg_bin_dir: str
    pool_min: int
    pool_max: int
    embedded_tcp_port: int

    @property
    def embedded(self) -> bool:
        """True when chatd runs its own PostgreSQL under ``data_dir``."""
        return self.url == ""

    @classmethod
    def from_values(cls, values: _Values) -> DatabaseConfig:
        return cls(
            url=values.get("database.url", str),
            pg_bin_dir=values.get("database.pg_bin_dir", str),
            pool_min=values.get("database.pool_min", int),
            pool_max=values.get("database.pool_max", int),
            embedded_tcp_port=values.get("database.embedded_tcp_port", int),
        )


@attrs.frozen(kw_only=True)
class LimitsConfig:
    """``[limits]``: sizes, and the per-user rates (token buckets) of sends,
    channel operations, and users put into channels by someone else."""

    max_frame_bytes: int
    max_text_chars: int
    max_group_members: int
    media_max_bytes: int
    send_rate_per_s: float
    send_burst: int
    channel_ops_per_min: float
    channel_ops_burst: int
    channel_invites_per_min: float
    channel_invites_burst: int

    @classmethod
    def from_values(cls, values: _Values) -> LimitsConfig:
        return cls(
            max_frame_bytes=values.get("limits.max_frame_bytes", int),
            max_text_chars=values.get("limits.max_text_chars", int),
            max_group_members=values.get("limits.max_group_members", int),
            media_max_bytes=values.get("limits.media_max_bytes", int),
            send_rate_per_s=values.get("limits.send_rate_per_s", float),
            send_burst=values.get("limits.send_burst", int),
            channel_ops_per_min=values.get("limits.channel_ops_per_min", float),
            channel_ops_burst=values.get("limits.channel_ops_burst", int),
            channel_invites_per_min=values.get("limits.channel_invites_per_min", float),
            channel_invites_burst=values.get("limits.channel_invites_burst", int),
        )


@attrs.frozen(kw_only=True)
class FanoutConfig:
    """``[fanout]``: above ``inbox_max_members`` members, fan-out on read."""

    inbox_max_members: int

    @classmethod
    def from_values(cls, values: _Values) -> FanoutConfig:
        return cls(inbox_max_members=values.get("fanout.inbox_max_members", int))


@attrs.frozen(kw_only=True)
class ReceiptsConfig:
    """``[receipts]``: above ``fanout_max_members``, live ``receipt_update`` only."""

    fanout_max_members: int

    @classmethod
    def from_values(cls, values: _Values) -> ReceiptsConfig:
        return cls(fanout_max_members=values.get("receipts.fanout_max_members", int))


@attrs.frozen(kw_only=True)
class PresenceConfig:
    """``[presence]``: seconds without a heartbeat before a user is offline."""

    timeout_s: int

    @classmethod
    def from_values(cls, values: _Values) -> PresenceConfig:
        return cls(timeout_s=values.get("presence.timeout_s", int))


@attrs.frozen(kw_only=True)
class PushConfig:
    """``[push]``: whether push notifications carry a message preview."""

    include_preview: bool

    @classmethod
    def from_values(cls, values: _Values) -> PushConfig:
        return cls(include_preview=values.get("push.include_preview", bool))


@attrs.frozen(kw_only=True)
class SecurityConfig:
    """``[security]``: browser origins, login throttling, token lifetime."""

    allowed_origins: Strings
    login_attempts_per_min: int
    token_ttl_days: int

    @classmethod
    def from_values(cls, values: _Values) -> SecurityConfig:
        return cls(
            allowed_origins=values.strings("security.allowed_origins"),
            login_attempts_per_min=values.get("security.login_attempts_per_min", int),
            token_ttl_days=values.get("security.token_ttl_days", int),
        )


@attrs.frozen(kw_only=True)
class Config:
    """The whole configuration, as loaded.

    ``node_name`` is the effective name (computed when the file left it
    empty); ``data_path`` is ``data_dir`` resolved against the working
    directory at load time, so a later ``chdir`` cannot move the data.
    """

    data_dir: str
    node_name: str
    data_path: Path
    server: ServerConfig
    database: DatabaseConfig
    limits: LimitsConfig
    fanout: FanoutConfig
    receipts: ReceiptsConfig
    presence: PresenceConfig
    push: PushConfig
    security: SecurityConfig

    @classmethod
    def from_values(cls, values: _Values) -> Config:
        data_dir = values.get("data_dir", str)
        return cls(
            data_dir=data_dir,
            node_name=values.get("node_name", str) or default_node_name(),
            data_path=Path(data_dir).expanduser().resolve(),
            server=ServerConfig.from_values(values),
            database=DatabaseConfig.from_values(values),
            limits=LimitsConfig.from_values(values),
            fanout=FanoutConfig.from_values(values),
            receipts=ReceiptsConfig.from_values(values),
            presence=PresenceConfig.from_values(values),
            push=PushConfig.from_values(values),
            security=SecurityConfig.from_values(values),
        )

    @classmethod
    def defaults(cls) -> Config:
        """Every key at its default: what loading an empty file gives."""
        return config_from_mapping({})


def default_node_name() -> str:
    """Host name + pid: unique per running process, readable in ``chatd stats``."""
    return f"{socket.gethostname()}-{os.getpid()}"


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
    raise ConfigError(f"config: {where}: expected {_describe(key)}, got {_show(value)}")


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
    complaint = f"config: {where}: expected {_describe(key)}, got {raw!r}"
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
        _check_range(key, merged[key.dotted])
    values = _Values({d: s.value for d, s in merged.items()})
    _check_pool(merged, values)
    return Config.from_values(values)


def _check_range(key: Key, setting: _Setting) -> None:
    if key.check is None:
        return
    complaint = key.check(setting.value)
    if complaint is not None:
        raise ConfigError(f"config: {setting.where}: {complaint}")


def _check_pool(merged: Mapping[str, _Setting], values: _Values) -> None:
    """A pool cannot keep more idle connections than it may open."""
    pool_min = values.get("database.pool_min", int)
    pool_max = values.get("database.pool_max", int)
    if pool_min > pool_max:
        raise ConfigError(
            f"config: {merged['database.pool_min'].where}: must not exceed"
            f" {merged['database.pool_max'].where}, got {pool_min} > {pool_max}"
        )


def _describe(key: Key) -> str:
    """The expected type, in words."""
    return {
        str: "a string",
        int: "an integer",
        float: "a finite number",  # nan and inf are no sensible timeout or rate
        bool: "a boolean (true/false)",
        tuple: "a list of strings",
    }[key.kind]


def _show(value: object) -> str:
    """A value for a one-line message, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
