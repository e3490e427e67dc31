// The page: asks for an API key once per browser session, then routes #/jobs, #/jobs/<id>, #/new and
// #/compare to their views. Each view gets an AbortSignal that fires when the user leaves it, which closes
// its event streams.

import { apiKey, get, onUnauthorized, setApiKey } from "./api.js";
import { announce, errorBox, fill, h } from "./dom.js";
import { renderCompare } from "./views/compare.js";
import { renderJob } from "./views/job.js";
import { renderJobs } from "./views/jobs.js";
import { renderNewJob } from "./views/newjob.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const signout = document.getElementById("signout");
let current = null;
let loginNotice = "";

function parseRoute() {
  const raw = location.hash.startsWith("#/") ? location.hash.slice(2) : "jobs";
  const [path, query = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { name: parts[0] || "jobs", args: parts.slice(1), params: new URLSearchParams(query) };
}

async function route() {
  if (current) current.abort();
  current = new AbortController();
  const signal = current.signal;
  if (!apiKey()) {
    showLogin();
    return;
  }
  nav.hidden = false;
  signout.hidden = false;
  const { name, args, params } = parseRoute();
  for (const a of nav.querySelectorAll("a")) {
    if (a.dataset.route === name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  fill(main, h("p", { class: "loading" }, "Loading…"));
  try {
    if (name === "jobs" && args.length) await renderJob(main, args[0], signal);
    else if (name === "jobs") await renderJobs(main, params, signal);
    else if (name === "new") await renderNewJob(main, params, signal);
    else if (name === "compare") await renderCompare(main, params, signal);
    else fill(main, h("h1", {}, "Not found"), h("p", {}, "There is no such page. ", h("a", { href: "#/jobs" }, "Back to the jobs")));
  } catch (err) {
    if (signal.aborted || err.name === "AbortError") return;
    fill(main, h("h1", {}, "Something went wrong"), errorBox(err));
  }
  if (!signal.aborted) {
    const heading = main.querySelector("h1");
    if (heading && document.activeElement === document.body) {
      heading.tabIndex = -1;
      heading.focus({ preventScroll: true });
    }
  }
}

function showLogin() {
  nav.hidden = true;
  signout.hidden = true;
  const input = h("input", { id: "api-key", name: "api-key", type: "password", autocomplete: "off", required: true,
    spellcheck: "false", "aria-describedby": "api-key-help" });
  const status = h("div", { id: "login-status" }, loginNotice ? errorBox({ code: "unauthorized", message: loginNotice }) : null);
  const form = h("form", { class: "login card", onsubmit: async (e) => {
    e.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    setApiKey(key);
    fill(status, h("p", {}, "Checking the key…"));
    try {
      await get("/v1/jobs?limit=1");
      loginNotice = "";
      announce("Signed in");
      route();
    } catch (err) {
      setApiKey(null);
      fill(status, errorBox(err, "Sign-in failed"));
      input.focus();
    }
  } },
  h("h1", {}, "Sign in"),
  h("label", { for: "api-key" }, "API key"),
  input,
  h("p", { id: "api-key-help", class: "help" },
    "A key from ", h("code", {}, "skillkd keys create --owner NAME"),
    " (or the admin key that ", h("code", {}, "skillkd serve"), " wrote to ", h("code", {}, "$SKILLKD_HOME/admin.key"),
    "). It is kept in this tab only (session storage) and sent as a Bearer header."),
  h("button", { type: "submit", class: "primary" }, "Sign in"),
  status);
  fill(main, form);
  input.focus();
}

onUnauthorized(() => {
  if (!apiKey()) return;
  setApiKey(null);
  loginNotice = "The service refused the key (unknown or revoked). Sign in again.";
  route();
});

signout.addEventListener("click", () => {
  setApiKey(null);
  loginNotice = "";
  route();
});

document.getElementById("skip").addEventListener("click", (e) => {
  e.preventDefault();
  main.focus();
});

window.addEventListener("hashchange", route);
route();
