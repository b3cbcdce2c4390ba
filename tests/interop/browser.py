"""Shared by the browser interop tests: a siptrio with its admin API, and Chromium phones.

* :class:`Siptrio`: ``python -m siptrio serve`` on 127.0.0.1 (every port 0 but the
  admin port, picked free beforehand so that the webphone's origin,
  ``http://127.0.0.1:<admin port>``, can be put in ``allowed_origins``), with WS, WSS
  and TLS listeners, trustme certificates, a tmp database and ``--sip-trace``; its
  admin API read with httpx.
* :class:`Chromium`: Debian's ``/usr/bin/chromium`` driven by Playwright
  (``executable_path``; a browser is never downloaded), the flags from CLIENTS.md, a
  fresh user-data-dir and ``HOME`` per browser, the test CA trusted through an NSS
  database under that ``HOME`` when asked, and the console captured (why a WebSocket
  failed shows only there).
* :class:`Phone`: one browser on examples/webphone (``index.html`` for SIP.js,
  ``jssip.html`` for JsSIP), driven by its buttons like a person would, its state read
  from ``window.phone``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from support.server import ServerProcess

from siptrio.app.certs import CertPaths, write_dev_certs

REPO = Path(__file__).resolve().parents[2]
WEBPHONE = REPO / "examples" / "webphone"
SIPP_DIR = REPO / "examples" / "sipp"
CHROMIUM = Path("/usr/bin/chromium")
DOMAIN = "example.com"

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
]


def missing_requirements(*, certutil: bool = False, sipp: bool = False) -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} missing: apt-get install -y chromium"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright missing: pip install -e '.[test]'"
    for lib in ("sip.js", "jssip"):
        if not (WEBPHONE / "node_modules" / lib / "package.json").is_file():
            return (
                f"examples/webphone/node_modules/{lib} missing: npm ci --prefix examples/webphone"
            )
    if certutil and shutil.which("certutil") is None:
        return "certutil missing: apt-get install -y libnss3-tools"
    if sipp and shutil.which("sipp") is None:
        return "sipp missing: apt-get install -y sip-tester"
    return None


def needs_browser(**kwargs: bool) -> pytest.MarkDecorator:
    reason = missing_requirements(**kwargs)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    check: Callable[[], Any],
    timeout: float = 10.0,
    what: str | Callable[[], str] = "condition",
    interval: float = 0.1,
) -> Any:
    """Poll ``check`` until it returns something truthy; that value.

    ``what`` names the wait in the failure message; a callable is called only then
    (for reports that must show the state at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout} s waiting for {said}")
        time.sleep(interval)


# --- siptrio ------------------------------------------------------------------------------


