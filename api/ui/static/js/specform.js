// A form generated from a JSON schema (the job spec, CompressionSpec, as the server's OpenAPI document
// publishes it): one control per property with its default and limits, values read back as the schema's types,
// and server-side field errors shown next to their field, in plain words.
//
// Values are read as the CLI reads its options (cli/spec_options.py): clusters as `4`, `auto` or groups
// `0;1-4;5-8;9-12`, integers as counts (`24M`, `950k`, `2.5G`), lists as comma-separated items. The defaults
// the schema leaves null because the preset decides them are shown from the presets the server describes
// (GET /v1/presets), for the preset chosen.

import { h } from "./dom.js";
import * as fmt from "./format.js";

/** Resolve a local `$ref` ("#/components/schemas/X") against the OpenAPI document. */
export function resolve(doc, schema) {
  let s = schema;
  for (let i = 0; s && s.$ref && i < 10; i++) {
    s = s.$ref.split("/").slice(1).reduce((node, key) => (node ? node[key] : undefined), doc);
  }
  return s;
}

/** The job spec's schema: JobCreate.spec in the OpenAPI document. */
export function specSchema(doc) {
  const create = resolve(doc, doc.components.schemas.JobCreate);
  const spec = create.properties.spec;
  return resolve(doc, spec.allOf ? spec.allOf[0] : spec);
}

/** The non-null alternatives of a property ("anyOf": [X, {"type": "null"}] -> [X]) and whether null is allowed. */
function alternatives(doc, prop) {
  const alts = (prop.anyOf || prop.oneOf || [prop]).map((a) => resolve(doc, a));
  const nonNull = alts.filter((a) => a.type !== "null");
  return { alts: nonNull, nullable: nonNull.length < alts.length };
}

function limitsText(s) {
  const parts = [];
  if (s.minimum !== undefined) parts.push(`≥ ${s.minimum}`);
  if (s.exclusiveMinimum !== undefined) parts.push(`> ${s.exclusiveMinimum}`);
  if (s.maximum !== undefined) parts.push(`≤ ${fmt.num(s.maximum)}`);
  if (s.exclusiveMaximum !== undefined) parts.push(`< ${s.exclusiveMaximum}`);
  return parts.join(", ");
}

/** What a number field accepts, in words ("greater than 0", "between 1 and 64"). */
function limitsWords(s) {
  const lo = s.minimum !== undefined ? ["at least", s.minimum] : s.exclusiveMinimum !== undefined ? ["greater than", s.exclusiveMinimum] : null;
  const hi = s.maximum !== undefined ? ["at most", s.maximum] : s.exclusiveMaximum !== undefined ? ["less than", s.exclusiveMaximum] : null;
  if (lo && hi && lo[0] === "at least" && hi[0] === "at most") return `between ${lo[1]} and ${fmt.num(hi[1])}`;
  return [lo, hi].filter(Boolean).map(([w, v]) => `${w} ${fmt.num(v)}`).join(" and ");
}

/** CLI-style help text ends in "[default: …]"; the form says the default itself. */
function withoutDefault(description) {
  return (description || "").replace(/\s*\[default:[^\]]*\]\s*$/, "");
}

// Fields whose default the preset decides (null in the schema): where the preset's resolved recipe holds it.
const PRESET_FIELDS = {
  stage1_steps: { stage: "stage1", key: "steps", format: fmt.count },
  stage2_steps: { stage: "stage2", key: "steps", format: fmt.count, more: stage2Longer },
  batch_seconds: { stage: "stage1", key: "batch_seconds" },
  speed_perturbation: { stage: "stage1", key: "speed_perturbation" },
  stage2_speed_perturbation: { stage: "stage2", key: "speed_perturbation", lead: "speed_perturbation if given, else " },
  checkpoint_every: { stage: "stage1", key: "checkpoint_every", tail: " (at most a quarter of the steps when you set fewer)" },
};

/** Where options lengthen stage 2 (GET /v1/presets's stage2_steps_with): " (1,920 with int8_aware or
 * target_speedup)"; "" where none does. */
