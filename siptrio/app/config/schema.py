"""The schema: every section, its keys and the parser of each, in one table."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .sections import (
    AdminConfig,
    AuthSection,
    CaptureSection,
    CdrSection,
    ClusterSection,
    Config,
    ControlConfig,
    DnsSection,
    LoggingConfig,
    MediaSection,
    ProxyConfig,
    RegistrarSection,
    RoutesSection,
    SecuritySection,
    SipConfig,
    TlsConfig,
    WebSocketConfig,
    jsonable,
)
from .values import (
    Parse,
    _address,
    _addresses,
    _addresses_or_same,
    _algorithms,
    _boolean,
    _choice,
    _dns_servers,
    _domains,
    _engines,
    _hep_target,
    _integer,
    _networks,
    _node_id,
    _optional_host,
    _optional_path,
    _optional_realm,
    _optional_text,
    _origins,
    _path,
    _per_second,
    _port,
    _redis_url,
    _route_rule,
    _seconds,
    _secrets,
    _sip_uri,
    _turn_uris,
)

# --- the schema --------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _Section:
    attribute: str  # on Config
    cls: type
    keys: Mapping[str, Parse]
    paths: frozenset[str] = frozenset()  # resolved against the config file's directory
    # a section whose keys are names the user picks (``[routes]``): each value is parsed
    # with free(key), and the section's one field gets them all, in the order written
    free: Callable[[str], Parse] | None = None


_SECTIONS: dict[str, _Section] = {
    "sip": _Section(
        attribute="sip",
        cls=SipConfig,
        keys={
            "listen_addr": _addresses,
            "udp_port": _port,
            "tcp_port": _port,
            "domains": _domains,
            "max_message_size": _integer(1024, 1048576),
            "max_headers": _integer(16, 10000),
            "idle_timeout": _seconds,
            "t1": _seconds,
            "t2": _seconds,
            "t4": _seconds,
            "udp_enable": _boolean,
            "tcp_enable": _boolean,
            "advertised_address": _optional_host,
        },
    ),
    "sip_tls": _Section(
        attribute="tls",
        cls=TlsConfig,
        keys={
            "enable": _boolean,
            "listen_addr": _addresses_or_same,
            "listen_port": _port,
            "cert_file": _path,
            "key_file": _path,
            "ca_file": _optional_path,
            "verify_client": _choice("none", "optional", "required"),
        },
        paths=frozenset({"cert_file", "key_file", "ca_file"}),
    ),
    "sip_websocket": _Section(
        attribute="websocket",
        cls=WebSocketConfig,
        keys={
            "enable": _boolean,
            "listen_addr": _addresses_or_same,
            "listen_port": _port,
            "wss_enable": _boolean,
            "wss_listen_port": _port,
            "wss_cert_file": _path,
            "wss_key_file": _path,
            "wss_ca_file": _optional_path,
            "wss_verify_client": _choice("none", "optional", "required"),
            "allowed_origins": _origins,
            "allow_missing_origin": _boolean,
            "keepalive_interval": _seconds,
            "keepalive_timeout": _seconds,
            "keepalive_mechanism": _choice("ping", "crlf", "both"),
            "handshake_timeout": _seconds,
            "max_connections": _integer(1, 1_000_000),
            "max_connections_per_ip": _integer(1, 1_000_000),
            "max_message_size": _integer(1024, 1048576),
            "trusted_proxies": _networks,
        },
        paths=frozenset({"wss_cert_file", "wss_key_file", "wss_ca_file"}),
    ),
    "registrar": _Section(
        attribute="registrar",
        cls=RegistrarSection,
        keys={
            "min_expires": _integer(1, 2**32 - 1, "an integer number of seconds"),
            "default_expires": _integer(1, 2**32 - 1, "an integer number of seconds"),
            "max_expires": _integer(1, 2**32 - 1, "an integer number of seconds"),
            "max_contacts": _integer(1, 1000),
            "fast_path": _boolean,
            "nat": _choice("auto", "contact", "source"),
            "database": _path,
            "backend": _choice("sqlite", "redis"),
            "redis_url": _redis_url,
        },
        paths=frozenset({"database"}),
    ),
    "cluster": _Section(
        attribute="cluster",
        cls=ClusterSection,
        keys={
            "node_id": _node_id,
            "internal_addr": _address,
            "internal_port": _port,
            "heartbeat_ttl": _seconds,
        },
    ),
    "proxy": _Section(
        attribute="proxy",
        cls=ProxyConfig,
        keys={
            "allowed_destinations": _networks,
            "record_route": _boolean,
            "max_dialog_duration": _seconds,
            "outbound_proxy": _sip_uri,
        },
    ),
    "routes": _Section(attribute="routes", cls=RoutesSection, keys={}, free=_route_rule),
    "dns": _Section(
        attribute="dns", cls=DnsSection, keys={"servers": _dns_servers, "timeout": _seconds}
    ),
    "admin": _Section(
        attribute="admin",
        cls=AdminConfig,
        keys={
            "enable": _boolean,
            "listen_addr": _address,
            "listen_port": _port,
            "token": _optional_text,
        },
    ),
    "control": _Section(
        attribute="control",
        cls=ControlConfig,
        keys={"enable": _boolean, "socket": _path},
        paths=frozenset({"socket"}),
    ),
    "auth": _Section(
        attribute="auth",
        cls=AuthSection,
        keys={
            "enable": _boolean,
            "realm": _optional_realm,
            "nonce_ttl": _seconds,
            "algorithms": _algorithms,
            "ephemeral_secrets": _secrets,
            "ephemeral_hash": _choice("sha1", "sha256", "sha384", "sha512"),
            "ephemeral_username_format": _choice("expiry:user", "user:expiry"),
            "ephemeral_check_user": _boolean,
            "ephemeral_max_ttl": _integer(1, 2**31 - 1, "an integer number of seconds"),
            "turn_uris": _turn_uris,
        },
    ),
    "security": _Section(
        attribute="security",
        cls=SecuritySection,
        keys={
            "rate_limit": _per_second,
            "rate_burst": _integer(1, 1_000_000),
            "rate_limit_exempt": _networks,
            "ban_after": _integer(1, 1_000_000),
            "ban_window": _seconds,
            "ban_time": _seconds,
            "max_connections": _integer(1, 1_000_000),
            "max_connections_per_ip": _integer(1, 1_000_000),
            "first_message_timeout": _seconds,
            "overload_delay": _seconds,
            "overload_retry_after": _integer(1, 3600),
        },
    ),
    "media": _Section(
        attribute="media",
        cls=MediaSection,
        keys={
            "rtpengine": _engines,
            "mode": _choice("auto", "always", "never"),
            "timeout": _seconds,
            "on_failure": _choice("reject", "passthrough"),
        },
    ),
    "logging": _Section(
        attribute="logging",
        cls=LoggingConfig,
        keys={
            "level": _choice("debug", "info", "warning", "error", upper=True),
            "sip_trace": _boolean,
            "format": _choice("text", "json"),
            "file": _optional_path,
        },
        paths=frozenset({"file"}),
    ),
    "capture": _Section(
        attribute="capture",
        cls=CaptureSection,
        keys={"hep": _hep_target, "hep_id": _integer(0, 2**32 - 1)},
    ),
    "cdr": _Section(
        attribute="cdr",
        cls=CdrSection,
        keys={"enable": _boolean, "retention_days": _integer(1, 36500, "a number of days")},
    ),
}


def config_as_dict(config: Config) -> dict[str, Any]:
    """The effective config as JSON-able data for ``check-config``: each section under
    the name files and ``--set`` use (``sip_tls``, not the attribute ``tls``)."""
    out: dict[str, Any] = {}
    for name, spec in _SECTIONS.items():
        section = getattr(config, spec.attribute)
        if spec.free is not None:  # [routes]: the user's names, in the order written
            out[name] = {key: text for key, text in section.rules}
        else:
            out[name] = jsonable(section)
    out["source"] = config.source
    return out
