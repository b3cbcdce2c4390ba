"""SIPp for the interop tests: processes, the standard callee set-up, and SIPp's files.

The standard way to put a SIPp callee behind siptrio (examples/sipp/README.md): a UAS
in server mode on its own port (``-sf uas.xml -p P``), and a second SIPp that registers
``sip:<user>@example.com`` with a Contact naming that port
(examples/sipp/register-contact.xml, ``-key contact_port P``; RFC 3261 section 10.2) and
exits. siptrio reaches the binding at its Contact: over UDP at ``P``, over TCP through
a connection it opens to ``P`` (the registering connection is closed by then).

Every SIPp gets ``-i 127.0.0.1``, its own ``-p`` and ``-mp`` ports and
``-buff_size 4194304`` (/work/shared/CLIENTS.md), and writes its screen, errors, short
message trace and statistics (and, unless told not to, every message) under ``out``,
named after it.
"""

from __future__ import annotations

import csv
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.ports import free_media_port, free_port

from siptrio.sip import Response, parse_message_untrusted

REPO = Path(__file__).resolve().parents[2]
SIPP_DIR = REPO / "examples" / "sipp"
DOMAIN = "example.com"

needs_sipp = pytest.mark.skipif(
    shutil.which("sipp") is None, reason="sipp missing: apt-get install -y sip-tester"
)

Address = tuple[str, int]

_TRACE_ENTRY = re.compile(r"^-{20,} .*\n\w+ message (sent|received) .*\n\n", re.MULTILINE)


