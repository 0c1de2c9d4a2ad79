"""A small TCP fault proxy (asyncio) between clients and a server on loopback.

Faults, each applied to every open connection and lasting until cleared:

* ``cut()``: close every connection (FIN), as a server restart or a NAT timeout would;
* ``reset()``: abort every connection with an RST (``SO_LINGER 0``);
* ``stall(seconds)``: keep connections open but forward nothing, both ways, for a while
  (a hung server, a black-holed link); new connections are accepted and stall too.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time

CHUNK = 65536


class FaultProxy:
    """Listens on ``127.0.0.1:listen_port`` and forwards to ``target_host:target_port``."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._stalled_until = 0.0
        self.faults: list[tuple[str, float]] = []

    async def start(self) -> FaultProxy:
        """Start listening on a free loopback port (see :attr:`port`)."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
        self.cut()
        if self._server is not None:
            await self._server.wait_closed()

    def cut(self) -> None:
        """Close every connection in both directions."""
        self.faults.append(("cut", time.monotonic()))
        for client, upstream in list(self._pairs):
            client.close()
            upstream.close()
        self._pairs.clear()

    def reset(self) -> None:
        """Abort every connection with a TCP reset."""
        self.faults.append(("reset", time.monotonic()))
        for client, upstream in list(self._pairs):
            for w in (client, upstream):
                sock = w.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                w.transport.abort()
        self._pairs.clear()

    def stall(self, seconds: float) -> None:
        """Forward nothing for ``seconds``."""
        self.faults.append(("stall", time.monotonic()))
        self._stalled_until = time.monotonic() + seconds

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        self._pairs.discard(pair)
        for w in pair:
            w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(CHUNK):
                while (wait := self._stalled_until - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
