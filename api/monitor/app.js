// The renderfarm monitor: a studio's jobs and frames, or the farm as an operator sees it.
// It calls the farm's REST API with the session cookie (each change with the session's
// CSRF token) and watches server-sent streams, so it updates without reloading. Every
// value shown is set as text, never as HTML: job names and messages are the studios'.
"use strict";

const state = { login: null, stream: null, chosen: null };
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "onclick") node.addEventListener("click", value);
    else if (name === "text") node.textContent = value;
    else if (name === "style") node.style.cssText = value;  // CSSOM: allowed by the page's CSP
    else if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fill(node, ...children) {
  // replaceChildren, leaving out the children a condition left null
  node.replaceChildren(...children.flat().filter((child) => child !== null && child !== undefined));
}

function toast(text, error = false) {
  const box = $("toast");
  box.textContent = text;
  box.className = "show" + (error ? " error" : "");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.className = ""; }, 3500);
}

function problem(data, fallback) {
  if (!data || data.detail === undefined) return fallback;
  if (typeof data.detail === "string") return data.detail;
  return data.detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
}

async function call(method, path, body) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && state.login) headers["X-CSRF-Token"] = state.login.csrf;
  const answer = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await answer.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (answer.status === 401 && path !== "/monitor/login") {
    state.login = null;
    showLogin("Your session ended: log in again.");
  }
  if (!answer.ok) throw new Error(problem(data, `${answer.status} ${answer.statusText}`));
  return data;
}

async function act(what, method, path, body) {
  try {
    await call(method, path, body);
    toast(what);
  } catch (error) {
    toast(error.message, true);
  }
}

function watch(path, onUpdate) {
  stopWatching();
  const source = new EventSource(path);
  source.addEventListener("update", (event) => onUpdate(JSON.parse(event.data)));
  source.addEventListener("end", (event) => {  // the session or key no longer holds
    stopWatching();
    state.login = null;
    showLogin(JSON.parse(event.data));
  });
  state.stream = source;
}

function stopWatching() {
  if (state.stream) state.stream.close();
  state.stream = null;
}

// Formatting ---------------------------------------------------------------------------

const when = (iso) => (iso ? new Date(iso).toLocaleString() : "");
const number = (value, digits = 2) => (value === null || value === undefined ? "" : Number(value).toFixed(digits));
const figure = (value) => (value === null || value === undefined ? "" : Number(value).toPrecision(3));
const energy = (kwh) => (kwh < 1 ? `${figure(kwh * 1000)} Wh` : `${figure(kwh)} kWh`);
const badge = (text) => el("span", { class: `badge ${text}`, "data-state": text, text });

function bar(progress) {
  const total = Math.max(1, progress.frames_total);
  const part = (cls, count) => el("span", { class: cls, style: `width:${(100 * count) / total}%` });
  return el("span", { class: "bar", title: `${progress.frames_done} of ${progress.frames_total} done` },
    part("d", progress.frames_done), part("f", progress.frames_failed), part("r", progress.frames_running));
}

function production(job) {
  return [job.show, job.sequence, job.shot].filter(Boolean).join(" / ");
}

// Login --------------------------------------------------------------------------------

function showLogin(message = "") {
  stopWatching();
  $("nav").replaceChildren();
  $("who").textContent = "";
  $("logout").hidden = true;
  const key = el("input", { id: "key", type: "password", placeholder: "rf_… or rfo_…", autocomplete: "off", required: true });
  const said = el("p", { class: "error", id: "login-error", text: message });
  const form = el("form", { class: "login" },
    el("h1", { text: "Log in" }),
    el("label", { for: "key", text: "Your studio's or operator's key" }), key,
    el("button", { type: "submit", id: "login", text: "Log in" }), said);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      state.login = await call("POST", "/monitor/login", { key: key.value });
      key.value = "";
      location.hash = state.login.kind === "operator" ? "#/farm/jobs" : "#/jobs";
      render();
    } catch (error) {
      said.textContent = error.message;
    }
  });
  $("main").replaceChildren(form);
}

async function logout() {
  try { await call("POST", "/monitor/logout"); } catch { /* gone already */ }
  state.login = null;
  showLogin("Logged out.");
}

// A studio's views ---------------------------------------------------------------------

