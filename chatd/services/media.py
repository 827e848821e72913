"""Uploads and downloads of media (PROTOCOL §2), and the media checks of a send.

An upload is streamed: the body arrives in pieces, is cut into chunks of
:data:`~chatd.db.media.CHUNK_BYTES`, each hashed and written while the next
one is read (one chunk in flight, so memory stays a few chunks whatever the
file's size), and refused with ``too_large`` the moment the running total
passes ``limits.media_max_bytes``; the chunks it wrote are then removed.
The upload is recorded only once every byte is stored.

Downloads are likewise read chunk by chunk. Who may download: the uploader,
or a member of a channel where a message carrying the media was posted;
anyone else finds nothing (404), whether the id exists or not.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from datetime import datetime

import trio

from chatd import media_probe
from chatd.db.media import CHUNK_BYTES, Collected, MediaStore
from chatd.errors import ChatdError, Invalid, NotFound, TooLarge
from chatd.models import MediaRef, Principal, StoredMedia

log = logging.getLogger(__name__)


class MediaService:
    def __init__(self, store: MediaStore, *, max_bytes: int) -> None:
        self.store = store
        self.max_bytes = max_bytes

    async def upload(
        self, principal: Principal, body: AsyncIterable[bytes], content_type: str | None, filename: str | None
    ) -> StoredMedia:
        """Store a streamed body as the caller's upload. Raises TooLarge (nothing kept), Unavailable."""
        whole = hashlib.sha256()
        chunks: list[tuple[bytes, int]] = []
        written: list[tuple[bytes, datetime]] = []
        head = bytearray()
        total = 0
        send, receive = trio.open_memory_channel[tuple[bytes, bytes]](1)

        async def store_chunks() -> None:
            async for sha, data in receive:
                written.append((sha, await self.store.put_chunk(sha, data)))

        def cut(data: bytes) -> tuple[bytes, bytes]:
            sha = hashlib.sha256(data).digest()
            chunks.append((sha, len(data)))
            return sha, data

        finished = False
        failure: Exception | None = None
        try:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(store_chunks)
                    async with send:
                        pending = bytearray()
                        try:
                            async for piece in body:
                                total += len(piece)
                                if total > self.max_bytes:
                                    raise TooLarge(f"media: at most {self.max_bytes} bytes")
                                whole.update(piece)
                                if len(head) < media_probe.PROBE_BYTES:
                                    head += piece[: media_probe.PROBE_BYTES - len(head)]
                                pending += piece
                                while len(pending) >= CHUNK_BYTES:
                                    await send.send(cut(bytes(pending[:CHUNK_BYTES])))
                                    del pending[:CHUNK_BYTES]
                            if pending or not chunks:
                                await send.send(cut(bytes(pending)))
                        except Exception as exc:  # too large, cut off: let the chunk being written finish
                            failure = exc  # (and be listed in `written`, so it is removed below)
            except ExceptionGroup as group:  # the store's failure, alone
                raise _first(group) from None
            if failure is not None:
                raise failure
            kind = media_probe.content_type(content_type)
            size = media_probe.image_size(bytes(head)) if kind.startswith("image/") else None
            stored = await self.store.finish(
                principal.user_id,
                whole.digest(),
                chunks,
                content_type=kind,
                filename=media_probe.filename(filename),
                size=size,
            )
            finished = True
            return stored
        finally:
            if not finished:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    try:
                        await self.store.drop_chunks(written)
                    except Exception:  # the grace period of `chatd media gc` is the backstop
                        log.warning("could not remove the chunks of an abandoned upload", exc_info=True)

    async def find(self, principal: Principal, media_id: int) -> StoredMedia:
        """The upload if the caller may see it; NotFound otherwise (missing or not allowed alike)."""
        found = await self.store.visible(media_id, principal.user_id)
        if found is None:
            raise NotFound("no such media")
        return found

    async def read(self, media: StoredMedia, first: int, last: int) -> AsyncIterator[bytes]:
        """Bytes ``first..last`` (inclusive) of the file, one stored chunk at a time."""
        for part in await self.store.slices(media.sha256, first, last):
            yield await self.store.read_slice(part)

    async def for_send(self, principal: Principal, media_ids: Sequence[int]) -> tuple[MediaRef, ...]:
        """The send's media, in its order; Invalid when one is not the sender's upload."""
        if not media_ids:
            return ()
        owned = await self.store.owned(media_ids, principal.user_id)
        missing = [m for m in media_ids if m not in owned]
        if missing:
            raise Invalid(f"media_ids: {missing[0]} is not an upload of yours")
        return tuple(owned[m].ref() for m in media_ids)

    async def collect(self, grace_s: float) -> Collected:
        return await self.store.collect(grace_s)


def _first(group: BaseExceptionGroup[Exception]) -> Exception:
    """The first leaf of a nursery's exception group (a ChatdError before anything else)."""
    leaves: list[Exception] = []

    def walk(g: BaseExceptionGroup[Exception]) -> None:
        for exc in g.exceptions:
            if isinstance(exc, BaseExceptionGroup):
                walk(exc)
            else:
                leaves.append(exc)

    walk(group)
    chatd_errors = [e for e in leaves if isinstance(e, ChatdError)]
    return (chatd_errors or leaves)[0]
