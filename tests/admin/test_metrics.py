"""``/metrics`` over real HTTP from a running server: what an alert or a dashboard reads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import trio
from admin_support import OpsServer, ops_server
from prometheus_client.parser import text_string_to_metric_families
from support.client import SipClient
from test_admin_api import place_call

from siptrio.app.metrics import COUNTERS, SEEN_STATUSES
from siptrio.core.metrics import METHODS

ROOT = Path(__file__).resolve().parents[2]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(ops: OpsServer) -> tuple[dict[str, str], Samples]:
    """Every family's type, and every sample by (name, sorted labels)."""
    async with ops.http() as http:
        r = await http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = list(text_string_to_metric_families(r.text))
    types = {f.name: f.type for f in families}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples
    }
    return types, samples


def histogram_count(samples: Samples, name: str, **labels: str) -> float:
    return samples[(f"{name}_count", tuple(sorted(labels.items())))]


async def test_every_counter_is_there_at_zero_from_the_start(tmp_path: Path) -> None:
    async with ops_server(tmp_path) as ops:
        types, samples = await scrape(ops)
    siptrio = {name: kind for name, kind in types.items() if name.startswith("siptrio_")}
    assert "siptrio_events" not in siptrio  # no catch-all: each counter has its family
    for f in COUNTERS:
        assert siptrio[f.name] == "counter", f.name
        for value in f.values:
            assert samples[(f"{f.name}_total", ((f.label, value),))] == 0, (f.name, value)
        if f.label is None:
            assert samples[(f"{f.name}_total", ())] == 0, f.name
    for method in METHODS:
        assert samples[("siptrio_sip_requests_received_total", (("method", method),))] == 0
    for status in SEEN_STATUSES:
        for name in ("siptrio_sip_responses_sent_total", "siptrio_sip_responses_received_total"):
            key = (name, (("method", "REGISTER"), ("status", str(status))))
            assert samples[key] == 0
    # Prometheus names: _total counters, _seconds durations, nothing left over
    for name, kind in siptrio.items():
        assert kind in ("counter", "gauge", "histogram", "info"), name
        if kind == "histogram":
            assert name.endswith("_seconds"), name
    every = [s for s in samples if s[0].startswith("siptrio_") and s[0].endswith("_total")]
    assert all(samples[s] == 0 for s in every), [s for s in every if samples[s]]
    assert histogram_count(samples, "siptrio_sip_register_answer_seconds") == 0
    assert histogram_count(samples, "siptrio_rtpengine_request_seconds", command="offer") == 0
    # the process and the interpreter, from prometheus_client's own collectors
    assert samples[("process_resident_memory_bytes", ())] > 1_000_000
    assert samples[("process_cpu_seconds_total", ())] > 0
    assert ("python_gc_collections_total", (("generation", "0"),)) in samples
    assert "python_info" in types
    # the example dashboard reads only what is exported
    dashboard = json.loads((ROOT / "examples" / "grafana" / "siptrio.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    used = {m for e in exprs for m in re.findall(r"\b((?:siptrio|process|python)_\w+)\{", e)}
    exported = {name for name, _ in samples}
    assert used and not used - exported, used - exported


async def test_a_401_storm_shows_by_status_and_method(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """REGISTERs without credentials: every one is challenged, and counted as a 401."""
    storm = 40
    async with ops_server(tmp_path, {"auth.enable": "true"}) as ops:
        _, before = await scrape(ops)
        c = await SipClient.connect("udp", *ops.rs.addr("udp"), nursery=nursery)
        for i in range(storm):
            await c.send(c.register(f"nobody{i}"))
        statuses = [(await c.receive(5)).status for _ in range(storm)]  # type: ignore[union-attr]
        assert statuses == [401] * storm
        _, after = await scrape(ops)
    key = ("siptrio_sip_responses_sent_total", (("method", "REGISTER"), ("status", "401")))
    assert after[key] - before[key] == storm
    received = ("siptrio_sip_requests_received_total", (("method", "REGISTER"),))
    assert after[received] - before[received] == storm
    # a 401 is no registration: the REGISTER->200 histogram did not move
    assert histogram_count(after, "siptrio_sip_register_answer_seconds") == 0
    assert histogram_count(after, "siptrio_sip_server_transaction_seconds", method="REGISTER") == (
        storm
    )


async def test_histograms_after_registrations_and_a_call(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    async with ops_server(tmp_path) as ops:
        alice = await ops.ua(nursery, "udp", "alice")
        bob = await ops.ua(nursery, "tcp", "bob")
        await place_call(alice, bob)
        types, samples = await scrape(ops)
    assert types["siptrio_sip_register_answer_seconds"] == "histogram"
    # two REGISTERs answered 200 once stored: timed, and a commit (or two) timed
    assert histogram_count(samples, "siptrio_sip_register_answer_seconds") == 2
    assert histogram_count(samples, "siptrio_store_commit_seconds") >= 1
    regs = ("siptrio_sip_responses_sent_total", (("method", "REGISTER"), ("status", "200")))
    assert samples[regs] == 2
    # the call: 180 then 200 passed to the caller, each once; post-dial delay measured
    for status in ("100", "180", "200"):
        sent = ("siptrio_sip_responses_sent_total", (("method", "INVITE"), ("status", status)))
        assert samples[sent] == 1, status
    for status in ("180", "200"):
        got = ("siptrio_sip_responses_received_total", (("method", "INVITE"), ("status", status)))
        assert samples[got] == 1, status
    bye = ("siptrio_sip_responses_received_total", (("method", "BYE"), ("status", "200")))
    assert samples[bye] == 1
    assert histogram_count(samples, "siptrio_call_ringing_seconds") == 1
    assert histogram_count(samples, "siptrio_call_answer_seconds") == 1
    assert (
        samples[("siptrio_call_answer_seconds_sum", ())]
        >= samples[("siptrio_call_ringing_seconds_sum", ())]
    )
    for method in ("INVITE", "BYE"):
        for side in ("server", "client"):
            name = f"siptrio_sip_{side}_transaction_seconds"
            assert histogram_count(samples, name, method=method) == 1, (side, method)
    # buckets are cumulative and end in +Inf with the count
    inf = ("siptrio_sip_register_answer_seconds_bucket", (("le", "+Inf"),))
    assert samples[inf] == 2
    forwarded = ("siptrio_sip_requests_forwarded_total", (("method", "INVITE"),))
    assert samples[forwarded] == 1
    assert samples[("siptrio_dialogs", (("state", "terminated"),))] == 1
    assert samples[("siptrio_flows", (("transport", "tcp"),))] == 1


# what the code counts: stats["name"], stats[f"prefix.{...}"], stats["prefix." + ...]
_COUNTED = re.compile(r'stats\[(f?)"([^"]*)"')


def test_every_counter_the_code_keeps_has_a_family() -> None:
    """A new ``stats[...] += 1`` anywhere needs its line in app/metrics.py's COUNTERS."""
    exact = {f.key for f in COUNTERS if f.label is None}
    prefixes = {f.key for f in COUNTERS if f.label is not None}
    missing = []
    for path in (ROOT / "siptrio").rglob("*.py"):
        for fstring, key in _COUNTED.findall(path.read_text()):
            if fstring:
                key = key.partition("{")[0]
            if key in exact or (key.partition(".")[0] + "." in prefixes and key not in exact):
                continue
            missing.append(f"{path.relative_to(ROOT)}: {key}")
    assert not missing, missing
