"""Tests for siptrio.app.config's errors: each names the file, line, section and key
(or the command line's --set) and says what was expected."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from siptrio.app.config import ConfigError, load_config


def write(tmp_path: Path, text: str, name: str = "config.ini") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def error_of(path: Path | None, overrides: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


# --- errors name file, line, section and key -----------------------------------------

ERRORS = {
    "unknown section": (
        """
        [sip]
        udp_port = 5060
        [sipp]
        tcp_port = 5060
        """,
        "{path}:3: unknown section [sipp]; known sections: admin, auth, capture, cdr, cluster, control, dns, logging, media, proxy, "
        "registrar, routes, security, sip, sip_tls, sip_websocket",
    ),
    "DEFAULT is not special": (
        "[DEFAULT]\nudp_port = 1\n",
        "{path}:1: unknown section [DEFAULT]",
    ),
    "unknown key": (
        """
        # comment
        [sip]

        udp_port = 5060
        ; another comment
        udp_prot = 5070
        """,
        "{path}:6: [sip] udp_prot: unknown key; known keys in [sip]: advertised_address, domains, idle_timeout, "
        "listen_addr, max_headers, max_message_size, t1, t2, t4, tcp_enable, tcp_port, "
        "udp_enable, udp_port; did you mean udp_port?",
    ),
    "bad int": (
        "[logging]\nlevel = INFO\n[sip]\nudp_port = abc\n",
        '{path}:4: [sip] udp_port = "abc": expected an integer port 0..65535',
    ),
    "int out of range": (
        "[sip]\ntcp_port = 65536\n",
        '{path}:2: [sip] tcp_port = "65536": expected an integer port 0..65535',
    ),
    "inline comment": (
        "[sip]\nudp_port = 5060 ; the port\n",
        '{path}:2: [sip] udp_port = "5060 ; the port": expected an integer port 0..65535 '
        "(comments must be on a line of their own)",
    ),
    "bad bool": (
        "[logging]\nsip_trace = maybe\n",
        '{path}:2: [logging] sip_trace = "maybe": expected a boolean: true/false, yes/no, '
        "on/off or 1/0",
    ),
    "bad float": (
        "[sip]\nt1 = 0\n",
        '{path}:2: [sip] t1 = "0": expected a number of seconds > 0',
    ),
    "nan": (
        "[proxy]\nmax_dialog_duration = nan\n",
        '{path}:2: [proxy] max_dialog_duration = "nan": expected a number of seconds > 0',
    ),
    "bad choice": (
        "[logging]\nlevel = verbose\n",
        '{path}:2: [logging] level = "verbose": expected one of DEBUG, INFO, WARNING, ERROR',
    ),
    "bad address": (
        "[sip]\nlisten_addr = 127.0.0.1, localhost\n",
        '{path}:2: [sip] listen_addr = "127.0.0.1, localhost": expected a comma-separated '
        "list of IPv4/IPv6 addresses, e.g. 127.0.0.1, ::1; 'localhost' is not an IPv4 or "
        "IPv6 address",
    ),
    "no address": (
        "[sip]\nlisten_addr =\n",
        '{path}:2: [sip] listen_addr = "": expected a comma-separated list of IPv4/IPv6 addresses',
    ),
    "bad admin address": (
        "[admin]\nlisten_addr = 127.0.0.1, ::1\n",
        '{path}:2: [admin] listen_addr = "127.0.0.1, ::1": expected one IPv4 or IPv6 address',
    ),
    "bad domain": (
        "[sip]\ndomains = example.com, exa mple.org\n",
        '{path}:2: [sip] domains = "example.com, exa mple.org": expected a comma-separated '
        "list of domain names",
    ),
    "bad CIDR": (
        "[proxy]\nrecord_route = true\nallowed_destinations = 10.0.0.0/8, 10.0.0.0/33\n",
        '{path}:3: [proxy] allowed_destinations = "10.0.0.0/8, 10.0.0.0/33": expected a '
        "comma-separated list of networks in CIDR notation, e.g. 10.0.0.0/8, 2001:db8::/32; "
        "'10.0.0.0/33' is not one",
    ),
    "bad origin": (
        "[sip_websocket]\nallowed_origins = http://localhost:8088/phone\n",
        '{path}:2: [sip_websocket] allowed_origins = "http://localhost:8088/phone": expected '
        "* or a comma-separated list of origins scheme://host[:port] (scheme http or https), "
        "e.g. http://localhost:8088; 'http://localhost:8088/phone' is not an origin",
    ),
    "origin without scheme": (
        "[sip_websocket]\nallowed_origins = localhost:8088\n",
        "'localhost:8088' is not an origin",
    ),
    "star among origins": (
        "[sip_websocket]\nallowed_origins = *, http://localhost\n",
        "'*' (any origin) must be the only value",
    ),
    "min expires above default": (
        "[registrar]\nmax_expires = 7200\nmin_expires = 7000\n",
        "{path}:3: [registrar] min_expires: expected 0 < min_expires <= default_expires <= "
        "max_expires; got min_expires = 7000, default_expires = 3600, max_expires = 7200",
    ),
    "max expires below default": (
        "[registrar]\nmax_expires = 600\n",
        "{path}:2: [registrar] max_expires: expected 0 < min_expires <= default_expires <= "
        "max_expires; got min_expires = 60, default_expires = 3600, max_expires = 600",
    ),
    "t2 below t1": (
        "[sip]\nt2 = 0.25\n",
        "{path}:2: [sip] t2: expected t2 >= t1; got t1 = 0.5, t2 = 0.25",
    ),
    "duplicate key": (
        "[sip]\nudp_port = 5060\ntcp_port = 5060\nUDP_PORT = 5070\n",
        "{path}:4: [sip] udp_port: duplicate key; first set on line 2",
    ),
    "duplicate section": (
        "[sip]\nudp_port = 5060\n\n[sip]\ntcp_port = 5060\n",
        "{path}:4: duplicate section [sip]; first on line 1",
    ),
    "missing section header": (
        "# settings\nudp_port = 5060\n[sip]\n",
        '{path}:2: "udp_port = 5060" comes before any [section] header',
    ),
    "unparsable line": (
        "[sip]\nudp_port = 5060\njust words\n",
        '{path}:3: cannot parse "just words": expected a [section] header, key = value',
    ),
    "empty path": (
        "[sip_tls]\ncert_file =\n",
        '{path}:2: [sip_tls] cert_file = "": expected a file path',
    ),
    "a rate is per second": (
        "[security]\nrate_limit = -5\n",
        '{path}:2: [security] rate_limit = "-5": expected a number of requests per second > 0',
    ),
    "SIP, WebSocket and admin on one port": (
        "[sip]\ntcp_port = 5070\n[sip_websocket]\nlisten_port = 5070\n[admin]\nlisten_port = 5070\n",
        "{path}:4: [sip_websocket] listen_port: TCP port 5070 on 127.0.0.1 is also [sip] tcp_port; "
        "expected a port no other listener uses (0 picks a free one)",
    ),
    "admin on the WebSocket port, the admin set last": (
        "[admin]\nlisten_port = 8080\n",
        "{path}:2: [admin] listen_port: TCP port 8080 on 127.0.0.1 is also [sip_websocket] listen_port",
    ),
    "a wildcard covers its family": (
        "[sip]\nlisten_addr = 0.0.0.0\n[sip_tls]\nenable = true\nlisten_addr = 127.0.0.1\nlisten_port = 5060\n",
        "{path}:6: [sip_tls] listen_port: TCP port 5060 on 127.0.0.1 is also [sip] tcp_port",
    ),
}


@pytest.mark.parametrize(("text", "expected"), list(ERRORS.values()), ids=list(ERRORS))
def test_error_names_file_line_section_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    message = error_of(path)
    formatted = expected.format(path=path)
    if formatted.startswith(str(path)):
        assert message.startswith(formatted)
    else:
        assert formatted in message


def test_line_numbers_skip_continuation_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [sip_websocket]
        allowed_origins =
            http://a.example,
            http://b.example
        listen_port = eighty
        """,
    )
    assert error_of(path).startswith(f'{path}:5: [sip_websocket] listen_port = "eighty"')


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.ini"
    message = error_of(path)
    assert message.startswith(f"cannot read config file {path}: ")
    assert "No such file" in message


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert error_of(tmp_path).startswith(f"cannot read config file {tmp_path}: ")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "config.ini"
    path.write_bytes(b"[sip]\ndomains = \xff\n")
    assert error_of(path).startswith(f"cannot read config file {path}: not UTF-8 text")


