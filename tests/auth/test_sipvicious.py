"""sipvicious, the scanner every internet-facing SIP server meets, against a siptrio process.

Debian's sipvicious (``apt-get install sipvicious``) provides ``svcrack`` (a digest
password guesser) and ``svwar`` (an extension enumerator). siptrio runs as
``python -m siptrio serve`` on 127.0.0.1 with digest authentication on, users added
with ``siptrio users add``, a ban after five failed authentications, and loopback
*not* exempt from the rate limit; the tools are pointed at 127.0.0.1 only, with
explicit ports and timeouts (trio kills a tool that overruns its ``fail_after``).
(svcrack and svwar 0.3.3 ignore ``-b`` and bind their UDP socket on every interface;
they only ever send to 127.0.0.1.)

sipvicious 0.3.3 cannot answer the challenge siptrio lists first: RFC 8760 has the
server offer SHA-256 before MD5, and svcrack takes the first ``WWW-Authenticate``
it sees, prints "Unknown algorithm: sha-256" and dies before its first guess. That
protects nothing worth testing, so besides the stock tool the brute force also runs
through a small shim that makes svcrack pick the MD5 challenge, as a maintained
cracker would; everything else (its requests, its guessing loop, how it reports a
cracked password) is sipvicious's own. A control run with the real password in the
list shows the shim does crack when it can.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from support.client import SipClient, new_branch
from support.digest import authorization, challenges
from support.ports import free_udp_port
from support.server import ServerProcess

from siptrio.sip import Response


def _tool(name: str) -> str | None:
    """Debian installs svcrack/svwar; pip's sipvicious names them sipvicious_svcrack ..."""
    return shutil.which(name) or shutil.which(f"sipvicious_{name}")


SVCRACK = _tool("svcrack")
SVWAR = _tool("svwar")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        SVCRACK is None or SVWAR is None,
        reason="sipvicious is not installed (apt-get install sipvicious)",
    ),
]

DOMAIN = "example.com"
USERS = {"100": "7rQ-h0rse-battery", "101": "c0rrect-staple-9", "200": "legit-Pa55word!"}
UNKNOWN = ["102", "300", "999"]  # extensions that do not exist
BAN_AFTER = 5
TOOL_TIMEOUT = 30  # seconds for one sipvicious run; it is killed past that
# a wordlist an attacker would try first; the real passwords are not in it
WORDS = [
    *("100", "1234", "12345", "123456", "password", "admin", "secret", "qwerty"),
    *("letmein", "100100", "0000", "1111", "pass", "sip", "voip", "asterisk"),
    *("welcome", "changeme", "default", "root"),
]

# svcrack as shipped, except that it answers the MD5 challenge (see the module docstring),
# binds the address in SHIM_BIND (0.3.3 ignores -b) and waits 2 s, not 10, for late answers.
SHIM = r"""
import os, re, sys
from sipvicious import svcrack

def md5_challenge(packet):
    found = re.findall(r"\r\n(?:www|proxy)-authenticate: (.+?)(?=\r\n)", packet, re.I)
    md5 = [v for v in found if re.search(r"algorithm=MD5\b", v, re.I)]
    return (md5 or found or [None])[0]

_init = svcrack.ASipOfRedWine.__init__

def init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self.bindingip = os.environ["SHIM_BIND"]
    self.sock.settimeout(2.0)

svcrack.getAuthHeader = md5_challenge
svcrack.ASipOfRedWine.__init__ = init
sys.argv[0] = "svcrack"
svcrack.main()
"""


# --- the server ------------------------------------------------------------------------------


@dataclass
class Siptrio:
    proc: ServerProcess
    port: int  # UDP, on 127.0.0.1


