"""The example webphone (examples/webphone) served at ``/phone/`` by the admin HTTP server.

The page and its JavaScript live in the repository, not in the package: siptrio is run
from a clone (see the README), so the directory is found beside the package, at
``<clone>/examples/webphone``. Its libraries (SIP.js, JsSIP) come from npm: without
``npm ci --prefix examples/webphone`` the page still loads and says what to run.

The page's origin, ``http://127.0.0.1:8088`` or ``http://localhost:8088`` with the
default ``[admin]`` address, is in ``[sip_websocket] allowed_origins`` by default, so
its WebSocket to port 8080 is accepted.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI
from starlette.responses import PlainTextResponse
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

__all__ = ["MOUNT_PATH", "WEBPHONE_DIR", "mount_webphone"]

log = logging.getLogger("siptrio.admin")

MOUNT_PATH = "/phone"
WEBPHONE_DIR = Path(__file__).resolve().parents[2] / "examples" / "webphone"
NPM_HINT = "npm ci --prefix examples/webphone"


class _Missing:
    """An ASGI app answering every request with 404 and why the webphone is not there."""

    def __init__(self, message: str) -> None:
        self.message = message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = PlainTextResponse(self.message + "\n", status_code=404)
        await response(scope, receive, send)


def mount_webphone(app: FastAPI, directory: Path | None = None) -> None:
    """Serve ``directory`` (default: the clone's examples/webphone) at ``/phone/``.

    A missing directory (siptrio installed without its clone) does not stop the server:
    ``/phone/`` then answers 404 with the reason, and the log says it once.
    """
    root = WEBPHONE_DIR if directory is None else directory
    if not (root / "index.html").is_file():
        message = (
            f"the webphone is not here: {root / 'index.html'} is missing (it lives in a "
            "clone of the siptrio repository, examples/webphone)"
        )
        log.warning("%s; %s/ answers 404", message, MOUNT_PATH)
        app.mount(MOUNT_PATH, _Missing(message), name="webphone")
        return
    if not (root / "node_modules" / "sip.js").is_dir():
        log.warning(
            "webphone at %s/ has no JavaScript libraries yet: run `%s` (the page says so too)",
            MOUNT_PATH,
            NPM_HINT,
        )
    app.mount(MOUNT_PATH, StaticFiles(directory=root, html=True), name="webphone")
