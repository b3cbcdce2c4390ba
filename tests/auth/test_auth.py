"""Digest authentication on real sockets: the challenges SIP.js and JsSIP answer, and abuse."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from support.client import SipClient
from support.digest import authorization, challenges
from support.server import RunningServer, running_server
from support.ua import SDP, UA

from siptrio.sip.digest import ha1
from siptrio.store.sqlite import SqliteStore

USERS = {"alice": "wonderland", "bob": "builder"}


def add_users(db: Path, realm: str = "example.com") -> None:
    with SqliteStore(str(db)) as store:
        for user, password in USERS.items():
            store.set_user(
                user,
                realm,
                ha1(user, realm, password, "MD5"),
                ha1(user, realm, password, "SHA-256"),
                0.0,
            )


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    add_users(tmp_path / "location.sqlite")
    overrides = {"sip.domains": "example.com", "auth.enable": "true", "security.ban_after": "5"}
    async with running_server(tmp_path, overrides) as rs:
        yield rs


async def register(
    c: SipClient, user: str, password: str, *, algorithm: str = "MD5", aor_user: str | None = None
):  # type: ignore[no-untyped-def]
    first = await c.request(c.register(aor_user or user))
    assert first.status == 401
    ch = challenges(first.values("www-authenticate"))
    auth = authorization(
        ch[algorithm],
        method="REGISTER",
        uri="sip:example.com",
        user=user,
        password=password,
        algorithm=algorithm,
    )
    return (
        await c.request(c.register(aor_user or user, headers=(("Authorization", auth),))),
        auth,
        ch,
    )


async def test_challenge_offers_sha256_then_md5_with_qop_auth(server: RunningServer) -> None:
    c = await SipClient.connect("udp", *server.addr("udp"))
    r = await c.request(c.register("alice"))
    assert r.status == 401
    values = r.values("www-authenticate")
    assert [v.split("algorithm=")[1].split(",")[0] for v in values] == ["SHA-256", "MD5"]
    assert all('realm="example.com"' in v and 'qop="auth"' in v for v in values)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
async def test_right_password_registers(
    server: RunningServer, transport: str, algorithm: str
) -> None:
    c = await SipClient.connect(transport, *server.addr(transport))
    r, _, _ = await register(c, "alice", "wonderland", algorithm=algorithm)
    assert r.status == 200 and len(r.values("contact")) == 1


async def test_wrong_password_and_unknown_user_look_the_same(server: RunningServer) -> None:
    c = await SipClient.connect("udp", *server.addr("udp"))
    wrong, _, _ = await register(c, "alice", "nope")
    unknown, _, _ = await register(c, "mallory", "nope")
    assert wrong.status == unknown.status == 401
    assert wrong.reason == unknown.reason
    strip = lambda r: [v.split("nonce=")[0] for v in r.values("www-authenticate")]  # noqa: E731
    assert strip(wrong) == strip(unknown)
    assert [h.name for h in wrong.headers] == [h.name for h in unknown.headers]


async def test_replayed_authorization_is_refused(server: RunningServer) -> None:
    c = await SipClient.connect("udp", *server.addr("udp"))
    ok, auth, _ = await register(c, "alice", "wonderland")
    assert ok.status == 200
    again = await c.request(c.register("alice", headers=(("Authorization", auth),)))  # same nc
    assert again.status == 401


async def test_stale_nonce_gets_stale_true_and_the_retry_succeeds(tmp_path: Path) -> None:
    add_users(tmp_path / "location.sqlite")
    overrides = {"sip.domains": "example.com", "auth.enable": "true", "auth.nonce_ttl": "0.5"}
    async with running_server(tmp_path, overrides) as server:
        c = await SipClient.connect("udp", *server.addr("udp"))
        first = await c.request(c.register("alice"))
        ch = challenges(first.values("www-authenticate"))["MD5"]
        await trio.sleep(1.0)
        auth = authorization(
            ch, method="REGISTER", uri="sip:example.com", user="alice", password="wonderland"
        )
        stale = await c.request(c.register("alice", headers=(("Authorization", auth),)))
        assert stale.status == 401 and all(
            "stale=true" in v for v in stale.values("www-authenticate")
        )
        fresh = challenges(stale.values("www-authenticate"))["MD5"]
        auth = authorization(
            fresh, method="REGISTER", uri="sip:example.com", user="alice", password="wonderland"
        )
        assert (
            await c.request(c.register("alice", headers=(("Authorization", auth),)))
        ).status == 200


async def test_someone_elses_aor_is_forbidden(server: RunningServer) -> None:
    c = await SipClient.connect("udp", *server.addr("udp"))
    r, _, _ = await register(c, "bob", "builder", aor_user="alice")
    assert r.status == 403 and "bob" in r.reason


async def test_calls_from_our_domain_need_407_and_work_with_credentials(
    server: RunningServer, nursery: trio.Nursery
) -> None:
    callee_c = await SipClient.connect("tcp", *server.addr("tcp"))
    ok, _, _ = await register(callee_c, "bob", "builder")
    assert ok.status == 200
    callee = UA(callee_c, "bob")
    caller = UA(await SipClient.connect("udp", *server.addr("udp")), "alice")
    invite, _ = caller.invite("bob")
    await caller.client.send(invite)
    r = await caller.expect_response("INVITE")
    assert r.status == 407 and r.values("proxy-authenticate")
    await caller.client.send(
        caller.ack(caller.uac_dialog(invite, r)) if False else b""
    )  # no ACK needed for the test UA
    ch = challenges(r.values("proxy-authenticate"))["MD5"]
    auth = authorization(
        ch, method="INVITE", uri="sip:bob@example.com", user="alice", password="wonderland"
    )
    invite2, _ = caller.invite("bob")
    invite2 = invite2.replace(
        b"Max-Forwards: 70\r\n", f"Max-Forwards: 70\r\nProxy-Authorization: {auth}\r\n".encode()
    )
    await caller.client.send(invite2)
    got = await callee.expect_request("INVITE")
    await callee.reply(got, 200, "OK", body=SDP)
    assert (await caller.expect_response("INVITE")).status == 200
    # sending as someone else is refused even with valid credentials
    invite3, _ = caller.invite("bob")
    invite3 = invite3.replace(b"From: <sip:alice@example.com>", b"From: <sip:bob@example.com>")
    ch = challenges(r.values("proxy-authenticate"))["MD5"]
    auth = authorization(
        ch, method="INVITE", uri="sip:bob@example.com", user="alice", password="wonderland", nc=2
    )
    invite3 = invite3.replace(
        b"Max-Forwards: 70\r\n", f"Max-Forwards: 70\r\nProxy-Authorization: {auth}\r\n".encode()
    )
    await caller.client.send(invite3)
    assert (await caller.expect_response("INVITE")).status == 403


async def test_guessing_address_is_banned_others_are_not(server: RunningServer) -> None:
    attacker = await SipClient.connect("udp", *server.addr("udp"))
    for _ in range(5):
        r, _, _ = await register(attacker, "alice", "guess")
        assert r.status == 401
    await attacker.send(attacker.register("alice"))
    with pytest.raises(trio.TooSlowError):  # banned: dropped without an answer
        await attacker.receive(0.5)
    assert server.counters()["dropped.banned"] >= 1
    assert server.server.core_stats["auth_bans"] == 1
    # a bystander from another loopback address is still served
    bystander = await SipClient.connect("udp", *server.addr("udp"), local_host="127.0.0.2")
    assert (await bystander.request(bystander.register("bob"))).status == 401


async def test_simulated_calls_need_no_credentials(
    server: RunningServer, nursery: trio.Nursery
) -> None:
    c = await SipClient.connect("udp", *server.addr("udp"))
    ok, _, _ = await register(c, "bob", "builder")
    assert ok.status == 200
    callee = UA(c, "bob")
    call = await server.server.simulator.start_call(to="bob", duration=0.3, answer_timeout=5)
    invite = await callee.expect_request("INVITE")
    await callee.reply(invite, 200, "OK", body=SDP)
    await callee.expect_request("ACK")
    bye = await callee.expect_request("BYE")
    await callee.reply(bye, 200, "OK")
    with trio.fail_after(3):
        await call.done.wait()
    assert call.answered


def test_users_command_adds_lists_changes_and_removes(tmp_path: Path) -> None:
    config = tmp_path / "c.ini"
    config.write_text(
        f"[registrar]\ndatabase = {tmp_path / 'db.sqlite'}\n[auth]\nrealm = example.org\n"
    )

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "siptrio", "users", "-c", str(config), *args],
                              input=stdin, capture_output=True, text=True, timeout=30)  # fmt: skip

    assert run("add", "carol", "--password-stdin", stdin="s3cret\n").returncode == 0
    assert run("add", "carol", "--password-stdin", stdin="x\n").returncode == 1
    listed = run("list")
    assert listed.returncode == 0 and "carol\texample.org" in listed.stdout
    with SqliteStore(str(tmp_path / "db.sqlite")) as store:
        users = store.users("example.org")
    assert users["carol"]["MD5"] == ha1("carol", "example.org", "s3cret", "MD5")
    assert "s3cret" not in (tmp_path / "db.sqlite").read_bytes().decode("latin-1")
    assert run("passwd", "carol", "--password-stdin", stdin="other\n").returncode == 0
    assert run("remove", "carol").returncode == 0
    assert run("remove", "carol").returncode == 1


async def test_rate_limit_503_then_drop_others_unaffected(tmp_path: Path) -> None:
    overrides = {
        "security.rate_limit": "5",
        "security.rate_burst": "5",
        "security.rate_limit_exempt": "",
    }
    async with running_server(tmp_path, overrides) as server:
        flooder = await SipClient.connect("udp", *server.addr("udp"))
        for i in range(40):
            await flooder.send(
                flooder.build("OPTIONS", "sip:127.0.0.1", to="<sip:127.0.0.1>", cseq=i + 1)
            )
        answers = []
        with trio.move_on_after(1):
            while True:
                answers.append(await flooder.receive(1))
        statuses = [a.status for a in answers]  # type: ignore[union-attr]
        assert statuses.count(200) == 5 and statuses.count(503) == 1
        r503 = next(a for a in answers if a.status == 503)  # type: ignore[union-attr]
        assert r503.first("retry-after") == "1"
        assert server.counters()["dropped.rate_limited"] >= 30


async def test_silent_connection_closed_after_first_message_timeout(tmp_path: Path) -> None:
    async with running_server(tmp_path, {"security.first_message_timeout": "0.5"}) as server:
        silent = await SipClient.connect("tcp", *server.addr("tcp"))
        await silent.send(b"GET / HTTP/1.0\r\n")  # never a complete SIP message
        await silent.expect_closed(timeout=3)
        talker = await SipClient.connect("tcp", *server.addr("tcp"))
        assert (await talker.request(talker.register("dave"))).status == 200
        await trio.sleep(1)
        assert (
            await talker.request(talker.register("dave", contact="", expires=None))
        ).status == 200


async def test_tcp_connection_cap_per_address(tmp_path: Path) -> None:
    overrides = {
        "security.max_connections_per_ip": "3",
        "security.rate_limit_exempt": "192.0.2.0/24",  # loopback has no per-address cap
    }
    async with running_server(tmp_path, overrides) as server:
        conns = [await SipClient.connect("tcp", *server.addr("tcp")) for _ in range(3)]
        extra = await SipClient.connect("tcp", *server.addr("tcp"))
        await extra.expect_closed(timeout=3)
        assert server.server.stats["connections_refused.per_ip"] == 1
        assert (await conns[0].request(conns[0].register("erin"))).status == 200
