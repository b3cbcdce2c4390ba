"""SIP.js-shaped browser tabs over WebSocket: the client processes of the WS benchmarks.

    .venv/bin/python bench/ws_browser.py --port PORT --n N [--prefix u] [--first 0]
        [--concurrency 200] [--local 127.0.0.10]

Started by ``ws_scale.Clients`` (bench/ws_scale.py, ws_ab.py, compare.py), one process
per share of the flows so that their CPU and memory are not the server's. Each opens
its flows (wsproto over a Trio stream, ``Sec-WebSocket-Protocol: sip``), REGISTERs
each with its own AOR and then follows the parent's commands on stdin, one JSON line
out per step (see ``run_client``). ``Browser`` is also the soak's WebSocket client.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import uuid
from collections import Counter
from typing import Any

import trio
import wsproto
import wsproto.events as wse
from wsproto.connection import ConnectionState

__all__ = ["DOMAIN", "GONE", "ORIGIN", "Browser", "raise_fd_limit", "sipjs_register"]

DOMAIN = "example.com"
ORIGIN = b"http://localhost:8088"
# what a client flow may raise when the server or the network drops it
GONE = (
    OSError,
    EOFError,
    trio.TooSlowError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    wsproto.utilities.LocalProtocolError,
)


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard one (children inherit it); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def sipjs_register(user: str, host: str, call_id: str, tag: str, cseq: int, contact: bool) -> str:
    """A REGISTER as SIP.js 0.21 sends it (``contact=False``: a fetch of the bindings)."""
    lines = [
        f"REGISTER sip:{DOMAIN} SIP/2.0",
        f"Via: SIP/2.0/WS {host};branch=z9hG4bK{uuid.uuid4().hex[:16]}",
        "Max-Forwards: 70",
        f"To: <sip:{user}@{DOMAIN}>",
        f"From: <sip:{user}@{DOMAIN}>;tag={tag}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
    ]
    if contact:
        lines.append(f"Contact: <sip:{user}@{host};transport=ws>;expires=600")
    lines += [
        "Allow: ACK,CANCEL,INVITE,MESSAGE,BYE,OPTIONS,INFO,NOTIFY,REFER",
        "Supported: outbound",
        "User-Agent: SIP.js/0.21.2",
        "Content-Length: 0",
    ]
    return "\r\n".join(lines) + "\r\n\r\n"


class Browser:
    """One browser tab's WebSocket: wsproto over a Trio stream, a reader task answering pings."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.host = f"{uuid.uuid4().hex[:12]}.invalid"
        self.call_id = uuid.uuid4().hex
        self.tag = uuid.uuid4().hex[:10]
        self.cseq = 0
        self.conn = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.stream: trio.SocketStream | None = None
        self.send_lock = trio.Lock()
        self.accepted = trio.Event()
        self.closed = trio.Event()
        self.refused: str | None = None
        self.replies_in, self.replies = trio.open_memory_channel[str](16)
        self.pings = 0
        self.pongs: dict[bytes, trio.Event] = {}  # our pings waiting for their Pong
        self.invites = 0
        self._text: list[str] = []

    @property
    def contact_uri(self) -> str:
        return f"<sip:{self.user}@{self.host};transport=ws>"

    async def send(self, event: wse.Event) -> None:
        if self.stream is None:
            raise trio.ClosedResourceError("never connected")
        async with self.send_lock:
            await self.stream.send_all(self.conn.send(event))

    async def _answer(self, event: wse.Event, if_state: ConnectionState) -> None:
        """Send a Pong or Close answer unless our own Close went out first."""
        assert self.stream is not None
        async with self.send_lock:
            if self.conn.state is if_state:
                await self.stream.send_all(self.conn.send(event))

    async def reader(self) -> None:
        assert self.stream is not None
        try:
            while True:
                data = await self.stream.receive_some(65536)
                if not data:
                    break
                self.conn.receive_data(data)
                for event in self.conn.events():
                    match event:
                        case wse.AcceptConnection():
                            self.accepted.set()
                        case wse.RejectConnection():
                            self.refused = f"refused {event.status_code}"
                            self.accepted.set()
                        case wse.TextMessage():
                            self._text.append(event.data)
                            if event.message_finished:
                                text = "".join(self._text)
                                self._text.clear()
                                if text.startswith("INVITE "):
                                    await self._answer_invite(text)
                                else:
                                    self._message(text)
                        case wse.BytesMessage():
                            self._message(bytes(event.data).decode("utf-8", "replace"))
                        case wse.Ping():
                            self.pings += 1
                            await self._answer(event.response(), ConnectionState.OPEN)
                        case wse.Pong():
                            waiter = self.pongs.pop(bytes(event.payload), None)
                            if waiter is not None:
                                waiter.set()
                        case wse.CloseConnection():
                            await self._answer(event.response(), ConnectionState.REMOTE_CLOSING)
                            self.closed.set()
                            return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self.accepted.set()
            self.closed.set()
            self.replies_in.close()

    async def _answer_invite(self, text: str) -> None:
        """Answer a call at once with a 200 OK (a tab that auto-answers)."""
        self.invites += 1
        head = text.split("\r\n\r\n", 1)[0].split("\r\n")
        keep = ("via:", "record-route:", "from:", "call-id:", "cseq:")
        lines = ["SIP/2.0 200 OK"]
        for line in head[1:]:
            low = line.lower()
            if low.startswith(keep):
                lines.append(line)
            elif low.startswith("to:"):
                lines.append(f"{line};tag={self.tag}a")
        lines += [f"Contact: {self.contact_uri}", "Content-Length: 0"]
        await self.send(wse.TextMessage(data="\r\n".join(lines) + "\r\n\r\n"))

    async def ping_rtt(self, timeout: float = 10.0) -> float:
        """Seconds from a Ping of ours to the server's Pong."""
        payload = uuid.uuid4().bytes[:8]
        waiter = self.pongs[payload] = trio.Event()
        started = time.monotonic()
        await self.send(wse.Ping(payload=payload))
        with trio.fail_after(timeout):
            await waiter.wait()
        return time.monotonic() - started

    def _message(self, text: str) -> None:
        if text.startswith("SIP/2.0 ") and text[8:9] != "1":  # final responses only
            self.replies_in.send_nowait(text)

    async def request(self, text: str, timeout: float = 30.0) -> str:
        await self.send(wse.TextMessage(data=text))
        with trio.fail_after(timeout):
            try:
                return await self.replies.receive()
            except trio.EndOfChannel:
                raise EOFError("closed while waiting for a response") from None

    def register(self, contact: bool = True, user: str | None = None) -> str:
        self.cseq += 1
        return sipjs_register(
            user or self.user, self.host, self.call_id, self.tag, self.cseq, contact
        )