function stage2Longer(stages) {
  const base = stages.stage2 && stages.stage2.steps;
  const bySteps = new Map();
  for (const [option, steps] of Object.entries(stages.stage2_steps_with || {})) {
    if (steps === base) continue;
    bySteps.set(steps, [...(bySteps.get(steps) || []), option]);
  }
  const parts = [...bySteps].map(([steps, options]) => `${fmt.count(steps)} with ${options.join(" or ")}`);
  return parts.length ? ` (${parts.join("; ")})` : "";
}

// What the form reads where the schema alone would mislead (the CLI's spellings) or says nothing.
const HINTS = {
  clusters: "k clusters of the teacher's layers found by CKA (1 to 64), auto, or your own groups of " +
    "representations r0..rL written as on the command line, e.g. 0;1-4;5-8;9-12 (r0 is the CNN output)",
  target_params: "parameter count to reach instead, e.g. 24M or 950k",
  target_weights: "relative weight of each cluster target in the loss, in cluster order, e.g. 1,1,2,2 " +
    "(default: equal; scaled to a mean of 1)",
  export_onnx: "ONNX variants to export, each verified before it is offered: fp32, fp16, int8, " +
    "comma-separated (e.g. fp32,int8)",
  evaluate: "after export, probe the student: phoneme recognition (PER) and speaker ID on its frozen " +
    "features, trained on the dataset's train split and scored on its test split. Needs a manifest.jsonl with " +
    "an 'arpabet' phone field and 'split' rows (the service refuses the job otherwise). Cost, measured on the " +
    "mini teachers on a CPU: 4.5 min more for a hubert-mini student on 1 h of audio (tts-dev; one thread of a " +
    "shared 2-core machine, where its quick-preset compression took 12.6 min); it grows with the dataset's " +
    "length",
};

// Fields given a whole row: their help is a paragraph.
const WIDE = new Set(["evaluate"]);

/** What the field accepts, said when the service rejected a value without a message for this field. */
function expects(f) {
  if (f.name === "clusters") return "expected k (1 to 64), auto, or groups such as 0;1-4;5-8;9-12";
  if (f.kind === "enum") return `must be one of ${f.alts[0].enum.join(", ")}`;
  if (f.kind === "integer" || f.kind === "number") {
    const words = limitsWords(f.alts[0]);
    return `must be a ${f.kind === "integer" ? "whole number" : "number"}${words ? " " + words : ""}`;
  }
  if (f.prop.description) return `not accepted; expected ${withoutDefault(f.prop.description)}`;
  return "not accepted by the service";
}

/**
 * Build the form's fields. Returns {element, read(), setValues(spec), showErrors(map), clearErrors(), fields}.
 * `primary`: property names shown first; the rest go under "More options". `presets`: GET /v1/presets's
 * answer, or null when the server does not describe its presets.
 */
