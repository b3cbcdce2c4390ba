"""bench/compare.py's plans, targets and the small statistics every part uses."""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# The other benchmarks, next to this file (sys.path[0] when run as a script).
sys.path.insert(0, str(Path(__file__).resolve().parent))
import calls_udp
from common import (
    REPO,
)

RESULTS = REPO / "bench" / "results" / "compare.md"
SERVERS = ("siptrio", "kamailio")
SUSTAINED = 0.95  # achieved / asked below this: the rate was not really offered
REGISTER_SCENARIO = REPO / "examples" / "sipp" / "register.xml"
NAN = float("nan")

# issue 9's targets for siptrio on this 2-core machine
TARGET_REGISTER_PER_CPU = 8000
TARGET_CALLS_PER_CPU = 1000
TARGET_CALL_RATE = 500
TARGET_WS_FLOWS = 10000
TARGET_WS_KIB = 36
TARGET_P99_MS = 10.0

# One UDP worker: with two, the 180 and the 200 of a call are relayed by different
# workers and the 200 sometimes overtakes the 180; uac.xml then takes the late 180 for
# an unexpected message and aborts the call (6 of 2,000 calls at 500 calls/s). One
# worker keeps a dialog's order, as siptrio's single process does. Two TCP/WS workers.
#
# WebSocket keep-alive: Kamailio's one setting is both the idleness before a Ping and the
# time the Pong has to come (else it closes the flow). siptrio pings every 5 s and waits
# 10 s for the Pong; Kamailio at 5 s closed a few of 10,000 flows whose Pong came late
# from the busy Python client, so it gets siptrio's 10 s deadline (and pings less often).
KAMAILIO_DEFINES = {"CHILDREN": "1", "TCP_CHILDREN": "2", "WS_KEEPALIVE": "10"}
# Shared memory: each WebSocket flow takes about 70 KiB of it, so 10,000 flows need more
# than 512 MiB (past that Kamailio answers 500 and drops handshakes). Pages are only
# counted once touched, so the size itself costs nothing.
KAMAILIO_SHM_MB = 1536


@dataclass(frozen=True, kw_only=True)
class Plan:
    name: str
    register_rates: tuple[int, ...]
    register_seconds: float
    call_rates: tuple[int, ...]
    call_seconds: float
    ws_counts: tuple[int, ...]
    ws_hold: float
    latency_call_rate: int = 200
    latency_register_rate: int = 200
    # None: the calls ladder's run at latency_call_rate gives the call latency
    latency_call_seconds: float | None = None
    latency_register_seconds: float = 5.0


FULL = Plan(
    name="full",
    # Steps of at most ~20 % where a server's limit lies: a coarse ladder understates
    # the best counting rate of whichever server falls between two rungs.
    register_rates=(500, 1000, 1500, 2000, 3000, 4000, 5000, 6000, 8000, 10000, 12000, 16000),
    register_seconds=5.0,
    call_rates=(100, 200, 300, 400, 500, 600, 700, 850, 1000, 1200, 1400, 1700, 2000),
    call_seconds=10.0,
    ws_counts=(1000, 10000),
    ws_hold=12.0,
    latency_call_seconds=20.0,
    latency_register_seconds=20.0,
)
QUICK = Plan(
    name="quick",
    register_rates=(1000, 2000, 4000, 8000),
    register_seconds=3.0,
    call_rates=(200, 500, 1000),
    call_seconds=4.0,
    ws_counts=(2000,),
    ws_hold=12.0,
    latency_call_seconds=None,
    latency_register_seconds=5.0,
)


def median(values: Iterable[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return statistics.median(vals) if vals else NAN


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else NAN


def percentile(values: list[float], p: float) -> float:
    return calls_udp.percentile(values, p)
