// #/compare[?jobs=a,b]: finished jobs of one teacher side by side: size, MACs, speed, PER / speaker ID, the
// speed / quality trade-off (quality against each job's measured speed-up, Pareto front marked), and their
// training curves overlaid. Each loss is measured against its job's own targets (SKILL: means of
// the teacher's layer clusters; DPHuBERT: single teacher layers); where these differ the chart says so
// rather than rescaling the curves, since no rescaling makes losses against different targets comparable.

import { get, getAll } from "../api.js";
import { errorBox, fill, h, table } from "../dom.js";
import * as fmt from "../format.js";
import { lineChart, tradeoffChart } from "../plot.js";
import { clustersText, landedSparsity, landingPoints, trainingSeries } from "./job.js";
import { describeTarget } from "./jobs.js";

export async function renderCompare(main, params, signal) {
  const chosen = (params.get("jobs") || "").split(",").filter(Boolean);
  const finished = await getAll("/v1/jobs?status=succeeded", { signal, max: 400 });
  const byTeacher = new Map();
  for (const j of finished) {
    if (!byTeacher.has(j.teacher_id)) byTeacher.set(j.teacher_id, []);
    byTeacher.get(j.teacher_id).push(j);
  }
  const status = h("p", { id: "compare-status", "aria-live": "polite", class: "muted" });
  const compareButton = h("button", { type: "submit", class: "primary", disabled: true }, "Compare");
  const boxes = [];
  const groups = [...byTeacher.entries()].map(([teacherId, jobs]) => h("fieldset", { class: "compare-group" },
    h("legend", {}, "Teacher ", h("span", { class: "mono" }, teacherId), ` (${jobs.length} finished job${jobs.length > 1 ? "s" : ""})`),
    h("ul", { class: "checks" }, jobs.map((j) => {
      const box = h("input", { type: "checkbox", id: `cmp-${j.id}`, value: j.id, checked: chosen.includes(j.id), dataset: { teacher: teacherId },
        onchange: check });
      boxes.push(box);
      const achieved = j.metrics && j.metrics.report ? j.metrics.report.achieved_sparsity : null;
      return h("li", {}, box, h("label", { for: `cmp-${j.id}` }, h("span", { class: "mono" }, fmt.shortId(j.id)),
        ` ${j.spec.method}, ${describeTarget(j.spec)}`, achieved !== null && achieved !== undefined ? `, achieved ${fmt.percent(achieved)}` : "",
        `, ${fmt.time(j.finished_at)}`));
    }))));

  function check() {
    const picked = boxes.filter((b) => b.checked);
    const teachers = new Set(picked.map((b) => b.dataset.teacher));
    compareButton.disabled = picked.length < 2 || teachers.size !== 1;
    status.textContent = picked.length < 2 ? "Pick two or more finished jobs of one teacher."
      : teachers.size > 1 ? "These jobs compress different teachers: pick jobs of one teacher." : `${picked.length} jobs picked.`;
  }
  check();

  const picker = h("form", { class: "card", onsubmit: (e) => {
    e.preventDefault();
    const ids = boxes.filter((b) => b.checked).map((b) => b.value);
    location.hash = `#/compare?jobs=${ids.map(encodeURIComponent).join(",")}`;
  } }, groups.length ? groups : h("p", {}, "No finished jobs yet."), h("div", { class: "submit-row" }, compareButton, status));

  const result = h("div", { id: "comparison" });
  fill(main, h("h1", {}, "Compare jobs"), picker, result);
  if (chosen.length < 2) return;

  fill(result, h("p", { class: "loading" }, "Loading the jobs…"));
  let jobs;
  try {
    jobs = await Promise.all(chosen.map((id) => get(`/v1/jobs/${encodeURIComponent(id)}`, { signal })));
  } catch (err) {
    fill(result, errorBox(err, "Comparison"));
    return;
  }
  if (new Set(jobs.map((j) => j.teacher_id)).size !== 1) {
    fill(result, errorBox({ code: "different_teachers", message: "the chosen jobs compress different teachers" }));
    return;
  }
  const events = await Promise.all(jobs.map((j) => allEvents(j.id, signal)));
  fill(result, comparison(jobs, events));
}

/** What a job's distillation loss is measured against: "the means of 4 layer clusters (0–2 | 3–5 | …)" for
 *  SKILL, "layers 0, 4, 8, 12" for DPHuBERT (single teacher layers; also SKILL given one-layer clusters). */
