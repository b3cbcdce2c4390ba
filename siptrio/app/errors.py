"""Errors of the app layer that more than one of its modules raises or catches."""

from __future__ import annotations

__all__ = ["StartupError"]


class StartupError(Exception):
    """A problem the operator must fix before the server can run (exit status 1)."""
