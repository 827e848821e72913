"""A TCP relay between a browser and chatd that tests can cut for real.

Chromium's ``set_offline`` keeps open WebSockets alive (frames are held and
delivered later), so a lost connection is made here instead: ``cut()`` shuts
every relayed socket, ``down()`` also refuses new connections (accepted and
closed at once, as a dead network looks to the page), and ``hold_downstream``
drops what the server sends while still passing what the client sends — the
way to lose an ack after the server committed the send.

Threads, not Trio: the browser tests drive Playwright's synchronous API.
"""

from __future__ import annotations

import socket
import threading


class Relay:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.up = True
        self.hold_downstream = False
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            if not self.up:
                client.close()
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, server))
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, downstream: bool) -> None:
        try:
            while data := src.recv(65536):
                if downstream and self.hold_downstream:
                    continue
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._close(src)
            self._close(dst)

    def _close(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def connections(self) -> int:
        with self._lock:
            return len(self._sockets) // 2

    def cut(self) -> None:
        """Close every connection now (both directions), as a network failure would."""
        with self._lock:
            socks = list(self._sockets)
        for sock in socks:
            self._close(sock)

    def down(self) -> None:
        self.up = False
        self.cut()

    def restore(self) -> None:
        self.hold_downstream = False
        self.up = True

    def close(self) -> None:
        self.down()
        self.listener.close()
