"""The HTTP admin API: FastAPI served by hypercorn's Trio worker, JSON in and out.

FastAPI gives request validation and an OpenAPI document (``/openapi.json``) from
the same type declarations; hypercorn serves ASGI on Trio, so every route runs in
the server's own event loop and reads the live state directly (no locks, no copies
kept in sync). Every answer is JSON, errors included: ``{"error": "...", "field":
...}``, with 400 for a body that is not JSON and 422 for a well-formed one that
breaks the schema.

Bound to a non-loopback address the API requires ``Authorization: Bearer <token>``
(``[admin] token``) and refuses to start without one.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import trio
from fastapi import FastAPI, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from hypercorn.config import Config as HyperConfig
from hypercorn.config import Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request as HttpRequest
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import __version__
from ..core.media import query_command, summarize_query
from ..store.cdrs import MAX_PAGE
from ..transport.rtpengine import MediaError
from .cdr import QueryError, parse_query
from .config import Config
from .credentials import (
    CredentialError,
    CredentialRequest,
    IssuedCredential,
    issue_credential,
    websocket_uris,
)
from .jsonbody import JsonBodies
from .metrics import metrics_registry
from .simcall import SimCallError
from .views import (
    CallRequest,
    binding_view,
    bindings_view,
    cdr_view,
    dialogs_view,
    flows_view,
    hostport,
    iso,
    listener_view,
    resolve_aor_untrusted,
)
from .webphone import mount_webphone

if TYPE_CHECKING:
    from .ports import AdminHost, OpsHost

__all__ = ["OpsEndpoints", "create_app", "serve_admin", "start_ops"]

log = logging.getLogger("siptrio.admin")

WAIT_MARGIN = 10.0  # ?wait=true waits answer_timeout + duration + this


# --- errors -----------------------------------------------------------------------------


class ErrorBody(BaseModel):
    error: str
    field: str | None = None


def error_response(
    status: int, message: str, *, field: str | None = None, **extra: Any
) -> Response:
    return JSONResponse({"error": message, "field": field, **extra}, status_code=status)


def _field_name(loc: Iterable[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:] or parts[:1]
    return ".".join(parts) or "body"


async def _validation_error(_request: HttpRequest, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    for e in errors:
        if e.get("type") == "json_invalid":
            why = (e.get("ctx") or {}).get("error", e.get("msg", ""))
            return error_response(
                400,
                f"request body is not valid JSON: {why}; send a JSON object, "
                "e.g. -H 'Content-Type: application/json' -d '{\"to\": \"bob\"}'",
                field="body",
            )
    details = [
        {
            "field": _field_name(e.get("loc", ())),
            "in": str(e.get("loc", ("body",))[0]),
            "message": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in errors
    ]
    first = details[0] if details else {"field": "body", "message": "invalid request"}
    return error_response(
        422, f"{first['field']}: {first['message']}", field=first["field"], errors=details
    )


async def _http_error(_request: HttpRequest, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    response = error_response(exc.status_code, str(exc.detail))
    for key, value in (exc.headers or {}).items():
        response.headers[key] = value
    return response


async def _internal_error(_request: HttpRequest, exc: Exception) -> Response:
    log.error("admin API internal error", exc_info=exc)
    return error_response(500, "internal error")


_SIM_FIELD = re.compile(r"^'?(to|from|duration|answer_timeout|sdp)\b|'(to|from)'")


def _sim_error(e: SimCallError) -> Response:
    """The simulator refused the input: 422, naming the field when its message does."""
    message = str(e)
    field = getattr(e, "field", None)
    if field is None and (m := _SIM_FIELD.search(message)):
        field = m.group(1) or m.group(2)
    return error_response(422, message, field=field)


# --- auth -------------------------------------------------------------------------------


class BearerAuth:
    """ASGI middleware: every HTTP request needs ``Authorization: Bearer <token>``."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The webphone is static files a browser must load without a token; it holds
        # nothing secret and can do nothing the WebSocket listener does not allow.
        public = str(scope.get("path", "")).startswith("/phone")
        if scope["type"] == "http" and not public and not self._allowed(scope):
            response = error_response(401, "missing or wrong bearer token", field="Authorization")
            response.headers["WWW-Authenticate"] = 'Bearer realm="siptrio"'
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        value = b""
        for name, header in scope.get("headers", ()):
            if name.lower() == b"authorization":
                value = header
                break
        scheme, _, credentials = value.strip().partition(b" ")
        # compare_digest takes as long for any wrong token of a given length
        return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self.token)


