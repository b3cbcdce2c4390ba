"""Tests for siptrio.app.config: defaults, a full file, overrides, paths, the example.

Every error with its location is test_config_errors.py.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import textwrap
from pathlib import Path

import pytest

from siptrio.app.config import (
    _SECTIONS,
    AdminConfig,
    Config,
    ControlConfig,
    LoggingConfig,
    ProxyConfig,
    RegistrarSection,
    SipConfig,
    TlsConfig,
    WebSocketConfig,
    config_as_dict,
    default_control_socket,
    default_database_path,
    load_config,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "examples" / "config.ini"


def write(tmp_path: Path, text: str, name: str = "config.ini") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


# --- defaults and a full file --------------------------------------------------------


def test_no_file_gives_the_defaults() -> None:
    config = load_config()
    assert config == Config()
    assert config.source is None
    assert config.sip == SipConfig()
    assert config.sip.listen_addr == ("127.0.0.1",)
    assert (config.sip.udp_port, config.sip.tcp_port) == (5060, 5060)
    assert (config.sip.t1, config.sip.t2, config.sip.t4) == (0.5, 4.0, 5.0)
    assert config.tls.enable is False
    assert config.tls.listen_addr is None
    assert config.websocket.allowed_origins == ("http://localhost:8088", "http://127.0.0.1:8088")
    assert config.registrar.database == default_database_path()
    assert config.control.socket == default_control_socket()
    assert config.logging.level == "INFO"


def test_an_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "# nothing here\n")
    assert load_config(path) == dataclasses.replace(Config(), source=str(path))


def test_full_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [sip]
        listen_addr = 0.0.0.0, ::1 ,[2001:db8::1]
        udp_port = 0
        tcp_port = 5070
        domains = Example.COM, sip.example.org
        max_message_size = 4096
        max_headers = 64
        idle_timeout = 12.5
        t1 = 0.25
        t2 = 2
        t4 = 3
        udp_enable = no
        tcp_enable = off

        [sip_tls]
        enable = yes
        listen_addr = 10.0.0.1
        listen_port = 5161
        cert_file = /etc/siptrio/cert.pem
        key_file = /etc/siptrio/key.pem
        ca_file = /etc/siptrio/ca.pem
        verify_client = Required

        [sip_websocket]
        enable = 0
        listen_addr = ::
        listen_port = 8081
        wss_enable = 1
        wss_listen_port = 8444
        wss_cert_file = /etc/siptrio/wss.pem
        wss_key_file = /etc/siptrio/wss.key
        allowed_origins = HTTPS://App.Example.com:443/, http://[::1]:3000,
            http://localhost
        allow_missing_origin = false
        keepalive_interval = 30
        keepalive_timeout = 5
        keepalive_mechanism = BOTH
        handshake_timeout = 2
        max_connections = 50
        max_connections_per_ip = 5
        max_message_size = 131072

        [registrar]
        MIN_EXPIRES = 30
        default_expires = 600
        max_expires = 600
        max_contacts = 3
        database = :memory:

        [proxy]
        allowed_destinations = 10.0.0.0/8, 192.168.1.7, 2001:db8::1/32
        record_route = false
        max_dialog_duration = 60

        [admin]
        enable = false
        listen_addr = ::1
        listen_port = 9000
        token = s3cr%t;#x

        [control]
        enable = false
        socket = /run/siptrio.sock

        [logging]
        level = debug
        sip_trace = true
        """,
    )
    config = load_config(path)
    assert config == Config(
        sip=SipConfig(
            listen_addr=("0.0.0.0", "::1", "2001:db8::1"),
            udp_port=0,
            tcp_port=5070,
            domains=("example.com", "sip.example.org"),
            max_message_size=4096,
            max_headers=64,
            idle_timeout=12.5,
            t1=0.25,
            t2=2.0,
            t4=3.0,
            udp_enable=False,
            tcp_enable=False,
        ),
        tls=TlsConfig(
            enable=True,
            listen_addr=("10.0.0.1",),
            listen_port=5161,
            cert_file="/etc/siptrio/cert.pem",
            key_file="/etc/siptrio/key.pem",
            ca_file="/etc/siptrio/ca.pem",
            verify_client="required",
        ),
        websocket=WebSocketConfig(
            enable=False,
            listen_addr=("::",),
            listen_port=8081,
            wss_enable=True,
            wss_listen_port=8444,
            wss_cert_file="/etc/siptrio/wss.pem",
            wss_key_file="/etc/siptrio/wss.key",
            allowed_origins=("https://app.example.com", "http://[::1]:3000", "http://localhost"),
            allow_missing_origin=False,
            keepalive_interval=30.0,
            keepalive_timeout=5.0,
            keepalive_mechanism="both",
            handshake_timeout=2.0,
            max_connections=50,
            max_connections_per_ip=5,
            max_message_size=131072,
        ),
        registrar=RegistrarSection(
            min_expires=30,
            default_expires=600,
            max_expires=600,
            max_contacts=3,
            database=":memory:",
        ),
        proxy=ProxyConfig(
            allowed_destinations=(
                ipaddress.ip_network("10.0.0.0/8"),
                ipaddress.ip_network("192.168.1.7/32"),
                ipaddress.ip_network("2001:db8::/32"),
            ),
            record_route=False,
            max_dialog_duration=60.0,
        ),
        admin=AdminConfig(enable=False, listen_addr="::1", listen_port=9000, token="s3cr%t;#x"),
        control=ControlConfig(enable=False, socket="/run/siptrio.sock"),
        logging=LoggingConfig(level="DEBUG", sip_trace=True),
        source=str(path),
    )


