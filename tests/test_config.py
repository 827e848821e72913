"""Tests for chatd.config: defaults, file, environment, and refusals that name the key."""

from __future__ import annotations

import os
import re
import tomllib
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import attrs
import pytest

from chatd import config as config_module
from chatd.config import (
    DEFAULT_PATHS,
    KEYS,
    SECTIONS,
    Config,
    ConfigError,
    config_from_mapping,
    load_config,
)

SHIPPED = Path(__file__).resolve().parent.parent / "chatd.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "chatd.toml"
    path.write_text(text, encoding="utf-8")
    return path


def refused(match: str) -> AbstractContextManager[Any]:
    """Expect a ConfigError whose one-line message matches."""
    return pytest.raises(ConfigError, match=match)


# --- defaults ---------------------------------------------------------------


def test_defaults() -> None:
    config = Config.defaults()
    assert config.data_dir == "./var"
    assert config.data_path == (Path.cwd() / "var").resolve()
    assert (config.server.host, config.server.port, config.server.heartbeat_s) == (
        "127.0.0.1",
        8080,
        30,
    )
    assert config.server.drain_timeout_s == 10.0
    assert config.server.outgoing_queue == 256
    assert config.server.send_stall_s == 5.0
    assert config.database.url == ""
    assert config.database.embedded
    assert config.database.pg_bin_dir == ""
    assert (config.database.pool_min, config.database.pool_max) == (2, 10)
    assert config.database.embedded_tcp_port == -1
    assert config.limits.max_frame_bytes == 65536
    assert config.limits.max_text_chars == 4000
    assert config.limits.max_group_members == 10000
    assert config.limits.media_max_bytes == 10485760
    assert config.limits.send_rate_per_s == 20
    assert config.limits.send_burst == 40
    assert (config.limits.channel_ops_per_min, config.limits.channel_ops_burst) == (30.0, 10)
    assert (config.limits.channel_invites_per_min, config.limits.channel_invites_burst) == (120.0, 200)
    assert config.fanout.inbox_max_members == 1000
    assert config.receipts.fanout_max_members == 50
    assert config.presence.timeout_s == 60
    assert config.push.include_preview is True
    assert config.security.allowed_origins == ()
    assert config.security.login_attempts_per_min == 10
    assert config.security.token_ttl_days == 0


def test_node_name_default_contains_pid() -> None:
    name = Config.defaults().node_name
    assert name.endswith(f"-{os.getpid()}")
    assert len(name) > len(f"-{os.getpid()}")


def test_classes_are_frozen_and_slotted() -> None:
    config = Config.defaults()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.server.port = 1  # type: ignore[misc]
    assert not hasattr(config.server, "__dict__")
    assert attrs.evolve(config.server, port=1).port == 1


def test_classes_refuse_out_of_range_values() -> None:
    """The range checks are the fields' validators too: no value class holds a bad value."""
    config = Config.defaults()
    with pytest.raises(ValueError, match=r"^ServerConfig\.port: must be between 0 and 65535, got 70000$"):
        attrs.evolve(config.server, port=70000)
    with pytest.raises(ValueError, match=r"^Config\.data_dir: must not be empty$"):
        attrs.evolve(config, data_dir="")
    with pytest.raises(ValueError, match=r"^SecurityConfig\.allowed_origins: "):
        attrs.evolve(config.security, allowed_origins=("https://a.example.com/",))


def test_declared_default_must_have_the_key_type() -> None:
    """A float key declared with an int default would load as an int: refused at import."""

    @attrs.frozen
    class Bad:
        rate: float = config_module._key(20, "Rate.")

    with pytest.raises(TypeError, match=r"^Bad\.rate: default 20 is not float$"):
        list(config_module._keys_of(Bad, "bad"))


def test_env_var_names_derived_from_keys() -> None:
    by_key = {key.dotted: key.env_var for key in KEYS}
    assert by_key["server.port"] == "CHATD_SERVER_PORT"
    assert by_key["limits.channel_ops_per_min"] == "CHATD_LIMITS_CHANNEL_OPS_PER_MIN"
    assert by_key["data_dir"] == "CHATD_DATA_DIR"
    assert len(set(by_key.values())) == len(KEYS)


def test_table_matches_classes() -> None:
    """Every key in the table is a field of its section class, and back."""
    config = Config.defaults()
    for section in SECTIONS:
        fields = {f.name for f in attrs.fields(type(getattr(config, section)))}
        assert fields == {k.name for k in KEYS if k.section == section}
    top = {k.name for k in KEYS if not k.section}
    assert top <= {f.name for f in attrs.fields(Config)}


