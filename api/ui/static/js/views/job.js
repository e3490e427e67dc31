// #/jobs/<id>: one job. Its events (history in JSON pages, then the live stream) drive the stage timeline
// and the training curves; its report (job.metrics.report, else the report.json artifact) drives the CKA
// heatmap, the pruned architecture, sizes and the evaluation; the artifacts list gives checked downloads.

import { ApiError, del, downloadArtifact, followEvents, get, offers, post } from "../api.js";
import { announce, badge, errorBox, fill, h, table } from "../dom.js";
import * as fmt from "../format.js";
import { PALETTE, heatmap, lineChart } from "../plot.js";
import { describeTarget } from "./jobs.js";

export const STAGES = [
  ["calibrate", "Calibrate (CKA, clusters)"],
  ["distill_prune", "Distill + prune"],
  ["finalize", "Finalize (physical pruning)"],
  ["final_distill", "Final distillation"],
  ["export", "Export"],
  ["evaluate", "Evaluate"],
];
const TRAINING = ["distill_prune", "final_distill"];
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

export async function renderJob(main, jobId, signal) {
  const path = `/v1/jobs/${encodeURIComponent(jobId)}`;
  let job;
  try {
    job = await get(path, { signal });
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      fill(main, h("h1", {}, "Job not found"),
        h("p", {}, `No job ${jobId} is visible to this API key. `, h("a", { href: "#/jobs" }, "Back to the jobs")));
      return;
    }
    throw err;
  }
  const can = {
    cancel: await offers("post", "/v1/jobs/{job_id}/cancel"),
    pause: await offers("post", "/v1/jobs/{job_id}/pause"),
    resume: await offers("post", "/v1/jobs/{job_id}/resume"),
    delete: await offers("delete", "/v1/jobs/{job_id}"),
  };

  const view = {
    header: h("div", { class: "title-row" }),
    actions: h("div", { class: "actions", role: "group", "aria-label": "Job actions" }),
    actionStatus: h("div", { id: "action-status", "aria-live": "polite" }),
    summary: h("section", { "aria-labelledby": "summary-h" }),
    progress: h("section", { id: "progress", "aria-labelledby": "progress-h" }),
    timeline: h("section", { id: "timeline", "aria-labelledby": "timeline-h" }),
    curves: h("section", { id: "curves", "aria-labelledby": "curves-h" }),
    results: h("div", { id: "results" }),
    artifacts: h("section", { id: "artifacts", "aria-labelledby": "artifacts-h" }),
    log: h("details", { id: "event-log" }),
  };
  fill(main, view.header, view.actions, view.actionStatus, view.summary, view.progress, view.timeline, view.curves,
    view.results, view.artifacts, view.log);

  const events = [];
  let lastId = 0;
  let reportShown = false;
  let following = false;
  let follow = () => {}; // set once the history is loaded

  // Every fresh read of the job goes through refresh(): reads are numbered and only the newest one applied,
  // so a slow answer (say, the read after the "paused" event) cannot overwrite a newer state (queued again
  // after Resume). While nothing streams (paused, or between two streams) the job is read every 2 s.
  let reads = 0;
  async function refresh() {
    const mine = ++reads;
    const fresh = await get(path, { signal });
    if (mine !== reads) return false; // a newer read was issued meanwhile; it decides
    const changed = fresh.status !== job.status;
    job = fresh;
    return changed;
  }

  function renderHeader() {
    fill(view.header, h("h1", {}, "Job ", h("span", { class: "mono" }, fmt.shortId(job.id))), badge(job.status));
    const buttons = [];
    const act = (label, method, suffix, confirmText, cls = "") => h("button", { type: "button", class: cls, id: `action-${label.toLowerCase()}`,
      onclick: async (e) => {
        if (confirmText && !window.confirm(confirmText)) return;
        e.target.disabled = true;
        fill(view.actionStatus, h("p", {}, `${label}…`));
        try {
          if (method === "delete") {
            await del(path, { signal });
            announce(`Job ${job.id} deleted`);
            location.hash = "#/jobs";
            return;
          }
          reads++; // a read in flight from before the action is stale now
          job = await post(`${path}/${suffix}`, undefined, { signal });
          fill(view.actionStatus);
          announce(`Job is ${job.status}`);
          renderAll();
          follow();
        } catch (err) {
          fill(view.actionStatus, errorBox(err, `${label} failed`));
          e.target.disabled = false;
        }
      } }, label);
    if (can.cancel && ["queued", "running", "pausing", "paused"].includes(job.status)) buttons.push(act("Cancel", "post", "cancel", null, "danger"));
    if (can.pause && ["queued", "running"].includes(job.status)) buttons.push(act("Pause", "post", "pause"));
    if (can.resume && job.status === "paused") buttons.push(act("Resume", "post", "resume"));
    if (can.delete && TERMINAL.has(job.status)) {
      buttons.push(act("Delete", "delete", "", `Delete job ${job.id} and its files? This cannot be undone.`, "danger"));
    }
    fill(view.actions, buttons);
  }

  function renderSummary() {
    const report = job.metrics && job.metrics.report;
    fill(view.summary, h("h2", { id: "summary-h", class: "sr-only" }, "Summary"),
      job.error ? h("div", { class: "error", role: "alert", id: "job-error" },
        h("strong", {}, "Failed: ", h("code", {}, job.error.code)), " ", job.error.message) : null,
      h("dl", { class: "facts" },
        fact("Method", `${job.spec.method}, ${job.spec.preset} preset`),
        fact("Target", describeTarget(job.spec)),
        fact("Teacher", h("span", { class: "mono" }, job.teacher_id),
          report && report.teacher ? ` (${report.teacher.architecture || ""} ${report.teacher.layout || ""}, ${report.teacher.num_layers} layers)` : ""),
        report && report.task_head ? fact("Task head", headText(report.task_head)) : null,
        fact("Dataset", h("span", { class: "mono" }, job.dataset_id)),
        fact("Created", fmt.time(job.created_at)),
        fact("Started", fmt.time(job.started_at)),
        fact("Finished", fmt.time(job.finished_at)),
        fact("Attempts", String(job.attempts)),
        job.clusters ? fact("Clusters", clustersText(job.clusters)) : null));
  }

  function renderProgress() {
    const p = job.progress;
    const running = !TERMINAL.has(job.status);
    const body = [];
    if (p && p.total_steps && running) {
      body.push(h("p", { class: "progress big" },
        h("progress", { max: p.total_steps, value: p.step, "aria-label": `${p.stage} progress` }),
        h("span", { id: "progress-text" }, `${p.stage}: step ${p.step} of ${p.total_steps}`),
        p.eta_s !== null && p.eta_s !== undefined ? h("span", { class: "muted" }, ` · ETA ${fmt.duration(p.eta_s)}`) : null));
    } else if (running) {
      body.push(h("p", { id: "progress-text" }, job.status === "queued" ? "Waiting for a worker." : `${job.stage || job.status}…`));
    }
    fill(view.progress, running ? h("h2", { id: "progress-h" }, "Progress") : null, body);
  }

  function renderTimeline() {
    const stages = stageTimes(events);
    const wanted = STAGES.filter(([name]) => name !== "evaluate" || job.spec.evaluate || stages[name]);
    const now = Date.now();
    const items = wanted.map(([name, label]) => {
      const st = stages[name];
      let state = "pending";
      let detail = "";
      if (st && st.finished !== null) {
        state = "done";
        detail = fmt.duration(st.duration ?? (st.finished - st.started) / 1000);
      } else if (st && st.started !== null) {
        state = TERMINAL.has(job.status) ? "stopped" : "running";
        detail = state === "running" ? `${fmt.duration((now - st.started) / 1000)} so far` : "stopped";
      }
      return h("li", { class: `stage ${state}`, "data-stage": name, "data-state": state },
        h("span", { class: "stage-name" }, label), h("span", { class: "stage-state" }, state),
        h("span", { class: "stage-time" }, detail));
    });
    fill(view.timeline, h("h2", { id: "timeline-h" }, "Stages"), h("ol", { class: "timeline" }, items));
  }

  // The teacher's size, for the size finalize landed on while the job has no report yet (read once).
  let teacher = null;
  let teacherAsked = false;
  function needTeacher(report) {
    if (teacherAsked || (report && report.student)) return;
    if (!events.some((e) => e.kind === "stage_finished" && e.stage === "finalize")) return;
    teacherAsked = true;
    get(`/v1/teachers/${encodeURIComponent(job.teacher_id)}`, { signal })
      .then((t) => { teacher = t; renderCurves(); })
      .catch(() => {}); // deleted since: the curve then ends with stage 1 until the report comes
  }

  let chartsQueued = false;
  function renderCurves() {
    if (chartsQueued) return;
    chartsQueued = true;
    requestAnimationFrame(() => {
      chartsQueued = false;
      const report = job.metrics && job.metrics.report;
      needTeacher(report);
      fill(view.curves, h("h2", { id: "curves-h" }, "Training curves"),
        h("div", { class: "charts" }, trainingCharts(events, job, report, teacher)));
    });
  }

  function renderLog() {
    const shown = events.slice(-40).reverse();
    fill(view.log, h("summary", {}, `Event log (${events.length} events; latest first)`),
      table([
        { label: "Time", cell: (e) => fmt.time(e.created_at) },
        { label: "Kind", cell: (e) => e.kind },
        { label: "Stage", cell: (e) => e.stage || "–" },
        { label: "Step", cell: (e) => (e.total ? `${e.step}/${e.total}` : "–") },
        { label: "Message", cell: (e) => e.message || metricsText(e.metrics) },
      ], shown, { caption: "Latest events" }));
  }

  async function renderResults() {
    if (reportShown || job.status !== "succeeded") return;
    reportShown = true;
    let artifacts = [];
    try {
      artifacts = (await get(`${path}/artifacts`, { signal })).items;
    } catch (err) {
      fill(view.artifacts, errorBox(err, "Artifacts"));
    }
    renderArtifacts(view.artifacts, artifacts);
    let report = job.metrics && job.metrics.report;
    if (!report || !report.student) {
      const file = artifacts.find((a) => a.name === "report.json");
      if (file) {
        try {
          report = await get(file.url, { signal });
        } catch {
          // shown as "no report" below
        }
      }
    }
    fill(view.results, resultSections(report || {}, job));
    // the curves end at the report's size: drawn again only when the report came from its file (a chart
    // replaced under the reader's pointer or a screen reader for nothing otherwise)
    if (report && report !== (job.metrics && job.metrics.report)) {
      job = { ...job, metrics: { ...job.metrics, report } };
      renderCurves();
    }
  }

  function renderAll() {
    renderHeader();
    renderSummary();
    renderProgress();
    renderTimeline();
    renderCurves();
    renderLog();
    if (TERMINAL.has(job.status)) {
      renderResults().catch((err) => { if (!signal.aborted) view.results.append(errorBox(err, "Results")); });
    }
  }

  // 1. History, a page of JSON at a time.
  for (;;) {
    const page = await get(`${path}/events?after=${lastId}&limit=1000`, { signal });
    events.push(...page.items);
    if (page.items.length) lastId = page.items[page.items.length - 1].id;
    if (!page.next_cursor) break;
  }
  renderAll();
  if (TERMINAL.has(job.status)) return;

  // 2. Live: the stream from the last event seen. The server ends it when the job finishes or is paused;
  // a resume (here, or elsewhere and seen by the check below) follows again.
  const tick = setInterval(renderTimeline, 1000);
  const check = setInterval(async () => {
    if (following || TERMINAL.has(job.status) || document.visibilityState === "hidden") return;
    try {
      if (await refresh()) {
        renderAll();
        follow();
      }
    } catch {
      // the next check retries
    }
  }, 2000);
  signal.addEventListener("abort", () => { clearInterval(tick); clearInterval(check); }, { once: true });

  async function onEvent(kind, data, id) {
    if (id) lastId = id;
    if (kind === "end") {
      await refresh();
      announce(`Job ${job.status}`);
      renderAll();
      follow(); // resumed meanwhile: follow again (a no-op when finished or still paused)
      return;
    }
    events.push(data);
    if (kind === "progress" || kind === "stage_started" || kind === "stage_finished") {
      job = { ...job, stage: data.stage, progress: { stage: data.stage, step: data.step, total_steps: data.total, eta_s: data.eta_s, metrics: data.metrics } };
      renderProgress();
      if (kind !== "progress") renderTimeline();
      if ((kind === "progress" && TRAINING.includes(data.stage)) || (kind === "stage_finished" && data.stage === "finalize")) renderCurves();
    } else if (kind === "status") {
      await refresh();
      renderHeader();
      renderSummary();
      renderProgress();
    } else if (kind === "clusters") {
      job = { ...job, clusters: data.metrics.clusters };
      renderSummary();
    }
    renderLog();
  }

  follow = async () => {
    if (following || signal.aborted || TERMINAL.has(job.status) || job.status === "paused") return;
    following = true;
    try {
      await followEvents(job.id, lastId, onEvent, signal);
    } catch (err) {
      if (!signal.aborted) view.progress.append(errorBox(err, "Live updates"));
    } finally {
      following = false;
    }
    if (TERMINAL.has(job.status)) {
      clearInterval(tick);
      clearInterval(check);
    }
  };
  follow(); // not awaited: the view is ready; the stream runs until the job ends or the user leaves
}

