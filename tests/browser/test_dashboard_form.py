"""The new-job form against the CLI and the API (issue 22, item 12): it reads what `skillkd compress`
reads (`--clusters 0;1-4;5-8;9-12`, counts such as 24M) and sends what the API expects, shows each 422 error
in plain words beside its own field, shows the chosen preset's effective defaults, and offers evaluation with
its measured cost."""

from __future__ import annotations

import json

import pytest
from dashboard_kit import no_js_errors, wait_job

from cli.spec_options import parse_clusters
from core.spec import DEFAULT_SPARSITY, parse_param_count

pytestmark = pytest.mark.browser

# Fields whose default the preset decides (null in the schema).
PRESET_FIELDS = (
    "stage1_steps",
    "stage2_steps",
    "batch_seconds",
    "speed_perturbation",
    "stage2_speed_perturbation",
    "checkpoint_every",
)


def presets_body() -> dict:
    """What GET /v1/presets answers (the route the form reads the presets' defaults from): every preset's
    resolved recipe of each stage, and stage 2's steps with the options that lengthen it."""
    from api.routes.presets import preset_recipes

    return preset_recipes()


def open_form(page_for, service, inputs, *, width: int = 1280):
    page = page_for("alice", width=width)
    page.goto(f"{service.url}/ui/#/new")
    page.wait_for_selector("#spec-clusters")
    page.select_option("#teacher-select", inputs["teacher"]["id"])
    page.select_option("#dataset-select", inputs["dataset"]["id"])
    return page


