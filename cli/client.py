"""HTTP client of the service (used by the `skillkd` client commands and demo, tests and benchmarks)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from cli.errors import ClientError


class _Http(httpx.Client):
    """httpx's client, with no answer (refused, timed out, or cut off mid-answer) as a ClientError
    `service_unreachable` that says where the service was expected and how to point at another place."""

    def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        try:
            response = super().send(request, **kwargs)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from None
        if kwargs.get("stream"):  # read later, by the caller: its transport errors are mapped as it reads
            response.stream = _Guarded(response.stream, self.unreachable)
        return response

    def unreachable(self, exc: httpx.TransportError) -> ClientError:
        reason = str(exc) or type(exc).__name__
        return ClientError(
            0,
            "service_unreachable",
            f"cannot reach the service at {self.base_url} ({reason}); is it running (`skillkd serve`)? "
            "Point SKILLKD_URL or --url at it",
        )


class _Guarded(httpx.SyncByteStream):
    def __init__(self, stream: Any, error: Callable[[httpx.TransportError], ClientError]) -> None:
        self.stream, self.error = stream, error

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self.stream
        except httpx.TransportError as exc:
            raise self.error(exc) from None

    def close(self) -> None:
        self.stream.close()


def zip_directory(source: Path, dest: Path) -> Path:
    """Zip `source` with its files at the archive root (symlinks followed only inside `source`)."""
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(source.rglob("*")):
            if path.is_file() and path.resolve().is_relative_to(source.resolve()):
                zf.write(path, str(path.relative_to(source)))
    return dest


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    for chunk in _file_chunks(path):
        digest.update(chunk)
    return digest.hexdigest()


def _file_chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(size):
            yield chunk


class SkillkdClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 600.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.http: httpx.Client = _Http(
            base_url=base_url.rstrip("/"),
            timeout=timeout,
            transport=transport,
            headers={"Authorization": f"Bearer {api_key}"},
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> SkillkdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            try:
                err = response.json()["error"]
                raise ClientError(response.status_code, err["code"], err["message"])
            except (ValueError, KeyError, TypeError):
                raise ClientError(response.status_code, "http_error", response.text[:500]) from None
        return response

    # uploads -------------------------------------------------------------------------------------------
    def upload_archive(self, kind: str, archive: Path, *, name: str = "") -> dict[str, Any]:
        media_type = "application/zip" if archive.suffix == ".zip" else "application/octet-stream"
        headers = {"Content-Type": media_type, "Content-Length": str(archive.stat().st_size)}
        return self._check(
            self.http.post(
                f"/v1/{kind}", params={"name": name}, headers=headers, content=_file_chunks(archive)
            )
        ).json()

    def upload_directory(self, kind: str, directory: Path, *, name: str = "") -> dict[str, Any]:
        """Zip `directory` and upload it, unless this key's owner already uploaded the same archive (sha256):
        then the existing teacher or dataset, asked for first, so nothing is sent again. The answer carries
        `"reused": True` in that case (the service answers 200 too if the bytes are sent anyway)."""
        with tempfile.TemporaryDirectory() as tmp:
            archive = zip_directory(directory, Path(tmp) / "upload.zip")
            digest = _sha256_of(archive)
            known = self._check(self.http.get(f"/v1/{kind}", params={"sha256": digest, "limit": 1})).json()
            for item in known.get("items", []):
                if item.get("sha256") == digest:  # a service without the filter lists everything
                    return {**item, "reused": True}
            return self.upload_archive(kind, archive, name=name or directory.name)

    def register_dataset(self, path: str, *, name: str = "") -> dict[str, Any]:
        return self._check(self.http.post("/v1/datasets", json={"path": path, "name": name})).json()

    # jobs ----------------------------------------------------------------------------------------------
    def create_job(
        self,
        teacher_id: str,
        dataset_id: str,
        spec: dict[str, Any] | None = None,
        *,
        calibration_dataset_id: str | None = None,
        idempotency_key: str | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """The job; with `dry_run`, the service's estimate instead, and nothing is created."""
        body: dict[str, Any] = {"teacher_id": teacher_id, "dataset_id": dataset_id, "spec": spec or {}}
        if calibration_dataset_id:
            body["calibration_dataset_id"] = calibration_dataset_id
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        params = {"dry_run": "true"} if dry_run else None
        return self._check(self.http.post("/v1/jobs", json=body, headers=headers, params=params)).json()

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self._check(self.http.get(f"/v1/jobs/{job_id}")).json()

    def list_jobs(
        self, *, status: str | None = None, limit: int = 50, after: str | None = None
    ) -> dict[str, Any]:
        params = {
            k: v for k, v in {"status": status, "limit": limit, "after": after}.items() if v is not None
        }
        return self._check(self.http.get("/v1/jobs", params=params)).json()

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self.job_action(job_id, "cancel")

    def job_action(self, job_id: str, action: str) -> dict[str, Any]:
        """POST /v1/jobs/{id}/{action}: cancel, pause or resume; the job afterwards."""
        return self._check(self.http.post(f"/v1/jobs/{job_id}/{action}")).json()

    def list_resources(self, kind: str, *, limit: int = 200) -> dict[str, Any]:
        """GET /v1/teachers or /v1/datasets (first page)."""
        return self._check(self.http.get(f"/v1/{kind}", params={"limit": limit})).json()

    def delete_resource(self, kind: str, resource_id: str) -> None:
        """DELETE /v1/teachers/{id} or /v1/datasets/{id}."""
        self._check(self.http.delete(f"/v1/{kind}/{resource_id}"))

    def events(self, job_id: str, *, after: int = 0, limit: int = 100) -> dict[str, Any]:
        params = {"after": after, "limit": limit}
        return self._check(self.http.get(f"/v1/jobs/{job_id}/events", params=params)).json()

    def stream_events(self, job_id: str, *, after: int = 0) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event kind, data) from the Server-Sent Events stream, until the job ends ('end', {status})."""
        headers = {"Accept": "text/event-stream"}
        with self.http.stream(
            "GET",
            f"/v1/jobs/{job_id}/events",
            params={"after": after},
            headers=headers,
            timeout=httpx.Timeout(30.0, read=None),
        ) as response:
            self._check_stream(response)
            kind, data = "message", ""
            for line in response.iter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data += line[5:].strip()
                elif line == "" and data:
                    yield kind, json.loads(data)
                    if kind == "end":
                        return
                    kind, data = "message", ""

    def _check_stream(self, response: httpx.Response) -> None:
        if response.status_code >= 400:
            response.read()
            self._check(response)

    def artifacts(self, job_id: str) -> list[dict[str, Any]]:
        return self._check(self.http.get(f"/v1/jobs/{job_id}/artifacts")).json()["items"]

    def download(self, job_id: str, name: str, dest: Path) -> Path:
        """Download an artifact to `dest` (file path) and check its sha256 against the service's."""
        with self.http.stream("GET", f"/v1/jobs/{job_id}/artifacts/{name}") as response:
            self._check_stream(response)
            expected = response.headers.get("x-content-sha256", "")
            digest = hashlib.sha256()
            tmp = dest.with_name(dest.name + ".part")
            with open(tmp, "wb") as out:
                for chunk in response.iter_bytes():
                    digest.update(chunk)
                    out.write(chunk)
        if expected and digest.hexdigest() != expected:
            tmp.unlink(missing_ok=True)
            raise ClientError(0, "checksum_mismatch", f"{name}: sha256 {digest.hexdigest()} != {expected}")
        os.replace(tmp, dest)
        return dest


__all__ = ["SkillkdClient", "ClientError", "zip_directory"]
