"""Validation of HTTP bodies and query strings: untrusted input becomes typed values or Invalid."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chatd.errors import BadRequest, Invalid
from chatd.limits import ID_MAX


def body_object(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def id_value(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= ID_MAX:
        raise Invalid(f"{name}: a positive integer id")
    return value


def id_list(value: Any, name: str, max_len: int) -> list[int]:
    if not isinstance(value, list) or len(value) > max_len:
        raise Invalid(f"{name}: a list of at most {max_len} user ids")
    return [id_value(v, name) for v in value]


def string(body: Mapping[str, Any], name: str, *, max_len: int, required: bool = True, allow_empty: bool = False) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise Invalid(f"{name}: required")
        return None
    if not isinstance(value, str) or len(value) > max_len or (not value and not allow_empty) or "\x00" in value:
        raise Invalid(f"{name}: a string of {0 if allow_empty else 1}..{max_len} characters")
    return value


def path_id(raw: str, name: str) -> int:
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19:
        raise Invalid(f"{name}: a positive integer id")
    return id_value(int(raw), name)


def query_int(args: Mapping[str, str], name: str, *, default: int | None, low: int, high: int) -> int | None:
    raw = args.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isascii() or not raw.lstrip("-").isdigit() or len(raw) > 20:
        raise Invalid(f"{name}: an integer")
    value = int(raw)
    if not low <= value <= high:
        raise Invalid(f"{name}: between {low} and {high}")
    return value


def id_csv(raw: str, name: str, max_len: int) -> list[int]:
    """``1,2,3``: distinct ids in the order first given, at most ``max_len``; empty is none."""
    if not raw:
        return []
    parts = raw.split(",")
    if len(parts) > max_len:
        raise Invalid(f"{name}: at most {max_len} ids")
    return list(dict.fromkeys(path_id(p, name) for p in parts))
