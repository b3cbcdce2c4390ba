"""``siptrio users`` with ``[registrar] backend = redis``: one user list for every node."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trio
from conftest import Redis
from support.client import SipClient
from support.digest import authorization, challenges
from support.server import running_server


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
