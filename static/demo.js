/**
 * demo.js: the logic of the demo page served at `/` (SPEC "The demo page").
 * Starts demo jobs, renders one card per job with progress.js's ProgressView, follows every
 * unfinished job over ONE watch stream, and keeps the jobs in sessionStorage across reloads.
 * Server text reaches the page only through textContent (ProgressView does the same).
 * Every URL is relative to where the app is served (this file is `<app>/static/demo.js`),
 * so the page works unchanged at `/` or mounted under a prefix (`/progress/`).
 */
import { ProgressView, hasFile, isTerminal, watchJobs } from "./progress.js";

/** The app this page belongs to: `<app>/static/demo.js` -> `<app>/`. */
const APP = new URL("..", import.meta.url);
const STORE = "progress-demo:jobs";
const KEY_STORE = "progress-demo:api-key";
const $ = (selector) => document.querySelector(selector);

/** jobId -> what we persist: {jobId, token, task, runner, created, last, percent, end}; a
 * group's parent also has `childIds`, each child `parentId` (it uses the parent's token). */
const jobs = new Map();
/** jobId -> {card, view, cancel}: the DOM, never persisted. */
const cards = new Map();

let watch = null;
let generation = 0; // callbacks of a watch we replaced must not touch the page
let saveTimer = null;

const finished = (job) => Boolean(job.end) || Boolean(job.last && isTerminal(job.last.status));

function make(tag, className, parent) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  parent?.append(el);
  return el;
}

// --- persistence: sessionStorage keeps a tab's jobs across a reload, not across tabs ----

function save() {
  clearTimeout(saveTimer);
  saveTimer = null;
  try {
    sessionStorage.setItem(STORE, JSON.stringify([...jobs.values()]));
  } catch {
    // Storage full or disabled: the page still works, it just forgets on reload.
  }
}

/** Progress events come in bursts (10 jobs x 5 a second): write at most every 200 ms. */
const saveSoon = () => { saveTimer ??= setTimeout(save, 200); };

function restore() {
  try {
    const stored = JSON.parse(sessionStorage.getItem(STORE) ?? "[]");
    return Array.isArray(stored) ? stored.filter((j) => j && typeof j.jobId === "string") : [];
  } catch {
    return [];
  }
}

// --- HTTP -------------------------------------------------------------------------------