@dataclass
class Siptrio:
    """A siptrio process for one test module, with its admin API and certificates."""

    proc: ServerProcess
    certs: CertPaths
    admin_port: int
    listeners: dict[str, tuple[str, int]]
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.admin_url, timeout=30.0)

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def port(self, transport: str) -> int:
        return self.listeners[transport][1]

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port('ws')}"

    @property
    def wss_url(self) -> str:
        # the certificate names localhost and 127.0.0.1; the page is on 127.0.0.1
        return f"wss://127.0.0.1:{self.port('wss')}"

    def get(self, path: str) -> Any:
        response = self.http.get(path)
        response.raise_for_status()
        return response.json()

    def bindings(self, aor: str | None = None) -> list[dict[str, Any]]:
        found = self.get("/listClients")
        return [b for b in found if aor is None or b["aor"] == aor]

    def dialogs(self, call_id: str | None = None) -> list[dict[str, Any]]:
        return [d for d in self.get("/dialogs") if call_id is None or d["call_id"] == call_id]

    def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics (0 when absent)."""
        text = self.http.get("/metrics").text
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" (\S+)"
        m = re.search(r"^" + pattern + "$", text, re.M)
        return float(m.group(1)) if m else 0.0

    def log(self) -> str:
        return self.proc.output()

    def traced(self, direction: str, start: str, call_id: str) -> list[str]:
        """Messages from the --sip-trace log: ``direction`` "send" or "recv", the first
        line starting with ``start``, the given Call-ID; CRLF line ends as LF."""
        same_call = re.compile(rf"^Call-ID: *{re.escape(call_id)}\r?$", re.M | re.I)
        return [
            m.group(2)
            for m in _TRACE.finditer(self.log())
            if m.group(1) == direction
            and m.group(2).startswith(start)
            and same_call.search(m.group(2))
        ]

    def record_route(self, callee_side: str, caller_side: str) -> list[str]:
        """The two Record-Route entries siptrio puts on a call between two transports:
        the top one faces the callee, the other the caller (RFC 5658); WSS is
        ``sips:`` with ``transport=ws`` (RFC 7118)."""
        return [self.route_entry(callee_side), self.route_entry(caller_side)]

    def route_entry(self, transport: str) -> str:
        host, port = self.listeners[transport]
        if transport == "udp":
            return f"<sip:{host}:{port};lr>"
        if transport == "wss":
            return f"<sips:{host}:{port};transport=ws;lr>"
        return f"<sip:{host}:{port};transport={transport};lr>"


# a --sip-trace entry: its log line, then the message up to the next log line
_TRACE = re.compile(
    r"^\S+ \S+ INFO +siptrio\.trace: (send|recv) [^\n]*\n(.*?)(?=^\d{4}-\d\d-\d\d |\Z)",
    re.M | re.S,
)


def header_values(message: str, name: str) -> list[str]:
    """Every comma-separated value of a header, across repeated header lines, in order."""
    head = message.replace("\r\n", "\n").split("\n\n", 1)[0]
    values: list[str] = []
    for line in head.splitlines()[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            values += [v.strip() for v in value.split(",") if v.strip()]
    return values


def _siptrio_args(
    tmp: Path, certs: CertPaths, admin_port: int, overrides: Mapping[str, str]
) -> list[str]:
    values = {
        "sip.listen_addr": "127.0.0.1",
        "sip.udp_port": "0",
        "sip.tcp_port": "0",
        "sip.domains": DOMAIN,
        "sip_tls.enable": "true",
        "sip_tls.listen_port": "0",
        "sip_tls.cert_file": str(certs.cert),
        "sip_tls.key_file": str(certs.key),
        "sip_websocket.enable": "true",
        "sip_websocket.listen_port": "0",
        "sip_websocket.wss_enable": "true",
        "sip_websocket.wss_listen_port": "0",
        "sip_websocket.wss_cert_file": str(certs.cert),
        "sip_websocket.wss_key_file": str(certs.key),
        # the webphone's origin: the admin server's
        "sip_websocket.allowed_origins": f"http://127.0.0.1:{admin_port}",
        "admin.enable": "true",
        "admin.listen_addr": "127.0.0.1",
        "admin.listen_port": str(admin_port),
        "control.enable": "false",
        "registrar.database": str(tmp / "location.sqlite"),
        **overrides,
    }
    args = ["serve", "--sip-trace"]
    for key, value in values.items():
        args += ["--set", f"{key}={value}"]
    return args


def _health(http: httpx.Client) -> bool:
    try:
        return http.get("/health").status_code == 200
    except httpx.TransportError:
        return False


def _what_health(proc: ServerProcess) -> str:
    return f"GET /health\n{proc.output()[-3000:]}"


@contextmanager
def run_siptrio(tmp: Path, overrides: Mapping[str, str] | None = None) -> Iterator[Siptrio]:
    """siptrio with UDP, TCP, TLS, WS, WSS and the admin API (webphone at /phone/).

    The admin port is picked free before the start (the origin must be known for
    allowed_origins); should something take it meanwhile, siptrio exits and is started
    again on another one.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    certs = write_dev_certs(tmp / "certs", ["localhost", "127.0.0.1", "::1"])
    for attempt in range(3):
        admin_port = free_tcp_port()
        args = _siptrio_args(tmp, certs, admin_port, overrides or {})
        proc = ServerProcess(args, log_path=tmp / f"siptrio-{attempt}.log")
        try:
            try:
                listeners = proc.wait_ready(expect=5)  # udp tcp tls ws wss
            except RuntimeError:
                if "[admin] cannot listen" in proc.output() and attempt < 2:
                    continue
                raise
            server = Siptrio(proc=proc, certs=certs, admin_port=admin_port, listeners=listeners)
            wait_for(partial(_health, server.http), 10, partial(_what_health, proc))
            yield server
            server.http.close()
            # siptrio took everything the browsers and SIPp sent without a bug
            assert proc.stop() == 0, proc.output()[-5000:]
            log = proc.output()
            assert "Traceback" not in log and " ERROR " not in log, log[-5000:]
            return
        finally:
            proc.stop()