function fact(label, ...value) {
  return [h("dt", {}, label), h("dd", {}, value)];
}

export function clustersText(clusters) {
  if (!Array.isArray(clusters)) return String(clusters);
  return clusters.map((c) => (Array.isArray(c) ? (c.length > 1 && isRun(c) ? `${c[0]}–${c[c.length - 1]}` : c.join(",")) : String(c))).join(" | ");
}

function isRun(c) {
  return c.every((v, i) => i === 0 || v === c[i - 1] + 1);
}

function metricsText(metrics) {
  return Object.entries(metrics || {}).slice(0, 5)
    .map(([k, v]) => `${k}=${typeof v === "number" ? fmt.num(v) : Array.isArray(v) ? "[…]" : v}`).join(" ");
}

/** First start, last finish and the server-measured duration of each stage. */
export function stageTimes(events) {
  const out = {};
  for (const e of events) {
    if (e.kind !== "stage_started" && e.kind !== "stage_finished") continue;
    const st = (out[e.stage] = out[e.stage] || { started: null, finished: null, duration: null });
    const t = fmt.parseTime(e.created_at);
    if (e.kind === "stage_started") {
      if (st.started === null) st.started = t;
      st.finished = null;
    } else {
      st.finished = t;
      if (st.started === null) st.started = t;
      if (e.duration_s !== null && e.duration_s !== undefined) st.duration = e.duration_s;
    }
  }
  return out;
}

