"""Send every RFC 4475 / RFC 5118 torture message to a real siptrio over real sockets.

Run as a script by tests/test_torture_wire.py, inside a loopback-only network
namespace (``unshare --net``): the messages name outside hosts, and nothing here
may ever reach them. Prints one JSON object per line: one per message and
transport, then a final ``{"done": ...}`` line.

Each message gets its own in-process server (``support.server.running_server``,
fresh database): RFC 4475 reuses branch values across messages (seven REGISTERs
share ``z9hG4bKkdjuw``), so one server would rightly treat later ones as
retransmissions of earlier transactions and replay (or withhold) the first answer.
Servers run concurrently, a few at a time, so the silent cases cost one timeout
in total rather than one each.

    python tests/torture_wire_child.py --torture tests/data/torture --tmp DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import trio  # noqa: E402
from support.client import SipClient  # noqa: E402
from support.server import running_server  # noqa: E402

SETS = ("rfc4475", "rfc5118")
STATUS_LINE = re.compile(rb"SIP/2\.0 (\d{3})[ \r\n]")
CONTENT_LENGTH = re.compile(
    rb"^(?:content-length|l)[ \t]*:[ \t]*(\d+)", re.IGNORECASE | re.MULTILINE
)
STAT_KEYS = ("internal_errors", "parse_errors", "dropped.unaddressable", "retransmissions_absorbed")


def status_of(message: bytes) -> int | None:
    m = STATUS_LINE.match(message)
    return int(m.group(1)) if m else None


def first_line(message: bytes) -> str:
    return message.split(b"\r\n", 1)[0].decode("utf-8", "backslashreplace")


def split_stream(buf: bytes) -> tuple[list[bytes], bytes]:
    """Frame SIP messages received on a stream by Content-Length (independent of siptrio)."""
    messages: list[bytes] = []
    while True:
        buf = buf.lstrip(b"\r\n")
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return messages, buf
        head = buf[: end + 4]
        m = CONTENT_LENGTH.search(head)
        total = end + 4 + (int(m.group(1)) if m else 0)
        if len(buf) < total:
            return messages, buf
        messages.append(buf[:total])
        buf = buf[total:]


async def send_udp(data: bytes, addr: tuple[str, int], timeout: float, linger: float) -> dict:
    """One fresh socket; collect datagrams for ``timeout`` s, or ``linger`` s past a final one."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    received: list[bytes] = []
    try:
        await sock.bind(("127.0.0.1", 0))
        await sock.sendto(data, addr)
        with trio.move_on_after(timeout) as scope:
            while True:
                packet = await sock.recv(65536)
                received.append(packet)
                code = status_of(packet)
                if code is not None and code >= 200:
                    scope.deadline = min(scope.deadline, trio.current_time() + linger)
    finally:
        sock.close()
    return {"responses": received, "closed": False, "leftover": b""}


async def send_tcp(data: bytes, addr: tuple[str, int], timeout: float) -> dict:
    """One fresh connection; read until the server closes it or ``timeout`` s pass."""
    stream = await trio.open_tcp_stream(*addr)
    buf = b""
    closed = False
    send_error = None
    try:
        try:
            await stream.send_all(data)
        except trio.BrokenResourceError as e:
            send_error = repr(e)
        with trio.move_on_after(timeout):
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    closed = True
                    break
                if not chunk:
                    closed = True
                    break
                buf += chunk
    finally:
        await trio.aclose_forcefully(stream)
    responses, leftover = split_stream(buf)
    return {
        "responses": responses,
        "closed": closed,
        "leftover": leftover,
        "send_error": send_error,
    }


async def options_ok(transport: str, addr: tuple[str, int]) -> int | None:
    """A final OPTIONS to the server: its status, or None when nothing came back."""
    client = await SipClient.connect(transport, *addr)
    try:
        request = client.build("OPTIONS", f"sip:{addr[0]}:{addr[1]}", to=f"<sip:{addr[0]}>")
        try:
            response = await client.request(request, timeout=3.0)
        except (trio.TooSlowError, EOFError, trio.BrokenResourceError):
            return None
        return response.status
    finally:
        await client.aclose()


async def run_one(
    path: Path, set_name: str, transport: str, tmp: Path, args: argparse.Namespace
) -> dict:
    data = path.read_bytes()
    workdir = tmp / f"{set_name}-{path.stem}-{transport}"
    workdir.mkdir(parents=True)
    started = time.monotonic()
    async with running_server(workdir, {"sip.listen_addr": "127.0.0.1"}) as srv:
        addr = srv.addr(transport)
        if transport == "udp":
            result = await send_udp(data, addr, args.timeout, args.linger)
        else:
            result = await send_tcp(data, addr, args.timeout)
        alive = await options_ok(transport, addr)
        counters = srv.counters()
        stats = {k: counters[k] for k in STAT_KEYS if counters.get(k)}
    responses = result["responses"]
    return {
        "set": set_name,
        "name": path.stem,
        "file": path.name,
        "transport": transport,
        "codes": [status_of(r) for r in responses],
        "lines": [first_line(r) for r in responses],
        "closed": result["closed"],
        "leftover": len(result["leftover"]),
        "send_error": result.get("send_error"),
        "alive": alive,
        "stats": stats,
        "seconds": round(time.monotonic() - started, 3),
    }


async def main(args: argparse.Namespace) -> int:
    torture = Path(args.torture)
    tmp = Path(args.tmp)
    jobs = [
        (path, set_name, transport)
        for set_name in SETS
        for path in sorted((torture / set_name).glob("*.dat"))
        if not args.only or path.stem in args.only
        for transport in ("udp", "tcp")
    ]
    limiter = trio.CapacityLimiter(args.parallel)
    failures = 0

    async def job(path: Path, set_name: str, transport: str) -> None:
        nonlocal failures
        async with limiter:
            try:
                record = await run_one(path, set_name, transport, tmp, args)
            except Exception as e:  # report the harness failure, keep the other messages going
                failures += 1
                record = {
                    "set": set_name,
                    "name": path.stem,
                    "transport": transport,
                    "error": repr(e),
                }
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()

    async with trio.open_nursery() as nursery:
        for path, set_name, transport in jobs:
            nursery.start_soon(job, path, set_name, transport)
    sys.stdout.write(json.dumps({"done": len(jobs), "harness_errors": failures}) + "\n")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--torture", required=True, help="folder holding rfc4475/ and rfc5118/")
    p.add_argument("--tmp", required=True, help="scratch folder for the servers' databases")
    p.add_argument("--timeout", type=float, default=1.5, help="seconds to wait for answers")
    p.add_argument(
        "--linger", type=float, default=0.3, help="seconds to listen past a final answer"
    )
    p.add_argument("--parallel", type=int, default=24, help="servers running at once")
    p.add_argument("--only", nargs="*", help="message names to send (default: all)")
    return p.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    raise SystemExit(trio.run(main, parse_args()))