# --- Chromium -------------------------------------------------------------------------------


@dataclass
class ConsoleLine:
    type: str
    text: str


class Chromium:
    """Launches Debian's Chromium through one Playwright instance; closes them all."""

    def __init__(self, tmp: Path) -> None:
        from playwright.sync_api import sync_playwright

        self.tmp = tmp
        self._manager = sync_playwright()
        self.playwright = self._manager.start()
        self.contexts: list[Any] = []
        self._n = 0

    def launch(
        self, name: str, *, trust_ca: Path | None = None, extra_args: Sequence[str] = ()
    ) -> Any:
        """A fresh browser (its own HOME and user-data-dir): a Playwright BrowserContext."""
        self._n += 1
        home = self.tmp / f"{self._n:02d}-{name}" / "home"
        profile = self.tmp / f"{self._n:02d}-{name}" / "profile"
        home.mkdir(parents=True)
        profile.mkdir(parents=True)
        if trust_ca is not None:
            trust_in_nss(home, trust_ca)
        env: dict[str, str | float | bool] = {
            k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "SSLKEYLOG"))
        }
        env["HOME"] = str(home)
        context = self.playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=[*CHROMIUM_FLAGS, *extra_args],
            env=env,
            timeout=30_000,
        )
        self.contexts.append(context)
        return context

    def close(self) -> None:
        for context in self.contexts:
            with contextlib.suppress(Exception):  # gone with its browser: nothing to close
                context.close()
        self._manager.__exit__(None, None, None)


def trust_in_nss(home: Path, ca: Path) -> None:
    """A fresh NSS database under ``home`` trusting ``ca`` for TLS servers (Chromium's)."""
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True)
    subprocess.run(
        ["certutil", "-N", "-d", f"sql:{db}", "--empty-password"], check=True, capture_output=True
    )
    subprocess.run(
        ["certutil", "-A", "-d", f"sql:{db}", "-n", "siptrio test CA", "-t", "C,,", "-i", str(ca)],
        check=True,
        capture_output=True,
    )


@contextmanager
def chromium(tmp: Path) -> Iterator[Chromium]:
    browsers = Chromium(tmp)
    try:
        yield browsers
    finally:
        browsers.close()


# --- a phone in a tab ------------------------------------------------------------------------


