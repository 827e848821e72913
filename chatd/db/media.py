"""Media: uploads stored in PostgreSQL as content-addressed chunks, and the media of messages.

An upload writes each chunk (at most :data:`CHUNK_BYTES`) as it arrives,
keyed by the chunk's SHA-256 (a chunk already stored is only touched), then
one transaction records the blob (the whole file's SHA-256 and its chunk
list; a file stored before is re-used) and the ``media`` row. Bytes live in
the database so that every node serves every upload and ``pg_dump`` backs
them up; see migrations/0005_media_push.sql.

``chatd media gc`` (:meth:`MediaStore.collect`) removes uploads never posted
and older than the grace, then blobs no upload uses, then chunks no blob uses
and nobody touched within the grace (an upload may be writing them).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import attrs

from chatd.db.bridge import Connection, Database
from chatd.models import MediaRef, StoredMedia

#: Size of a stored chunk: large enough that a 10 MB file is 40 round trips,
#: small enough that an upload or a download holds little in memory.
CHUNK_BYTES = 256 * 1024

_PUT_CHUNK = """
INSERT INTO media_chunks (sha256, data) VALUES ($1, $2)
ON CONFLICT (sha256) DO UPDATE SET touched_at = now()
RETURNING touched_at
"""
# An abandoned upload's chunks, unless a file uses them or another upload touched them since.
_DROP_CHUNKS = """
DELETE FROM media_chunks c
USING unnest($1::bytea[], $2::timestamptz[]) AS t (sha256, touched_at)
WHERE c.sha256 = t.sha256 AND c.touched_at = t.touched_at
  AND NOT EXISTS (SELECT 1 FROM media_blob_chunks bc WHERE bc.chunk_sha256 = c.sha256)
"""
_PUT_BLOB = """
INSERT INTO media_blobs (sha256, size, chunk_count) VALUES ($1, $2, $3)
ON CONFLICT (sha256) DO UPDATE SET touched_at = now()
RETURNING (xmax = 0) AS inserted
"""
_PUT_BLOB_CHUNKS = """
INSERT INTO media_blob_chunks (blob_sha256, idx, chunk_sha256, start_byte, size)
SELECT $1, t.idx - 1, t.chunk, t.start_byte, t.size
FROM unnest($2::bytea[], $3::bigint[], $4::int[]) WITH ORDINALITY AS t (chunk, start_byte, size, idx)
"""
_MEDIA_COLUMNS = """
m.id, m.uploader_id, m.blob_sha256, b.size, m.content_type, m.filename, m.width, m.height, m.created_at
"""
_PUT_MEDIA = f"""
WITH m AS (
    INSERT INTO media (uploader_id, blob_sha256, content_type, filename, width, height)
    VALUES ($1, $2, $3, $4, $5, $6) RETURNING *
)
SELECT {_MEDIA_COLUMNS} FROM m JOIN media_blobs b ON b.sha256 = m.blob_sha256
"""
# The uploader, or a member of a channel where a message carrying it was posted.
_VISIBLE = f"""
SELECT {_MEDIA_COLUMNS} FROM media m JOIN media_blobs b ON b.sha256 = m.blob_sha256
WHERE m.id = $1 AND (m.uploader_id = $2 OR EXISTS (
    SELECT 1 FROM message_media mm JOIN members mb ON mb.channel_id = mm.channel_id
    WHERE mm.media_id = m.id AND mb.user_id = $2))
