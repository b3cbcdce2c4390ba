"""Call records: one per call attempt, built from the core's events and kept in the store.

The core reports each initial INVITE when it sets out and when the caller gets its
final answer (core/calls.py), and each dialog's end (core/dialogs.py). A failed
attempt (404, 480, 486, 487, 408 ...) is complete at its answer; an answered one
waits for its dialog's end, which says who hung up and after how long. Finished
records are written in batches, off the event loop, at most a second after they
finish (``GET /cdrs`` writes what is waiting first); records older than
``[cdr] retention_days`` are deleted once an hour. The records' shape and the store
side are store/cdrs.py's.
"""

from __future__ import annotations

import datetime
import logging
import math
import time
from collections import OrderedDict
from typing import Any

import trio

from ..core.calls import CallEvent, CallEventKind
from ..core.dialogs import DialogEvent, DialogEventKind
from ..core.events import Event
from ..sip.errors import SipParseError
from ..sip.uri import SipUri, parse_uri_untrusted
from ..store.cdrs import MAX_PAGE, CallRecord, CallRecordStore, CdrPage, CdrQuery
from .config import Config

__all__ = ["CallRecorder", "QueryError", "parse_query", "parse_status", "parse_when"]

log = logging.getLogger("siptrio.cdr")

FLUSH_SECONDS = 1.0
FLUSH_BATCH = 500  # finished records that trigger a write before the second is up
PURGE_SECONDS = 3600.0
MAX_PENDING = 100_000  # calls set up or talking; beyond it the oldest is written as it is


def _aor(uri: str) -> str:
    try:
        parsed = parse_uri_untrusted(uri)
    except SipParseError:
        return uri
    return parsed.aor() if isinstance(parsed, SipUri) else uri