def visible_field_errors(page) -> dict[str, str]:
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('#new-job .field')]
            .map((f) => [f.dataset.field.replace(/^spec\\./, ''), f.querySelector('.field-error')])
            .filter(([, e]) => e && !e.hidden).map(([n, e]) => [n, e.textContent]))"""
    )


def test_the_form_takes_the_clis_clusters_syntax_and_counts(page_for, service, inputs, shots):
    page = open_form(page_for, service, inputs)
    page.fill("#spec-clusters", "0;1-4;5-8;9-12")
    page.fill("#spec-target_params", "24M")
    page.fill("#spec-stage1_steps", "6")
    page.fill("#spec-stage2_steps", "2")
    page.click("details.more-options summary")
    page.fill("#spec-seed", "9007199254740993")  # 2^53 + 1: a JSON number would lose the last digit
    page.click("#submit-job")
    page.wait_for_url("**/ui/#/jobs/job_*")
    job_id = page.url.rsplit("/", 1)[-1]
    with service.client("alice") as c:
        job = c.get(f"/v1/jobs/{job_id}").json()
        assert job["spec"]["clusters"] == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
        assert job["spec"]["target_params"] == 24_000_000
        assert job["spec"]["seed"] == 2**53 + 1
        wait_job(c, job_id, {"succeeded"})
    no_js_errors(page)


def test_the_forms_parsers_read_what_the_cli_reads(page_for, service):
    """The page's clusters and count parsers against the CLI's own (cli.spec_options.parse_clusters,
    core.spec.parse_param_count), on the same texts: the same value, or an error from both."""
    clusters = ["4", " auto ", "0;1-4;5-8;9-12", "0;1-4;5,6,7;8-12", " 0 ; 1 - 2 ;3", "0;;1", "3-1", "0;1-x",
                "-1", "AUTO", "4.0", "12"]  # fmt: skip
    counts = ["24M", "950k", "2.5G", "23600000", " 1.5 m ", ".5k", "2.5", "3.5", "1e6", "24MB", "", "-3"]

    def py(fn, text):
        try:
            return fn(text)
        except ValueError:
            return "error"

    page = page_for(None)
    got = page.evaluate(
        """async ([clusters, counts]) => {
            const form = await import('/ui/js/specform.js');
            const run = (fn, t) => { try { return fn(t); } catch (e) { return 'error'; } };
            return [clusters.map((t) => run(form.parseClusters, t)),
                    counts.map((t) => run(form.parseCount, t))];
        }""",
        [clusters, counts],
    )
    assert got[0] == [py(parse_clusters, t) for t in clusters]
    assert got[1] == [py(parse_param_count, t) for t in counts]
    # the form also takes the API's own JSON spelling, and writes groups back in the CLI's
    back = page.evaluate(
        """async () => {
            const form = await import('/ui/js/specform.js');
            return [form.parseClusters('[[0],[1,2]]'), form.formatClusters([[0], [1, 2, 3, 4], [5, 7], [8]])];
        }"""
    )
    assert back == [[[0], [1, 2]], "0;1-4;5,7;8"]


def test_422_errors_are_shown_at_their_own_field_in_plain_words(page_for, service, inputs, shots):
    page = open_form(page_for, service, inputs)
    # valid clusters in the CLI's syntax, a device only the server refuses, a step count below its limit
    page.fill("#spec-clusters", "0;1-4;5-8;9-12")
    page.fill("#spec-device", "tpu")
    page.fill("#spec-stage1_steps", "0")
    page.click("#submit-job")
    page.wait_for_selector("#spec-device-error:not([hidden])")
    errors = visible_field_errors(page)
    assert set(errors) == {"device", "stage1_steps"}, errors
    assert errors["device"].startswith("device must be auto, cpu, cuda"), errors
    assert errors["stage1_steps"] == "must be greater than 0", errors
    for text in errors.values():
        for raw in ("body.", "Input should", "Value error", "literal[", ";"):
            assert raw not in text, errors
    page.screenshot(path=str(shots / "new-job-422-fields.png"), full_page=True)

    # an error about two fields together (the spec's own rule) is shown at both
    page.fill("#spec-device", "cpu")
    page.fill("#spec-stage1_steps", "6")
    page.fill("#spec-sparsity", "0.5")
    page.fill("#spec-target_params", "1000")
    page.click("#submit-job")
    page.wait_for_selector("#spec-target_params-error:not([hidden])")
    errors = visible_field_errors(page)
    assert errors == {
        "sparsity": "give either sparsity or target_params, not both",
        "target_params": "give either sparsity or target_params, not both",
    }, errors
    assert "2 fields" in page.inner_text("#form-status")
    no_js_errors(page)


def test_a_422_of_many_fields_is_split_by_field(page_for, service, inputs):
    """The API lists every field in `fields` but writes only the first five messages: each field gets its own
    message or none (the form then says what the field expects), never the whole answer."""
    spec = {"clusters": "x", "device": "tpu", "sparsity": 2, "stage1_steps": 0, "stage2_steps": -1,
            "batch_seconds": 0, "gpus": 0, "linkage": "x"}  # fmt: skip
    with service.client("alice") as c:
        r = c.post(
            "/v1/jobs",
            json={"teacher_id": inputs["teacher"]["id"], "dataset_id": inputs["dataset"]["id"], "spec": spec},
        )
    assert r.status_code == 422, r.text
    page = page_for(None)
    got = page.evaluate(
        """async (error) => (await import('/ui/js/specform.js')).fieldErrors(error)""", r.json()["error"]
    )
    assert set(got) == {f"spec.{name}" for name in spec}, got
    assert got["spec.sparsity"] == "must be less than 1"
    assert got["spec.linkage"] == "must be one of average, single, complete or ward"
    assert got["spec.clusters"] is None  # one error per accepted form: the field's own hint says what fits
    for message in got.values():
        assert message is None or not any(raw in message for raw in ("body.", "Input should", ";")), got


def test_the_form_shows_the_presets_defaults(page_for, service, inputs, shots):
    body = presets_body()
    page = page_for("alice")
    page.route(
        "**/v1/presets",
        lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(body)),
    )
    page.goto(f"{service.url}/ui/#/new")
    page.wait_for_selector("#spec-stage1_steps")
    page.wait_for_selector("#spec-stage1_steps-help:has-text('quick preset')")

    def help_of(name: str) -> str:  # text_content: the fields under "More options" are folded away
        return page.text_content(f"#spec-{name}-help")

    quick = body["presets"]["quick"]
    assert "default with the quick preset: 200" in help_of("stage1_steps")
    assert page.get_attribute("#spec-stage1_steps", "placeholder") == "200"
    assert f"default with the quick preset: {quick['stage2']['steps']}" in help_of("stage2_steps")
    longer = quick["stage2_steps_with"]["target_speedup"]
    assert longer == quick["stage2_steps_with"]["int8_aware"] != quick["stage2"]["steps"]
    stage2 = help_of("stage2_steps")
    assert f"({longer:,} with int8_aware or target_speedup)" in stage2, stage2
    assert "default with the quick preset: 0.2" in help_of("speed_perturbation")
    for name in PRESET_FIELDS:
        assert "default: none" not in help_of(name), (name, help_of(name))
    sparsity = help_of("sparsity")
    assert "default: none" not in sparsity and sparsity.count(str(DEFAULT_SPARSITY)) == 1, sparsity
    assert "200 steps" in page.inner_text("#spec-preset-help")
    page.screenshot(path=str(shots / "new-job-presets.png"), full_page=True)

    page.select_option("#spec-preset", "paper")
    page.wait_for_selector("#spec-stage1_steps-help:has-text('paper preset')")
    assert "default with the paper preset: 50,000" in help_of("stage1_steps")
    assert page.get_attribute("#spec-stage1_steps", "placeholder") == "50000"
    assert "default with the paper preset: 0" in help_of("speed_perturbation")
    no_js_errors(page)

    # a server without the route: the form says who decides, never "none"
    page = page_for("alice")
    page.route("**/v1/presets", lambda route: route.fulfill(status=404, body="{}"))
    page.goto(f"{service.url}/ui/#/new")
    page.wait_for_selector("#spec-stage1_steps")
    for name in PRESET_FIELDS:
        text = page.text_content(f"#spec-{name}-help")
        assert "default: none" not in text and "preset" in text, (name, text)
    no_js_errors(page)

    # when the service has the route, it answers what the form was written against
    with service.client("alice") as c:
        if "/v1/presets" in c.get("/openapi.json").json()["paths"]:
            assert c.get("/v1/presets").json() == body


def test_the_form_offers_evaluation_and_says_what_it_costs(page_for, service, inputs, finished, shots):
    page = open_form(page_for, service, inputs, width=390)
    help_text = page.inner_text("#spec-evaluate-help")
    assert "phone" in help_text and "split" in help_text, help_text  # what it needs
    assert "measured" in help_text and "min" in help_text, help_text  # what it costs
    assert page.is_visible("#spec-evaluate")  # among the first fields, not folded away
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1
    page.screenshot(path=str(shots / "new-job-phone.png"), full_page=True)
    no_js_errors(page)


def test_the_form_offers_a_speedup_target_greater_than_one(page_for, service, inputs, shots):
    page = open_form(page_for, service, inputs)
    field = page.locator("#spec-target_speedup")
    assert field.is_visible()  # among the main fields, beside the size and MACs targets
    page.fill("#spec-target_speedup", "1")
    page.click("#submit-job")
    page.wait_for_selector("#spec-target_speedup-error:not([hidden])")
    assert visible_field_errors(page)["target_speedup"] == "must be greater than 1"
    no_js_errors(page)
