"""The shared location store for a cluster: bindings, users and node heartbeats in Redis.

Same interface as the SQLite store (load, apply, users ...), so the server does not
care which it has. Every node keeps the whole location in memory (the sans-IO core
reads it synchronously) and keeps it current from a pub/sub channel on which each
node announces what it changed. Redis TTLs expire bindings and heartbeats.

redis-py's synchronous client runs in Trio's worker threads (``trio.to_thread``):
its asyncio client needs an asyncio loop, which a Trio program does not have, and
the thread hop costs less than a second event loop would. Writes are batched like
the SQLite store's, one MULTI/EXEC per burst, and a REGISTER is answered only after
Redis acknowledged it. How durable an acknowledged write is depends on Redis's
persistence (README: ``appendonly yes`` with ``appendfsync always`` loses nothing,
``everysec`` up to a second of changes on a crash of the Redis host).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

import redis

from ..core.location import Binding
from ..core.types import Transport
from .base import LoadResult, StoreError
from .cdrs import CallRecord, CdrPage, CdrQuery, matches

__all__ = ["CHANNEL", "RedisStore", "binding_from_json", "binding_to_json"]

log = logging.getLogger(__name__)

PREFIX = "siptrio:"
CHANNEL = PREFIX + "bindings"
CDRS = PREFIX + "cdrs"  # a sorted set: each call record as JSON, scored by its start
CDR_IDS = PREFIX + "cdr_id"
_FIELDS = tuple(f.name for f in fields(Binding))


def _bkey(aor: str, key: str) -> str:
    return f"{PREFIX}b:{aor}\x00{key}"


def _index(aor: str) -> str:
    return f"{PREFIX}aor:{aor}"


def _node_index(node: str) -> str:
    return f"{PREFIX}nodeb:{node}"


def binding_to_json(b: Binding) -> str:
    values = {name: getattr(b, name) for name in _FIELDS}
    values["transport"] = b.transport.value
    values["path"] = list(b.path)
    return json.dumps(values, ensure_ascii=False, separators=(",", ":"))


def binding_from_json(text: str | bytes) -> Binding:
    values = json.loads(text)
    values["transport"] = Transport(values["transport"])
    values["path"] = tuple(values["path"])
    return Binding(**{k: v for k, v in values.items() if k in _FIELDS})


class RedisStore:
    """One Redis connection pool; every method blocks and is called from a worker thread."""

    def __init__(self, url: str, node: str) -> None:
        self.url = url
        self.node = node
        self._lock = threading.Lock()
        try:
            self._r = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
            self._r.ping()
        except redis.RedisError as e:
            raise StoreError(f"cannot use Redis at {url}: {e}") from e

    def _call(self, doing: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except redis.RedisError as e:
            raise StoreError(f"Redis {self.url}: {doing} failed: {e}") from e

    # --- bindings -------------------------------------------------------------------------

    def load(self, now: float) -> LoadResult:
        """Every live binding of the cluster; this node's old flow-bound ones are dropped.

        A flow belongs to a process: after a restart this node's old flows are gone,
        while the flows of other nodes (alive or not: the heartbeat decides) are not
        this node's to judge.
        """

        def run() -> LoadResult:
            bindings: list[Binding] = []
            stale: list[Binding] = []
            live, expired = self._scan(now)
            for b in live:
                if b.flow_id is not None and b.node == self.node:
                    stale.append(b)
                else:
                    bindings.append(b)
            if stale:
                self._apply([], [(b.aor, b.key) for b in stale], stale)
            return LoadResult(bindings=bindings, expired=expired, stale_flows=len(stale))

        return self._call("load", run)

    def others(self, now: float) -> list[Binding]:
        """The live bindings other nodes made: to catch up after the feed was broken."""
        return self._call(
            "reading bindings", lambda: [b for b in self._scan(now)[0] if b.node != self.node]
        )

    def _scan(self, now: float) -> tuple[list[Binding], int]:
        r = self._r
        keys = list(r.scan_iter(match=f"{PREFIX}b:*", count=1000))
        live: list[Binding] = []
        expired = 0
        for start in range(0, len(keys), 500):
            for value in r.mget(keys[start : start + 500]):
                if value is None:
                    expired += 1
                    continue
                b = binding_from_json(value)
                if b.expires_at <= now:
                    expired += 1
                else:
                    live.append(b)
        return live, expired

    def apply(self, upserts: Sequence[Binding], deletes: Sequence[tuple[str, str]]) -> None:
        """One MULTI/EXEC for the batch, then tell the other nodes."""
        if not upserts and not deletes:
            return
        self._call("write", lambda: self._apply(upserts, deletes, ()))

    def _apply(
        self,
        upserts: Sequence[Binding],
        deletes: Sequence[tuple[str, str]],
        deleted: Sequence[Binding],
    ) -> None:
        pipe = self._r.pipeline(transaction=True)
        for aor, key in deletes:
            pipe.delete(_bkey(aor, key))
            pipe.srem(_index(aor), key)
        for b in deleted:
            if b.node:
                pipe.srem(_node_index(b.node), f"{b.aor}\x00{b.key}")
        for b in upserts:
            pipe.set(_bkey(b.aor, b.key), binding_to_json(b), pxat=int(b.expires_at * 1000))
            pipe.sadd(_index(b.aor), b.key)
            if b.flow_id is not None and b.node:
                pipe.sadd(_node_index(b.node), f"{b.aor}\x00{b.key}")
        note = {
            "node": self.node,
            "upserts": [binding_to_json(b) for b in upserts],
            "deletes": [list(k) for k in deletes],
        }
        pipe.publish(CHANNEL, json.dumps(note, ensure_ascii=False))
        pipe.execute()

    def stage(self, upserts: Sequence[Binding], deletes: Sequence[tuple[str, str]]) -> bool:
        """Nothing to do before the network round trip: apply() does it all."""
        return False

    def commit_staged(self) -> None:
        """(Never staged: see stage.)"""

    def remove_node_flows(self, node: str) -> list[tuple[str, str]]:
        """A dead node's flows are gone: delete the bindings made over them (idempotent)."""

        def run() -> list[tuple[str, str]]:
            members = self._r.smembers(_node_index(node))
            pairs = []
            for m in members:
                aor, _, key = (m.decode() if isinstance(m, bytes) else m).partition("\x00")
                pairs.append((aor, key))
            if pairs:
                self._apply([], pairs, ())
            self._r.delete(_node_index(node))
            return pairs

        return self._call("removing a dead node's bindings", run)

    def all(self) -> list[Binding]:
        return self.load(0.0).bindings

    # --- the pub/sub feed ------------------------------------------------------------------

    def listen(
        self,
        deliver: Callable[[dict[str, Any]], None],
        stop: threading.Event,
        subscribed: Callable[[], None] = lambda: None,
    ) -> None:
        """Block, calling ``deliver`` with every note other nodes publish, until ``stop``.

        ``subscribed`` is called once Redis has confirmed the subscription: from then
        on nothing another node publishes is missed, which is what lets a node joining
        the cluster announce itself only after it is listening (``Cluster.run``).
        """
        pubsub = self._r.pubsub()
        try:
            pubsub.subscribe(CHANNEL)
            while not stop.is_set():
                msg = pubsub.get_message(timeout=0.5)
                if msg is None:
                    continue
                if msg.get("type") == "subscribe":
                    subscribed()
                    continue
                if msg.get("type") != "message":
                    continue
                try:
                    note = json.loads(msg["data"])
                except ValueError:
                    continue
                if note.get("node") != self.node:
                    deliver(note)
        finally:
            pubsub.close()

    def announce(self, info: dict[str, Any]) -> None:
        """Tell the nodes already running that this one is up (and where to reach it)."""
        note = {"node": self.node, "joined": info}
        self._call(
            "announcing this node",
            lambda: self._r.publish(CHANNEL, json.dumps(note, ensure_ascii=False)),
        )

    # --- nodes ------------------------------------------------------------------------------

    def heartbeat(self, info: dict[str, Any], ttl: float) -> None:
        self._call(
            "heartbeat",
            lambda: self._r.set(f"{PREFIX}node:{self.node}", json.dumps(info), px=int(ttl * 1000)),
        )

    def nodes(self) -> dict[str, dict[str, Any]]:
        def run() -> dict[str, dict[str, Any]]:
            keys = list(self._r.scan_iter(match=f"{PREFIX}node:*", count=1000))
            out = {}
            for key, value in zip(keys, self._r.mget(keys) if keys else [], strict=True):
                if value is not None:
                    name = (key.decode() if isinstance(key, bytes) else key)[len(PREFIX) + 5 :]
                    out[name] = json.loads(value)
            return out

        return self._call("reading nodes", run)

    def leave(self) -> None:
        self._call("leaving", lambda: self._r.delete(f"{PREFIX}node:{self.node}"))

    def cluster_secret(self) -> bytes:
        """One secret for the whole cluster, made by whichever node starts first."""

        def run() -> bytes:
            self._r.set(f"{PREFIX}secret", os.urandom(32).hex(), nx=True)
            value = self._r.get(f"{PREFIX}secret")
            if value is None:
                raise StoreError("the cluster secret vanished from Redis")
            return bytes.fromhex(value.decode() if isinstance(value, bytes) else str(value))

        return self._call("reading the cluster secret", run)

    def publish_view(self, view: dict[str, Any], ttl: float) -> None:
        """This node's dialogs and flows, for the cluster-wide admin views."""
        text = json.dumps(view, ensure_ascii=False)
        self._call(
            "publishing the view",
            lambda: self._r.set(f"{PREFIX}view:{self.node}", text, px=int(ttl * 1000)),
        )

    def views(self) -> dict[str, dict[str, Any]]:
        def run() -> dict[str, dict[str, Any]]:
            keys = list(self._r.scan_iter(match=f"{PREFIX}view:*", count=1000))
            out = {}
            for key, value in zip(keys, self._r.mget(keys) if keys else [], strict=True):
                if value is not None:
                    name = (key.decode() if isinstance(key, bytes) else key)[len(PREFIX) + 5 :]
                    out[name] = json.loads(value)
            return out

        return self._call("reading views", run)

    # --- users --------------------------------------------------------------------------------

    def set_user(
        self, username: str, realm: str, ha1_md5: str, ha1_sha256: str, now: float
    ) -> bool:
        def run() -> bool:
            value = json.dumps({"MD5": ha1_md5, "SHA-256": ha1_sha256, "updated_at": now})
            pipe = self._r.pipeline(transaction=True)
            pipe.hset(f"{PREFIX}users:{realm}", username, value)
            pipe.incr(f"{PREFIX}users:version")
            new = pipe.execute()[0]
            return bool(new)

        return self._call(f"storing user {username}", run)

    def remove_user(self, username: str, realm: str) -> bool:
        def run() -> bool:
            pipe = self._r.pipeline(transaction=True)
            pipe.hdel(f"{PREFIX}users:{realm}", username)
            pipe.incr(f"{PREFIX}users:version")
            return bool(pipe.execute()[0])

        return self._call(f"removing user {username}", run)

    def users(self, realm: str) -> dict[str, dict[str, str]]:
        def run() -> dict[str, dict[str, str]]:
            raw = self._r.hgetall(f"{PREFIX}users:{realm}")
            out = {}
            for k, v in raw.items():
                d = json.loads(v)
                out[k.decode() if isinstance(k, bytes) else k] = {
                    "MD5": d["MD5"],
                    "SHA-256": d["SHA-256"],
                }
            return out

        return self._call("reading users", run)

    def user_rows(self) -> list[tuple[str, str, float, float]]:
        def run() -> list[tuple[str, str, float, float]]:
            rows = []
            for key in self._r.scan_iter(match=f"{PREFIX}users:*"):
                name = key.decode() if isinstance(key, bytes) else key
                realm = name[len(PREFIX) + 6 :]
                if realm == "version":
                    continue
                for user, v in self._r.hgetall(name).items():
                    d = json.loads(v)
                    u = user.decode() if isinstance(user, bytes) else user
                    rows.append(
                        (u, realm, float(d.get("updated_at", 0)), float(d.get("updated_at", 0)))
                    )
            return sorted(rows, key=lambda r: (r[1], r[0]))

        return self._call("reading users", run)

    def data_version(self) -> int:
        value = self._call(
            "reading the users version", lambda: self._r.get(f"{PREFIX}users:version")
        )
        return int(value or 0)

    # --- call records (store/cdrs.py) ------------------------------------------------------

    def add_cdrs(self, records: Sequence[CallRecord]) -> None:
        if not records:
            return

        def run() -> None:
            first = int(self._r.incrby(CDR_IDS, len(records))) - len(records) + 1
            members = {}
            for i, record in enumerate(records):
                values = {f.name: getattr(record, f.name) for f in fields(CallRecord)}
                values["id"] = first + i
                members[json.dumps(values, ensure_ascii=False)] = record.started_at
            self._r.zadd(CDRS, members)

        self._call("storing call records", run)

    def cdrs(self, query: CdrQuery) -> CdrPage:
        """Read the time range, filter here: a cluster's call records fit a sorted set."""

        def run() -> CdrPage:
            low = "-inf" if query.since is None else query.since
            high = "+inf" if query.until is None else f"({query.until}"
            raw: list[bytes] = self._r.zrevrangebyscore(CDRS, high, low)  # type: ignore[assignment]
            found = [r for r in (CallRecord(**json.loads(m)) for m in raw) if matches(r, query)]
            found.sort(key=lambda r: (r.started_at, r.id or 0), reverse=True)
            return CdrPage(found[query.offset : query.offset + query.limit], len(found))

        result: CdrPage = self._call("reading call records", run)
        return result

    def purge_cdrs(self, before: float) -> int:
        return int(
            self._call(
                "deleting old call records",
                lambda: self._r.zremrangebyscore(CDRS, "-inf", f"({before}"),
            )
        )

    def close(self) -> None:
        with contextlib.suppress(redis.RedisError):
            self._r.close()

    def __enter__(self) -> RedisStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
