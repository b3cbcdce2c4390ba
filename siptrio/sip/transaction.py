"""RFC 3261 section 17 transactions, with the RFC 6026 corrections (sans-IO).

Four state machines (INVITE/non-INVITE x client/server) and the layer that matches
messages to them and owns their timers. A transaction never does I/O: it returns
``TxSend`` (bytes for its peer, which it knows only as an opaque ``dest``) and
``TxEvent`` values for its transaction user, and asks the shared ``TimerHeap`` for
timers A..M. Retransmission timers run only on unreliable transports.

State changes are kept as small methods named after the RFC's transitions; the
figure numbers in the comments are RFC 3261's (figures 5-8) and RFC 6026's.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable
from dataclasses import dataclass, field

from .message import Request, Response
from .timers import TimerHeap

__all__ = [
    "ClientTransaction",
    "ServerTransaction",
    "Timers",
    "TransactionLayer",
    "TxEvent",
    "TxKind",
    "TxSend",
    "TxState",
    "client_key",
    "server_key",
]


class TxState(enum.Enum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    ACCEPTED = "accepted"  # RFC 6026: INVITE after a 2xx
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


@dataclass(frozen=True, kw_only=True)
class Timers:
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0

    @property
    def b(self) -> float:  # also F, H, J, L, M: 64*T1
        return 64 * self.t1


# Timer names (RFC 3261 section 17 and RFC 6026)
TIMER_A, TIMER_B, TIMER_D = "A", "B", "D"
TIMER_E, TIMER_F, TIMER_K = "E", "F", "K"
TIMER_G, TIMER_H, TIMER_I, TIMER_J = "G", "H", "I", "J"
TIMER_L, TIMER_M = "L", "M"
ALL_TIMERS = ("A", "B", "D", "E", "F", "K", "G", "H", "I", "J", "L", "M")


@dataclass(slots=True, unsafe_hash=True)
class TxSend:
    """Bytes to send to the transaction's peer."""

    data: bytes
    dest: object
    owner: Hashable = None  # the transaction key, for reporting transport errors


class TxKind(enum.Enum):
    RESPONSE = "response"  # client: a response for the TU
    TIMEOUT = "timeout"  # client: Timer B/F fired (the TU acts as if 408 arrived)
    TERMINATED = "terminated"  # either side: the transaction is gone
    NO_ACK = "no_ack"  # server INVITE: Timer H fired without an ACK


@dataclass(slots=True, unsafe_hash=True)
class TxEvent:
    kind: TxKind
    key: Hashable
    response: Response | None = None


Output = list[TxSend | TxEvent]


def server_key(request: Request) -> tuple[str, ...]:
    """RFC 3261 section 17.2.3; ACK and CANCEL share the INVITE's branch and sent-by."""
    via = request.top_via
    branch = via.branch
    method = "INVITE" if request.method == "ACK" else request.method
    if branch and branch.startswith("z9hG4bK") and len(branch) > 7:
        return (branch, via.sent_by.lower(), method)
    # RFC 2543 fallback: everything that identifies the request except the To tag
    return (
        "2543",
        request.uri_text,
        request.from_.tag or "",
        request.call_id,
        str(request.cseq.number),
        via.sent_by.lower(),
        method,
    )


def client_key(branch: str, method: str) -> tuple[str, str]:
    """RFC 3261 section 17.1.3: our branch plus the CSeq method (ACK never has one)."""
    return (branch, method)


