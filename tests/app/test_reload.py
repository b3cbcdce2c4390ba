"""Reload without restart: SIGHUP, ``siptrio reload`` and POST /reload, on running servers.

The process tests send real signals to ``python -m siptrio serve``: a reload applies
a new domain list and a new user while a WebSocket client stays registered and a
call goes on; a refused file leaves the old config working; SIGHUP never kills.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trio
from support.client import SipClient
from support.digest import authorization, challenges
from support.server import ServerProcess
from support.ua import SDP, UA

from siptrio.app.certs import write_dev_certs
from siptrio.app.config import load_config
from siptrio.app.reload import plan_reload
from siptrio.app.server import Server
from siptrio.sip.digest import ha1
from siptrio.store.sqlite import SqliteStore

PASSWORDS = {"bob": "builder", "carol": "singer", "dave": "diver"}
ADMIN = re.compile(r"admin API on http://127\.0\.0\.1:(\d+)")


def config_text(tmp_path: Path, *, domains: str, udp_port: int = 0, extra: str = "") -> str:
    return (
        f"[sip]\nlisten_addr = 127.0.0.1\nudp_port = {udp_port}\ntcp_port = 0\n"
        f"domains = {domains}\n"
        "[sip_websocket]\nlisten_port = 0\n"
        "[auth]\nenable = true\nrealm = example.com\nalgorithms = MD5\n"
        "[admin]\nlisten_port = 0\n"
        f"[control]\nsocket = {tmp_path / 'run' / 'control.sock'}\n"
        f"[registrar]\ndatabase = {tmp_path / 'db.sqlite'}\n" + extra
    )


def add_user(db: Path, user: str) -> None:
    with SqliteStore(str(db)) as store:
        password = PASSWORDS[user]
        store.set_user(
            user,
            "example.com",
            ha1(user, "example.com", password, "MD5"),
            ha1(user, "example.com", password, "SHA-256"),
            time.time(),
        )


async def register(c: SipClient, user: str, domain: str = "example.com") -> int:
    """Register with digest authentication; the final status."""
    contact = (
        f"<sip:{user}@{c.local_hostport};transport={'ws' if c.transport == 'ws' else c.transport}>"
    )
    first = await c.request(c.register(user, domain=domain, contact=contact))
    if first.status != 401:
        return first.status
    auth = authorization(
        challenges(first.values("www-authenticate"))["MD5"],
        method="REGISTER",
        uri=f"sip:{domain}",
        user=user,
        password=PASSWORDS[user],
    )
    again = await c.request(
        c.register(user, domain=domain, contact=contact, headers=(("Authorization", auth),))
    )
    return again.status


async def wait_for(proc: ServerProcess, text: str, after: int, timeout: float = 10.0) -> str:
    """The log once ``text`` appears past offset ``after``."""
    with trio.fail_after(timeout):
        while True:
            out = proc.output()
            if text in out[after:]:
                return out[after:]
            assert proc.proc.poll() is None, f"server exited {proc.proc.returncode}:\n{out}"
            await trio.sleep(0.05)


async def answer_and_hang_on(bob: UA, events: list[str]) -> None:
    invite = await bob.expect_request("INVITE")
    await bob.reply(invite, 180, "Ringing")
    await bob.reply(invite, 200, "OK", body=SDP)
    await bob.expect_request("ACK")
    events.append("answered")
    bye = await bob.expect_request("BYE", timeout=20)  # over the same WebSocket
    await bob.reply(bye, 200, "OK")
    events.append("bye")


async def test_sighup_applies_domains_and_users_and_keeps_clients_and_calls(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    config = tmp_path / "siptrio.ini"
    config.write_text(config_text(tmp_path, domains="example.com"))
    for user in ("bob", "carol"):
        add_user(tmp_path / "db.sqlite", user)
    proc = ServerProcess(["serve", "--config", str(config)], log_path=tmp_path / "server.log")
    try:
        listeners = await trio.to_thread.run_sync(proc.wait_ready, 3)
        port = ADMIN.search(proc.output())
        assert port is not None
        base = f"http://127.0.0.1:{port.group(1)}"
        ws = await SipClient.connect("ws", *listeners["ws"], nursery=nursery)
        assert await register(ws, "bob") == 200
        bob = UA(ws, "bob")
        events: list[str] = []
        nursery.start_soon(answer_and_hang_on, bob, events)
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            r = await http.post("/simulateCall", json={"to": "bob", "duration": 3})
            assert r.status_code == 201, r.text
            call_url = r.headers["location"]
            with trio.fail_after(5):
                while not events:
                    await trio.sleep(0.02)
            # a domain not served yet
            udp = await SipClient.connect("udp", *listeners["udp"])
            assert await register(udp, "carol", "example.org") == 403

            # the new file: another domain, a port that needs a restart; a new user
            config.write_text(
                config_text(tmp_path, domains="example.com, example.org", udp_port=5999)
            )
            add_user(tmp_path / "db.sqlite", "dave")
            mark = len(proc.output())
            proc.proc.send_signal(signal.SIGHUP)
            log = await wait_for(proc, "needs a restart", mark)
            assert "[sip] domains: example.com -> example.com, example.org" in log
            assert "[sip] udp_port: 0 -> 5999 needs a restart" in log
            assert await register(udp, "carol", "example.org") == 200
            dave = await SipClient.connect("udp", *listeners["udp"])
            assert await register(dave, "dave") == 200

            # the call and the WebSocket client went on through it
            with trio.fail_after(15):
                while "bye" not in events:
                    await trio.sleep(0.05)
            call = (await http.get(call_url)).json()
            assert call["state"] == "ended" and call["answered"] and call["ended_by"] == "simulator"
            clients = (await http.get("/listClients")).json()
            assert {(c["aor"], c["transport"]) for c in clients} >= {
                ("sip:bob@example.com", "ws"),
                ("sip:carol@example.org", "udp"),
            }

            # a file that fails check-config is refused: the old config stays
            bad = config_text(tmp_path, domains="example.com").replace(
                "[registrar]\n", "[registrar]\nmin_expires = soon\n"
            )
            config.write_text(bad)
            line = bad.splitlines().index("min_expires = soon") + 1
            mark = len(proc.output())
            proc.proc.send_signal(signal.SIGHUP)
            log = await wait_for(proc, "refused", mark)
            assert f'{config}:{line}: [registrar] min_expires = "soon"' in log, log
            assert "the running config stays" in log
            assert await register(udp, "carol", "example.org") == 200  # example.org still served
            r = await http.post("/reload")
            assert r.status_code == 422 and r.json()["field"] == "config"
            assert "min_expires" in r.json()["error"]
            await udp.aclose()
            await dave.aclose()
        assert proc.proc.poll() is None  # SIGHUP never killed it
    finally:
        status = proc.stop(signal.SIGTERM)
    assert status == 0, proc.output()
    assert not (tmp_path / "run" / "control.sock").exists()
    assert "Traceback" not in proc.output()


def test_siptrio_reload_over_the_control_socket(tmp_path: Path) -> None:
    config = tmp_path / "siptrio.ini"
    config.write_text(config_text(tmp_path, domains="example.com"))
    proc = ServerProcess(["serve", "--config", str(config)], log_path=tmp_path / "server.log")
    try:
        proc.wait_ready(3)
        reload = [sys.executable, "-m", "siptrio", "reload", "--config", str(config)]
        config.write_text(config_text(tmp_path, domains="example.com, example.net"))
        done = subprocess.run(reload, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert f"reloaded {config}: 1 change(s)" in done.stdout
        assert "[sip] domains: example.com -> example.com, example.net" in done.stdout
        as_json = subprocess.run([*reload, "--json"], capture_output=True, text=True, timeout=60)
        reply = json.loads(as_json.stdout)
        assert reply["ok"] and reply["changed"] == [] and reply["trigger"] == "control socket"
        config.write_text("[sip]\nudp_port = many\n")
        # (--config would find the file bad itself, exit 2: the socket names the server)
        by_socket = [*reload[:4], "--socket", str(tmp_path / "run" / "control.sock")]
        done = subprocess.run(by_socket, capture_output=True, text=True, timeout=60)
        assert done.returncode == 1
        assert f'{config}:2: [sip] udp_port = "many"' in done.stderr
        assert "the running config stays" in done.stderr
    finally:
        assert proc.stop() == 0


# --- in process: what a reload changes, and what it keeps --------------------------------


def test_plan_keeps_restart_keys_and_applies_live_ones(tmp_path: Path) -> None:
    path = tmp_path / "a.ini"
    path.write_text(
        "[sip]\nudp_port = 5060\ndomains = a.org\n[routes]\nus = prefix +1 -> sip:gw.a.org\n"
    )
    running = load_config(path, {"sip.tcp_port": "0"})
    path.write_text(
        "[sip]\nudp_port = 5070\ndomains = a.org, b.org\n[routes]\nus = prefix +1 -> sip:gw2.a.org\n"
        "[admin]\ntoken = s3cret\n[logging]\nformat = json\n"
    )
    new = load_config(path, dict(running.overrides))
    plan = plan_reload(running, new)
    live = {str(c) for c in plan.live}
    assert "[sip] domains: a.org -> a.org, b.org" in live
    assert "[logging] format: text -> json" in live
    assert any(c.startswith("[routes] rules:") for c in live)
    restart = {str(c) for c in plan.restart}
    assert restart == {"[sip] udp_port: 5060 -> 5070", "[admin] token changed"}
    assert plan.config.sip.udp_port == 5060 and plan.config.admin.token is None
    assert plan.config.sip.domains == ("a.org", "b.org") and plan.config.sip.tcp_port == 0


async def test_tls_certificates_are_read_again_for_new_handshakes(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    first = write_dev_certs(tmp_path / "one")
    second = write_dev_certs(tmp_path / "two")  # another CA
    path = tmp_path / "tls.ini"

    def write(certs_dir: str) -> None:
        path.write_text(
            "[sip]\nlisten_addr = 127.0.0.1\nudp_port = 0\ntcp_port = 0\n"
            f"[sip_tls]\nenable = true\nlisten_port = 0\ncert_file = {certs_dir}/server.pem\n"
            f"key_file = {certs_dir}/server.key\n"
            "[sip_websocket]\nenable = false\n[admin]\nenable = false\n[control]\nenable = false\n"
            f"[registrar]\ndatabase = {tmp_path / 'db.sqlite'}\n"
        )

    write(str(first.ca.parent))
    server = Server(load_config(path))
    listeners = await nursery.start(server.run)
    tls = next(li for li in listeners if li.transport.value == "tls")
    old = await SipClient.connect("tls", tls.host, tls.port, ca_file=str(first.ca))
    write(str(second.ca.parent))
    outcome = await server.reloader.reload("test")
    assert outcome.ok and outcome.certificates == (f"[sip_tls] {second.ca.parent}/server.pem",)
    # the open connection keeps going; a new handshake shows the new certificate
    reply = await old.request(old.build("OPTIONS", f"sip:{tls.host}", to=f"<sip:{tls.host}>"))
    assert reply.status == 200
    new = await SipClient.connect("tls", tls.host, tls.port, ca_file=str(second.ca))
    await new.aclose()
    with pytest.raises(trio.BrokenResourceError):
        await SipClient.connect("tls", tls.host, tls.port, ca_file=str(first.ca))
    # a certificate that does not load is refused, and the one in use stays
    (tmp_path / "three").mkdir()
    write(str(tmp_path / "three"))
    outcome = await server.reloader.reload("test")
    assert not outcome.ok and "three/server.pem" in (outcome.error or "")
    again = await SipClient.connect("tls", tls.host, tls.port, ca_file=str(second.ca))
    await again.aclose()
    await old.aclose()
    nursery.cancel_scope.cancel()


async def test_origins_rtpengine_and_rate_limits_change_live(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    from trio_websocket import ConnectionRejected

    path = tmp_path / "live.ini"

    def write(origins: str, engine: str, rate: str) -> None:
        path.write_text(
            "[sip]\nlisten_addr = 127.0.0.1\nudp_port = 0\ntcp_port = 0\n"
            f"[sip_websocket]\nlisten_port = 0\nallowed_origins = {origins}\n"
            "[admin]\nenable = false\n[control]\nenable = false\n"
            f"[media]\nrtpengine = {engine}\n[security]\nrate_limit = {rate}\n"
            f"[registrar]\ndatabase = {tmp_path / 'db.sqlite'}\n"
        )

    async def handshake(origin: str) -> bool:
        accepted = True
        try:
            async with trio.open_nursery() as n:
                c = await SipClient.connect("ws", *ws, nursery=n, origin=origin)
                await c.aclose()
        except* ConnectionRejected:
            accepted = False
        return accepted

    write("https://old.example.org", "udp:127.0.0.1:2300", "100")
    server = Server(load_config(path))
    listeners = await nursery.start(server.run)
    ws = next((li.host, li.port) for li in listeners if li.transport.value == "ws")
    assert await handshake("https://old.example.org")
    assert not await handshake("https://new.example.org")
    write("https://new.example.org", "udp:127.0.0.1:2301, udp:127.0.0.1:2302", "7")
    outcome = await server.reloader.reload("test")
    assert outcome.ok, outcome.error
    assert await handshake("https://new.example.org")
    assert not await handshake("https://old.example.org")
    assert server.media is not None
    assert server.media.engines == [("127.0.0.1", 2301), ("127.0.0.1", 2302)]
    assert server.dispatcher.admission.limiter.rate == 7
    # an IPv6 engine where the client has only an IPv4 socket: refused, all of it
    write("https://other.example.org", "udp:[::1]:2303", "9")
    outcome = await server.reloader.reload("test")
    assert not outcome.ok and "needs a restart" in (outcome.error or "")
    assert await handshake("https://new.example.org")
    assert server.media.engines == [("127.0.0.1", 2301), ("127.0.0.1", 2302)]
    nursery.cancel_scope.cancel()