@dataclass
class Sipp:
    """One SIPp process and the files it writes under ``out`` (``<name>_*.log``)."""

    name: str
    proc: subprocess.Popen[bytes]
    out: Path
    transport: str
    port: int  # its -p

    def file(self, suffix: str) -> Path:
        return self.out / f"{self.name}{suffix}"

    def messages(self) -> list[tuple[str, str]]:
        """("sent" or "received", message with LF line ends) from the -trace_msg file."""
        path = self.file("_messages.log")
        if not path.exists():
            return []
        text = path.read_text(errors="replace")
        marks = list(_TRACE_ENTRY.finditer(text))
        ends = [m.start() for m in marks[1:]] + [len(text)]
        return [
            (mark.group(1), text[mark.end() : end].replace("\r\n", "\n"))
            for mark, end in zip(marks, ends[: len(marks)], strict=True)
        ]

    def find(self, direction: str, first_line: str, call_id: str | None = None) -> list[str]:
        """Messages sent or received whose first line starts with ``first_line``."""
        return [
            m
            for d, m in self.messages()
            if d == direction
            and m.startswith(first_line)
            and (call_id is None or call_id in header_values(m, "Call-ID"))
        ]

    def short(self) -> list[tuple[str, str, str, str]]:
        """(S or R, Call-ID, CSeq, first line) from the -trace_shortmsg file."""
        path = self.file("_short.log")
        rows = []
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                fields = line.split("\t")
                if len(fields) >= 7:
                    rows.append((fields[3], fields[4], fields[5].removeprefix("CSeq:"), fields[6]))
        return rows

    def received(self, method: str) -> set[str]:
        """The Call-IDs for which a ``method`` request came in."""
        return {c for d, c, _, line in self.short() if d == "R" and line.startswith(method + " ")}

    def stats(self) -> dict[str, str]:
        """The last row of the -trace_stat file (cumulative columns end in ``(C)``)."""
        path = self.file("_stat.csv")
        if not path.exists():
            return {}
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f, delimiter=";"))
        return rows[-1] if rows else {}

    def report(self) -> str:
        parts = [f"=== SIPp {self.name} ({self.transport}, port {self.port}) ==="]
        for suffix in ("_screen.log", "_errors.log", ".stdout"):
            path = self.file(suffix)
            if path.exists():
                parts.append(f"--- {path.name} ---\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def errors(self) -> str:
        path = self.file("_errors.log")
        return path.read_text(errors="replace") if path.exists() else ""

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"SIPp {self.name} still running\n{self.report()}") from None

    def stop(self, timeout: float = 15.0) -> int:
        """SIPp's smooth exit (SIGUSR1): no new calls, the running ones finish; its exit
        status (0: no call failed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_sipp(
    target: Address,
    name: str,
    transport: str,
    out: Path,
    args: Sequence[str],
    *,
    port: int | None = None,
    trace_messages: bool = True,
) -> Sipp:
    """SIPp towards ``target`` (siptrio's listener for ``transport``) with ``args``
    (scenario, -s, -m ...). ``trace_messages=False`` leaves out -trace_msg (heavy)."""
    port = port or free_port()
    command = [
        "sipp",
        f"{target[0]}:{target[1]}",
        *args,
        *("-key", "domain", DOMAIN),
        *("-i", "127.0.0.1"),
        *("-p", str(port)),
        *("-mp", str(free_media_port())),
        *("-t", "u1" if transport == "udp" else "t1"),
        *("-buff_size", "4194304"),
        "-nostdin",
        "-trace_err",
        *("-error_file", str(out / f"{name}_errors.log")),
        "-trace_screen",
        *("-screen_file", str(out / f"{name}_screen.log")),
        "-trace_shortmsg",
        *("-shortmessage_file", str(out / f"{name}_short.log")),
        "-trace_stat",
        *("-stf", str(out / f"{name}_stat.csv")),
        *("-fd", "1"),
    ]
    if trace_messages:
        command += ["-trace_msg", "-message_file", str(out / f"{name}_messages.log")]
    with (out / f"{name}.stdout").open("wb") as stdout:
        proc = subprocess.Popen(
            command, cwd=out, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.STDOUT
        )
    return Sipp(name, proc, out, transport, port)


def bound(transport: str, port: int) -> bool:
    """Is ``port`` on 127.0.0.1 taken (for UDP, or listening for TCP)?"""
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def start_uas(
    target: Address,
    name: str,
    transport: str,
    out: Path,
    *,
    user: str,
    scenario: str = "uas.xml",
    calls: int | None = None,
    trace_messages: bool = True,
    port: int | None = None,
) -> Sipp:
    """A SIPp UAS in server mode (``-sf scenario``, no REGISTER of its own), bound and
    waiting for calls; ``calls``: it exits (0 when all succeeded) after that many."""
    args = ["-sf", str(SIPP_DIR / scenario), "-s", user]
    if calls is not None:
        args += ["-m", str(calls)]
    uas = start_sipp(target, name, transport, out, args, port=port, trace_messages=trace_messages)
    deadline = time.monotonic() + 10
    while not bound(transport, uas.port):
        if uas.proc.poll() is not None or time.monotonic() > deadline:
            uas.kill()
            raise AssertionError(f"SIPp {name} did not bind port {uas.port}\n{uas.report()}")
        time.sleep(0.05)
    return uas


def register_contact(
    target: Address,
    name: str,
    transport: str,
    out: Path,
    *,
    user: str,
    contact_port: int,
    expires: int = 3600,
) -> Sipp:
    """examples/sipp/register-contact.xml, once: ``sip:<user>@example.com`` bound to
    ``sip:<user>@127.0.0.1:<contact_port>;transport=<transport>`` from a port of its
    own; it must get its 200 and exit 0."""
    registrar = start_sipp(
        target,
        name,
        transport,
        out,
        [
            *("-sf", str(SIPP_DIR / "register-contact.xml")),
            *("-s", user),
            *("-key", "contact_port", str(contact_port)),
            *("-key", "expires", str(expires)),
            *("-m", "1"),
            *("-recv_timeout", "5000"),
        ],
    )
    assert registrar.port != contact_port
    rc = registrar.wait(15)
    assert rc == 0, f"register-contact.xml exit status {rc}\n{registrar.report()}"
    return registrar


def standard_callee(
    listeners: dict[str, Address],
    transport: str,
    out: Path,
    *,
    user: str,
    scenario: str = "uas.xml",
    calls: int | None = None,
    trace_messages: bool = True,
) -> Sipp:
    """The standard set-up: a UAS in server mode, registered by a separate SIPp that
    has exited by the time this returns. The UAS is named ``<user>``, the registering
    SIPp ``<user>-register``."""
    target = listeners[transport]
    uas = start_uas(
        target,
        user,
        transport,
        out,
        user=user,
        scenario=scenario,
        calls=calls,
        trace_messages=trace_messages,
    )
    try:
        register_contact(
            target, f"{user}-register", transport, out, user=user, contact_port=uas.port
        )
    except BaseException:
        uas.kill()
        raise
    return uas


# --- SIP from a plain socket ----------------------------------------------------------------


def udp_request(
    target: Address,
    method: str,
    uri: str,
    headers: Sequence[str] = (),
    *,
    call_id: str | None = None,
) -> Response:
    """One request from a fresh UDP socket; its final response (1xx skipped)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(5)
        host, port = s.getsockname()
        branch = f"z9hG4bK-interop-{uuid.uuid4().hex[:12]}"
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP {host}:{port};branch={branch};rport",
            "Max-Forwards: 70",
            *headers,
            f"Call-ID: {call_id or uuid.uuid4().hex + '@interop'}",
            f"CSeq: 1 {method}",
            "Content-Length: 0",
        ]
        s.sendto(("\r\n".join(lines) + "\r\n\r\n").encode(), target)
        while True:
            msg = parse_message_untrusted(s.recv(65536))
            if isinstance(msg, Response) and msg.status >= 200:
                return msg


def fetch(target: Address, user: str, domain: str = DOMAIN) -> list[str]:
    """The Contacts bound to ``sip:<user>@<domain>``: a REGISTER without Contact."""
    aor = f"<sip:{user}@{domain}>"
    tag = uuid.uuid4().hex[:8]
    headers = [f"From: {aor};tag={tag}", f"To: {aor}"]
    response = udp_request(target, "REGISTER", f"sip:{domain}", headers)
    assert response.status == 200, f"fetch of {user}: {response.status} {response.reason}"
    return response.values("contact")


def options(target: Address) -> int:
    uri = f"sip:{target[0]}:{target[1]}"
    tag = uuid.uuid4().hex[:8]
    return udp_request(target, "OPTIONS", uri, [f"From: <{uri}>;tag={tag}", f"To: <{uri}>"]).status


def header_values(message: str, name: str) -> list[str]:
    """Every comma-separated value of a header, across repeated header lines, in order."""
    head = message.replace("\r\n", "\n").split("\n\n", 1)[0]
    values: list[str] = []
    for line in head.splitlines()[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            values += [v.strip() for v in value.split(",") if v.strip()]
    return values