function jobsPage() {
  const body = el("tbody", { id: "jobs" });
  $("main").replaceChildren(
    el("h1", { text: "Jobs" }),
    el("table", {}, el("thead", {}, el("tr", {}, ["Job", "Name", "Show / seq / shot", "Artist",
      "State", "Priority", "Progress", "Frames", "Energy", "Cost", "CO2 g", "Submitted"].map((h) => el("th", { text: h })))), body));
  watch("/v1/stream/jobs", (jobs) => {
    body.replaceChildren(...jobs.map((job) => el("tr", {
      class: "link", "data-job": job.id, onclick: () => { location.hash = `#/jobs/${job.id}`; },
    },
      el("td", { text: job.id }), el("td", { text: job.name }), el("td", { text: production(job) }),
      el("td", { text: job.artist || "" }), el("td", {}, badge(job.state)), el("td", { text: job.priority }),
      el("td", {}, bar(job.progress)),
      el("td", { class: "done-count", text: `${job.progress.frames_done}/${job.progress.frames_total}` }),
      el("td", { text: energy(job.energy.facility_kwh) }),
      el("td", { text: `${figure(job.energy.cost)} ${job.energy.currency}` }),
      el("td", { text: figure(job.energy.co2_grams) }), el("td", { text: when(job.submitted_at) }))));
    if (!jobs.length) body.replaceChildren(el("tr", {}, el("td", { colspan: 12, class: "muted", text: "No job yet: submit one over the API or with renderfarm submit." })));
  });
}

async function jobPage(id) {
  try {
    await call("GET", `/v1/jobs/${id}`);
  } catch (error) {
    $("main").replaceChildren(el("h1", { text: `Job ${id}` }), el("p", { class: "error", id: "not-found", text: error.message }),
      el("a", { href: "#/jobs", text: "All jobs" }));
    return;
  }
  const head = el("div", { id: "job-head" });
  const grid = el("div", { class: "grid", id: "frames" });
  const panel = el("div", { class: "panel", id: "frame-panel" }, el("p", { class: "muted", text: "Click a frame." }));
  const priority = el("input", { id: "priority", type: "number", min: 0, max: 100, style: "width:5rem" });
  const chosen = el("input", { id: "requeue-frames", placeholder: "frames: 3,7-9", style: "width:9rem" });
  const actions = el("div", { class: "actions" },
    el("button", { id: "suspend", onclick: () => act("Suspended", "POST", `/v1/jobs/${id}/suspend`), text: "Suspend" }),
    el("button", { id: "resume", onclick: () => act("Resumed", "POST", `/v1/jobs/${id}/resume`), text: "Resume" }),
    el("button", { id: "retry", onclick: () => act("Failed frames queued again", "POST", `/v1/jobs/${id}/retry`), text: "Retry failed frames" }),
    el("button", { id: "cancel", class: "danger", onclick: () => { if (confirm(`Cancel job ${id}?`)) act("Cancelled", "POST", `/v1/jobs/${id}/cancel`); }, text: "Cancel" }),
    priority,
    el("button", { id: "set-priority", onclick: () => act("Priority set", "PATCH", `/v1/jobs/${id}`, { priority: Number(priority.value) }), text: "Set priority" }),
    chosen,
    el("button", { id: "requeue", onclick: () => act("Frames queued again", "POST", `/v1/jobs/${id}/requeue`, { frames: chosen.value }), text: "Re-queue frames" }));
  $("main").replaceChildren(el("a", { href: "#/jobs", text: "← All jobs" }), head, actions,
    el("div", { class: "split" }, el("div", {}, el("h2", { text: "Frames" }), grid), panel));
  let frames = new Map();
  let first = true;
  watch(`/v1/stream/jobs/${id}`, ({ job, frames: list }) => {
    if (first) { priority.value = job.priority; first = false; }
    fill(head,
      el("h1", {}, `Job ${job.id}: `, el("span", { id: "job-name", text: job.name }), " ", badge(job.state)),
      el("p", { class: "muted", text: [production(job), job.artist, `priority ${job.priority}`, `pool ${job.pool}`].filter(Boolean).join(" · ") }),
      job.message ? el("p", { id: "job-message", text: job.message }) : null,
      el("p", {}, bar(job.progress), ` ${job.progress.frames_done}/${job.progress.frames_total} done, ${job.progress.frames_failed} failed · `,
        `${energy(job.energy.facility_kwh)} · ${figure(job.energy.cost)} ${job.energy.currency} · ${figure(job.energy.co2_grams)} g CO2`));
    frames = new Map(list.map((frame) => [frame.frame, frame]));
    grid.replaceChildren(...list.map((frame) => el("div", {
      class: `cell ${frame.state}${state.chosen === frame.frame ? " chosen" : ""}`, "data-frame": frame.frame,
      "data-state": frame.state, title: `frame ${frame.frame}: ${frame.state}`,
      onclick: () => { state.chosen = frame.frame; showFrame(id, frames.get(frame.frame), panel); },
    }, String(frame.frame).slice(-3))));
    if (state.chosen !== null && frames.has(state.chosen)) showFrame(id, frames.get(state.chosen), panel, false);
  });
}