export function specForm(doc, schema, { prefix = "spec", primary = [], presets = null } = {}) {
  const fields = {};
  const main = [];
  const more = [];
  for (const [name, rawProp] of Object.entries(schema.properties || {})) {
    const prop = resolve(doc, rawProp);
    const { alts, nullable } = alternatives(doc, prop);
    const id = `${prefix}-${name}`;
    const errId = `${id}-error`;
    const helpId = `${id}-help`;
    const one = alts.length === 1 ? alts[0] : null;
    let control;
    let kind;
    if (one && Array.isArray(one.enum)) {
      kind = "enum";
      control = h("select", { id, name },
        nullable ? h("option", { value: "" }, "(none)") : null,
        one.enum.map((v) => h("option", { value: String(v), selected: v === prop.default }, String(v))));
    } else if (one && one.type === "boolean") {
      kind = "boolean";
      control = h("input", { id, name, type: "checkbox", checked: prop.default === true });
    } else if (one && one.type === "integer") {
      kind = "integer"; // text, not type=number: counts are written 24M, 950k, 2.5G as on the command line
      control = h("input", { id, name, type: "text", spellcheck: "false", autocomplete: "off",
        value: prop.default === null || prop.default === undefined ? "" : String(prop.default) });
    } else if (one && one.type === "number") {
      kind = "number";
      const attrs = { id, name, type: "number", step: "any", inputmode: "decimal" };
      if (one.minimum !== undefined) attrs.min = one.minimum;
      if (one.maximum !== undefined) attrs.max = one.maximum;
      if (prop.default !== null && prop.default !== undefined) attrs.value = String(prop.default);
      control = h("input", attrs);
    } else {
      kind = name === "clusters" ? "clusters" : one && one.type === "array" ? "list" : alts.length > 1 ? "mixed" : "string";
      const d = prop.default;
      const value = d === null || d === undefined ? "" : kind === "list" ? d.join(",")
        : typeof d === "string" ? d : JSON.stringify(d);
      control = h("input", { id, name, type: "text", value, spellcheck: "false", autocomplete: "off",
        placeholder: kind === "clusters" ? "4, auto, or 0;1-4;5-8;9-12" : kind === "mixed" ? alts.map((a) => a.const ?? a.type).join(" | ") : "" });
    }
    control.setAttribute("aria-describedby", `${helpId} ${errId}`);
    const label = h("label", { for: id }, prop.title || name, " ", h("code", { class: "field-name" }, name));
    const help = h("p", { id: helpId, class: "help" });
    const error = h("p", { id: errId, class: "field-error", hidden: true });
    const wrapper = h("div", { class: `field field-${kind}${WIDE.has(name) ? " wide" : ""}`, "data-field": `${prefix}.${name}` },
      kind === "boolean" ? h("div", { class: "check" }, control, label) : [label, control], help, error);
    fields[name] = { name, prop, kind, alts, nullable, control, help, error, wrapper };
    (primary.includes(name) ? main : more).push(wrapper);
  }
  const specError = h("p", { id: `${prefix}-error`, class: "field-error", hidden: true });
  const details = h("details", { class: "more-options" }, h("summary", {}, `More options (${more.length})`), h("div", { class: "grid-fields" }, more));
  const element = h("fieldset", { class: "spec" }, h("legend", {}, "Compression spec"), specError,
    h("div", { class: "grid-fields" }, main), more.length ? details : null);

  const presetName = () => (fields.preset ? fields.preset.control.value : null);
  const recipe = (name) => (presets && presets.presets && presets.presets[name]) || null;

  /** The help line of every field; the preset's defaults for the preset chosen now. */
  function describe() {
    const chosen = presetName();
    const stages = recipe(chosen);
    for (const f of Object.values(fields)) {
      const { prop, kind } = f;
      const description = HINTS[f.name] || withoutDefault(prop.description);
      const limits = f.alts.length === 1 ? limitsText(f.alts[0]) : "";
      let defaultText = null;
      const from = PRESET_FIELDS[f.name];
      if (from) {
        const value = stages && stages[from.stage] ? stages[from.stage][from.key] : undefined;
        if (value !== undefined) {
          const shown = `${(from.format || fmt.num)(value)}${from.tail || ""}${from.more ? from.more(stages) : ""}`;
          defaultText = from.lead ? `default: ${from.lead}the ${chosen} preset's ${shown}` : `default with the ${chosen} preset: ${shown}`;
          f.control.placeholder = String(value);
        } else {
          defaultText = `default: ${from.lead || ""}set by the preset (${chosen})`;
          f.control.placeholder = "the preset's";
        }
      } else if (f.name === "preset" && stages) {
        defaultText = `${chosen}: ${presetSummary(stages)} · default: ${prop.default}`;
      } else if (/\bdefault\b/.test(description)) {
        defaultText = null; // the description says it
      } else if (kind === "boolean") {
        defaultText = `default: ${prop.default ? "on" : "off"}`;
      } else if (prop.default === null || prop.default === undefined) {
        defaultText = "default: not set";
      } else if (Array.isArray(prop.default) && !prop.default.length) {
        defaultText = "default: none";
      } else {
        defaultText = `default: ${typeof prop.default === "string" ? prop.default : JSON.stringify(prop.default)}`;
      }
      f.help.textContent = [description, limits && `limits: ${limits}`, defaultText].filter(Boolean).join(" · ");
    }
  }
  if (fields.preset) fields.preset.control.addEventListener("change", describe);
  describe();

  function read() {
    const spec = {};
    const problems = {};
    for (const f of Object.values(fields)) {
      const { control, kind, prop } = f;
      let value;
      if (kind === "boolean") {
        value = control.checked;
      } else {
        const raw = control.value.trim();
        if (raw === "") {
          if (kind === "number" && control.validity.badInput) problems[f.name] = "not a number";
          continue; // the default (or none)
        }
        try {
          value = readText(f, raw);
        } catch (exc) {
          problems[f.name] = exc.message;
          continue;
        }
      }
      if (JSON.stringify(value) === JSON.stringify(prop.default)) continue;
      spec[f.name] = value;
    }
    return { spec, problems };
  }

  /** Fill the fields from a spec (a job's, to submit it again); fields it lacks keep their defaults. */
  function setValues(spec) {
    for (const [name, value] of Object.entries(spec || {})) {
      const f = fields[name];
      if (!f) continue;
      if (f.kind === "boolean") f.control.checked = Boolean(value);
      else if (value === null || value === undefined) f.control.value = "";
      else if (f.kind === "clusters") f.control.value = Array.isArray(value) ? formatClusters(value) : String(value);
      else if (Array.isArray(value)) f.control.value = value.join(",");
      else f.control.value = typeof value === "object" ? JSON.stringify(value) : String(value);
    }
    describe();
  }

  function clearErrors() {
    for (const f of [...Object.values(fields), { error: specError, control: null }]) {
      f.error.hidden = true;
      f.error.textContent = "";
      if (f.control) f.control.removeAttribute("aria-invalid");
    }
  }

  function mark(f, message) {
    f.error.textContent = message;
    f.error.hidden = false;
    f.control.setAttribute("aria-invalid", "true");
    const folded = f.wrapper.closest("details");
    if (folded) folded.open = true;
  }

  /**
   * `errors`: {name: message or null}; "" is the spec as a whole (a rule over several fields, shown at each
   * field it names). A null message: the field's own hint of what it accepts. Returns the names it placed.
   */
  function showErrors(errors) {
    const placed = [];
    for (const [name, message] of Object.entries(errors)) {
      if (name === "") {
        const named = Object.keys(fields).filter((n) => new RegExp(`\\b${n}\\b`).test(message || ""));
        for (const n of named) {
          mark(fields[n], message);
          placed.push(n);
        }
        if (!named.length) {
          specError.textContent = message || "the service rejected this combination of settings";
          specError.hidden = false;
          placed.push("");
        }
        continue;
      }
      const f = fields[name];
      if (!f) continue;
      mark(f, message || expects(f));
      placed.push(name);
    }
    const first = placed.find((n) => n !== "");
    if (first !== undefined) fields[first].control.focus();
    return placed;
  }

  return { element, read, setValues, showErrors, clearErrors, fields };
}

