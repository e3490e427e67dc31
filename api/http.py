"""What sits between the socket and the routes so that every answer is the JSON error envelope and a failed
request never costs the client its connection:

- `ErrorMiddleware` (pure ASGI, inside the metrics middleware): a URL holding a NUL character is answered 400
  before any route runs (PostgreSQL cannot compare text with one: it was a 500 wherever an id reached a
  query); an unexpected exception is logged with its traceback and answered 500 `{"error": {"code":
  "internal", ...}}` *without* re-raising, so the server keeps the keep-alive connection (Starlette's own
  handler re-raises after answering, and uvicorn then closes the connection without a `Connection: close`, so
  the client's next request on it fails). A client that disconnects mid-request (e.g. mid-upload) is the
  client's doing: logged at INFO, no traceback, nothing sent, counted as 499 by the metrics.
- `JsonHttpToolsProtocol` (used when httptools is installed, the default: its C parser costs a fraction of
  h11's per request) and `JsonH11Protocol` (the pure-Python fallback): uvicorn's protocols whose own 400 (a
  malformed request, or a header section above `MAX_HEADER_BYTES`, e.g. an oversized Authorization header) is
  the JSON envelope instead of plain text.
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
        if "\x00" in scope["path"] or b"%00" in scope["query_string"]:
            # No id, name or parameter of this API holds a NUL, and PostgreSQL text cannot: answered here for
            # every route instead of as a database error (500) wherever the value reaches a query.
            body = error_body(
                "the URL holds a NUL character (%00); no resource or parameter of this API has one"
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": 400,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
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
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(INTERNAL)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": INTERNAL})


def error_body(message: str) -> bytes:
    return json.dumps({"error": {"code": "bad_request", "message": message}}).encode()


class JsonH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with JSON 400s; use with `uvicorn.run(..., http=JsonH11Protocol,
    h11_max_incomplete_event_size=MAX_HEADER_BYTES)`."""

    def send_400_response(self, msg: str) -> None:
        body = error_body(
            f"invalid HTTP request: malformed, or a header section above {MAX_HEADER_BYTES} bytes "
            "(e.g. an oversized Authorization header)"
        )
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()


class HeaderSectionTooLarge(Exception):
    pass


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools not installed: h11 only
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

if HttpToolsProtocol is not None:

    class JsonHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol with a header-section limit and JSON 400s."""

        header_bytes = 0

        def on_message_begin(self) -> None:
            self.header_bytes = 0
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            self.header_bytes += len(url)
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self.header_bytes += len(name) + len(value) + 4
            if self.header_bytes > MAX_HEADER_BYTES:
                raise HeaderSectionTooLarge  # the parser reports a callback error: send_400_response
            super().on_header(name, value)

        def send_400_response(self, msg: str) -> None:
            body = error_body(
                f"invalid HTTP request: malformed, or a header section above {MAX_HEADER_BYTES} "
                "bytes (e.g. an oversized Authorization header)"
            )
            self.transport.write(
                b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                + b"content-length: "
                + str(len(body)).encode()
                + b"\r\nconnection: close\r\n\r\n"
                + body
            )
            self.transport.close()


def uvicorn_options(http: str = "auto") -> dict[str, Any]:
    """Keyword arguments of `uvicorn.run` / `uvicorn.Config` for the service: httptools (with uvloop when
    installed) if available, else h11; `http="h11"` forces the fallback."""
    protocol: Any = JsonH11Protocol
    if http != "h11" and HttpToolsProtocol is not None:
        protocol = JsonHttpToolsProtocol
    return {"http": protocol, "h11_max_incomplete_event_size": MAX_HEADER_BYTES, "access_log": False}


__all__ = ["ErrorMiddleware", "JsonH11Protocol", "uvicorn_options", "MAX_HEADER_BYTES"]
