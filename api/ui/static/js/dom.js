// Building DOM nodes from values, never from markup strings: every value from the API goes in as text.

/**
 * h("a", {href: "#/jobs", class: "btn", onclick: fn}, "text", child, [more]) -> element.
 * Attributes: `class`, `dataset`, `on<event>` handlers, booleans (true sets, false/null/undefined omits).
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name === "value") el.value = value;
    else if (name === "checked") el.checked = Boolean(value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

/** Replace `el`'s children. */
export function fill(el, ...children) {
  return append(clear(el), children);
}

/** An error box: code and message of an ApiError (or any Error). */
export function errorBox(err, prefix = "") {
  const code = err && err.code ? err.code : "error";
  return h("div", { class: "error", role: "alert" },
    h("strong", {}, prefix ? `${prefix}: ` : "", h("code", {}, code)), " ", err && err.message ? err.message : String(err));
}

/**
 * A table: `columns` = [{label, cell(row) -> node|string, class}]; `caption` is for screen readers too.
 * `stack`: on a narrow screen each row becomes a card of "label value" lines (app.css), so no column starts
 * beyond the screen's edge.
 */
export function table(columns, rows, { caption, empty = "nothing yet", rowAttrs, stack = false } = {}) {
  const head = h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.class }, c.label)));
  const body = rows.length
    ? rows.map((row) => h("tr", rowAttrs ? rowAttrs(row) : {}, columns.map((c) => h("td", { class: c.class, "data-label": c.label }, c.cell(row)))))
    : [h("tr", {}, h("td", { colspan: columns.length, class: "empty" }, empty))];
  return h("div", { class: stack ? "table-wrap stack" : "table-wrap" },
    h("table", {}, caption ? h("caption", {}, caption) : null, h("thead", {}, head), h("tbody", {}, body)));
}

/** Say `text` to screen readers (the page's polite live region). */
export function announce(text) {
  const el = document.getElementById("announce");
  if (!el) return;
  el.textContent = "";
  setTimeout(() => { el.textContent = text; }, 50);
}

/** A status badge: the status word, coloured by class (the word carries the meaning, not the colour). */
export function badge(status) {
  return h("span", { class: `badge s-${status}`, "data-status": status }, status);
}
