"""bench/compare.py's rounds: every figure's ladder, A B A B, and the raw JSON of a run."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

# The other benchmarks, next to this file (sys.path[0] when run as a script).
sys.path.insert(0, str(Path(__file__).resolve().parent))
import ws_scale
from compare_figures import call_row, latency_row, register_row, ws_row
from compare_measure import (
    LadderRun,
    Results,
    measure_calls,
    measure_register,
    measure_ws,
)
from compare_plan import SERVERS, Plan
from compare_report import siptrio_revision

# --- the run ------------------------------------------------------------------------------------


def ladder(
    rates: tuple[int, ...],
    rounds: int,
    measure: Callable[[str, int, int], LadderRun],
    show: Callable[[LadderRun], str],
) -> list[LadderRun]:
    """Per round, rates ascending, siptrio then Kamailio at each; a server stops at its first miss."""
    runs: list[LadderRun] = []
    for rnd in range(1, rounds + 1):
        climbing = list(SERVERS)
        for rate in rates:
            for server in list(climbing):
                run = measure(server, rnd, rate)
                runs.append(run)
                print(show(run), flush=True)
                if not run.ok:
                    climbing.remove(server)
            if not climbing:
                break
    return runs


def run_all(plan: Plan, rounds: int, scratch: Path, only: set[str]) -> Results:
    res = Results(
        plan=plan,
        rounds=rounds,
        load_start=os.getloadavg(),
        started=datetime.now(UTC),
        revision_start=siptrio_revision(),
    )
    t0 = time.monotonic()
    if "register" in only:
        print("## REGISTER over UDP", flush=True)
        res.register = ladder(
            plan.register_rates,
            rounds,
            lambda s, r, rate: measure_register(s, r, rate, plan.register_seconds, scratch),
            register_row,
        )
    if "calls" in only:
        print("## calls UDP -> UDP", flush=True)
        res.calls = ladder(
            plan.call_rates,
            rounds,
            lambda s, r, rate: measure_calls(s, r, rate, plan.call_seconds, scratch),
            call_row,
        )
    if "ws" in only:
        print("## WebSocket scale", flush=True)
        limit = ws_scale.raise_fd_limit()
        for rnd in range(1, rounds + 1):
            for n in plan.ws_counts:
                if n + 100 > limit:
                    print(f"compare: skipping N={n}: RLIMIT_NOFILE is {limit}", file=sys.stderr)
                    continue
                for server in SERVERS:
                    run = measure_ws(server, rnd, n, plan.ws_hold, scratch)
                    res.ws.append(run)
                    print(ws_row(run), flush=True)
    if "latency" in only:
        print("## latency", flush=True)
        for rnd in range(1, rounds + 1):
            for server in SERVERS:
                if plan.latency_call_seconds is not None:
                    call = measure_calls(
                        server,
                        rnd,
                        plan.latency_call_rate,
                        plan.latency_call_seconds,
                        scratch,
                        label="latency",
                    )
                    res.latency_calls.append(call)
                else:
                    call = next(
                        (
                            c
                            for c in res.calls
                            if (c.server, c.round, c.rate) == (server, rnd, plan.latency_call_rate)
                        ),
                        None,
                    ) or measure_calls(
                        server,
                        rnd,
                        plan.latency_call_rate,
                        plan.call_seconds,
                        scratch,
                        label="latency",
                    )
                    res.latency_calls.append(call)
                print(
                    latency_row(
                        "INVITE→200",
                        call.server,
                        rnd,
                        call.rate,
                        call.invite_200,
                        call.failed,
                        call.retransmissions,
                    ),
                    flush=True,
                )
            for server in SERVERS:
                reg = measure_register(
                    server,
                    rnd,
                    plan.latency_register_rate,
                    plan.latency_register_seconds,
                    scratch,
                    trace=True,
                )
                res.latency_register.append(reg)
                print(
                    latency_row(
                        "REGISTER→200",
                        reg.server,
                        rnd,
                        reg.rate,
                        reg.delays,
                        reg.failed,
                        reg.retransmissions,
                    ),
                    flush=True,
                )
    res.load_end = os.getloadavg()
    res.revision_end = siptrio_revision()
    res.minutes = (time.monotonic() - t0) / 60
    return res
