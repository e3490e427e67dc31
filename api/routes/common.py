"""Pieces the resource routes share: OpenAPI for raw-archive bodies, error responses, pagination."""

from __future__ import annotations

from typing import Any

from api.schemas import ErrorBody

ARCHIVE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "a zip or tar(.gz) archive as the raw request body (streamed; not multipart)",
        "content": {
            media: {"schema": {"type": "string", "format": "binary"}}
            for media in (
                "application/zip",
                "application/x-tar",
                "application/gzip",
                "application/octet-stream",
            )
        },
    }
}

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 422, 429, 500)
}

MAX_PAGE = 200
MAX_EVENT_ID = 2**63 - 1  # job_events.id is a signed 64-bit integer

SHA256_FILTER = (
    "only the upload whose archive had this sha256 (lower-case hex): a client can ask before sending an "
    "archive it may have sent already"
)
