"""``/metrics``: every Prometheus family siptrio exports, its help text and its labels.

The core and the transports count in plain Python: ``Counter``s of dotted names
(``requests_in.INVITE``, ``dropped.rate_limited``), the core's answers by method and
status and its histograms (core/metrics.py), the rtpengine client's and the store's
timings. This module owns the one table that names each of them for Prometheus, and
reads them at every scrape (nothing is copied on the hot path).

Every counter is there from the start at 0, so ``rate()`` and ``absent()`` work from
the first scrape: a family with a label lists the values it can take (the methods,
the transports, the reasons it drops for ...), and the answers are listed for every
method and the statuses alerts watch (``SEEN_STATUSES``); other statuses appear with
their first answer. tests/admin/test_metrics.py checks that every counter the code
increments has a family here. The registry also carries prometheus_client's
``process_*`` and ``python_*`` collectors.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .. import __version__
from ..core.metrics import LATENCY, METHODS, OTHER, Histogram
from ..core.overload import Priority
from ..core.types import Transport
from ..transport.rtpengine import COMMANDS, FAILURES
from ..transport.udp import receive_drops
from .views import dialogs_by_state, hostport, state_view

if TYPE_CHECKING:
    from .ports import AdminHost

__all__ = ["COUNTERS", "SEEN_STATUSES", "Family", "ServerCollector", "metrics_registry"]

_ALL = tuple(t.value for t in Transport)
_STREAMS = tuple(t.value for t in Transport if t.is_stream)
_METHODS = (*METHODS, OTHER)
# the answers listed at 0 from the start, for every method but ACK
SEEN_STATUSES = (200, 401, 403, 404, 407, 408, 480, 486, 487, 500, 503)


@dataclass(frozen=True)
class Family:
    """One counter family: ``key`` is a counter's name, or with ``label`` the prefix of
    the counters it gathers (``requests_in.`` for ``requests_in.INVITE`` ...)."""

    key: str
    name: str  # prometheus_client adds _total
    help: str
    label: str | None = None
    values: tuple[str, ...] = ()  # the label's values, present from the start


COUNTERS = (
    # SIP messages
    Family(
        "requests_in.",
        "siptrio_sip_requests_received",
        "SIP requests received (retransmissions included)",
        "method",
        _METHODS,
    ),
    Family(
        "forwarded.",
        "siptrio_sip_requests_forwarded",
        "SIP requests proxied (one per branch and next hop)",
        "method",
        _METHODS,
    ),
    Family(
        "retransmissions_absorbed",
        "siptrio_sip_retransmissions_absorbed",
        "Request retransmissions answered by their transaction",
    ),
    Family("ack_absorbed", "siptrio_sip_acks_absorbed", "ACKs for our own non-2xx answers"),
    Family("ack_unmatched", "siptrio_sip_acks_unmatched", "ACKs outside any transaction or dialog"),
    Family(
        "responses_stray",
        "siptrio_sip_responses_stray",
        "Responses that matched no client transaction",
    ),
    Family("parse_errors", "siptrio_sip_parse_errors", "Messages that did not parse"),
    Family(
        "parse_error_replies.",
        "siptrio_sip_parse_error_replies",
        "Answers to unparsable messages",
        "status",
        ("400", "413", "505"),
    ),
    Family(
        "dropped.",
        "siptrio_sip_dropped_messages",
        "Messages dropped",
        "reason",
        (
            "banned",
            "flow_gone",
            "no_route",
            "no_socket",
            "rate_limited",
            "send_error",
            "unaddressable",
        ),
    ),
    Family("register_fast", "siptrio_register_fast_path", "REGISTERs taken by the fast path"),
    Family("internal_errors", "siptrio_internal_errors", "Messages and events that hit a bug"),
    # authentication and the registrar
    Family("auth_ok", "siptrio_auth_successes", "Requests whose digest credentials were accepted"),
    Family("auth_failures", "siptrio_auth_failures", "Wrong digest credentials"),
    Family("auth_bans", "siptrio_auth_bans", "Addresses banned for failing to authenticate"),
    Family(
        "auth_identity_refused",
        "siptrio_auth_identity_refused",
        "Authenticated users refused for another identity (403)",
    ),
    Family("bindings_expired", "siptrio_bindings_expired", "Bindings that expired"),
    Family("bindings_kicked", "siptrio_bindings_kicked", "Bindings removed by an operator"),
    Family(
        "cluster_bindings_dropped",
        "siptrio_cluster_bindings_dropped",
        "Bindings dropped when their node left the cluster",
    ),
    # the proxy
    Family(
        "routed.",
        "siptrio_routed_requests",
        "Requests a [routes] rule (or the outbound proxy) took",
        "route",
        ("outbound_proxy",),
    ),
    Family("relay_denied", "siptrio_relay_denied", "Requests refused as relaying"),
    Family(
        "targets_skipped_self",
        "siptrio_targets_skipped_self",
        "Targets skipped for pointing at siptrio itself",
    ),
    Family(
        "flow_token_bad",
        "siptrio_flow_tokens_rejected",
        "Requests with a bad flow or binding token",
    ),
    Family("failovers", "siptrio_failovers", "Branches moved to their next hop (RFC 3263)"),
    Family(
        "transport_errors",
        "siptrio_branch_send_failures",
        "Branches whose request could not be sent",
    ),
    Family("cancels_sent", "siptrio_cancels_sent", "CANCELs sent to pending branches"),
    Family("dns_queries", "siptrio_dns_queries", "DNS queries sent to a server"),
    Family("dns_cache_hits", "siptrio_dns_cache_hits", "DNS questions answered from the cache"),
    Family("dns_cache_misses", "siptrio_dns_cache_misses", "DNS questions not in the cache"),
    Family("dns_failures", "siptrio_dns_failures", "DNS queries that failed (not NXDOMAIN)"),
    Family("dns_unresolved", "siptrio_dns_unresolved", "Branches whose target did not resolve"),
    Family(
        "in_dialog_to_node",
        "siptrio_cluster_requests_to_node",
        "In-dialog requests passed to the node holding the dialog",
    ),
    Family(
        "responses_to_node",
        "siptrio_cluster_responses_to_node",
        "Responses passed to the node that sent the request",
    ),
    Family(
        "overload_refused.",
        "siptrio_overload_refused",
        "Requests refused with 503 while overloaded, by class",
        "class",
        ("new", "new_register", "refresh"),
    ),
    # connections
    Family("udp_datagrams_in", "siptrio_udp_datagrams_received", "UDP datagrams received"),
    Family("udp_recv_errors", "siptrio_udp_receive_errors", "Errors reading a UDP socket"),
    Family("flows_opened.", "siptrio_flows_opened", "Connections opened", "transport", _STREAMS),
    Family("flows_closed.", "siptrio_flows_closed", "Connections closed", "transport", _STREAMS),
    Family(
        "flows_closed.no_valid_message",
        "siptrio_flows_closed_silent",
        "Connections closed for sending no valid SIP message in time",
    ),
    Family("flows_idle_closed", "siptrio_flows_idle_closed", "Connections closed for being idle"),
    Family("accept_errors", "siptrio_accept_errors", "Errors accepting a connection"),
    Family(
        "connections_refused.",
        "siptrio_connections_refused",
        "Connections refused at accept",
        "reason",
        ("capacity", "per_ip"),
    ),
    Family(
        "outbound_connect_failures.",
        "siptrio_outbound_connect_failures",
        "Connections siptrio opened that failed",
        "transport",
        _STREAMS,
    ),
    Family(
        "tls_handshake_failures", "siptrio_tls_handshake_failures", "TLS handshakes that failed"
    ),
    Family(
        "tls_handshake_timeouts",
        "siptrio_tls_handshake_timeouts",
        "TLS handshakes that took too long",
    ),
    Family(
        "ws_handshakes.",
        "siptrio_ws_handshakes",
        "WebSocket handshakes accepted",
        "transport",
        ("ws", "wss"),
    ),
    Family(
        "ws_handshake_rejected.",
        "siptrio_ws_handshake_rejections",
        "WebSocket handshakes rejected",
        "reason",
        ("banned", "capacity", "malformed", "origin", "per_ip", "subprotocol"),
    ),
    Family(
        "ws_handshake_timeouts",
        "siptrio_ws_handshake_timeouts",
        "WebSocket handshakes that took too long",
    ),
    Family(
        "ws_message_too_big",
        "siptrio_ws_messages_too_big",
        "WebSocket messages over the size limit",
    ),
    Family(
        "keepalives_in.", "siptrio_keepalives_received", "Keep-alives received", "transport", _ALL
    ),
    Family("keepalives_out.", "siptrio_keepalives_sent", "Keep-alives sent", "transport", _STREAMS),
    Family("keepalive_failures", "siptrio_keepalive_failures", "Flows closed by keep-alive"),
    # the rest of the server
    Family("store_commits", "siptrio_store_commits", "Binding store transactions committed"),
    Family("store_rows", "siptrio_store_rows", "Bindings written or deleted in the store"),
    Family("store_failures", "siptrio_store_failures", "Binding store transactions that failed"),
    Family("hep.sent", "siptrio_hep_packets_sent", "HEP packets sent to the capture server"),
    Family("hep.dropped", "siptrio_hep_packets_dropped", "HEP packets that could not be sent"),
    Family("control.connections", "siptrio_control_connections", "Control socket connections"),
    Family(
        "control.subscribers_dropped",
        "siptrio_control_subscribers_dropped",
        "Control socket clients dropped for not reading",
    ),
)

_EXACT = frozenset(f.key for f in COUNTERS if f.label is None)


class ServerCollector(Collector):
    """Prometheus families read from the live server at each scrape."""

    def __init__(self, server: AdminHost) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        yield from self._counters()
        yield from self._answers()
        yield from self._histograms()
        yield from self._gauges()

    def _counters(self) -> Iterator[Metric]:
        server = self.server
        exact: dict[str, int] = {}
        labelled: dict[str, dict[str, int]] = {}
        for source in (server.stats, server.core_stats):
            for key, count in source.items():
                if key in _EXACT:
                    exact[key] = exact.get(key, 0) + count
                    continue
                prefix, dot, rest = key.partition(".")
                if dot:
                    values = labelled.setdefault(prefix + dot, {})
                    values[rest] = values.get(rest, 0) + count
        routes = tuple(name for name, _ in server.config.routes.rules)
        for f in COUNTERS:
            if f.label is None:
                yield CounterMetricFamily(f.name, f.help, value=exact.get(f.key, 0))
                continue
            family = CounterMetricFamily(f.name, f.help, labels=[f.label])
            known = dict.fromkeys(f.values + (routes if f.key == "routed." else ()), 0)
            for value, n in sorted({**known, **labelled.get(f.key, {})}.items()):
                family.add_metric([value], n)
            yield family
        media = server.media
        requests = CounterMetricFamily(
            "siptrio_rtpengine_requests", "Requests to rtpengine, by command", labels=["command"]
        )
        failures = CounterMetricFamily(
            "siptrio_rtpengine_failures",
            "rtpengine requests that failed on one engine, by reason",
            labels=["reason"],
        )
        for command in (*COMMANDS, OTHER):
            requests.add_metric([command], media.requests[command] if media else 0)
        for reason in FAILURES:
            failures.add_metric([reason], media.failures[reason] if media else 0)
        yield requests
        yield failures
        yield CounterMetricFamily(
            "siptrio_event_subscribers_dropped",
            "Event subscribers dropped for not reading",
            value=server.events.dropped_subscribers,
        )
        drops = CounterMetricFamily(
            "siptrio_udp_receive_drops",
            "Datagrams the kernel dropped because a UDP socket's receive buffer was full",
            labels=["listener"],
        )
        sockets = server.udp_sockets
        dropped = receive_drops(sockets.values())
        for (host, port), sock in sorted(sockets.items()):
            if sock in dropped:
                drops.add_metric([hostport(host, port)], dropped[sock])
        yield drops

    def _answers(self) -> Iterator[Metric]:
        metrics = self.server.core_metrics
        seen = {(m, s): 0 for m in _METHODS if m != "ACK" for s in SEEN_STATUSES}
        for name, what, counts in (
            ("siptrio_sip_responses_sent", "SIP answers sent", metrics.responses_sent),
            (
                "siptrio_sip_responses_received",
                "SIP responses received",
                metrics.responses_received,
            ),
        ):
            family = CounterMetricFamily(
                name,
                f"{what}, by the request's method and the status (retransmissions not included)",
                labels=["method", "status"],
            )
            for (method, status), n in sorted({**seen, **counts}.items()):
                family.add_metric([method, str(status)], n)
            yield family

    def _histograms(self) -> Iterator[Metric]:
        server = self.server
        metrics = server.core_metrics
        yield _histogram(
            "siptrio_sip_register_answer_seconds",
            "From a REGISTER's arrival to its 200 (the binding stored)",
            [((), metrics.register_answer)],
        )
        yield _histogram(
            "siptrio_call_ringing_seconds",
            "From a proxied call's INVITE to its first 18x sent to the caller (post-dial delay)",
            [((), metrics.call_ringing)],
        )
        yield _histogram(
            "siptrio_call_answer_seconds",
            "From a proxied call's INVITE to its 200 sent to the caller",
            [((), metrics.call_answer)],
        )
        yield _histogram(
            "siptrio_sip_server_transaction_seconds",
            "From a request's arrival to siptrio's final answer, by method",
            [((m,), h) for m, h in metrics.server_transactions.items()],
            ["method"],
        )
        yield _histogram(
            "siptrio_sip_client_transaction_seconds",
            "From a request siptrio sent to its final answer or timeout, by method",
            [((m,), h) for m, h in metrics.client_transactions.items()],
            ["method"],
        )
        yield _histogram(
            "siptrio_store_commit_seconds",
            "Binding store commits (one transaction for a burst of changes)",
            [((), server.store_commit_seconds)],
        )
        latency = _NO_MEDIA if server.media is None else server.media.latency
        yield _histogram(
            "siptrio_rtpengine_request_seconds",
            "From a request to rtpengine to its answer (the next engine's included)",
            [((c,), h) for c, h in latency.items()],
            ["command"],
        )

    def _gauges(self) -> Iterator[Metric]:
        server = self.server
        servers, clients = server.transaction_counts()
        transactions = GaugeMetricFamily(
            "siptrio_transactions", "Live SIP transactions", labels=["kind"]
        )
        transactions.add_metric(["server"], servers)
        transactions.add_metric(["client"], clients)
        yield transactions
        by_transport = dict.fromkeys(_ALL, 0)
        for b in server.location:
            by_transport[b.transport.value] += 1
        bindings = GaugeMetricFamily(
            "siptrio_bindings", "Registered contacts", labels=["transport"]
        )
        for t, n in by_transport.items():
            bindings.add_metric([t], n)
        yield bindings
        yield GaugeMetricFamily(
            "siptrio_aors", "Addresses of record with a binding", value=server.location.aors()
        )
        dialogs = GaugeMetricFamily("siptrio_dialogs", "Dialogs by state", labels=["state"])
        for state, n in dialogs_by_state(server).items():
            dialogs.add_metric([state], n)
        yield dialogs
        flows_by = dict.fromkeys(_STREAMS, 0)
        for f in server.flows.values():
            flows_by[f.transport.value] = flows_by.get(f.transport.value, 0) + 1
        flows = GaugeMetricFamily("siptrio_flows", "Open connections", labels=["transport"])
        for t, n in flows_by.items():
            flows.add_metric([t], n)
        yield flows
        calls: dict[str, int] = {}
        for c in server.simulator.calls():
            calls[c.state] = calls.get(c.state, 0) + 1
        simulated = GaugeMetricFamily(
            "siptrio_simulated_calls", "Simulated calls kept, by state", labels=["state"]
        )
        for state, n in sorted(calls.items()):
            simulated.add_metric([state], n)
        yield simulated
        overload = server.overload
        yield GaugeMetricFamily(
            "siptrio_queue_delay_seconds",
            "Longest standing time messages waited before the core took them (load shedding)",
            value=overload.delay,
        )
        shedding = GaugeMetricFamily(
            "siptrio_overload_shedding",
            "1 while new requests of the class are refused with 503",
            labels=["class"],
        )
        mono = trio.current_time()
        for priority in (Priority.NEW, Priority.NEW_REGISTER, Priority.REFRESH):
            shedding.add_metric([priority.name.lower()], int(overload.refuses(priority, mono)))
        yield shedding
        entries = GaugeMetricFamily(
            "siptrio_state_entries",
            "Entries in each table, heap and cache that traffic fills (flat over a long run)",
            labels=["table"],
        )
        for table, n in state_view(server).items():
            entries.add_metric([table], n)
        yield entries
        info = InfoMetricFamily("siptrio", "Version")
        info.add_metric([], {"version": __version__})
        yield info


def _histogram(
    name: str,
    doc: str,
    children: Iterable[tuple[tuple[str, ...], Histogram]],
    labels: list[str] | None = None,
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels or [])
    for values, h in children:
        buckets = []
        total = 0
        for bound, n in zip((*h.bounds, float("inf")), h.counts, strict=True):
            total += n
            buckets.append((floatToGoString(bound), total))
        family.add_metric(list(values), buckets, sum_value=h.sum)
    return family


# the rtpengine histograms, all at 0, when no rtpengine is configured
_NO_MEDIA = {command: Histogram(LATENCY) for command in (*COMMANDS, OTHER)}


def metrics_registry(server: AdminHost) -> CollectorRegistry:
    """The registry ``/metrics`` serves: siptrio's families, then the process's."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(server))
    ProcessCollector(registry=registry)  # process_cpu_seconds_total, _resident_memory_bytes ...
    PlatformCollector(registry=registry)  # python_info
    GCCollector(registry=registry)  # python_gc_*
    return registry
