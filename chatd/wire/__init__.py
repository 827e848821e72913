"""The wire protocol: typed client frames and the pure (sans-I/O) codec.

Nothing here does I/O or imports trio; the connection layer feeds messages in
and sends what ``encode`` returns.
"""

from chatd.wire.codec import (
    SUBPROTOCOLS,
    FrameError,
    FrameErrorCode,
    WireFormat,
    choose_subprotocol,
    decode_client_frame,
    encode,
    error_frame,
)
from chatd.wire.frames import (
    ClientFrame,
    PingFrame,
    PresenceSubscribeFrame,
    ReceiptFrame,
    SendFrame,
    SyncFrame,
    TypingFrame,
)

__all__ = [
    "SUBPROTOCOLS",
    "ClientFrame",
    "FrameError",
    "FrameErrorCode",
    "PingFrame",
    "PresenceSubscribeFrame",
    "ReceiptFrame",
    "SendFrame",
    "SyncFrame",
    "TypingFrame",
    "WireFormat",
    "choose_subprotocol",
    "decode_client_frame",
    "encode",
    "error_frame",
]