async function showFrame(jobId, frame, panel, fresh = true) {
  if (!fresh && panel.dataset.frame === `${frame.frame}:${frame.state}`) return;
  panel.dataset.frame = `${frame.frame}:${frame.state}`;
  const facts = [["State", frame.state], ["Node", frame.node || ""], ["Attempt", frame.attempt],
    ["Render seconds", number(frame.render_seconds)], ["IT energy J", figure(frame.energy_joules)],
    ["Cost", figure(frame.cost)], ["CO2 g", figure(frame.co2_grams)]];
  if (frame.error) facts.push(["Error", frame.error]);
  if (frame.status_line) facts.push(["Status", frame.status_line]);
  const log = el("pre", { class: "log", id: "frame-log", text: frame.log_url ? "…" : "No log yet." });
  fill(panel,
    el("h2", { text: `Frame ${frame.frame}` }),
    el("dl", {}, facts.flatMap(([name, value]) => [el("dt", { text: name }), el("dd", { text: value })])),
    frame.state === "done" ? el("img", { id: "thumbnail", alt: `frame ${frame.frame}`, src: `/v1/jobs/${jobId}/frames/${frame.frame}/thumbnail` }) : null,
    frame.output_url ? el("a", { href: frame.output_url, target: "_blank", text: "Full frame" }) : null,
    el("div", { class: "actions" }, el("button", {
      id: "requeue-frame", onclick: () => act(`Frame ${frame.frame} queued again`, "POST", `/v1/jobs/${jobId}/requeue`, { frames: String(frame.frame) }),
      text: `Re-queue frame ${frame.frame}`,
    })),
    el("h2", { text: "Log" }), log);
  if (frame.log_url) {
    try {
      const answer = await fetch(frame.log_url, { credentials: "same-origin" });
      log.textContent = answer.ok ? (await answer.text()).slice(-20000) : "No log.";
    } catch { log.textContent = "The log could not be read."; }
  }
}

// An operator's views ------------------------------------------------------------------

function farmPage(tab) {
  const tabs = { jobs: farmJobs, nodes: farmNodes, pools: farmPools, studios: farmStudios, limits: farmLimits, regions: farmRegions };
  (tabs[tab] || farmJobs)();
}

function table(headers, rows, id) {
  return el("table", { id }, el("thead", {}, el("tr", {}, headers.map((h) => el("th", { text: h })))), el("tbody", {}, rows));
}

function farmJobs() {
  const holder = el("div");
  $("main").replaceChildren(el("h1", { text: "Every studio's jobs" }), holder);
  watch("/v1/admin/stream", ({ jobs }) => holder.replaceChildren(table(
    ["Job", "Studio", "Name", "Show / seq / shot", "State", "Priority", "Pool", "Frames", "Submitted", "Message"],
    jobs.map((job) => el("tr", { "data-job": job.id }, el("td", { text: job.id }), el("td", { text: job.studio }),
      el("td", { text: job.name }), el("td", { text: production(job) }), el("td", {}, badge(job.state)),
      el("td", { text: job.priority }), el("td", { text: job.pool }), el("td", { text: job.frame_count }),
      el("td", { text: when(job.submitted_at) }), el("td", { text: job.message || "" }))), "farm-jobs")));
}

function farmNodes() {
  const holder = el("div");
  $("main").replaceChildren(el("h1", { text: "Nodes" }), holder);
  const button = (node, action) => el("button", {
    "data-action": action, onclick: () => act(`${node.name}: ${action}`, "POST", `/v1/admin/nodes/${encodeURIComponent(node.name)}/${action}`),
    text: action,
  });
  watch("/v1/admin/stream", ({ nodes }) => holder.replaceChildren(table(
    ["Node", "Host", "State", "Admin", "Pool", "Region", "Slots busy", "Rendering", "Power W", "Last heartbeat", ""],
    nodes.map((node) => el("tr", { "data-node": node.name }, el("td", { text: node.name }), el("td", { text: node.hostname }),
      el("td", {}, badge(node.state)), el("td", { class: "admin", text: node.admin }), el("td", { text: node.pool }),
      el("td", { text: node.region }), el("td", { text: `${node.running}/${node.slots}` }),
      el("td", { class: "current", text: node.current.join("; ") }),
      el("td", { text: number(node.power_watts, 1) }), el("td", { text: when(node.last_heartbeat) }),
      el("td", {}, button(node, "drain"), button(node, "disable"), button(node, "enable")))), "farm-nodes")));
}