/** Progress points of the training stages on one step axis: stage 2 continues after stage 1's last step.
 *  `boundary`: where stage 2 starts; `end`: the last step drawn. */
export function trainingSeries(events) {
  const points = {};
  let offset = 0;
  let boundary = null;
  let end = 0;
  for (const stage of TRAINING) {
    const rows = events.filter((e) => e.kind === "progress" && e.stage === stage && e.metrics);
    let maxStep = 0;
    for (const e of rows) {
      const x = offset + e.step;
      end = Math.max(end, x);
      maxStep = Math.max(maxStep, e.step, e.total || 0);
      for (const [k, v] of Object.entries(e.metrics)) {
        if (typeof v !== "number") continue;
        (points[k] = points[k] || []).push([x, v, stage]);
      }
    }
    if (stage === "distill_prune" && rows.length) {
      offset = maxStep;
      boundary = maxStep;
    }
  }
  return { points, boundary, end };
}

/**
 * The size reached, drawn after stage 1's expected-size curve `stage1` ([[step, %]…]): from its last point to
 * `value` (a fraction) at stage 2's start `boundary`, then flat to `end` (stage 2 trains a fixed student).
 * Empty without a value or a stage 1 curve.
 */
export function landingPoints(stage1, value, boundary, end) {
  if (value === undefined || value === null || !stage1.length) return [];
  const [x1, y1] = stage1[stage1.length - 1];
  const start = boundary ?? x1;
  return [[x1, y1], [start, 100 * value], [Math.max(end, start), 100 * value]];
}

