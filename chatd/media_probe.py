"""Pure rules about uploaded files: image dimensions from the header, the
inline allow-list, and the cleaning of content types and file names.

No I/O and no decoding: :func:`image_size` reads only the first bytes of a
file (PNG's IHDR, GIF's screen descriptor, WebP's VP8/VP8L/VP8X header, JPEG's
first SOF segment), so a client can lay a picture out before loading it and
the server never decompresses what a user sent (no decompression bombs).
"""

from __future__ import annotations

import re
import struct

#: Bytes of a file's start kept for :func:`image_size` (a JPEG's EXIF block
#: may push its SOF segment this far).
PROBE_BYTES = 256 * 1024

#: Types served inline with their own Content-Type; anything else is
#: ``application/octet-stream`` + ``attachment``. No SVG, no HTML, no XML: a
#: file that a browser would run as a page of chatd's origin never is one.
INLINE_TYPES = frozenset({
    "image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "image/bmp",
    "audio/mpeg", "audio/ogg", "audio/wav", "audio/webm", "audio/aac", "audio/mp4", "audio/flac",
    "video/mp4", "video/webm", "video/ogg", "video/quicktime",
    "application/pdf",
})

_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")
_FILENAME_BAD = re.compile(r"[\x00-\x1f\x7f/\\\"<>:|?*;]")
MAX_FILENAME_CHARS = 255


def content_type(header: str | None) -> str:
    """The upload's media type, lower case and without parameters; a missing
    or malformed one is ``application/octet-stream``."""
    if not header:
        return "application/octet-stream"
    kind = header.split(";", 1)[0].strip().lower()
    return kind if _TYPE.match(kind) else "application/octet-stream"


def is_inline(kind: str) -> bool:
    return kind in INLINE_TYPES


def filename(raw: str | None) -> str | None:
    """A file name safe to store and to put in ``Content-Disposition``: no
    path, no control or quoting characters, at most 255 characters; None when
    nothing is left."""
    if raw is None:
        return None
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = _FILENAME_BAD.sub("_", name).strip(" .")
    return name[:MAX_FILENAME_CHARS] or None


def image_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG, GIF, WebP or JPEG from its first bytes; None otherwise."""
    try:
        if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
            w, h = struct.unpack(">II", head[16:24])
        elif head[:6] in (b"GIF87a", b"GIF89a"):
            w, h = struct.unpack("<HH", head[6:10])
        elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            found = _webp(head)
            if found is None:
                return None
            w, h = found
        elif head[:2] == b"\xff\xd8":
            found = _jpeg(head)
            if found is None:
                return None
            w, h = found
        else:
            return None
    except struct.error:  # cut short
        return None
    return (w, h) if w > 0 and h > 0 else None


def _webp(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", head[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and head[20:21] == b"\x2f":
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        w = int.from_bytes(head[24:27], "little") + 1
        h = int.from_bytes(head[27:30], "little") + 1
        return w, h
    return None


#: JPEG start-of-frame markers (baseline, progressive, ...; not DHT, JPG, DAC).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg(head: bytes) -> tuple[int, int] | None:
    at = 2
    while at + 9 <= len(head):
        if head[at] != 0xFF:
            return None
        marker = head[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # no length
            at += 2
            continue
        (length,) = struct.unpack(">H", head[at + 2:at + 4])
        if marker in _SOF:
            h, w = struct.unpack(">HH", head[at + 5:at + 9])
            return w, h
        if length < 2:
            return None
        at += 2 + length
    return None