function farmPools() {
  const holder = el("div");
  $("main").replaceChildren(el("h1", { text: "Pools and shares" }), holder);
  watch("/v1/admin/stream", ({ pools }) => holder.replaceChildren(...pools.map((pool) => el("section", {},
    el("h2", { text: `${pool.name}: ${pool.nodes} node(s), ${pool.busy}/${pool.slots} slots busy, ${pool.queued_frames} frames waiting` }),
    table(["Studio", "Rendering now", "Weight", "Guaranteed", "Burst"], pool.studios.map((s) => el("tr", {},
      el("td", { text: s.name }), el("td", { text: s.running }), el("td", { text: s.weight }),
      el("td", { text: s.minimum ?? "" }), el("td", { text: s.maximum ?? "" }))))))));
}

async function farmStudios() {
  stopWatching();
  const studios = await call("GET", "/v1/admin/studios");
  $("main").replaceChildren(el("h1", { text: "Studios" }), table(
    ["Studio", "Weight", "Templates", "Scene scripts", "Jobs at most", "Frames at most", "Requests/s", "Home region"],
    studios.map((s) => el("tr", {}, el("td", { text: s.name }), el("td", { text: s.weight }),
      el("td", { text: s.allow_templates ? "yes" : "no" }), el("td", { text: s.allow_scene_scripts ? "yes" : "no" }),
      el("td", { text: s.max_queued_jobs ?? "" }), el("td", { text: s.max_queued_frames ?? "" }),
      el("td", { text: s.requests_per_second ?? "" }), el("td", { text: s.home_region ?? "" }))), "farm-studios"));
}

async function farmLimits() {
  stopWatching();
  const limits = await call("GET", "/v1/admin/limits");
  $("main").replaceChildren(el("h1", { text: "Named limits" }), table(["Limit", "Capacity"],
    limits.map((l) => el("tr", {}, el("td", { text: l.name }), el("td", { text: l.capacity }))), "farm-limits"));
}

async function farmRegions() {
  stopWatching();
  const regions = await call("GET", "/v1/admin/regions");
  const curve = (steps, flat) => (steps ? steps.map(([h, v]) => `${h}h:${v}`).join(" ") : String(flat));
  $("main").replaceChildren(el("h1", { text: "Regions" }), table(["Region", "PUE", "Price/kWh", "gCO2/kWh", "UTC offset", "Source"],
    regions.map((r) => el("tr", {}, el("td", { text: r.name }), el("td", { text: r.pue }),
      el("td", { text: curve(r.tariff, r.price_per_kwh) }), el("td", { text: curve(r.carbon_profile, r.carbon_g_per_kwh) }),
      el("td", { text: r.utc_offset_hours }), el("td", { class: "muted", text: r.source }))), "farm-regions"));
}

// Routing ------------------------------------------------------------------------------

function navigation() {
  const links = state.login.kind === "operator"
    ? [["#/farm/jobs", "Jobs"], ["#/farm/nodes", "Nodes"], ["#/farm/pools", "Pools"], ["#/farm/studios", "Studios"], ["#/farm/limits", "Limits"], ["#/farm/regions", "Regions"]]
    : [["#/jobs", "Jobs"]];
  $("nav").replaceChildren(...links.map(([href, text]) => el("a", { href, text, class: location.hash.startsWith(href) ? "on" : null })));
  $("who").textContent = `${state.login.kind} ${state.login.name}`;
  $("logout").hidden = false;
}

async function render() {
  if (!state.login) {
    try { state.login = await call("GET", "/monitor/session"); } catch { showLogin(); return; }
  }
  navigation();
  const parts = location.hash.replace(/^#\/?/, "").split("/");
  if (state.login.kind === "operator") {
    if (parts[0] !== "farm") { location.hash = "#/farm/jobs"; return; }
    farmPage(parts[1]);
  } else if (parts[0] === "jobs" && parts[1]) {
    state.chosen = null;
    jobPage(Number(parts[1]));
  } else {
    jobsPage();
  }
}

window.addEventListener("hashchange", render);
document.addEventListener("DOMContentLoaded", () => {
  $("logout").addEventListener("click", logout);
  render();
});
