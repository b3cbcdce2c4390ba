"""What every store of bindings and users does, whichever its backend, and its errors.

The server holds one store (SQLite by default, Redis for a cluster) and talks to it
only through ``BindingStore``; a store's failures are ``StoreError``, whose message
says what an operator can do about it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..core.location import Binding
from .cdrs import CallRecordStore

__all__ = ["BindingStore", "LoadResult", "StoreError"]


class StoreError(Exception):
    """The store cannot do what was asked; the message says what an operator can do."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadResult:
    """What survived a restart, and what was dropped so the log can say why."""

    bindings: list[Binding]
    expired: int  # expired while the process was down
    stale_flows: int  # tied to a connection of the previous process (RFC 5626)


class BindingStore(CallRecordStore, Protocol):
    """Blocking calls, made from a worker thread (the event loop never waits on I/O),
    except ``stage``, which the loop may call because it never blocks. Every store
    keeps the call records too (store/cdrs.py)."""

    def load(self, now: float) -> LoadResult:
        """Every live binding, after dropping what a restart made useless."""
        ...

    def apply(self, upserts: Sequence[Binding], deletes: Sequence[tuple[str, str]]) -> None:
        """Make a batch of changes durable, all or nothing."""
        ...

    def stage(self, upserts: Sequence[Binding], deletes: Sequence[tuple[str, str]]) -> bool:
        """Do a batch's CPU work now if that cannot block; then commit_staged makes it
        durable. False: nothing was done, call apply instead."""
        ...

    def commit_staged(self) -> None: ...

    def users(self, realm: str) -> dict[str, dict[str, str]]:
        """Digest users of a realm: name -> {algorithm: HA1}."""
        ...

    def set_user(
        self, username: str, realm: str, ha1_md5: str, ha1_sha256: str, now: float
    ) -> bool: ...

    def remove_user(self, username: str, realm: str) -> bool: ...

    def user_rows(self) -> list[tuple[str, str, float, float]]: ...

    def data_version(self) -> int:
        """Changes whenever another process changed the users."""
        ...

    def all(self) -> list[Binding]: ...

    def close(self) -> None: ...
