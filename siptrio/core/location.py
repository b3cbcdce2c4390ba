"""Bindings and the in-memory location index (RFC 3261 section 10).

The index is the authority the proxy reads; the store only makes it survive a
restart. Expiry is kept in a heap so purging costs nothing per untouched binding;
a refresh leaves the binding's older entry behind, so the heap is rebuilt whenever
such replaced entries outnumber the bindings (a client refreshing every minute for
an hour must not leave sixty entries).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass

from .types import Transport

__all__ = ["Binding", "Location"]


@dataclass(slots=True, kw_only=True, unsafe_hash=True)
class Binding:
    aor: str  # canonical address-of-record, "sip:alice@example.com"
    key: str  # identity inside the AOR: +sip.instance/reg-id, else the contact URI key
    contact_uri: str  # exactly as the client sent it, without the <>
    contact_params: str  # header parameters as sent, minus expires: ";+sip.ice;reg-id=1"
    q: float | None
    expires_at: float  # wall-clock seconds
    call_id: str
    cseq: int
    instance: str | None
    reg_id: int | None
    path: tuple[str, ...]
    user_agent: str | None
    transport: Transport
    source_host: str
    source_port: int
    local_host: str
    local_port: int
    flow_id: str | None
    registered_at: float
    updated_at: float
    node: str | None = None  # the cluster node that holds its flow (None: single node)
    nat: bool = False  # behind NAT: reached at its source address, not at its Contact

    def expires_in(self, now: float) -> int:
        return max(0, int(self.expires_at - now + 0.5))

    def contact_header(self, now: float) -> str:
        """The Contact as echoed in a 200: the client's own text plus expires."""
        return f"<{self.contact_uri}>{self.contact_params};expires={self.expires_in(now)}"


class Location:
    def __init__(self) -> None:
        self._by_aor: dict[str, dict[str, Binding]] = {}
        self._by_flow: dict[str, set[tuple[str, str]]] = {}
        self._expiry: list[tuple[float, str, str]] = []
        self._count = 0
        # AORs and domains that have ever had a binding here: a call to a known user
        # with no live binding is 480, to an unknown one 404.
        self._known: set[str] = set()
        self._domains: set[str] = set()
        # AORs whose last bindings went with an outbound (RFC 5626) flow: 430, not 480
        self._flow_failed: set[str] = set()

    def __len__(self) -> int:
        return self._count

    @property
    def expiry_entries(self) -> int:
        """Entries in the expiry heap, replaced ones included (what the memory holds)."""
        return len(self._expiry)

    @property
    def known_aors(self) -> int:
        return len(self._known)

    def __iter__(self) -> Iterator[Binding]:
        for bindings in self._by_aor.values():
            yield from bindings.values()

    def aors(self) -> int:
        return len(self._by_aor)

    def bindings(self, aor: str) -> dict[str, Binding]:
        """Current bindings of an AOR by key, expired ones included until purged."""
        return self._by_aor.get(aor, {})

    def lookup(self, aor: str, now: float) -> list[Binding]:
        """Live bindings, highest q first (absent q counts as 1.0), newest first on ties."""
        live = [b for b in self._by_aor.get(aor, {}).values() if b.expires_at > now]
        live.sort(key=lambda b: (-(b.q if b.q is not None else 1.0), -b.updated_at))
        return live

    def known(self, aor: str) -> bool:
        return aor in self._known

    def flow_failed(self, aor: str) -> bool:
        """The AOR's outbound flow closed and nothing registered since (RFC 5626: 430)."""
        return aor in self._flow_failed

    def serves_domain(self, host: str) -> bool:
        return host in self._domains

    def put(self, binding: Binding) -> Binding | None:
        self._flow_failed.discard(binding.aor)
        if binding.aor not in self._known:
            self._known.add(binding.aor)
            self._domains.add(
                binding.aor.rpartition("@")[2] if "@" in binding.aor else binding.aor[4:]
            )
        aor_map = self._by_aor.setdefault(binding.aor, {})
        old = aor_map.get(binding.key)
        if old is None:
            self._count += 1
        elif old.flow_id:
            self._unlink_flow(old)
        aor_map[binding.key] = binding
        if binding.flow_id:
            self._by_flow.setdefault(binding.flow_id, set()).add((binding.aor, binding.key))
        expiry = self._expiry
        heapq.heappush(expiry, (binding.expires_at, binding.aor, binding.key))
        if len(expiry) > 2 * self._count:
            self.compact()
        return old

    def compact(self) -> None:
        """Drop the expiry entries of bindings since refreshed or removed."""
        by_aor = self._by_aor
        live = []
        for entry in self._expiry:
            current = by_aor.get(entry[1], {}).get(entry[2])
            if current is not None and current.expires_at == entry[0]:
                live.append(entry)
        heapq.heapify(live)
        self._expiry = live

    def remove(self, aor: str, key: str) -> Binding | None:
        aor_map = self._by_aor.get(aor)
        if not aor_map:
            return None
        old = aor_map.pop(key, None)
        if not aor_map:
            del self._by_aor[aor]
        if old is not None:
            self._count -= 1
            if old.flow_id:
                self._unlink_flow(old)
        return old

    def _unlink_flow(self, binding: Binding) -> None:
        assert binding.flow_id is not None
        keys = self._by_flow.get(binding.flow_id)
        if keys is not None:
            keys.discard((binding.aor, binding.key))
            if not keys:
                del self._by_flow[binding.flow_id]

    def on_flow(self, flow_id: str) -> list[Binding]:
        return [
            self._by_aor[aor][key]
            for aor, key in self._by_flow.get(flow_id, ())
            if aor in self._by_aor and key in self._by_aor[aor]
        ]

    def remove_flow(self, flow_id: str) -> list[Binding]:
        removed = []
        for aor, key in list(self._by_flow.get(flow_id, ())):
            b = self.remove(aor, key)
            if b is not None:
                removed.append(b)
                if b.reg_id is not None and b.instance is not None and not self._by_aor.get(aor):
                    self._flow_failed.add(aor)
        self._by_flow.pop(flow_id, None)
        return removed

    def purge_expired(self, now: float) -> list[Binding]:
        removed: list[Binding] = []
        heap = self._expiry
        while heap and heap[0][0] <= now:
            _, aor, key = heapq.heappop(heap)
            current = self._by_aor.get(aor, {}).get(key)
            if current is not None and current.expires_at <= now:
                self.remove(aor, key)
                removed.append(current)
        if len(heap) > 2 * self._count:
            self.compact()  # bindings removed before they expired left their entries
        return removed
