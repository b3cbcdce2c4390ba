"""The server configuration: the config.ini format, its defaults and its validation.

This package owns the mapping from an INI file (plus ``--set section.key=value``
overrides) to one frozen :class:`Config`, and every error message a user sees about
that file: the settings (sections.py), the parsers of each value (values.py), the
table of sections and keys (schema.py), and reading and checking (loading.py). Values
are checked here, once, so the rest of the server can trust them; whether files named
in the config exist is left to the server, which can say why it needs them. The
annotated reference file is ``examples/config.ini``.
"""

from __future__ import annotations

from .loading import load_config
from .schema import _SECTIONS, config_as_dict
from .sections import (
    AdminConfig,
    AuthSection,
    CaptureSection,
    CdrSection,
    ClusterSection,
    Config,
    ConfigError,
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
    default_control_socket,
    default_database_path,
)

__all__ = [
    "_SECTIONS",
    "AdminConfig",
    "AuthSection",
    "CaptureSection",
    "CdrSection",
    "ClusterSection",
    "Config",
    "ConfigError",
    "ControlConfig",
    "DnsSection",
    "LoggingConfig",
    "MediaSection",
    "ProxyConfig",
    "RegistrarSection",
    "RoutesSection",
    "SecuritySection",
    "SipConfig",
    "TlsConfig",
    "WebSocketConfig",
    "config_as_dict",
    "default_control_socket",
    "default_database_path",
    "load_config",
]
