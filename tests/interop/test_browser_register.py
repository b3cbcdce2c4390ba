"""Browsers register with a real siptrio: SIP.js over WS, JsSIP over WSS, SIP.js keep-alives.

Chromium (Debian's, driven by Playwright) opens examples/webphone from siptrio's admin
server (``/phone/``) and presses Register; the binding is then read from the admin
API's ``/listClients``. See browser.py for how the browser and the server are started.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
from browser import DOMAIN, Chromium, Phone, Siptrio, chromium, needs_browser, run_siptrio, wait_for
from fastapi import FastAPI

from siptrio.app.webphone import mount_webphone

pytestmark = [pytest.mark.slow, needs_browser(certutil=True)]

KEEPALIVE = 1.0  # SIP.js keepAliveInterval (it sends every 0.8 to 1 s)
SERVER_KEEPALIVE = 1.5  # siptrio's own keep-alive (WebSocket Ping) on every flow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Siptrio]:
    with run_siptrio(
        tmp_path_factory.mktemp("siptrio"),
        {
            "sip_websocket.keepalive_interval": str(SERVER_KEEPALIVE),
            "sip_websocket.keepalive_timeout": "2",
        },
    ) as s:
        yield s


@pytest.fixture(scope="module")
def browsers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    with chromium(tmp_path_factory.mktemp("chromium")) as b:
        yield b


def test_sipjs_registers_over_ws(server: Siptrio, browsers: Chromium) -> None:
    phone = Phone(browsers.launch("sipjs-ws"), server, library="sipjs", user="alice")
    assert phone.page.input_value("#server") == server.ws_url
    phone.register()
    phone.wait_registration("registered")
    assert phone.shown("#reg-state") == "registered"

    [binding] = server.bindings(f"sip:alice@{DOMAIN}")
    assert binding["transport"] == "ws"
    assert binding["contact"].endswith(".invalid;transport=ws"), binding
    assert binding["user_agent"].startswith("SIP.js/"), binding
    assert binding["expires_in"] > 500, binding
    flows = {f["id"]: f for f in server.get("/connections")}
    assert flows[binding["flow"]]["transport"] == "ws"
    assert {"aor": binding["aor"], "contact": binding["contact"]} in flows[binding["flow"]][
        "bindings"
    ]

    phone.unregister()
    phone.wait_registration("unregistered")
    wait_for(lambda: not server.bindings(f"sip:alice@{DOMAIN}"), 5, "the binding to go")


def spki_pin(cert_pem: Path) -> str:
    """base64(sha256(SubjectPublicKeyInfo)) of the first certificate in a PEM file."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.mark.parametrize("trust", ["nss", "spki"])
def test_jssip_registers_over_wss_with_the_ca_trusted(
    server: Siptrio, browsers: Chromium, trust: str
) -> None:
    """The trustme CA imported into the browser's NSS database, or the server key pinned."""
    if trust == "nss":
        context = browsers.launch("jssip-wss-nss", trust_ca=server.certs.ca)
    else:
        pin = spki_pin(server.certs.cert)
        context = browsers.launch(
            "jssip-wss-spki", extra_args=[f"--ignore-certificate-errors-spki-list={pin}"]
        )
    user = f"bob-{trust}"
    phone = Phone(context, server, library="jssip", user=user, ws_url=server.wss_url)
    phone.register()
    phone.wait_registration("registered")

    [binding] = server.bindings(f"sip:{user}@{DOMAIN}")
    assert binding["transport"] == "wss", binding
    assert binding["user_agent"].startswith("JsSIP"), binding
    assert binding["reg_id"] == 1 and binding["instance"], binding  # RFC 5626 outbound
    assert "cert" not in phone.console_text().lower(), phone.console_text()
    phone.close()
    wait_for(lambda: not server.bindings(f"sip:{user}@{DOMAIN}"), 5, "the flow's binding to go")


def test_sipjs_keepalives_keep_the_registration(server: Siptrio, browsers: Chromium) -> None:
    """SIP.js sends CRLFCRLF every second; siptrio answers each; the flow and binding stay."""
    pings_before = server.metric("siptrio_keepalives_received_total", transport="ws")
    phone = Phone(
        browsers.launch("sipjs-keepalive"),
        server,
        library="sipjs",
        user="kate",
        params={"keepalive": str(int(KEEPALIVE))},
    )
    phone.register()
    phone.wait_registration("registered")
    [first] = server.bindings(f"sip:kate@{DOMAIN}")

    # Three of siptrio's keep-alive intervals (its Pings answered by the browser), and
    # four or more of SIP.js's.
    phone.page.wait_for_timeout(3 * SERVER_KEEPALIVE * 1000 + 1000)

    assert phone.registration == "registered"
    [now] = server.bindings(f"sip:kate@{DOMAIN}")
    assert now["flow"] == first["flow"], "the WebSocket was replaced"
    assert now["registered_at"] == first["registered_at"], now
    received = server.metric("siptrio_keepalives_received_total", transport="ws") - pings_before
    sent = phone.console_text().count("Sending WebSocket message:\n\n\r\n\r\n")
    answered = phone.console_text().count(
        "Received WebSocket message with CRLF Keep Alive response"
    )
    # SIP.js keeps one keep-alive outstanding for keepAliveDebounce (10 s): four sent in
    # 5.5 s means each was answered, and the console says so.
    assert sent >= 4, phone.console_text()
    assert received >= sent - 1, (received, sent)
    assert answered >= sent - 1, (answered, sent)
    assert server.metric("siptrio_keepalives_sent_total", transport="ws") >= 3
    assert server.metric("siptrio_keepalive_failures_total") == 0
    phone.unregister()
    phone.wait_registration("unregistered")


def test_webphone_is_served(server: Siptrio, tmp_path: Path) -> None:
    """/phone/ on the admin server: the page, its scripts and the libraries from npm."""
    page = server.http.get("/phone/")
    assert page.status_code == 200 and "siptrio webphone" in page.text
    assert server.http.get("/phone").status_code in (307, 308)  # to /phone/
    for path in ("phone.js", "jssip-phone.js", "node_modules/sip.js/lib/index.js"):
        script = server.http.get(f"/phone/{path}")
        assert script.status_code == 200, path
        assert "javascript" in script.headers["content-type"], script.headers

    # Without its directory (siptrio installed without a clone) /phone/ says why.
    app = FastAPI()
    mount_webphone(app, tmp_path / "nowhere")

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/phone/")

    missing = trio.run(get)
    assert missing.status_code == 404
    assert "examples/webphone" in missing.text