async def run_client(
    port: int, users: list[str], concurrency: int, local: str | None = None
) -> None:
    """Open one flow per user, REGISTER, then follow the parent's commands on stdin.

    Lines out (JSON): ready, registered, verified, closed. Lines in: go, verify, close.
    """

    def emit(event: str, **data: Any) -> None:
        print(json.dumps({"event": event, **data}), flush=True)

    async def command() -> str:
        return (await trio.to_thread.run_sync(sys.stdin.readline)).strip()

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    errors: Counter[str] = Counter()
    browsers: list[Browser] = []
    latencies: list[float] = []  # REGISTER -> 200, ms, in the burst
    limiter = trio.CapacityLimiter(concurrency)

    async def open_flow(nursery: trio.Nursery, b: Browser) -> None:
        try:
            async with limiter:
                with trio.fail_after(30):
                    b.stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=local)
                    nursery.start_soon(b.reader)
                    await b.send(
                        wse.Request(
                            host=f"127.0.0.1:{port}",
                            target="/",
                            subprotocols=["sip"],
                            extra_headers=[(b"Origin", ORIGIN)],
                        )
                    )
                    await b.accepted.wait()
                    if b.refused or b.closed.is_set():
                        errors[b.refused or "closed during handshake"] += 1
                        return
                    sent = time.monotonic()
                    reply = await b.request(b.register())
                    latencies.append(round((time.monotonic() - sent) * 1000, 2))
        except GONE as e:
            errors[type(e).__name__] += 1
            return
        if not reply.startswith("SIP/2.0 200 "):
            errors[reply.split("\r\n", 1)[0]] += 1
        elif f"{b.contact_uri};expires=600" not in reply:
            errors["200 without own Contact"] += 1
        else:
            browsers.append(b)

    async def fetch_own(b: Browser, bound: list[Browser]) -> None:
        async with limiter:
            try:
                reply = await b.request(b.register(contact=False))
            except GONE:
                return
        if reply.startswith("SIP/2.0 200 ") and b.contact_uri in reply:
            bound.append(b)

    async def close_flow(b: Browser) -> None:
        async with limiter:
            try:
                await b.send(wse.CloseConnection(code=1000))
                with trio.move_on_after(2):
                    await b.closed.wait()
            except GONE:
                pass
            finally:
                if b.stream is not None:
                    await trio.aclose_forcefully(b.stream)

    async with trio.open_nursery() as readers:
        emit("ready")
        await command()  # go
        started, cpu0 = time.monotonic(), cpu()
        async with trio.open_nursery() as nursery:
            for user in users:
                nursery.start_soon(open_flow, readers, Browser(user))
        emit(
            "registered",
            ok=len(browsers),
            errors=dict(errors),
            seconds=time.monotonic() - started,
            cpu=cpu() - cpu0,
            pings=sum(b.pings for b in browsers),
            latencies=latencies,
            last=browsers[-1].user if browsers else None,
        )

        while (line := await command()) == "probe":
            # keep-alive answered while all are held: Ping -> Pong from a sample
            rtts: list[float] = []
            for b in browsers[:: max(1, len(browsers) // 200)]:
                try:
                    rtts.append(round(await b.ping_rtt() * 1000, 2))
                except GONE:
                    rtts.append(-1.0)
            emit("probed", rtts=rtts, invites=sum(b.invites for b in browsers))
        assert line == "verify", line
        pings_at_verify = sum(b.pings for b in browsers)
        bound: list[Browser] = []
        async with trio.open_nursery() as nursery:
            for b in browsers:
                nursery.start_soon(fetch_own, b, bound)
        pings = [b.pings for b in browsers]
        emit(
            "verified",
            alive=sum(not b.closed.is_set() for b in browsers),
            bound=len(bound),
            pings_min=min(pings, default=0),
            pings_at_verify=pings_at_verify,
        )

        await command()  # close
        started = time.monotonic()
        async with trio.open_nursery() as nursery:
            for b in browsers:
                nursery.start_soon(close_flow, b)
        closed_in = time.monotonic() - started
        # the bindings of a sample must be gone: fetch them over a new connection
        sample = browsers[:: max(1, len(browsers) // 100)]
        watcher = Browser(f"watcher-{uuid.uuid4().hex[:8]}")
        await open_flow(readers, watcher)
        still = list(sample)
        with trio.move_on_after(15):
            while still:
                left = []
                for b in still:
                    try:
                        reply = await watcher.request(watcher.register(contact=False, user=b.user))
                    except GONE:
                        reply = b.contact_uri  # unknown: count it as still bound
                    if b.contact_uri in reply:
                        left.append(b)
                still = left
                if still:
                    await trio.sleep(0.2)
        emit(
            "closed",
            seconds=closed_in,
            sample=len(sample),
            still_bound=len(still),
            unbound_after=time.monotonic() - started,
        )
        await close_flow(watcher)
        readers.cancel_scope.cancel()


def client_main(args: argparse.Namespace) -> int:
    raise_fd_limit()
    users = [f"{args.prefix}{i}" for i in range(args.first, args.first + args.n)]
    trio.run(run_client, args.port, users, args.concurrency, args.local)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--n", type=int, required=True, help="flows this process opens")
    p.add_argument("--prefix", default="u", help="AORs are PREFIX<i>")
    p.add_argument("--first", type=int, default=0, help="i of the first flow")
    p.add_argument("--concurrency", type=int, default=200, help="handshakes in flight")
    p.add_argument("--local", default=None, help="source address (127.0.0.x)")
    return client_main(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