class CallRecorder:
    """An event-bus listener (``EventBus.listen``) and the task that writes its records."""

    def __init__(self, config: Config, *, node: str) -> None:
        self.node = node
        self.enabled = config.cdr.enable
        self.retention = config.cdr.retention_days * 86400.0
        self.record_route = config.proxy.record_route  # without it no dialog end is seen
        self.pending: OrderedDict[str, CallRecord] = OrderedDict()  # by Call-ID
        self.finished: list[CallRecord] = []
        self.written = 0
        self.failures = 0
        self._wake = trio.Event()
        self._store: CallRecordStore | None = None

    def apply(self, config: Config) -> None:
        """A reload's [cdr] (and whether dialogs are record-routed)."""
        self.enabled = config.cdr.enable
        self.retention = config.cdr.retention_days * 86400.0
        self.record_route = config.proxy.record_route

    # --- events -------------------------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        if not self.enabled:
            return
        if isinstance(event, CallEvent):
            self._call(event)
        elif isinstance(event, DialogEvent) and event.kind is DialogEventKind.ENDED:
            self._dialog_ended(event)

    def _call(self, e: CallEvent) -> None:
        if e.kind is CallEventKind.SETUP:
            self._pend(e.call_id, self._record(e))
            return
        base = self.pending.pop(e.call_id, None) or self._record(e)
        callee = e.callee_peer
        record = _replace(
            base,
            callee_transport=callee.transport.value if callee else base.callee_transport,
            callee_peer=callee.address if callee else base.callee_peer,
            status=e.status or 0,
            reason=e.reason or "",
        )
        if e.kind is CallEventKind.FAILED:
            self._finish(_replace(record, ended_at=e.at, ended_by=e.ended_by, end_reason=None))
            return
        record = _replace(record, answered_at=e.at, media="bridged" if e.bridged else "direct")
        if self.record_route:
            self._pend(e.call_id, record)  # its dialog's end completes it
        else:
            self._finish(record)

    def _dialog_ended(self, event: DialogEvent) -> None:
        d = event.dialog
        if d.answered_at is None:
            return  # an early dialog: its call's final answer tells the story
        record = self.pending.pop(d.call_id, None)
        if record is None or record.answered_at is None:
            if record is not None:
                self.pending[d.call_id] = record
            return
        ended = d.ended_at if d.ended_at is not None else d.answered_at
        self._finish(
            _replace(
                record,
                ended_at=ended,
                duration=round(max(0.0, ended - d.answered_at), 3),
                ended_by=d.ended_by,
                end_reason=d.end_reason,
                media=d.media,
            )
        )

    def _record(self, e: CallEvent) -> CallRecord:
        return CallRecord(
            call_id=e.call_id,
            caller=e.caller,
            callee=e.callee,
            caller_aor=_aor(e.caller),
            callee_aor=_aor(e.callee),
            request_uri=e.request_uri,
            caller_transport=e.caller_peer.transport.value,
            callee_transport=None,
            caller_peer=e.caller_peer.address,
            callee_peer=None,
            started_at=e.started_at,
            answered_at=None,
            ended_at=None,
            duration=None,
            status=0,
            reason="",
            ended_by=None,
            end_reason=None,
            media="direct",
            node=self.node,
        )

    def _pend(self, call_id: str, record: CallRecord) -> None:
        self.pending[call_id] = record
        self.pending.move_to_end(call_id)
        while len(self.pending) > MAX_PENDING:
            _, oldest = self.pending.popitem(last=False)
            log.warning("more than %d calls under way: call %s recorded unfinished",
                        MAX_PENDING, oldest.call_id)  # fmt: skip
            self._finish(oldest)

    def _finish(self, record: CallRecord) -> None:
        self.finished.append(record)
        if len(self.finished) >= FLUSH_BATCH:
            self._wake.set()

    # --- the store ----------------------------------------------------------------------------

    async def run(
        self,
        store: CallRecordStore,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Write finished records (once a second, or at once in a burst); purge hourly."""
        self._store = store
        task_status.started()
        next_purge = trio.current_time()
        try:
            while True:
                with trio.move_on_after(FLUSH_SECONDS):
                    await self._wake.wait()
                self._wake = trio.Event()
                await self.flush()
                if trio.current_time() >= next_purge:
                    next_purge = trio.current_time() + PURGE_SECONDS
                    await self._purge(store)
        finally:
            with trio.CancelScope(shield=True):
                await self.flush()

    async def flush(self) -> None:
        store = self._store
        if store is None or not self.finished:
            return
        batch, self.finished = self.finished, []
        try:
            await trio.to_thread.run_sync(store.add_cdrs, batch)
        except Exception:
            self.failures += len(batch)
            log.exception("%d call records could not be stored", len(batch))
            return
        self.written += len(batch)

    async def _purge(self, store: CallRecordStore) -> None:
        before = time.time() - self.retention
        try:
            gone = await trio.to_thread.run_sync(store.purge_cdrs, before)
        except Exception:
            log.exception("deleting call records older than %g days failed", self.retention / 86400)
            return
        if gone:
            log.info("deleted %d call records older than %g days", gone, self.retention / 86400)

    async def query(self, query: CdrQuery) -> CdrPage:
        """The records matching ``query``, newest first (what is waiting is written first)."""
        await self.flush()
        store = self._store
        if store is None:
            return CdrPage([], 0)
        page: CdrPage = await trio.to_thread.run_sync(store.cdrs, query)
        return page


def _replace(record: CallRecord, **changes: Any) -> CallRecord:
    import dataclasses

    return dataclasses.replace(record, **changes)


# --- what an operator asks -------------------------------------------------------------------


class QueryError(ValueError):
    """A filter that does not parse; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def parse_when(text: str, field: str = "since") -> float:
    """Seconds since the epoch, or ISO-8601 (a date, or a date and time; UTC unless an
    offset says otherwise)."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(value):
            return value
        raise QueryError(field, f"{text!r} is not a time")
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(
            field, f"{text!r} is not a time: give ISO-8601 (2026-05-01T12:00:00Z) or epoch seconds"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def parse_status(text: str) -> tuple[int | None, int | None]:
    """``404`` (exact) or ``4xx`` (class) as (status, class)."""
    text = text.strip().lower()
    if len(text) == 3 and text.endswith("xx") and text[0] in "123456":
        return None, int(text[0])
    if text.isdigit() and 100 <= int(text) <= 699:
        return int(text), None
    raise QueryError("status", f"{text!r}: expected a status code (404) or a class (4xx)")


MAX_OFFSET = 2**62  # SQLite's integers are 64-bit: a larger offset is no page anyway


def parse_query(
    *,
    since: str | None = None,
    until: str | None = None,
    aor: str | None = None,
    status: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> CdrQuery:
    if not 1 <= limit <= MAX_PAGE:
        raise QueryError("limit", f"expected 1..{MAX_PAGE}")
    if not 0 <= offset <= MAX_OFFSET:
        raise QueryError("offset", f"expected 0..{MAX_OFFSET}")
    exact, klass = parse_status(status) if status else (None, None)
    who = None
    if aor:
        who = aor.strip()
        if "@" in who:
            who = _aor(who if who.lower().startswith(("sip:", "sips:")) else f"sip:{who}")
    return CdrQuery(
        since=parse_when(since, "since") if since else None,
        until=parse_when(until, "until") if until else None,
        aor=who,
        status=exact,
        status_class=klass,
        limit=limit,
        offset=offset,
    )
