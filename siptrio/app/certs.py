"""Development TLS certificates (via trustme) and how to make browsers trust them.

Browsers refuse WSS to a server they do not trust, and SIP-over-TLS clients verify
the server too; a throwaway local CA lets both work on a developer machine without
a public certificate. Nothing here is meant for production.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trustme

__all__ = ["CLIENT_NAME", "CertPaths", "trust_instructions", "write_dev_certs"]

CLIENT_NAME = "siptrio-test-client"


@dataclass(frozen=True, slots=True, kw_only=True)
class CertPaths:
    ca: Path  # the CA certificate to trust
    cert: Path  # server certificate chain, leaf first
    key: Path  # server private key (0600)
    client: Path  # client certificate and key in one file, for mutual TLS (0600)


def write_dev_certs(
    directory: str | os.PathLike[str],
    hosts: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
) -> CertPaths:
    """Create a fresh CA and issue a server and a client certificate from it.

    The CA's private key is never written: once this returns, the CA cannot sign
    anything else, so trusting ``ca.pem`` in a browser trusts only these two
    certificates. Running it again replaces everything, and the new CA must be
    trusted again.
    """
    if not hosts:
        raise ValueError("write_dev_certs needs at least one host name or address")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = CertPaths(
        ca=out / "ca.pem",
        cert=out / "server.pem",
        key=out / "server.key",
        client=out / "client.pem",
    )
    ca = trustme.CA(organization_unit_name="siptrio development CA")
    server = ca.issue_cert(*hosts)
    client = ca.issue_cert(CLIENT_NAME, common_name=CLIENT_NAME)

    _write(paths.ca, ca.cert_pem.bytes(), secret=False)
    _write(paths.cert, b"".join(blob.bytes() for blob in server.cert_chain_pems), secret=False)
    _write(paths.key, server.private_key_pem.bytes(), secret=True)
    _write(paths.client, client.private_key_and_cert_chain_pem.bytes(), secret=True)
    return paths


def _write(path: Path, data: bytes, *, secret: bool) -> None:
    # A key must never be readable by others, not even for a moment and not when it
    # overwrites an older, laxer file: create it 0600 and tighten an existing one
    # before writing.
    mode = 0o600 if secret else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with open(fd, "wb") as f:
        if secret:
            os.fchmod(f.fileno(), mode)
        f.write(data)


def trust_instructions(paths: CertPaths) -> str:
    """Text for the CLI to print after generating, so WSS works in a browser."""
    ca = shlex.quote(str(paths.ca))
    return "\n".join(
        [
            f"Development CA: {paths.ca}",
            "Trust it where clients verify the server:",
            "  Chromium/Chrome on Linux (certutil is in the libnss3-tools package):",
            f"    certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n siptrio-dev -i {ca}",
            "    then restart the browser.",
            "  Firefox: Settings > Privacy & Security > Certificates > View Certificates >",
            f"    Authorities > Import, choose {paths.ca},",
            '    and tick "Trust this CA to identify websites".',
            "  SIP clients (SIPp, Linphone, pjsua, ...): set their CA file to",
            f"    {paths.ca}",
            f"Server certificate {paths.cert} and key {paths.key};",
            f"client certificate for mutual TLS: {paths.client} (CN={CLIENT_NAME}).",
        ]
    )
