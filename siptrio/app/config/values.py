"""Value parsers: the text of one key into a value, or a message saying what is allowed.

Each raises _BadValue with the words an operator needs; loading.py adds where.
"""

from __future__ import annotations

import configparser
import ipaddress
import math
import os
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from .sections import IPNetwork

# --- value parsers -----------------------------------------------------------------
# Each turns the raw text into a value or raises _BadValue saying what is allowed.

Parse = Callable[[str], Any]


class _BadValue(ValueError):
    pass


_INT_RE = re.compile(r"[+-]?[0-9]+")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME_RE = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")


def _integer(low: int, high: int, what: str = "an integer") -> Parse:
    def parse(text: str) -> int:
        if _INT_RE.fullmatch(text) and low <= int(text) <= high:
            return int(text)
        raise _BadValue(f"expected {what} {low}..{high}")

    return parse


_port = _integer(0, 65535, "an integer port")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise _BadValue("expected a number of seconds > 0, e.g. 0.5 or 30")
    return value


def _per_second(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise _BadValue("expected a number of requests per second > 0, e.g. 100 or 0.5")
    return value


def _boolean(text: str) -> bool:
    try:
        return configparser.RawConfigParser.BOOLEAN_STATES[text.lower()]
    except KeyError:
        raise _BadValue("expected a boolean: true/false, yes/no, on/off or 1/0") from None


def _choice(*allowed: str, upper: bool = False) -> Parse:
    def parse(text: str) -> str:
        if text.lower() in allowed:
            return text.upper() if upper else text.lower()
        shown = [a.upper() if upper else a for a in allowed]
        raise _BadValue(f"expected one of {', '.join(shown)}")

    return parse


def _redis_url(text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
        raise _BadValue(f"expected a Redis URL, e.g. redis://127.0.0.1:6379/0; got {text!r}")
    return text.strip()


def _node_id(text: str) -> str | None:
    node = text.strip()
    if not node:
        return None
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", node):
        raise _BadValue(f"expected letters, digits, '.', '_' or '-' (up to 63); got {node!r}")
    return node


def _optional_realm(text: str) -> str | None:
    realm = text.strip()
    if not realm:
        return None
    if '"' in realm or "\\" in realm or any(ord(c) < 32 for c in realm):
        raise _BadValue(
            f"expected a realm without quotes or control characters, e.g. example.com; "
            f"got {realm!r}"
        )
    return realm


def _algorithms(text: str) -> tuple[str, ...]:
    items = [item.upper() for item in _split(text)]
    if not items or any(i not in ("SHA-256", "MD5") for i in items) or len(set(items)) < len(items):
        raise _BadValue(
            "expected SHA-256, MD5 or both, comma-separated, in the order to offer them"
        )
    return tuple(items)


MIN_SECRET = 16  # characters: one issued credential lets anyone try secrets offline


def _secrets(text: str) -> tuple[str, ...]:
    items = _split(text)
    for index, item in enumerate(items, start=1):
        if len(item) < MIN_SECRET or any(ord(c) < 32 for c in item):
            raise _BadValue(
                f"expected a comma-separated list of secrets of {MIN_SECRET} characters or more "
                f"(no commas or control characters; e.g. `openssl rand -hex 32`); "
                f"secret {index} is {len(item)} characters"
            )
    if len(set(items)) != len(items):
        raise _BadValue("expected each secret once; one is listed twice")
    return tuple(items)


_TURN_URI_RE = re.compile(
    r"turns?:(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(?::[0-9]{1,5})?(?:\?transport=(?:udp|tcp))?"
)


def _turn_uris(text: str) -> tuple[str, ...]:
    items = _split(text)
    for item in items:
        if not _TURN_URI_RE.fullmatch(item):
            raise _BadValue(
                f"expected a comma-separated list of TURN URIs (RFC 7065), e.g. "
                f"turn:turn.example.com:3478?transport=udp, turns:turn.example.com:5349; "
                f"{item!r} is not one"
            )
    return tuple(items)


def _engines(text: str) -> tuple[str, ...]:
    items = _split(text)
    for item in items:
        scheme, _, rest = item.partition(":")
        host, _, port = rest.rpartition(":")
        try:
            ok = scheme.lower() == "udp" and bool(_ip(host.strip("[]"))) and 0 < int(port) < 65536
        except (ValueError, _BadValue):
            ok = False
        if not ok:
            raise _BadValue(
                f"expected a comma-separated list of udp:HOST:PORT, e.g. udp:127.0.0.1:2223; "
                f"{item!r} is not one"
            )
    return tuple(items)


def _hep_target(text: str) -> str | None:
    """``udp:HOST:PORT`` of a HEP collector (Homer, sngrep -L), HOST an IP address."""
    if not text:
        return None
    scheme, _, rest = text.partition(":")
    host, _, port = rest.rpartition(":")
    try:
        ok = scheme.lower() == "udp" and bool(_ip(host.strip("[]"))) and 0 < int(port) < 65536
    except (ValueError, _BadValue):
        ok = False
    if not ok:
        raise _BadValue(
            "expected udp:HOST:PORT with HOST an IP address, e.g. udp:127.0.0.1:9060 "
            "(empty: no capture)"
        )
    return f"udp:{host}:{int(port)}"


def _split(text: str) -> list[str]:
    """Commas separate items; so do newlines, for values continued on indented lines."""
    return [item.strip() for item in re.split(r"[,\n]", text) if item.strip()]


def _ip(item: str) -> str:
    try:  # brackets are how IPv6 literals appear in URIs; accept them here too
        return str(ipaddress.ip_address(item.removeprefix("[").removesuffix("]")))
    except ValueError:
        raise _BadValue(f"{item!r} is not an IPv4 or IPv6 address") from None


_ADDRESSES = "expected a comma-separated list of IPv4/IPv6 addresses, e.g. 127.0.0.1, ::1"


def _addresses(text: str) -> tuple[str, ...]:
    items = _split(text)
    if not items:
        raise _BadValue(f"{_ADDRESSES}; at least one")
    try:
        return tuple(_ip(item) for item in items)
    except _BadValue as e:
        raise _BadValue(f"{_ADDRESSES}; {e}") from None


def _addresses_or_same(text: str) -> tuple[str, ...] | None:
    return _addresses(text) if _split(text) else None


def _address(text: str) -> str:
    try:
        return _ip(text)
    except _BadValue as e:
        raise _BadValue(f"expected one IPv4 or IPv6 address, e.g. 127.0.0.1; {e}") from None


def _is_host(host: str) -> bool:
    if _HOSTNAME_RE.fullmatch(host):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _optional_host(text: str) -> str | None:
    host = text.strip().removeprefix("[").removesuffix("]").lower()
    if not host:
        return None
    if not _is_host(host):
        raise _BadValue(
            f"expected a host name or an IP address, e.g. sip.example.com; {text!r} is not one"
        )
    return host


def _domains(text: str) -> tuple[str, ...]:
    items = [item.lower() for item in _split(text)]
    for item in items:
        if not _is_host(item):
            raise _BadValue(
                f"expected a comma-separated list of domain names, e.g. example.com, "
                f"sip.example.org; {item!r} is not one"
            )
    return tuple(items)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(item: str) -> str:
    """Normalise to the form browsers send (lower case, no default port, no slash)."""
    parts = urlsplit(item)
    try:
        port = parts.port
    except ValueError:
        port = -1
    scheme, host = parts.scheme.lower(), parts.hostname or ""
    if (
        scheme not in _DEFAULT_PORTS
        or not _is_host(host)
        or port == -1
        or parts.username is not None
        or parts.password is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or "?" in item
        or "#" in item
    ):
        raise _BadValue(f"{item!r} is not an origin")
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _origins(text: str) -> tuple[str, ...]:
    items = _split(text)
    if items == ["*"]:
        return ("*",)
    try:
        if "*" in items:
            raise _BadValue("'*' (any origin) must be the only value")
        return tuple(_origin(item) for item in items)
    except _BadValue as e:
        raise _BadValue(
            f"expected * or a comma-separated list of origins scheme://host[:port] "
            f"(scheme http or https), e.g. http://localhost:8088; {e}"
        ) from None


def _networks(text: str) -> tuple[IPNetwork, ...]:
    networks = []
    for item in _split(text):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise _BadValue(
                f"expected a comma-separated list of networks in CIDR notation, "
                f"e.g. 10.0.0.0/8, 2001:db8::/32; {item!r} is not one"
            ) from None
    return tuple(networks)


def _sip_uri(text: str) -> str | None:
    from ...core.routing import parse_hop

    if not text.strip():
        return None
    try:
        return str(parse_hop(text))
    except ValueError as e:
        raise _BadValue(f"expected a sip: or sips: URI, e.g. sip:proxy.example.net; {e}") from None


def _route_rule(name: str) -> Parse:
    def parse(text: str) -> tuple[str, str]:
        from ...core.routing import parse_rule

        try:
            parse_rule(name, text)
        except ValueError as e:
            raise _BadValue(
                f"expected MATCH -> NEXT-HOP[, NEXT-HOP ...] with MATCH one of prefix TEXT, "
                f"user REGEX, domain NAME, nonlocal, unregistered; {e}"
            ) from None
        return (name, " ".join(text.split()))

    return parse


def _dns_servers(text: str) -> tuple[str, ...]:
    out = []
    for item in _split(text):
        host, port = item, None
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else None
        elif item.count(":") == 1:
            host, port = item.split(":")
        try:
            address = _ip(host)
            if port is not None and not 0 < int(port) < 65536:
                raise ValueError
        except (_BadValue, ValueError):
            raise _BadValue(
                f"expected a comma-separated list of DNS server addresses, each IP or IP:PORT "
                f"([IPv6]:PORT), e.g. 127.0.0.1:5353; {item!r} is not one"
            ) from None
        out.append(address if port is None else f"{host_ref(address)}:{int(port)}")
    return tuple(out)


def host_ref(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _path(text: str) -> str:
    if not text:
        raise _BadValue("expected a file path")
    return os.path.expanduser(text)


def _optional_path(text: str) -> str | None:
    return os.path.expanduser(text) if text else None


def _optional_text(text: str) -> str | None:
    return text or None
