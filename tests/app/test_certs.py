"""Generated development certificates, checked by real TLS handshakes over loopback."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from siptrio.app.certs import (
    CLIENT_NAME,
    CertError,
    CertPaths,
    trust_instructions,
    write_dev_certs,
)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return write_dev_certs(tmp_path_factory.mktemp("certs") / "dev")


def common_names(der: bytes) -> list[str]:
    subject = x509.load_der_x509_certificate(der).subject
    return [str(a.value) for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def serve_tls(context: ssl.SSLContext) -> Iterator[int]:
    """Accept TLS on 127.0.0.1 in a thread; greet each client with its certificate's CN."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(10)
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    der = tls.getpeercert(binary_form=True)
                    names = [] if der is None else common_names(der)
                    tls.sendall(("hello " + ",".join(names)).encode())
            except OSError:
                pass  # failed handshakes are what some tests are about
            finally:
                conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=10)
        listener.close()


@pytest.fixture
def server_port(certs: CertPaths) -> Iterator[int]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.cert, certs.key)
    yield from serve_tls(context)


@pytest.fixture
def mtls_port(certs: CertPaths) -> Iterator[int]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certs.ca))
    context.load_cert_chain(certs.cert, certs.key)
    context.verify_mode = ssl.CERT_REQUIRED
    yield from serve_tls(context)


def talk(port: int, context: ssl.SSLContext, server_hostname: str) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname=server_hostname) as tls,
    ):
        return tls.recv(1024)


def test_files_are_written_with_private_keys_0600(certs: CertPaths) -> None:
    assert certs.ca.name == "ca.pem"
    assert certs.cert.name == "server.pem"
    assert certs.key.name == "server.key"
    assert certs.client.name == "client.pem"
    for path in (certs.key, certs.client):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b"BEGIN CERTIFICATE" in certs.cert.read_bytes()
    assert b"PRIVATE KEY" not in certs.cert.read_bytes()
    client = certs.client.read_bytes()
    assert b"PRIVATE KEY" in client and b"BEGIN CERTIFICATE" in client


def test_regenerating_tightens_an_existing_key_file(tmp_path: Path) -> None:
    key = tmp_path / "server.key"
    key.write_bytes(b"old")
    key.chmod(0o644)
    paths = write_dev_certs(tmp_path)
    assert stat.S_IMODE(paths.key.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in paths.key.read_bytes()


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1", "::1"])
def test_client_trusting_the_ca_verifies_each_host(
    certs: CertPaths, server_port: int, hostname: str
) -> None:
    context = ssl.create_default_context(cafile=str(certs.ca))
    assert talk(server_port, context, hostname) == b"hello "


def test_name_not_in_the_certificate_is_rejected(certs: CertPaths, server_port: int) -> None:
    context = ssl.create_default_context(cafile=str(certs.ca))
    with pytest.raises(ssl.SSLCertVerificationError):
        talk(server_port, context, "sip.example.com")


def test_client_not_trusting_the_ca_is_rejected(server_port: int) -> None:
    context = ssl.create_default_context()
    with pytest.raises(ssl.SSLCertVerificationError):
        talk(server_port, context, "localhost")


def test_client_certificate_passes_mutual_tls(certs: CertPaths, mtls_port: int) -> None:
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.load_cert_chain(certs.client)
    assert talk(mtls_port, context, "localhost") == f"hello {CLIENT_NAME}".encode()


def test_mutual_tls_without_client_certificate_fails(certs: CertPaths, mtls_port: int) -> None:
    context = ssl.create_default_context(cafile=str(certs.ca))
    with pytest.raises(OSError):  # TLS 1.3: the server's alert arrives at the first read
        talk(mtls_port, context, "localhost")


def test_trust_instructions_name_the_ca(certs: CertPaths) -> None:
    text = trust_instructions(certs)
    assert f"certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n siptrio-dev -i {certs.ca}" in text
    assert "libnss3-tools" in text
    assert "Firefox" in text
    assert text.count(str(certs.ca)) >= 3


# --- the CA is kept: running it again needs no new trust ---------------------------------


def test_the_ca_key_is_kept_0600(certs: CertPaths) -> None:
    assert certs.ca_key.name == "ca.key"
    assert stat.S_IMODE(certs.ca_key.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in certs.ca_key.read_bytes()
    assert b"PRIVATE KEY" not in certs.ca.read_bytes()


def test_a_second_run_keeps_the_ca_and_its_certificate_is_trusted(tmp_path: Path) -> None:
    first = write_dev_certs(tmp_path, ["localhost"])
    ca_before, key_before = first.ca.read_bytes(), first.ca_key.read_bytes()
    old_trust = ssl.create_default_context(cafile=str(first.ca))  # a client set up once
    first.ca_key.chmod(0o644)  # someone loosened it since
    second = write_dev_certs(tmp_path, ["localhost", "sip.example.com"])
    assert second.reused_ca and not first.reused_ca
    assert second.ca.read_bytes() == ca_before and second.ca_key.read_bytes() == key_before
    assert stat.S_IMODE(second.ca_key.stat().st_mode) == 0o600
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(second.cert, second.key)
    for port in serve_tls(context):
        # the new certificate names a new host, and the old trust accepts it
        assert talk(port, old_trust, "sip.example.com") == b"hello "
    assert "need nothing new" in trust_instructions(second)


def test_force_makes_a_new_ca(tmp_path: Path) -> None:
    first = write_dev_certs(tmp_path, ["localhost"])
    before = first.ca.read_bytes()
    second = write_dev_certs(tmp_path, ["localhost"], force=True)
    assert not second.reused_ca and second.ca.read_bytes() != before
    (tmp_path / "old-ca.pem").write_bytes(before)
    old_trust = ssl.create_default_context(cafile=str(tmp_path / "old-ca.pem"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(second.cert, second.key)
    for port in serve_tls(context):
        with pytest.raises(ssl.SSLCertVerificationError):
            talk(port, old_trust, "localhost")


def test_a_ca_without_its_key_is_refused_unless_forced(tmp_path: Path) -> None:
    import subprocess
    import sys

    (tmp_path / "ca.pem").write_bytes(write_dev_certs(tmp_path / "other").ca.read_bytes())
    with pytest.raises(CertError, match="--force"):
        write_dev_certs(tmp_path)
    cli = [sys.executable, "-m", "siptrio", "certs", "--dir", str(tmp_path)]
    result = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "without its key" in result.stderr
    assert not (tmp_path / "server.pem").exists()
    result = subprocess.run([*cli, "--force"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and (tmp_path / "ca.key").exists()
    again = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "need nothing new" in again.stdout
