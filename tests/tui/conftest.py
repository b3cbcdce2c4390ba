"""TUI tests: Textual runs on asyncio, so these are sync tests that run their own loop."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.tui_rig import Siptrio


@pytest.fixture
def siptrio(tmp_path: Path) -> Iterator[Siptrio]:
    s = Siptrio(tmp_path)
    s.start()
    yield s
    s.stop()
