// #/jobs[?status=&after=]: the owner's jobs, newest first, a page at a time, filtered by status. Rows of
// active jobs follow their event streams (at most MAX_STREAMS at once: a browser holds only six connections
// to one server over HTTP/1.1, and the page needs some for its own requests).

import { followEvents, get, openapi } from "../api.js";
import { badge, errorBox, fill, h, table } from "../dom.js";
import * as fmt from "../format.js";

const PAGE = 20;
const MAX_STREAMS = 3;
const REFRESH_S = 30;
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const FALLBACK_STATUSES = ["queued", "running", "cancelling", "succeeded", "failed", "cancelled"];
const newer = []; // cursors of the pages before this one, for "Newer"

async function statuses() {
  try {
    const doc = await openapi();
    const prop = doc.components.schemas.JobPublic.properties.status;
    const ref = prop.$ref ? doc.components.schemas[prop.$ref.split("/").pop()] : prop;
    if (Array.isArray(ref.enum)) return ref.enum;
  } catch {
    // an older server: the statuses it always had
  }
  return FALLBACK_STATUSES;
}

export async function renderJobs(main, params, signal) {
  const status = params.get("status") || "";
  const after = params.get("after") || "";
  const limit = Math.min(200, Math.max(1, Number(params.get("limit")) || PAGE));
  const query = new URLSearchParams({ limit: String(limit) });
  if (status) query.set("status", status);
  if (after) query.set("after", after);
  const [page, all] = await Promise.all([get(`/v1/jobs?${query}`, { signal }), statuses()]);

  const filter = h("select", { id: "status-filter", name: "status", onchange: (e) => {
    newer.length = 0;
    location.hash = e.target.value ? `#/jobs?status=${encodeURIComponent(e.target.value)}` : "#/jobs";
  } }, h("option", { value: "" }, "all"), all.map((s) => h("option", { value: s, selected: s === status }, s)));

  const refreshButton = h("button", { type: "button" }, "Refresh");
  const rows = new Map();
  const columns = [
    { label: "Job", cell: (j) => h("a", { href: `#/jobs/${encodeURIComponent(j.id)}`, class: "mono" }, fmt.shortId(j.id)) },
    { label: "Status", cell: (j) => badge(j.status) },
    { label: "Stage", cell: (j) => j.stage || "–" },
    { label: "Progress", class: "progress-cell", cell: (j) => progressCell(j) },
    { label: "ETA", cell: (j) => (j.status === "running" && j.progress && j.progress.eta_s !== null ? fmt.duration(j.progress.eta_s) : "–") },
    { label: "Method", cell: (j) => `${j.spec.method}, ${describeTarget(j.spec)}` },
    { label: "Created", cell: (j) => fmt.time(j.created_at) },
  ];
  const grid = table(columns, page.items, {
    caption: status ? `Jobs with status ${status}` : "All jobs, newest first",
    empty: status ? `No ${status} jobs.` : "No jobs yet. Create one with “New job”.",
    rowAttrs: (j) => ({ "data-job-id": j.id }),
    stack: true,
  });
  for (const tr of grid.querySelectorAll("tbody tr[data-job-id]")) {
    const job = page.items.find((j) => j.id === tr.dataset.jobId);
    rows.set(job.id, { job, tr });
  }

  const paging = h("nav", { class: "paging", "aria-label": "Pages" },
    after ? h("button", { type: "button", id: "newer", onclick: () => go(status, newer.pop() || "", limit) }, "← Newer") : null,
    after ? h("button", { type: "button", onclick: () => { newer.length = 0; go(status, "", limit); } }, "Newest") : null,
    page.next_cursor ? h("button", { type: "button", id: "older", onclick: () => { newer.push(after); go(status, page.next_cursor, limit); } }, "Older →") : null);

  fill(main,
    h("div", { class: "title-row" }, h("h1", {}, "Jobs"),
      h("a", { href: "#/new", class: "button primary" }, "New job")),
    h("div", { class: "toolbar" },
      h("label", { for: "status-filter" }, "Status "), filter,
      refreshButton,
      h("span", { class: "muted", id: "live-note" })),
    grid, paging);

  function update(id, job) {
    const row = rows.get(id);
    if (!row) return;
    row.job = job;
    const tds = row.tr.children;
    columns.forEach((c, i) => fill(tds[i], c.cell(job)));
  }

  const active = page.items.filter((j) => !TERMINAL.has(j.status)).slice(0, MAX_STREAMS);
  const note = document.getElementById("live-note");
  if (active.length) note.textContent = `live: following ${active.length} active job${active.length > 1 ? "s" : ""}`;
  const since = new Map(active.map((j) => [j.id, fmt.parseTime(j.updated_at) || 0]));
  for (const job of active) {
    follow(job.id);
  }

  function follow(id) {
    followEvents(id, 0, async (kind, data) => {
      const row = rows.get(id);
      if (!row) return;
      // The stream starts at the job's first event; the row already shows the job as of its updated_at
      // (both times are the server's clock).
      if (kind !== "end" && fmt.parseTime(data.created_at) < since.get(id)) return;
      if (kind === "progress" || kind === "stage_started" || kind === "stage_finished") {
        update(id, { ...row.job, stage: data.stage,
          progress: { stage: data.stage, step: data.step, total_steps: data.total, eta_s: data.eta_s, metrics: data.metrics } });
      } else if (kind === "status" || kind === "end") {
        try {
          update(id, await get(`/v1/jobs/${encodeURIComponent(id)}`, { signal }));
        } catch (err) {
          if (!signal.aborted) update(id, { ...row.job, status: "unknown" });
        }
      }
    }, signal).catch((err) => {
      if (!signal.aborted) main.append(errorBox(err, `Live updates of ${id}`));
    });
  }

  // Jobs created elsewhere (another tab, the CLI) appear on a slow refresh; rows update in place so the
  // keyboard focus stays where it is.
  async function refresh() {
    let fresh;
    try {
      fresh = await get(`/v1/jobs?${query}`, { signal });
    } catch {
      return;
    }
    for (const job of fresh.items) {
      const row = rows.get(job.id);
      if (!row || (job.status === row.job.status && !TERMINAL.has(job.status))) continue;
      const resumed = row.job.status === "paused" && !TERMINAL.has(job.status);
      update(job.id, job);
      if (resumed) { // its stream ended when it paused
        since.set(job.id, fmt.parseTime(job.updated_at) || 0);
        follow(job.id);
      }
    }
    const added = fresh.items.filter((j) => !rows.has(j.id)).length;
    if (added && !document.getElementById("new-jobs")) {
      note.after(h("button", { type: "button", id: "new-jobs", onclick: () => window.dispatchEvent(new HashChangeEvent("hashchange")) },
        `${added} new job${added > 1 ? "s" : ""}: show`));
    }
  }
  refreshButton.addEventListener("click", refresh);
  const timer = setInterval(() => {
    if (document.visibilityState === "visible") refresh();
  }, REFRESH_S * 1000);
  signal.addEventListener("abort", () => clearInterval(timer), { once: true });
}

