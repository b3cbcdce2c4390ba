"""A real DNS server for tests: Debian's dnsmasq on a free loopback port.

It serves a zone of NAPTR, SRV and A records whose addresses are all on loopback,
answers NXDOMAIN for any other name in that zone (``--local``), never forwards a
question anywhere (``--no-resolv``, no ``--server``), and logs every query it gets,
so a test can count what the server under test asked.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.ports import free_port

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


@dataclass
class Dns:
    port: int
    log: Path

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    def queries(self, name: str, qtype: str) -> int:
        """How many times ``qtype`` records of ``name`` were asked for."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return len(re.findall(rf"query\[{qtype}\] {re.escape(name)} from", text))


@contextmanager
def dnsmasq(
    tmp_path: Path,
    *,
    zone: str,
    records: Sequence[str],
    ttl: int = 60,
) -> Iterator[Dns]:
    """``records``: dnsmasq options such as ``--srv-host=...``, ``--naptr-record=...``,
    ``--host-record=...``; ``ttl``: the TTL of every answer (dnsmasq's default is 0)."""
    if not Path(DNSMASQ).exists():
        pytest.skip("needs Debian's dnsmasq-base (apt-get install -y dnsmasq-base)")
    log = tmp_path / "dnsmasq.log"
    for _ in range(5):
        port = free_port()
        cmd = [
            DNSMASQ,
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--pid-file=",
            "--user=root",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            f"--port={port}",
            f"--local=/{zone}/",
            f"--local-ttl={ttl}",
            f"--neg-ttl={ttl}",
            "--log-queries",
            f"--log-facility={log}",
            *records,
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.3)
        if proc.poll() is None:
            break
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if "Address already in use" not in err:
            raise RuntimeError(f"dnsmasq did not start: {err}")
    else:
        raise RuntimeError("dnsmasq found no free port")
    try:
        yield Dns(port=port, log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
