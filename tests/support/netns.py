"""Run a test inside a loopback-only network namespace (``unshare --net``).

Tests whose messages name hosts outside this machine (a Contact at 192.168.1.10, a
gateway found by DNS) must not be able to reach them, whatever the server decides.
A test marked ``@pytest.mark.loopback_netns`` is run again by pytest in a child
process inside a new network namespace whose only interface is ``lo``; the outer run
passes or fails with it (tests/conftest.py wires the marker).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ENV = "SIPTRIO_TEST_IN_NETNS"
REPO = Path(__file__).resolve().parents[2]


def inside() -> bool:
    return os.environ.get(ENV) == "1"


def problem() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare(1) and ip(8) for a loopback-only network namespace"
    probe = subprocess.run(
        ["unshare", "--net", "--", "sh", "-c", "ip link set lo up"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    if probe.returncode != 0:
        return f"cannot create a network namespace (unshare --net): {probe.stderr.strip()}"
    return None


def run_inside(nodeid: str, timeout: float = 600) -> None:
    """Run one test (by pytest node id) in a fresh loopback-only namespace."""
    if (why := problem()) is not None:
        pytest.skip(why)
    proc = subprocess.run(
        [
            "unshare",
            "--net",
            "--",
            "sh",
            "-c",
            'ip link set lo up && exec "$0" "$@"',
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
            nodeid,
        ],
        env={**os.environ, ENV: "1"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode == 5:
        pytest.fail(f"{nodeid} was not collected inside the namespace:\n{proc.stdout[-3000:]}")
    if proc.returncode != 0:
        pytest.fail(
            f"{nodeid} failed inside the loopback-only namespace:\n"
            f"{proc.stdout[-8000:]}\n{proc.stderr[-3000:]}",
            pytrace=False,
        )
    if " skipped" in proc.stdout and " passed" not in proc.stdout:
        pytest.skip(f"skipped inside the namespace: {proc.stdout.strip().splitlines()[-1]}")