/**
 * The sizes finalize landed on, as sparsities ({params, macs}; either may be missing), or null before
 * finalize. From the report; before it exists, from finalize's parameter count and the teacher's.
 */
export function landedSparsity(events, report, teacher) {
  if (report && report.student) {
    const out = {};
    if (typeof report.achieved_sparsity === "number") out.params = report.achieved_sparsity;
    const macsTarget = report.targets && report.targets.macs;
    const [tm, sm] = [macsOf(report.teacher), macsOf(report.student)];
    if (macsTarget && typeof macsTarget.achieved_sparsity === "number") out.macs = macsTarget.achieved_sparsity;
    else if (tm && sm !== null) out.macs = 1 - sm / tm;
    return Object.keys(out).length ? out : null;
  }
  const landed = events.find((e) => e.kind === "stage_finished" && e.stage === "finalize" && e.metrics && e.metrics.num_params);
  if (landed && teacher && teacher.num_params) return { params: 1 - landed.metrics.num_params / teacher.num_params };
  return null;
}

export function trainingCharts(events, job, report, teacher = null) {
  const { points, boundary, end } = trainingSeries(events);
  const pick = (k, stage) => (points[k] || []).filter((p) => !stage || p[2] === stage).map(([x, y]) => [x, y]);
  const vLines = boundary ? [{ x: boundary, label: "stage 2" }] : [];
  const charts = [];
  // The distillation loss alone: stage 1's objective adds the Lagrangian term, whose scale would flatten it
  // (the multipliers have their own chart).
  const lossSeries = points.distill
    ? [{ name: "distillation loss, stage 1", points: pick("distill", "distill_prune") },
      { name: "distillation loss, stage 2", points: pick("distill", "final_distill") }]
    : [{ name: "loss", points: pick("loss") }];
  charts.push(lineChart({ title: "Distillation loss", xLabel: "optimiser step", yLabel: "loss (no unit)", series: lossSeries, vLines }));

  const spec = job.spec;
  // without any size target, the spec's documented default: 75% of the parameters (core.spec.DEFAULT_SPARSITY)
  const noTarget = spec.sparsity == null && spec.target_params == null && spec.target_macs == null && spec.macs_sparsity == null;
  const target = (report && report.target_sparsity) ?? spec.sparsity ?? (noTarget ? 0.75 : null);
  const sparsity = [
    { name: "expected sparsity (params)", points: pick("sparsity", "distill_prune").map(([x, y]) => [x, 100 * y]) },
    { name: "target schedule", points: pick("target_sparsity", "distill_prune").map(([x, y]) => [x, 100 * y]), dash: "5 3" },
  ];
  if (points.macs_sparsity) {
    sparsity.push({ name: "expected MACs sparsity", points: pick("macs_sparsity", "distill_prune").map(([x, y]) => [x, 100 * y]) });
  }
  // Stage 1 draws the masks' expected size; finalize then lands on the targets exactly (moving units by their
  // mask scores), and stage 2 trains that fixed student. The size reached is drawn from stage 1's last step
  // to the last step drawn, so the curve ends at the job's result.
  const landed = landedSparsity(events, report, teacher);
  const landing = (key, value, label, color, dash) => {
    const drawn = landingPoints(pick(key, "distill_prune").map(([x, y]) => [x, 100 * y]), value, boundary, end);
    if (drawn.length) sparsity.push({ name: `${label}: ${(100 * value).toFixed(1)}%`, marker: true, color, dash, points: drawn });
  };
  if (landed) {
    landing("sparsity", landed.params, "achieved after finalize (exact landing)", PALETTE[0]);
    if (points.macs_sparsity) landing("macs_sparsity", landed.macs, "achieved MACs sparsity after finalize", PALETTE[2], "6 3");
  }
  const hLines = [];
  if (target !== null && target !== undefined) hLines.push({ y: 100 * target, label: `target ${fmt.percent(target)}` });
  if (job.spec.macs_sparsity) hLines.push({ y: 100 * job.spec.macs_sparsity, label: `MACs target ${fmt.percent(job.spec.macs_sparsity)}` });
  charts.push(lineChart({ title: "Sparsity against the target", xLabel: "optimiser step", yLabel: "sparsity (%)",
    series: sparsity, hLines, vLines: landed ? vLines : [], yMin: 0, yMax: 100, yFormat: (v) => `${+v.toFixed(1)}%` }));

  charts.push(lineChart({ title: "Lagrange multipliers λ", xLabel: "optimiser step", yLabel: "λ (no unit)",
    series: [{ name: "λ1 (params)", points: pick("lambda1", "distill_prune") },
      { name: "λ2 (params)", points: pick("lambda2", "distill_prune"), dash: "5 3" },
      ...(points.macs_lambda1 ? [{ name: "λ1 (MACs)", points: pick("macs_lambda1", "distill_prune") },
        { name: "λ2 (MACs)", points: pick("macs_lambda2", "distill_prune"), dash: "5 3" }] : [])],
    empty: "λ exists in stage 1 only" }));

  if (points.expected_macs) {
    charts.push(lineChart({ title: "Expected MACs per second of audio", xLabel: "optimiser step", yLabel: "MACs / s of audio",
      series: [{ name: "expected MACs/s", points: pick("expected_macs", "distill_prune") }],
      hLines: job.spec.target_macs ? [{ y: job.spec.target_macs, label: `target ${fmt.si(job.spec.target_macs)}` }] : [] }));
  }
  return charts;
}