# --- the app ----------------------------------------------------------------------------

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or wrong bearer token"},
    422: {"model": ErrorBody, "description": "Invalid input; `field` names the culprit"},
}


def create_app(
    server: AdminHost,
    *,
    token: str | None = None,
    webphone: bool = True,
    webphone_dir: Path | None = None,
) -> FastAPI:
    """The API, and the example webphone under ``/phone/`` (webphone.py says from where)."""
    app = FastAPI(
        title="siptrio admin API",
        version=__version__,
        description="Watch and drive a running siptrio registrar and proxy.",
        responses=_ERRORS,
    )
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    app.add_middleware(JsonBodies)  # curl -d sends a form content type: JSON all the same
    if token:
        app.add_middleware(BearerAuth, token=token)
        _document_bearer(app)
    if webphone:
        # the browser webphone: its origin is the admin API's, in allowed_origins
        mount_webphone(app, webphone_dir)
    registry = metrics_registry(server)

    @app.get("/listClients", summary="Every registered contact")
    async def list_clients() -> list[dict[str, Any]]:
        return bindings_view(server, time.time())

    def whole_cluster(kind: str, own: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Ours, then what the other nodes last published (a second or two old)."""
        out = [{**item, "node": server.node} for item in own]
        cluster = server.cluster_view()
        if cluster is not None:
            out += cluster[kind]
        return out

    @app.get(
        "/dialogs",
        summary="Every dialog the proxy record-routed (ended ones linger), on every node",
    )
    async def dialogs() -> list[dict[str, Any]]:
        return whole_cluster("dialogs", dialogs_view(server, time.time()))

    @app.get(
        "/dialogs/{dialog_id}/media",
        summary="Whether a dialog's media is bridged, and packets per direction (rtpengine query)",
        responses={404: {"description": "no such dialog"}},
    )
    async def dialog_media(dialog_id: str) -> Any:
        d = server.dialogs.get_by_id(dialog_id)
        if d is None:
            return error_response(404, f"no dialog {dialog_id}", field="dialog_id")
        if not d.bridged:
            return {"id": d.id, "call_id": d.call_id, "media": "direct"}
        if server.media is None:
            return {"id": d.id, "call_id": d.call_id, "media": "bridged", "error": "no rtpengine"}
        try:
            reply = await server.media.request(query_command(d.call_id))
        except MediaError as e:
            return {"id": d.id, "call_id": d.call_id, "media": "bridged", "error": str(e)}
        if reply.get("result") != "ok":
            error = str(reply.get("error-reason") or reply.get("result"))
            return {"id": d.id, "call_id": d.call_id, "media": "bridged", "error": error}
        counts = summarize_query(reply, d.caller.tag, d.callee.tag)
        return {"id": d.id, "call_id": d.call_id, "media": "bridged", **counts}

    @app.get(
        "/connections",
        summary="Open flows (TCP, TLS, WS, WSS) and the bindings on them, on every node",
    )
    async def connections() -> list[dict[str, Any]]:
        return whole_cluster("flows", flows_view(server, trio.current_time()))

    @app.get("/health", summary="Liveness, version, uptime and listeners")
    async def health() -> dict[str, Any]:
        now = time.time()
        return {
            "status": "ok",
            "version": __version__,
            "started_at": iso(server.started_at),
            "uptime": round(now - server.started_at, 3),
            "listeners": [listener_view(li) for li in server.listeners],
            "bindings": len(server.location),
            "dialogs": len(server.dialogs),
            "flows": len(server.flows),
        }

    @app.get(
        "/metrics",
        summary="Prometheus text exposition",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    )
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.post(
        "/simulateCall",
        status_code=201,
        summary="Place a call from the simulated client",
        description=(
            "Returns 201 with the call at once (poll `Location: /calls/{id}`), or with "
            "`?wait=true` 200 once the call is over (at most answer_timeout + duration + "
            f"{WAIT_MARGIN:g} s; the call as it stands then)."
        ),
    )
    async def simulate_call(
        body: CallRequest,
        wait: bool = Query(False, description="Answer once the call has ended"),
    ) -> Response:
        try:
            call = await server.simulator.start_call(
                to=body.to,
                from_=body.from_,
                duration=body.duration,
                answer_timeout=body.answer_timeout,
                sdp=body.sdp,
            )
        except SimCallError as e:
            return _sim_error(e)
        status = 201
        if wait:
            with trio.move_on_after(body.answer_timeout + body.duration + WAIT_MARGIN):
                await call.done.wait()
            status = 200
        return JSONResponse(
            call.as_dict(), status_code=status, headers={"Location": f"/calls/{call.id}"}
        )

    @app.post(
        "/reload",
        summary="Read the config file again and apply what can change live (as SIGHUP does)",
        description=(
            "200 with what changed, what needs a restart (kept as it runs) and the TLS/WSS "
            "certificates read again; 422 when the file does not pass check-config (its "
            "error names file, line and key) and the running config stays."
        ),
        responses={422: {"model": ErrorBody, "description": "The config file was refused"}},
    )
    async def reload() -> Response:
        outcome = await server.reloader.reload("admin API")
        if not outcome.ok:
            return error_response(422, outcome.error or "refused", field="config")
        return JSONResponse(outcome.as_dict())

    @app.get(
        "/cdrs",
        summary="Call records: one per call attempt, answered or not, newest first",
        description=(
            "Filters: `since`/`until` (the call's start, ISO-8601 or epoch seconds; UTC "
            "unless an offset says otherwise), `aor` (caller or callee: a URI, "
            "user@host, or a user name of any domain), `status` (404, or a class: 4xx); "
            "paging with `limit` (1..1000) and `offset`. `total` counts every match."
        ),
        responses={422: {"model": ErrorBody, "description": "A filter that does not parse"}},
    )
    async def cdrs(
        since: str | None = Query(None, description="started at or after this time"),
        until: str | None = Query(None, description="started before this time"),
        aor: str | None = Query(None, description="the caller or the callee"),
        status: str | None = Query(None, description="final status (404) or class (4xx)"),
        limit: int = Query(100, description=f"records per page, 1..{MAX_PAGE}"),
        offset: int = Query(0, description="records to skip"),
    ) -> Response:
        try:
            query = parse_query(
                since=since, until=until, aor=aor, status=status, limit=limit, offset=offset
            )
        except QueryError as e:
            return error_response(422, str(e), field=e.field)
        page = await server.cdrs.query(query)
        return JSONResponse(
            {
                "total": page.total,
                "limit": query.limit,
                "offset": query.offset,
                "records": [cdr_view(r) for r in page.records],
            }
        )

    @app.get("/calls", summary="Simulated calls, newest last")
    async def calls() -> list[dict[str, Any]]:
        return [c.as_dict() for c in server.simulator.calls()]

    @app.get(
        "/calls/{call_id}",
        summary="One simulated call, by its id or its Call-ID",
        responses={404: {"model": ErrorBody, "description": "No such call"}},
    )
    async def call(call_id: str) -> Response:
        found = server.simulator.get(call_id)
        if found is None:
            return error_response(404, f"no simulated call {call_id!r}", field="call_id")
        return JSONResponse(found.as_dict())

    @app.delete(
        "/bindings/{aor}",
        summary="Kick a client: remove an AOR's bindings, or the one with ?contact=",
        description="The client's flow is told nothing; its binding is gone.",
        responses={404: {"model": ErrorBody, "description": "No such binding"}},
    )
    async def delete_bindings(
        aor: str,
        contact: str | None = Query(None, description="Remove only this contact URI"),
    ) -> Response:
        try:
            key = resolve_aor_untrusted(server.location, aor)
        except ValueError as e:
            return error_response(422, str(e), field="aor")
        removed = await server.kick(key, contact)
        if not removed:
            what = f"{key} with contact {contact}" if contact is not None else key
            return error_response(404, f"no binding of {what}", field="aor")
        now = time.time()
        return JSONResponse({"aor": key, "removed": [binding_view(b, now) for b in removed]})

    @app.post(
        "/credentials",
        summary="Issue a time-limited SIP credential (and a TURN one) for a web app's user",
        description=(
            "The credential of Kamailio's auth_ephemeral and coturn's REST API: username "
            "`<expiry>:<user>`, password base64(HMAC(secret, username)), signed with the "
            "first of `[auth] ephemeral_secrets`. A TTL over `[auth] ephemeral_max_ttl` is "
            "capped (`capped`, `message`). A web app's backend calls this (set `[admin] "
            "token`) and hands the answer to the browser."
        ),
        response_model=IssuedCredential,
        responses={409: {"model": ErrorBody, "description": "No [auth] ephemeral_secrets"}},
    )
    async def credentials(body: CredentialRequest) -> Response:
        try:
            issued = issue_credential(
                server.config,
                server.realm,
                body.user,
                body.ttl,
                time.time(),
                websocket_uris(server.listeners, server.config),
            )
        except CredentialError as e:
            return error_response(e.status, str(e), field=e.field)
        return JSONResponse(issued, headers={"Cache-Control": "no-store"})

    return app


def _document_bearer(app: FastAPI) -> None:
    """Say in the OpenAPI document that every route takes the bearer token."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"}
            }
            schema["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# --- serving ----------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listen_socket(host: str, port: int) -> socket.socket:
    from .errors import StartupError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise StartupError(
            f"[admin] cannot listen on {hostport(host, port)}: {e.strerror or e}"
        ) from e
    return sock


async def serve_admin(
    server: AdminHost,
    config: Config,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the API on ``[admin] listen_addr:listen_port`` until cancelled; started(port)."""
    from .errors import StartupError

    admin = config.admin
    if not is_loopback(admin.listen_addr) and not admin.token:
        raise StartupError(
            f"[admin] listen_addr = {admin.listen_addr} is not a loopback address, so the "
            "admin API needs a bearer token: set [admin] token (or listen on 127.0.0.1)"
        )
    app = create_app(server, token=admin.token)
    hyper = HyperConfig()
    hyper.accesslog = None
    # hypercorn's own "Running on ... (CTRL + C to quit)" is wrong here: keep its warnings
    http_log = logging.getLogger("siptrio.admin.http")
    if http_log.level == logging.NOTSET:
        http_log.setLevel(logging.WARNING)
    hyper.errorlog = http_log
    hyper.graceful_timeout = 1.0
    sock = _listen_socket(admin.listen_addr, admin.listen_port)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(
                    worker_serve,
                    wrap_app(cast(Any, app), hyper.wsgi_max_body_size, "asgi"),
                    hyper,
                    sockets=Sockets(secure_sockets=[], insecure_sockets=[sock], quic_sockets=[]),
                )
            )
            port = sock.getsockname()[1]
            log.info("admin API on http://%s", hostport(admin.listen_addr, port))
            task_status.started(port)
    finally:
        sock.close()


# --- both operator interfaces -------------------------------------------------------------


class OpsEndpoints(BaseModel):
    admin_port: int | None = None
    control_socket: str | None = None


async def start_ops(server: OpsHost, nursery: trio.Nursery) -> OpsEndpoints:
    """Start the admin API and the control socket as configured; where they listen."""
    from .control import serve_control

    config = server.config
    ops = OpsEndpoints()
    if config.admin.enable:
        ops.admin_port = await nursery.start(serve_admin, server, config)
    if config.control.enable:
        ops.control_socket = await nursery.start(serve_control, server, config)
    return ops
