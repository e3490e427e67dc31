"""The web dashboard: static files under /ui (and / redirects there), served by the API itself.

The page is plain HTML, CSS and ES modules written for this project (no framework, no CDN, no build step):
it runs in the browser and talks only to the public REST API under /v1 with the user's API key, so it shows
exactly what the API lets that key see and is unaffected by how the server is organised inside. Why this
shape rather than templates or a vendored framework is in docs/design.md ("The dashboard").
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from api.ranges import precondition_failed, strong_match

STATIC = Path(__file__).parent / "static"

# The API key lives in sessionStorage, so script injection is what would leak it: the page loads nothing
# but its own files, runs no inline script, and may only talk to its own origin.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' blob: data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; "
    "base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class DashboardFiles(StaticFiles):
    """StaticFiles with the dashboard's security headers on every answer."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.decode().lower() not in {h.lower() for h in HEADERS}
                ]
                headers += [(k.lower().encode(), v.encode()) for k, v in HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await super().__call__(scope, receive, send_with_headers)

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        """Starlette's answer (200, or 304 for If-None-Match), unless If-Match names no current version of
        the file: 412 (RFC 9110 §13.2.2 evaluates If-Match first)."""
        response = super().file_response(full_path, stat_result, scope, status_code)
        if_match = Headers(scope=scope).get("if-match")
        etag = response.headers.get("etag")
        if if_match is not None and etag and not strong_match(if_match, etag):
            error = precondition_failed(f"/ui/{Path(full_path).name}", etag)
            return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers)
        return response


def mount_dashboard(app: FastAPI) -> None:
    """Serve the dashboard at /ui/ and redirect / to it."""
    app.mount("/ui", DashboardFiles(directory=STATIC, html=True), name="ui")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=307)


__all__ = ["mount_dashboard", "STATIC"]