/** [first, last] index boxes for clusters (a non-contiguous cluster gets one box per run). */
export function clusterBoxes(clusters) {
  const boxes = [];
  for (const c of clusters || []) {
    if (!Array.isArray(c) || !c.length) continue;
    const sorted = [...c].sort((a, b) => a - b);
    let start = sorted[0];
    for (let i = 1; i <= sorted.length; i++) {
      if (i === sorted.length || sorted[i] !== sorted[i - 1] + 1) {
        boxes.push([start, sorted[i - 1]]);
        start = sorted[i];
      }
    }
  }
  return boxes;
}

function macsOf(part) {
  if (!part) return null;
  for (const key of ["macs_per_second", "macs", "macs_per_audio_second"]) {
    if (typeof part[key] === "number") return part[key];
  }
  return null;
}

// A latency budget's outcome in one sentence: asked, predicted by the cost model, timed when finalize landed
// the student, timed in the report (null without a latency budget)
export function latencyText(report) {
  const l = report && report.latency;
  if (!l || typeof l.target_speedup !== "number") return null;
  const x = (v) => `${fmt.num(v, 3)}×`;
  const parts = [`asked ${x(l.target_speedup)} on ${fmt.speedTarget(l.target, l.threads)}`];
  if (typeof l.predicted_speedup === "number") parts.push(`predicted ${x(l.predicted_speedup)}`);
  const landing = l.landing;
  if (landing && typeof landing.measured_speedup === "number") {
    const n = (landing.candidates || []).length;
    const aim = typeof landing.margin === "number" && landing.margin > 0
      ? `, aiming at ${x(l.target_speedup * (1 + landing.margin))} with its ${fmt.num(100 * landing.margin, 3)}% margin`
      : "";
    parts.push(`measured ${x(landing.measured_speedup)} when landed (the kept one of ${n} candidate${n === 1 ? "" : "s"} timed${aim})`);
  }
  if (typeof l.measured_speedup === "number") parts.push(`measured ${x(l.measured_speedup)} in the report`);
  return `Speed-up: ${parts.join(", ")}.`;
}

