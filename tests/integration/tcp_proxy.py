"""A TCP proxy on loopback that a test can cut and restore: a database restart, as its clients see it.

Every connection through the proxy is a real connection to the real server; `cut()` closes
them all and refuses new ones (the server's sessions end with them, advisory locks included),
`restore()` accepts again on the same port. `blackhole()` stops forwarding without closing
anything: a server or a network path that hangs, where the client's kernel still sees every
byte acknowledged (so no TCP timeout ever fires) and no answer ever comes.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from urllib.parse import urlsplit, urlunsplit


class TcpProxy:
    """Forwards 127.0.0.1:<port> to `target` until cut."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._listener: socket.socket | None = None
        self._stopped = threading.Event()
        self._holed = threading.Event()
        self._swallowed: list[socket.socket] = []  # accepted while black-holed, never answered
        self.port = self._listen(0)

    def cut(self) -> None:
        """Close every connection and stop accepting: the server is gone."""
        with self._lock:
            listener, self._listener = self._listener, None
            pairs, self._pairs = self._pairs, []
            pairs += [(client, client) for client in self._swallowed]
            self._swallowed = []
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it
            listener.close()
        for client, server in pairs:
            for end in (client, server):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()

    def blackhole(self) -> None:
        """Forward nothing more, close nothing: open connections hang, new ones are accepted and
        never answered."""
        self._holed.set()

    def restore(self) -> None:
        """Accept again, on the same port: the server is back."""
        self._listen(self.port)

    def close(self) -> None:
        self._stopped.set()
        self.cut()

    def _listen(self, port: int) -> int:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return int(listener.getsockname()[1])

    def _accept(self, listener: socket.socket) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut: the listener is closed
            if self._holed.is_set():
                with self._lock:
                    self._swallowed.append(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    client.close()
                    server.close()
                    return
                self._pairs.append((client, server))
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        ends = [client, server]
        try:
            while True:
                readable, _, _ = select.select(ends, [], [], 1.0)
                if self._stopped.is_set():
                    return
                if self._holed.is_set():
                    self._stopped.wait(0.05)  # nothing is read, so nothing is answered
                    continue
                for end in readable:
                    data = end.recv(65536)
                    if not data:
                        return
                    (server if end is client else client).sendall(data)
        except (OSError, ValueError):
            return  # closed by cut()
        finally:
            for end in ends:
                with contextlib.suppress(OSError):
                    end.close()


def through(url: str, proxy: TcpProxy) -> str:
    """`url` reaching its server through `proxy` (its user kept, its host and port the proxy's)."""
    parts = urlsplit(url)
    user = parts.netloc.rsplit("@", 1)
    netloc = f"{user[0]}@127.0.0.1:{proxy.port}" if len(user) == 2 else f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=netloc))
