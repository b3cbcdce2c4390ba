"""``[capture] hep``: the server's HEP tap, put on the hub at start and moved by reloads.

The encoding and sending are the transport's (transport/hep.py); this part only follows
the config: a new collector address or agent id replaces the tap, an empty one
removes it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from ..core.types import Peer
from ..transport.hep import HepTap, parse_target
from .config import Config

__all__ = ["Capture", "CaptureHost"]

log = logging.getLogger("siptrio.capture")


class CaptureHost(Protocol):
    stats: Counter[str]

    def add_tap(self, tap: Callable[[str, bytes, Peer], None]) -> None: ...

    def remove_tap(self, tap: Callable[[str, bytes, Peer], None]) -> None: ...


class Capture:
    def __init__(self, host: CaptureHost) -> None:
        self.host = host
        self.tap: HepTap | None = None
        self._current: tuple[str | None, int] = (None, 0)

    def apply(self, config: Config) -> None:
        """Start, move or stop the capture as ``config`` says (at start, at each reload)."""
        wanted = (config.capture.hep, config.capture.hep_id)
        if wanted == self._current:
            return
        self.close()
        self._current = wanted
        target, agent = wanted
        if target is None:
            return
        self.tap = HepTap(parse_target(target), capture_id=agent, stats=self.host.stats)
        self.host.add_tap(self.tap)
        log.info("HEP capture of every SIP message to %s (capture id %d)", target, agent)

    def close(self) -> None:
        if self.tap is not None:
            self.host.remove_tap(self.tap)
            self.tap.close()
            self.tap = None
            log.info("HEP capture to %s stopped", self._current[0])
        self._current = (None, 0)
