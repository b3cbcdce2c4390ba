"""The control socket: newline-delimited JSON over a Unix socket, for the TUI and the CLI.

On connect a client gets a snapshot, then live events (bindings, dialogs, flows,
counters once a second) and, on request, the SIP trace. It may send commands, one
JSON object per line; each gets one ``reply``. The protocol is documented in
docs/control-protocol.md.

Observers must never slow the proxy: every subscriber has a bounded queue filled
without waiting (``send_nowait``) and drained by its own writer task; a subscriber
whose queue overflows is dropped, its connection closed. The socket file is created
mode 0600 in a directory created mode 0700, so only the server's user can connect.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio
from pydantic import ValidationError

from ..core.calls import CallEvent
from ..core.dialogs import DialogEvent
from ..core.events import BindingEvent, Event
from ..core.types import Peer
from ..transport.hub import Flow
from .config import Config
from .simcall import SimCallError
from .views import (
    CallRequest,
    binding_event_view,
    binding_view,
    call_event_view,
    counters_view,
    dialog_event_view,
    flow_view,
    gauges_view,
    hostport,
    iso,
    resolve_aor_untrusted,
    snapshot_view,
    state_view,
)

if TYPE_CHECKING:
    from .ports import ControlHost

__all__ = ["QUEUE_LIMIT", "serve_control"]

log = logging.getLogger("siptrio.control")

QUEUE_LIMIT = 1024  # messages queued for one subscriber before it counts as not reading
MAX_LINE = 65536  # bytes in one command line
COUNTERS_INTERVAL = 1.0
WAIT_MARGIN = 10.0  # a waiting "call" replies after answer_timeout + duration + this


@dataclass(frozen=True, slots=True)
class _Trace:
    """A SIP message seen by the hub tap, formatted by the writer, not on the hot path."""

    time: float
    direction: str
    data: bytes
    peer: Peer
    full: bool


class _Subscriber:
    """One connected client: its queue, its cancel scope and its trace tap."""

    def __init__(self, server: ControlHost) -> None:
        self.server = server
        send, receive = trio.open_memory_channel[dict[str, Any] | _Trace](QUEUE_LIMIT)
        self._send = send
        self.queue = receive
        self.cancel_scope = trio.CancelScope()
        self.dropped: str | None = None
        self.trace_full: bool | None = None  # None: not subscribed

    def push(self, item: dict[str, Any] | _Trace) -> None:
        """Queue without waiting; a full queue drops this subscriber."""
        if self.dropped is not None:
            return
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            self.drop("queue full: the client does not read")
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def drop(self, reason: str) -> None:
        if self.dropped is None:
            self.dropped = reason
            self.server.stats["control.subscribers_dropped"] += 1
            log.warning("dropped a control socket client: %s", reason)
        self.cancel_scope.cancel()

    def tap(self, direction: str, data: bytes, peer: Peer) -> None:
        if self.trace_full is not None and data.strip(b"\r\n\0"):
            self.push(_Trace(time.time(), direction, data, peer, self.trace_full))


class ControlServer:
    """Fans server events out to the connected clients and answers their commands."""

    def __init__(self, server: ControlHost) -> None:
        self.server = server
        self.subscribers: set[_Subscriber] = set()
        self._commands: dict[str, Callable[[_Subscriber, dict[str, Any]], Awaitable[None]]] = {
            "snapshot": self._cmd_snapshot,
            "subscribe_trace": self._cmd_subscribe_trace,
            "unsubscribe_trace": self._cmd_unsubscribe_trace,
            "kick": self._cmd_kick,
            "call": self._cmd_call,
            "reload": self._cmd_reload,
        }
        self._nursery: trio.Nursery | None = None

    # --- fan-out ----------------------------------------------------------------------------

    def broadcast(self, item: dict[str, Any]) -> None:
        for sub in list(self.subscribers):
            sub.push(item)

    def on_flow_change(self, kind: str, flow: Flow) -> None:
        if not self.subscribers:
            return
        mono = trio.current_time()
        bindings = self.server.location.on_flow(flow.id)
        view = flow_view(flow, mono, bindings)
        now = iso(time.time())
        if kind == "closed":
            reason = flow.close_reason
            if reason is not None and reason.startswith("keep-alive"):
                self.broadcast(
                    {"type": "flow", "event": "keepalive_failed", "time": now, "flow": view}
                )
            self.broadcast(
                {"type": "flow", "event": "closed", "time": now, "reason": reason, "flow": view}
            )
        else:
            self.broadcast({"type": "flow", "event": kind, "time": now, "flow": view})

    async def counters_loop(self) -> None:
        while True:
            await trio.sleep(COUNTERS_INTERVAL)
            if self.subscribers:
                msg: dict[str, Any] = {
                    "type": "counters",
                    "time": iso(time.time()),
                    "gauges": gauges_view(self.server),
                    "state": state_view(self.server),
                    "counters": counters_view(self.server),
                }
                cluster = self.server.cluster_view()
                if cluster is not None:
                    # the other nodes' dialogs and flows have no events here: their view
                    # (read from Redis once a second) rides along instead
                    msg["cluster"] = cluster
                self.broadcast(msg)

    # --- one client ---------------------------------------------------------------------------

    async def handle(self, stream: trio.SocketStream) -> None:
        server = self.server
        sub = _Subscriber(server)
        server.stats["control.connections"] += 1
        # subscribe and snapshot with no checkpoint between: no event is lost or doubled
        events = server.events.subscribe(QUEUE_LIMIT)
        sub.push(snapshot_view(server, time.time(), trio.current_time()))
        self.subscribers.add(sub)
        try:
            with sub.cancel_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer, sub, stream)
                    nursery.start_soon(self._events, sub, events)
                    nursery.start_soon(self._reader, sub, stream, nursery)
        except Exception:
            # a bug must cost this client its connection, never the server
            server.stats["internal_errors"] += 1
            log.exception("control socket client failed")
        finally:
            self.subscribers.discard(sub)
            server.remove_tap(sub.tap)
            events.close()
            await trio.aclose_forcefully(stream)

    async def _writer(self, sub: _Subscriber, stream: trio.SocketStream) -> None:
        while True:
            batch = [await sub.queue.receive()]
            while len(batch) < 256:
                try:
                    batch.append(sub.queue.receive_nowait())
                except trio.WouldBlock:
                    break
            data = b"".join(_encode(item) for item in batch)
            try:
                await stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                sub.cancel_scope.cancel()
                return

    async def _events(self, sub: _Subscriber, events: trio.MemoryReceiveChannel[Event]) -> None:
        async for event in events:
            now = time.time()
            if isinstance(event, BindingEvent):
                sub.push(binding_event_view(event, now))
            elif isinstance(event, DialogEvent):
                sub.push(dialog_event_view(event, now))
            elif isinstance(event, CallEvent):
                sub.push(call_event_view(event, now))
            # (refusals are the log's and the trace's: no view here)
        # the event bus closes the channel of a subscriber that fell behind
        sub.drop("event queue full: the client does not read")

    async def _reader(
        self, sub: _Subscriber, stream: trio.SocketStream, nursery: trio.Nursery
    ) -> None:
        buffer = b""
        while True:
            try:
                data = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                sub.cancel_scope.cancel()  # the client hung up
                return
            buffer += data
            while b"\n" in buffer:
                line, _, buffer = buffer.partition(b"\n")
                if line.strip():
                    await self._command_untrusted(sub, line, nursery)
            if len(buffer) > MAX_LINE:
                sub.push(_reply(None, None, ok=False, error=f"line longer than {MAX_LINE} bytes"))
                sub.push({"type": "bye"})
                await trio.sleep(0.1)  # let the writer say why
                sub.cancel_scope.cancel()
                return

    async def _command_untrusted(
        self, sub: _Subscriber, line: bytes, nursery: trio.Nursery
    ) -> None:
        try:
            msg = json.loads(line)
        except ValueError as e:
            sub.push(_reply(None, None, ok=False, error=f"not JSON: {e}"))
            return
        if not isinstance(msg, dict):
            sub.push(_reply(None, None, ok=False, error="expected a JSON object"))
            return
        cmd = msg.get("cmd")
        handler = self._commands.get(cmd) if isinstance(cmd, str) else None
        if handler is None:
            sub.push(
                _reply(
                    msg,
                    None,
                    ok=False,
                    error=f"unknown command {cmd!r}",
                    field="cmd",
                    commands=sorted(self._commands),
                )
            )
            return
        if cmd == "call":
            # a call may wait for its end: never hold up the commands behind it
            nursery.start_soon(self._run, handler, sub, msg)
            return
        await self._run(handler, sub, msg)

    async def _run(
        self,
        handler: Callable[[_Subscriber, dict[str, Any]], Awaitable[None]],
        sub: _Subscriber,
        msg: dict[str, Any],
    ) -> None:
        try:
            await handler(sub, msg)
        except Exception:
            self.server.stats["internal_errors"] += 1
            log.exception("control command %r failed", msg.get("cmd"))
            sub.push(_reply(msg, None, ok=False, error="internal error"))

    # --- commands -------------------------------------------------------------------------

    async def _cmd_snapshot(self, sub: _Subscriber, msg: dict[str, Any]) -> None:
        sub.push(snapshot_view(self.server, time.time(), trio.current_time()))
        sub.push(_reply(msg, "snapshot", ok=True))

    async def _cmd_subscribe_trace(self, sub: _Subscriber, msg: dict[str, Any]) -> None:
        full = msg.get("full", False)
        if not isinstance(full, bool):
            sub.push(
                _reply(
                    msg, "subscribe_trace", ok=False, error="full: expected a boolean", field="full"
                )
            )
            return
        if sub.trace_full is None:
            self.server.add_tap(sub.tap)
        sub.trace_full = full
        sub.push(_reply(msg, "subscribe_trace", ok=True, full=full))

    async def _cmd_unsubscribe_trace(self, sub: _Subscriber, msg: dict[str, Any]) -> None:
        sub.trace_full = None
        self.server.remove_tap(sub.tap)
        sub.push(_reply(msg, "unsubscribe_trace", ok=True))

    async def _cmd_kick(self, sub: _Subscriber, msg: dict[str, Any]) -> None:
        aor, contact = msg.get("aor"), msg.get("contact")
        if not isinstance(aor, str) or not aor:
            sub.push(_reply(msg, "kick", ok=False, error="aor: expected a string", field="aor"))
            return
        if contact is not None and not isinstance(contact, str):
            sub.push(
                _reply(msg, "kick", ok=False, error="contact: expected a string", field="contact")
            )
            return
        try:
            key = resolve_aor_untrusted(self.server.location, aor)
        except ValueError as e:
            sub.push(_reply(msg, "kick", ok=False, error=str(e), field="aor"))
            return
        removed = await self.server.kick(key, contact)
        now = time.time()
        views = [binding_view(b, now) for b in removed]
        if not removed:
            what = f"{key} with contact {contact}" if contact is not None else key
            sub.push(
                _reply(msg, "kick", ok=False, error=f"no binding of {what}", aor=key, removed=[])
            )
            return
        sub.push(_reply(msg, "kick", ok=True, aor=key, removed=views))

    async def _cmd_call(self, sub: _Subscriber, msg: dict[str, Any]) -> None:
        wait = msg.get("wait", False)
        fields = {k: v for k, v in msg.items() if k not in ("cmd", "id", "wait")}
        try:
            if not isinstance(wait, bool):
                raise TypeError
            request = CallRequest.model_validate(fields)
        except TypeError:
            sub.push(_reply(msg, "call", ok=False, error="wait: expected a boolean", field="wait"))
            return
        except ValidationError as e:
            first = e.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or None
            sub.push(_reply(msg, "call", ok=False, error=f"{field}: {first['msg']}", field=field))
            return
        try:
            call = await self.server.simulator.start_call(
                to=request.to,
                from_=request.from_,
                duration=request.duration,
                answer_timeout=request.answer_timeout,
                sdp=request.sdp,
            )
        except SimCallError as e:
            sub.push(_reply(msg, "call", ok=False, error=str(e)))
            return
        if wait:
            with trio.move_on_after(request.answer_timeout + request.duration + WAIT_MARGIN):
                await call.done.wait()
        sub.push(_reply(msg, "call", ok=True, call=call.as_dict()))

    async def _cmd_reload(self, sub: _Subscriber, msg: dict[str, Any]) -> None:
        outcome = await self.server.reloader.reload("control socket")
        fields = outcome.as_dict()
        del fields["ok"]
        sub.push(_reply(msg, "reload", ok=outcome.ok, **fields))


def _reply(
    msg: dict[str, Any] | None, cmd: str | None, *, ok: bool, **fields: Any
) -> dict[str, Any]:
    return {
        "type": "reply",
        "id": msg.get("id") if msg is not None else None,
        "cmd": cmd if cmd is not None else (msg.get("cmd") if msg is not None else None),
        "ok": ok,
        **fields,
    }


def _encode(item: dict[str, Any] | _Trace) -> bytes:
    if isinstance(item, _Trace):
        item = _trace_view(item)
    return json.dumps(item, separators=(",", ":"), default=str).encode() + b"\n"


def _trace_view(t: _Trace) -> dict[str, Any]:
    head = t.data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    lines = head.split(b"\n")
    call_id = cseq = None
    for raw in lines[1:]:
        name, colon, value = raw.partition(b":")
        if not colon:
            continue
        name = name.strip().lower()
        if name in (b"call-id", b"i") and call_id is None:
            call_id = value.strip().decode("utf-8", "replace")
        elif name == b"cseq" and cseq is None:
            cseq = value.strip().decode("utf-8", "replace")
    peer = t.peer
    view: dict[str, Any] = {
        "type": "sip",
        "time": iso(t.time),
        "direction": t.direction,
        "transport": peer.transport.value,
        "peer": peer.address,
        "local": hostport(peer.local_host, peer.local_port),
        "flow": peer.flow_id,
        "size": len(t.data),
        "first_line": lines[0].strip().decode("utf-8", "replace"),
        "call_id": call_id,
        "cseq": cseq,
    }
    if t.full:
        view["text"] = t.data.decode("utf-8", "replace")
    return view


# --- the socket file ------------------------------------------------------------------------


def _prepare_path(path: str) -> None:
    """Create the directory (0700) if missing; remove a stale socket, refuse a live one."""
    from .errors import StartupError

    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            os.chmod(directory, 0o700)
        except OSError as e:
            raise StartupError(
                f"[control] socket: cannot create directory {directory}: {e.strerror or e}"
            ) from e
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"[control] socket: {path} exists and is not a socket; remove it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # left behind by a server that died
        log.info("removed stale control socket %s", path)
        return
    except OSError as e:
        raise StartupError(f"[control] socket: cannot check {path}: {e.strerror or e}") from e
    finally:
        probe.close()
    raise StartupError(f"[control] socket: {path} is in use by another running server")


def _bind(path: str) -> socket.socket:
    from .errors import StartupError

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the file is born 0600: no window where others connect
    try:
        sock.bind(path)
    except OSError as e:
        sock.close()
        raise StartupError(f"[control] socket: cannot listen on {path}: {e.strerror or e}") from e
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(64)
    sock.setblocking(False)
    return sock


async def serve_control(
    server: ControlHost,
    config: Config,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the control socket at ``[control] socket`` until cancelled; started(path)."""
    path = config.control.socket
    _prepare_path(path)
    sock = _bind(path)
    inode = os.stat(path).st_ino
    control = ControlServer(server)
    unwatch = server.watch_flows(control.on_flow_change)
    try:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(control.counters_loop)
            await nursery.start(trio.serve_listeners, control.handle, [listener])
            log.info("control socket at %s", path)
            task_status.started(path)
    finally:
        unwatch()
        sock.close()
        try:
            if os.stat(path).st_ino == inode:
                os.unlink(path)
        except OSError:
            pass