@pytest.fixture
def siptrio(tmp_path: Path) -> Iterator[Siptrio]:
    config = tmp_path / "siptrio.ini"
    config.write_text(
        f"[registrar]\ndatabase = {tmp_path / 'location.sqlite'}\n[sip]\ndomains = {DOMAIN}\n"
    )
    cli = [sys.executable, "-m", "siptrio", "users", "-c", str(config), "add"]
    for user, password in USERS.items():
        done = subprocess.run(
            [*cli, user, "--password-stdin"],
            input=password + "\n",
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    proc = ServerProcess(
        [
            *("serve", "-c", str(config)),
            *("--set", "sip.listen_addr=127.0.0.1"),
            *("--set", "sip.udp_port=0"),
            *("--set", "sip.tcp_port=0"),
            *("--set", "sip_websocket.enable=false"),
            *("--set", "admin.enable=false"),
            *("--set", "control.enable=false"),
            *("--set", "auth.enable=true"),
            *("--set", f"security.ban_after={BAN_AFTER}"),
            *("--set", "security.rate_limit_exempt="),
        ],
        log_path=tmp_path / "siptrio.log",
    )
    try:
        listeners = proc.wait_ready(expect=2)
        yield Siptrio(proc, listeners["udp"][1])
    finally:
        proc.stop()


# --- running sipvicious ---------------------------------------------------------------------------


def shim_command(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """The interpreter and package directory of the installed svcrack, running SHIM."""
    assert SVCRACK is not None
    script = Path(os.path.realpath(SVCRACK))
    first = script.read_text(errors="replace").splitlines()[0]
    interpreter = first[2:].strip().split()[0] if first.startswith("#!") else sys.executable
    shim = tmp_path / "svcrack_md5.py"
    shim.write_text(SHIM)
    return [interpreter, str(shim)], {"PYTHONPATH": str(script.parent)}


async def run_tool(
    command: list[str], *, env: dict[str, str] | None = None, timeout: float = TOOL_TIMEOUT
) -> str:
    """Run a sipvicious tool to completion; its log (stderr) and table (stdout) together."""
    with trio.fail_after(timeout):  # cancelling run_process kills the tool
        done = await trio.run_process(
            command,
            capture_stdout=True,
            stderr=subprocess.STDOUT,
            check=False,
            env={**os.environ, **(env or {})},
        )
    return done.stdout.decode(errors="replace")


def table(output: str) -> list[tuple[str, str]]:
    """The rows of the result table sipvicious prints (svcrack: cracked passwords)."""
    rows = re.findall(r"^\| (\S+)\s*\| (.*?)\s*\|$", output, re.M)
    return [r for r in rows if r[0] != "Extension"]


def svcrack_args(server: Siptrio, wordlist: Path, *, source: str) -> list[str]:
    return [
        *("-u", "100", "-d", str(wordlist)),
        *("-p", str(server.port), "-P", str(free_udp_port())),
        *("-x", source, "--domain", DOMAIN, "--maximumtime", "3"),
        "127.0.0.1",
    ]


def wordlist(tmp_path: Path, name: str, words: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(words) + "\n")
    return path


# --- a legitimate client --------------------------------------------------------------------------


async def register(client: SipClient, user: str) -> Response:
    first = await client.request(client.register(user, domain=DOMAIN), timeout=2)
    assert first.status == 401, f"{first.status} {first.reason}"
    auth = authorization(
        challenges(first.values("www-authenticate"))["MD5"],
        method="REGISTER",
        uri=f"sip:{DOMAIN}",
        user=user,
        password=USERS[user],
    )
    return await client.request(
        client.register(user, domain=DOMAIN, headers=(("Authorization", auth),)), timeout=2
    )


async def answered(server: Siptrio, source: str, timeout: float = 1.0) -> bool:
    """Does a plain REGISTER from ``source`` get any answer?"""
    c = await SipClient.connect("udp", "127.0.0.1", server.port, local_host=source)
    try:
        await c.send(c.register("nobody", domain=DOMAIN))
        await c.receive(timeout)
    except trio.TooSlowError:
        return False
    finally:
        await c.aclose()
    return True


# --- svcrack ------------------------------------------------------------------------------------


async def test_svcrack_finds_nothing_and_gets_banned_while_a_user_registers(
    siptrio: Siptrio, tmp_path: Path
) -> None:
    words = wordlist(tmp_path, "words.txt", WORDS)
    assert USERS["100"] not in WORDS

    # control: with the password in the list, the shimmed svcrack cracks it (from 127.0.0.3)
    shim, shim_env = shim_command(tmp_path)
    control = wordlist(tmp_path, "control.txt", ["1234", "admin", USERS["100"], "qwerty"])
    out = await run_tool(
        [*shim, *svcrack_args(siptrio, control, source="127.0.0.3")],
        env={**shim_env, "SHIM_BIND": "127.0.0.3"},
    )
    assert table(out) == [("100", USERS["100"])], out

    # the stock tool, as Debian ships it: nothing found (0.3.3 dies on the SHA-256 challenge)
    assert SVCRACK is not None
    out = await run_tool([SVCRACK, *svcrack_args(siptrio, words, source="127.0.0.1")])
    assert table(out) == [] and "found nothing" in out, out

    # the real brute force from 127.0.0.1, while a user on 127.0.0.2 keeps registering
    legit = await SipClient.connect("udp", "127.0.0.1", siptrio.port, local_host="127.0.0.2")
    registered_during_attack = 0
    cracked = ""

    async def attack(done: trio.Event) -> None:
        nonlocal cracked
        cracked = await run_tool(
            [*shim, *svcrack_args(siptrio, words, source="127.0.0.1")],
            env={**shim_env, "SHIM_BIND": "127.0.0.1"},
        )
        done.set()

    done = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(attack, done)
        while not done.is_set():
            r = await register(legit, "200")
            assert r.status == 200, f"{r.status} {r.reason}"
            if not done.is_set():
                registered_during_attack += 1
            with trio.move_on_after(0.3):
                await done.wait()

    assert table(cracked) == [] and "found nothing" in cracked, cracked
    assert registered_during_attack >= 3
    log = siptrio.proc.output()
    assert re.search(
        rf"banned 127\.0\.0\.1 for 600 s after {BAN_AFTER} failed authentications", log
    ), log
    assert "banned 127.0.0.2" not in log and "banned 127.0.0.3" not in log
    # the attacker's address is now ignored; everyone else is still answered
    assert not await answered(siptrio, "127.0.0.1")
    assert await answered(siptrio, "127.0.0.2")
    assert (await register(legit, "200")).status == 200
    await legit.aclose()


# --- svwar --------------------------------------------------------------------------------------


def svwar_probe(method: str, ext: str, local_port: int) -> bytes:
    """The request svwar sends for one extension (sipvicious 0.3.3 makeRequest)."""
    uri = f"sip:{DOMAIN}" if method == "REGISTER" else f"sip:{ext}@{DOMAIN}"
    tag = (ext.encode() + b"\x01" + uuid.uuid4().hex[:8].encode()).hex()
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:{local_port};branch={new_branch()};rport",
        "Max-Forwards: 70",
        f'To: "{ext}"<sip:{ext}@{DOMAIN}>',
        f'From: "{ext}"<sip:{ext}@{DOMAIN}>;tag={tag}',
        "User-Agent: friendly-scanner",
        f"Call-ID: {uuid.uuid4().int & 0xFFFFFFFF}",
        f"Contact: sip:{ext}@{DOMAIN}",
        f"CSeq: 1 {method}",
        "Accept: application/sdp",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


ECHOED = {"via", "from", "to", "call-id", "cseq"}  # copied from the request (RFC 3261 8.2.6.2)


def shape(response: Response) -> tuple[object, ...]:
    """Everything in an answer that is not copied from the probe or fresh per answer."""
    headers = []
    for h in response.headers:
        value = "" if h.name in ECHOED else h.value.decode()
        headers.append((h.name, re.sub(r'nonce="[^"]*"', 'nonce="N"', value)))
    return (response.status, response.reason, tuple(headers), response.body)


@pytest.mark.parametrize("method", ["REGISTER", "INVITE", "OPTIONS"])
async def test_svwar_cannot_tell_users_from_unknown_extensions(
    siptrio: Siptrio, tmp_path: Path, method: str
) -> None:
    assert SVWAR is not None
    # one of the existing users is even registered right now
    legit = await SipClient.connect("udp", "127.0.0.1", siptrio.port, local_host="127.0.0.2")
    assert (await register(legit, "200")).status == 200
    existing = list(USERS)
    extensions = wordlist(tmp_path, "extensions.txt", existing + UNKNOWN)
    for force in ([], ["--force"]):
        out = await run_tool(
            [
                SVWAR,
                *("-d", str(extensions), "-m", method),
                *("-p", str(siptrio.port), "-P", str(free_udp_port())),
                *("-x", "127.0.0.1", "--domain", DOMAIN, "--maximumtime", "2"),
                *force,
                "127.0.0.1",
            ]
        )
        assert "found nothing" in out, out
        assert not re.search(r"extension '.*' (exists|probably exists)", out), out
        assert table(out) == [], out

    # the same probes by hand: every extension gets the very same answer
    probe = await SipClient.connect("udp", "127.0.0.1", siptrio.port)
    shapes = {}
    for ext in existing + UNKNOWN:
        await probe.send(svwar_probe(method, ext, probe.local[1]))
        while True:
            msg = await probe.receive(2)
            if isinstance(msg, Response) and msg.status >= 200:
                break
        shapes[ext] = shape(msg)
        if method == "INVITE":  # the ACK for the non-2xx answer ends its retransmissions
            await probe.send(invite_ack(msg))
    first = shapes[existing[0]]
    assert first[0] in (401, 407)  # challenged before anything is looked up
    assert all(s == first for s in shapes.values()), shapes
    await probe.aclose()
    await legit.aclose()


def invite_ack(response: Response) -> bytes:
    """RFC 3261 17.1.1.3: the ACK for a non-2xx final answer, built from that answer."""
    request_uri = f"sip:{response.to.uri.user}@{DOMAIN}"  # type: ignore[union-attr]
    lines = [f"ACK {request_uri} SIP/2.0"]
    for h in response.headers:
        if h.name in ("via", "from", "to", "call-id"):
            lines.append(h.raw.decode())
    lines += [f"CSeq: {response.cseq.number} ACK", "Max-Forwards: 70", "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
