"""TLS contexts for the TLS and WSS listeners and for outbound TLS.

TLS 1.2 is the floor everywhere. Missing or unreadable certificate files are a
startup error that names the files and how to make development ones, rather than a
traceback from deep inside ssl.
"""

from __future__ import annotations

import os
import ssl

__all__ = ["TlsSetupError", "client_context", "server_context"]


class TlsSetupError(Exception):
    pass


def server_context(
    cert_file: str,
    key_file: str,
    *,
    ca_file: str | None = None,
    verify_client: str = "none",
    what: str = "[sip_tls]",
) -> ssl.SSLContext:
    missing = [f for f in (cert_file, key_file) if not os.path.exists(f)]
    if missing:
        raise TlsSetupError(
            f"{what} is enabled but {' and '.join(missing)} "
            f"{'does' if len(missing) == 1 else 'do'} not exist; "
            "create development certificates with `siptrio certs` or set the file paths"
        )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as e:
        raise TlsSetupError(f"{what}: cannot load {cert_file} / {key_file}: {e}") from e
    if verify_client != "none":
        if not ca_file:
            raise TlsSetupError(f"{what}: verify_client = {verify_client} needs ca_file")
        try:
            ctx.load_verify_locations(ca_file)
        except (OSError, ssl.SSLError) as e:
            raise TlsSetupError(f"{what}: cannot load ca_file {ca_file}: {e}") from e
        ctx.verify_mode = ssl.CERT_REQUIRED if verify_client == "required" else ssl.CERT_OPTIONAL
    return ctx


def client_context(ca_file: str | None) -> ssl.SSLContext:
    """Outbound TLS always verifies the peer's certificate and host name."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
