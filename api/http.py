"""What sits between the socket and the routes so that every answer is the JSON error envelope and a failed
request never costs the client its connection:

- `ErrorMiddleware` (pure ASGI, inside the metrics middleware): an unexpected exception is logged with its
  traceback and answered 500 `{"error": {"code": "internal", ...}}` *without* re-raising, so the server keeps
  the keep-alive connection (Starlette's own handler re-raises after answering, and uvicorn then closes the
  connection without a `Connection: close`, so the client's next request on it fails). A client that
  disconnects mid-request (e.g. mid-upload) is the client's doing: logged at INFO, no traceback, nothing sent,
  counted as 499 by the metrics.
- `JsonH11Protocol`: uvicorn's h11 protocol whose own 400 (a malformed request, or a header section above
  `MAX_HEADER_BYTES`, e.g. an oversized Authorization header) is the JSON envelope instead of plain text.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import h11
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024
INTERNAL = json.dumps({"error": {"code": "internal", "message": "internal error"}}).encode()


class ErrorMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except ClientDisconnect:
            log.info("client disconnected during %s %s", scope.get("method"), scope.get("path"))
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise  # part of a response is out: only closing the connection tells the client
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(INTERNAL)).encode())]})
            await send({"type": "http.response.body", "body": INTERNAL})


def error_body(message: str) -> bytes:
    return json.dumps({"error": {"code": "bad_request", "message": message}}).encode()


class JsonH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with JSON 400s; use with `uvicorn.run(..., http=JsonH11Protocol,
    h11_max_incomplete_event_size=MAX_HEADER_BYTES)`."""

    def send_400_response(self, msg: str) -> None:
        body = error_body(f"invalid HTTP request: malformed, or a header section above {MAX_HEADER_BYTES} bytes "
                          "(e.g. an oversized Authorization header)")
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                      h11.EndOfMessage()):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()


def uvicorn_options() -> dict[str, Any]:
    """Keyword arguments of `uvicorn.run` / `uvicorn.Config` for the service."""
    return {"http": JsonH11Protocol, "h11_max_incomplete_event_size": MAX_HEADER_BYTES, "access_log": False}


__all__ = ["ErrorMiddleware", "JsonH11Protocol", "uvicorn_options", "MAX_HEADER_BYTES"]