/** A text field's value as the CLI reads the option; throws with the CLI's message when it cannot. */
function readText(f, raw) {
  switch (f.kind) {
    case "integer": {
      const value = parseCount(raw);
      // beyond 2^53 a JSON number loses digits (a seed may reach 2^63 - 1): the API reads digits exactly
      return !Number.isSafeInteger(value) && /^\d+$/.test(raw) ? raw : value;
    }
    case "number": return Number(raw);
    case "clusters": return parseClusters(raw);
    case "list": return parseList(raw, f.alts[0].items || {});
    case "mixed": return parseMixed(raw, f.alts);
    default: return raw;
  }
}

/** "quick" recipes -> "stage 1 200 steps, stage 2 960 steps, 6 s of audio per step, speed ±0.2". */
function presetSummary(stages) {
  const [one, two] = [stages.stage1 || {}, stages.stage2 || {}];
  const parts = [`stage 1 ${fmt.count(one.steps)} steps`, `stage 2 ${fmt.count(two.steps)} steps`];
  if (one.batch_seconds !== undefined) parts.push(`${fmt.num(one.batch_seconds)} s of audio per step`);
  if (one.speed_perturbation) parts.push(`speed perturbation ±${fmt.num(one.speed_perturbation)}`);
  return parts.join(", ");
}

