"""Numbers and checks that every boundary shares: the wire codec, the HTTP
parameters and the services each validate untrusted input, and they must agree.

Configurable limits (text length, members, rates) live in chatd.config; these
are fixed by the contract (PROTOCOL.md §1) or by PostgreSQL.
"""

from __future__ import annotations

from typing import Final

#: Largest id, seq or cursor: PostgreSQL BIGINT. Ids are 1..ID_MAX, seqs and cursors 0..ID_MAX.
ID_MAX: Final = 2**63 - 1
#: ``client_msg_id`` is a string of 1..64 characters (PROTOCOL.md §1).
MAX_CLIENT_MSG_ID_CHARS: Final = 64


def is_client_msg_id(value: str) -> bool:
    """1..64 characters and no NUL (PostgreSQL text cannot hold one)."""
    return 1 <= len(value) <= MAX_CLIENT_MSG_ID_CHARS and "\x00" not in value
