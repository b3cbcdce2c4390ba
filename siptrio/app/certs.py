"""Development TLS certificates (via trustme) and how to make browsers trust them.

Browsers refuse WSS to a server they do not trust, and SIP-over-TLS clients verify
the server too; a local CA lets both work on a developer machine without a public
certificate. The CA is made once and kept (``ca.pem`` and its key ``ca.key``, 0600):
running ``siptrio certs`` again issues new server and client certificates from it,
so browsers and phones that trust it need nothing new. Nothing here is meant for
production.
"""

from __future__ import annotations

import os
import shlex
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trustme

__all__ = ["CLIENT_NAME", "CertError", "CertPaths", "trust_instructions", "write_dev_certs"]

CLIENT_NAME = "siptrio-test-client"


class CertError(Exception):
    """The certificate directory holds something this command will not overwrite."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CertPaths:
    ca: Path  # the CA certificate to trust
    ca_key: Path  # the CA's private key (0600): new certificates need no new trust
    cert: Path  # server certificate chain, leaf first
    key: Path  # server private key (0600)
    client: Path  # client certificate and key in one file, for mutual TLS (0600)
    reused_ca: bool = False  # the CA was already there and signed these


def write_dev_certs(
    directory: str | os.PathLike[str],
    hosts: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
    *,
    force: bool = False,
) -> CertPaths:
    """Issue a server and a client certificate from the directory's CA, made if missing.

    An existing CA (``ca.pem`` with ``ca.key``) is reused, so what already trusts it
    goes on working; ``force`` makes a new one (which must then be trusted again).
    A ``ca.pem`` without its key (written by siptrio before it kept the key) cannot
    sign: CertError, unless ``force``.
    """
    if not hosts:
        raise ValueError("write_dev_certs needs at least one host name or address")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = CertPaths(
        ca=out / "ca.pem",
        ca_key=out / "ca.key",
        cert=out / "server.pem",
        key=out / "server.key",
        client=out / "client.pem",
    )
    ca = None if force else _existing_ca(paths)
    reused = ca is not None
    if ca is None:
        ca = trustme.CA(organization_unit_name="siptrio development CA")
    server = ca.issue_cert(*hosts)
    client = ca.issue_cert(CLIENT_NAME, common_name=CLIENT_NAME)

    if not reused:
        _write(paths.ca_key, ca.private_key_pem.bytes(), secret=True)
        _write(paths.ca, ca.cert_pem.bytes(), secret=False)
    else:
        _tighten(paths.ca_key)
    _write(paths.cert, b"".join(blob.bytes() for blob in server.cert_chain_pems), secret=False)
    _write(paths.key, server.private_key_pem.bytes(), secret=True)
    _write(paths.client, client.private_key_and_cert_chain_pem.bytes(), secret=True)
    return CertPaths(
        ca=paths.ca,
        ca_key=paths.ca_key,
        cert=paths.cert,
        key=paths.key,
        client=paths.client,
        reused_ca=reused,
    )


def _existing_ca(paths: CertPaths) -> trustme.CA | None:
    """The CA kept in the directory; None when there is none; CertError when unusable."""
    if not paths.ca.exists():
        return None
    if not paths.ca_key.exists():
        raise CertError(
            f"{paths.ca} exists without its key {paths.ca_key} (made by an older siptrio, "
            "which did not keep it), so it cannot sign new certificates; run with --force "
            "to make a new CA, then trust the new one in browsers and phones"
        )
    try:
        return trustme.CA.from_pem(paths.ca.read_bytes(), paths.ca_key.read_bytes())
    except (OSError, ValueError) as e:
        raise CertError(
            f"cannot use the CA in {paths.ca} and {paths.ca_key}: {e}; run with --force to "
            "make a new CA, then trust the new one in browsers and phones"
        ) from None


def _tighten(path: Path) -> None:
    """A kept key stays 0600 even if someone loosened it since."""
    if stat.S_IMODE(path.stat().st_mode) != 0o600:
        os.chmod(path, 0o600)


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
    if paths.reused_ca:
        head = [
            f"Development CA: {paths.ca} (kept; it signed the new certificates, so",
            "clients that already trust it need nothing new; --force makes a new CA).",
            "If a client does not trust it yet:",
        ]
    else:
        head = [
            f"Development CA: {paths.ca} (new; its key {paths.ca_key} is kept, mode 0600,",
            "so running this again issues certificates the same clients trust).",
            "Trust it where clients verify the server:",
        ]
    return "\n".join(
        [
            *head,
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
