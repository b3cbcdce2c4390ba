"""bench/compare.py's report: the markdown (machine, revisions, tables) and the chart."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

# The other benchmarks, next to this file (sys.path[0] when run as a script).
sys.path.insert(0, str(Path(__file__).resolve().parent))
import register_udp
from common import (
    REPO,
    kamailio_version,
)
from compare_figures import (
    CALL_HEADER,
    LATENCY_HEADER,
    REGISTER_HEADER,
    WS_HEADER,
    attr,
    call_row,
    figures,
    latency_row,
    register_row,
    summarise,
    targets,
    ws_row,
)
from compare_measure import Results
from compare_plan import (
    KAMAILIO_DEFINES,
    KAMAILIO_SHM_MB,
    SERVERS,
    SUSTAINED,
    TARGET_WS_KIB,
    median,
)

# --- the report -------------------------------------------------------------------------------------


def siptrio_revision() -> str:
    """The commit measured, and whether siptrio/ had uncommitted changes (read-only git)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "--no-optional-locks",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                "siptrio",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "siptrio revision unknown"
    return f"siptrio at {head}" + (" with uncommitted changes in siptrio/" if dirty else "")


def revisions(res: Results) -> str:
    start, end = res.revision_start, res.revision_end
    if not start:
        return siptrio_revision() + " when the report was written"
    if end and end != start:
        if _same_siptrio(start, end):
            return f"{start} at the start, {end} at the end (commits outside siptrio/ only)"
        return f"{start} at the start, **{end} at the end** (siptrio changed during the run)"
    return start


def _same_siptrio(start: str, end: str) -> bool:
    """Whether two clean "siptrio at <commit>" revisions have the same siptrio/ tree."""
    prefix = "siptrio at "
    if not (start.startswith(prefix) and end.startswith(prefix)) or " " in start[len(prefix) :]:
        return False
    if " " in end[len(prefix) :]:
        return False
    try:
        diff = subprocess.run(
            ["git", "diff", "--quiet", start[len(prefix) :], end[len(prefix) :], "--", "siptrio"],
            cwd=REPO,
            capture_output=True,
        )
    except OSError:
        return False
    return diff.returncode == 0


def ceiling_notes(res: Results) -> list[str]:
    """Say so where a server passed the ladder's top rate: its ceiling was not reached."""
    notes = []
    for label, runs, rates in (
        ("REGISTER", res.register, res.plan.register_rates),
        ("calls", res.calls, res.plan.call_rates),
    ):
        top = max(rates)
        for server in SERVERS:
            sums = summarise(runs, res.rounds) if runs else []
            rounds = [b.round for s in sums if (b := s.best[server]) is not None and b.rate == top]
            if rounds:
                notes.append(
                    f"- {label}: {server} passed the ladder's highest rate ({top}/s) in round(s) "
                    f"{', '.join(map(str, rounds))}: its ceiling is higher, so there the "
                    "sustained-rate ratio is an upper bound."
                )
    return [*notes, ""] if notes else []


def machine() -> str:
    base = register_udp.machine()
    return f"{base}, Kamailio {kamailio_version() or '?'}"


