// The REST API as the page sees it: JSON calls with the session's API key, uploads with progress, the job
// events stream (Server-Sent Events read through fetch, because EventSource cannot send a header and the key
// must never travel in a URL), and what the server offers according to its OpenAPI schema.

const KEY = "skillkd.apiKey";

export function apiKey() {
  return sessionStorage.getItem(KEY);
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

/** An error answered by the API: `{"error": {"code", "message"}}`, or a network failure. */
export class ApiError extends Error {
  constructor(status, code, message, fields = []) {
    super(message);
    this.status = status;
    this.code = code;
    this.fields = fields;
  }
}

const listeners = { unauthorized: [] };

/** Called when a request answers 401 (key unknown or revoked): the page asks for a key again. */
export function onUnauthorized(fn) {
  listeners.unauthorized.push(fn);
}

async function errorFrom(response) {
  let code = "http_" + response.status;
  let message = response.statusText || "request failed";
  let fields = [];
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
      fields = body.error.fields || [];
    }
  } catch {
    // not JSON: keep the status line
  }
  if (response.status === 401) listeners.unauthorized.forEach((fn) => fn());
  return new ApiError(response.status, code, message, fields);
}

function headers(extra = {}) {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}`, ...extra } : { ...extra };
}

/** fetch() with the key; throws ApiError for a non-2xx answer; returns parsed JSON (or null for 204). */
export async function request(method, path, { body, signal, extraHeaders } = {}) {
  const init = { method, signal, headers: headers(extraHeaders) };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (exc) {
    if (exc.name === "AbortError") throw exc;
    throw new ApiError(0, "network_error", "the service did not answer: " + exc.message);
  }
  if (!response.ok) throw await errorFrom(response);
  if (response.status === 204) return null;
  return response.json();
}

export const get = (path, opts) => request("GET", path, opts);
export const post = (path, body, opts = {}) => request("POST", path, { ...opts, body });
export const del = (path, opts) => request("DELETE", path, opts);

/** Every item of a cursor-paginated list (teachers, datasets), up to `max`. */
export async function getAll(path, { max = 1000, signal } = {}) {
  const items = [];
  let after = null;
  do {
    const sep = path.includes("?") ? "&" : "?";
    const page = await get(`${path}${sep}limit=200${after ? "&after=" + encodeURIComponent(after) : ""}`, { signal });
    items.push(...page.items);
    after = page.next_cursor;
  } while (after && items.length < max);
  return items;
}

/**
 * Upload a file as the raw request body (the API takes archives unwrapped, not multipart).
 * XMLHttpRequest, because fetch() reports no upload progress. `onProgress(sentBytes, totalBytes)`.
 */
export function upload(path, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    const key = apiKey();
    if (key) xhr.setRequestHeader("Authorization", `Bearer ${key}`);
    const name = file.name.toLowerCase();
    const type = name.endsWith(".zip") ? "application/zip"
      : name.endsWith(".tar") ? "application/x-tar"
      : (name.endsWith(".tar.gz") || name.endsWith(".tgz")) ? "application/gzip" : "application/octet-stream";
    xhr.setRequestHeader("Content-Type", type);
    xhr.upload.onprogress = (e) => onProgress && onProgress(e.loaded, e.lengthComputable ? e.total : file.size);
    xhr.onerror = () => reject(new ApiError(0, "network_error", "the upload was interrupted"));
    xhr.onload = () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        // fall through
      }
      if (xhr.status >= 200 && xhr.status < 300) {
        resolve(body);
        return;
      }
      if (xhr.status === 401) listeners.unauthorized.forEach((fn) => fn());
      const err = (body && body.error) || {};
      reject(new ApiError(xhr.status, err.code || "http_" + xhr.status, err.message || xhr.statusText));
    };
    xhr.send(file);
  });
}

/**
 * Follow a job's events (text/event-stream) from event id `after`. Calls `onEvent(kind, data, id)` for each
 * event, including the final `end`. Reconnects after a dropped connection from the last id seen, until the
 * job ends or `signal` aborts. Resolves when the stream ends.
 */
export async function followEvents(jobId, after, onEvent, signal) {
  let last = after;
  for (let attempt = 0; !signal.aborted; attempt++) {
    let response;
    try {
      response = await fetch(`/v1/jobs/${encodeURIComponent(jobId)}/events?after=${last}`, {
        headers: headers({ Accept: "text/event-stream" }), signal, cache: "no-store",
      });
    } catch (exc) {
      if (signal.aborted) return;
      await sleep(Math.min(1000 * 2 ** attempt, 15000), signal);
      continue;
    }
    if (!response.ok) throw await errorFrom(response);
    attempt = 0;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let ended = false;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const event = parseEvent(block);
          if (!event) continue;
          if (event.id !== null) last = event.id;
          onEvent(event.kind, event.data, event.id);
          if (event.kind === "end") ended = true;
        }
      }
    } catch (exc) {
      if (signal.aborted) return;
    }
    if (ended) return;
    await sleep(1000, signal);
  }
}

function parseEvent(block) {
  let kind = "message";
  let id = null;
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") kind = value;
    else if (field === "data") data.push(value);
    else if (field === "id" && /^\d+$/.test(value)) id = Number(value);
  }
  if (!data.length) return null;
  let parsed;
  try {
    parsed = JSON.parse(data.join("\n"));
  } catch {
    return null;
  }
  return { kind, id, data: parsed };
}

export function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    if (signal) signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

let schemaPromise = null;

/** The server's OpenAPI document (loaded once per page): which operations exist, and the job spec's schema. */
export function openapi() {
  if (!schemaPromise) {
    schemaPromise = fetch("/openapi.json").then((r) => {
      if (!r.ok) throw new ApiError(r.status, "openapi_unavailable", "the API schema could not be loaded");
      return r.json();
    });
    schemaPromise.catch(() => { schemaPromise = null; });
  }
  return schemaPromise;
}

/** True if the API has `method` on the templated `path` (e.g. "post", "/v1/jobs/{job_id}/pause"). */
export async function offers(method, path) {
  const doc = await openapi();
  const item = (doc.paths || {})[path];
  return Boolean(item && item[method.toLowerCase()]);
}

/** Download an artifact with the key (a plain link cannot send it) and hand it to the browser as a file. */
export async function downloadArtifact(url, filename) {
  let response;
  try {
    response = await fetch(url, { headers: headers() });
  } catch (exc) {
    throw new ApiError(0, "network_error", "the download failed: " + exc.message);
  }
  if (!response.ok) throw await errorFrom(response);
  const blob = await response.blob();
  const declared = response.headers.get("X-Content-SHA256");
  let verified = null;
  if (declared && globalThis.crypto && crypto.subtle) {
    const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
    const hex = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
    verified = hex === declared;
    if (!verified) throw new ApiError(0, "checksum_mismatch", `downloaded ${filename} does not match its sha256`);
  }
  const href = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = href;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(href), 60000);
  return { size: blob.size, verified };
}
