"""Real clients against a real siptrio process: SIPp registering 1,000 users, sipsak smoke.

The server runs as ``python -m siptrio serve`` on 127.0.0.1 with a database under
tmp_path; clients talk to 127.0.0.1 only. SIPp uses examples/sipp/register.xml (one
AOR per call: ``<prefix><call_number>@127.0.0.1``) and must finish with exit status 0
and no failed call; the bindings are then checked from outside SIPp, by fetching
(REGISTER without Contact) a sample of the AORs and, for UDP, by reading the SQLite
file after the server stopped.

TCP bindings live on their connection (siptrio drops them when the flow closes), and
SIPp closes its one connection when it exits: so over TCP the sample is fetched while
SIPp is still running.
"""

from __future__ import annotations

import csv
import random
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from support.client import SipClient
from support.ports import free_port
from support.server import ServerProcess, sipp_target

from siptrio.store.sqlite import SqliteStore

REPO = Path(__file__).resolve().parents[2]
SCENARIO = REPO / "examples" / "sipp" / "register.xml"
USERS = 1000
RATE = 200  # calls per second: 1,000 REGISTERs in about 5 s
SAMPLE = 50
SIPP_TIMEOUT = 55  # seconds; each SIPp run must finish well inside a minute
EXPIRES = 3600

needs_sipp = pytest.mark.skipif(
    shutil.which("sipp") is None, reason="sipp (sip-tester) not installed"
)
needs_sipsak = pytest.mark.skipif(shutil.which("sipsak") is None, reason="sipsak not installed")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with sipp_target(tmp_path) as proc:
        yield proc


def sipp_command(
    transport: str, target: tuple[str, int], local_port: int, prefix: str, out: Path
) -> list[str]:
    host, port = target
    return [
        "sipp",
        f"{host}:{port}",
        *("-sf", str(SCENARIO)),
        *("-i", "127.0.0.1"),
        *("-p", str(local_port)),
        *("-t", "u1" if transport == "udp" else "t1"),
        *("-buff_size", "4194304"),
        *("-s", prefix),
        *("-m", str(USERS)),
        *("-r", str(RATE)),
        # a lost answer fails its call after 5 s instead of hanging the run
        *("-recv_timeout", "5000"),
        *("-timeout", f"{SIPP_TIMEOUT}s"),
        "-timeout_error",
        "-nostdin",
        "-trace_stat",
        *("-stf", str(out / f"sipp_{transport}_stat.csv")),
        *("-fd", "1"),
        "-trace_err",
        *("-error_file", str(out / f"sipp_{transport}_errors.log")),
        "-trace_screen",
        *("-screen_file", str(out / f"sipp_{transport}_screen.log")),
    ]


def final_stats(csv_path: Path) -> dict[str, str]:
    """The last row of SIPp's -trace_stat file (';'-separated, cumulative columns end in (C))."""
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    assert rows, f"empty statistics file {csv_path}"
    return rows[-1]


def sipp_report(out: Path, transport: str) -> str:
    parts = []
    for name in (f"sipp_{transport}_screen.log", f"sipp_{transport}_errors.log", "sipp.stdout"):
        path = out / name
        if path.exists():
            parts.append(f"--- {name} ---\n{path.read_text(errors='replace')[-3000:]}")
    return "\n".join(parts)


async def run_sipp(cmd: list[str], cwd: Path) -> int:
    with (cwd / "sipp.stdout").open("wb") as stdout:
        with trio.fail_after(SIPP_TIMEOUT + 5):
            done = await trio.run_process(
                cmd,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.STDOUT,
                check=False,
            )
    return done.returncode


async def fetch(server_udp: tuple[str, int], user: str) -> list[str]:
    """The Contacts bound to ``sip:<user>@127.0.0.1``: REGISTER without Contact (a fetch)."""
    client = await SipClient.connect("udp", *server_udp)
    try:
        response = await client.request(
            client.register(user, domain="127.0.0.1", contact="", expires=None), timeout=5
        )
    finally:
        await client.aclose()
    assert response.status == 200, f"fetch of {user}: {response.status} {response.reason}"
    return response.values("contact")


def check_bound(user: str, contacts: list[str], transport: str, local_port: int) -> None:
    expected = f"<sip:{user}@127.0.0.1:{local_port};transport={transport.upper()}>"
    assert len(contacts) == 1, f"{user}: {contacts}"
    m = re.fullmatch(re.escape(expected) + r";expires=(\d+)", contacts[0])
    assert m, f"{user}: {contacts[0]!r} is not {expected};expires=N"
    assert EXPIRES - 120 <= int(m.group(1)) <= EXPIRES, contacts[0]


