"""Property-based: schemathesis drives every route of /openapi.json; nothing answers 5xx.

The generated requests (valid ones, and with negative mode invalid ones) go over real
HTTP to the live server. Schemathesis is synchronous, so it runs in a worker thread
while the server keeps running on this test's Trio loop.
"""

from __future__ import annotations

from pathlib import Path

import schemathesis
import trio
from admin_support import ops_server
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

MAX_EXAMPLES = 40  # per route and mode: the whole run stays well under a minute
TOKEN = "fuzz-token"


def fuzz(schema_dict: dict, base_url: str) -> tuple[list[str], dict[str, int]]:
    schema = schemathesis.openapi.from_dict(schema_dict)
    failures: list[str] = []
    statuses: dict[str, int] = {}
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case: schemathesis.Case) -> None:
                response = case.call(
                    base_url=base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
                )
                key = f"{case.method} {case.path} {response.status_code}"
                statuses[key] = statuses.get(key, 0) + 1
                where = f"{case.method} {case.formatted_path} {case.query} {case.body!r}"
                if response.status_code >= 500:
                    failures.append(f"{response.status_code} for {where}: {response.text[:300]}")
                elif not (case.path == "/metrics" and response.status_code == 200):
                    kind = (response.headers.get("content-type") or [""])[0]
                    if not kind.startswith("application/json"):
                        failures.append(f"{kind!r} for {where}")

            check()
    return failures, statuses


async def test_no_route_answers_5xx(tmp_path: Path, nursery: trio.Nursery) -> None:
    secrets = {"auth.ephemeral_secrets": "fuzz-secret-0123456789"}  # /credentials issues
    async with ops_server(tmp_path, {"admin.token": TOKEN, **secrets}) as ops:
        # something to list, kick and call
        bob = await ops.ua(nursery, "tcp", "bob")
        async with ops.http(TOKEN) as http:
            schema = (await http.get("/openapi.json")).json()
        with trio.fail_after(120):
            failures, statuses = await trio.to_thread.run_sync(fuzz, schema, ops.base_url)
        assert failures == []
        # every route was reached, and both valid and invalid input got through
        assert {k.rsplit(" ", 1)[0] for k in statuses} >= {
            f"{method} {path}"
            for path, item in schema["paths"].items()
            for method in (m.upper() for m in item)
        }
        assert any(k.endswith((" 200", " 201")) for k in statuses)
        assert any(k.endswith(" 422") for k in statuses)
        async with ops.http(TOKEN) as http:
            assert (await http.get("/health")).json()["status"] == "ok"
        del bob


async def test_a_huge_cdr_offset_is_a_422_not_a_500(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import httpx

    async with ops_server(tmp_path) as ops, httpx.AsyncClient() as http:
        r = await http.get(f"{ops.base_url}/cdrs", params={"offset": str(10**24)})
    assert r.status_code == 422 and r.json()["field"] == "offset"
