"""Errors the API answers on purpose: `{"error": {"code", "message"}}` with a 4xx status.

    ApiError                    status + stable code + message
    ├── NotFound                404 "not_found" (also for another owner's resource)
    ├── Conflict                409
    ├── PayloadTooLarge         413 "upload_too_large"
    ├── UnprocessableInput      422 (archive_*, teacher_invalid, audio_invalid, spec_invalid, ...)
    └── TooManyRequests         429 "too_many_jobs"

No FastAPI import: storage and archive code raise these too.
"""

from __future__ import annotations


class ApiError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status_code: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


class NotFound(ApiError):
    status_code = 404
    code = "not_found"


class Conflict(ApiError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(ApiError):
    status_code = 413
    code = "upload_too_large"


class UnprocessableInput(ApiError):
    status_code = 422
    code = "invalid_input"


class TooManyRequests(ApiError):
    status_code = 429
    code = "too_many_jobs"


__all__ = ["ApiError", "NotFound", "Conflict", "PayloadTooLarge", "UnprocessableInput", "TooManyRequests"]
