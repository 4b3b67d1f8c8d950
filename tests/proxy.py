"""A TCP proxy in the test's event loop (127.0.0.1, a free port -> a Redis), which the test makes misbehave
the way a network or a restarting Redis does.

What a *new* connection meets is :attr:`TcpProxy.mode`:

* ``forward``: bytes flow both ways;
* ``reset``: what the client sends first (its handshake) is read, then the connection is aborted (RST), as a
  Redis that accepts and dies would;
* ``loading``: that handshake is answered ``-LOADING`` (a Redis still loading its data), then aborted.

:meth:`TcpProxy.cut` cuts every connection, current and new, until :meth:`TcpProxy.restore`:

* ``blackhole`` (a network partition): nothing moves. Bytes sent either way are held, neither delivered nor
  refused, and no connection is closed: the client's command hangs as it would while TCP retransmits into
  a dead link. New connections are accepted and held the same way (a user-space proxy cannot drop a SYN:
  the kernel completes the handshake of a listening socket, so the client's connect succeeds and its first
  command hangs, where a real partition would let the connect time out). On :meth:`restore` the held bytes
  are delivered, as a healed link delivers the retransmitted segments, and held new connections go through.
* ``reset`` (a host or a firewall that rejects): every current connection is aborted at once and new ones
  are aborted when they speak, until :meth:`restore`.

Only connections through the proxy are affected: other clients of the same Redis go on.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

__all__ = ["CutMode", "Mode", "TcpProxy"]

Mode = Literal["forward", "reset", "loading"]
CutMode = Literal["blackhole", "reset"]


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a Redis on 127.0.0.1:``target_port``; see the module's docstring."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.mode: Mode = "forward"
        self.refused = 0  # connections aborted by "reset"/"loading" mode or by a reset cut
        self.accepted = 0
        self.held = 0  # connections that a blackhole cut caught (current or new)
        self.cut_mode: CutMode | None = None
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        self.cut("reset")  # every connection ends, held ones included
        self._flowing.set()
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def cut(self, mode: CutMode = "blackhole") -> None:
        """Cut every connection through the proxy, current and new, until :meth:`restore`."""
        self.cut_mode = mode
        if mode == "blackhole":
            self.held += len(self._writers) // 2  # each forwarded connection has two writers
            self._flowing.clear()
        else:
            self.refused += len(self._writers) // 2
            self._abort_all()

    def restore(self) -> None:
        """End a cut: held bytes and connections go through, new connections are forwarded again."""
        self.cut_mode = None
        self._flowing.set()

    def _abort_all(self) -> None:
        for w in list(self._writers):
            w.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.accepted += 1
        up_writer: asyncio.StreamWriter | None = None
        try:
            if self.cut_mode == "blackhole":
                self.held += 1
                await self._flowing.wait()
            if self.mode != "forward" or self.cut_mode == "reset":
                await reader.read(65536)  # the handshake arrives...
                self.refused += 1
                if self.mode == "loading":
                    writer.write(b"-LOADING Redis is loading the dataset in memory\r\n")
                    await writer.drain()
                writer.transport.abort()  # ... and the connection goes away
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            self._writers |= {writer, up_writer}
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass  # cancelled: stop(); the streams' callback would log a cancelled handler as an error
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    self._writers.discard(w)
                    w.close()
            self.tasks.discard(task)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                await self._flowing.wait()  # a blackhole holds the bytes here until restore()
                dst.write(data)
                await dst.drain()
        finally:
            with contextlib.suppress(Exception):
                dst.close()