/** Python's int() of a decimal text ("  3 ", "+3", "1_0"), or an exception. */
function pyInt(text, fail) {
  if (!/^\s*[+-]?\d+(_\d+)*\s*$/.test(text)) throw new Error(fail);
  return Number(text.replace(/_/g, ""));
}

/**
 * The CLI's `--clusters` (cli.spec_options.parse_clusters): "4" -> 4, "auto", "0;1-4;5,6,7;8-12" ->
 * [[0], [1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11, 12]]; also the API's JSON ("[[0],[1,2]]").
 */
export function parseClusters(text) {
  const value = text.trim();
  if (value === "auto") return value;
  if (/^\d+$/.test(value)) return Number(value);
  if (value.startsWith("[")) {
    try {
      return JSON.parse(value);
    } catch {
      throw new Error(`cannot read ${value} as JSON; expected e.g. 0;1-4;5-8;9-12 or [[0],[1,2,3,4]]`);
    }
  }
  const groups = [];
  for (const part of value.split(";")) {
    const fail = `cannot read layer group '${part}' in '${value}'; expected e.g. '0;1-4;5-8;9-12'`;
    const members = [];
    for (const raw of part.split(",")) {
      const item = raw.trim();
      const dash = item.indexOf("-");
      if (dash >= 0) {
        const [a, b] = [pyInt(item.slice(0, dash), fail), pyInt(item.slice(dash + 1), fail)];
        for (let i = a; i <= b; i++) members.push(i);
      } else if (item) {
        members.push(pyInt(item, fail));
      }
    }
    groups.push(members);
  }
  return groups;
}

/** Groups in the CLI's syntax: [[0], [1, 2, 3, 4], [5, 7]] -> "0;1-4;5,7". */
export function formatClusters(groups) {
  return groups.map((g) => {
    const run = g.length > 1 && g.every((v, i) => i === 0 || v === g[i - 1] + 1);
    return run ? `${g[0]}-${g[g.length - 1]}` : g.join(",");
  }).join(";");
}

/** Python's round(): halves to even. */
function roundHalfEven(x) {
  const f = Math.floor(x);
  const d = x - f;
  if (d !== 0.5) return Math.round(x);
  return f % 2 === 0 ? f : f + 1;
}

/** A count as the CLI reads one (core.spec.parse_param_count): "24M" -> 24000000, "950k", "2.5G", "1234". */
export function parseCount(text) {
  const m = /^\s*([0-9]*\.?[0-9]+)\s*([kKmMgG]?)\s*$/.exec(text);
  if (!m) throw new Error(`cannot read a count from '${text}'; expected e.g. 24M, 950k, 2.5G or 23600000`);
  const scale = { "": 1, k: 1e3, m: 1e6, g: 1e9 }[m[2].toLowerCase()];
  return roundHalfEven(Number(m[1]) * scale);
}

