"""The control-socket client: newline-delimited JSON over a Unix socket (asyncio).

Textual runs on asyncio while the server runs on Trio; the two meet only on this
socket, so a crash on either side never touches the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["ControlClient", "Disconnected"]

MAX_LINE = 16 * 1024 * 1024  # a snapshot of a busy server is one long line


class Disconnected(Exception):
    pass


class ControlClient:
    def __init__(self, path: str) -> None:
        self.path = path
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ids = itertools.count(1)

    async def connect(self) -> None:
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(
                self.path, limit=MAX_LINE
            )
        except (OSError, ValueError) as e:
            raise Disconnected(f"cannot connect to {self.path}: {e}") from None

    async def messages(self) -> AsyncIterator[dict[str, Any]]:
        reader = self._reader
        if reader is None:
            raise Disconnected("not connected")
        while True:
            try:
                line = await reader.readline()
            except (OSError, ValueError, asyncio.LimitOverrunError) as e:
                raise Disconnected(str(e)) from None
            if not line:
                raise Disconnected("the server closed the connection")
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if isinstance(msg, dict):
                yield msg

    async def send(self, cmd: str, **fields: Any) -> int:
        """Send a command; returns the id its reply will echo."""
        writer = self._writer
        if writer is None:
            raise Disconnected("not connected")
        ident = next(self._ids)
        writer.write((json.dumps({"cmd": cmd, "id": ident, **fields}) + "\n").encode())
        try:
            await writer.drain()
        except (OSError, ConnectionError) as e:
            raise Disconnected(str(e)) from None
        return ident

    async def close(self) -> None:
        writer = self._writer
        self._reader = self._writer = None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()