async function api(method, path, { token = null, body } = {}) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  try {
    const res = await fetch(new URL(path, APP), { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    return { status: res.status, data: await res.json().catch(() => null) };
  } catch {
    return { status: 0, data: null };
  }
}

const describe = (r) =>
  r.status === 0 ? "the server cannot be reached" : `${r.data?.error?.message ?? "unexpected answer"} (HTTP ${r.status})`;

function showAlert(text) {
  $("#alert .alert-text").textContent = text;
  $("#alert").hidden = false;
}

// --- cards ------------------------------------------------------------------------------

const TASK_NAMES = { "demo.report": "Report", "demo.fail": "Failing job", group: "Group of reports" };
const COUNT_NAMES = ["running", "succeeded", "failed", "revoked", "pending"];

/** "3 running · 2 succeeded · 3 pending": a parent's `children` counts, the zeros left out. */
const countsText = (c) => COUNT_NAMES.filter((k) => c[k]).map((k) => `${c[k]} ${k}`).join(" · ");

/** A group's card gets its children's counts and an expandable list for their cards. */
function renderGroupParts(job, card) {
  const counts = make("p", "children-counts", card);
  counts.textContent = `${job.childIds.length} pending`;
  const details = make("details", "children", card);
  make("summary", null, details).textContent = `Children (${job.childIds.length})`;
  make("ul", "child-jobs", details);
}

function renderCard(job) {
  const parent = job.parentId ? cards.get(job.parentId) : null;
  if (job.parentId && !parent) return; // a child whose group card is gone
  const card = make("li", parent ? "job child" : "job");
  Object.assign(card.dataset, { jobId: job.jobId, task: job.task, runner: job.runner, status: "pending" });
  const head = make("div", "job-head", card);
  make("span", "task", head).textContent = TASK_NAMES[job.task] ?? job.task;
  make("span", "runner", head).textContent = job.runner;
  const id = make("code", "job-id", head);
  id.textContent = job.jobId.slice(0, 8);
  id.title = job.jobId;
  const view = new ProgressView({
    jobId: job.jobId,
    token: job.token,
    label: `Progress of ${TASK_NAMES[job.task] ?? job.task} ${job.jobId.slice(0, 8)}`,
    // demo.report always attaches its report; other tasks say so in their result.
    showDownload: (ev) => job.task === "demo.report" || hasFile(ev.result),
  });
  head.append(view.status); // the status badge sits in the card's header
  view.setStatus("pending");
  card.append(view.root);
  const actions = make("div", "actions", card);
  const cancel = make("button", "cancel", actions);
  cancel.type = "button";
  cancel.textContent = "Cancel";
  cancel.addEventListener("click", () => cancelJob(job, cancel));
  if (job.childIds) renderGroupParts(job, card);
  if (parent) cancel.remove(); // cancel the group as a whole
  cards.set(job.jobId, { card, view, cancel });
  if (parent) parent.card.querySelector(".child-jobs").append(card); // in the group's order
  else $("#jobs").prepend(card); // newest first
  $("#empty").hidden = true;
  show(job);
}

/** Brings a card in line with the job's last event and end. */
function show(job) {
  const { card, view, cancel } = cards.get(job.jobId);
  if (job.last) {
    // A failed or revoked job's last event may carry no percent: a restored card keeps the
    // last known one, as a card that saw it live does.
    const { last, percent } = job;
    view.update(last.percent == null && percent != null && last.status !== "success" ? { ...last, percent } : last);
    card.dataset.status = job.last.status;
    if (last.children) card.querySelector(".children-counts").textContent = countsText(last.children);
  }
  if (job.end?.reason) {
    view.end({ status: null, reason: job.end.reason });
    card.dataset.gaveUp = job.end.reason;
  }
  if (finished(job)) cancel.remove();
}

function applyEvent(ev) {
  const job = jobs.get(ev.job_id);
  if (!job || (job.last && ev.seq <= job.last.seq)) return; // already shown before a resume
  job.last = ev;
  if (typeof ev.percent === "number") job.percent = ev.percent;
  show(job);
  saveSoon();
}

function endJob({ jobId, status, reason }) {
  const job = jobs.get(jobId);
  if (!job || status !== null) return; // a terminal status already came through applyEvent
  job.end = { reason };
  show(job);
  saveSoon();
}

async function cancelJob(job, button) {
  button.disabled = true;
  button.textContent = "Cancelling…";
  const r = await api("DELETE", `api/v1/jobs/${encodeURIComponent(job.jobId)}`, { token: job.token });
  if (r.status === 202) return; // the `revoked` event arrives over the stream and removes the button
  if (r.status === 409) {
    button.textContent = "Already finished";
    return;
  }
  button.disabled = false;
  button.textContent = "Cancel";
  showAlert(`Could not cancel the job: ${describe(r)}`);
}

// --- the one watch stream ---------------------------------------------------------------

const CONN_TEXT = {
  open: (d) => (d.open === 1 ? "1 live stream" : `${d.open} live streams`),
  connecting: () => "connecting…",
  reconnecting: (d) => (d.reason === "too_many_streams" ? "reconnecting… (server busy: too many streams)" : "reconnecting…"),
  "gave-up": () => "Stream stopped: some jobs could not be followed",
};

function showConn(state, detail = {}) {
  const conn = $("#conn-state");
  if (state === "ended" || state === "closed") state = "idle"; // no stream left open
  conn.dataset.state = state;
  conn.textContent = CONN_TEXT[state]?.(detail) ?? "No live stream";
}

/** Follows every unfinished job over one new watch, each resuming after its last seen seq
 * (the new watch's cursor starts from those seqs, so no event is shown twice). */
function rewatch() {
  const gen = ++generation;
  watch?.close();
  watch = null;
  const live = [...jobs.values()].filter((j) => !finished(j));
  if (!live.length) return showConn("idle");
  const mine = (fn) => (...args) => { if (gen === generation) fn(...args); };
  watch = watchJobs({
    jobs: live.map((j) => ({ jobId: j.jobId, token: j.token, lastSeq: j.last?.seq ?? 0 })),
    onEvent: mine(applyEvent),
    onEnd: mine(endJob),
    onState: mine(showConn),
    onAllDone: mine(() => { watch = null; showConn("idle"); }),
  });
}

// --- buttons ----------------------------------------------------------------------------

/** Starts a group of `count` reports: one parent job and its children, each shown. */
async function startGroup(params, count) {
  const runner = $("#runner").value;
  const key = $("#api-key").value.trim() || null;
  const body = { group: Array.from({ length: count }, () => ({ task: "demo.report", params })), runner };
  const r = await api("POST", "api/v1/jobs", { token: key, body });
  if (!(r.status >= 200 && r.status < 300 && r.data?.job_id)) return showAlert(`Could not start the group: ${describe(r)}`);
  const token = r.data.token ?? null;
  const common = { token, runner, created: Date.now(), last: null, end: null };
  const parent = { ...common, jobId: r.data.job_id, task: "group", childIds: r.data.children.map((c) => c.job_id) };
  jobs.set(parent.jobId, parent);
  renderCard(parent);
  for (const jobId of parent.childIds) {
    const child = { ...common, jobId, task: "demo.report", parentId: parent.jobId };
    jobs.set(jobId, child);
    renderCard(child);
  }
  save();
  rewatch();
}

async function start(task, params, count = 1) {
  const runner = $("#runner").value;
  const key = $("#api-key").value.trim() || null;
  const body = { task, params, runner };
  const answers = await Promise.all(Array.from({ length: count }, () => api("POST", "api/v1/jobs", { token: key, body })));
  for (const r of answers.filter((a) => a.status >= 200 && a.status < 300 && a.data?.job_id)) {
    const job = { jobId: r.data.job_id, token: r.data.token ?? null, task, runner, created: Date.now(), last: null, end: null };
    jobs.set(job.jobId, job);
    renderCard(job);
  }
  const failed = answers.filter((a) => !(a.status >= 200 && a.status < 300 && a.data?.job_id));
  if (failed.length) {
    const what = count === 1 ? "the job" : `${failed.length} of ${count} jobs`;
    showAlert(`Could not start ${what}: ${describe(failed[0])}`);
  }
  if (failed.length < count) {
    save();
    rewatch();
  }
}

function clearFinished() {
  // Top-level cards only: a group's children go with it, never before it.
  for (const job of [...jobs.values()].filter((j) => finished(j) && !j.parentId)) {
    for (const id of [job.jobId, ...(job.childIds ?? [])]) {
      cards.get(id)?.card.remove();
      cards.delete(id);
      jobs.delete(id);
    }
  }
  $("#empty").hidden = jobs.size > 0;
  save();
}

/** Job parameters: the defaults, or the page URL's `?steps=&step_ms=&fail_at=` (quicker
 * jobs for tests, slower ones for a live demo; the server validates them). */
function param(name, fallback) {
  const value = Number.parseInt(new URLSearchParams(location.search).get(name), 10);
  return Number.isInteger(value) ? value : fallback;
}

function init() {
  const report = () => ({ steps: param("steps", 20), step_ms: param("step_ms", 200) });
  const failing = () => ({ fail_at: param("fail_at", 50), step_ms: param("step_ms", 200) });
  $("#start-report").addEventListener("click", () => start("demo.report", report()));
  $("#start-fail").addEventListener("click", () => start("demo.fail", failing()));
  $("#start-ten").addEventListener("click", () => start("demo.report", report(), 10));
  $("#start-group").addEventListener("click", () => startGroup(report(), 8));
  $("#clear").addEventListener("click", clearFinished);
  $("#alert .dismiss").addEventListener("click", () => { $("#alert").hidden = true; });
  const key = $("#api-key");
  key.value = sessionStorage.getItem(KEY_STORE) ?? "";
  key.addEventListener("change", () => sessionStorage.setItem(KEY_STORE, key.value.trim()));
  // Leaving (or reloading): flush the debounced save and close the stream ourselves, so the
  // dying page does not mistake the aborted stream for a server failure. Back from the
  // back/forward cache: follow the jobs again.
  addEventListener("pagehide", () => {
    save();
    generation++;
    watch?.close();
    watch = null;
  });
  addEventListener("pageshow", (e) => { if (e.persisted) rewatch(); });
  for (const job of restore()) {
    jobs.set(job.jobId, job);
    renderCard(job);
  }
  rewatch();
}

init();