def test_no_file_gives_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "DEFAULT_PATHS", (tmp_path / "none.toml",))
    assert load_config(environ={}) == Config.defaults()


def test_first_existing_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    second = tmp_path / "etc.toml"
    second.write_text("[server]\nport = 9001\n")
    monkeypatch.setattr(config_module, "DEFAULT_PATHS", (tmp_path / "none.toml", second))
    assert load_config(environ={}).server.port == 9001


def test_default_paths() -> None:
    assert DEFAULT_PATHS == (Path("chatd.toml"), Path("/etc/chatd/chatd.toml"))


# --- the shipped chatd.toml -------------------------------------------------


def test_shipped_file_equals_defaults() -> None:
    assert load_config(SHIPPED, environ={}) == Config.defaults()


def test_shipped_file_lists_every_key() -> None:
    data = tomllib.loads(SHIPPED.read_text(encoding="utf-8"))
    for key in KEYS:
        table = data[key.section] if key.section else data
        assert key.name in table, f"{key.dotted} missing from chatd.toml"
        default = list(key.default) if isinstance(key.default, tuple) else key.default
        assert table[key.name] == default, key.dotted


def shipped_keys() -> list[tuple[str, str]]:
    """(dotted key, the comment lines right above it) for each key line of chatd.toml, in order."""
    found: list[tuple[str, str]] = []
    section, comment = "", []
    for line in SHIPPED.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            comment.append(line[2:])
            continue
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line:
            name = line.split("=", 1)[0].strip()
            found.append((f"{section}.{name}" if section else name, "\n".join(comment)))
        comment = []
    return found


def test_shipped_file_matches_declarations() -> None:
    """chatd.toml lists the declared keys in declaration order, each under its declared comment."""
    assert shipped_keys() == [(key.dotted, key.doc) for key in KEYS]


def test_shipped_file_comments_every_key() -> None:
    """Each key line is preceded by a one-line comment saying what it means."""
    lines = SHIPPED.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            assert lines[number - 1].startswith("# "), line


# --- file values --------------------------------------------------------------


