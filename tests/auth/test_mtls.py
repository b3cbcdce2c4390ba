"""Mutual TLS on the TLS and WSS listeners (verify_client), TLS 1.2 as the floor."""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path

import pytest
import trio
from support.server import running_server

from siptrio.app.certs import write_dev_certs


def client_context(ca: Path, cert: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert))
    return ctx


async def handshake(host: str, port: int, ctx: ssl.SSLContext) -> trio.SSLStream[trio.SocketStream]:
    tcp = await trio.open_tcp_stream(host, port)
    tls = trio.SSLStream(tcp, ctx, server_hostname="localhost")
    await tls.do_handshake()
    return tls


@pytest.mark.parametrize("listener", ["tls", "wss"])
async def test_required_client_certificate(tmp_path: Path, listener: str) -> None:
    certs = write_dev_certs(tmp_path / "certs")
    overrides = {
        "sip_tls.enable": "true",
        "sip_tls.cert_file": str(certs.cert),
        "sip_tls.key_file": str(certs.key),
        "sip_tls.ca_file": str(certs.ca),
        "sip_tls.verify_client": "required",
        "sip_websocket.enable": "true",
        "sip_websocket.wss_enable": "true",
        "sip_websocket.wss_cert_file": str(certs.cert),
        "sip_websocket.wss_key_file": str(certs.key),
        "sip_websocket.wss_ca_file": str(certs.ca),
        "sip_websocket.wss_verify_client": "required",
        "sip_websocket.handshake_timeout": "1",
    }
    async with running_server(tmp_path, overrides) as server:
        host, port = server.addr(listener)
        # without a certificate: refused during the handshake (TLS 1.3 reports it on first read)
        with pytest.raises(trio.BrokenResourceError):
            tls = await handshake(host, port, client_context(certs.ca, None))
            await tls.send_all(b"\r\n\r\n")
            with trio.fail_after(3):
                await tls.receive_some(10)
        # with one from the CA: accepted, and the connection carries traffic
        tls = await handshake(host, port, client_context(certs.ca, certs.client))
        if listener == "tls":
            await tls.send_all(b"\r\n\r\n")
            with trio.fail_after(3):
                assert await tls.receive_some(10) == b"\r\n"
        await trio.aclose_forcefully(tls)


async def test_tls_1_1_is_refused(tmp_path: Path) -> None:
    certs = write_dev_certs(tmp_path / "certs")
    overrides = {
        "sip_tls.enable": "true",
        "sip_tls.cert_file": str(certs.cert),
        "sip_tls.key_file": str(certs.key),
    }
    async with running_server(tmp_path, overrides) as server:
        ctx = client_context(certs.ca, None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        with contextlib.suppress(ssl.SSLError):
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        with pytest.raises((trio.BrokenResourceError, ssl.SSLError)):
            await handshake(*server.addr("tls"), ctx)
