"""What each part of the app layer needs of the running server, as narrow protocols.

The server (server.py) composes everything; the admin API, the control socket, the
views and the cluster each see only the protocol below that names what they use, so
none of them imports the server and none reaches through it into the core. The
simulated client, which the others drive, declares its own (simcall.SimHost).
``Server`` satisfies all of them: mypy checks it (server.py, at the end).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ..core.dialogs import Dialogs
from ..core.events import Action
from ..core.location import Binding, Location
from ..core.metrics import CoreMetrics, Histogram
from ..core.overload import Overload
from ..core.types import Clock, Listener, Peer
from ..transport.hub import Flow
from .config import Config

if TYPE_CHECKING:
    import socket

    from ..core.routing import Router
    from ..transport.rtpengine import NgClient
    from .cdr import CallRecorder
    from .events import EventBus
    from .reload import Reloader
    from .simcall import Simulator

__all__ = [
    "AdminHost",
    "ClusterCore",
    "ClusterHost",
    "ControlHost",
    "OpsHost",
    "ServerView",
]

Tap = Callable[[str, bytes, Peer], None]


class ServerView(Protocol):
    """The live state the JSON views (views.py) show."""

    config: Config
    node: str
    started_at: float
    listeners: list[Listener]
    location: Location
    stats: Counter[str]  # the transports' counters

    @property
    def core_stats(self) -> Counter[str]: ...

    @property
    def core_metrics(self) -> CoreMetrics:
        """Answers by method and status, and the core's latency histograms."""
        ...

    @property
    def dialogs(self) -> Dialogs: ...

    @property
    def flows(self) -> Mapping[str, Flow]: ...

    def transaction_counts(self) -> tuple[int, int]:
        """(server transactions, client transactions) alive."""
        ...

    def state_sizes(self) -> dict[str, int]:
        """Entries in each table and heap that traffic fills, by name (views.state_view)."""
        ...

    def cluster_view(self) -> dict[str, Any] | None:
        """The other nodes' dialogs and flows as they last published them; None alone."""
        ...


class Operable(ServerView, Protocol):
    """What an operator can do through the admin API or the control socket."""

    realm: str
    simulator: Simulator
    events: EventBus
    reloader: Reloader  # SIGHUP's work, for POST /reload and the control socket's reload

    async def kick(self, aor: str, contact: str | None = None) -> list[Binding]: ...


class AdminHost(Operable, Protocol):
    media: NgClient | None
    cdrs: CallRecorder  # GET /cdrs
    store_commit_seconds: Histogram  # /metrics

    @property
    def overload(self) -> Overload: ...

    @property
    def udp_sockets(self) -> Mapping[tuple[str, int], socket.socket]: ...


class ControlHost(Operable, Protocol):
    def add_tap(self, tap: Tap) -> None: ...

    def remove_tap(self, tap: Tap) -> None: ...

    def watch_flows(self, observer: Callable[[str, Flow], None]) -> Callable[[], None]:
        """Call ``observer(kind, flow)`` as flows open and close; returns the undo."""
        ...


class OpsHost(AdminHost, ControlHost, Protocol):
    """The admin API and the control socket together (admin.start_ops)."""


class ClusterCore(Protocol):
    """The core, as the cluster feeds it other nodes' bindings."""

    trusted: set[tuple[str, int]]

    @property
    def router(self) -> Router: ...

    def apply_remote(
        self, upserts: list[Binding], deletes: list[tuple[str, str]], clock: Clock
    ) -> list[Action]: ...

    def node_gone(self, node: str, clock: Clock) -> list[Action]: ...


class ClusterHost(ServerView, Protocol):
    @property
    def dispatcher(self) -> ClusterCore: ...

    def clock(self) -> Clock: ...

    async def execute(self, actions: list[Action]) -> None: ...