/** "1, 2 1" -> [1, 2, 1] for a list of numbers; "fp32,int8" -> ["fp32", "int8"] for a list of names. */
function parseList(raw, items) {
  const parts = raw.replace(/^\[|\]$/g, "").split(/[\s,]+/).filter(Boolean);
  if (items.type !== "number" && items.type !== "integer") return parts.map((p) => p.replace(/^["']|["']$/g, ""));
  return parts.map((p) => {
    const v = Number(p);
    if (!Number.isFinite(v)) throw new Error(`cannot read '${p}' as a number; expected numbers separated by commas`);
    return v;
  });
}

/** "4" -> 4, "[[0],[1,2]]" -> [[0],[1,2]]; otherwise the text as typed (the server judges). */
function parseMixed(raw, alts) {
  if (/^-?\d+$/.test(raw) && alts.some((a) => a.type === "integer")) return Number(raw);
  if (/^-?\d*\.\d+$/.test(raw) && alts.some((a) => a.type === "number")) return Number(raw);
  if (raw.startsWith("[") || raw.startsWith("{")) {
    try {
      return JSON.parse(raw);
    } catch {
      return raw;
    }
  }
  return raw;
}

// pydantic's messages, as a person would say them
const PLAIN = [
  [/^Input should be greater than or equal to (.+)$/, "must be at least $1"],
  [/^Input should be greater than (.+)$/, "must be greater than $1"],
  [/^Input should be less than or equal to (.+)$/, "must be at most $1"],
  [/^Input should be less than (.+)$/, "must be less than $1"],
  [/^Input should be a valid integer.*$/, "must be a whole number"],
  [/^Input should be a finite number.*$/, "must be a finite number"],
  [/^Input should be a valid number.*$/, "must be a number"],
  [/^Input should be a valid boolean.*$/, "must be true or false"],
  [/^Input should be a valid (list|array).*$/, "must be a list"],
  [/^Input should be a valid string.*$/, "must be text"],
  [/^Input should be (.+)$/, (_, opts) => (/,| or /.test(opts) ? "must be one of " : "must be ") + opts.replace(/'/g, "")],
  [/^Field required$/, "is required"],
  [/^Extra inputs are not permitted$/, "is not a setting this service knows"],
  [/^String should match pattern .*$/, "is not in the expected form"],
  [/^String should have at (most|least) (\d+) characters?$/, "must have at $1 $2 characters"],
  [/^List should have at (most|least) (\d+) items?.*$/, "must have at $1 $2 items"],
];

/** One validation message in plain words ("Value error, x" -> "x"; "Input should be less than 1" -> "must
 *  be less than 1"). */
export function plainMessage(text) {
  if (text === null || text === undefined) return null;
  const t = String(text).trim().replace(/^(Value|Assertion) error,\s*/, "");
  for (const [pattern, replacement] of PLAIN) {
    if (pattern.test(t)) return t.replace(pattern, replacement);
  }
  return t;
}

/**
 * Field errors of a 422 answer, one per field, by path without the "body." prefix ({"spec.device": "device
 * must be …", "teacher_id": "…"}; "spec" for a rule over several spec fields), in plain words. The API's
 * `fields` lists every field; its message holds "field: message" for the first few only, joined by "; ".
 * A field listed without a message, or one whose every alternative form was refused (clusters: an integer,
 * 'auto' or a list, each refused), maps to null: the form says what the field accepts.
 */
export function fieldErrors(err) {
  const message = err.message || "";
  const listed = (err.fields || []).filter(Boolean);
  const found = [];
  if (listed.length) {
    let cursor = 0;
    const at = listed.map((f) => {
      const i = message.indexOf(`${f}: `, cursor);
      if (i >= 0) cursor = i + f.length + 2;
      return i;
    });
    listed.forEach((f, k) => {
      if (at[k] < 0) {
        found.push([f, null]);
        return;
      }
      const start = at[k] + f.length + 2;
      const next = at.slice(k + 1).find((i) => i >= 0);
      const end = next !== undefined && message.slice(next - 2, next) === "; " ? next - 2 : next ?? message.length;
      found.push([f, message.slice(start, end)]);
    });
  } else {
    const m = message.match(/^([A-Za-z_][\w.]*):\s+([\s\S]*)$/);
    if (m) found.push([m[1], m[2]]);
  }
  const groups = new Map();
  for (const [field, text] of found) {
    const parts = field.replace(/^body\./, "").split(".");
    const top = parts[0] === "spec" && parts.length > 1 ? `spec.${parts[1]}` : parts[0];
    const sub = parts.slice(parts[0] === "spec" ? 2 : 1).join(".");
    if (!groups.has(top)) groups.set(top, []);
    groups.get(top).push({ sub, text });
  }
  const out = {};
  for (const [top, entries] of groups) {
    if (entries.length === 1) {
      out[top] = plainMessage(entries[0].text);
    } else if (entries.every((e) => /^\d+/.test(e.sub))) { // items of a list
      out[top] = entries.map((e) => `item ${Number(e.sub.split(".")[0]) + 1}: ${plainMessage(e.text) ?? "not accepted"}`).join(", ");
    } else {
      out[top] = null; // one error per alternative form: none of them is the message
    }
  }
  return out;
}