"""
_OWNED = f"""
SELECT {_MEDIA_COLUMNS} FROM media m JOIN media_blobs b ON b.sha256 = m.blob_sha256
WHERE m.id = ANY($1::bigint[]) AND m.uploader_id = $2
"""
_CHUNKS_IN = """
SELECT chunk_sha256, start_byte, size FROM media_blob_chunks
WHERE blob_sha256 = $1 AND start_byte + size > $2 AND start_byte <= $3 ORDER BY idx
"""
# substring() of an uncompressed (EXTERNAL) value reads only the slice's TOAST pages.
_CHUNK_SLICE = "SELECT substring(data FROM $2 FOR $3) FROM media_chunks WHERE sha256 = $1"
_ATTACH = """
INSERT INTO message_media (channel_id, seq, position, media_id)
SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::smallint[], $4::bigint[])
"""
_MARK_POSTED = "UPDATE media SET posted_at = now() WHERE id = ANY($1::bigint[]) AND posted_at IS NULL"
_MESSAGE_MEDIA = """
SELECT mm.channel_id, mm.seq, m.id, m.content_type, b.size, m.filename, m.width, m.height
FROM unnest($1::bigint[], $2::bigint[]) AS k (channel_id, seq)
JOIN message_media mm ON mm.channel_id = k.channel_id AND mm.seq = k.seq
JOIN media m ON m.id = mm.media_id JOIN media_blobs b ON b.sha256 = m.blob_sha256
ORDER BY mm.channel_id, mm.seq, mm.position
"""
_GC_MEDIA = """
DELETE FROM media WHERE posted_at IS NULL AND created_at < now() - make_interval(secs => $1)
RETURNING id
"""
_GC_BLOBS = """
DELETE FROM media_blobs b
WHERE touched_at < now() - make_interval(secs => $1)
  AND NOT EXISTS (SELECT 1 FROM media m WHERE m.blob_sha256 = b.sha256)
RETURNING size
"""
_GC_CHUNKS = """
DELETE FROM media_chunks c
WHERE touched_at < now() - make_interval(secs => $1)
  AND NOT EXISTS (SELECT 1 FROM media_blob_chunks bc WHERE bc.chunk_sha256 = c.sha256)
RETURNING octet_length(data) AS size
"""


@attrs.frozen
class Collected:
    """What ``chatd media gc`` freed."""

    uploads: int
    files: int
    chunks: int
    bytes: int


@attrs.frozen
class ChunkSlice:
    """Part of one stored chunk a download needs: ``length`` bytes from ``offset``."""

    chunk_sha256: bytes
    offset: int
    length: int


def stored_media(record: Any) -> StoredMedia:
    return StoredMedia(
        media_id=record["id"],
        uploader_id=record["uploader_id"],
        sha256=bytes(record["blob_sha256"]),
        size=record["size"],
        content_type=record["content_type"],
        filename=record["filename"],
        width=record["width"],
        height=record["height"],
        created_at=record["created_at"],
    )


def media_ref(record: Any) -> MediaRef:
    return MediaRef(
        media_id=record["id"],
        content_type=record["content_type"],
        size=record["size"],
        filename=record["filename"],
        width=record["width"],
        height=record["height"],
    )


async def message_media(conn: Connection, keys: Iterable[tuple[int, int]]) -> dict[tuple[int, int], tuple[MediaRef, ...]]:
    """The media of each message (by (channel_id, seq)), in the order they were sent; messages with none are absent."""
    keys = list(keys)
    if not keys:
        return {}
    found: dict[tuple[int, int], list[MediaRef]] = {}
    for r in await conn.fetch(_MESSAGE_MEDIA, [c for c, _ in keys], [s for _, s in keys]):
        found.setdefault((r["channel_id"], r["seq"]), []).append(media_ref(r))
    return {k: tuple(v) for k, v in found.items()}


async def attach(conn: Connection, posted: Sequence[tuple[int, int, Sequence[MediaRef]]]) -> None:
    """In a send's transaction: record the media of each (channel_id, seq, media) and mark them posted."""
    rows = [(c, s, i, m.media_id) for c, s, media in posted for i, m in enumerate(media)]
    if not rows:
        return
    await conn.execute(_ATTACH, *(list(col) for col in zip(*rows)))
    await conn.execute(_MARK_POSTED, sorted({r[3] for r in rows}))


