"""A finished job's page and the Compare page against what the job produced (issue 22, item 12): the size
table fits a phone, the sparsity curve ends at the size the job reached, a job without evaluation says so and
how to get it, and overlaid losses say when they were measured against different targets."""

from __future__ import annotations

import pytest
from dashboard_kit import no_js_errors

pytestmark = pytest.mark.browser


def test_the_size_table_fits_a_phone(page_for, service, finished, shots):
    page = page_for("alice", width=390, height=844)
    page.goto(f"{service.url}/ui/#/jobs/{finished[0]['id']}")
    page.wait_for_selector("#sizes table")
    page.wait_for_selector("#evaluation table")
    outside = page.evaluate(
        """() => [...document.querySelectorAll('#sizes td, #sizes th, #evaluation td, #evaluation th')]
            .filter((c) => c.getClientRects().length)
            .map((c) => [c.textContent, c.getBoundingClientRect()])
            .filter(([, r]) => r.left < 0 || r.right > window.innerWidth + 0.5)
            .map(([t, r]) => `${t}: ${Math.round(r.left)}..${Math.round(r.right)}`)"""
    )
    assert outside == [], f"cells beyond the 390 px screen: {outside}"
    speedup = page.locator("#sizes td[data-label='Kept']").last
    assert "faster" in speedup.inner_text() and speedup.is_visible()
    page.locator("#sizes").screenshot(path=str(shots / "sizes-phone.png"))
    no_js_errors(page)


def test_the_sparsity_curve_ends_at_the_achieved_size(page_for, service, finished, shots):
    job = finished[0]
    report = job["metrics"]["report"]
    achieved = report["achieved_sparsity"]
    with service.client("alice") as c:
        events = c.get(f"/v1/jobs/{job['id']}/events?limit=1000").json()["items"]
    stage1 = [e for e in events if e["kind"] == "progress" and e["stage"] == "distill_prune"]
    assert stage1[-1]["metrics"]["sparsity"] < achieved - 0.2  # stage 1 ends short; finalize lands

    page = page_for("alice")
    page.goto(f"{service.url}/ui/#/jobs/{job['id']}")
    page.wait_for_selector("#sizes table")  # the results are drawn: nothing redraws the curves after them
    page.wait_for_selector("#curves figure.chart")
    chart = page.locator("#curves figure.chart", has_text="Sparsity against the target")
    landing = chart.locator("path.line[data-series^='achieved after finalize']")
    assert landing.count() == 1
    assert landing.get_attribute("d").count("L") >= 1  # drawn, not a lone point
    legend = chart.locator("ul.legend").inner_text()
    assert f"achieved after finalize (exact landing): {100 * achieved:.1f}%" in legend, legend
    # the curve's last point is the result, at the last optimiser step of stage 2
    steps = report["stage1"]["steps"] + report["stage2"]["steps"]
    desc = chart.locator("svg desc").first.text_content()
    assert f"last {100 * achieved:.1f}% at optimiser step {steps}" in desc, desc
    chart.screenshot(path=str(shots / "sparsity-landing.png"))
    no_js_errors(page)


def test_a_job_without_evaluation_says_how_to_get_it(page_for, service, finished, inputs, shots):
    job = finished[1]
    assert job["spec"]["evaluate"] is False
    page = page_for("alice")
    page.goto(f"{service.url}/ui/#/jobs/{job['id']}")
    page.wait_for_selector("#evaluation")
    text = page.inner_text("#evaluation")
    assert "Not evaluated (enable evaluation when submitting)" in text, text
    # the link opens the form with this job's inputs and spec, evaluation ticked
    page.click("#evaluation a#evaluate-again")
    page.wait_for_selector("#spec-evaluate")
    page.wait_for_function("document.querySelector('#teacher-select').value !== ''")
    assert page.input_value("#teacher-select") == job["teacher_id"]
    assert page.input_value("#dataset-select") == job["dataset_id"]
    assert page.is_checked("#spec-evaluate")
    assert page.input_value("#spec-method") == "dphubert"
    assert page.input_value("#spec-sparsity") == "0.7"
    assert page.input_value("#spec-stage1_steps") == "12"
    no_js_errors(page)


