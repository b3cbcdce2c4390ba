"""How times and addresses are written in every JSON view, log and report."""

from __future__ import annotations

import datetime

__all__ = ["hostport", "iso"]


def iso(t: float | None) -> str | None:
    """Wall-clock seconds as ISO-8601 UTC with milliseconds, or None."""
    if t is None:
        return None
    moment = datetime.datetime.fromtimestamp(t, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
