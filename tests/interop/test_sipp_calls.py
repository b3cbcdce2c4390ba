"""SIPp calls through a real siptrio process: 1,000 calls at 100 calls/s, no failure.

The callee is one SIPp that registers ``bob@example.com`` and answers every call
(examples/sipp/uas-register.xml with examples/sipp/uas.xml as its out-of-call
scenario), over UDP in one test and over TCP in the other. Over TCP the binding lives
on the connection that registered and siptrio sends the INVITEs down that connection,
so the same SIPp process has to register and answer: see examples/sipp/README.md.

The caller is a second SIPp over UDP (examples/sipp/uac.xml): INVITE, 100/180/200,
ACK and BYE along the Record-Route set (one entry when both sides are UDP, two when the
callee is on TCP, RFC 5658), 200. It must exit 0 with 1,000 successful calls and none
failed; the 200s carry siptrio's Record-Route and the ACKs and BYEs the matching Route
set. The callee's short message trace shows that it got every call's INVITE, ACK and
BYE. Then a MESSAGE through siptrio ends the callee (it unregisters and exits 0), the
binding is gone, and siptrio still answers OPTIONS with 200 and exits cleanly.
"""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
from support.client import SipClient
from support.ports import free_media_port, free_port
from support.server import ServerProcess, sipp_target

REPO = Path(__file__).resolve().parents[2]
SIPP_DIR = REPO / "examples" / "sipp"
DOMAIN = "example.com"
CALLEE = "bob"
CALLS = 1000
RATE = 100  # calls per second: 1,000 calls in about 10 s
SIPP_TIMEOUT = 45  # seconds; the caller's global timeout, well inside a minute
CALLEE_CALL_ID = "callee-1@127.0.0.1"  # -cid_str callee-%u@%s with -i 127.0.0.1

