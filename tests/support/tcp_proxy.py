"""A small TCP proxy for tests: a link that a test can cut and restore.

    with TcpProxy("127.0.0.1", 5432) as proxy:     # listens on 127.0.0.1:<free port>
        url = url_through(proxy)                     # point one process at proxy.port
        ...
        proxy.cut()       # listener closed, live connections torn down: new connects refused
        proxy.restore()   # listening again on the same port

It runs an asyncio loop in a daemon thread of the test process; the public methods are
blocking and safe to call from any thread. `cut()` makes the far end unreachable as a crashed
host or a dropped network link would: connections in use are aborted (RST) and nothing
listens on the port, so a client sees ECONNREFUSED at once rather than a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")

#: Bytes read per chunk while pumping one direction of a connection.
CHUNK = 64 * 1024
#: Deadline of one control operation (start, cut, restore, close) on the proxy's loop.
CONTROL_TIMEOUT = 10.0


class TcpProxy:
    """Forwards every connection accepted on `listen_host:listen_port` to `target`."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self._port = listen_port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Bumped by every cut: a connection accepted before a cut must not outlive it.
        self._generation = 0
        #: Connections accepted since start (both before and after a restore).
        self.accepted = 0
        #: Connections whose target could not be reached (closed at once).
        self.target_failures = 0

    # --- public, blocking ---------------------------------------------------------------

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the proxy has not been started")
        return self._port

    @property
    def address(self) -> str:
        return f"{self.listen_host}:{self.port}"

    @property
    def listening(self) -> bool:
        return self._server is not None

    @property
    def live_connections(self) -> int:
        return len(self._links)

    def start(self) -> TcpProxy:
        if self._thread is not None:
            raise RuntimeError("the proxy is already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"tcp-proxy-{self.target_port}", daemon=True
        )
        self._thread.start()
        self._call(self._listen())
        return self

    def cut(self) -> None:
        """Stop listening and abort every live connection; new connects are refused."""
        self._call(self._cut())

    def restore(self) -> None:
        """Listen again on the same port (a no-op while listening)."""
        if not self.listening:
            self._call(self._listen())

    def close(self) -> None:
        """Cut, stop the loop and its thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            self._call(self._cut())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(CONTROL_TIMEOUT)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- on the proxy's loop ------------------------------------------------------------

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coroutine.close()
            raise RuntimeError("the proxy has not been started")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(CONTROL_TIMEOUT)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.listen_host, self._port, reuse_address=True
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def _cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()  # the listening socket is closed now; waiting is not needed
        for client, upstream in list(self._links):
            # abort(): close at once with RST, as a dead peer or a dropped link does.
            client.transport.abort()
            upstream.transport.abort()
        self._links.clear()
        self._generation += 1
        # Aborted transports end their pumps (EOF); a connection still being opened to the
        # target sees the new generation and is dropped. Tasks are not cancelled: asyncio's
        # stream server reports a cancelled handler task as an error.
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=CONTROL_TIMEOUT)

    async def _accept(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        self.accepted += 1
        generation = self._generation
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            try:
                upstream_reader, upstream = await asyncio.wait_for(
                    asyncio.open_connection(self.target_host, self.target_port),
                    CONTROL_TIMEOUT,
                )
            except (OSError, TimeoutError):
                self.target_failures += 1
                client.transport.abort()
                return
            if generation != self._generation:
                client.transport.abort()
                upstream.transport.abort()
                return
            link = (client, upstream)
            self._links.add(link)
            try:
                await asyncio.gather(
                    self._pump(client_reader, upstream), self._pump(upstream_reader, client)
                )
            finally:
                self._links.discard(link)
                client.transport.abort()
                upstream.transport.abort()
        finally:
            self._tasks.discard(task)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy one direction until EOF, then half-close the other side."""
        try:
            while data := await reader.read(CHUNK):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            writer.transport.abort()
