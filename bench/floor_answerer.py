"""The floor under any Python registrar: answer REGISTERs, do nothing else.

    python bench/floor_answerer.py PORT

A Trio UDP loop on 127.0.0.1:PORT that receives a request, copies Via, From, To
(with a tag), Call-ID and CSeq into a 200 OK with the Contact and sends it: no
parsing beyond splitting lines, no validation, no transaction, no store, no
answer to anything else but that 200. `register_udp.py` measures it beside
siptrio so that REGISTER per CPU-second can be read against what this interpreter,
Trio and the kernel cost on their own for one datagram in and one out. It is
not a registrar; never point a client at it.
"""

from __future__ import annotations

import signal
import socket
import sys

import trio

COPIED = (b"via", b"v", b"from", b"f", b"call-id", b"i", b"cseq")
BATCH = 64  # as siptrio's UDP loop: drain a burst per wake-up


def answer(data: bytes) -> bytes:
    head = data.partition(b"\r\n\r\n")[0]
    out = [b"SIP/2.0 200 OK"]
    contact = b""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name in COPIED:
            out.append(line)
        elif name in (b"to", b"t"):
            out.append(line + b";tag=floor")
        elif name in (b"contact", b"m"):
            contact = value.strip()
    if contact:
        out.append(b"Contact: " + contact + b";expires=3600")
    out.append(b"Content-Length: 0")
    return b"\r\n".join(out) + b"\r\n\r\n"


async def answer_loop(sock: socket.socket) -> None:
    while True:
        await trio.lowlevel.wait_readable(sock)
        for _ in range(BATCH):
            try:
                data, addr = sock.recvfrom(65536)
            except BlockingIOError:
                break
            sock.sendto(answer(data), addr)


async def serve(port: int) -> None:
    """Until SIGTERM or SIGINT, then exit 0 like siptrio does."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.setblocking(False)
    sock.bind(("127.0.0.1", port))
    with sock, trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer_loop, sock)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


if __name__ == "__main__":
    trio.run(serve, int(sys.argv[1]))
