"""SIP over WebSocket (RFC 7118): WS and WSS listeners, handshake policy, framing.

Who may upgrade is decided here: connection caps (503), Origin (403), the ``sip``
subprotocol (400), each refusal with a body saying why. Behind a reverse proxy listed
in ``trusted_proxies`` the client is the one the proxy names, in a PROXY protocol
header (v1 or v2) or in ``X-Forwarded-For``/``Forwarded`` on the upgrade request;
caps, bans, rate limits, ``received`` and the flow's address are the client's.

The libraries do the protocol: Trio's ``serve_listeners`` accepts, a
``trio.SocketStream`` (under a ``trio.SSLStream`` for WSS) carries the bytes, h11
parses and judges the upgrade request and writes any refusal, wsproto computes the
101's accept token and its frame ``Connection`` reads and writes the frames. What
siptrio adds is the shape of a connection, which trio-websocket's own server (a
reader task, a handler task, a message channel and a send lock per connection) made
cost four times Kamailio's CPU per set-up: one task per connection reads the PROXY
header (``handshake.py``), the upgrade and then frames, and hands one SIP message
per WebSocket message to the intake. A message out is written at once when the
socket takes it (a short-lived flusher task is started only when it does not), and
one task per listener pings every flow and cuts handshakes and flows whose time is
up (``Heartbeat``). trio-websocket's clients remain what the tests speak to us with.

The modules, in the order a connection meets them:

- ``options``: the listener's settings and the connection caps shared by listeners;
- ``server``: accept, TLS, PROXY header, the upgrade, the policy, the 101 or refusal;
- ``upgrade``: the opening handshake, sans-IO: the request read, the 101 or refusal written;
- ``flow``: an open WebSocket flow, its writes and its one reader task;
- ``heartbeat``: keep-alives and deadlines for every flow of a listener, in one task.
"""

from __future__ import annotations

from .flow import WsFlow
from .options import WsOptions, WsPolicy, origin_allowed
from .server import serve_ws

__all__ = ["WsFlow", "WsOptions", "WsPolicy", "origin_allowed", "serve_ws"]