@dataclass(eq=False)
class ServerTransaction:
    key: Hashable
    request: Request
    dest: object
    reliable: bool
    timers: Timers
    heap: TimerHeap
    state: TxState = TxState.PROCEEDING
    last_response: bytes | None = None
    last_status: int = 0
    context: object = field(default=None)  # the TU's own state (proxy context)
    started: float = 0.0  # when the request came in: the TU times its answer from it

    @property
    def is_invite(self) -> bool:
        return self.request.method == "INVITE"

    def __post_init__(self) -> None:
        if not self.is_invite:
            self.state = TxState.TRYING

    # -- from the network ------------------------------------------------------------

    def on_retransmission(self, now: float) -> Output:
        """The same request again: re-send the last response, if any (17.2.1, 17.2.2)."""
        if self.state is TxState.ACCEPTED:
            return []  # RFC 6026: the 2xx is the TU's to retransmit
        if self.last_response is not None and self.state is not TxState.CONFIRMED:
            return [TxSend(self.last_response, self.dest, self.key)]
        return []

    def on_ack(self, now: float) -> Output:
        if self.is_invite and self.state is TxState.COMPLETED:
            self.state = TxState.CONFIRMED
            self.heap.cancel_all(self.key, (TIMER_G, TIMER_H))
            if self.reliable:
                return self._terminate()
            self.heap.start(now + self.timers.t4, self.key, TIMER_I)
        return []

    # -- from the TU -------------------------------------------------------------------

    def respond(self, data: bytes, status: int, now: float) -> Output:
        if self.state in (TxState.COMPLETED, TxState.CONFIRMED, TxState.TERMINATED):
            return []  # a final answer was already given
        out: Output = []
        if self.state is TxState.ACCEPTED:
            if 200 <= status < 300:
                out.append(TxSend(data, self.dest, self.key))  # 2xx retransmission through us
            return out
        self.last_response = data
        self.last_status = status
        out.append(TxSend(data, self.dest, self.key))
        if status < 200:
            if not self.is_invite:
                self.state = TxState.PROCEEDING
            return out
        if self.is_invite:
            if status < 300:
                self.state = TxState.ACCEPTED
                self.heap.start(now + self.timers.b, self.key, TIMER_L)
                return out
            self.state = TxState.COMPLETED
            if not self.reliable:
                self.heap.start(now + self.timers.t1, self.key, TIMER_G)
                self._g = self.timers.t1
            self.heap.start(now + self.timers.b, self.key, TIMER_H)
            return out
        self.state = TxState.COMPLETED
        if self.reliable:
            out.extend(self._terminate())
        else:
            self.heap.start(now + self.timers.b, self.key, TIMER_J)
        return out

    # -- timers --------------------------------------------------------------------------

    def on_timer(self, name: str, now: float) -> Output:
        if name == TIMER_G and self.state is TxState.COMPLETED and self.last_response:
            self._g = min(2 * self._g, self.timers.t2)
            self.heap.start(now + self._g, self.key, TIMER_G)
            return [TxSend(self.last_response, self.dest, self.key)]
        if name == TIMER_H and self.state is TxState.COMPLETED:
            return [TxEvent(TxKind.NO_ACK, self.key), *self._terminate()]
        if name in (TIMER_I, TIMER_J, TIMER_L):
            return self._terminate()
        return []

    def _terminate(self) -> Output:
        self.state = TxState.TERMINATED
        self.heap.cancel_all(self.key, ALL_TIMERS)
        return [TxEvent(TxKind.TERMINATED, self.key)]

    _g: float = 0.0


@dataclass(eq=False)
class ClientTransaction:
    key: Hashable
    method: str
    data: bytes  # the request as sent
    dest: object
    reliable: bool
    timers: Timers
    heap: TimerHeap
    state: TxState = TxState.CALLING
    context: object = field(default=None)
    started: float = 0.0  # when the request was first sent: the TU times its answer
    _interval: float = 0.0

    @property
    def is_invite(self) -> bool:
        return self.method == "INVITE"

    def start(self, now: float) -> Output:
        t = self.timers
        self.started = now
        if self.is_invite:
            self.state = TxState.CALLING
            if not self.reliable:
                self._interval = t.t1
                self.heap.start(now + t.t1, self.key, TIMER_A)
            self.heap.start(now + t.b, self.key, TIMER_B)
        else:
            self.state = TxState.TRYING
            if not self.reliable:
                self._interval = t.t1
                self.heap.start(now + t.t1, self.key, TIMER_E)
            self.heap.start(now + t.b, self.key, TIMER_F)
        return [TxSend(self.data, self.dest, self.key)]

    def on_response(self, response: Response, ack: bytes | None, now: float) -> Output:
        """``ack`` is the hop-by-hop ACK to send for a 3xx-6xx answer to an INVITE."""
        status = response.status
        st = self.state
        deliver = TxEvent(TxKind.RESPONSE, self.key, response)
        if st is TxState.TERMINATED:
            return []
        if self.is_invite:
            if st in (TxState.CALLING, TxState.PROCEEDING):
                self.heap.cancel(self.key, TIMER_A)
                if status < 200:
                    self.state = TxState.PROCEEDING
                    return [deliver]
                if status < 300:
                    self.state = TxState.ACCEPTED  # RFC 6026 figure 5
                    self.heap.cancel(self.key, TIMER_B)
                    self.heap.start(now + self.timers.b, self.key, TIMER_M)
                    return [deliver]
                self.state = TxState.COMPLETED
                self.heap.cancel(self.key, TIMER_B)
                self._ack = ack
                out: Output = [deliver]
                if ack is not None:
                    out.append(TxSend(ack, self.dest, self.key))
                if self.reliable:
                    out.extend(self._terminate())
                else:
                    self.heap.start(now + 32.0, self.key, TIMER_D)
                return out
            if st is TxState.ACCEPTED:
                return [deliver] if 200 <= status < 300 else []
            if st is TxState.COMPLETED and status >= 300 and self._ack is not None:
                return [TxSend(self._ack, self.dest, self.key)]  # the final was retransmitted
            return []
        # non-INVITE, figure 6
        if st in (TxState.TRYING, TxState.PROCEEDING):
            if status < 200:
                self.state = TxState.PROCEEDING
                return [deliver]
            self.state = TxState.COMPLETED
            self.heap.cancel_all(self.key, (TIMER_E, TIMER_F))
            if self.reliable:
                return [deliver, *self._terminate()]
            self.heap.start(now + self.timers.t4, self.key, TIMER_K)
            return [deliver]
        return []

    def on_timer(self, name: str, now: float) -> Output:
        st = self.state
        if name == TIMER_A and st is TxState.CALLING:
            self._interval *= 2
            self.heap.start(now + self._interval, self.key, TIMER_A)
            return [TxSend(self.data, self.dest, self.key)]
        if name == TIMER_E and st in (TxState.TRYING, TxState.PROCEEDING):
            self._interval = (
                self.timers.t2
                if st is TxState.PROCEEDING
                else min(2 * self._interval, self.timers.t2)
            )
            self.heap.start(now + self._interval, self.key, TIMER_E)
            return [TxSend(self.data, self.dest, self.key)]
        if (name == TIMER_B and st is TxState.CALLING) or (
            name == TIMER_F and st in (TxState.TRYING, TxState.PROCEEDING)
        ):
            return [TxEvent(TxKind.TIMEOUT, self.key), *self._terminate()]
        if name in (TIMER_D, TIMER_K, TIMER_M):
            return self._terminate()
        return []

    def transport_error(self) -> Output:
        """RFC 3261 section 8.1.3.1: a failed send is a 503 for the TU."""
        if self.state in (TxState.COMPLETED, TxState.TERMINATED, TxState.ACCEPTED):
            return []
        return [TxEvent(TxKind.TIMEOUT, self.key), *self._terminate()]

    def _terminate(self) -> Output:
        self.state = TxState.TERMINATED
        self.heap.cancel_all(self.key, ALL_TIMERS)
        return [TxEvent(TxKind.TERMINATED, self.key)]

    _ack: bytes | None = None


