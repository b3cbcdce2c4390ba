"""The wire layer's caches of parsed spellings, named, for whoever must see or reset them.

They are the only state kept between messages in ``siptrio/sip`` (each bounded: see
``_abnf.BoundedCache``). Tests reset them to start from nothing; the operator's
metrics read their sizes.
"""

from __future__ import annotations

from . import headers, message, parser, uri
from ._abnf import BoundedCache

__all__ = ["clear_parse_caches", "parse_caches"]


def parse_caches() -> dict[str, BoundedCache[object, object]]:
    found: dict[str, BoundedCache[object, object]] = {}
    for module in (headers, message, parser, uri):
        for value in vars(module).values():
            if isinstance(value, BoundedCache):
                found[value.name] = value
    return found


def clear_parse_caches() -> None:
    for cache in parse_caches().values():
        cache.clear()