def test_file_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
data_dir = "/srv/chatd"
node_name = "node-a"
[server]
host = "0.0.0.0"
port = 0
drain_timeout_s = 3
send_stall_s = 0.5
[database]
url = "postgresql://chat@db/chat"
pool_min = 1
pool_max = 1
embedded_tcp_port = 5433
[limits]
send_rate_per_s = 2.5
[push]
include_preview = false
[security]
allowed_origins = ["https://chat.example.com", "*"]
token_ttl_days = 30
""",
    )
    config = load_config(path, environ={})
    assert config.data_dir == "/srv/chatd"
    assert config.data_path == Path("/srv/chatd")
    assert config.node_name == "node-a"
    assert (config.server.host, config.server.port) == ("0.0.0.0", 0)
    assert config.server.drain_timeout_s == 3.0
    assert isinstance(config.server.drain_timeout_s, float)
    assert config.server.send_stall_s == 0.5
    assert config.database.url == "postgresql://chat@db/chat"
    assert not config.database.embedded
    assert (config.database.pool_min, config.database.pool_max) == (1, 1)
    assert config.database.embedded_tcp_port == 5433
    assert config.limits.send_rate_per_s == 2.5
    assert config.limits.send_burst == 40  # untouched keys keep their default
    assert config.push.include_preview is False
    assert config.security.allowed_origins == ("https://chat.example.com", "*")
    assert config.security.token_ttl_days == 30


def test_data_path_resolved_at_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = config_from_mapping({"data_dir": "data"})
    monkeypatch.chdir("/")
    assert config.data_path == tmp_path.resolve() / "data"


def test_empty_file_is_valid(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, ""), environ={}) == Config.defaults()


def test_config_from_mapping_ignores_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATD_SERVER_PORT", "1234")
    assert config_from_mapping({}).server.port == 8080


# --- environment --------------------------------------------------------------


def test_env_overrides_section_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9000\n[limits]\nmax_frame_bytes = 2048\n")
    config = load_config(
        path,
        environ={
            "CHATD_SERVER_PORT": "8081",
            "CHATD_LIMITS_MAX_FRAME_BYTES": "1024",
            "CHATD_DATABASE_URL": "postgresql://u@h/d",
        },
    )
    assert config.server.port == 8081  # environment wins over the file
    assert config.limits.max_frame_bytes == 1024
    assert config.database.url == "postgresql://u@h/d"


def test_env_overrides_top_level_keys() -> None:
    config = load_config(
        environ={"CHATD_DATA_DIR": "/var/lib/chatd", "CHATD_NODE_NAME": "n1"},
        path=None,
    )
    assert config.data_dir == "/var/lib/chatd"
    assert config.data_path == Path("/var/lib/chatd")
    assert config.node_name == "n1"


def test_env_uses_os_environ_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHATD_SERVER_HEARTBEAT_S", "7")
    assert load_config(write(tmp_path, "")).server.heartbeat_s == 7


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("TRUE", True), ("1", True), ("Yes", True),
     ("false", False), ("False", False), ("0", False), ("no", False)],
)
def test_env_bool(raw: str, expected: bool) -> None:
    config = load_config(environ={"CHATD_PUSH_INCLUDE_PREVIEW": raw}, path=None)
    assert config.push.include_preview is expected


def test_env_float_and_int_for_float() -> None:
    config = load_config(
        environ={"CHATD_LIMITS_SEND_RATE_PER_S": "0.5", "CHATD_SERVER_DRAIN_TIMEOUT_S": "2"},
        path=None,
    )
    assert config.limits.send_rate_per_s == 0.5
    assert config.server.drain_timeout_s == 2.0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("https://a.example.com", ("https://a.example.com",)),
        (" https://a.example.com , http://b.example.com:8080,", ("https://a.example.com", "http://b.example.com:8080")),
        ("*", ("*",)),
        ("", ()),
    ],
)
def test_env_list_of_strings_is_comma_separated(raw: str, expected: tuple[str, ...]) -> None:
    config = load_config(environ={"CHATD_SECURITY_ALLOWED_ORIGINS": raw}, path=None)
    assert config.security.allowed_origins == expected


def test_env_list_of_strings_range_error_names_variable() -> None:
    with refused(r"^config: CHATD_SECURITY_ALLOWED_ORIGINS \(security\.allowed_origins\): must be \"\*\" or origins"):
        load_config(environ={"CHATD_SECURITY_ALLOWED_ORIGINS": "https://a.example.com/app"}, path=None)


def test_env_other_chatd_variables_ignored() -> None:
    config = load_config(
        environ={"CHATD_TEST_DATABASE_URL": "postgresql://x", "CHATD_DATABASE": "x", "HOME": "/"},
        path=None,
    )
    assert config == Config.defaults()


@pytest.mark.parametrize(
    ("var", "raw", "key"),
    [
        ("CHATD_SERVER_PORT", "abc", "server.port"),
        ("CHATD_SERVER_PORT", "80.5", "server.port"),
        ("CHATD_SERVER_PORT", "", "server.port"),
        ("CHATD_PUSH_INCLUDE_PREVIEW", "maybe", "push.include_preview"),
        ("CHATD_LIMITS_SEND_RATE_PER_S", "fast", "limits.send_rate_per_s"),
        ("CHATD_SERVER_SEND_STALL_S", "nan", "server.send_stall_s"),
    ],
)
def test_env_bad_value_names_variable_and_key(var: str, raw: str, key: str) -> None:
    with refused(rf"^config: {var} \({key}\): expected .*, got {raw!r}$"):
        load_config(environ={var: raw}, path=None)


def test_env_unknown_key_under_known_section() -> None:
    with refused(r"^config: unknown key limits\.foo \(from CHATD_LIMITS_FOO\)$"):
        load_config(environ={"CHATD_LIMITS_FOO": "1"}, path=None)


def test_env_range_error_names_variable() -> None:
    with refused(r"^config: CHATD_SERVER_PORT \(server\.port\): must be between 0 and 65535"):
        load_config(environ={"CHATD_SERVER_PORT": "70000"}, path=None)


# --- refusals -----------------------------------------------------------------


def test_unknown_key_in_file(tmp_path: Path) -> None:
    with refused(r"^config: unknown key limits\.foo$"):
        load_config(write(tmp_path, "[limits]\nfoo = 1\n"), environ={})


def test_unknown_top_level_key_and_section() -> None:
    with refused(r"^config: unknown key colour$"):
        config_from_mapping({"colour": "blue"})
    with refused(r"^config: unknown section \[tls\]$"):
        config_from_mapping({"tls": {"cert": "x"}})
    with refused(r"^config: unknown key server\.tls$"):
        config_from_mapping({"server": {"tls": {"cert": "x"}}})


def test_section_must_be_a_table() -> None:
    with refused(r"^config: server: expected a table, got 1$"):
        config_from_mapping({"server": 1})


@pytest.mark.parametrize(
    ("data", "key", "expected", "got"),
    [
        ({"server": {"port": "abc"}}, "server.port", "an integer", "'abc'"),
        ({"server": {"port": True}}, "server.port", "an integer", "True"),
        ({"server": {"port": 80.0}}, "server.port", "an integer", "80.0"),
        ({"push": {"include_preview": 1}}, "push.include_preview", "a boolean", "1"),
        ({"limits": {"send_rate_per_s": "20"}}, "limits.send_rate_per_s", "a finite number", "'20'"),
        ({"limits": {"send_rate_per_s": False}}, "limits.send_rate_per_s", "a finite number", "False"),
        ({"database": {"url": 5}}, "database.url", "a string", "5"),
        ({"data_dir": ["a"]}, "data_dir", "a string", r"\['a'\]"),
        ({"security": {"allowed_origins": "*"}}, "security.allowed_origins", "a list of strings", "'\\*'"),
        ({"security": {"allowed_origins": ["a", 1]}}, "security.allowed_origins", "a list of strings", r"\['a', 1\]"),
    ],
)
def test_wrong_type_names_key(data: dict[str, object], key: str, expected: str, got: str) -> None:
    with refused(rf"^config: {key}: expected {expected}.*, got {got}$"):
        config_from_mapping(data)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"server": {"port": -1}}, "server.port"),
        ({"server": {"port": 65536}}, "server.port"),
        ({"server": {"heartbeat_s": 0}}, "server.heartbeat_s"),
        ({"server": {"drain_timeout_s": 0.0}}, "server.drain_timeout_s"),
        ({"server": {"outgoing_queue": 0}}, "server.outgoing_queue"),
        ({"server": {"send_stall_s": -1}}, "server.send_stall_s"),
        ({"server": {"send_stall_s": float("inf")}}, "server.send_stall_s"),
        ({"server": {"host": ""}}, "server.host"),
        ({"data_dir": ""}, "data_dir"),
        ({"database": {"pool_min": 0}}, "database.pool_min"),
        ({"database": {"embedded_tcp_port": -2}}, "database.embedded_tcp_port"),
        ({"database": {"embedded_tcp_port": 70000}}, "database.embedded_tcp_port"),
        ({"limits": {"max_frame_bytes": 0}}, "limits.max_frame_bytes"),
        ({"limits": {"send_rate_per_s": 0}}, "limits.send_rate_per_s"),
        ({"limits": {"send_burst": -5}}, "limits.send_burst"),
        ({"fanout": {"inbox_max_members": 0}}, "fanout.inbox_max_members"),
        ({"receipts": {"fanout_max_members": 0}}, "receipts.fanout_max_members"),
        ({"presence": {"timeout_s": 0}}, "presence.timeout_s"),
        ({"security": {"allowed_origins": ["https://a.example.com/"]}}, "security.allowed_origins"),
        ({"security": {"allowed_origins": ["a.example.com"]}}, "security.allowed_origins"),
        ({"security": {"login_attempts_per_min": 0}}, "security.login_attempts_per_min"),
        ({"security": {"token_ttl_days": -1}}, "security.token_ttl_days"),
    ],
)
def test_range_error_names_key(data: dict[str, object], key: str) -> None:
    with refused(rf"^config: {key}: "):
        config_from_mapping(data)


def test_embedded_tcp_port_range_ends_accepted() -> None:
    for port in (-1, 0, 65535):
        config = config_from_mapping({"database": {"embedded_tcp_port": port}})
        assert config.database.embedded_tcp_port == port


def test_pool_min_above_pool_max() -> None:
    with refused(r"^config: database\.pool_min: must not exceed database\.pool_max, got 11 > 10$"):
        config_from_mapping({"database": {"pool_min": 11}})
    with refused(
        r"^config: database\.pool_min: must not exceed"
        r" CHATD_DATABASE_POOL_MAX \(database\.pool_max\), got 2 > 1$"
    ):
        load_config(environ={"CHATD_DATABASE_POOL_MAX": "1"}, path=None)


def test_toml_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert message.startswith(f"config: {path}: invalid TOML: ")
    assert "line 2" in message
    assert "\n" not in message
    assert isinstance(info.value.__cause__, tomllib.TOMLDecodeError)


def test_explicit_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with refused(rf"^config: {re.escape(str(missing))}: file not found$"):
        load_config(missing, environ={})


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b"data_dir = '\xff'\n")
    with refused(rf"^config: {re.escape(str(path))}: cannot read: "):
        load_config(path, environ={})


def test_errors_are_one_line() -> None:
    for data in ({"x": 1}, {"server": {"port": "a\nb"}}):
        with pytest.raises(ConfigError) as info:
            config_from_mapping(data)
        assert "\n" not in str(info.value)
