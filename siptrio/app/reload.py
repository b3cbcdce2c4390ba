"""Reload: read the config file again and apply what can change while calls go on.

SIGHUP (``systemctl reload``, logrotate), ``siptrio reload`` (the control socket) and
``POST /reload`` come here. The file is read and checked as at start, with the same
``--set`` overrides on top; a file that fails is refused with the same file:line:key
message and the running config stays. Otherwise each changed key is either applied
at once (``LIVE``) or, when it needs a restart (listen addresses and ports, the
store, the cluster), named in a warning and kept as it was, so the running config is
always one the server really runs. Registered clients, flows, dialogs, transactions,
nonces and bans stay: nothing is restarted.

The core's settings are frozen dataclasses (``DispatcherConfig``); this module also
owns how a ``Config`` becomes them (``core_config``), at start and at each reload, so
both build them the same way.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import trio

from ..core.admission import AdmissionConfig
from ..core.auth import AuthConfig
from ..core.dispatcher import DispatcherConfig
from ..core.media import MediaConfig, MediaMode
from ..core.overload import OverloadConfig
from ..core.proxy import ProxyConfig
from ..core.registrar import RegistrarConfig
from ..core.routing import NatMode, ResolverConfig, parse_hop, parse_rule
from ..sip.transaction import Timers
from ..transport.tls import TlsSetupError, server_context
from .config import _SECTIONS, Config, ConfigError, load_config
from .credentials import ephemeral_config

if TYPE_CHECKING:
    from ..transport.rtpengine import NgClient
    from .logs import LogSetup

__all__ = [
    "LIVE",
    "ReloadHost",
    "ReloadOutcome",
    "ReloadPlan",
    "Reloader",
    "core_config",
    "plan_reload",
    "realm_of",
]

log = logging.getLogger("siptrio.reload")

# The keys a reload applies while running; any other key needs a restart.
LIVE: dict[str, frozenset[str]] = {
    "sip": frozenset({"domains"}),
    "sip_tls": frozenset({"cert_file", "key_file"}),
    "sip_websocket": frozenset(
        {"wss_cert_file", "wss_key_file", "allowed_origins", "allow_missing_origin"}
    ),
    "registrar": frozenset(
        {"min_expires", "default_expires", "max_expires", "max_contacts", "nat"}
    ),
    "proxy": frozenset(
        {"allowed_destinations", "record_route", "max_dialog_duration", "outbound_proxy"}
    ),
    "routes": frozenset({"rules"}),
    "dns": frozenset({"servers", "timeout"}),
    "media": frozenset({"rtpengine", "mode", "timeout", "on_failure"}),
    "auth": frozenset(f.name for f in dataclasses.fields(_SECTIONS["auth"].cls)),
    "security": frozenset(
        {
            *("rate_limit", "rate_burst", "rate_limit_exempt"),
            *("ban_after", "ban_window", "ban_time"),
            *("max_connections", "max_connections_per_ip"),
        }
    ),
    "logging": frozenset({"level", "sip_trace", "format", "file"}),
    "capture": frozenset({"hep", "hep_id"}),
    "cdr": frozenset({"enable", "retention_days"}),
}
SECRET = frozenset({("auth", "ephemeral_secrets"), ("admin", "token")})  # never logged


def realm_of(config: Config) -> str:
    """[auth] realm, else the first domain, else "siptrio": the CLI and server agree."""
    return config.auth.realm or (config.sip.domains[0] if config.sip.domains else "siptrio")


def core_config(config: Config, *, node: str | None) -> DispatcherConfig:
    """The core's settings from the server's; ``node``: this node's id in a cluster."""
    reg = config.registrar
    return DispatcherConfig(
        registrar=RegistrarConfig(
            min_expires=reg.min_expires,
            default_expires=reg.default_expires,
            max_expires=reg.max_expires,
            max_contacts=reg.max_contacts,
            domains=config.sip.domains,
            node=node,
            nat=NatMode(reg.nat),
            allowed_contacts=config.proxy.allowed_destinations,
            trust_contacts=config.auth.enable,
        ),
        proxy=ProxyConfig(
            domains=config.sip.domains,
            allowed_destinations=config.proxy.allowed_destinations,
            record_route=config.proxy.record_route,
            max_dialog_duration=config.proxy.max_dialog_duration,
            advertised_address=config.sip.advertised_address,
            node_id=node,
            nat=NatMode(reg.nat),
            routes=tuple(parse_rule(name, text) for name, text in config.routes.rules),
            outbound_proxy=(
                parse_hop(config.proxy.outbound_proxy) if config.proxy.outbound_proxy else None
            ),
            trust_contacts=config.auth.enable,
            dns=ResolverConfig(),
            media=MediaConfig(
                enabled=bool(config.media.rtpengine),
                mode=MediaMode(config.media.mode),
                fail_open=config.media.on_failure == "passthrough",
            ),
        ),
        timers=Timers(t1=config.sip.t1, t2=config.sip.t2, t4=config.sip.t4),
        auth=AuthConfig(
            enabled=config.auth.enable,
            realm=realm_of(config),
            nonce_ttl=config.auth.nonce_ttl,
            ban_after=config.security.ban_after,
            ban_window=config.security.ban_window,
            ban_time=config.security.ban_time,
            ephemeral=ephemeral_config(config),
            algorithms=config.auth.algorithms,
        ),
        overload=OverloadConfig(
            target=config.security.overload_delay,
            retry_after=config.security.overload_retry_after,
        ),
        admission=AdmissionConfig(
            max_size=config.sip.max_message_size,
            max_headers=config.sip.max_headers,
            rate_limit=config.security.rate_limit,
            rate_burst=config.security.rate_burst,
            rate_limit_exempt=config.security.rate_limit_exempt,
            fast_path=config.registrar.fast_path,
        ),
    )


