"""SIPp registers over UDP with a time-limited credential computed outside siptrio.

The credential is auth_ephemeral's documented scheme computed by ``openssl``
(support/ephemeral.py): username ``<expiry>:<user>``, password
``base64(hmac-sha1(secret, username))``. SIPp (examples/sipp/register-auth.xml)
sends REGISTER, takes the 401 and answers it with ``[authentication]`` (``-au``,
``-ap``). SIPp 3.6.1 answers only the first challenge and only MD5, so the server
offers MD5 alone (``[auth] algorithms = MD5``).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from support.ephemeral import RETIRED, SECOND, SECRET, Credential, credential
from support.ports import free_port
from support.server import ServerProcess, sipp_target

from siptrio.store.sqlite import SqliteStore

REPO = Path(__file__).resolve().parents[2]
SCENARIO = REPO / "examples" / "sipp" / "register-auth.xml"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (sip-tester) not installed"),
]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    settings = (
        "auth.enable=true",
        f"auth.ephemeral_secrets={SECRET},{SECOND}",
        "auth.algorithms=MD5",
    )
    with sipp_target(tmp_path, *settings) as proc:
        yield proc


async def sipp_register(
    server: ServerProcess, tmp_path: Path, user: str, cred: Credential
) -> tuple[int, str]:
    host, port = server.listeners["udp"]
    out = tmp_path / f"sipp-{user}"
    out.mkdir()
    cmd = [
        "sipp",
        f"{host}:{port}",
        *("-sf", str(SCENARIO)),
        *("-s", user),
        *("-au", cred.username),
        *("-ap", cred.password),
        *("-i", "127.0.0.1"),
        *("-p", str(free_port())),
        *("-t", "u1"),
        *("-m", "1"),
        *("-recv_timeout", "5000"),
        *("-timeout", "30s"),
        "-timeout_error",
        "-nostdin",
        "-trace_err",
        *("-error_file", str(out / "errors.log")),
    ]
    with trio.fail_after(40):
        done = await trio.run_process(
            cmd, cwd=out, stdin=subprocess.DEVNULL, capture_stdout=True, capture_stderr=True,
            check=False,
        )  # fmt: skip
    errors = (
        (out / "errors.log").read_text(errors="replace") if (out / "errors.log").exists() else ""
    )
    return done.returncode, errors + done.stdout.decode(errors="replace")[-2000:]


async def test_independent_credential_registers_sipp(server: ServerProcess, tmp_path: Path) -> None:
    rc, report = await sipp_register(server, tmp_path, "alice", credential("alice"))
    assert rc == 0, report
    # the second listed secret verifies too; a retired one does not
    rc, report = await sipp_register(server, tmp_path, "bob", credential("bob", secret=SECOND))
    assert rc == 0, report
    rc, report = await sipp_register(server, tmp_path, "eve", credential("eve", secret=RETIRED))
    assert rc == 1 and "SIP/2.0 401 Unauthorized" in report, report
    assert server.stop() == 0, server.output()
    with SqliteStore(tmp_path / "location.sqlite") as store:
        aors = {b.aor for b in store.all()}
    assert aors == {"sip:alice@127.0.0.1", "sip:bob@127.0.0.1"}