def report(res: Results, png: Path | None) -> str:
    plan = res.plan
    la, le = res.load_start, res.load_end
    figs = figures(res)
    kam_workers = (
        f"{KAMAILIO_DEFINES['CHILDREN']} UDP worker, {KAMAILIO_DEFINES['TCP_CHILDREN']} TCP/WS "
        f"workers, -m {KAMAILIO_SHM_MB} -M 16"
    )
    lines = [
        "# siptrio beside Kamailio",
        "",
        f"Measured {res.started:%Y-%m-%d %H:%M} UTC on {machine()}; {revisions(res)}.",
        f"Plan `{plan.name}` (`bench/compare.py{' --quick' if plan.name == 'quick' else ''} "
        f"--repeat {res.rounds}`), {res.minutes:.1f} minutes. Load average "
        f"{la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} (1 / 5 / 15 min) at the start, "
        f"{le[0]:.2f} / {le[1]:.2f} / {le[2]:.2f} at the end.",
        "",
        "Everything on 127.0.0.1, each run on a fresh server process: siptrio as the other",
        "benchmarks start it (`python -m siptrio serve`, WARNING logging, SQLite bindings), Kamailio",
        "with `bench/kamailio.cfg` (registrar with in-memory usrloc, tm + rr stateful proxy, no auth;",
        f"{kam_workers}). For each figure each round runs siptrio then",
        "Kamailio at each rate (A B A B over the rounds). **Server CPU** is utime + stime of the",
        "server's whole process tree from /proc, just before the load to just after it (all of",
        "Kamailio's processes, siptrio's one). *Others' CPU* is the machine's busy time in the run",
        "less the server and the load generators: other people's work on this shared machine.",
        "",
        "Kamailio runs one UDP worker: with two, a call's 180 and 200 are relayed by different",
        "workers and the 200 sometimes overtakes the 180, which SIPp's `uac.xml` takes for an",
        "unexpected message and aborts the call (6 of 2,000 calls at 500 calls/s). One worker",
        "keeps a dialog in order, as siptrio's single process does; per CPU-second figures do",
        "not depend on it.",
        "",
        "**The machine is shared and noisy: the ratios of one run, repeated, are the figures that",
        "count.** Ratios are siptrio / Kamailio; for throughput above 1 means siptrio does more,",
        "for memory and latency above 1 means siptrio uses more or is slower.",
        "",
        "## Summary",
        "",
        "| figure | siptrio (per round) | Kamailio (per round) | ratio siptrio/Kamailio (per round) "
        "| median ratio | better is |",
        "|---|---|---|---|---|---|",
        *(f.row() for f in figs),
        "",
        *ceiling_notes(res),
        "## Targets",
        "",
        *targets(res),
        "",
    ]
    if png is not None:
        lines += [f"![per CPU-second throughput and memory per WS flow]({png.name})", ""]
    if res.register:
        lines += [
            "## REGISTER over UDP",
            "",
            f"SIPp `examples/sipp/register.xml`, a new AOR per REGISTER, {plan.register_seconds:g} s "
            "per rate; a rate counts",
            f"with 0 failed REGISTERs and >= {SUSTAINED:.0%} of the rate achieved (SIPp fails a "
            "REGISTER unanswered after 5 s).",
            "siptrio commits every binding to SQLite; Kamailio keeps them in memory (usrloc "
            "db_mode 0).",
            "",
            REGISTER_HEADER,
            "|" + "---|" * (REGISTER_HEADER.count("|") - 1),
            *(register_row(r) for r in res.register),
            "",
        ]
    if res.calls:
        lines += [
            "## Calls through the proxy, UDP → UDP",
            "",
            "SIPp caller `uac.xml` → server → SIPp callee (`uas.xml` in server mode, "
            "registered as bob@example.com by a second SIPp with `register-contact.xml`), "
            f"{plan.call_seconds:g} s per rate:",
            "INVITE, 100, 180, 200, ACK and BYE along the Record-Route, 200. A rate counts with "
            "0 failed calls,",
            "0 retransmissions (the caller's, plus every repeat the callee sent or received) and "
            f">= {SUSTAINED:.0%} achieved.",
            "SIPp CPU is both SIPps'.",
            "",
            CALL_HEADER,
            "|" + "---|" * (CALL_HEADER.count("|") - 1),
            *(call_row(r) for r in res.calls),
            "",
        ]
    if res.ws:
        lines += [
            "## WebSocket scale",
            "",
            "`bench/ws_browser.py`'s clients (wsproto over Trio, SIP.js-shaped handshake and REGISTER, "
            "200 handshakes in flight,",
            "two client processes from 5,000 flows), after 100 warm-up connect-REGISTER-close "
            f"cycles; flows held {plan.ws_hold:g} s while",
            "the server pings them (siptrio every 5 s, `keepalive_interval=5`, Pong due within "
            "10 s; Kamailio after 10 s idle,",
            "websocket `keepalive_timeout=10`, which is also its Pong deadline), then",
            "every flow fetches its own binding and all close (bindings must go with their "
            "connections). Memory per flow is",
            "(tree memory held - tree memory before) / flows registered: Pss summed over the tree counts each page "
            "once; VmRSS summed",
            "counts Kamailio's shared memory once per worker that touched it, so it overstates "
            "Kamailio's.",
            "",
            WS_HEADER,
            "|" + "---|" * (WS_HEADER.count("|") - 1),
            *(ws_row(r) for r in res.ws),
            "",
        ]
    if res.latency_calls or res.latency_register:
        source = (
            f"a dedicated {plan.latency_call_seconds:g} s run"
            if plan.latency_call_seconds is not None
            else "the calls ladder's run at that rate"
        )
        lines += [
            "## Latency",
            "",
            f"INVITE→200 at {plan.latency_call_rate} calls/s ({source}), REGISTER→200 at "
            f"{plan.latency_register_rate} REGISTER/s (a dedicated {plan.latency_register_seconds:g} s "
            "run),",
            "from the first send of the request to the first receipt of the answer in SIPp's "
            "`-trace_shortmsg` file",
            "(microsecond timestamps, taken when SIPp handles the message: they include the "
            "SIPps' scheduling).",
            "",
            LATENCY_HEADER,
            "|" + "---|" * (LATENCY_HEADER.count("|") - 1),
        ]
        for c in res.latency_calls:
            lines.append(
                latency_row(
                    "INVITE→100",
                    c.server,
                    c.round,
                    c.rate,
                    c.invite_100,
                    c.failed,
                    c.retransmissions,
                )
            )
            lines.append(
                latency_row(
                    "INVITE→200",
                    c.server,
                    c.round,
                    c.rate,
                    c.invite_200,
                    c.failed,
                    c.retransmissions,
                )
            )
            lines.append(
                latency_row(
                    "BYE→200", c.server, c.round, c.rate, c.bye_200, c.failed, c.retransmissions
                )
            )
        for r in res.latency_register:
            lines.append(
                latency_row(
                    "REGISTER→200", r.server, r.round, r.rate, r.delays, r.failed, r.retransmissions
                )
            )
        lines.append("")
    return "\n".join(lines)