# --- what a reload changes (pure) ---------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Change:
    section: str
    key: str
    old: Any
    new: Any

    @property
    def name(self) -> str:
        return f"[{self.section}] {self.key}"

    def __str__(self) -> str:
        if (self.section, self.key) in SECRET:
            return f"{self.name} changed"
        return f"{self.name}: {_shown(self.old)} -> {_shown(self.new)}"


def _shown(value: Any) -> str:
    if value is None or value == ():
        return "(none)"
    if isinstance(value, tuple):
        return ", ".join(_shown(v) if isinstance(v, tuple) else str(v) for v in value)
    return str(value)


@dataclass(frozen=True, kw_only=True)
class ReloadPlan:
    config: Config  # what will run: the new file, but the restart keys as they were
    live: tuple[Change, ...]  # applied now
    restart: tuple[Change, ...]  # kept as they were until a restart


def plan_reload(running: Config, new: Config) -> ReloadPlan:
    """Compare key by key; a restart key keeps its running value."""
    live: list[Change] = []
    restart: list[Change] = []
    sections: dict[str, Any] = {}
    for name, spec in _SECTIONS.items():
        was, now = getattr(running, spec.attribute), getattr(new, spec.attribute)
        kept: dict[str, Any] = {}
        for f in dataclasses.fields(was):
            old_value, new_value = getattr(was, f.name), getattr(now, f.name)
            if old_value == new_value:
                continue
            change = Change(section=name, key=f.name, old=old_value, new=new_value)
            if f.name in LIVE.get(name, ()) and not _needs_start(name, f.name, old_value):
                live.append(change)
            else:
                restart.append(change)
                kept[f.name] = old_value
        sections[spec.attribute] = dataclasses.replace(now, **kept) if kept else now
    merged = dataclasses.replace(new, **sections)
    return ReloadPlan(config=merged, live=tuple(live), restart=tuple(restart))


def _needs_start(section: str, key: str, old: Any) -> bool:
    """Live keys that cannot go live from nothing: rtpengine's client starts with the
    server (bridging that was off at start needs a restart to begin)."""
    return (section, key) == ("media", "rtpengine") and not old


# --- applying it -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ReloadOutcome:
    ok: bool
    trigger: str
    source: str | None
    changed: tuple[str, ...] = ()  # applied: "[sip] domains: a -> a, b"
    restart_needed: tuple[str, ...] = ()  # kept: "[sip] udp_port: 5060 -> 5070"
    certificates: tuple[str, ...] = ()  # TLS/WSS certificates read again
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {
            "changed": list(self.changed),
            "restart_needed": list(self.restart_needed),
            "certificates": list(self.certificates),
        }


class ReloadHost(Protocol):
    """What a reload needs of the server: its config, the listeners' TLS contexts, the
    rtpengine client (to check new addresses), and the server applying a checked
    config to the parts it composed (``reconfigure``)."""

    config: Config
    media: NgClient | None

    @property
    def tls_contexts(self) -> Mapping[str, ssl.SSLContext]:
        """The running TLS and WSS listeners' contexts, by config section."""
        ...

    def reconfigure(self, config: Config) -> None:
        """Apply ``config`` (already checked, restart keys as they run) at once."""
        ...

    async def load_users(self) -> None:
        """Read the digest users of the current realm from the store again."""
        ...