class TransactionLayer:
    """Every live transaction, matched by key, and the one timer heap they share."""

    def __init__(self, timers: Timers | None = None) -> None:
        self.timers = timers or Timers()
        self.heap = TimerHeap()
        self.servers: dict[Hashable, ServerTransaction] = {}
        self.clients: dict[Hashable, ClientTransaction] = {}

    def find_server(self, request: Request) -> ServerTransaction | None:
        return self.servers.get(server_key(request))

    def new_server(
        self,
        request: Request,
        dest: object,
        reliable: bool,
        *,
        key: Hashable = None,
        now: float = 0.0,
    ) -> ServerTransaction:
        """``key``: server_key(request), when the caller has it already; ``now``: when
        the request came in."""
        if key is None:
            key = server_key(request)
        txn = ServerTransaction(
            key=key,
            request=request,
            dest=dest,
            reliable=reliable,
            timers=self.timers,
            heap=self.heap,
            started=now,
        )
        self.servers[key] = txn
        return txn

    def new_client(
        self,
        *,
        branch: str,
        method: str,
        data: bytes,
        dest: object,
        reliable: bool,
        context: object = None,
    ) -> ClientTransaction:
        key = client_key(branch, method)
        txn = ClientTransaction(
            key=key,
            method=method,
            data=data,
            dest=dest,
            reliable=reliable,
            timers=self.timers,
            heap=self.heap,
            context=context,
        )
        self.clients[key] = txn
        return txn

    def find_client(self, response: Response) -> ClientTransaction | None:
        branch = response.top_via.branch
        if not branch:
            return None
        return self.clients.get(client_key(branch, response.cseq.method))

    def next_deadline(self) -> float:
        return self.heap.next_deadline()

    def fire(self, now: float) -> Output:
        out: Output = []
        for owner, name in self.heap.pop_due(now):
            txn: ServerTransaction | ClientTransaction | None = self.servers.get(
                owner
            ) or self.clients.get(owner)
            if txn is not None:
                out.extend(txn.on_timer(name, now))
        return out

    def forget(self, key: Hashable) -> None:
        """Drop a terminated transaction (the TU calls this on TERMINATED)."""
        server = self.servers.pop(key, None)
        client = self.clients.pop(key, None)
        txn = server or client
        if txn is None or txn.state is not TxState.TERMINATED:
            self.heap.cancel_all(key, ALL_TIMERS)  # a terminated one has cancelled its own