needs_sipp = pytest.mark.skipif(
    shutil.which("sipp") is None, reason="sipp (sip-tester) not installed"
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with sipp_target(tmp_path, f"sip.domains={DOMAIN}") as proc:
        yield proc


def sipp_common(name: str, transport: str, out: Path) -> list[str]:
    return [
        *("-i", "127.0.0.1"),
        *("-p", str(free_port())),
        *("-mp", str(free_media_port())),
        *("-t", "u1" if transport == "udp" else "t1"),
        *("-buff_size", "4194304"),
        *("-s", CALLEE),
        *("-key", "domain", DOMAIN),
        "-nostdin",
        "-trace_stat",
        *("-stf", str(out / f"{name}_stat.csv")),
        *("-fd", "1"),
        "-trace_err",
        *("-error_file", str(out / f"{name}_errors.log")),
        "-trace_shortmsg",
        *("-shortmessage_file", str(out / f"{name}_short.log")),
        "-trace_screen",
        *("-screen_file", str(out / f"{name}_screen.log")),
    ]


def callee_command(server: ServerProcess, transport: str, out: Path) -> list[str]:
    host, port = server.listeners[transport]
    return [
        "sipp",
        f"{host}:{port}",
        *("-sf", str(SIPP_DIR / "uas-register.xml")),
        *("-oocsf", str(SIPP_DIR / "uas.xml")),
        *("-m", "1"),
        *("-cid_str", "callee-%u@%s"),
        *sipp_common("callee", transport, out),
    ]


def caller_command(server: ServerProcess, out: Path) -> list[str]:
    host, port = server.listeners["udp"]
    return [
        "sipp",
        f"{host}:{port}",
        *("-sf", str(SIPP_DIR / "uac.xml")),
        *("-m", str(CALLS)),
        *("-r", str(RATE)),
        # a lost answer fails its call after 10 s instead of hanging the run
        *("-recv_timeout", "10000"),
        *("-timeout", f"{SIPP_TIMEOUT}s"),
        "-timeout_error",
        "-trace_msg",
        *("-message_file", str(out / "caller_messages.log")),
        *sipp_common("caller", "udp", out),
    ]


def final_stats(csv_path: Path) -> dict[str, str]:
    """The last row of SIPp's -trace_stat file (';'-separated, cumulative columns end in (C))."""
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    assert rows, f"empty statistics file {csv_path}"
    return rows[-1]


def sipp_report(out: Path, name: str) -> str:
    parts = []
    for suffix in ("_screen.log", "_errors.log", ".stdout"):
        path = out / f"{name}{suffix}"
        if path.exists():
            parts.append(f"--- {path.name} ---\n{path.read_text(errors='replace')[-3000:]}")
    return "\n".join(parts)


def short_messages(path: Path) -> list[tuple[str, str, str, str]]:
    """(direction S/R, Call-ID, CSeq, first line) from a -trace_shortmsg file."""
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        fields = line.split("\t")
        if len(fields) >= 7:
            rows.append((fields[3], fields[4], fields[5].removeprefix("CSeq:"), fields[6]))
    return rows


_TRACE_ENTRY = re.compile(r"^-{20,} .*\n\w+ message (sent|received) .*\n\n", re.MULTILINE)


def traced_messages(path: Path) -> Iterator[tuple[str, str]]:
    """("sent" or "received", message text) from a -trace_msg file."""
    text = path.read_text(errors="replace")
    marks = list(_TRACE_ENTRY.finditer(text))
    for mark, following in zip(marks, [*marks[1:], None], strict=True):
        end = following.start() if following else len(text)
        yield mark.group(1), text[mark.end() : end]


def header_values(message: str, name: str) -> list[str]:
    """Every comma-separated value of a header, across repeated header lines, in order."""
    head = message.split("\n\n", 1)[0]
    values: list[str] = []
    for line in head.splitlines()[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            values += [v.strip() for v in value.split(",") if v.strip()]
    return values


def check_routes(server: ServerProcess, callee_transport: str, out: Path) -> None:
    """siptrio's Record-Route in every 200 for an INVITE, and SIPp's Routes on ACK and BYE.

    One entry when both sides are UDP; when the callee is on TCP two (RFC 5658), the top
    one facing the callee (TCP), the bottom one facing the caller (UDP). The caller's
    route set is that list reversed (RFC 3261 12.1.2), and its ACK and BYE carry it.
    """
    udp_host, udp_port = server.listeners["udp"]
    record_route = [f"<sip:{udp_host}:{udp_port};lr>"]
    if callee_transport == "tcp":
        tcp_host, tcp_port = server.listeners["tcp"]
        record_route.insert(0, f"<sip:{tcp_host}:{tcp_port};transport=tcp;lr>")
    counts: Counter[str] = Counter()
    for direction, message in traced_messages(out / "caller_messages.log"):
        first = message.split("\n", 1)[0].strip()
        cseq = " ".join(header_values(message, "CSeq"))
        if direction == "received" and first.startswith("SIP/2.0 200") and cseq.endswith("INVITE"):
            assert header_values(message, "Record-Route") == record_route, message
            counts["200 INVITE"] += 1
        elif direction == "sent" and first.split(" ", 1)[0] in ("ACK", "BYE"):
            assert header_values(message, "Route") == record_route[::-1], message
            counts[first.split(" ", 1)[0]] += 1
    assert counts["200 INVITE"] >= CALLS and counts["ACK"] >= CALLS, counts
    assert counts["BYE"] >= CALLS, counts


async def fetch(server: ServerProcess, user: str) -> list[str]:
    """The Contacts bound to ``sip:<user>@example.com``: REGISTER without Contact."""
    client = await SipClient.connect("udp", *server.listeners["udp"])
    try:
        response = await client.request(
            client.register(user, domain=DOMAIN, contact="", expires=None), timeout=5
        )
    finally:
        await client.aclose()
    assert response.status == 200, f"fetch of {user}: {response.status} {response.reason}"
    return response.values("contact")


async def send_request(server: ServerProcess, build: Callable[[SipClient], bytes]) -> int:
    """Send one request from a fresh UDP client; the status of its final response."""
    client = await SipClient.connect("udp", *server.listeners["udp"])
    try:
        response = await client.request(build(client), timeout=5)
    finally:
        await client.aclose()
    return response.status


async def stop_callee(server: ServerProcess) -> int:
    """The MESSAGE that ends uas-register.xml: through siptrio, with the callee's Call-ID."""

    def message(client: SipClient) -> bytes:
        return client.build(
            "MESSAGE",
            f"sip:{CALLEE}@{DOMAIN}",
            to=f"<sip:{CALLEE}@{DOMAIN}>",
            from_=f"<sip:test@{DOMAIN}>",
            call_id=CALLEE_CALL_ID,
            headers=[("Content-Type", "text/plain")],
            body=b"stop",
        )

    return await send_request(server, message)


async def options(server: ServerProcess) -> int:
    host, port = server.listeners["udp"]

    def request(client: SipClient) -> bytes:
        return client.build("OPTIONS", f"sip:{host}:{port}", to=f"<sip:{host}:{port}>")

    return await send_request(server, request)


async def run_calls(server: ServerProcess, tmp_path: Path, callee_transport: str) -> None:
    started = time.monotonic()
    callee_out = (tmp_path / "callee.stdout").open("wb")
    callee = await trio.lowlevel.open_process(
        callee_command(server, callee_transport, tmp_path),
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=callee_out,
        stderr=subprocess.STDOUT,
    )
    try:
        # Registered: bob's one Contact is SIPp's, over the callee's transport.
        with trio.fail_after(10):
            while not (contacts := await fetch(server, CALLEE)):
                assert callee.poll() is None, sipp_report(tmp_path, "callee")
                await trio.sleep(0.05)
        assert len(contacts) == 1, contacts
        assert f";transport={callee_transport.upper()}>" in contacts[0], contacts

        with (
            (tmp_path / "caller.stdout").open("wb") as caller_out,
            trio.fail_after(SIPP_TIMEOUT + 5),
        ):
            caller = await trio.run_process(
                caller_command(server, tmp_path),
                cwd=tmp_path,
                stdin=subprocess.DEVNULL,
                stdout=caller_out,
                stderr=subprocess.STDOUT,
                check=False,
            )
        calls_done = time.monotonic()

        stat_file = tmp_path / "caller_stat.csv"
        assert stat_file.exists(), (
            f"the caller wrote no statistics (exit {caller.returncode})\n"
            f"{sipp_report(tmp_path, 'caller')}\n{sipp_report(tmp_path, 'callee')}"
        )
        stats = final_stats(stat_file)
        summary = {
            k: stats[k] for k in ("SuccessfulCall(C)", "FailedCall(C)", "Retransmissions(C)")
        }
        report = f"{summary}\n{sipp_report(tmp_path, 'caller')}\n{sipp_report(tmp_path, 'callee')}"
        assert caller.returncode == 0, f"caller exit status {caller.returncode}, {report}"
        assert int(stats["FailedCall(C)"]) == 0, report
        assert int(stats["SuccessfulCall(C)"]) == CALLS, report

        check_routes(server, callee_transport, tmp_path)

        # The callee's view: every call's INVITE, ACK and BYE reached it (Call-IDs that
        # received each; repeats, if any, are absorbed by the call they belong to), and
        # each INVITE started exactly one out-of-call scenario.
        received: dict[str, set[str]] = {"INVITE": set(), "ACK": set(), "BYE": set()}
        for direction, call_id, _cseq, line in short_messages(tmp_path / "callee_short.log"):
            method = line.split(" ", 1)[0]
            if direction == "R" and method in received:
                received[method].add(call_id)
        assert {m: len(ids) for m, ids in received.items()} == dict.fromkeys(received, CALLS)
        errors = (tmp_path / "callee_errors.log").read_text(errors="replace")
        assert errors.count("Received out-of-call INVITE message") == CALLS, errors[-3000:]
        assert "unexpected" not in errors.lower(), errors[-3000:]

        # End the callee: it answers the MESSAGE, unregisters, exits 0.
        assert await stop_callee(server) == 200
        with trio.fail_after(10):
            callee_rc = await callee.wait()
        assert callee_rc == 0, f"callee exit status {callee_rc}\n{sipp_report(tmp_path, 'callee')}"
        assert await fetch(server, CALLEE) == []
        sent_byes = [
            m
            for m in short_messages(tmp_path / "callee_short.log")
            if m[0] == "S" and "BYE" in m[3]
        ]
        assert not sent_byes, f"the callee sent BYEs when it ended: {sent_byes[:3]}"
    finally:
        if callee.poll() is None:
            callee.kill()
            await callee.wait()
        callee_out.close()

    # siptrio is still healthy: it answers OPTIONS, logged no error, and exits cleanly.
    assert await options(server) == 200
    assert server.stop() == 0, server.output()[-3000:]
    log = server.output()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    # 1,000 calls at 100/s take 10 s; the whole test must stay well inside a minute
    assert calls_done - started < 40, f"calls took {calls_done - started:.1f} s"


@pytest.mark.slow
@needs_sipp
async def test_sipp_calls_callee_udp(server: ServerProcess, tmp_path: Path) -> None:
    await run_calls(server, tmp_path, "udp")


@pytest.mark.slow
@needs_sipp
async def test_sipp_calls_callee_tcp(server: ServerProcess, tmp_path: Path) -> None:
    await run_calls(server, tmp_path, "tcp")
