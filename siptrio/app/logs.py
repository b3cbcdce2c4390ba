"""Where the log goes and what a line looks like: text for people, JSON for shippers.

``[logging] format = text`` writes the classic ``time level logger: message`` line;
``json`` writes one JSON object per line (``time``, ``level``, ``logger``, ``event``
and the line's fields: ``call_id``, ``method``, ``status``, ``peer``, ``flow``,
``aor`` ...), which journald, Loki, Vector or Filebeat take without a multi-line
parser. A ``--sip-trace`` message is a ``sip`` field of its line: in text it follows
the line as before, in JSON it is one escaped string, so one message is one line.

The stdlib ``logging`` with a formatter of our own, not python-json-logger or
structlog: every module already logs through stdlib loggers (structlog would change
each call site, or wrap them and format twice); what a JSON line needs is the
record's ``extra`` fields, about thirty lines here with no new dependency to keep
current; and the hot path pays nothing for lines below the level, as before.

``[logging] file`` (else stderr) is reopened on every reload (SIGHUP), so logrotate's
``postrotate`` ``kill -HUP`` starts a new file without copytruncate.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any, TextIO

from .config import LoggingConfig

__all__ = ["JsonFormatter", "LogFile", "LogSetup", "TextFormatter"]

# What every LogRecord carries; anything else on a record came in through ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
}


def _iso(t: float) -> str:
    moment = datetime.datetime.fromtimestamp(t, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra`` fields a call site gave the record."""
    return {
        k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event, then the line's fields."""

    def __init__(self, *, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        if self.worker is not None:
            out["worker"] = self.worker
        out.update(fields_of(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The classic line; a traced SIP message (the ``sip`` field) follows on its own lines."""

    def __init__(self, *, worker: int | None = None) -> None:
        who = "" if worker is None else f"[w{worker}] "
        super().__init__(f"%(asctime)s %(levelname)-7s {who}%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        sip = getattr(record, "sip", None)
        return f"{line}\n{sip}" if sip else line


class LogFile(logging.FileHandler):
    """A log file that can be reopened where it is named (after logrotate moved it)."""

    def __init__(self, path: str) -> None:
        super().__init__(path, mode="a", encoding="utf-8")

    def reopen(self) -> None:
        """Open the path again; on failure keep writing to the old file, and say so."""
        try:
            fresh = self._open()
        except OSError as e:
            logging.getLogger("siptrio").error(
                "cannot reopen log file %s: %s; still writing to the old one",
                self.baseFilename,
                e.strerror or e,
            )
            return
        self.acquire()
        try:
            old, self.stream = self.stream, fresh
        finally:
            self.release()
        if old is not None:
            old.close()


class LogSetup:
    """The process's one log handler, made from ``[logging]`` and changed by a reload."""

    def __init__(
        self, config: LoggingConfig, *, worker: int | None = None, stream: TextIO | None = None
    ) -> None:
        """Raises OSError when ``[logging] file`` cannot be opened."""
        self.worker = worker
        self.stream = stream if stream is not None else sys.stderr
        self.config = config
        self.handler = self._handler(config)
        root = logging.getLogger()
        for old in list(root.handlers):
            root.removeHandler(old)
        root.addHandler(self.handler)
        self._levels(config)

    def _handler(self, config: LoggingConfig) -> logging.Handler:
        handler: logging.Handler
        handler = LogFile(config.file) if config.file else logging.StreamHandler(self.stream)
        handler.setFormatter(self._formatter(config))
        return handler

    def _formatter(self, config: LoggingConfig) -> logging.Formatter:
        if config.format == "json":
            return JsonFormatter(worker=self.worker)
        return TextFormatter(worker=self.worker)

    @staticmethod
    def _levels(config: LoggingConfig) -> None:
        logging.getLogger().setLevel(getattr(logging, config.level))
        # --sip-trace shows even when the level is WARNING
        trace = logging.getLogger("siptrio.trace")
        trace.setLevel(logging.INFO if config.sip_trace else logging.NOTSET)

    def apply(self, config: LoggingConfig) -> None:
        """A reload's [logging]: level, format and file change at once."""
        if config.file != self.config.file:
            try:
                handler = self._handler(config)
            except OSError as e:
                logging.getLogger("siptrio").error(
                    "[logging] file = %s: cannot open: %s; logging stays where it was",
                    config.file,
                    e.strerror or e,
                )
                return
            root = logging.getLogger()
            root.addHandler(handler)
            root.removeHandler(self.handler)
            self.handler.close()
            self.handler = handler
        elif config.format != self.config.format:
            self.handler.setFormatter(self._formatter(config))
        self._levels(config)
        self.config = config

    def reopen(self) -> None:
        if isinstance(self.handler, LogFile):
            self.handler.reopen()