class Phone:
    """examples/webphone in one browser: SIP.js (``index.html``) or JsSIP (``jssip.html``)."""

    def __init__(
        self,
        context: Any,
        server: Siptrio,
        *,
        library: str,
        user: str,
        ws_url: str | None = None,
        params: Mapping[str, str] | None = None,
        page_origin: str | None = None,
    ) -> None:
        self.library = library
        self.user = user
        self.aor = f"sip:{user}@{DOMAIN}"
        self.server = server
        self.console: list[ConsoleLine] = []
        self.page = context.pages[0] if context.pages else context.new_page()
        self.page.on("console", lambda m: self.console.append(ConsoleLine(m.type, m.text)))
        self.page.on("pageerror", lambda e: self.console.append(ConsoleLine("pageerror", str(e))))
        self.page.on("response", self._response)
        query = {"user": user, "domain": DOMAIN, "server": ws_url or server.ws_url}
        if library == "jssip":
            query["debug"] = "1"  # JsSIP's SIP trace in the console
        query.update(params or {})
        page = "jssip.html" if library == "jssip" else "index.html"
        self.url = f"{page_origin or server.admin_url}/phone/{page}?{urlencode(query)}"
        self.page.goto(self.url)
        self.page.wait_for_function("window.phone && window.phone.ready", timeout=15_000)
        error = self.page.evaluate("window.phone.error || null")
        assert error is None, f"{library} did not load: {error}\n{self.console_text()}"

    def _response(self, response: Any) -> None:
        if response.status >= 400:
            self.console.append(ConsoleLine("http", f"{response.status} {response.url}"))

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed page loads."""
        return [
            f"[{c.type}] {c.text}" for c in self.console if c.type in ("error", "pageerror", "http")
        ]

    # --- the buttons ---

    def register(self) -> None:
        self.page.click("#register")

    def unregister(self) -> None:
        self.page.click("#unregister")

    def call(self, target: str) -> None:
        self.page.fill("#target", target)
        self.page.click("#call")

    def answer(self) -> None:
        self.page.click("#answer")

    def hangup(self) -> None:
        self.page.click("#hangup")

    # --- what it shows ---

    @property
    def registration(self) -> str:
        return str(self.page.evaluate("window.phone.registration"))

    @property
    def call_info(self) -> dict[str, Any]:
        return dict(self.page.evaluate("window.phone.call"))

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        found = self.page.evaluate("window.phone.events")
        return [e for e in found if kind is None or e["kind"] == kind]

    def shown(self, selector: str) -> str:
        return str(self.page.text_content(selector) or "")

    def wait_registration(self, state: str, timeout: float = 10.0) -> None:
        self._wait(
            f"window.phone.registration === {json.dumps(state)}", timeout, f"registration {state}"
        )

    def wait_call(self, state: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        cond = " && ".join(
            [f"window.phone.call.state === {json.dumps(state)}"]
            + [f"window.phone.call[{json.dumps(k)}] === {json.dumps(v)}" for k, v in fields.items()]
        )
        self._wait(cond, timeout, f"call {state} {fields or ''}")
        return self.call_info

    def _wait(self, expression: str, timeout: float, what: str) -> None:
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            self.page.wait_for_function(expression, timeout=timeout * 1000, polling=100)
        except PlaywrightTimeout:
            raise AssertionError(
                f"{self.library} phone {self.user}: no {what} within {timeout} s; "
                f"registration={self.registration!r} call={self.call_info!r}\n"
                f"events: {self.events()}\nconsole:\n{self.console_text()[-8000:]}"
            ) from None

    def peer_connection(self) -> dict[str, Any] | None:
        """The call's RTCPeerConnection: descriptions, states, audio packets received."""
        return self.page.evaluate(
            """async () => {
                const pc = window.phone.peerConnection();
                if (!pc) return null;
                let packetsReceived = 0;
                let packetsSent = 0;
                try {
                    (await pc.getStats()).forEach((r) => {
                        if (r.type === "inbound-rtp" && r.kind === "audio") packetsReceived += r.packetsReceived;
                        if (r.type === "outbound-rtp" && r.kind === "audio") packetsSent += r.packetsSent;
                    });
                } catch (e) {}
                const d = (x) => (x ? { type: x.type, sdp: x.sdp } : null);
                return {
                    remote: d(pc.remoteDescription),
                    local: d(pc.localDescription),
                    signalingState: pc.signalingState,
                    iceConnectionState: pc.iceConnectionState,
                    connectionState: pc.connectionState,
                    packetsReceived,
                    packetsSent,
                };
            }"""
        )

    def console_text(self) -> str:
        return "\n".join(f"[{c.type}] {c.text}" for c in self.console)

    def close(self) -> None:
        self.page.close()


@contextmanager
def two_phones(
    server: Siptrio, tmp: Path, sipjs_user: str, jssip_user: str
) -> Iterator[tuple[Phone, Phone]]:
    """A SIP.js phone over WS and a JsSIP phone over WSS (trusting the test CA), each in
    its own browser, both registered."""
    with chromium(tmp) as browsers:
        sipjs = Phone(browsers.launch(sipjs_user), server, library="sipjs", user=sipjs_user)
        jssip = Phone(
            browsers.launch(jssip_user, trust_ca=server.certs.ca),
            server,
            library="jssip",
            user=jssip_user,
            ws_url=server.wss_url,
        )
        for phone in (sipjs, jssip):
            phone.register()
        for phone in (sipjs, jssip):
            phone.wait_registration("registered")
        yield sipjs, jssip
