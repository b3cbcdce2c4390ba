"""A real redis-server per test, stopped by PID (cluster_support.Redis)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_support import Redis


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Redis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    r = Redis(tmp_path)
    yield r
    r.stop()