def test_empty_optional_values_mean_none(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [sip_tls]
        listen_addr =
        ca_file =
        [sip_websocket]
        listen_addr =
        [admin]
        token =
        [sip]
        domains =
        [proxy]
        allowed_destinations =
        """,
    )
    config = load_config(path)
    assert config.tls.listen_addr is None
    assert config.tls.ca_file is None
    assert config.websocket.listen_addr is None
    assert config.admin.token is None
    assert config.sip.domains == ()
    assert config.proxy.allowed_destinations == ()


def test_any_origin(tmp_path: Path) -> None:
    path = write(tmp_path, "[sip_websocket]\nallowed_origins = *\n")
    assert load_config(path).websocket.allowed_origins == ("*",)


def test_schema_covers_every_dataclass_field() -> None:
    for section in _SECTIONS.values():
        names = {f.name for f in dataclasses.fields(section.cls)}
        if section.free is not None:  # [routes]: keys are the user's names
            assert names == {"rules"} and not section.keys
            continue
        assert set(section.keys) == names, section.cls.__name__
        assert section.paths <= names


def test_config_as_dict_is_json(tmp_path: Path) -> None:
    path = write(tmp_path, "[proxy]\nallowed_destinations = 10.1.2.3/8, ::1\n")
    data = config_as_dict(load_config(path))
    assert json.loads(json.dumps(data)) == data
    assert data["proxy"]["allowed_destinations"] == ["10.0.0.0/8", "::1/128"]
    assert data["sip"]["listen_addr"] == ["127.0.0.1"]
    assert data["sip_tls"]["listen_addr"] is None  # named as in files and --set
    assert data["sip_websocket"]["enable"] is True
    assert data["source"] == str(path)
    assert set(data) == {*_SECTIONS, "source"}


# --- overrides ------------------------------------------------------------------------


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[sip]\nudp_port = 5080\ntcp_port = 5081\n")
    config = load_config(path, {"sip.udp_port": " 5070 ", "logging.sip_trace": "true"})
    assert config.sip.udp_port == 5070
    assert config.sip.tcp_port == 5081
    assert config.logging.sip_trace is True


def test_overrides_without_a_file() -> None:
    config = load_config(None, {"registrar.database": ":memory:", "sip.Listen_Addr": "::1"})
    assert config.registrar.database == ":memory:"
    assert config.sip.listen_addr == ("::1",)
    assert config.source is None


def test_an_override_fixes_a_bad_file_value(tmp_path: Path) -> None:
    path = write(tmp_path, "[sip]\nudp_port = abc\n")
    assert load_config(path, {"sip.udp_port": "5060"}).sip.udp_port == 5060


def test_ports_apart_by_protocol_address_or_zero_pass(tmp_path: Path) -> None:
    ok = (
        "[sip]\nudp_port = 5060\ntcp_port = 5060\n"  # UDP and TCP: two sockets
        "[admin]\nlisten_addr = ::1\nlisten_port = 8080\n"  # another address
        "[sip_tls]\nenable = true\nlisten_port = 0\n"
        "[sip_websocket]\nwss_enable = true\nwss_listen_port = 0\n"  # 0: free ports
    )
    config = load_config(write(tmp_path, ok))
    assert config.admin.listen_port == config.websocket.listen_port == 8080
    disabled = "[sip]\ntcp_enable = false\n[sip_websocket]\nlisten_port = 5060\n"
    assert load_config(write(tmp_path, disabled)).websocket.listen_port == 5060


# --- paths ----------------------------------------------------------------------------


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [sip_tls]
        cert_file = certs/server.pem
        key_file = ../keys/server.key
        ca_file = /etc/ssl/ca.pem
        [sip_websocket]
        wss_cert_file = wss.pem
        wss_key_file = ~/wss.key
        [registrar]
        database = :memory:
        [control]
        socket = run/control.sock
        """,
        name="etc/config.ini",
    )
    config = load_config(path)
    assert config.tls.cert_file == str(tmp_path / "etc" / "certs" / "server.pem")
    assert config.tls.key_file == str(tmp_path / "keys" / "server.key")
    assert config.tls.ca_file == "/etc/ssl/ca.pem"
    assert config.websocket.wss_cert_file == str(tmp_path / "etc" / "wss.pem")
    assert config.websocket.wss_key_file == os.path.expanduser("~/wss.key")
    assert config.registrar.database == ":memory:"
    assert config.control.socket == str(tmp_path / "etc" / "run" / "control.sock")


