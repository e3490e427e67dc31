"""The web dashboard in a real headless Chromium against `skillkd serve` (fake engine): sign in with a key,
create a job through the form (with a 422 shown at its field), watch it advance without a reload, read the
finished job's plots and architecture, download an artifact and check its sha256, cancel a running job,
compare finished jobs, and check that another owner's key sees none of it. Screenshots of every page go to
test-artifacts/dashboard/."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
from dashboard_kit import audio_zip, no_js_errors, teacher_zip, wait_job

pytestmark = pytest.mark.browser


def test_create_job_through_the_form_and_watch_it_finish(page_for, service, inputs, shots):
    tmp = inputs["dir"]
    page = page_for("alice")
    page.goto(f"{service.url}/ui/#/new")
    page.wait_for_selector("#spec-device")

    # uploads: a rejected archive shows the server's code and message; a good one its validation result
    bad = tmp / "not-a-teacher.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("readme.txt", "no model here")
    page.set_input_files("#teacher-file", str(bad))
    page.wait_for_selector("#teacher-info .error")
    assert "teacher_invalid" in page.inner_text("#teacher-info .error code")
    page.set_input_files("#teacher-file", str(teacher_zip(tmp / "form-teacher.zip")))
    page.wait_for_selector("#teacher-info dl")
    assert "hubert" in page.inner_text("#teacher-info")
    assert page.get_attribute("#teacher-progress", "hidden") is None
    page.set_input_files("#dataset-file", str(audio_zip(tmp / "form-audio.zip", tmp / "form")))
    page.wait_for_selector("#dataset-info dl")
    assert "not_audio" in page.inner_text("#dataset-info")  # skipped files, by reason
    assert page.input_value("#teacher-select").startswith("tch_")

    # a value only the server rejects: shown at its field
    page.fill("#spec-stage1_steps", "25")
    page.fill("#spec-stage2_steps", "6")
    page.fill("#spec-device", "tpu")
    page.click("#submit-job")
    page.wait_for_selector("#spec-device-error:not([hidden])")
    assert "device must be" in page.inner_text("#spec-device-error")
    assert page.get_attribute("#spec-device", "aria-invalid") == "true"
    assert "validation_error" in page.inner_text("#form-status")
    page.screenshot(path=str(shots / "new-job-422.png"), full_page=True)

    page.fill("#spec-device", "cpu")
    page.click("#submit-job")
    page.wait_for_url("**/ui/#/jobs/job_*")
    job_id = page.url.rsplit("/", 1)[-1]
    page.evaluate("window.__sameDocument = true")

    # progress advances on the page without a reload
    page.wait_for_selector("#progress progress")
    first = float(page.get_attribute("#progress progress", "value") or 0)
    page.wait_for_function(
        "v => { const p = document.querySelector('#progress progress');"
        " return p && p.closest('#progress') && p.value > v && "
        "document.querySelector('#progress-text').textContent.includes('distill_prune'); }",
        arg=first,
    )
    page.wait_for_selector("#curves svg path.line[d^='M']")
    page.screenshot(path=str(shots / "job-running.png"), full_page=True)

    page.wait_for_selector(".badge[data-status=succeeded]", timeout=60_000)
    assert page.evaluate("window.__sameDocument") is True
    page.wait_for_selector("#architecture table")

    with service.client("alice") as c:
        job = c.get(f"/v1/jobs/{job_id}").json()
    report = job["metrics"]["report"]
    # plots: loss, sparsity against the target, λ, MACs; each with drawn lines
    charts = page.locator("#curves figure.chart")
    assert charts.count() == 4
    for i in range(4):
        assert charts.nth(i).locator("path.line[d^='M']").count() >= 1
    assert "Sparsity against the target" in page.inner_text("#curves")
    # the CKA heatmap from report.json's matrix, with the clusters boxed
    n = len(report["cka"])
    assert page.locator("#cka svg .cells rect").count() == n * n
    assert page.locator("#cka svg rect.cluster-box").count() == len(report["clusters"])
    # the pruned architecture, per layer, against the teacher's
    rows = page.locator("#architecture table").first.locator("tbody tr")
    assert rows.count() == len(report["student"]["layers"]) == 12
    first_layer = report["student"]["layers"][0]
    assert f"{first_layer['ffn']} / 3072" in rows.first.inner_text()
    stages = page.locator("ol.timeline li[data-state=done]")
    assert stages.count() == 5
    assert page.locator("#sizes").inner_text().count("Parameters") == 1
    page.screenshot(path=str(shots / "job-finished.png"), full_page=True)
    no_js_errors(page)


def test_download_an_artifact_and_check_its_sha256(page_for, service, finished, shots):
    job = finished[0]
    page = page_for("alice")
    page.goto(f"{service.url}/ui/#/jobs/{job['id']}")
    page.wait_for_selector("button.download[data-artifact=model]")
    with service.client("alice") as c:
        listed = {a["name"]: a for a in c.get(f"/v1/jobs/{job['id']}/artifacts").json()["items"]}
    saved_as = {"model": "model.zip", "report.json": "report.json", "onnx": "model.onnx"}
    for name in ("model", "report.json", "onnx"):
        with page.expect_download() as info:
            page.click(f"button.download[data-artifact='{name}']")
        assert info.value.suggested_filename == saved_as[name] == listed[name]["filename"]
        path = info.value.path()
        assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == listed[name]["sha256"]
        page.wait_for_selector(f"#download-status:has-text('{name}')")
        assert "sha256 verified" in page.inner_text("#download-status")
    assert listed["model"]["sha256"] in page.inner_text("#artifacts")
    # evaluation results are shown when the job has them
    assert "Speaker ID accuracy" in page.text_content("#evaluation")
    page.screenshot(path=str(shots / "job-artifacts.png"), full_page=True)
    no_js_errors(page)


def test_jobs_list_is_live_and_a_running_job_can_be_cancelled(page_for, service, inputs, finished, shots):
    with service.client("alice") as c:
        r = c.post(
            "/v1/jobs",
            json={
                "teacher_id": inputs["teacher"]["id"],
                "dataset_id": inputs["dataset"]["id"],
                "spec": {"stage1_steps": 600},
            },
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        wait_job(c, job_id, {"running"})
    try:
        _watch_pause_resume_and_cancel(page_for, service, job_id, shots)
    finally:  # a failure in there must not leave a 600-step job holding the only worker for the next tests
        with service.client("alice") as c:
            c.post(f"/v1/jobs/{job_id}/cancel")


def _watch_pause_resume_and_cancel(page_for, service, job_id: str, shots: Path) -> None:
    page = page_for("alice")
    row = f"tr[data-job-id='{job_id}']"
    page.wait_for_selector(f"{row} progress")
    page.evaluate("window.__sameDocument = true")
    first = float(page.get_attribute(f"{row} progress", "value") or 0)
    page.wait_for_function(f'v => document.querySelector("{row} progress").value > v + 2', arg=first)
    assert page.evaluate("window.__sameDocument") is True
    assert "running" in page.inner_text(row)
    assert "ETA" in page.inner_text("thead")
    page.screenshot(path=str(shots / "jobs-list.png"), full_page=True)

    # filter by status: only the running job is listed
    page.select_option("#status-filter", "running")
    page.wait_for_selector("caption:has-text('status running')")
    assert page.locator("tbody tr[data-job-id]").count() == 1

    # keyboard: Tab to the job's link and open it with Enter
    page.locator(f"{row} a").focus()
    page.keyboard.press("Enter")
    page.wait_for_selector("#action-cancel")
    assert page.locator("#action-delete").count() == 0  # delete is for finished jobs only
    with service.client("alice") as c:
        pausable = "/v1/jobs/{job_id}/pause" in c.get("/openapi.json").json()["paths"]
    assert page.locator("#action-pause").count() == int(pausable)  # shown only when the API has it
    if pausable:
        page.click("#action-pause")
        page.wait_for_selector(".badge[data-status=paused]", timeout=30_000)
        assert page.locator("#action-resume").count() == 1
        page.click("#action-resume")
        page.wait_for_selector(".badge[data-status=running]", timeout=45_000)
    page.click("#action-cancel")
    page.wait_for_selector(".badge[data-status=cancelled]", timeout=30_000)
    assert page.locator("#action-cancel").count() == 0
    assert page.locator("#action-delete").count() == 1
    with service.client("alice") as c:
        assert c.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
    page.screenshot(path=str(shots / "job-cancelled.png"), full_page=True)
    no_js_errors(page)


def test_jobs_list_pages_newest_first(page_for, service, finished):
    page = page_for("alice")
    page.goto(f"{service.url}/ui/#/jobs?limit=1")
    page.wait_for_selector("tbody tr[data-job-id]")
    first = page.get_attribute("tbody tr[data-job-id]", "data-job-id")
    page.click("#older")
    page.wait_for_selector(f"tbody tr[data-job-id]:not([data-job-id='{first}'])")
    second = page.get_attribute("tbody tr[data-job-id]", "data-job-id")
    assert page.locator("tbody tr[data-job-id]").count() == 1
    assert second < first  # ids are time-ordered: the older page holds the older job
    page.click("#newer")
    page.wait_for_selector(f"tbody tr[data-job-id='{first}']")
    no_js_errors(page)


def test_a_failed_job_shows_its_error_code_and_message(page_for, service, inputs, finished, shots):
    with service.client("alice") as c:
        r = c.post(
            "/v1/jobs",
            json={
                "teacher_id": inputs["teacher"]["id"],
                "dataset_id": inputs["dataset"]["id"],
                "spec": {"device": "cuda"},
            },
        )
        job = wait_job(c, r.json()["id"], {"failed"})
    page = page_for("alice")
    page.goto(f"{service.url}/ui/#/jobs/{job['id']}")
    page.wait_for_selector("#job-error")
    text = page.inner_text("#job-error")
    assert (
        job["error"]["code"] == "spec_invalid" and "spec_invalid" in text and "CUDA is not available" in text
    )
    assert page.locator("ol.timeline li[data-state=done]").count() == 0
    page.screenshot(path=str(shots / "job-failed.png"), full_page=True)
    no_js_errors(page)


def test_compare_two_finished_jobs(page_for, service, finished, shots):
    page = page_for("alice")
    page.goto(f"{service.url}/ui/#/compare")
    for job in finished:
        page.check(f"#cmp-{job['id']}")
    page.click("form.card button[type=submit]")
    page.wait_for_selector("#compare-table")
    header = page.locator("#compare-table thead th")
    assert header.count() == 3  # the row labels and two jobs
    text = page.inner_text("#compare-table")
    assert "dphubert" in text and "skill" in text
    loss = page.locator("#cmp-curves figure.chart").first
    assert loss.locator("path.line[d^='M']").count() == 2  # curves overlaid
    page.screenshot(path=str(shots / "compare.png"), full_page=True)
    no_js_errors(page)


def test_another_owner_sees_none_of_alices_jobs(page_for, service, finished, shots):
    page = page_for(None)
    page.fill("#api-key", "skd_not_a_key")
    page.click("form.login button[type=submit]")
    page.wait_for_selector("#login-status .error")
    assert "unauthorized" in page.inner_text("#login-status")
    page.fill("#api-key", service.keys["bob"])
    page.click("form.login button[type=submit]")
    page.wait_for_selector("td.empty")
    assert page.locator("tbody tr[data-job-id]").count() == 0
    page.screenshot(path=str(shots / "jobs-list-bob.png"), full_page=True)
    page.goto(f"{service.url}/ui/#/jobs/{finished[0]['id']}")
    page.wait_for_selector("h1:has-text('Job not found')")
    page.goto(f"{service.url}/ui/#/compare")
    page.wait_for_selector("text=No finished jobs yet.")
    page.goto(f"{service.url}/ui/#/new")
    page.wait_for_selector("#teacher-select")
    assert page.locator("#teacher-select option").count() == 1  # only "choose"
    with service.client("bob") as c:
        assert c.get("/v1/jobs").json()["items"] == []
    no_js_errors(page)


def test_phone_width_and_security_headers(page_for, service, finished, shots):
    page = page_for("alice", width=390, height=844)
    page.goto(f"{service.url}/ui/#/jobs/{finished[0]['id']}")
    page.wait_for_selector("#cka svg")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"the page is {overflow}px wider than a phone screen"
    page.screenshot(path=str(shots / "job-finished-phone.png"), full_page=True)
    for route, ready in (
        ("#/jobs", "tbody tr[data-job-id]"),
        ("#/new", "#spec-device"),
        ("#/compare", "form.card"),
    ):
        page.goto(f"{service.url}/ui/{route}")
        page.wait_for_selector(ready)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"{route} is {overflow}px wider than a phone screen"
        page.screenshot(path=str(shots / f"phone-{route[2:]}.png"), full_page=True)
    response = page.request.get(f"{service.url}/ui/")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    # the key stays in session storage and never reaches a URL
    assert service.keys["alice"] not in page.url
    assert f"dashboard: {service.url}/ui/" in service.log.read_text()  # `skillkd serve` prints where it is
    no_js_errors(page)


def test_the_page_modules_small_functions(page_for, service):
    """Tick values, thinning, cluster boxes and the 422 parser, run in the browser as the page runs them."""
    page = page_for(None)
    got = page.evaluate("""async () => {
        const plot = await import('/ui/js/plot.js');
        const job = await import('/ui/js/views/job.js');
        const jobs = await import('/ui/js/views/jobs.js');
        const form = await import('/ui/js/specform.js');
        const fmt = await import('/ui/js/format.js');
        const many = Array.from({length: 10000}, (_, i) => [i, i * i]);
        return {
            ticks: plot.ticks(0, 1, 5), ticksNeg: plot.ticks(-0.83, -0.41, 4),
            thin: [plot.thin(many).length, plot.thin(many).at(-1)[0], plot.thin(many.slice(0, 10)).length],
            boxes: job.clusterBoxes([[0, 1, 2], [3], [5, 7, 8]]),
            errors: form.fieldErrors({message: "body.spec.device: Value error, device must be auto; "
                + "body.spec.sparsity: Input should be less than 1",
                fields: ["body.spec.device", "body.spec.sparsity"]}),
            checkError: form.fieldErrors({
                message: "spec.target_params: 5000000000 is above the teacher's 94M"}),
            stages: job.stageTimes([
                {kind: "stage_started", stage: "calibrate", created_at: "2026-01-01T00:00:00Z"},
                {kind: "stage_finished", stage: "calibrate", created_at: "2026-01-01T00:00:05Z",
                 duration_s: 4.5},
                {kind: "stage_started", stage: "distill_prune", created_at: "2026-01-01T00:00:06Z"}]),
            shortId: fmt.shortId("job_01a2337f36963349a7853fbcd5c2"), duration: fmt.duration(3725),
            latency: job.latencyText({latency: {target: "cpu", threads: 1, target_speedup: 4,
                predicted_speedup: 4.3549, measured_speedup: 4.031,
                landing: {measured_speedup: 4.0824, candidates: [{}, {}, {}, {}, {}, {}, {}]}}}),
            latencyMargin: job.latencyText({latency: {target: "cpu", threads: 1, target_speedup: 4,
                predicted_speedup: 4.5, measured_speedup: 4.25,
                landing: {measured_speedup: 4.2312, margin: 0.05, candidates: [{}, {}]}}}),
            latencyUntimed: job.latencyText({latency: {target: "onnx-int8", threads: 2, target_speedup: 2,
                predicted_speedup: 2.01, measured_speedup: null, landing: "skipped (SKILLKD_SPEED_RUNS=0)"}}),
            noLatency: job.latencyText({speed: {}}),
            latencyGpu: job.latencyText({latency: {target: "cuda", threads: 1, target_speedup: 3,
                predicted_speedup: 3.1, measured_speedup: 2.95, landing: "skipped (SKILLKD_SPEED_RUNS=0)"}}),
            targetGpu: jobs.describeTarget({target_speedup: 3, speed_target: "cuda"}),
            targetCpu: jobs.describeTarget({target_speedup: 4, speed_threads: 2}),
        };
    }""")
    assert got["ticks"] == [0, 0.2, 0.4, 0.6, 0.8, 1]
    assert got["ticksNeg"] == [-0.8, -0.7, -0.6, -0.5]
    assert got["thin"] == [1501, 9999, 10]
    assert got["boxes"] == [[0, 2], [3, 3], [5, 5], [7, 8]]
    assert got["errors"] == {"spec.device": "device must be auto", "spec.sparsity": "must be less than 1"}
    assert got["checkError"] == {"spec.target_params": "5000000000 is above the teacher's 94M"}
    assert (
        got["stages"]["calibrate"]["duration"] == 4.5 and got["stages"]["distill_prune"]["finished"] is None
    )
    assert got["shortId"] == "job_…53fbcd5c2" and got["duration"] == "1 h 02 min"
    assert got["latency"] == (
        "Speed-up: asked 4× on cpu (1 thread), predicted 4.35×, measured 4.08× when landed (the kept one "
        "of 7 candidates timed), measured 4.03× in the report."
    )
    assert got["latencyMargin"] == (
        "Speed-up: asked 4× on cpu (1 thread), predicted 4.5×, measured 4.23× when landed (the kept one "
        "of 2 candidates timed, aiming at 4.2× with its 5% margin), measured 4.25× in the report."
    )
    assert got["latencyUntimed"] == "Speed-up: asked 2× on onnx-int8 (2 threads), predicted 2.01×."
    assert got["noLatency"] is None
    assert got["latencyGpu"] == "Speed-up: asked 3× on cuda, predicted 3.1×, measured 2.95× in the report."
    assert got["targetGpu"] == "3× faster on cuda" and got["targetCpu"] == "4× faster on cpu (2 threads)"


def test_a_fine_tuned_teachers_job_says_what_its_student_kept(page_for, service, inputs, tmp_path):
    """Issue 23: the job page names the teacher's task head and what became of it, kept or dropped."""
    from dashboard_kit import upload

    from tests.utils.models import save_tiny_task_teacher
    from tests.utils.servicekit import zip_dir

    ctc = save_tiny_task_teacher(tmp_path / "ctc", "ctc")
    with service.client("alice") as c:
        teacher = upload(c, "teachers", zip_dir(ctc))
        jobs = []
        for drop in (False, True):
            body = {
                "teacher_id": teacher["id"],
                "dataset_id": inputs["dataset"]["id"],
                "spec": {"stage1_steps": 4, "stage2_steps": 2, "drop_head": drop},
            }
            r = c.post("/v1/jobs", json=body)
            assert r.status_code == 202, r.text
            jobs.append(wait_job(c, r.json()["id"], {"succeeded"}))
    page = page_for("alice")
    for job, said in zip(
        jobs, ("kept, distilled on the teacher's outputs", "dropped (drop_head)"), strict=True
    ):
        page.goto(f"{service.url}/ui/#/jobs/{job['id']}")
        page.wait_for_selector("dl.facts :text('Task head')")
        text = page.inner_text("dl.facts")
        assert "HubertForCTC: a CTC head over 12 tokens" in text and said in text
    no_js_errors(page)
