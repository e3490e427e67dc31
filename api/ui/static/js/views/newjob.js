// #/new: pick or upload a teacher and a dataset (archives, with upload progress and the server's validation
// result), fill in the spec (a form generated from the API's schema of CompressionSpec, with the presets'
// defaults when the server describes them), submit, and land on the new job's page. 422 answers are shown
// next to the field they concern. #/new?from=<job id> starts from that job's inputs and spec (&evaluate=1:
// with evaluation on).

import { ApiError, get, getAll, openapi, post, upload } from "../api.js";
import { announce, errorBox, fill, h } from "../dom.js";
import * as fmt from "../format.js";
import { fieldErrors, specForm, specSchema } from "../specform.js";

const PRIMARY = ["method", "sparsity", "target_params", "target_macs", "macs_sparsity", "target_speedup", "preset", "clusters",
  "stage1_steps", "stage2_steps", "device", "evaluate"];

export async function renderNewJob(main, params, signal) {
  const from = params.get("from");
  const [doc, teachers, datasets, presets, source] = await Promise.all([
    openapi(), getAll("/v1/teachers", { signal }), getAll("/v1/datasets", { signal }), presetsOrNull(signal),
    from ? get(`/v1/jobs/${encodeURIComponent(from)}`, { signal }).catch(() => null) : null]);
  const form = specForm(doc, specSchema(doc), { primary: PRIMARY, presets });
  if (source) form.setValues({ ...source.spec, ...(params.get("evaluate") === "1" ? { evaluate: true } : {}) });

  const teacher = picker({
    id: "teacher", label: "Teacher", items: teachers, path: "/v1/teachers", required: true,
    accept: ".zip,.tar,.tar.gz,.tgz",
    hint: "A zip or tar(.gz) of a Hugging Face model directory (config.json + model.safetensors): wav2vec 2.0, HuBERT or WavLM.",
    describe: (t) => `${t.name || fmt.shortId(t.id)} — ${t.architecture} ${t.layout}, ${t.num_layers} layers, ${fmt.si(t.num_params)} params`,
    summary: (t) => h("dl", { class: "facts" },
      f("Architecture", `${t.architecture} (${t.layout} layout)`), f("Layers", `${t.num_layers} × ${t.hidden_size} wide`),
      f("Parameters", fmt.count(t.num_params)), f("Sample rate", `${t.sample_rate} Hz`),
      f("Archive", `${fmt.bytes(t.size_bytes)}, sha256 ${t.sha256.slice(0, 16)}…`)),
    preselect: source ? source.teacher_id : params.get("teacher"),
  });
  const dataset = picker({
    id: "dataset", label: "Dataset", items: datasets, path: "/v1/datasets", required: true,
    accept: ".zip,.tar,.tar.gz,.tgz",
    hint: "A zip or tar(.gz) of audio files (wav, flac, ogg, mp3; any rate), or of a folder with a manifest.jsonl.",
    describe: (d) => `${d.name || fmt.shortId(d.id)} — ${d.files} files, ${hours(d.hours)}`,
    summary: datasetSummary, preselect: source ? source.dataset_id : null,
  });
  const calibration = picker({
    id: "calibration", label: "Calibration audio (optional)", items: datasets, path: "/v1/datasets", required: false,
    accept: ".zip,.tar,.tar.gz,.tgz", hint: "Audio for the CKA analysis; default: the dataset itself.",
    describe: (d) => `${d.name || fmt.shortId(d.id)} — ${d.files} files, ${hours(d.hours)}`, summary: datasetSummary,
    preselect: source ? source.calibration_dataset_id : null,
  });
  // an upload into one dataset picker is offered in the other too
  dataset.onUploaded = (d) => calibration.add(d, false);
  calibration.onUploaded = (d) => dataset.add(d, false);

  const formStatus = h("div", { id: "form-status", "aria-live": "polite" });
  const submit = h("button", { type: "submit", class: "primary", id: "submit-job" }, "Create job");
  let idempotency = { body: null, key: null };

  const el = h("form", { id: "new-job", novalidate: true, onsubmit: async (e) => {
    e.preventDefault();
    form.clearErrors();
    for (const p of [teacher, dataset, calibration]) p.clearError();
    fill(formStatus);
    const { spec, problems } = form.read();
    const body = { teacher_id: teacher.value(), dataset_id: dataset.value(), spec };
    if (calibration.value()) body.calibration_dataset_id = calibration.value();
    const local = {};
    if (!body.teacher_id) local.teacher_id = "choose or upload a teacher";
    if (!body.dataset_id) local.dataset_id = "choose or upload a dataset";
    for (const [name, message] of Object.entries(problems)) local[`spec.${name}`] = message;
    if (Object.keys(local).length) {
      place(local);
      fill(formStatus, h("p", { class: "field-error" }, "Nothing was sent: see the fields marked above."));
      return;
    }
    const text = JSON.stringify(body);
    if (idempotency.body !== text) idempotency = { body: text, key: newKey() };
    submit.disabled = true;
    fill(formStatus, h("p", {}, "Submitting…"));
    try {
      const job = await post("/v1/jobs", body, { signal, extraHeaders: { "Idempotency-Key": idempotency.key } });
      announce(`Job ${job.id} created`);
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (err) {
      submit.disabled = false;
      if (!(err instanceof ApiError)) throw err;
      const errors = err.status === 422 ? fieldErrors(err) : {};
      const { placed, rest } = place(errors);
      if (placed && !rest) {
        fill(formStatus, h("div", { class: "error", role: "alert" },
          h("strong", {}, `The service rejected ${plural(placed, "field")}: `),
          placed === 1 ? "the reason is shown beside it" : "the reasons are shown beside each", " (", h("code", {}, err.code), ")."));
      } else {
        fill(formStatus, errorBox(err, placed ? `The service rejected ${plural(placed, "field")} (shown at each field) and more` : "The job was not created"));
      }
    }
  } },
  h("section", { "aria-labelledby": "inputs-h" }, h("h2", { id: "inputs-h" }, "Teacher and audio"),
    h("div", { class: "pickers" }, teacher.element, dataset.element, calibration.element)),
  h("section", { "aria-labelledby": "spec-h" }, h("h2", { id: "spec-h" }, "What to compress to, and how"), form.element),
  h("div", { class: "submit-row" }, submit, formStatus));

  /** Show each error at its field; returns how many fields show one and how many errors had no field. */
  function place(errors) {
    const spec = {};
    let placed = 0;
    let rest = 0;
    const pickers = { teacher_id: [teacher, "choose or upload a teacher"], dataset_id: [dataset, "choose or upload a dataset"],
      calibration_dataset_id: [calibration, "choose or upload a dataset, or none"] };
    for (const [path, message] of Object.entries(errors)) {
      if (path.startsWith("spec.")) spec[path.slice(5)] = message;
      else if (path === "spec") spec[""] = message;
      else if (pickers[path]) placed += pickers[path][0].showError(message || pickers[path][1]);
      else rest += 1;
    }
    const shown = form.showErrors(spec);
    placed += shown.length;
    rest += Object.keys(spec).filter((name) => !shown.includes(name) && name !== "").length;
    return { placed, rest };
  }

  fill(main, h("h1", {}, "New job"), el);
}

/** GET /v1/presets (each preset's resolved recipe per stage), or null where the server does not offer it. */
async function presetsOrNull(signal) {
  try {
    return await get("/v1/presets", { signal });
  } catch (err) {
    if (err instanceof ApiError && err.status !== 401) return null;
    throw err;
  }
}

function newKey() {
  if (globalThis.crypto && crypto.randomUUID) return crypto.randomUUID();
  return `ui-${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

function f(label, value) {
  return [h("dt", {}, label), h("dd", {}, value)];
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

function hours(x) {
  return x >= 1 ? `${x.toFixed(2)} h` : `${(60 * x).toFixed(1)} min`;
}

function datasetSummary(d) {
  const skipped = Object.entries(d.skipped || {});
  return h("div", {},
    h("dl", { class: "facts" },
      f("Usable files", fmt.count(d.files)), f("Duration", hours(d.hours)),
      f("Sample rates", (d.sample_rates || []).map((r) => `${r} Hz`).join(", ") || "–"),
      f("Size", fmt.bytes(d.size_bytes))),
    skipped.length
      ? h("div", { class: "skipped" }, h("p", {}, `Skipped ${plural(skipped.reduce((a, [, n]) => a + n, 0), "file")}, by reason:`),
        h("ul", {}, skipped.map(([reason, n]) => h("li", {}, h("code", {}, reason), `: ${n}`,
          (d.examples && d.examples[reason] && d.examples[reason].length) ? ` (e.g. ${d.examples[reason].slice(0, 3).join(", ")})` : ""))))
      : h("p", { class: "muted" }, "No file was skipped."));
}

/** A select of existing items plus an archive upload that adds to it. */
function picker({ id, label, items, path, required, accept, hint, describe, summary, preselect }) {
  const selectId = `${id}-select`;
  const fileId = `${id}-file`;
  const errId = `${id}-error`;
  const byId = new Map(items.map((i) => [i.id, i]));
  const select = h("select", { id: selectId, name: `${id}_id`, "aria-describedby": errId },
    h("option", { value: "" }, required ? "— choose —" : "(none)"),
    items.map((i) => h("option", { value: i.id, selected: i.id === preselect }, describe(i))));
  const info = h("div", { class: "picked", id: `${id}-info`, "aria-live": "polite" });
  const progress = h("progress", { max: 1, value: 0, hidden: true, id: `${id}-progress`, "aria-label": `${label} upload progress` });
  const progressText = h("span", { class: "muted", id: `${id}-progress-text` });
  const error = h("p", { class: "field-error", id: errId, hidden: true });
  const file = h("input", { id: fileId, type: "file", accept, "aria-describedby": `${id}-hint` });
  const api = { onUploaded: null };

  function show(itemId) {
    const item = byId.get(itemId);
    fill(info, item ? summary(item) : null);
  }
  select.addEventListener("change", () => {
    api.clearError();
    show(select.value);
  });
  file.addEventListener("change", async () => {
    const chosen = file.files && file.files[0];
    if (!chosen) return;
    api.clearError();
    fill(info);
    progress.hidden = false;
    progress.value = 0;
    progressText.textContent = `uploading ${chosen.name}…`;
    try {
      const created = await upload(`${path}?name=${encodeURIComponent(chosen.name.replace(/\.(zip|tar|tar\.gz|tgz)$/i, ""))}`, chosen, (sent, total) => {
        progress.value = total ? sent / total : 0;
        progressText.textContent = `${fmt.bytes(sent)} of ${fmt.bytes(total)} sent${sent >= total ? "; the server is checking it…" : ""}`;
      });
      progressText.textContent = `${chosen.name}: accepted`;
      api.add(created, true);
      if (api.onUploaded) api.onUploaded(created);
      announce(`${label} uploaded and checked`);
    } catch (err) {
      progress.hidden = true;
      progressText.textContent = "";
      fill(info, errorBox(err, `${chosen.name} was rejected`));
    }
    file.value = "";
  });

  Object.assign(api, {
    element: h("fieldset", { class: "picker", id: `${id}-picker` }, h("legend", {}, label),
      h("label", { for: selectId }, `Uploaded ${id === "teacher" ? "teachers" : "datasets"}`), select, error,
      h("label", { for: fileId }, "or upload an archive"), file,
      h("p", { class: "help", id: `${id}-hint` }, hint),
      h("div", { class: "upload-progress" }, progress, progressText), info),
    value: () => select.value,
    add(item, choose) {
      byId.set(item.id, item);
      select.append(h("option", { value: item.id }, describe(item)));
      if (choose) {
        select.value = item.id;
        show(item.id);
      }
    },
    showError(message) {
      error.textContent = message;
      error.hidden = false;
      select.setAttribute("aria-invalid", "true");
      select.focus();
      return 1;
    },
    clearError() {
      error.hidden = true;
      error.textContent = "";
      select.removeAttribute("aria-invalid");
    },
  });
  if (preselect) show(preselect);
  return api;
}