class ReloadRefused(Exception):
    """The new settings cannot be applied (a certificate that does not load ...)."""


@dataclass
class Reloader:
    """The server's reloads: one at a time, each applied whole or not at all."""

    server: ReloadHost
    logs: LogSetup | None = None  # the CLI's log setup: level, format and file follow
    # more settings to apply, by other parts (capture, call records): called with the
    # running config after the core's
    hooks: list[Callable[[Config], None]] = field(default_factory=list)
    _lock: trio.Lock = field(default_factory=trio.Lock)

    async def reload(self, trigger: str) -> ReloadOutcome:
        async with self._lock:
            return await self._reload(trigger)

    async def _reload(self, trigger: str) -> ReloadOutcome:
        server = self.server
        running = server.config
        if self.logs is not None:
            self.logs.reopen()  # logrotate moved the file: write to a new one
        source = running.source
        if source is None:
            log.info("reload (%s): no config file, only the log was reopened", trigger)
            return ReloadOutcome(ok=True, trigger=trigger, source=None)
        try:
            new = await trio.to_thread.run_sync(load_config, source, dict(running.overrides))
            plan = plan_reload(running, new)
            contexts = self._check_certificates(plan.config)
            self._check_media(plan.config)
        except (ConfigError, ReloadRefused) as e:
            log.error("reload (%s) refused, the running config stays: %s", trigger, e)
            return ReloadOutcome(ok=False, trigger=trigger, source=source, error=str(e))
        server.reconfigure(plan.config)
        if self.logs is not None:
            self.logs.apply(plan.config.logging)
        loaded = self._load_certificates(contexts)
        if plan.config.auth.enable:
            await server.load_users()  # a new realm's users; users added meanwhile
        for hook in self.hooks:
            hook(plan.config)
        outcome = ReloadOutcome(
            ok=True,
            trigger=trigger,
            source=source,
            changed=tuple(str(c) for c in plan.live),
            restart_needed=tuple(str(c) for c in plan.restart),
            certificates=tuple(loaded),
        )
        self._report(outcome)
        return outcome

    def _report(self, outcome: ReloadOutcome) -> None:
        what = "; ".join(outcome.changed) or "no changes"
        log.info(
            "reloaded %s (%s): %s",
            outcome.source,
            outcome.trigger,
            what,
            extra={"changed": list(outcome.changed), "trigger": outcome.trigger},
        )
        for item in outcome.restart_needed:
            log.warning(
                "reload: %s needs a restart; the running value stays until then",
                item,
                extra={"restart_needed": item},
            )

    def _check_media(self, config: Config) -> None:
        media = self.server.media
        if media is None or not config.media.rtpengine:
            return
        from ..transport.rtpengine import parse_engine

        if not media.can_reach([parse_engine(e) for e in config.media.rtpengine]):
            raise ReloadRefused(
                "[media] rtpengine: an IPv6 engine where only IPv4 ones were configured at "
                "start (or the reverse) needs a restart"
            )

    # --- TLS and WSS certificates --------------------------------------------------------

    def _check_certificates(self, config: Config) -> list[tuple[str, str, str, ssl.SSLContext]]:
        """Every listener's certificate and key, read and matched before anything changes
        (a renewed file under the same name is read again too)."""
        out = []
        for section, cert, key in (
            ("sip_tls", config.tls.cert_file, config.tls.key_file),
            ("sip_websocket", config.websocket.wss_cert_file, config.websocket.wss_key_file),
        ):
            context = self.server.tls_contexts.get(section)
            if context is None:
                continue  # that listener is not running
            try:
                server_context(cert, key, what=f"[{section}]")
            except TlsSetupError as e:
                raise ReloadRefused(str(e)) from None
            out.append((section, cert, key, context))
        return out

    @staticmethod
    def _load_certificates(contexts: list[tuple[str, str, str, ssl.SSLContext]]) -> list[str]:
        """Into the listeners' own contexts: new handshakes use them, open ones keep theirs."""
        loaded = []
        for section, cert, key, context in contexts:
            try:
                context.load_cert_chain(cert, key)
            except (OSError, ssl.SSLError) as e:  # changed since it was checked
                log.error("[%s] certificate %s not reloaded: %s", section, cert, e)
                continue
            loaded.append(f"[{section}] {cert}")
        return loaded