function go(status, after, limit = PAGE) {
  const q = new URLSearchParams();
  if (status) q.set("status", status);
  if (after) q.set("after", after);
  if (limit !== PAGE) q.set("limit", String(limit));
  const s = q.toString();
  location.hash = s ? `#/jobs?${s}` : "#/jobs";
}

export function describeTarget(spec) {
  const parts = [];
  if (spec.target_params) parts.push(`${fmt.si(spec.target_params)} params`);
  if (spec.target_macs) parts.push(`${fmt.si(spec.target_macs)} MACs/s`);
  if (spec.macs_sparsity) parts.push(`MACs −${fmt.percent(spec.macs_sparsity, 0)}`);
  if (spec.target_speedup) {
    parts.push(`${fmt.num(spec.target_speedup, 3)}× faster on ${fmt.speedTarget(spec.speed_target, spec.speed_threads)}`);
  }
  if (spec.sparsity || !parts.length) parts.push(`sparsity ${fmt.percent(spec.sparsity ?? 0.75, 0)}`);
  return parts.join(" + ");
}

export function progressCell(job) {
  const p = job.progress;
  if (!p || !p.total_steps) {
    return TERMINAL.has(job.status) ? "–" : h("span", { class: "muted" }, job.status === "queued" ? "waiting" : p && p.stage ? p.stage : "starting");
  }
  const label = `${p.stage}: step ${p.step} of ${p.total_steps}`;
  return h("span", { class: "progress" },
    h("progress", { max: p.total_steps, value: p.step, "aria-label": label }),
    h("span", { class: "steps" }, `${p.step}/${p.total_steps}`));
}