function lossTarget(job, report) {
  const clusters = report.clusters || job.clusters;
  if (!Array.isArray(clusters) || !clusters.length) return null;
  if (clusters.every((c) => Array.isArray(c) && c.length === 1)) return `layers ${clusters.map((c) => c[0]).join(", ")}`;
  return `means of ${clusters.length} layer clusters (${clustersText(clusters)})`;
}

function notEvaluated(job) {
  return job.spec.evaluate ? "–" : h("span", { class: "muted" }, "not evaluated");
}

async function allEvents(id, signal) {
  const out = [];
  let after = 0;
  for (;;) {
    const page = await get(`/v1/jobs/${encodeURIComponent(id)}/events?after=${after}&limit=1000`, { signal });
    out.push(...page.items);
    if (!page.next_cursor) return out;
    after = page.next_cursor;
  }
}

/** The speed-up a job measured when it ended: teacher time / student time on one CPU thread, the two
 *  interleaved in one process (report.json `speed.cpu_1_thread`); null when the job timed nothing
 *  (SKILLKD_SPEED_RUNS=0). */
function measuredSpeedup(report) {
  const v = report.speed && report.speed.cpu_1_thread && report.speed.cpu_1_thread.speedup;
  return Number.isFinite(v) ? v : null;
}

const QUALITY = [
  { key: "eval_per", name: "PER", label: "PER (%)", higher: false },
  { key: "eval_sid_accuracy", name: "speaker ID accuracy", label: "speaker ID accuracy (%)", higher: true },
];

/** Quality against measured speed-up, one point per job, the Pareto front joined; PER when any chosen job has
 *  one (evaluation), else speaker ID accuracy, else a note. The teacher sits at 1×: a job's report has no
 *  quality figure of the teacher, so it is a reference line there. Jobs without the metric or a speed-up are
 *  named in the note. */
function tradeoff(jobs, reports) {
  const headline = (r) => r.evaluation_headline || {};
  const metric = QUALITY.find((m) => reports.some((r) => Number.isFinite(headline(r)[m.key])));
  if (!metric) {
    return h("p", { class: "muted", id: "tradeoff-none" }, "No quality to plot against speed: none of these jobs was evaluated " +
      "(submit with evaluation on to get its PER and speaker ID accuracy).");
  }
  const points = [];
  const out = [];
  jobs.forEach((j, i) => {
    const value = headline(reports[i])[metric.key];
    const speedup = measuredSpeedup(reports[i]);
    const name = `${fmt.shortId(j.id)} ${j.spec.method}, ${describeTarget(j.spec)}`;
    if (!Number.isFinite(value)) out.push(`${fmt.shortId(j.id)} (not evaluated)`);
    else if (speedup === null) out.push(`${fmt.shortId(j.id)} (no measured speed-up)`);
    else points.push({ id: j.id, name, x: speedup, y: 100 * value });
  });
  const notes = [`The teacher is the line at 1×: the jobs' reports carry no ${metric.name} of the teacher.`];
  if (out.length) notes.push(`Left out: ${out.join(", ")}.`);
  return tradeoffChart({ title: `${metric.name} against measured speed-up`, xLabel: "measured speed-up, CPU 1 thread (× the teacher)",
    yLabel: metric.label, points, higherIsBetter: metric.higher, yFormat: (v) => `${+v.toFixed(2)}`,
    vLines: [{ x: 1, label: "teacher (1×)" }], note: notes.join(" ") });
}

function studentEval(report) {
  const models = (report.evaluation && report.evaluation.models) || [];
  return models[0] || null;
}

