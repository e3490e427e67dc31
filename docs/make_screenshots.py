"""Screenshots of the dashboard for the docs, from real jobs: the bundled demo teacher compressed by the real
engine on the bundled demo audio (quick preset, shortened), through `skillkd serve`.

    python3 docs/make_screenshots.py [--out docs] [--stage1-steps 60 --stage2-steps 20]

Writes, at 1280 px wide: dashboard-jobs.png (the list with a running and a finished job),
dashboard-running.png, dashboard-finished.png, dashboard-new.png (the new-job form) and dashboard-compare.png
(the two jobs side by side); and at 390 px (a phone): dashboard-finished-phone.png, dashboard-new-phone.png
and dashboard-compare-phone.png. Needs Debian's Chromium at /usr/bin/chromium and the playwright package;
takes a few minutes on a CPU.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def zipped(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, f"{folder.name}/{p.relative_to(folder)}")
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    parser.add_argument("--stage1-steps", type=int, default=60)
    parser.add_argument("--stage2-steps", type=int, default=20)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    home = Path(tempfile.mkdtemp(prefix="skillkd-shots-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKILLKD_")}
    env.update(SKILLKD_HOME=str(home), PYTHONPATH=str(REPO))
    log = open(home / "serve.log", "wb")  # noqa: SIM115
    server = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        key = (home / "admin.key").read_text().strip()
        api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120)
        zip_type = {"Content-Type": "application/zip"}
        teacher = api.post(
            "/v1/teachers?name=demo-teacher",
            content=zipped(REPO / "core/assets/demo-teacher"),
            headers=zip_type,
        ).json()
        audio = api.post(
            "/v1/datasets?name=demo-audio", content=zipped(REPO / "core/assets/demo-audio"), headers=zip_type
        ).json()
        spec = {"stage1_steps": args.stage1_steps, "stage2_steps": args.stage2_steps}

        def submit(method: str) -> str:
            r = api.post(
                "/v1/jobs",
                json={
                    "teacher_id": teacher["id"],
                    "dataset_id": audio["id"],
                    "spec": {**spec, "method": method},
                },
            )
            r.raise_for_status()
            return r.json()["id"]

        def wait(job_id: str, ok) -> dict:
            while True:
                job = api.get(f"/v1/jobs/{job_id}").json()
                if ok(job):
                    return job
                if job["status"] in ("failed", "cancelled"):
                    raise SystemExit(f"job {job_id} {job['status']}: {job.get('error')}")
                time.sleep(1)

        first = submit("skill")
        wait(first, lambda j: j["status"] == "succeeded")
        second = submit("dphubert")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(f"{url}/ui/")
            page.fill("#api-key", key)
            page.click("form.login button[type=submit]")
            page.wait_for_selector("#nav:not([hidden])")
            wait(
                second,
                lambda j: (
                    (j.get("progress") or {}).get("stage") == "distill_prune"
                    and (j["progress"].get("step") or 0) >= args.stage1_steps // 2
                ),
            )
            page.goto(f"{url}/ui/#/jobs")
            page.wait_for_selector(f"tr[data-job-id='{second}'] progress")
            height = page.evaluate("Math.ceil(document.querySelector('main').getBoundingClientRect().bottom)")
            page.screenshot(
                path=str(args.out / "dashboard-jobs.png"),
                clip={"x": 0, "y": 0, "width": 1280, "height": height},
            )
            page.goto(f"{url}/ui/#/jobs/{second}")
            page.wait_for_selector("#curves svg path.line[d^='M']")
            page.wait_for_timeout(1500)
            page.screenshot(path=str(args.out / "dashboard-running.png"), full_page=True)
            page.goto(f"{url}/ui/#/jobs/{first}")
            page.wait_for_selector("#architecture table")
            page.screenshot(path=str(args.out / "dashboard-finished.png"), full_page=True)

            def new_job_form(shot: str) -> None:
                page.goto(f"{url}/ui/#/new")
                page.wait_for_selector("#spec-clusters")
                page.select_option("#teacher-select", teacher["id"])
                page.select_option("#dataset-select", audio["id"])
                page.wait_for_selector("#dataset-info dl")
                page.screenshot(path=str(args.out / shot), full_page=True)

            new_job_form("dashboard-new.png")
            wait(second, lambda j: j["status"] == "succeeded")
            compare = f"{url}/ui/#/compare?jobs={first},{second}"
            page.goto(compare)
            page.wait_for_selector("#comparison figure.chart")
            page.screenshot(path=str(args.out / "dashboard-compare.png"), full_page=True)

            page.set_viewport_size({"width": 390, "height": 844})
            page.goto(f"{url}/ui/#/jobs/{first}")
            page.wait_for_selector("#architecture table")
            page.screenshot(path=str(args.out / "dashboard-finished-phone.png"), full_page=True)
            new_job_form("dashboard-new-phone.png")
            page.goto(f"{url}/ui/#/jobs")  # a hash change alone would not reload the comparison
            page.goto(compare)
            page.wait_for_selector("#comparison figure.chart")
            page.screenshot(path=str(args.out / "dashboard-compare-phone.png"), full_page=True)
            browser.close()
        print(
            f"wrote {args.out}/dashboard-{{jobs,running,finished,new,compare}}.png and "
            "dashboard-{finished,new,compare}-phone.png"
        )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        log.close()


if __name__ == "__main__":
    main()
