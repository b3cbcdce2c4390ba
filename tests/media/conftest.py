"""A real rtpengine (Debian's rtpengine-daemon, userspace) per test, stopped by PID."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.rtpengine import Rtpengine


@pytest.fixture
def rtpengine(tmp_path: Path) -> Iterator[Rtpengine]:
    if shutil.which("rtpengine") is None:
        pytest.skip("rtpengine is not installed (apt-get install rtpengine-daemon)")
    engine = Rtpengine(tmp_path)
    yield engine
    engine.stop()
