"""examples/trunk.ini, a config with a trunk route, is what ``siptrio check-config`` accepts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from siptrio.core.routing import MatchKind, parse_rule

TRUNK = Path(__file__).resolve().parents[2] / "examples" / "trunk.ini"


def test_the_trunk_example_passes_check_config() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "siptrio", "check-config", str(TRUNK)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    settings = json.loads(result.stdout)
    assert settings["auth"]["enable"] is True  # calls to the trunk cost money
    assert settings["sip"]["domains"] == ["example.com"]
    assert settings["dns"] == {"servers": [], "timeout": 2.0}
    # [routes] as the file writes it: NAME = RULE, in order
    rules = [parse_rule(name, text) for name, text in settings["routes"].items()]
    assert [(r.name, r.kind) for r in rules] == [
        ("us", MatchKind.PREFIX),
        ("intl", MatchKind.USER),
        ("outside", MatchKind.NONLOCAL),
    ]
    us = rules[0]
    assert us.pattern == "+1"
    # two gateways, tried in order: the first over TCP, the second by its name alone
    assert [str(h) for h in us.hops] == [
        "sip:gw1.trunk.example.net;transport=tcp",
        "sip:gw2.trunk.example.net",
    ]
    intl = rules[1]
    assert intl.regex is not None
    assert intl.regex.search("+4930123") and intl.regex.search("0044207")
    assert not intl.regex.search("+15551234567") and not intl.regex.search("alice")
