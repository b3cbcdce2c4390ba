"""One JSON shape per thing: bindings, dialogs, flows, listeners, counters, events.

The admin API, the control socket, the CLI and the TUI all show the same objects;
they take their JSON from here so a field has one name everywhere. Times are
ISO-8601 UTC strings (``2024-05-01T12:00:00.000Z``), durations and ages plain
seconds. Nothing here does I/O: each function takes ``now`` (wall clock) or
``mono`` (trio clock) from its caller.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from .. import __version__
from ..core.calls import CallEvent
from ..core.dialogs import DialogEvent, DialogInfo, DialogState
from ..core.events import BindingEvent
from ..core.location import Binding, Location
from ..core.types import Listener
from ..sip.caches import parse_caches
from ..sip.errors import SipParseError
from ..sip.uri import SipUri, parse_uri_untrusted
from ..store.cdrs import CallRecord
from ..transport.hub import Flow
from .formats import hostport, iso

if TYPE_CHECKING:
    from .ports import ServerView

__all__ = [
    "CallRequest",
    "binding_event_view",
    "binding_view",
    "counters_view",
    "dialog_event_view",
    "dialog_view",
    "flow_view",
    "iso",
    "listener_view",
    "resolve_aor_untrusted",
    "server_view",
    "snapshot_view",
    "state_view",
]

MAX_CALL_SECONDS = 3600.0
MAX_RING_SECONDS = 600.0


# --- things ---------------------------------------------------------------------------


def binding_view(b: Binding, now: float) -> dict[str, Any]:
    return {
        "aor": b.aor,
        "contact": b.contact_uri,
        "contact_params": b.contact_params,
        "q": b.q,
        "transport": b.transport.value,
        "source": hostport(b.source_host, b.source_port),
        # where the REGISTER came from (RFC 3581) and whether it is reached there (NAT)
        "received": hostport(b.source_host, b.source_port),
        "nat": b.nat,
        "local": hostport(b.local_host, b.local_port),
        "flow": b.flow_id,
        "expires_in": b.expires_in(now),
        "expires_at": iso(b.expires_at),
        "user_agent": b.user_agent,
        "instance": b.instance,
        "reg_id": b.reg_id,
        "call_id": b.call_id,
        "cseq": b.cseq,
        "path": list(b.path),
        "registered_at": iso(b.registered_at),
        "updated_at": iso(b.updated_at),
        "node": b.node,
    }


def dialog_view(d: DialogInfo, now: float) -> dict[str, Any]:
    """``duration``: seconds talking (answer to end, or to now while up); None if unanswered."""
    duration: float | None = None
    if d.answered_at is not None:
        end = d.ended_at if d.ended_at is not None else now
        duration = round(max(0.0, end - d.answered_at), 3)
    return {
        "id": d.id,
        "call_id": d.call_id,
        "state": d.state.value,
        "caller": d.caller,
        "callee": d.callee,
        "caller_transport": d.caller_transport,
        "callee_transport": d.callee_transport,
        "caller_flow": d.caller_flow,
        "callee_flow": d.callee_flow,
        "created_at": iso(d.created_at),
        "answered_at": iso(d.answered_at),
        "ended_at": iso(d.ended_at),
        "ended_by": d.ended_by,
        "end_reason": d.end_reason,
        "duration": duration,
        "media": d.media,
    }


def flow_view(flow: Flow, mono: float, bindings: Iterable[Binding] = ()) -> dict[str, Any]:
    """A connection; ages are seconds on the trio clock ``mono``."""
    last_keepalive = flow.last_keepalive
    return {
        "id": flow.id,
        "transport": flow.transport.value,
        "peer": hostport(*flow.remote[:2]),
        "local": hostport(*flow.local[:2]),
        "opened_at": iso(flow.opened_wall),
        "age": round(max(0.0, mono - flow.opened_at), 3),
        "last_received_age": round(max(0.0, mono - flow.last_received), 3),
        "last_keepalive_age": (
            None if last_keepalive is None else round(max(0.0, mono - last_keepalive), 3)
        ),
        "bindings": [{"aor": b.aor, "contact": b.contact_uri} for b in bindings],
    }


def cdr_view(r: CallRecord) -> dict[str, Any]:
    """A call record; ``duration`` is seconds talking (None: never answered)."""
    return {
        "id": r.id,
        "call_id": r.call_id,
        "caller": r.caller,
        "callee": r.callee,
        "request_uri": r.request_uri,
        "caller_transport": r.caller_transport,
        "callee_transport": r.callee_transport,
        "caller_peer": r.caller_peer,
        "callee_peer": r.callee_peer,
        "started_at": iso(r.started_at),
        "answered_at": iso(r.answered_at),
        "ended_at": iso(r.ended_at),
        "duration": r.duration,
        "status": r.status,
        "reason": r.reason,
        "ended_by": r.ended_by,
        "end_reason": r.end_reason,
        "media": r.media,
        "node": r.node,
    }


def listener_view(listener: Listener) -> dict[str, Any]:
    return {"transport": listener.transport.value, "host": listener.host, "port": listener.port}


# --- the server as a whole ---------------------------------------------------------------


def counters_view(server: ServerView) -> dict[str, int]:
    """The transport's and the core's counters in one sorted dict of dotted names; the
    answers sent by class (``responses_out.4xx``) and received (``responses_in``)."""
    merged: Counter[str] = Counter()
    merged.update(server.stats)
    merged.update(server.core_stats)
    metrics = server.core_metrics
    for (_, status), n in metrics.responses_sent.items():
        merged[f"responses_out.{status // 100}xx"] += n
    merged["responses_in"] = sum(metrics.responses_received.values())
    return dict(sorted(merged.items()))


def gauges_view(server: ServerView) -> dict[str, int]:
    servers, clients = server.transaction_counts()
    return {
        "bindings": len(server.location),
        "aors": server.location.aors(),
        "dialogs": len(server.dialogs),
        "flows": len(server.flows),
        "transactions.server": servers,
        "transactions.client": clients,
    }


def state_view(server: ServerView) -> dict[str, int]:
    """Entries in every table, heap and cache that traffic fills: the core's (see
    ``Dispatcher.state_sizes``), open flows, addresses the rate limiter tracks
    (``ServerView.state_sizes``), and each cache of parsed spellings (bounded by
    size, not by what is live)."""
    sizes = server.state_sizes()
    for name, cache in parse_caches().items():
        sizes["cache_" + name.lower().replace(" ", "_").replace("-", "_")] = len(cache)
    return sizes


def server_view(server: ServerView, now: float) -> dict[str, Any]:
    config = server.config
    return {
        "version": __version__,
        "started_at": iso(server.started_at),
        "uptime": round(max(0.0, now - server.started_at), 3),
        "config": config.source,
        "domains": list(config.sip.domains),
        "listeners": [listener_view(li) for li in server.listeners],
    }


def bindings_view(server: ServerView, now: float) -> list[dict[str, Any]]:
    found = sorted(server.location, key=lambda b: (b.aor, b.registered_at, b.key))
    return [binding_view(b, now) for b in found]


def dialogs_view(server: ServerView, now: float) -> list[dict[str, Any]]:
    infos = sorted((d.info() for d in server.dialogs), key=lambda i: i.created_at)
    return [dialog_view(i, now) for i in infos]


def flows_view(server: ServerView, mono: float) -> list[dict[str, Any]]:
    location = server.location
    flows = sorted(server.flows.values(), key=lambda f: f.opened_at)
    return [flow_view(f, mono, location.on_flow(f.id)) for f in flows]


def snapshot_view(server: ServerView, now: float, mono: float) -> dict[str, Any]:
    return {
        "type": "snapshot",
        "time": iso(now),
        "server": server_view(server, now),
        "bindings": bindings_view(server, now),
        "dialogs": dialogs_view(server, now),
        "flows": flows_view(server, mono),
        "gauges": gauges_view(server),
        "state": state_view(server),
        "counters": counters_view(server),
        # None on a single node; else the other nodes' dialogs and flows, a second old
        "cluster": server.cluster_view(),
    }


def dialogs_by_state(server: ServerView) -> dict[str, int]:
    counts = {state.value: 0 for state in DialogState}
    for d in server.dialogs:
        counts[d.state.value] += 1
    return counts


# --- events ---------------------------------------------------------------------------


def binding_event_view(event: BindingEvent, now: float) -> dict[str, Any]:
    return {
        "type": "binding",
        "event": event.kind.value,
        "time": iso(now),
        "binding": binding_view(event.binding, now),
    }


def call_event_view(event: CallEvent, now: float) -> dict[str, Any]:
    """A call attempt set out, was answered or failed (core/calls.py): dialog or not."""
    callee = event.callee_peer
    return {
        "type": "call",
        "event": event.kind.value,
        "time": iso(now),
        "call": {
            "call_id": event.call_id,
            "caller": event.caller,
            "callee": event.callee,
            "caller_transport": event.caller_peer.transport.value,
            "callee_transport": callee.transport.value if callee is not None else None,
            "started_at": iso(event.started_at),
            "at": iso(event.at),
            "status": event.status,
            "reason": event.reason,
            "ended_by": event.ended_by,
            "media": "bridged" if event.bridged else "direct",
        },
    }


def dialog_event_view(event: DialogEvent, now: float) -> dict[str, Any]:
    return {
        "type": "dialog",
        "event": event.kind.value,
        "time": iso(now),
        "dialog": dialog_view(event.dialog, now),
    }


# --- input ----------------------------------------------------------------------------


class CallRequest(BaseModel):
    """A simulated call, as ``POST /simulateCall`` and the control socket's ``call`` take it."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    to: str = Field(
        min_length=1,
        max_length=512,
        description='The callee: "bob", "bob@example.com" or "sip:bob@example.com".',
    )
    from_: str | None = Field(
        default=None,
        alias="from",
        min_length=1,
        max_length=512,
        description="The caller's URI (default: the simulator's own).",
    )
    duration: float = Field(
        default=5.0, gt=0, le=MAX_CALL_SECONDS, description="Seconds to talk before BYE."
    )
    answer_timeout: float = Field(
        default=30.0, gt=0, le=MAX_RING_SECONDS, description="Seconds to ring before CANCEL."
    )
    sdp: str | None = Field(
        default=None, max_length=65536, description="The SDP offer (default: a PCMU audio offer)."
    )


def resolve_aor_untrusted(location: Location, text: str) -> str:
    """An operator's name for an AOR (``bob``, ``bob@host``, ``sip:bob@host``) as its key.

    A bare user name matches the one AOR with that user part; ValueError when it is
    ambiguous or the text is not a SIP URI.
    """
    text = text.strip()
    if "@" not in text and ":" not in text:
        matches = sorted({b.aor for b in location if b.aor.partition("@")[0] == f"sip:{text}"})
        if len(matches) > 1:
            raise ValueError(f"{text!r} is ambiguous: {', '.join(matches)}")
        return matches[0] if matches else f"sip:{text}"
    if not text.lower().startswith(("sip:", "sips:")):
        text = f"sip:{text}"
    try:
        uri = parse_uri_untrusted(text)
    except SipParseError as e:
        raise ValueError(f"not a SIP URI: {text!r} ({e})") from None
    if not isinstance(uri, SipUri):
        raise ValueError(f"not a SIP URI: {text!r}")
    return uri.aor()