export function resultSections(report, job) {
  const out = [];
  if (!report.student) {
    out.push(h("section", {}, h("h2", {}, "Results"), h("p", { class: "muted" }, "This job's report has no student summary.")));
    return out;
  }
  // sizes
  const t = report.teacher || {};
  const st = report.student;
  const rows = [
    { what: "Parameters", teacher: t.num_params, student: st.num_params, unit: "" },
  ];
  const tm = macsOf(t);
  const sm = macsOf(st);
  if (tm !== null || sm !== null) rows.push({ what: "MACs per second of audio", teacher: tm, student: sm, unit: "" });
  const cpu = report.speed && (report.speed.cpu_1_thread || report.speed.cpu_all_threads);
  if (cpu && cpu.teacher_rtf !== undefined) {
    rows.push({ what: `CPU real-time factor (${cpu.threads || "all"} thread${cpu.threads === 1 ? "" : "s"}; lower is faster)`,
      teacher: cpu.teacher_rtf, student: cpu.student_rtf, format: (v) => fmt.num(v, 3),
      kept: cpu.speedup ? `${fmt.num(cpu.speedup, 3)}× faster` : null });
  }
  out.push(h("section", { id: "sizes", "aria-labelledby": "sizes-h" }, h("h2", { id: "sizes-h" }, "Size before and after"),
    table([
      { label: "", cell: (r) => r.what },
      { label: "Teacher", class: "num", cell: (r) => (r.teacher === null || r.teacher === undefined ? "–" : (r.format || fmt.count)(r.teacher)) },
      { label: "Student", class: "num", cell: (r) => (r.student === null || r.student === undefined ? "–" : (r.format || fmt.count)(r.student)) },
      { label: "Kept", class: "num", cell: (r) => (r.kept !== undefined ? r.kept || "–" : r.teacher && r.student ? fmt.percent(r.student / r.teacher) : "–") },
    ], rows, { caption: "Teacher and student sizes", stack: true }),
    h("p", {}, "Sparsity: target ", h("strong", {}, fmt.percent(report.target_sparsity)), ", achieved ",
      h("strong", { id: "achieved-sparsity" }, fmt.percent(report.achieved_sparsity, 2)),
      report.finalize && report.finalize.max_abs_diff_masked_vs_pruned !== undefined
        ? ` · masked vs pruned model, max |difference|: ${fmt.num(report.finalize.max_abs_diff_masked_vs_pruned)}` : ""),
    latencyText(report) ? h("p", { id: "latency-outcome" }, latencyText(report)) : null));

  // CKA heatmap
  if (Array.isArray(report.cka) && report.cka.length) {
    const clusters = report.clusters || job.clusters || [];
    out.push(h("section", { id: "cka", "aria-labelledby": "cka-h" }, h("h2", { id: "cka-h" }, "Layer similarity (CKA) and clusters"),
      heatmap({ title: `Linear CKA between the teacher's ${report.cka.length} representations`, matrix: report.cka,
        boxes: clusterBoxes(clusters), axisLabel: "representation (0 = CNN output, i = layer i)", vmin: Math.min(0, ...report.cka.flat()), vmax: 1,
        format: (v) => v.toFixed(2),
        legend: `Boxes: the ${clusters.length} clusters the student learns to predict (${clustersText(clusters)}).` })));
  }

  // architecture
  out.push(architectureSection(report));

  // evaluation
  const evaluation = report.evaluation;
  const headline = report.evaluation_headline || {};
  const section = (...body) => h("section", { id: "evaluation", "aria-labelledby": "evaluation-h" },
    h("h2", { id: "evaluation-h" }, "Evaluation"), body);
  if (evaluation || Object.keys(headline).length) {
    const models = (evaluation && evaluation.models) || [];
    out.push(section(
      models.length ? table([
        { label: "Model", cell: (m) => m.name || "–" },
        { label: "PER (%)", class: "num", cell: (m) => (m.pr ? (100 * m.pr.per).toFixed(2) : "–") },
        { label: "Speaker ID accuracy (%)", class: "num", cell: (m) => (m.sid ? (100 * m.sid.accuracy).toFixed(2) : "–") },
        { label: "Parameters", class: "num", cell: (m) => fmt.si(m.params) },
        { label: "MACs / s of audio", class: "num", cell: (m) => fmt.si(m.macs_per_second) },
        { label: "CPU real-time factor", class: "num", cell: (m) => (m.speed && m.speed.cpu ? fmt.num(m.speed.cpu.rtf, 3) : "–") },
      ], models, { caption: "Probes on frozen features (lower PER is better)", stack: true })
        : h("dl", { class: "facts" },
          headline.eval_per !== undefined ? fact("PER", `${(100 * headline.eval_per).toFixed(2)}%`) : null,
          headline.eval_sid_accuracy !== undefined ? fact("Speaker ID accuracy", `${(100 * headline.eval_sid_accuracy).toFixed(2)}%`) : null)));
  } else if (job && job.status === "succeeded") {
    const again = `#/new?from=${encodeURIComponent(job.id)}&evaluate=1`;
    out.push(section(
      h("p", { id: "not-evaluated" }, h("strong", {}, job.spec.evaluate
        ? "Not evaluated: evaluation was asked for, but this job's report has none."
        : "Not evaluated (enable evaluation when submitting).")),
      h("p", { class: "muted" }, "Quality (phoneme error rate, speaker ID accuracy) is measured by probes on the " +
        "student's frozen features, on a dataset with phone labels and train/test splits; it adds minutes to a job (the cost is " +
        "given beside the option in the form). ",
      h("a", { href: again, id: "evaluate-again" }, "Submit this job again with evaluation"), ".")));
  }
  return out;
}