# --- overrides on the command line ----------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"sip.udp_port": "abc"},
            'command line --set sip.udp_port: [sip] udp_port = "abc": expected an integer '
            "port 0..65535",
        ),
        (
            {"sipp.udp_port": "1"},
            "command line --set sipp.udp_port: unknown section [sipp]; known sections: admin,",
        ),
        (
            {"sip.udp_prot": "1"},
            "command line --set sip.udp_prot: [sip] udp_prot: unknown key; known keys in [sip]:",
        ),
        (
            {"udp_port": "1"},
            "command line --set udp_port: expected SECTION.KEY=VALUE",
        ),
        (
            {"registrar.min_expires": "7200"},
            "command line --set registrar.min_expires: [registrar] min_expires: expected "
            "0 < min_expires <= default_expires <= max_expires",
        ),
    ],
)
def test_bad_overrides_name_the_override(
    tmp_path: Path, overrides: dict[str, str], expected: str
) -> None:
    path = write(tmp_path, "[registrar]\ndefault_expires = 3600\n")
    assert error_of(path, overrides).startswith(expected)


def test_cross_check_blames_the_override_set_last(tmp_path: Path) -> None:
    path = write(tmp_path, "[registrar]\nmax_expires = 600\ndefault_expires = 600\n")
    message = error_of(path, {"registrar.min_expires": "700"})
    assert message.startswith("command line --set registrar.min_expires: [registrar] min_expires")