def test_relative_paths_from_a_relative_config_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "[registrar]\ndatabase = data/siptrio.sqlite\n", name="conf/config.ini")
    monkeypatch.chdir(tmp_path)
    config = load_config("conf/config.ini")
    assert config.source == "conf/config.ini"
    assert config.registrar.database == str(tmp_path / "conf" / "data" / "siptrio.sqlite")


def test_relative_paths_without_a_file_or_from_overrides_are_kept(tmp_path: Path) -> None:
    assert load_config().tls.cert_file == "certs/server.pem"
    path = write(tmp_path, "[sip_tls]\nenable = true\n", name="etc/config.ini")
    config = load_config(path, {"sip_tls.key_file": "mine.key"})
    assert config.tls.key_file == "mine.key"
    assert config.tls.cert_file == "certs/server.pem"  # a default, not from the file


def test_default_paths_follow_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", "/state")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert default_database_path() == "/state/siptrio/siptrio.sqlite"
    assert default_control_socket() == "/run/user/1000/siptrio/control.sock"
    assert load_config().registrar.database == "/state/siptrio/siptrio.sqlite"
    assert load_config().control.socket == "/run/user/1000/siptrio/control.sock"


def test_default_paths_without_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/alice")
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "")
    assert default_database_path() == "/home/alice/.local/state/siptrio/siptrio.sqlite"
    assert default_control_socket() == f"/tmp/siptrio-{os.getuid()}/control.sock"


# --- the example ------------------------------------------------------------------------


def test_example_config_gives_the_defaults() -> None:
    config = load_config(EXAMPLE)
    assert config.source == str(EXAMPLE)
    # The example points at the repository's certs/, the defaults' directory when the
    # server runs from the repository root.
    cert = str(REPO_ROOT / "certs" / "server.pem")
    key = str(REPO_ROOT / "certs" / "server.key")
    assert config.tls == TlsConfig(cert_file=cert, key_file=key)
    assert config.websocket == WebSocketConfig(wss_cert_file=cert, wss_key_file=key)
    defaults = Config(source=str(EXAMPLE), tls=config.tls, websocket=config.websocket)
    assert config == defaults  # database and socket: left unset, so the same defaults


def test_example_config_documents_every_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    for name, section in _SECTIONS.items():
        assert f"\n[{name}]\n" in text
        for key in section.keys:
            assert f"\n{key} =" in text or f"\n# {key} =" in text, f"[{name}] {key}"