function architectureSection(report) {
  const st = report.student;
  const teacherLayers = (report.teacher && report.teacher.layers) || null;
  const teacherConv = (report.teacher && report.teacher.conv_channels) || null;
  const kept = (value, of) => {
    if (of === null || of === undefined) return h("span", {}, String(value));
    return h("span", { class: "kept" },
      h("meter", { min: 0, max: of, value, "aria-label": `${value} of ${of}` }),
      h("span", { class: value === 0 ? "pruned" : "" }, `${value} / ${of}`));
  };
  const layers = (st.layers || []).map((l, i) => ({ i, ...l, teacher: teacherLayers ? teacherLayers[i] : null }));
  const conv = (st.conv_channels || []).map((c, i) => ({ i, c, teacher: teacherConv ? teacherConv[i] : null }));
  return h("section", { id: "architecture", "aria-labelledby": "architecture-h" },
    h("h2", { id: "architecture-h" }, "Pruned architecture"),
    teacherLayers ? null : h("p", { class: "muted" }, "This report does not list the teacher's per-layer sizes; the student's are shown alone."),
    h("div", { class: "two-col" },
      table([
        { label: "Layer", cell: (l) => String(l.i + 1) },
        { label: "Attention heads kept", cell: (l) => kept(l.heads, l.teacher ? l.teacher.heads : null) },
        { label: "FFN units kept", cell: (l) => kept(l.ffn, l.teacher ? l.teacher.ffn : null) },
      ], layers, { caption: "Transformer layers" }),
      table([
        { label: "Conv layer", cell: (c) => String(c.i + 1) },
        { label: "Channels kept", cell: (c) => kept(c.c, c.teacher) },
      ], conv, { caption: "Convolutional feature extractor" })));
}