function comparison(jobs, events) {
  const reports = jobs.map((j) => (j.metrics && j.metrics.report) || {});
  const teacherParams = reports.map((r) => r.teacher && r.teacher.num_params).find(Boolean);
  const rows = [
    ["Method", (j) => `${j.spec.method} (${j.spec.preset})`],
    ["Target", (j) => describeTarget(j.spec)],
    ["Achieved sparsity", (j, r) => fmt.percent(r.achieved_sparsity, 2)],
    ["Student parameters", (j, r) => (r.student ? `${fmt.si(r.student.num_params)} (${fmt.percent(r.student.num_params / teacherParams)} of ${fmt.si(teacherParams)})` : "–")],
    ["MACs / s of audio", (j, r) => {
      const e = studentEval(r);
      const macs = (r.student && (r.student.macs_per_second ?? r.student.macs)) ?? (e && e.macs_per_second);
      return macs ? fmt.si(macs) : "–";
    }],
    ["CPU real-time factor (lower is faster)", (j, r) => {
      const cpu = r.speed && (r.speed.cpu_1_thread || r.speed.cpu_all_threads);
      if (cpu && cpu.student_rtf !== undefined) {
        return `${fmt.num(cpu.student_rtf, 3)}${cpu.speedup ? ` (${fmt.num(cpu.speedup, 3)}× the teacher's speed)` : ""}`;
      }
      const e = studentEval(r);
      return e && e.speed && e.speed.cpu ? fmt.num(e.speed.cpu.rtf, 3) : "–";
    }],
    ["PER (%)", (j, r) => {
      const per = (r.evaluation_headline || {}).eval_per;
      return per !== undefined ? (100 * per).toFixed(2) : notEvaluated(j);
    }],
    ["Speaker ID accuracy (%)", (j, r) => {
      const acc = (r.evaluation_headline || {}).eval_sid_accuracy;
      return acc !== undefined ? (100 * acc).toFixed(2) : notEvaluated(j);
    }],
    ["Clusters", (j, r) => (r.clusters ? JSON.stringify(r.clusters) : "–")],
    ["Training audio / s (stage 1)", (j, r) => {
      const v = r.stage1 && r.stage1.final && r.stage1.final.audio_s_per_s;
      return v ? `${fmt.num(v, 3)} s/s` : "–";
    }],
    ["Wall time", (j) => (j.started_at && j.finished_at ? fmt.duration((fmt.parseTime(j.finished_at) - fmt.parseTime(j.started_at)) / 1000) : "–")],
  ];
  const head = h("tr", {}, h("th", { scope: "col" }, ""), jobs.map((j) => h("th", { scope: "col" },
    h("a", { href: `#/jobs/${encodeURIComponent(j.id)}`, class: "mono" }, fmt.shortId(j.id)))));
  const body = rows.map(([label, cell]) => h("tr", {}, h("th", { scope: "row" }, label),
    jobs.map((j, i) => h("td", {}, cell(j, reports[i])))));
  const grid = h("div", { class: "table-wrap" }, h("table", { id: "compare-table" },
    h("caption", {}, "Finished jobs side by side"), h("thead", {}, head), h("tbody", {}, body)));

  const runs = events.map((ev) => trainingSeries(ev));
  const series = runs.map((run) => run.points);
  const name = (j) => `${fmt.shortId(j.id)} ${j.spec.method}`;
  const targets = jobs.map((j, i) => lossTarget(j, reports[i]));
  const differ = new Set(targets).size > 1;
  const loss = lineChart({ title: "Distillation loss, overlaid", xLabel: "optimiser step", yLabel: "loss (no unit)",
    series: jobs.map((j, i) => ({ name: `${name(j)}: loss against ${targets[i] || "its targets"}`,
      points: (series[i].distill || series[i].loss || []).map(([x, y]) => [x, y]) })),
    note: differ ? "These losses are not comparable: they are measured against different targets (" +
      jobs.map((j, i) => `${j.spec.method}: ${targets[i] || "unknown"}`).join("; ") + "). A target that is " +
      "easier to predict gives a lower loss, so a lower curve does not mean a better student, and no rescaling " +
      "removes that. Each curve shows how its own run converged; compare the students by PER and speaker ID " +
      "in the table above (jobs submitted with evaluation)." : null });
  // each job's expected sparsity in stage 1, then the size its finalize landed on (as on the job's page)
  const sparsity = lineChart({ title: "Sparsity (expected in stage 1, then achieved), overlaid", xLabel: "optimiser step",
    yLabel: "sparsity (%)", yMin: 0, yMax: 100, yFormat: (v) => `${+v.toFixed(1)}%`,
    series: jobs.map((j, i) => {
      const stage1 = (series[i].sparsity || []).filter((p) => p[2] === "distill_prune").map(([x, y]) => [x, 100 * y]);
      const landed = landedSparsity(events[i], reports[i], null);
      const tail = landingPoints(stage1, landed && landed.params, runs[i].boundary, runs[i].end).slice(1);
      return { name: landed && landed.params !== undefined ? `${name(j)}: achieved ${(100 * landed.params).toFixed(1)}%` : name(j),
        points: [...stage1, ...tail], marker: tail.length > 0 };
    }) });
  return [h("section", { "aria-labelledby": "cmp-table-h" }, h("h2", { id: "cmp-table-h" }, "Side by side"), grid),
    h("section", { "aria-labelledby": "cmp-tradeoff-h", id: "cmp-tradeoff" }, h("h2", { id: "cmp-tradeoff-h" }, "Speed against quality"),
      tradeoff(jobs, reports)),
    h("section", { "aria-labelledby": "cmp-curves-h", id: "cmp-curves" }, h("h2", { id: "cmp-curves-h" }, "Curves"), h("div", { class: "charts" }, loss, sparsity))];
}