def test_compare_says_the_losses_have_different_targets(page_for, service, finished, shots):
    page = page_for("alice")
    page.goto(f"{service.url}/ui/#/compare?jobs={finished[0]['id']},{finished[1]['id']}")
    page.wait_for_selector("#compare-table")
    loss = page.locator("#cmp-curves figure.chart").first
    note = loss.locator(".chart-note").inner_text()
    assert "different targets" in note and "not comparable" in note, note
    legend = loss.locator("ul.legend").inner_text()
    skill_clusters = finished[0]["metrics"]["report"]["clusters"]
    assert f"means of {len(skill_clusters)} layer clusters" in legend, legend
    assert "layers 0, 4, 8, 12" in legend, legend
    # the sparsity overlay ends at each job's achieved size too
    sparsity = page.locator("#cmp-curves figure.chart").nth(1).locator("ul.legend").inner_text()
    for job in finished:
        assert f"achieved {100 * job['metrics']['report']['achieved_sparsity']:.1f}%" in sparsity, sparsity
    # quality: a job without evaluation says so rather than a bare dash
    assert "not evaluated" in page.inner_text("#compare-table")
    page.screenshot(path=str(shots / "compare-targets.png"), full_page=True)
    no_js_errors(page)


def test_compare_plots_quality_against_the_measured_speedup(page_for, service, evaluated, shots):
    from core.evaluation.compare import pareto_front

    reports = [job["metrics"]["report"] for job in evaluated]
    points = [
        (r["speed"]["cpu_1_thread"]["speedup"], 100 * r["evaluation_headline"]["eval_per"]) for r in reports
    ]
    front = pareto_front(points, higher_is_better=False)
    assert len(front) == 2, points  # the two 80% students: one beats the other
    page = page_for("carol")
    page.goto(f"{service.url}/ui/#/compare?jobs={','.join(job['id'] for job in evaluated)}")
    chart = page.locator("#cmp-tradeoff figure.chart.tradeoff")
    chart.wait_for()
    assert chart.locator("figcaption").inner_text() == "PER against measured speed-up"
    assert chart.locator("svg g.point").count() == 3
    on_front = chart.locator("svg g.point.on-front")
    assert on_front.count() == 2
    ids = [on_front.nth(i).get_attribute("data-id") for i in range(2)]
    assert ids == [evaluated[i]["id"] for i in front], (ids, points)
    assert chart.locator("svg path.front").get_attribute("d").count("L") == 1  # the front, joined
    # the teacher at 1x, and each point's figures in words (title, desc, legend)
    assert "teacher (1×)" in chart.locator("ul.legend").inner_text()
    desc = chart.locator("svg desc").text_content()
    assert desc.startswith("3 points:") and "Pareto front (lower PER (%) is better)" in desc, desc
    for speedup, per in points:
        assert f"{float(f'{speedup:.3g}'):g}×: {float(f'{per:.2f}'):g}" in desc, desc
    assert "carry no PER of the teacher" in chart.locator(".chart-note").inner_text()
    chart.screenshot(path=str(shots / "compare-tradeoff.png"))
    no_js_errors(page)


def test_compare_without_evaluation_says_there_is_no_tradeoff_to_plot(page_for, service, finished, shots):
    page = page_for("alice")
    page.goto(f"{service.url}/ui/#/compare?jobs={finished[0]['id']},{finished[1]['id']}")
    chart = page.locator("#cmp-tradeoff figure.chart.tradeoff")
    chart.wait_for()
    # one job evaluated: its point alone; the other one named as left out
    assert chart.locator("svg g.point").count() == 1
    note = chart.locator(".chart-note").inner_text()
    assert "Left out: " in note and note.endswith(" (not evaluated)."), note
    assert note.count("(not evaluated)") == 1, note
    no_js_errors(page)
