"""What each worker of ``serve --workers N`` is told to bind, from the example cluster config."""

from __future__ import annotations

from pathlib import Path

import pytest

from siptrio.app.config import load_config
from siptrio.app.workers import worker_overrides

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "cluster"


def as_dict(args: list[str]) -> dict[str, str]:
    assert args[::2] == ["--set"] * (len(args) // 2)
    return dict(item.split("=", 1) for item in args[1::2])


def test_shared_ports_stay_and_per_worker_ones_step_up() -> None:
    config = load_config(EXAMPLES / "node-a.ini")
    w0, w1, w2 = (as_dict(a) for a in worker_overrides(config, 3, 4242))
    # fixed SIP and WebSocket ports are shared as they are: nothing to override
    assert not any(k.startswith(("sip.", "sip_websocket.")) for k in w0 | w1 | w2)
    assert [w["cluster.node_id"] for w in (w0, w1, w2)] == ["node-a-w0", "node-a-w1", "node-a-w2"]
    assert [w["admin.listen_port"] for w in (w0, w1, w2)] == ["8088", "8089", "8090"]
    assert [w["cluster.internal_port"] for w in (w0, w1, w2)] == ["5160", "5161", "5162"]
    assert "control.socket" not in w0
    assert w1["control.socket"] == "/tmp/siptrio-node-a.sock.w1"


def test_port_zero_is_chosen_once_for_all_workers() -> None:
    config = load_config(
        None,
        {
            "sip.listen_addr": "127.0.0.1",
            "sip.udp_port": "0",
            "sip.tcp_port": "0",
            "sip_websocket.listen_port": "0",
            "admin.listen_port": "0",
            "registrar.backend": "redis",
        },
    )
    w0, w1 = (as_dict(a) for a in worker_overrides(config, 2, 4242))
    for key in ("sip.udp_port", "sip.tcp_port", "sip_websocket.listen_port"):
        assert w0[key] == w1[key] and int(w0[key]) > 0
    assert w0["sip.udp_port"] == w0["sip.tcp_port"]
    assert "admin.listen_port" not in w0  # 0 stays 0: each worker takes its own free port
    assert w0["cluster.node_id"].endswith("-4242-w0")


@pytest.mark.parametrize("name", ["node-a.ini", "node-b.ini"])
def test_example_cluster_configs_load(name: str) -> None:
    config = load_config(EXAMPLES / name)
    assert config.registrar.backend == "redis"
    assert config.cluster.node_id == name.removesuffix(".ini")
