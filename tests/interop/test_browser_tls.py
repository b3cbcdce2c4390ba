"""What must fail does: an untrusted certificate, a foreign Origin.

* A browser that does not trust siptrio's CA cannot open the WSS connection (the page
  says registration failed; the console says why), while the same page over WSS with
  the CA trusted registers (test_browser_register.py).
* A TLS client (Python's ssl) that does not trust the CA fails the handshake with the
  TLS listener; given the CA it connects, and siptrio answers its OPTIONS.
* A page from an origin outside ``allowed_origins`` gets 403 at the WebSocket handshake:
  the browser's console shows the status, the page sees only a failed connection.
"""

from __future__ import annotations

import socket
import ssl
import uuid
from collections.abc import Iterator

import pytest
from browser import DOMAIN, Chromium, Phone, Siptrio, chromium, needs_browser, run_siptrio, wait_for

# needs_browser() per test: the TLS client test runs without Chromium
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Siptrio]:
    with run_siptrio(tmp_path_factory.mktemp("siptrio")) as s:
        yield s


@pytest.fixture(scope="module")
def browsers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    with chromium(tmp_path_factory.mktemp("chromium")) as b:
        yield b


@needs_browser()
@pytest.mark.parametrize("library", ["jssip", "sipjs"])
def test_browser_without_the_ca_cannot_connect_over_wss(
    server: Siptrio, browsers: Chromium, library: str
) -> None:
    user = f"mallory-{library}"
    phone = Phone(
        browsers.launch(f"untrusting-{library}"),
        server,
        library=library,
        user=user,
        ws_url=server.wss_url,
    )
    phone.register()
    phone.wait_registration("failed")
    assert "cannot connect" in phone.shown("#reg-state")
    wait_for(
        lambda: "ERR_CERT_AUTHORITY_INVALID" in phone.console_text(),
        5,
        "the certificate error in the console",
    )
    assert server.bindings(f"sip:{user}@{DOMAIN}") == []
    # siptrio saw the handshake fail; no flow was opened for it
    assert all(f["transport"] != "wss" for f in server.get("/connections"))
    phone.close()


def options_over_tls(server: Siptrio, context: ssl.SSLContext) -> str:
    """Connect to the TLS listener, send OPTIONS, return the status line of the answer."""
    host, port = server.listeners["tls"]
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        local_host, local_port = tls.getsockname()[:2]
        branch = "z9hG4bK" + uuid.uuid4().hex
        request = (
            f"OPTIONS sip:{host}:{port};transport=tls SIP/2.0\r\n"
            f"Via: SIP/2.0/TLS {local_host}:{local_port};branch={branch}\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:tls-test@{DOMAIN}>;tag={uuid.uuid4().hex[:8]}\r\n"
            f"To: <sip:{host}:{port}>\r\n"
            f"Call-ID: {uuid.uuid4().hex}@test\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        tls.sendall(request.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = tls.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0].decode()


def test_tls_client_needs_the_ca(server: Siptrio) -> None:
    untrusting = ssl.create_default_context()  # the system's CAs: not siptrio's trustme CA
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        options_over_tls(server, untrusting)

    trusting = ssl.create_default_context(cafile=str(server.certs.ca))
    assert options_over_tls(server, trusting) == "SIP/2.0 200 OK"

    # The certificate names localhost and 127.0.0.1, nothing else.
    wrong_name = ssl.create_default_context(cafile=str(server.certs.ca))
    host, port = server.listeners["tls"]
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"),
    ):
        wrong_name.wrap_socket(raw, server_hostname="sip.example.com")


@needs_browser()
def test_foreign_origin_is_refused_at_the_handshake(server: Siptrio, browsers: Chromium) -> None:
    """The page from http://localhost:<admin port>: not in allowed_origins (only 127.0.0.1's)."""
    rejected_before = server.metric("siptrio_ws_handshake_rejections_total", reason="origin")
    phone = Phone(
        browsers.launch("foreign-origin"),
        server,
        library="sipjs",
        user="eve",
        page_origin=f"http://localhost:{server.admin_port}",
    )
    assert phone.page.evaluate("window.location.origin") == f"http://localhost:{server.admin_port}"
    phone.register()
    phone.wait_registration("failed")
    wait_for(
        lambda: "Unexpected response code: 403" in phone.console_text(),
        5,
        "the 403 in the console",
    )
    assert server.bindings(f"sip:eve@{DOMAIN}") == []
    rejected = server.metric("siptrio_ws_handshake_rejections_total", reason="origin")
    assert rejected >= rejected_before + 1
    assert (
        f"refused (403): Origin http://localhost:{server.admin_port} is not allowed" in server.log()
    )
