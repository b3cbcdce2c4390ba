"""Two siptrio nodes sharing location through Redis, reaching each other's flows."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import trio
from cluster_support import Redis, call
from support.client import SipClient
from support.server import ServerProcess, running_server
from support.ua import UA

from siptrio.app import cluster

BASE = [
    "--set", "sip.listen_addr=127.0.0.1",
    "--set", "sip.udp_port=0",
    "--set", "sip.tcp_port=0",
    "--set", "sip.domains=example.com",
    "--set", "sip_websocket.listen_port=0",
    "--set", "admin.enable=false",
    "--set", "control.enable=false",
    "--set", "registrar.backend=redis",
    "--set", "cluster.heartbeat_ttl=2",
]  # fmt: skip


def node(tmp_path: Path, redis: Redis, name: str) -> ServerProcess:
    return ServerProcess(
        [
            "serve",
            *BASE,
            "--set",
            f"registrar.redis_url={redis.url}",
            "--set",
            f"cluster.node_id={name}",
        ],
        log_path=tmp_path / f"{name}.log",
    )


async def test_udp_caller_on_a_reaches_ws_callee_on_b_and_b_dying_gives_480(
    tmp_path: Path, redis_server: Redis, nursery: trio.Nursery
) -> None:
    a = node(tmp_path, redis_server, "node-a")
    b = node(tmp_path, redis_server, "node-b")
    try:
        a_addr = await trio.to_thread.run_sync(a.wait_ready, 3)
        b_addr = await trio.to_thread.run_sync(b.wait_ready, 3)
        browser = UA(await SipClient.connect("ws", *b_addr["ws"], nursery=nursery), "bob")
        await browser.register()
        phone = UA(await SipClient.connect("udp", *a_addr["udp"]), "alice")
        await phone.register()
        # node A learns bob's binding from Redis; give the feed a moment
        await trio.sleep(0.5)
        await call(phone, browser, callee_hangs_up=False)
        await call(phone, browser, callee_hangs_up=True)

        b.proc.send_signal(signal.SIGKILL)  # its flows die with it, unannounced
        await trio.to_thread.run_sync(b.proc.wait)
        start = trio.current_time()
        status = 0
        with trio.fail_after(10):
            while status != 480:
                # until A notices, its INVITE goes to B and meets silence (Timer B later)
                invite, _ = phone.invite("bob")
                await phone.client.send(invite)
                with trio.move_on_after(1):
                    r = await phone.expect_response("INVITE")
                    status = r.status
        assert trio.current_time() - start <= 2 + 2  # heartbeat TTL + the monitor's second
        # bob comes back on node A over UDP: reachable again
        bob_again = UA(await SipClient.connect("udp", *a_addr["udp"]), "bob")
        await bob_again.register()
        await call(phone, bob_again, callee_hangs_up=False)
    finally:
        a.stop()
        b.stop()
        assert "Traceback" not in a.output(), a.output()


async def test_a_node_that_joins_is_known_at_once_to_those_running(
    tmp_path: Path, redis_server: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nodes learn of a newcomer from its announcement, not at their next look.

    With the periodic look pushed out of reach, A can learn of B only from what B
    publishes when it joins. B reads the node list after A's heartbeat: it knows A.
    (``serve --workers`` depends on this: an answer to a request one worker sent may
    land on the other, which must know where to hand it.)
    """
    monkeypatch.setattr(cluster, "MONITOR_SECONDS", 3600.0)

    def settings(name: str) -> dict[str, str]:
        return {
            "registrar.backend": "redis",
            "registrar.redis_url": redis_server.url,
            "cluster.node_id": name,
        }

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with running_server(tmp_path / "a", settings("node-a")) as a:
        assert a.server.cluster is not None
        assert a.server.dispatcher.router.cluster_nodes == {}
        async with running_server(tmp_path / "b", settings("node-b")) as b:
            b_internal = b.server.dispatcher.router.internal
            a_internal = a.server.dispatcher.router.internal
            assert b_internal is not None and a_internal is not None
            assert b.server.dispatcher.router.cluster_nodes == {
                "node-a": (a_internal.host, a_internal.port)
            }
            with trio.fail_after(5):
                while "node-b" not in a.server.dispatcher.router.cluster_nodes:
                    await trio.sleep(0.01)
            assert a.server.dispatcher.router.cluster_nodes == {
                "node-b": (b_internal.host, b_internal.port)
            }
            # and A trusts B's internal address as it trusts any node's
            assert (b_internal.host, b_internal.port) in a.server.dispatcher.trusted
