"""Calls to a name: the DNS cache's hit rate under 1,000 SIPp calls through a [routes] rule.

    .venv/bin/python bench/dns_calls.py [--calls 1000] [--rate 100] [--ttl 60]

A real DNS server (Debian's dnsmasq, on a free loopback port, answering only its zone)
serves ``gw.siptrio.test``: NAPTR -> SRV -> A, all to 127.0.0.1. siptrio (``python -m
siptrio serve``, WARNING logging, UDP, ``[dns] servers`` that dnsmasq) has
``[routes] us = prefix +1 -> sip:gw.siptrio.test``; a SIPp UAS (examples/sipp/uas.xml,
server mode) answers on the SRV's port, and a SIPp caller (uac.xml) dials
``+15551234567@example.com`` ``--calls`` times at ``--rate``. Reported: the calls, the
questions siptrio asked dnsmasq (its query log) and its cache's hits and misses
(/metrics), so the hit rate. Results go to bench/results/dns_calls.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, free_tcp_port, free_udp_port, sipp_final_stats, stop_tree, tcp_listening

SIPP = REPO / "examples" / "sipp"
RESULTS = REPO / "bench" / "results" / "dns_calls.md"
ZONE = "siptrio.test"
GW = f"gw.{ZONE}"


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    m = re.search(rf"^{name}(?:_total)? ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--rate", type=int, default=100)
    p.add_argument("--ttl", type=int, default=60, help="TTL of every DNS answer (s)")
    p.add_argument("--output", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    for tool in ("sipp", "dnsmasq"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"dns_calls: {tool} is not installed", file=sys.stderr)
            return 2
    scratch = Path(tempfile.mkdtemp(prefix="siptrio-bench-dns-"))
    dns_port, sip_port, admin_port = free_udp_port(), free_udp_port(), free_tcp_port()
    gw_port, caller_port = free_udp_port(), free_udp_port()
    load = os.getloadavg()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        dnsmasq = subprocess.Popen(
            [
                shutil.which("dnsmasq") or "/usr/sbin/dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--pid-file=",
                "--user=root",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                f"--port={dns_port}",
                f"--local=/{ZONE}/",
                f"--local-ttl={args.ttl}",
                f"--neg-ttl={args.ttl}",
                "--log-queries",
                f"--log-facility={scratch / 'dnsmasq.log'}",
                f"--naptr-record={GW},10,10,s,SIP+D2U,,_sip._udp.{GW}",
                f"--srv-host=_sip._udp.{GW},host.{ZONE},{gw_port},10,0",
                f"--host-record=host.{ZONE},127.0.0.1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(dnsmasq)
        settings = {
            "sip.listen_addr": "127.0.0.1",
            "sip.udp_port": str(sip_port),
            "sip.tcp_enable": "false",
            "sip.domains": "example.com",
            "sip_websocket.enable": "false",
            "control.enable": "false",
            "admin.listen_port": str(admin_port),
            "dns.servers": f"127.0.0.1:{dns_port}",
            "routes.us": f"prefix +1 -> sip:{GW}",
            "registrar.database": str(scratch / "location.sqlite"),
        }
        cmd = [sys.executable, "-m", "siptrio", "serve", "--log-level", "WARNING"]
        for k, v in settings.items():
            cmd += ["--set", f"{k}={v}"]
        with (scratch / "siptrio.log").open("wb") as log:
            server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        procs.append(server)
        if not tcp_listening(admin_port):
            print((scratch / "siptrio.log").read_text(), file=sys.stderr)
            return 1
        common = ["-i", "127.0.0.1", "-t", "u1", "-buff_size", "4194304", "-nostdin"]
        uas = subprocess.Popen(
            [
                "sipp",
                "-sf",
                str(SIPP / "uas.xml"),
                "-p",
                str(gw_port),
                "-mp",
                str(free_udp_port() & ~1),
                *common,
                "-m",
                str(args.calls),
            ],
            cwd=scratch,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(uas)
        time.sleep(0.5)
        started = time.monotonic()
        caller = subprocess.run(
            [
                "sipp",
                f"127.0.0.1:{sip_port}",
                "-sf",
                str(SIPP / "uac.xml"),
                "-s",
                "+15551234567",
                "-key",
                "domain",
                "example.com",
                "-p",
                str(caller_port),
                "-mp",
                str(free_udp_port() & ~1),
                *common,
                "-m",
                str(args.calls),
                "-r",
                str(args.rate),
                "-recv_timeout",
                "10000",
                "-trace_stat",
                "-stf",
                str(scratch / "caller.csv"),
                "-fd",
                "1",
            ],
            cwd=scratch,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        took = time.monotonic() - started
        stats = sipp_final_stats(scratch / "caller.csv")
        hits = metric(admin_port, "siptrio_dns_cache_hits")
        misses = metric(admin_port, "siptrio_dns_cache_misses")
        asked = metric(admin_port, "siptrio_dns_queries")
        log = (scratch / "dnsmasq.log").read_text(errors="replace")
        seen = len(re.findall(r"query\[\w+\] \S+ from 127\.0\.0\.1", log))
    finally:
        for proc in reversed(procs):
            stop_tree(proc)
    ok, failed = int(stats["SuccessfulCall(C)"]), int(stats["FailedCall(C)"])
    rate = hits / (hits + misses) if hits + misses else 0.0
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    report = f"""# Calls to a name: the DNS cache

Measured {when}; load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} before the run.
`bench/dns_calls.py --calls {args.calls} --rate {args.rate} --ttl {args.ttl}`: SIPp dials
`+15551234567@example.com`; `[routes] us = prefix +1 -> sip:{GW}`; dnsmasq answers
NAPTR -> SRV -> A with TTL {args.ttl} s; a SIPp UAS answers at the SRV's port.

| calls | succeeded | failed | seconds | DNS lookups (cache) | hits | misses | hit rate | queries siptrio sent | queries dnsmasq saw |
|---|---|---|---|---|---|---|---|---|---|
| {args.calls} | {ok} | {failed} | {took:.1f} | {hits + misses:.0f} | {hits:.0f} | {misses:.0f} | {rate:.1%} | {asked:.0f} | {seen} |

Each call asks three questions (NAPTR, SRV, A); only the first call's go to the DNS
server, the rest are answered from the cache until the TTL runs out.
"""
    print(report)
    args.output.write_text(report)
    print(f"written to {args.output}")
    return 0 if failed == 0 and caller.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
