"""A plain TCP socket as a Trio stream, and an accept loop that takes connections in batches.

``trio.SocketStream`` wraps every receive and send in a generator context manager
and two conflict detectors, and a trio socket object around the socket; at tens of
thousands of WebSocket set-ups those were a tenth of the server's CPU. ``RawStream``
is the least a stream needs over a non-blocking socket: wait until readable, then
one ``recv``; ``send`` until it is all out; ``notify_closing`` before ``close``.
``accept_batches`` accepts a few waiting connections per wake-up, as the UDP receive
loop reads a batch of waiting datagrams.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio

__all__ = ["RawStream", "accept_batches", "detach_listener"]

log = logging.getLogger("siptrio.transport")

# Connections accepted per wake-up. Each starts a task that reads its upgrade in the
# same scheduler pass as the REGISTERs of flows already open: at 64 a burst of 5,000
# set-ups had its REGISTER->200 p50 at 114-166 ms, at 4 at 53-121 (the machine's
# other load moved it as much), CPU the same.
ACCEPT_BATCH = 4
_GONE = (errno.EBADF, errno.ENOTSOCK)
_OUT_OF = (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS)


def _error(e: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    if e.errno in _GONE:
        return trio.ClosedResourceError("the socket was closed")
    return trio.BrokenResourceError(f"socket connection broken: {e}")


class RawStream(trio.abc.Stream):
    """One connected, non-blocking TCP socket. One receiver and one sender at a time."""

    __slots__ = ("expired", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.expired = False  # cut by its owner's deadline (``cut``)

    def shutdown_read(self) -> None:
        """Wake a receiver with end-of-file; the socket can still send (a close frame)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RD)

    def cut(self) -> None:
        """End a connection whose time is up, from another task: both ways, at once."""
        self.expired = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        # Waiting first: a flow reads when its peer has sent, and the wait is the
        # checkpoint; a recv that would block costs a syscall for nothing.
        try:
            await trio.lowlevel.wait_readable(self.sock)
        except OSError as e:  # a socket closed under us
            raise _error(e) from None
        while True:
            try:
                return self.sock.recv(max_bytes or 65536)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.sock)
            except OSError as e:
                raise _error(e) from e

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.sock)
                continue
            except OSError as e:
                raise _error(e) from e
            view = view[sent:]
        await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self.sock)

    async def aclose(self) -> None:
        if self.sock.fileno() >= 0:
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()
        await trio.lowlevel.checkpoint()


def detach_listener(listener: trio.SocketListener) -> socket.socket:
    """The stdlib socket under a bound, listening trio listener (which gives it up)."""
    family, kind = listener.socket.family, listener.socket.type
    sock = socket.socket(family, kind, fileno=listener.socket.detach())
    sock.setblocking(False)
    return sock


async def accept_batches(
    listening: socket.socket,
    handle: Callable[[socket.socket, tuple[str, int]], Awaitable[Any] | None],
    stats: Any,
) -> None:
    """Accept forever; ``handle(sock, peer)`` starts each connection's task.

    Out of descriptors (EMFILE and friends), the waiting connections stay in the
    backlog: log, count, sleep 100 ms, try again, as trio's serve_listeners does.
    """
    try:
        while True:
            await trio.lowlevel.wait_readable(listening)
            for _ in range(ACCEPT_BATCH):
                try:
                    sock, address = listening.accept()
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno in _OUT_OF:
                        stats["accept_errors"] += 1
                        log.error("accept() failed (%s); sleeping 100 ms", e)
                        await trio.sleep(0.1)
                        break
                    if e.errno in (errno.ECONNABORTED, errno.EPROTO):
                        continue
                    raise
                sock.setblocking(False)
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                handle(sock, (address[0], address[1]))
    finally:
        trio.lowlevel.notify_closing(listening)
        listening.close()