def chart(res: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"siptrio": "#2a7ab0", "kamailio": "#d9822b"}
    groups: list[tuple[str, dict[str, list[float]]]] = []
    if res.register:
        sums = summarise(res.register, res.rounds)
        groups.append(
            (
                "REGISTER\n(UDP)",
                {s: [attr(x.efficient[s], "per_cpu_second") for x in sums] for s in SERVERS},
            )
        )
    if res.calls:
        sums = summarise(res.calls, res.rounds)
        groups.append(
            (
                "calls\n(UDP→UDP)",
                {s: [attr(x.efficient[s], "per_cpu_second") for x in sums] for s in SERVERS},
            )
        )
    ws_n = sorted({r.n for r in res.ws})
    for n in ws_n:
        groups.append(
            (
                f"WS handshake\n+REGISTER (N={n})",
                {
                    s: [r.per_cpu_second for r in res.ws if r.server == s and r.n == n]
                    for s in SERVERS
                },
            )
        )

    fig, (ax1, ax2) = plt.subplots(
        1,
        2,
        figsize=(12, 5),
        gridspec_kw={"width_ratios": [max(1, len(groups)), max(1, len(ws_n))]},
    )
    width = 0.38
    for i, server in enumerate(SERVERS):
        xs = [g + (i - 0.5) * width for g in range(len(groups))]
        meds = [median(by_server[server]) for _, by_server in groups]
        bars = ax1.bar(
            xs, [0 if math.isnan(m) else m for m in meds], width, label=server, color=colors[server]
        )
        for x, (_, by_server) in zip(xs, groups, strict=True):
            ax1.scatter(
                [x] * len(by_server[server]), by_server[server], color="black", s=10, zorder=3
            )
        for bar, m in zip(bars, meds, strict=True):
            if not math.isnan(m):
                ax1.annotate(
                    f"{m:,.0f}",
                    (bar.get_x() + bar.get_width() / 2, m),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
    ax1.set_xticks(range(len(groups)), [g for g, _ in groups], fontsize=9)
    ax1.set_yscale("log")
    ax1.set_ylabel("per server CPU-second (log scale)")
    ax1.set_title("Throughput per server CPU-second\n(bars: median of rounds, dots: each round)")
    ax1.legend()

    for i, server in enumerate(SERVERS):
        xs = [g + (i - 0.5) * width for g in range(len(ws_n))]
        per_n = [[r.kib_per_flow for r in res.ws if r.server == server and r.n == n] for n in ws_n]
        meds = [median(v) for v in per_n]
        bars = ax2.bar(
            xs, [0 if math.isnan(m) else m for m in meds], width, label=server, color=colors[server]
        )
        for x, v in zip(xs, per_n, strict=True):
            ax2.scatter([x] * len(v), v, color="black", s=10, zorder=3)
        for bar, m in zip(bars, meds, strict=True):
            if not math.isnan(m):
                ax2.annotate(
                    f"{m:.1f}",
                    (bar.get_x() + bar.get_width() / 2, m),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
    ax2.axhline(
        TARGET_WS_KIB,
        color="gray",
        linestyle="--",
        linewidth=1,
        label=f"siptrio target {TARGET_WS_KIB} KiB",
    )
    ax2.set_xticks(range(len(ws_n)), [f"N={n}" for n in ws_n])
    top = max((r.kib_per_flow for r in res.ws if not math.isnan(r.kib_per_flow)), default=0.0)
    ax2.set_ylim(0, max(top, TARGET_WS_KIB) * 1.35)
    ax2.set_ylabel("KiB per flow (Pss of the server's process tree)")
    ax2.set_title("Server memory per WebSocket flow")
    ax2.legend(loc="upper left", fontsize=8)
    fig.suptitle(
        f"siptrio vs Kamailio, {res.started:%Y-%m-%d %H:%M} UTC, plan {res.plan.name}, "
        f"{res.rounds} rounds, load avg at start {res.load_start[0]:.2f}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
