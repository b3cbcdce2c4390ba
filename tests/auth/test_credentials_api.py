"""Issuing credentials: POST /credentials on the admin API, ``siptrio credentials``, the keys.

The issued credential is checked against openssl's HMAC and then used: it registers
at the server that issued it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from support.client import SipClient
from support.digest import authorization, challenges
from support.ephemeral import SECOND, SECRET, openssl_password
from support.server import RunningServer, running_server

from siptrio.app.config import ConfigError, load_config
from siptrio.app.server import Server

TOKEN = "web-app-backend-token"
TURN = "turn:127.0.0.1:3478?transport=udp, turns:turn.example.com:5349"
SETTINGS = {
    "auth.enable": "true",
    "auth.ephemeral_secrets": f"{SECRET}, {SECOND}",
    "auth.ephemeral_max_ttl": "7200",
    "auth.turn_uris": TURN,
    "sip_websocket.listen_port": "0",
    "admin.token": TOKEN,
}


@dataclass
class Admin:
    rs: RunningServer
    base_url: str

    @property
    def server(self) -> Server:
        return self.rs.server

    def http(self, token: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=30)


@asynccontextmanager
async def ops_server(
    tmp_path: Path, settings: Mapping[str, str] | None = None
) -> AsyncIterator[Admin]:
    """siptrio with WS and its admin API on 127.0.0.1 port 0."""
    values = {
        "sip.domains": "example.com",
        "sip_websocket.enable": "true",
        "admin.enable": "true",
        "admin.listen_port": "0",
        **(settings or {}),
    }
    async with running_server(tmp_path, values) as rs:
        yield Admin(rs, f"http://127.0.0.1:{rs.server.ops.admin_port}")


async def register_with(c: SipClient, user: str, username: str, password: str) -> int:
    first = await c.request(c.register(user))
    ch = challenges(first.values("www-authenticate"))["MD5"]
    auth = authorization(
        ch, method="REGISTER", uri="sip:example.com", user=username, password=password
    )
    return (await c.request(c.register(user, headers=(("Authorization", auth),)))).status


async def test_issued_credential_registers(tmp_path: Path) -> None:
    async with ops_server(tmp_path, SETTINGS) as ops:
        async with ops.http(TOKEN) as http:
            before = time.time()
            r = await http.post("/credentials", json={"user": "alice", "ttl": 600})
        assert r.status_code == 200, r.text
        assert r.headers["cache-control"] == "no-store"
        body = r.json()
        assert before + 599 <= body["expires"] <= time.time() + 601
        assert body["username"] == f"{body['expires']}:alice"
        assert body["password"] == openssl_password(SECRET, body["username"])
        assert (body["ttl"], body["capped"], body["message"]) == (600, False, None)
        assert body["realm"] == "example.com"
        [ws] = [li for li in ops.server.listeners if li.transport.value == "ws"]
        assert body["uris"] == [f"ws://127.0.0.1:{ws.port}"]
        # coturn's REST API answer, same secret; also an RTCIceServer (credential)
        assert body["turn"] == {
            "username": body["username"],
            "password": body["password"],
            "credential": body["password"],
            "ttl": 600,
            "uris": ["turn:127.0.0.1:3478?transport=udp", "turns:turn.example.com:5349"],
        }
        c = await SipClient.connect("udp", *ops.rs.addr("udp"))
        assert await register_with(c, "alice", body["username"], body["password"]) == 200


async def test_bearer_token_required(tmp_path: Path) -> None:
    async with ops_server(tmp_path, SETTINGS) as ops:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            async with ops.http() as http:
                r = await http.post("/credentials", json={"user": "alice"}, headers=headers)
            assert r.status_code == 401, headers
            assert r.json()["error"] == "missing or wrong bearer token"
            assert r.headers["www-authenticate"] == 'Bearer realm="siptrio"'


async def test_ttl_over_the_maximum_is_capped_and_said(tmp_path: Path) -> None:
    async with ops_server(tmp_path, SETTINGS) as ops:
        async with ops.http(TOKEN) as http:
            r = await http.post("/credentials", json={"user": "bob", "ttl": 100000})
            default = await http.post("/credentials", json={"user": "bob"})
        body = r.json()
        assert r.status_code == 200
        assert (body["ttl"], body["capped"]) == (7200, True)
        assert body["message"] == (
            "ttl 100000 is over [auth] ephemeral_max_ttl = 7200: capped to 7200"
        )
        assert body["turn"]["ttl"] == 7200
        assert abs(body["expires"] - (time.time() + 7200)) < 5
        assert (default.json()["ttl"], default.json()["capped"]) == (3600, False)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user": "al:ice"}, "user"),
        ({"user": 'a"b'}, "user"),
        ({"user": ""}, "user"),
        ({"user": "alice", "ttl": 0}, "ttl"),
        ({"user": "alice", "ttl": "60"}, "ttl"),
        ({"user": "alice", "extra": 1}, "extra"),
        ({}, "user"),
    ],
)
async def test_bad_requests_name_the_field(
    tmp_path: Path, body: dict[str, Any], field: str
) -> None:
    async with ops_server(tmp_path, SETTINGS) as ops, ops.http(TOKEN) as http:
        r = await http.post("/credentials", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field


async def test_without_secrets_409(tmp_path: Path) -> None:
    async with ops_server(tmp_path) as ops, ops.http() as http:
        r = await http.post("/credentials", json={"user": "alice"})
    assert r.status_code == 409
    assert r.json()["error"] == "this server issues no credentials: set [auth] ephemeral_secrets"


async def test_openapi_describes_the_route(tmp_path: Path) -> None:
    async with ops_server(tmp_path) as ops, ops.http() as http:
        schema = (await http.get("/openapi.json")).json()
    post = schema["paths"]["/credentials"]["post"]
    assert set(post["responses"]) >= {"200", "401", "409", "422"}
    request = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    model = schema["components"]["schemas"][request.rsplit("/", 1)[1]]
    assert model["required"] == ["user"] and set(model["properties"]) == {"user", "ttl"}
    answer = post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    issued = schema["components"]["schemas"][answer.rsplit("/", 1)[1]]
    assert {"username", "password", "expires", "uris", "turn", "capped"} <= set(
        issued["properties"]
    )


async def test_wss_uri_first(tmp_path: Path) -> None:
    from siptrio.app.certs import write_dev_certs

    certs = write_dev_certs(tmp_path / "certs", ["127.0.0.1"])
    more = {
        **SETTINGS,
        "sip_websocket.wss_enable": "true",
        "sip_websocket.wss_listen_port": "0",
        "sip_websocket.wss_cert_file": str(certs.cert),
        "sip_websocket.wss_key_file": str(certs.key),
        "sip.advertised_address": "sip.example.com",
    }
    async with ops_server(tmp_path, more) as ops, ops.http(TOKEN) as http:
        uris = (await http.post("/credentials", json={"user": "a"})).json()["uris"]
        ports = {li.transport.value: li.port for li in ops.server.listeners}
    assert uris == [f"wss://sip.example.com:{ports['wss']}", f"ws://sip.example.com:{ports['ws']}"]


# --- the command line ----------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "siptrio", "credentials", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_cli_prints_what_the_api_answers(tmp_path: Path) -> None:
    config = tmp_path / "siptrio.ini"
    config.write_text(
        "[sip]\ndomains = example.com\n"
        "[sip_websocket]\nlisten_port = 8090\n"
        f"[auth]\nephemeral_secrets = {SECRET}, {SECOND}\nephemeral_max_ttl = 7200\n"
        f"turn_uris = {TURN}\n"
    )
    done = cli("alice", "--ttl", "100000", "-c", str(config))
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["username"] == f"{body['expires']}:alice"
    assert body["password"] == openssl_password(SECRET, body["username"])
    assert (body["ttl"], body["capped"]) == (7200, True)
    assert "capped to 7200" in done.stderr and "capped to 7200" in body["message"]
    assert body["uris"] == ["ws://127.0.0.1:8090"]
    assert body["turn"]["uris"] == ["turn:127.0.0.1:3478?transport=udp", "turns:turn.example.com:5349"]  # fmt: skip
    assert set(body) == {
        "username", "password", "expires", "ttl", "capped", "message", "realm", "uris", "turn",
    }  # fmt: skip


def test_cli_refuses_without_secrets_or_with_a_bad_user(tmp_path: Path) -> None:
    config = tmp_path / "siptrio.ini"
    config.write_text("[auth]\nenable = true\n")
    done = cli("alice", "-c", str(config))
    assert done.returncode == 2 and "set [auth] ephemeral_secrets" in done.stderr
    config.write_text(f"[auth]\nephemeral_secrets = {SECRET}\n")
    done = cli("al:ice", "-c", str(config))
    assert done.returncode == 2 and "not a usable SIP user" in done.stderr
    assert done.stdout == ""


async def test_cli_credential_registers_at_a_server_with_that_config(tmp_path: Path) -> None:
    config = tmp_path / "siptrio.ini"
    config.write_text(f"[sip]\ndomains = example.com\n[auth]\nephemeral_secrets = {SECRET}\n")
    done = await trio.to_thread.run_sync(cli, "bob", "-c", str(config))
    body = json.loads(done.stdout)
    settings = {"sip.domains": "example.com", "auth.enable": "true", "auth.ephemeral_secrets": SECRET}  # fmt: skip
    async with running_server(tmp_path, settings) as rs:
        c = await SipClient.connect("tcp", *rs.addr("tcp"))
        assert await register_with(c, "bob", body["username"], body["password"]) == 200


# --- the keys ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "ephemeral_secrets = short",
            'c.ini:3: [auth] ephemeral_secrets = "short": expected a comma-separated list of '
            "secrets of 16 characters or more (no commas or control characters; e.g. "
            "`openssl rand -hex 32`); secret 1 is 5 characters",
        ),
        (
            f"ephemeral_secrets = {SECRET}, {SECRET}",
            f'c.ini:3: [auth] ephemeral_secrets = "{SECRET}, {SECRET}": expected each secret '
            "once; one is listed twice",
        ),
        (
            "algorithms = SHA-512",
            'c.ini:3: [auth] algorithms = "SHA-512": expected SHA-256, MD5 or both, '
            "comma-separated, in the order to offer them",
        ),
        (
            "ephemeral_hash = md5",
            'c.ini:3: [auth] ephemeral_hash = "md5": expected one of sha1, sha256, sha384, sha512',
        ),
        (
            "ephemeral_username_format = user",
            'c.ini:3: [auth] ephemeral_username_format = "user": expected one of expiry:user, '
            "user:expiry",
        ),
        (
            "ephemeral_max_ttl = 0",
            'c.ini:3: [auth] ephemeral_max_ttl = "0": expected an integer number of seconds '
            "1..2147483647",
        ),
        (
            "turn_uris = stun:turn.example.com",
            'c.ini:3: [auth] turn_uris = "stun:turn.example.com": expected a comma-separated '
            "list of TURN URIs (RFC 7065), e.g. turn:turn.example.com:3478?transport=udp, "
            "turns:turn.example.com:5349; 'stun:turn.example.com' is not one",
        ),
        (
            "turn_uris = turn:turn.example.com",
            "c.ini:3: [auth] turn_uris: expected [auth] ephemeral_secrets too (TURN "
            "credentials need it); got turn_uris = ('turn:turn.example.com',)",
        ),
    ],
)
def test_config_errors_name_file_line_and_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: str, expected: str
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("c.ini").write_text(f"[auth]\nenable = true\n{line}\n")
    with pytest.raises(ConfigError) as e:
        load_config("c.ini")
    assert str(e.value) == expected


def test_config_keys() -> None:
    config = load_config(
        None,
        {
            "auth.ephemeral_secrets": f"{SECRET},\n {SECOND}",
            "auth.ephemeral_hash": "SHA256",
            "auth.ephemeral_username_format": "user:expiry",
            "auth.ephemeral_check_user": "no",
            "auth.turn_uris": "turns:[2001:db8::1]:5349?transport=tcp",
            "auth.algorithms": "md5, sha-256",
        },
    )
    assert config.auth.algorithms == ("MD5", "SHA-256")
    assert config.auth.ephemeral_secrets == (SECRET, SECOND)
    assert config.auth.ephemeral_hash == "sha256"
    assert config.auth.ephemeral_username_format == "user:expiry"
    assert config.auth.ephemeral_check_user is False
    assert config.auth.turn_uris == ("turns:[2001:db8::1]:5349?transport=tcp",)
