"""A siptrio server with its admin API and control socket running, and clients for both."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio
from support.client import SipClient
from support.server import RunningServer, running_server
from support.ua import UA

OPS_DEFAULTS = {
    "sip.domains": "example.com",
    "sip_websocket.enable": "true",
    "admin.enable": "true",
    "admin.listen_addr": "127.0.0.1",
    "admin.listen_port": "0",
    "control.enable": "true",
}


@dataclass
class OpsServer:
    rs: RunningServer
    base_url: str
    socket_path: str

    @property
    def server(self):  # type: ignore[no-untyped-def]
        return self.rs.server

    def http(self, token: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=30)

    async def ua(self, nursery: trio.Nursery, transport: str, user: str) -> UA:
        client = await SipClient.connect(transport, *self.rs.addr(transport), nursery=nursery)
        ua = UA(client, user)
        await ua.register()
        return ua


@asynccontextmanager
async def ops_server(
    tmp_path: Path, overrides: Mapping[str, str] | None = None
) -> AsyncIterator[OpsServer]:
    socket_path = tmp_path / "run" / "control.sock"
    values = {**OPS_DEFAULTS, "control.socket": str(socket_path), **(overrides or {})}
    async with running_server(tmp_path, values) as rs:
        ops = rs.server.ops  # Server.run started the admin API and the control socket
        assert ops.admin_port is not None and ops.control_socket == str(socket_path)
        yield OpsServer(rs, f"http://127.0.0.1:{ops.admin_port}", str(socket_path))


class ControlClient:
    """One connection to the control socket, reading newline-delimited JSON."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._buffer = b""
        self._ids = 0
        self.seen: list[dict[str, Any]] = []  # every message read, in order

    @classmethod
    async def connect(cls, path: str) -> ControlClient:
        return cls(await trio.open_unix_socket(path))

    async def read(self, timeout: float = 10.0) -> dict[str, Any]:
        with trio.fail_after(timeout):
            while b"\n" not in self._buffer:
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError("the control socket closed")
                self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        msg = json.loads(line)
        self.seen.append(msg)
        return msg

    async def until(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        with trio.fail_after(timeout):
            while True:
                msg = await self.read(timeout)
                if pred(msg):
                    return msg

    async def send(self, msg: dict[str, Any]) -> None:
        await self.stream.send_all(json.dumps(msg).encode() + b"\n")

    async def command(self, cmd: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        self._ids += 1
        ident = self._ids
        await self.send({"cmd": cmd, "id": ident, **fields})
        return await self.until(lambda m: m["type"] == "reply" and m["id"] == ident, timeout)

    async def aclose(self) -> None:
        await self.stream.aclose()
