"""bench/compare.py's tables and summaries: rows per run, figures per round, targets."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

# The other benchmarks, next to this file (sys.path[0] when run as a script).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_measure import CallRun, RegisterRun, Results, WsRun
from compare_plan import (
    NAN,
    SERVERS,
    TARGET_CALL_RATE,
    TARGET_CALLS_PER_CPU,
    TARGET_P99_MS,
    TARGET_REGISTER_PER_CPU,
    TARGET_WS_FLOWS,
    TARGET_WS_KIB,
    median,
    percentile,
    ratio,
)

# --- rows and summaries ---------------------------------------------------------------------------


def fmt(v: float, digits: int = 0) -> str:
    return "-" if math.isnan(v) else f"{v:,.{digits}f}"


def counts(run: RegisterRun | CallRun | WsRun) -> str:
    text = "yes" if run.ok else "no"
    return f"{text} ({run.note})" if run.note else text


REGISTER_HEADER = (
    "| round | server | rate asked /s | REGISTERs | achieved /s | failed | retransmissions | "
    "server CPU s | **REGISTER per server CPU-s** | SIPp CPU s | others' CPU s | counts |"
)


def register_row(r: RegisterRun) -> str:
    return (
        f"| {r.round} | {r.server} | {r.rate} | {r.count} | {fmt(r.achieved)} | {r.failed} | "
        f"{r.retransmissions} | {fmt(r.server_cpu, 2)} | **{fmt(r.per_cpu_second)}** | "
        f"{fmt(r.sipp_cpu, 2)} | {fmt(r.others_cpu, 2)} | {counts(r)} |"
    )


CALL_HEADER = (
    "| round | server | rate asked /s | calls | achieved /s | failed | retransmissions | "
    "server CPU s | **calls per server CPU-s** | INVITE→200 p50 / p99 ms | SIPp CPU s | "
    "others' CPU s | counts |"
)


def call_row(r: CallRun) -> str:
    return (
        f"| {r.round} | {r.server} | {r.rate} | {r.count} | {fmt(r.achieved)} | {r.failed} | "
        f"{r.retransmissions} | {fmt(r.server_cpu, 2)} | **{fmt(r.per_cpu_second)}** | "
        f"{fmt(percentile(r.invite_200, 50), 2)} / {fmt(percentile(r.invite_200, 99), 2)} | "
        f"{fmt(r.sipp_cpu, 2)} | {fmt(r.others_cpu, 2)} | {counts(r)} |"
    )


WS_HEADER = (
    "| round | server | flows N | registered | alive and bound after the hold | "
    "handshake+REGISTER /s (wall) | server CPU s | **per server CPU-s** | client CPU s | "
    "others' CPU s | Pss before → held MiB | **KiB per flow (Pss)** | KiB per flow (RSS summed) | "
    "processes | unbound after close | ok |"
)


def ws_row(r: WsRun) -> str:
    errors = f" ({', '.join(f'{k}: {v}' for k, v in r.errors.items())})" if r.errors else ""
    return (
        f"| {r.round} | {r.server} | {r.n} | {r.registered}{errors} | "
        f"{min(r.alive, r.bound)} (>= {r.pings_min} pings each) | {fmt(r.rate)} | "
        f"{fmt(r.server_cpu, 2)} | **{fmt(r.per_cpu_second)}** | {fmt(r.client_cpu, 2)} | "
        f"{fmt(r.others_cpu, 2)} | {r.pss_before / 1024:.1f} → {r.pss_held / 1024:.1f} | "
        f"**{fmt(r.kib_per_flow, 1)}** | {fmt(r.rss_kib_per_flow, 1)} | {r.processes} | "
        f"{'yes' if r.still_bound == 0 else 'no'} | {counts(r)} |"
    )


def latency_row(
    what: str, server: str, rnd: int, rate: int, d: list[float], failed: int, retrans: int
) -> str:
    return (
        f"| {rnd} | {server} | {what} | {rate} | {len(d)} | {failed} | {retrans} | "
        f"{fmt(percentile(d, 50), 2)} | {fmt(percentile(d, 90), 2)} | "
        f"**{fmt(percentile(d, 99), 2)}** | {fmt(d[-1] if d else NAN, 2)} |"
    )


LATENCY_HEADER = (
    "| round | server | measure | rate /s | samples | failed | retransmissions | p50 ms | "
    "p90 ms | **p99 ms** | max ms |"
)


@dataclass
class LadderSummary:
    """One round of one ladder, among the runs that counted: each server's highest rate,
    its most efficient run (most per server CPU-second), and both at the highest rate both
    passed."""

    best: dict[str, RegisterRun | CallRun | None]
    efficient: dict[str, RegisterRun | CallRun | None]
    common_rate: int | None
    at_common: dict[str, RegisterRun | CallRun | None]


def summarise(runs: list[RegisterRun] | list[CallRun], rounds: int) -> list[LadderSummary]:
    out = []
    for rnd in range(1, rounds + 1):
        ok = {s: [r for r in runs if r.round == rnd and r.server == s and r.ok] for s in SERVERS}
        best = {s: max(ok[s], key=lambda r: r.rate, default=None) for s in SERVERS}
        rates = set.intersection(*({r.rate for r in ok[s]} for s in SERVERS))
        common = max(rates, default=None)
        at_common = {
            s: next((r for r in ok[s] if r.rate == common), None) if common else None
            for s in SERVERS
        }
        efficient = {s: max(ok[s], key=lambda r: r.per_cpu_second, default=None) for s in SERVERS}
        out.append(
            LadderSummary(best=best, efficient=efficient, common_rate=common, at_common=at_common)
        )
    return out


def efficient_rates(sums: list[LadderSummary]) -> str:
    """ "siptrio 3000/s, 2000/s; kamailio 8000/s, 8000/s": where each figure came from."""
    return "; ".join(
        f"{server} "
        + ", ".join(
            f"{run.rate}/s" if (run := s.efficient[server]) is not None else "-" for s in sums
        )
        for server in SERVERS
    )


@dataclass
class Figure:
    """A summary line: per round, siptrio's and Kamailio's value, and their ratio."""

    label: str
    siptrio: list[float]
    kamailio: list[float]
    digits: int = 0
    better: str = "higher"

    @property
    def ratios(self) -> list[float]:
        return [ratio(a, b) for a, b in zip(self.siptrio, self.kamailio, strict=True)]

    def row(self) -> str:
        def values(vs: list[float]) -> str:
            return ", ".join(fmt(v, self.digits) for v in vs)

        rs = self.ratios
        return (
            f"| {self.label} | {values(self.siptrio)} | {values(self.kamailio)} | "
            f"{', '.join(fmt(r, 3) for r in rs)} | **{fmt(median(rs), 3)}** | {self.better} |"
        )


def attr(run: object | None, name: str) -> float:
    if run is None:
        return NAN
    value = getattr(run, name)
    return float(value)


def figures(res: Results) -> list[Figure]:
    rounds = res.rounds
    figs: list[Figure] = []
    if res.register:
        sums = summarise(res.register, rounds)
        figs += [
            Figure(
                "REGISTER/s sustained with 0 failures (highest rate that counted)",
                [attr(s.best["siptrio"], "rate") for s in sums],
                [attr(s.best["kamailio"], "rate") for s in sums],
            ),
            Figure(
                "REGISTER per server CPU-second, each at its most efficient counting rate ("
                + efficient_rates(sums)
                + ")",
                [attr(s.efficient["siptrio"], "per_cpu_second") for s in sums],
                [attr(s.efficient["kamailio"], "per_cpu_second") for s in sums],
            ),
            Figure(
                "REGISTER per server CPU-second at the same rate (highest both passed: "
                + ", ".join(f"{s.common_rate}/s" for s in sums)
                + ")",
                [attr(s.at_common["siptrio"], "per_cpu_second") for s in sums],
                [attr(s.at_common["kamailio"], "per_cpu_second") for s in sums],
            ),
        ]
    if res.calls:
        sums = summarise(res.calls, rounds)
        figs += [
            Figure(
                "calls/s sustained with 0 failures and 0 retransmissions",
                [attr(s.best["siptrio"], "rate") for s in sums],
                [attr(s.best["kamailio"], "rate") for s in sums],
            ),
            Figure(
                "calls per server CPU-second, each at its most efficient counting rate ("
                + efficient_rates(sums)
                + ")",
                [attr(s.efficient["siptrio"], "per_cpu_second") for s in sums],
                [attr(s.efficient["kamailio"], "per_cpu_second") for s in sums],
            ),
            Figure(
                "calls per server CPU-second at the same rate ("
                + ", ".join(f"{s.common_rate}/s" for s in sums)
                + ")",
                [attr(s.at_common["siptrio"], "per_cpu_second") for s in sums],
                [attr(s.at_common["kamailio"], "per_cpu_second") for s in sums],
            ),
        ]
    for n in sorted({r.n for r in res.ws}):

        def pick(server: str, rnd: int, n: int = n) -> WsRun | None:
            return next((w for w in res.ws if (w.server, w.round, w.n) == (server, rnd, n)), None)

        per = {s: [pick(s, rnd) for rnd in range(1, rounds + 1)] for s in SERVERS}
        figs += [
            Figure(
                f"WS N={n}: flows registered, alive and bound",
                [attr(r, "registered") if r and r.ok else 0.0 for r in per["siptrio"]],
                [attr(r, "registered") if r and r.ok else 0.0 for r in per["kamailio"]],
            ),
            Figure(
                f"WS N={n}: handshake+REGISTER per server CPU-second",
                [attr(r, "per_cpu_second") for r in per["siptrio"]],
                [attr(r, "per_cpu_second") for r in per["kamailio"]],
            ),
            Figure(
                f"WS N={n}: handshake+REGISTER /s (wall clock)",
                [attr(r, "rate") for r in per["siptrio"]],
                [attr(r, "rate") for r in per["kamailio"]],
            ),
            Figure(
                f"WS N={n}: KiB of server memory per flow (Pss of the tree)",
                [attr(r, "kib_per_flow") for r in per["siptrio"]],
                [attr(r, "kib_per_flow") for r in per["kamailio"]],
                digits=1,
                better="lower",
            ),
            Figure(
                f"WS N={n}: KiB per flow (VmRSS summed over the tree)",
                [attr(r, "rss_kib_per_flow") for r in per["siptrio"]],
                [attr(r, "rss_kib_per_flow") for r in per["kamailio"]],
                digits=1,
                better="lower",
            ),
        ]

    def lat(
        runs: list[RegisterRun] | list[CallRun], server: str, p: float, key: str
    ) -> list[float]:
        mine: list[RegisterRun | CallRun] = [run for run in runs if run.server == server]
        return [percentile(getattr(run, key), p) for run in sorted(mine, key=lambda x: x.round)]

    if res.latency_calls:
        rate = res.plan.latency_call_rate
        for p in (50, 99):
            figs.append(
                Figure(
                    f"INVITE→200 p{p} ms at {rate} calls/s",
                    lat(res.latency_calls, "siptrio", p, "invite_200"),
                    lat(res.latency_calls, "kamailio", p, "invite_200"),
                    digits=2,
                    better="lower",
                )
            )
    if res.latency_register:
        rate = res.plan.latency_register_rate
        for p in (50, 99):
            figs.append(
                Figure(
                    f"REGISTER→200 p{p} ms at {rate} REGISTER/s",
                    lat(res.latency_register, "siptrio", p, "delays"),
                    lat(res.latency_register, "kamailio", p, "delays"),
                    digits=2,
                    better="lower",
                )
            )
    return figs


def targets(res: Results) -> list[str]:
    """issue 9's targets for siptrio: met or missed, by how much, per round."""
    lines = [
        "| target (issue 9) | siptrio, per round | met? | by how much (median) | Kamailio, per round |",
        "|---|---|---|---|---|",
    ]

    def line(
        label: str,
        vals: list[float],
        kvals: list[float],
        goal: float,
        higher: bool,
        digits: int = 0,
        unit: str = "",
        not_measured: str = "",
    ) -> None:
        m = median(vals)
        if math.isnan(m) or not_measured:
            met, by = "not measured", not_measured or "-"
        else:
            met = "met" if (m >= goal if higher else m <= goal) else "**missed**"
            by = f"{m / goal:.2f}x the target ({fmt(m - goal, digits)}{unit})"
        lines.append(
            f"| {label} | {', '.join(fmt(v, digits) for v in vals)} | {met} | {by} | "
            f"{', '.join(fmt(v, digits) for v in kvals)} |"
        )

    def per_cpu(runs: list[RegisterRun] | list[CallRun], label: str, goal: int) -> None:
        """The absolute goal, then the same goal as the issue derives it, a third of
        Kamailio's figure, read against Kamailio in the same round."""
        sums = summarise(runs, res.rounds)
        mine = [attr(s.efficient["siptrio"], "per_cpu_second") for s in sums]
        theirs = [attr(s.efficient["kamailio"], "per_cpu_second") for s in sums]
        line(f"{label} >= {goal:,} per server CPU-second", mine, theirs, goal, True)
        line(
            f"{label} per server CPU-second >= 1/3 of Kamailio's (ratio, same round)",
            [ratio(a, b) for a, b in zip(mine, theirs, strict=True)],
            [NAN for _ in theirs],
            1 / 3,
            True,
            3,
        )

    if res.register:
        per_cpu(res.register, "REGISTER over UDP", TARGET_REGISTER_PER_CPU)
    if res.calls:
        sums = summarise(res.calls, res.rounds)
        per_cpu(res.calls, "calls UDP→UDP", TARGET_CALLS_PER_CPU)
        line(
            f">= {TARGET_CALL_RATE} calls/s with 0 failed calls (and 0 retransmissions)",
            [attr(s.best["siptrio"], "rate") for s in sums],
            [attr(s.best["kamailio"], "rate") for s in sums],
            TARGET_CALL_RATE,
            True,
        )
    if res.ws:
        n = max(r.n for r in res.ws)
        runs = {s: [r for r in res.ws if r.server == s and r.n == n] for s in SERVERS}
        line(
            f"{TARGET_WS_FLOWS:,} WS flows held (measured: N={n})",
            [float(min(r.registered, r.alive, r.bound)) for r in runs["siptrio"]],
            [float(min(r.registered, r.alive, r.bound)) for r in runs["kamailio"]],
            TARGET_WS_FLOWS,
            True,
            not_measured="" if n >= TARGET_WS_FLOWS else f"only N={n} in this plan",
        )
        line(
            f"<= {TARGET_WS_KIB} KiB per WS flow (N={n}, Pss)",
            [r.kib_per_flow for r in runs["siptrio"]],
            [r.kib_per_flow for r in runs["kamailio"]],
            TARGET_WS_KIB,
            False,
            1,
            " KiB",
        )
    if res.latency_calls:
        line(
            f"p99 INVITE→200 <= {TARGET_P99_MS:g} ms at {res.plan.latency_call_rate} calls/s",
            [percentile(r.invite_200, 99) for r in res.latency_calls if r.server == "siptrio"],
            [percentile(r.invite_200, 99) for r in res.latency_calls if r.server == "kamailio"],
            TARGET_P99_MS,
            False,
            2,
            " ms",
        )
    return lines
