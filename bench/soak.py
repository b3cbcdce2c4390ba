"""A long run: calls, REGISTER refreshes and WebSocket clients at once, memory sampled.

    .venv/bin/python bench/soak.py [--minutes 60] [--calls 300] [--registers 100] [--ws 1000]
                                   [--tree PATH] [--label soak]

One ``python -m siptrio serve`` (WARNING logging, UDP and WS on free 127.0.0.1 ports, the
admin API for /metrics, SQLite in a scratch folder, every other setting at its default,
``--tree`` on PYTHONPATH: the code under test) carries for ``--minutes``:

- calls at ``--calls`` per second over UDP: a SIPp caller (examples/sipp/uac.xml: INVITE,
  180, 200, ACK, BYE, 200, no pause) to a SIPp callee (uas.xml, registered as bob by
  another SIPp for the whole run), as bench/calls_udp.py;
- REGISTER refreshes at ``--registers`` per second over UDP: ``--users`` addresses of
  record (default 60 x the rate, so each is refreshed once a minute), each with its own
  Call-ID and a rising CSeq, Expires 300; the first round adds the bindings, every later
  one refreshes them (a client process of this script, ``--register-client``);
- ``--ws`` WebSocket flows shaped like SIP.js (bench/ws_browser.py's ``Browser``), each
  REGISTERed (expires 600, refreshed every 300 s), sending a CRLF keep-alive every 30 s
  and answering the server's pings (``keepalive_interval`` 15 s by default);

then ``--settle`` seconds without load. Every ``--every`` seconds (15) it samples the
server's VmRSS and Pss, its CPU share since the last sample (utime + stime over wall
time), the machine's load average, the calls SIPp counted, and every state size the
server's /metrics has (``siptrio_state_entries{table=...}``, plus the transaction,
dialog, binding and flow gauges that older versions have too). It writes a markdown
table to ``bench/results/<label>.md`` (rewritten at each sample, so an interrupted run
still leaves one) and a PNG of RSS over time to ``bench/results/<label>.png``. With
``--profile DIR`` the server runs under bench/memprofile.py, which writes a memory
report (allocator statistics, collector counts, objects by type) to DIR every minute.

The goal (issue 24): RSS at the end of the load within 10 % of RSS at minute 10, and
every state size flat. Run the code before a change with ``--tree`` pointing at a
checkout of it (``git worktree add /tmp/base <commit>``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

# The other benchmarks, next to this file (sys.path[0] when run as a script).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, stop_tree, tree_cpu_seconds
from soak_load import register_client, ws_client
from soak_report import Sample, describe_tree, plot, proc_kib, report, sipp_counts, state_sizes
from soak_server import Soak

RESULTS = REPO / "bench" / "results"


def _interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace) -> int:
    from register_udp import machine

    # SIGTERM (and SIGINT, which a shell ignores in background jobs) stop the run
    # with its report written and every process it started stopped.
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, _interrupted)

    if shutil.which("sipp") is None:
        print("soak: sipp is not installed (Debian: apt install sip-tester)", file=sys.stderr)
        return 2
    args.output_dir.mkdir(parents=True, exist_ok=True)
    md = args.output_dir / f"{args.label}.md"
    png = args.output_dir / f"{args.label}.png"
    scratch = Path(tempfile.mkdtemp(prefix="siptrio-soak-"))
    soak = Soak(
        tree=args.tree.resolve(),
        workdir=scratch,
        minutes=args.minutes,
        calls=args.calls,
        registers=args.registers,
        users=args.users or max(1, args.registers * 60),
        ws=args.ws,
        python=args.python,
        profile=args.profile.resolve() if args.profile else None,
    )
    py = subprocess.run(
        [
            args.python,
            "-c",
            "import platform,sys; print(platform.python_version(), sys.executable)",
        ],
        capture_output=True,
        text=True,
    ).stdout.strip()
    meta = {
        "started": f"{datetime.now(UTC):%Y-%m-%d %H:%M}",
        "machine": machine(),
        "commit": describe_tree(soak.tree),
        "python": py,
    }
    samples: list[Sample] = []
    print(f"soak: scratch {scratch}, writing {md}", file=sys.stderr, flush=True)
    try:
        server = soak.start_server()
        soak.start_callee()
        soak.start_load()
        started = time.monotonic()
        end_load = started + soak.seconds
        end_all = end_load + args.settle
        last_cpu, last_t = tree_cpu_seconds(server.pid), started
        next_sample = started + args.every
        stopped = False
        while True:
            time.sleep(max(0.0, next_sample - time.monotonic()))
            now = time.monotonic()
            if not stopped and now >= end_load:
                soak.stop()  # waits for the load generators to finish, then ends the callee
                stopped = True
                now = time.monotonic()
            if server.poll() is not None:
                print(f"soak: the server exited ({server.returncode})", file=sys.stderr)
                break
            cpu = tree_cpu_seconds(server.pid)
            rss, pss = proc_kib(server.pid)
            text = soak.metrics() or ""
            ok, failed = sipp_counts(scratch)
            sample = Sample(
                t=now - started,
                rss=rss,
                pss=pss,
                cpu=(cpu - last_cpu) / max(1e-9, now - last_t),
                load=os.getloadavg()[0],
                calls_ok=ok,
                calls_failed=failed,
                loaded=not stopped,
                sizes=state_sizes(text),
            )
            last_cpu, last_t = cpu, now
            samples.append(sample)
            print(
                f"{sample.t / 60:6.2f} min  RSS {rss / 1024:7.1f} MiB  CPU {sample.cpu * 100:3.0f} %"
                f"  load {sample.load:.2f}  calls {ok}/{failed}  "
                + " ".join(f"{k}={v:.0f}" for k, v in sorted(sample.sizes.items())),
                flush=True,
            )
            md.write_text(report(soak, samples, meta, args.label))
            if now >= end_all:
                break
            next_sample += args.every
    finally:
        soak.stop(wait=0.1)  # at once when interrupted; a no-op after a full run
        if "server" in soak.procs:
            stop_tree(soak.procs["server"])
        for proc in soak.procs.values():
            if proc.poll() is None:
                stop_tree(proc)
        if samples:
            md.write_text(report(soak, samples, meta, args.label))
            plot(samples, png, args.label, soak.minutes)
        if args.keep:
            print(f"soak: scratch folder kept: {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"written to {md} and {png}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--minutes", type=float, default=60.0, help="length of the load (default 60)")
    p.add_argument("--calls", type=int, default=300, help="calls per second (default 300)")
    p.add_argument(
        "--registers", type=int, default=100, help="REGISTER refreshes per second (default 100)"
    )
    p.add_argument("--users", type=int, default=0, help="AORs refreshed (default 60 x --registers)")
    p.add_argument("--ws", type=int, default=1000, help="WebSocket clients (default 1000)")
    p.add_argument("--every", type=float, default=15.0, help="seconds between samples (15)")
    p.add_argument("--settle", type=float, default=60.0, help="seconds sampled after the load")
    p.add_argument("--tree", type=Path, default=REPO, help="siptrio source tree to run")
    p.add_argument("--python", default=sys.executable, help="interpreter for the server")
    p.add_argument("--label", default="soak", help="file names in bench/results/ (soak)")
    p.add_argument("--output-dir", type=Path, default=RESULTS, help="where to write")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    p.add_argument(
        "--profile",
        type=Path,
        help="run the server under bench/memprofile.py, its reports written to this folder",
    )
    # the client processes
    p.add_argument("--register-client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ws-client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.register_client:
        return register_client(args.port, args.rate, args.users, args.seconds, args.out)
    if args.ws_client:
        return ws_client(args.port, args.n, args.seconds, args.out)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
