// A form generated from a JSON schema (the job spec, CompressionSpec, as the server's OpenAPI document
// publishes it): one control per property with its default and limits, values read back as the schema's types,
// and server-side field errors shown next to their field.

import { h } from "./dom.js";

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
  if (s.maximum !== undefined) parts.push(`≤ ${s.maximum}`);
  if (s.exclusiveMaximum !== undefined) parts.push(`< ${s.exclusiveMaximum}`);
  return parts.join(", ");
}

function defaultText(value) {
  if (value === null || value === undefined) return "none";
  return typeof value === "string" ? value : JSON.stringify(value);
}

/**
 * Build the form's fields. Returns {element, read(), showErrors(map), clearErrors(), fields}.
 * `primary`: property names shown first; the rest go under "More options".
 */
export function specForm(doc, schema, { prefix = "spec", primary = [] } = {}) {
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
    } else if (one && (one.type === "integer" || one.type === "number")) {
      kind = one.type;
      const attrs = { id, name, type: "number", step: one.type === "integer" ? "1" : "any", inputmode: one.type === "integer" ? "numeric" : "decimal" };
      if (one.minimum !== undefined) attrs.min = one.minimum;
      else if (one.exclusiveMinimum !== undefined && one.type === "integer") attrs.min = one.exclusiveMinimum + 1;
      if (one.maximum !== undefined) attrs.max = one.maximum;
      else if (one.exclusiveMaximum !== undefined && one.type === "integer") attrs.max = one.exclusiveMaximum - 1;
      if (prop.default !== null && prop.default !== undefined) attrs.value = String(prop.default);
      else attrs.placeholder = "default";
      control = h("input", attrs);
    } else {
      kind = alts.length > 1 ? "mixed" : "string";
      const value = prop.default === null || prop.default === undefined ? "" : (typeof prop.default === "string" ? prop.default : JSON.stringify(prop.default));
      control = h("input", { id, name, type: "text", value, spellcheck: "false", autocomplete: "off",
        placeholder: kind === "mixed" ? alts.map((a) => a.const ?? a.type).join(" | ") : "" });
    }
    control.setAttribute("aria-describedby", `${helpId} ${errId}`);
    const limits = one ? limitsText(one) : "";
    const help = [prop.description, limits && `limits: ${limits}`, `default: ${defaultText(prop.default)}`].filter(Boolean).join(" · ");
    const label = h("label", { for: id }, prop.title || name, " ", h("code", { class: "field-name" }, name));
    const error = h("p", { id: errId, class: "field-error", hidden: true });
    const wrapper = h("div", { class: `field field-${kind}`, "data-field": `${prefix}.${name}` },
      kind === "boolean" ? h("div", { class: "check" }, control, label) : [label, control],
      h("p", { id: helpId, class: "help" }, help), error);
    fields[name] = { name, prop, kind, alts, nullable, control, error, wrapper };
    (primary.includes(name) ? main : more).push(wrapper);
  }
  const details = h("details", { class: "more-options" }, h("summary", {}, `More options (${more.length})`), h("div", { class: "grid-fields" }, more));
  const element = h("fieldset", { class: "spec" }, h("legend", {}, "Compression spec"),
    h("div", { class: "grid-fields" }, main), more.length ? details : null);

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
        if (raw === "") continue; // the default (or none)
        if (kind === "integer" || kind === "number") {
          if (!control.validity.valid && control.validity.badInput) {
            problems[f.name] = "not a number";
            continue;
          }
          value = Number(raw);
        } else if (kind === "mixed") {
          value = parseMixed(raw, f.alts);
        } else {
          value = raw;
        }
      }
      if (JSON.stringify(value) === JSON.stringify(prop.default)) continue;
      spec[f.name] = value;
    }
    return { spec, problems };
  }

  function clearErrors() {
    for (const f of Object.values(fields)) {
      f.error.hidden = true;
      f.error.textContent = "";
      f.control.removeAttribute("aria-invalid");
    }
  }

  /** `errors`: {name: message}; returns the names it could place. */
  function showErrors(errors) {
    const placed = [];
    for (const [name, message] of Object.entries(errors)) {
      const f = fields[name];
      if (!f) continue;
      f.error.textContent = message;
      f.error.hidden = false;
      f.control.setAttribute("aria-invalid", "true");
      const folded = f.wrapper.closest("details");
      if (folded) folded.open = true;
      placed.push(name);
    }
    if (placed.length) fields[placed[0]].control.focus();
    return placed;
  }

  return { element, read, showErrors, clearErrors, fields };
}

/** "4" -> 4, "auto" -> "auto", "[[0],[1,2]]" -> [[0],[1,2]]; otherwise the text as typed (the server judges). */
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

/**
 * Field errors of a 422 answer, by field path without the "body." prefix: {"spec.device": "...",
 * "teacher_id": "..."}. The API's message is "field: message; field: message" (validation errors) or
 * "field: message" (checks against the teacher), with the fields also listed in `fields`.
 */
export function fieldErrors(err) {
  const out = {};
  const message = err.message || "";
  const parts = message.split(/;\s+(?=[A-Za-z_][\w.]*:\s)/);
  for (const part of parts) {
    const m = part.match(/^([A-Za-z_][\w.]*):\s+([\s\S]*)$/);
    if (!m) continue;
    const path = m[1].replace(/^body\./, "");
    out[path] = m[2];
  }
  for (const field of err.fields || []) {
    const path = field.replace(/^body\./, "");
    if (!(path in out)) out[path] = message;
  }
  return out;
}
