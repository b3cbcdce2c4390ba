"""Shared fixtures. ``support`` (real clients and server harnesses) is importable."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# assertions in these helpers get pytest's messages too, as in a test module
pytest.register_assert_rewrite("support.sip_strategies")


def pytest_collection_modifyitems(config: object, items: list[object]) -> None:
    """``@pytest.mark.loopback_netns``: run the test in a loopback-only namespace."""
    from functools import partial

    from support import netns

    if netns.inside():
        return
    for item in items:
        if item.get_closest_marker("loopback_netns") is not None:  # type: ignore[attr-defined]
            item.runtest = partial(netns.run_inside, item.nodeid)  # type: ignore[attr-defined]
