"""siptrio beside Kamailio: the same loads, A B A B, per server CPU-second.

    .venv/bin/python bench/compare.py [--quick] [--repeat 2] [--keep]

Needs SIPp (Debian ``sip-tester``), Kamailio (``kamailio`` and
``kamailio-websocket-modules``) and matplotlib (``pip install -e '.[bench]'``). Runs on
127.0.0.1 only. For each figure, each server is measured in turn, siptrio then Kamailio,
``--repeat`` times (A B A B with the default 2), each run on a fresh server process:

1. REGISTER over UDP: SIPp (examples/sipp/register.xml, a new AOR per REGISTER) at fixed
   rates, ascending; a rate counts with 0 failed REGISTERs and >= 95 % of the rate
   achieved; a server's ladder stops at its first rate that does not count.
2. Calls through the proxy, UDP to UDP: a SIPp caller (uac.xml) and a SIPp callee
   (uas.xml in server mode, registered by a second SIPp with register-contact.xml), as
   bench/calls_udp.py; a rate counts with 0
   failed calls, 0 retransmissions and >= 95 % achieved.
3. WebSocket scale: N SIP.js-shaped WebSocket flows (bench/ws_browser.py's clients), each
   REGISTERed, held while the server pings them, verified, closed: handshake+REGISTER
   rate, flows registered and alive, memory per flow.
4. Latency at a fixed moderate rate (200 calls/s, 200 REGISTER/s): p50/p99 of
   INVITE->200 and REGISTER->200 from SIPp's -trace_shortmsg microsecond timestamps.

Server CPU is utime + stime of the server's whole process tree (Kamailio forks workers)
from /proc, read just before and just after the load. Memory per WS flow is the growth
of the tree's summed Pss (each shared page counted once) over N; the summed VmRSS is
reported beside it. Writes bench/results/compare.md and bench/results/compare.png.
``--quick`` (fewer rates, shorter runs, 2,000 WS flows) takes about five minutes; the
full run about twenty.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
from pathlib import Path

# The other benchmarks, next to this file (sys.path[0] when run as a script).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    kamailio_version,
)
from compare_measure import Results, load_raw, save_raw
from compare_plan import FULL, QUICK, RESULTS
from compare_report import chart, report
from compare_runs import run_all


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument(
        "--quick",
        action="store_true",
        help="fewer rates, shorter runs, 2,000 WS flows: about five minutes",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="rounds of siptrio-then-Kamailio per figure (default 2: A B A B)",
    )
    p.add_argument(
        "--only",
        default="register,calls,ws,latency",
        help="comma-separated figures to run (default: all four)",
    )
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (logs, SIPp files)")
    p.add_argument("--raw", type=Path, help="also write every run's figures to this JSON file")
    p.add_argument(
        "--report-from",
        type=Path,
        metavar="JSON",
        help="measure nothing: write the report and chart from a --raw file",
    )
    p.add_argument(
        "--output",
        type=Path,
        default=RESULTS,
        help=f"markdown report; the PNG goes beside it (default {RESULTS})",
    )
    args = p.parse_args(argv)
    # a stop by SIGTERM (or SIGINT, which a background job ignores) unwinds through the
    # finally blocks, so every server and SIPp started so far is stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.report_from is not None:
        return write_report(load_raw(args.report_from), args.output)
    missing = [
        tool
        for tool, found in (
            ("sipp (Debian: sip-tester)", shutil.which("sipp")),
            ("kamailio (Debian: kamailio kamailio-websocket-modules)", kamailio_version()),
        )
        if not found
    ]
    if missing:
        print(f"compare: not installed: {', '.join(missing)}", file=sys.stderr)
        return 2
    only = {f.strip() for f in args.only.split(",") if f.strip()}
    plan = QUICK if args.quick else FULL
    scratch = Path(tempfile.mkdtemp(prefix="siptrio-compare-"))
    try:
        res = run_all(plan, args.repeat, scratch, only)
        save_raw(res, scratch / "compare.json")
        if args.raw is not None:
            save_raw(res, args.raw)
    finally:
        if args.keep:
            print(f"scratch folder kept: {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return write_report(res, args.output)


def write_report(res: Results, output: Path) -> int:
    output.parent.mkdir(parents=True, exist_ok=True)
    png = output.with_suffix(".png")
    try:
        chart(res, png)
    except ImportError:
        print("compare: matplotlib missing (pip install -e '.[bench]'): no chart", file=sys.stderr)
        text = report(res, None)
        written = f"{output}"
    else:
        text = report(res, png)
        written = f"{output} and {png}"
    output.write_text(text)
    print()
    print(text)
    print(f"written to {written}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
