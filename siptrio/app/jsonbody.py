"""Every admin API body is JSON, whatever its Content-Type says.

``curl -d '{"to": "bob"}'`` sends ``application/x-www-form-urlencoded``; FastAPI then
passes the body on as bytes and the route answers 422 with words about dictionaries.
The API takes nothing but JSON, so a body's declared type carries no information here:
this ASGI middleware relabels it ``application/json`` before FastAPI looks. A body that
is not JSON then gets the API's usual 400 ("request body is not valid JSON").
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["JsonBodies"]

_WITH_BODY = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _is_json(content_type: bytes) -> bool:
    kind = content_type.split(b";", 1)[0].strip().lower()
    return kind == b"application/json" or (
        kind.startswith(b"application/") and kind.endswith(b"+json")
    )


class JsonBodies:
    """Relabel request bodies as JSON, except under ``exempt`` path prefixes."""

    def __init__(self, app: ASGIApp, exempt: tuple[str, ...] = ("/phone",)) -> None:
        self.app = app
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope.get("method") in _WITH_BODY
            and not str(scope.get("path", "")).startswith(self.exempt)
        ):
            headers = [(k, v) for k, v in scope.get("headers", ()) if k.lower() != b"content-type"]
            declared = [v for k, v in scope.get("headers", ()) if k.lower() == b"content-type"]
            if not declared or not _is_json(declared[0]):
                scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)