class MediaStore:
    """The media tables: chunks, blobs, uploads."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def put_chunk(self, sha256: bytes, data: bytes) -> datetime:
        """Store one chunk (or touch it, when the same bytes are stored already). Commits on its own;
        returns the chunk's new ``touched_at`` (what :meth:`drop_chunks` needs)."""

        async def unit(conn: Connection) -> datetime:
            touched: datetime = await conn.fetchval(_PUT_CHUNK, sha256, data)
            return touched

        return await self.db.transaction(unit)

    async def drop_chunks(self, written: Sequence[tuple[bytes, datetime]]) -> None:
        """Remove the chunks of an upload that did not finish (too large, cut off), unless
        a stored file uses them or another upload touched them since."""
        if not written:
            return

        async def unit(conn: Connection) -> None:
            await conn.execute(_DROP_CHUNKS, [c for c, _ in written], [t for _, t in written])

        await self.db.transaction(unit)

    async def finish(
        self,
        uploader_id: int,
        sha256: bytes,
        chunks: Sequence[tuple[bytes, int]],
        *,
        content_type: str,
        filename: str | None,
        size: tuple[int, int] | None,
    ) -> StoredMedia:
        """Record the file made of ``chunks`` ((chunk sha256, length), in order) and the upload."""
        starts = []
        at = 0
        for _, length in chunks:
            starts.append(at)
            at += length
        width, height = size if size is not None else (None, None)

        async def unit(conn: Connection) -> Any:
            inserted = await conn.fetchval(_PUT_BLOB, sha256, at, len(chunks))
            if inserted:
                await conn.execute(_PUT_BLOB_CHUNKS, sha256, [c for c, _ in chunks], starts, [n for _, n in chunks])
            return await conn.fetchrow(_PUT_MEDIA, uploader_id, sha256, content_type, filename, width, height)

        return stored_media(await self.db.transaction(unit))

    async def visible(self, media_id: int, user_id: int) -> StoredMedia | None:
        """The upload if ``user_id`` may download it, else None (missing and forbidden alike)."""

        async def unit(conn: Connection) -> Any:
            return await conn.fetchrow(_VISIBLE, media_id, user_id)

        record = await self.db.read(unit)
        return None if record is None else stored_media(record)

    async def owned(self, media_ids: Sequence[int], user_id: int) -> dict[int, StoredMedia]:
        """Those of ``media_ids`` that ``user_id`` uploaded."""

        async def unit(conn: Connection) -> list[Any]:
            return list(await conn.fetch(_OWNED, list(media_ids), user_id))

        return {r["id"]: stored_media(r) for r in await self.db.read(unit)}

    async def slices(self, sha256: bytes, first: int, last: int) -> list[ChunkSlice]:
        """The chunk parts holding bytes ``first..last`` (inclusive) of a stored file, in order."""

        async def unit(conn: Connection) -> list[Any]:
            return list(await conn.fetch(_CHUNKS_IN, sha256, first, last))

        out = []
        for r in await self.db.read(unit):
            start, size = r["start_byte"], r["size"]
            lo = max(first, start) - start
            hi = min(last, start + size - 1) - start
            out.append(ChunkSlice(bytes(r["chunk_sha256"]), lo, hi - lo + 1))
        return out

    async def read_slice(self, part: ChunkSlice) -> bytes:
        async def unit(conn: Connection) -> Any:
            return await conn.fetchval(_CHUNK_SLICE, part.chunk_sha256, part.offset + 1, part.length)

        data = await self.db.read(unit)
        return bytes(data or b"")

    async def collect(self, grace_s: float) -> Collected:
        """Remove uploads never posted and older than ``grace_s``, and the bytes nothing uses any more."""

        async def unit(conn: Connection) -> Collected:
            uploads = await conn.fetch(_GC_MEDIA, grace_s)
            files = await conn.fetch(_GC_BLOBS, grace_s)
            chunks = await conn.fetch(_GC_CHUNKS, grace_s)
            return Collected(len(uploads), len(files), len(chunks), sum(r["size"] for r in chunks))

        return await self.db.transaction(unit)
