"""The Redis store from a user's side: one user list for every node, and Redis going away."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trio
from cluster_support import Redis, call
from support.client import SipClient
from support.digest import authorization, challenges
from support.server import running_server
from support.ua import UA


async def test_users_added_once_authenticate_on_every_node(
    tmp_path: Path, redis_server: Redis
) -> None:
    config = tmp_path / "c.ini"
    config.write_text(
        f"[registrar]\nbackend = redis\nredis_url = {redis_server.url}\n"
        "[auth]\nrealm = example.com\n"
    )

    def users(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "siptrio", "users", "-c", str(config), *args],
            input=stdin, capture_output=True, text=True, timeout=30,
        )  # fmt: skip

    assert users("add", "carol", "--password-stdin", stdin="s3cret\n").returncode == 0
    listed = users("list")
    assert listed.returncode == 0 and "carol\texample.com" in listed.stdout, listed

    overrides = {
        "sip.domains": "example.com",
        "auth.enable": "true",
        "registrar.backend": "redis",
        "registrar.redis_url": redis_server.url,
    }
    for name in ("node-a", "node-b"):
        async with running_server(tmp_path, {**overrides, "cluster.node_id": name}) as rs:
            c = await SipClient.connect("udp", *rs.addr("udp"))
            first = await c.request(c.register("carol"))
            assert first.status == 401
            auth = authorization(
                challenges(first.values("www-authenticate"))["SHA-256"],
                method="REGISTER", uri="sip:example.com", user="carol",
                password="s3cret", algorithm="SHA-256",
            )  # fmt: skip
            ok = await c.request(c.register("carol", headers=(("Authorization", auth),)))
            assert ok.status == 200, (name, ok.status, ok.reason)
            await c.aclose()

    # removed from the shell: a running node stops accepting carol within a second or so
    async with running_server(tmp_path, {**overrides, "cluster.node_id": "node-c"}) as rs:
        removed = await trio.to_thread.run_sync(lambda: users("remove", "carol"))
        assert removed.returncode == 0, removed
        c = await SipClient.connect("udp", *rs.addr("udp"))
        with trio.fail_after(5):
            while True:
                first = await c.request(c.register("carol"))
                auth = authorization(
                    challenges(first.values("www-authenticate"))["MD5"],
                    method="REGISTER", uri="sip:example.com", user="carol",
                    password="s3cret", algorithm="MD5",
                )  # fmt: skip
                again = await c.request(c.register("carol", headers=(("Authorization", auth),)))
                if again.status == 401:
                    break
                assert again.status == 200
                await trio.sleep(0.3)
        await c.aclose()


async def test_redis_gone_then_back(tmp_path: Path, redis_server: Redis) -> None:
    """While Redis is away REGISTERs get 500 and known bindings still take calls; when
    it is back, registrations work again and the other node catches up."""
    overrides = {
        "sip.domains": "example.com",
        "registrar.backend": "redis",
        "registrar.redis_url": redis_server.url,
        "cluster.heartbeat_ttl": "2",
    }
    async with (
        running_server(tmp_path / "a", {**overrides, "cluster.node_id": "a"}) as a,
        running_server(tmp_path / "b", {**overrides, "cluster.node_id": "b"}) as b,
    ):
        alice = UA(await SipClient.connect("udp", *a.addr("udp")), "alice")
        bob = UA(await SipClient.connect("udp", *a.addr("udp")), "bob")
        await alice.register()
        await bob.register()
        await trio.to_thread.run_sync(redis_server.stop)

        c = alice.client
        with trio.fail_after(15):
            refused = await c.request(c.register("alice", domain="example.com"))
        assert refused.status == 500, (refused.status, refused.reason)
        assert "store" in refused.reason and refused.values("retry-after") == ["5"]
        await call(alice, bob, callee_hangs_up=True)

        await trio.to_thread.run_sync(redis_server.start)  # empty: it kept nothing
        carol = UA(await SipClient.connect("udp", *a.addr("udp")), "carol")
        with trio.fail_after(15):
            while True:
                r = await carol.client.request(
                    carol.client.register("carol", domain="example.com", contact=carol.contact)
                )
                if r.status == 200:
                    break
                assert r.status == 500, (r.status, r.reason)
                await trio.sleep(0.5)
        # node B's feed broke with Redis; subscribed again, it learns carol
        with trio.fail_after(20):
            while not any(x.aor == "sip:carol@example.com" for x in b.server.location):
                await trio.sleep(0.2)
        dave = UA(await SipClient.connect("udp", *b.addr("udp")), "dave")
        await dave.register()
        await call(dave, carol, callee_hangs_up=False)