def check_sipp_result(rc: int, out: Path, transport: str) -> dict[str, str]:
    stat_file = out / f"sipp_{transport}_stat.csv"
    assert stat_file.exists(), (
        f"SIPp wrote no statistics (exit {rc})\n{sipp_report(out, transport)}"
    )
    stats = final_stats(stat_file)
    summary = {k: stats[k] for k in ("SuccessfulCall(C)", "FailedCall(C)", "Retransmissions(C)")}
    assert rc == 0, f"SIPp exit status {rc}, {summary}\n{sipp_report(out, transport)}"
    assert int(stats["FailedCall(C)"]) == 0, f"{summary}\n{sipp_report(out, transport)}"
    assert int(stats["SuccessfulCall(C)"]) == USERS, summary
    return stats


@pytest.mark.slow
@needs_sipp
async def test_sipp_register_udp(server: ServerProcess, tmp_path: Path) -> None:
    local_port = free_port()
    prefix = "udpuser"
    cmd = sipp_command("udp", server.listeners["udp"], local_port, prefix, tmp_path)
    rc = await run_sipp(cmd, tmp_path)
    check_sipp_result(rc, tmp_path, "udp")

    # Fetched from the running server: the first, the last and a sample in between.
    numbers = [1, USERS, *random.Random(4475).sample(range(2, USERS), SAMPLE)]
    for n in numbers:
        user = f"{prefix}{n}"
        check_bound(user, await fetch(server.listeners["udp"], user), "udp", local_port)

    # And durable: every AOR is in the SQLite file once the server has stopped.
    assert server.stop() == 0, server.output()
    with SqliteStore(tmp_path / "location.sqlite") as store:
        bindings = store.all()
    aors = {b.aor for b in bindings}
    assert aors == {f"sip:{prefix}{n}@127.0.0.1" for n in range(1, USERS + 1)}
    assert len(bindings) == USERS


@pytest.mark.slow
@needs_sipp
async def test_sipp_register_tcp(server: ServerProcess, tmp_path: Path) -> None:
    local_port = free_port()
    prefix = "tcpuser"
    cmd = sipp_command("tcp", server.listeners["tcp"], local_port, prefix, tmp_path)
    # The first 100 users are registered within half a second of the start, SIPp's
    # connection (and with it their bindings) lasts until the 1,000th: look meanwhile.
    sample = [1, 100, *random.Random(5118).sample(range(2, 100), 20)]
    unseen = {f"{prefix}{n}" for n in sample}
    result: dict[str, int] = {}

    async def sipp() -> None:
        result["rc"] = await run_sipp(cmd, tmp_path)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sipp)
        while unseen and "rc" not in result:
            await trio.sleep(0.1)
            for user in sorted(unseen):
                contacts = await fetch(server.listeners["udp"], user)
                if contacts:
                    check_bound(user, contacts, "tcp", local_port)
                    unseen.discard(user)
    check_sipp_result(result["rc"], tmp_path, "tcp")
    assert not unseen, f"not seen bound while SIPp was connected: {sorted(unseen)}"
    assert server.stop() == 0, server.output()


async def run_sipsak(*args: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(20):
        return await trio.run_process(
            ["sipsak", *args], capture_stdout=True, capture_stderr=True, check=False
        )


@needs_sipsak
async def test_sipsak_options(server: ServerProcess) -> None:
    host, port = server.listeners["udp"]
    # -S: send and receive on one port (-l), as siptrio answers to the source port.
    done = await run_sipsak("-s", f"sip:{host}:{port}", "-S", "-l", str(free_port()), "-H", host)
    # sipsak exit status: 0 a 200 came back, 1 another non-1xx answer, 3 no answer.
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)


@needs_sipsak
async def test_sipsak_register(server: ServerProcess) -> None:
    host, port = server.listeners["udp"]
    sipsak_port = free_port()
    done = await run_sipsak(
        "-U",
        *("-s", f"sip:sipsak@{host}:{port}"),
        *("-x", "120"),
        "-S",
        *("-l", str(sipsak_port)),
        *("-H", host),
    )
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    contacts = await fetch((host, port), "sipsak")
    assert len(contacts) == 1, contacts
    m = re.fullmatch(rf"<sip:sipsak@{re.escape(host)}:{sipsak_port}>;expires=(\d+)", contacts[0])
    assert m and 100 <= int(m.group(1)) <= 120, contacts