/** What became of a fine-tuned teacher's head (report.task_head). */
function headText(head) {
  if (!head.kept) return `${head.dropped}: dropped (drop_head), the student is an encoder alone`;
  const input = head.input_weight ? `; its input, weight ${head.input_weight}` : "";
  const byDefault = head.supervised_by_default ? " (by default: the manifest has transcripts)" : "";
  const labels = head.supervised_weight
    ? `; on the manifest's labels, weight ${head.supervised_weight}${byDefault}` : "";
  return `${head.description}: kept, distilled on the teacher's outputs (weight ${head.weight}, ` +
    `temperature ${head.temperature}${input}${labels}); the hf artifact is the task model`;
}

function renderArtifacts(container, items) {
  const status = h("div", { id: "download-status", "aria-live": "polite" });
  fill(container, h("h2", { id: "artifacts-h" }, "Artifacts"),
    table([
      { label: "Name", cell: (a) => a.name },
      { label: "Size", class: "num", cell: (a) => fmt.bytes(a.size_bytes) },
      { label: "sha256", cell: (a) => h("code", { class: "sha", title: a.sha256 }, a.sha256) },
      { label: "", cell: (a) => h("button", { type: "button", class: "download", "data-artifact": a.name,
        "aria-label": `Download ${a.name}`, onclick: async (e) => {
          e.target.disabled = true;
          const filename = a.filename;  // model.onnx, model_quantized.onnx, model.zip: the server's name
          fill(status, h("p", {}, `Downloading ${a.name}…`));
          try {
            const result = await downloadArtifact(a.url, filename);
            fill(status, h("p", {}, `${a.name}: ${fmt.bytes(result.size)} downloaded`,
              result.verified ? ", sha256 verified" : " (sha256 not checked: this page is not a secure context)"));
          } catch (err) {
            fill(status, errorBox(err, `Download of ${a.name}`));
          }
          e.target.disabled = false;
        } }, "Download") },
    ], items, { caption: "Files this job produced", empty: "No artifacts.", stack: true }),
    status);
}
