"""siptrio and Kamailio's auth_ephemeral judge the same credentials alike.

A Kamailio (Debian's ``kamailio`` and ``kamailio-autheph-modules``) is started on
127.0.0.1 with ``auth_ephemeral`` and the same two secrets as a siptrio; both are
sent the same REGISTERs (digest MD5, over UDP) carrying:

* a credential issued by ``siptrio credentials`` (siptrio's own computation),
* one computed by openssl as auth_ephemeral's documentation says, under the second
  (still listed) secret,
* one under a retired secret,
* one whose expiry has passed,
* one for another user than the address it registers.

Kamailio's verdict is its own: ``autheph_www`` (the module's HMAC, expiry and digest
check) and ``autheph_check_to``; its script only turns the module's return codes
into answers (401 challenge, 403 for expired and for someone else's address, 200).
Both formats and two hashes: ``<expiry>:<user>`` with HMAC-SHA1 (the module's
defaults) and ``<user>:<expiry>`` with HMAC-SHA256.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from support.client import SipClient
from support.digest import authorization, challenges
from support.ephemeral import RETIRED, SECOND, SECRET, Credential, credential
from support.ports import free_udp_port
from support.server import running_server

from siptrio.sip.message import Response

KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"
MODULES = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")
REALM = "example.com"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (Path(KAMAILIO).exists() and (MODULES / "auth_ephemeral.so").exists()),
        reason="apt-get install -y kamailio kamailio-autheph-modules",
    ),
]

CONFIG = """#!KAMAILIO
debug=2
log_stderror=yes
children=1
disable_tcp=yes
listen=udp:127.0.0.1:{port}
mpath="{modules}"

loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "auth.so"
loadmodule "auth_ephemeral.so"

modparam("auth_ephemeral", "secret", "{retired_slot}")
modparam("auth_ephemeral", "secret", "{second}")
modparam("auth_ephemeral", "secret", "{first}")
modparam("auth_ephemeral", "username_format", {username_format})
modparam("auth_ephemeral", "sha_algorithm", {sha_algorithm})

