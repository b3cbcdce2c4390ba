"""Outbound TCP and TLS connections to allowed destinations, with certificate checks."""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path

import trio
import trustme
from support.client import SipClient
from support.server import running_server
from support.ua import UA

from siptrio.app.certs import write_dev_certs
from siptrio.sip import KeepAlive, Request, StreamFramer, parse_message_untrusted


async def serve_one_request(
    listener: trio.SocketListener,
    ctx: ssl.SSLContext | None,
    task_status=trio.TASK_STATUS_IGNORED,  # type: ignore[no-untyped-def]
) -> None:
    """A far-end UA on its own TCP/TLS port: answers the first request 200 on the same connection."""
    task_status.started()
    tcp = await listener.accept()
    stream: trio.abc.Stream = trio.SSLStream(tcp, ctx, server_side=True) if ctx else tcp
    framer = StreamFramer()
    while True:
        data = await stream.receive_some(65536)
        if not data:
            return
        framer.receive_data(data)
        event = framer.next_event()
        if isinstance(event, bytes):
            break
        assert event is None or isinstance(event, KeepAlive)
    req = parse_message_untrusted(event)
    assert isinstance(req, Request)
    ua = UA(SipClient("tcp"), "far")
    await stream.send_all(ua.response(req, 200, "OK"))
    await trio.sleep(0.5)
    await trio.aclose_forcefully(stream)


async def test_relay_over_new_tcp_and_verified_tls(tmp_path: Path, nursery: trio.Nursery) -> None:
    certs = write_dev_certs(tmp_path / "certs")
    overrides = {"proxy.allowed_destinations": "127.0.0.0/8", "sip_tls.ca_file": str(certs.ca)}
    async with running_server(tmp_path, overrides) as server:
        sender = UA(await SipClient.connect("udp", *server.addr("udp")), "alice")

        # plain TCP
        (tcp_l,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(serve_one_request, tcp_l, None)
        port = tcp_l.socket.getsockname()[1]
        msg = sender.client.build(
            "MESSAGE", f"sip:far@127.0.0.1:{port};transport=tcp", to="<sip:far@127.0.0.1>"
        )
        assert (await sender.client.request(msg)).status == 200

        # TLS with a certificate from the CA siptrio trusts: accepted
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(certs.cert, certs.key)
        (tls_l,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(serve_one_request, tls_l, ctx)
        port = tls_l.socket.getsockname()[1]
        msg = sender.client.build(
            "MESSAGE", f"sips:far@127.0.0.1:{port}", to="<sips:far@127.0.0.1>"
        )
        assert (await sender.client.request(msg)).status == 200

        # TLS with a certificate from a CA siptrio does not trust: 503 naming the reason
        rogue = trustme.CA().issue_cert("127.0.0.1")
        bad_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        rogue.configure_cert(bad_ctx)
        (bad_l,) = await trio.open_tcp_listeners(0, host="127.0.0.1")

        async def accept_and_fail() -> None:
            tcp = await bad_l.accept()
            with trio.move_on_after(2):
                with contextlib.suppress(trio.BrokenResourceError):
                    await trio.SSLStream(tcp, bad_ctx, server_side=True).do_handshake()
            await trio.aclose_forcefully(tcp)

        nursery.start_soon(accept_and_fail)
        port = bad_l.socket.getsockname()[1]
        msg = sender.client.build(
            "MESSAGE", f"sips:far@127.0.0.1:{port}", to="<sips:far@127.0.0.1>"
        )
        r = await sender.client.request(msg)
        assert r.status == 503 and "certificate" in r.reason.lower()

        # nobody listening: 503 too
        (closed_l,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = closed_l.socket.getsockname()[1]
        await closed_l.aclose()
        msg = sender.client.build(
            "MESSAGE", f"sip:far@127.0.0.1:{port};transport=tcp", to="<sip:far@127.0.0.1>"
        )
        r = await sender.client.request(msg)
        assert r.status == 503
