"""Where sans-IO core tests say a message came from: no sockets, just Peer values."""

from __future__ import annotations

from siptrio.core.types import Peer, Transport

UDP = Peer(
    transport=Transport.UDP, host="127.0.0.1", port=5070, local_host="127.0.0.1", local_port=5060
)
UDP6 = Peer(transport=Transport.UDP, host="::1", port=5070, local_host="::1", local_port=5060)
TCP = Peer(
    transport=Transport.TCP,
    host="127.0.0.1",
    port=40000,
    local_host="127.0.0.1",
    local_port=5060,
    flow_id="tcp-x-1",
)
NOW = 1_000_000.0  # a clock reading far from zero, as a real one is
SECRET = b"a test secret, not random"  # what the shell gives the core (os.urandom)