request_route {{
    if ($rm != "REGISTER") {{
        sl_send_reply("405", "Method Not Allowed");
        exit;
    }}
    autheph_www("{realm}");
    $var(rc) = $rc;
    xlog("L_INFO", "autheph_www: $var(rc) for $aU\\n");
    if ($var(rc) == -7) {{
        sl_send_reply("403", "Forbidden: credential expired");
        exit;
    }}
    if ($var(rc) < 0) {{
        auth_challenge("{realm}", "1");
        exit;
    }}
    if (!autheph_check_to()) {{
        sl_send_reply("403", "Forbidden: not your address");
        exit;
    }}
    sl_send_reply("200", "OK");
}}
"""


@asynccontextmanager
async def kamailio(
    tmp: Path, *, username_format: int, sha_algorithm: int
) -> AsyncIterator[tuple[str, int]]:
    """Kamailio on 127.0.0.1:<free port>, foreground, until the block ends."""
    port = free_udp_port()
    cfg = tmp / "kamailio.cfg"
    cfg.write_text(
        CONFIG.format(
            port=port,
            modules=MODULES,
            # a third listed secret that signs nothing here: RETIRED stays unlisted
            retired_slot="a-listed-but-unused-secret-000",
            second=SECOND,
            first=SECRET,
            username_format=username_format,
            sha_algorithm=sha_algorithm,
            realm=REALM,
        )
    )
    (tmp / "run").mkdir()
    log = (tmp / "kamailio.log").open("wb")
    check = subprocess.run([KAMAILIO, "-c", "-f", str(cfg)], capture_output=True, timeout=30)
    assert check.returncode == 0, check.stderr.decode(errors="replace")[-3000:]
    proc = subprocess.Popen(
        [KAMAILIO, "-f", str(cfg), "-DD", "-E", "-Y", str(tmp / "run"), "-w", str(tmp)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def first_answer(c: SipClient, user: str, timeout: float = 15.0) -> Response:
    """The answer to an unauthenticated REGISTER, retried until the server is up."""
    with trio.fail_after(timeout):
        while True:
            try:
                return await c.request(c.register(user), timeout=0.5)
            except (trio.TooSlowError, OSError):  # not listening yet
                await trio.sleep(0.2)


async def register(addr: tuple[str, int], user: str, cred: Credential) -> tuple[int, str]:
    """Challenged, then answered with the credential (MD5, qop=auth): the final answer."""
    c = await SipClient.connect("udp", *addr)
    try:
        first = await first_answer(c, user)
        assert first.status == 401, (first.status, first.reason)
        ch = challenges(first.values("www-authenticate"))["MD5"]
        auth = authorization(
            ch, method="REGISTER", uri=f"sip:{REALM}", user=cred.username, password=cred.password
        )
        final = await c.request(c.register(user, headers=(("Authorization", auth),)))
        return final.status, final.reason
    finally:
        await c.aclose()


def issued_by_siptrio(tmp: Path, user: str, hash: str, fmt: str) -> Credential:
    config = tmp / "siptrio.ini"
    config.write_text(
        f"[sip]\ndomains = {REALM}\n[auth]\nephemeral_secrets = {SECRET}, {SECOND}\n"
        f"ephemeral_hash = {hash}\nephemeral_username_format = {fmt}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "siptrio", "credentials", user, "--ttl", "600", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    body = json.loads(done.stdout)
    return Credential(body["username"], body["password"], body["expires"])


@pytest.mark.parametrize(
    ("hash", "fmt", "sha_algorithm", "username_format"),
    [("sha1", "expiry:user", 0, 1), ("sha256", "user:expiry", 1, 0)],
    ids=["sha1-expiry-user", "sha256-user-expiry"],
)
async def test_same_verdicts_as_kamailio(
    tmp_path: Path, hash: str, fmt: str, sha_algorithm: int, username_format: int
) -> None:
    user_first = fmt == "user:expiry"
    now = int(time.time())
    cases = {
        "issued by siptrio": ("alice", issued_by_siptrio(tmp_path, "alice", hash, fmt)),
        "second secret": ("bob", credential("bob", secret=SECOND, hash=hash, user_first=user_first)),
        "retired secret": ("carol", credential("carol", secret=RETIRED, hash=hash, user_first=user_first)),
        "expired": ("dave", credential("dave", expires=now - 100, hash=hash, user_first=user_first)),
        "someone else": ("erin", credential("frank", hash=hash, user_first=user_first)),
    }  # fmt: skip
    expected = {
        "issued by siptrio": 200,
        "second secret": 200,
        "retired secret": 401,
        "expired": 403,
        "someone else": 403,
    }
    settings = {
        "sip.domains": REALM,
        "auth.enable": "true",
        "auth.ephemeral_secrets": f"{SECRET}, {SECOND}",
        "auth.ephemeral_hash": hash,
        "auth.ephemeral_username_format": fmt,
    }
    siptrio: dict[str, tuple[int, str]] = {}
    kam: dict[str, tuple[int, str]] = {}
    async with running_server(tmp_path, settings) as rs:
        for name, (aor_user, cred) in cases.items():
            siptrio[name] = await register(rs.addr("udp"), aor_user, cred)
    async with kamailio(
        tmp_path, username_format=username_format, sha_algorithm=sha_algorithm
    ) as addr:
        for name, (aor_user, cred) in cases.items():
            kam[name] = await register(addr, aor_user, cred)
    log = (tmp_path / "kamailio.log").read_text(errors="replace")
    assert {k: v[0] for k, v in kam.items()} == expected, f"{kam}\n{log[-4000:]}"
    assert {k: v[0] for k, v in siptrio.items()} == expected, siptrio
    assert siptrio["expired"][1] == kam["expired"][1] == "Forbidden: credential expired"
    # Kamailio's own verdicts, from its log: expired (-7), wrong password (-2)
    assert "autheph_www: -7 for " + cases["expired"][1].username in log, log[-4000:]
    assert "autheph_www: -2 for " + cases["retired secret"][1].username in log, log[-4000:]
