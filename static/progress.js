/**
 * progress.js: the dependency-free browser client of the progress streamer (SPEC.md).
 * Drop it into any page as an ES module: `watchJob` follows one job, `watchJobs` follows
 * many over one watch stream, and `<job-progress job=... token=...>` renders a bar.
 *
 * Where the API is: by default, where this file was served from. The app serves it at
 * `<app>/static/progress.js`, so `<app>` is one level up from `import.meta.url`, whether the
 * app is at the root or mounted under a prefix (`/progress/static/progress.js` -> `/progress`).
 * A copy served from elsewhere (your own static files, a bundle) passes `baseUrl` (or the
 * element's `base-url` attribute): the URL the app is served at.
 *
 * Deliberate choices:
 * - Native EventSource does the ordinary resume (it sends Last-Event-ID itself); we only
 *   step in when it gives up (readyState CLOSED), because it hides the HTTP status.
 * - We close the EventSource on a terminal event, so the browser never reconnects after
 *   the end, and drop any event whose seq we have already seen (replays after a resume).
 * - Server text only ever reaches the page through textContent / setAttribute.
 */

/** Statuses after which a job never gets another event. */
export const TERMINAL = new Set(["success", "failure", "revoked"]);
export const isTerminal = (status) => TERMINAL.has(status);

/** 1s, 2s, 4s … capped at 30s, with "equal jitter" (half fixed, half random) so that
 * tabs dropped together by one server restart do not all come back in the same second. */
export const backoffMs = (attempt, random = Math.random) => {
  const ms = Math.min(30_000, 1000 * 2 ** attempt);
  return Math.round(ms / 2 + (random() * ms) / 2);
};

/** The watch cursor: per-job last seq in the watch's job order, `0` = nothing seen. */
export const buildCursor = (order, seqs) => order.map((id) => seqs.get(id) ?? 0).join(".");

/** Appends query parameters, skipping null/undefined/"" so `token=null` is simply left out. */
export const withQuery = (url, params) => {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v != null && v !== "") q.set(k, String(v));
  const s = q.toString();
  return s ? `${url}${url.includes("?") ? "&" : "?"}${s}` : url;
};

/** The app this file was served by: `<app>/static/progress.js` -> `<app>` (no trailing slash). */
export const DEFAULT_BASE = new URL("..", import.meta.url).href.replace(/\/$/, "");
/** A base URL without its trailing slashes; none given: DEFAULT_BASE ("" is the origin's root). */
const baseOf = (baseUrl) => String(baseUrl ?? DEFAULT_BASE).replace(/\/+$/, "");
const apiUrl = (baseUrl, path) => `${baseOf(baseUrl)}/api/v1${path}`;
const jobPath = (baseUrl, jobId) => apiUrl(baseUrl, `/jobs/${encodeURIComponent(jobId)}`);
export const resultUrl = (baseUrl, jobId, token) => withQuery(`${jobPath(baseUrl, jobId)}/result`, { token });
const bearer = (token) => (token ? { Authorization: `Bearer ${token}` } : {});
const noop = () => {};

/** The status endpoint's snapshot, in the shape of a stream event (`ts` unknown: null). */
export const snapshotEvent = (s) => ({
  job_id: s.job_id, seq: s.seq, status: s.status, attempt: s.attempt ?? 1,
  step: null, percent: null, current: null, total: null, message: null, ...(s.progress ?? {}),
  result: s.result ?? null, error: s.error ?? null, ts: null,
});

/**
 * Why did a job's stream fail? EventSource cannot tell, the JSON status endpoint can.
 * Resolves to {action: "end", event} | {action: "give-up", reason} | {action: "retry", reason}.
 */
export async function probeJob(baseUrl, jobId, token) {
  let res;
  try {
    const headers = { Accept: "application/json", ...bearer(token) };
    res = await fetch(jobPath(baseUrl, jobId), { headers, cache: "no-store" });
  } catch {
    return { action: "retry", reason: "network" };
  }
  const gone = { 404: "not_found", 401: "unauthorized", 403: "forbidden" }[res.status];
  if (gone) return { action: "give-up", reason: gone };
  const body = res.ok ? await res.json().catch(() => null) : null;
  if (body && isTerminal(body.status)) return { action: "end", event: snapshotEvent(body) };
  return { action: "retry", reason: res.ok ? "unavailable" : `http_${res.status}` };
}

/** What the native EventSource can't report: the status code of a stream URL. We read the
 * headers and abort at once, so nothing is consumed. 0 means a network error. */
async function probeStream(url) {
  const ctl = new AbortController();
  const headers = { Accept: "text/event-stream" };
  const res = await fetch(url, { headers, cache: "no-store", signal: ctl.signal }).catch(() => null);
  ctl.abort();
  return res?.status ?? 0;
}

/** One EventSource plus what to do when it gives up; subclasses say what a message means. */
class Stream {
  constructor(onState) {
    Object.assign(this, { onState, es: null, timer: null, attempt: 0, closed: false });
  }

  open(url) {
    this.es?.close();
    const es = (this.es = new EventSource(url));
    es.onopen = () => { this.attempt = 0; this.onState("open"); };
    es.onmessage = (m) => {
      let ev;
      try { ev = JSON.parse(m.data); } catch { return; } // not ours: never break the handler
      if (ev && Number.isInteger(ev.seq) && !this.closed) this.handle(ev);
    };
    es.onerror = () => {
      if (this.closed || es !== this.es) return;
      if (es.readyState === EventSource.CONNECTING) return this.onState("reconnecting"); // native resume
      es.close();
      this.es = null;
      this.onState("reconnecting", { reason: "diagnosing" });
      // A task later, not now: a page being unloaded also sees its stream fail, and must not
      // send probes on its way out (its timers never fire).
      setTimeout(() => this.closed || this.lost().catch(() => this.later(() => this.connect(), "network")));
    };
  }

  /** Runs fn after the next backoff delay; the reason is shown to the page meanwhile. */
  later(fn, reason) {
    if (this.closed) return;
    this.onState("reconnecting", { reason });
    this.timer = setTimeout(() => { this.timer = null; if (!this.closed) fn(); }, backoffMs(this.attempt++));
  }

  stop(state) {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.timer);
    this.es?.close();
    this.es = null;
    this.onState(state);
  }
}

class JobStream extends Stream {
  constructor({ jobId, token = null, baseUrl = DEFAULT_BASE, lastSeq = 0, onEvent = noop, onState = noop, onEnd = noop }) {
    super(onState);
    Object.assign(this, { jobId, token, baseUrl, lastSeq, onEvent, onEnd });
    this.onState("connecting");
    this.connect();
  }

  connect() {
    const url = `${jobPath(this.baseUrl, this.jobId)}/events`;
    this.open(withQuery(url, { token: this.token, last_event_id: this.lastSeq || null }));
  }

  handle(ev) {
    if (ev.seq <= this.lastSeq) return;
    this.lastSeq = ev.seq;
    this.onEvent(ev);
    if (isTerminal(ev.status)) this.finish(ev);
  }

  finish(event) {
    this.stop("ended");
    this.onEnd({ jobId: this.jobId, status: event.status, event });
  }

  async lost() {
    const r = await probeJob(this.baseUrl, this.jobId, this.token);
    if (this.closed) return;
    if (r.action === "end") {
      // The stream answered 204 (terminal already seen) or we missed the end: deliver it.
      if (r.event.seq > this.lastSeq) { this.lastSeq = r.event.seq; this.onEvent(r.event); }
      this.finish(r.event);
    } else if (r.action === "give-up") {
      this.stop("gave-up");
      this.onEnd({ jobId: this.jobId, status: null, reason: r.reason });
    } else this.later(() => this.connect(), r.reason);
  }
}

/**
 * Follows one job. onEvent(event) per new event; onState(state, {reason}?) with state in
 * connecting | open | reconnecting | ended | gave-up | closed; onEnd({jobId, status, event})
 * on the terminal status, or onEnd({jobId, status: null, reason}) with reason in
 * not_found | unauthorized | forbidden. `lastSeq` resumes after an already-seen event.
 */
export function watchJob(options) {
  const stream = new JobStream(options);
  return { close: () => stream.stop("closed"), get lastSeq() { return stream.lastSeq; } };
}

/** Up to 100 jobs over one watch (POST /api/v1/watches), re-created if the watch is gone. */
class WatchGroup extends Stream {
  constructor({ jobs, baseUrl, onEvent, onState, onEnd }) {
    super(onState);
    Object.assign(this, { baseUrl, onEvent, onEnd, watch: null, order: [], gaveUp: false });
    this.tokens = new Map(jobs.map((j) => [j.jobId, j.token ?? null]));
    this.seqs = new Map(jobs.map((j) => [j.jobId, j.lastSeq ?? 0]));
    this.pending = new Set(this.tokens.keys());
    this.onState("connecting");
    this.create().catch(() => this.later(() => this.create(), "network"));
  }

  async create() {
    this.order = [...this.pending]; // a new watch: the cursor follows its job order
    const jobs = this.order.map((id) => ({ job_id: id, token: this.tokens.get(id) }));
    let res;
    try {
      const headers = { "Content-Type": "application/json", Accept: "application/json" };
      res = await fetch(apiUrl(this.baseUrl, "/watches"), { method: "POST", headers, body: JSON.stringify({ jobs }) });
    } catch {
      return this.later(() => this.create(), "network");
    }
    const body = await res.json().catch(() => null);
    if (this.closed) return;
    if (res.ok && typeof body?.watch_id === "string") { // SPEC: 201
      this.watch = body;
      return this.connect();
    }
    // A 4xx names a job that is unknown or not ours: ask each job which one it is.
    const code = body?.error?.code ?? `http_${res.status}`;
    if (res.status >= 400 && res.status < 500 && res.status !== 429) return this.probeAll(code);
    this.later(() => this.create(), code);
  }

  /** Built from the watch id and our base rather than the answer's `events_url`: the base is
   * what this page reaches, even behind a proxy that strips a prefix the server is not told of. */
  url() {
    const { watch_id: id, token } = this.watch;
    const resume = this.order.some((jobId) => this.seqs.get(jobId) > 0);
    const cursor = resume ? buildCursor(this.order, this.seqs) : null;
    const url = apiUrl(this.baseUrl, `/watches/${encodeURIComponent(id)}/events`);
    return withQuery(url, { token, last_event_id: cursor });
  }

  connect() { this.open(this.url()); }

  handle(ev) {
    const id = ev.job_id;
    if (!this.pending.has(id) || ev.seq <= this.seqs.get(id)) return;
    this.seqs.set(id, ev.seq);
    this.onEvent(ev);
    if (isTerminal(ev.status)) this.endJob(id, { status: ev.status, event: ev });
  }

  endJob(jobId, info) {
    if (!this.pending.delete(jobId)) return;
    if (info.status === null) this.gaveUp = true;
    this.onEnd({ jobId, ...info });
    if (!this.pending.size) this.stop(this.gaveUp ? "gave-up" : "ended");
  }

  async lost() {
    const status = await probeStream(this.url());
    if (this.closed) return;
    if (status === 204) return this.probeAll(null); // every job already terminal: fetch the ends
    if ([401, 403, 404].includes(status)) return this.later(() => this.create(), "watch_gone");
    this.later(() => this.connect(), { 503: "too_many_streams", 0: "network" }[status] ?? `http_${status}`);
  }

  /** Asks every unfinished job's status endpoint; ends those that are over or gone and
   * re-creates the watch for the rest, or gives them up with `reason` if nothing changed. */
  async probeAll(reason) {
    const ids = [...this.pending];
    const results = await Promise.all(ids.map((id) => probeJob(this.baseUrl, id, this.tokens.get(id))));
    if (this.closed) return;
    let changed = false;
    results.forEach((r, i) => {
      if (r.action === "retry") return;
      changed = true;
      if (r.action === "give-up") return this.endJob(ids[i], { status: null, reason: r.reason });
      if (r.event.seq > this.seqs.get(ids[i])) { this.seqs.set(ids[i], r.event.seq); this.onEvent(r.event); }
      this.endJob(ids[i], { status: r.event.status, event: r.event });
    });
    if (this.closed) return;
    if (changed || !reason) this.later(() => this.create(), "watch_gone");
    else for (const id of ids) this.endJob(id, { status: null, reason });
  }
}

/** The page's summary of several streams: the most worrying state wins. */
const summarize = (states) =>
  ["reconnecting", "connecting", "open"].find((s) => states.includes(s)) ??
  (states.every((s) => s === "ended") ? "ended" : states.includes("closed") ? "closed" : "gave-up");

/**
 * Follows many jobs over as few connections as possible: one watch per 100 jobs.
 * jobs: [{jobId, token, lastSeq?}] (lastSeq resumes a job after an event already seen).
 * onEvent(event) per new event of any job; onEnd({jobId, status, event | reason}) once per
 * job; onAllDone() once every job has ended; onState(state, {open, streams, reason}) as in
 * watchJob, summarized over the watches (`open` counts the live ones).
 */
export function watchJobs({ jobs, baseUrl = DEFAULT_BASE, onEvent = noop, onState = noop, onEnd = noop, onAllDone = noop }) {
  const unique = [...new Map(jobs.map((j) => [j.jobId, j])).values()];
  let remaining = unique.length;
  const states = [];
  const reasons = [];
  const groups = [];
  const end = (info) => { onEnd(info); if (--remaining === 0) onAllDone(); };
  const report = () => onState(summarize(states), {
    open: states.filter((s) => s === "open").length, streams: states.length, reason: reasons.find(Boolean) ?? null,
  });
  for (let i = 0; i < unique.length; i += 100) {
    const k = groups.length;
    const onGroupState = (state, detail) => { states[k] = state; reasons[k] = detail?.reason; report(); };
    const chunk = unique.slice(i, i + 100);
    groups.push(new WatchGroup({ jobs: chunk, baseUrl, onEvent, onEnd: end, onState: onGroupState }));
  }
  if (!unique.length) queueMicrotask(onAllDone);
  return { close: () => groups.forEach((g) => g.stop("closed")) };
}

const REASONS = {
  not_found: "Job not found (unknown or expired).",
  unauthorized: "Not authorized: the token is missing, invalid or expired.",
  forbidden: "This token does not grant access to this job.",
};

/** Only a result that names a file gets a download link: a job may succeed without
 * attaching one, and then the result URL answers 404. */
export const hasFile = (result) => Boolean(result && typeof result === "object" && (result.file || result.filename));

/**
 * The DOM of one job's progress, built with createElement / textContent only:
 * .line (.status, .step, .count, .percent, .eta), <progress class="bar" max=100>, .message,
 * .logs (the last few log lines, <li class="log">), then on
 * failure .error and on success (when showDownload(event) says so) <a class="download" download>.
 * Each element's `part` is its class, so `<job-progress>` can be styled with `::part(bar)`.
 */
const LOG_LINES = 5;

/** "about 2 min left" from an event's `eta_seconds` (absent until the worker can estimate). */
export function timeLeft(seconds) {
  if (typeof seconds !== "number" || !Number.isFinite(seconds) || seconds < 0) return "";
  if (seconds < 60) return `about ${Math.max(1, Math.round(seconds))} s left`;
  if (seconds < 3600) return `about ${Math.round(seconds / 60)} min left`;
  return `about ${(seconds / 3600).toFixed(1)} h left`;
}

export class ProgressView {
  constructor({ jobId, token = null, baseUrl = DEFAULT_BASE, label, showDownload, doc = document }) {
    showDownload ??= (ev) => hasFile(ev.result);
    Object.assign(this, { jobId, token, baseUrl, showDownload, doc });
    this.root = this.el("div", "progress-view");
    const line = this.el("div", "line", this.root);
    this.status = this.el("span", "status", line);
    this.status.setAttribute("role", "status"); // announced politely, unlike every percent tick
    this.step = this.el("span", "step", line);
    this.count = this.el("span", "count", line);
    this.percent = this.el("span", "percent", line);
    this.eta = this.el("span", "eta", line);
    this.bar = this.el("progress", "bar", this.root);
    this.bar.max = 100;
    this.bar.setAttribute("aria-label", label ?? `Progress of job ${jobId}`);
    this.message = this.el("p", "message", this.root);
    this.logs = this.el("ol", "logs", this.root); // the job's last few log lines
  }

  el(tag, cls, parent) {
    const e = this.doc.createElement(tag);
    if (cls) {
      e.className = cls;
      e.setAttribute("part", cls);
    }
    parent?.append(e);
    return e;
  }

  setStatus(status) {
    this.status.textContent = status;
    this.root.dataset.status = status;
  }

  update(ev) {
    const { status, percent, current, total } = ev;
    this.setStatus(status);
    this.step.textContent = ev.step ?? "";
    this.count.textContent = current == null ? "" : total == null ? `${current}` : `${current}/${total}`;
    this.message.textContent = ev.message ?? "";
    this.eta.textContent = isTerminal(status) ? "" : timeLeft(ev.eta_seconds);
    if (typeof ev.log === "string") this.addLog(ev.log);
    if (typeof percent === "number") {
      this.bar.value = Math.max(0, Math.min(100, percent));
      this.percent.textContent = `${Math.floor(this.bar.value)}%`;
    } else if (!isTerminal(status)) {
      this.bar.removeAttribute("value"); // indeterminate while the task cannot say how far it is
      this.percent.textContent = "";
    } else this.settle(status === "success" ? 100 : null);
    if (status === "failure" && ev.error) this.showError(ev.error.type, ev.error.message);
    if (status === "success" && this.showDownload(ev)) this.showLink(ev.result);
  }

  /** A finished bar must not keep the indeterminate animation. A percent never reported
   * (a job first seen after it failed) stays unsaid rather than shown as 0%. */
  settle(value) {
    const known = value !== null || this.bar.hasAttribute("value");
    if (value !== null) this.bar.value = value;
    else if (!known) this.bar.value = 0;
    this.percent.textContent = known ? `${Math.floor(this.bar.value)}%` : "";
  }

  /** Keeps the last LOG_LINES log lines, oldest first. */
  addLog(text) {
    this.el("li", "log", this.logs).textContent = text;
    while (this.logs.childElementCount > LOG_LINES) this.logs.firstElementChild.remove();
  }

  showError(type, message) {
    this.error ??= this.el("p", "error", this.root);
    this.error.setAttribute("role", "alert");
    this.error.replaceChildren();
    if (type) this.el("strong", "error-type", this.error).textContent = type;
    this.el("span", "error-message", this.error).textContent = type ? `: ${message ?? ""}` : message ?? "";
  }

  showLink(result) {
    this.link ??= this.el("a", "download", this.root);
    this.link.setAttribute("href", resultUrl(this.baseUrl, this.jobId, this.token));
    this.link.setAttribute("download", "");
    const name = result && typeof result === "object" ? result.filename ?? result.file : null;
    this.link.textContent = typeof name === "string" ? `Download ${name}` : "Download result";
  }

  /** onEnd without a terminal event: say why we stopped following the job. */
  end({ status, reason }) {
    if (status !== null) return;
    this.root.dataset.gaveUp = reason;
    this.settle(null);
    this.showError(null, REASONS[reason] ?? `Stopped following this job (${reason}).`);
  }
}

const Base = globalThis.HTMLElement ?? class {}; // lets Node import this module for tests

/** `<job-progress>`'s default look, inside its shadow root: a label line (status, step,
 * count, percent) over a bar, then the message. A page restyles it with the custom
 * properties below (set on `job-progress` or any ancestor) or with `job-progress::part(x)`,
 * x in progress-view | line | status | step | count | percent | eta | bar | message | logs |
 * log | error | error-type | error-message | download. */
export const JOB_PROGRESS_STYLE = `
:host { display: block; margin: var(--job-progress-margin, 0.75em 0);
  font: var(--job-progress-font, inherit); color: var(--job-progress-color, inherit); }
:host([hidden]) { display: none; }
.progress-view { --fill: var(--job-progress-fill, #2f6feb); --track: var(--job-progress-track, #dde2ec);
  display: flex; flex-direction: column; gap: 0.3em; }
.progress-view[data-status="success"] { --fill: var(--job-progress-success, #1a7f37); }
.progress-view[data-status="failure"] { --fill: var(--job-progress-failure, #cf222e); }
.progress-view[data-status="revoked"] { --fill: var(--job-progress-revoked, #8c959f); }
.line { display: flex; flex-wrap: wrap; align-items: baseline; gap: 0.2em 0.75em; }
.status { font-weight: 600; }
.step:empty, .count:empty, .percent:empty, .eta:empty, .message:empty, .logs:empty { display: none; }
.eta { color: var(--job-progress-muted, #59636e); font-size: 0.9em; }
.logs { margin: 0; padding: 0; list-style: none; font: 0.8em/1.4 var(--job-progress-mono, ui-monospace, monospace);
  color: var(--job-progress-muted, #59636e); }
.log { overflow-wrap: anywhere; }
.count, .percent { font-variant-numeric: tabular-nums; }
.percent { margin-left: auto; }
.bar { display: block; box-sizing: border-box; width: 100%; height: var(--job-progress-height, 0.6em);
  margin: 0; border: 0; border-radius: var(--job-progress-radius, 999px); overflow: hidden;
  appearance: none; -webkit-appearance: none; background: var(--track); color: var(--fill); }
.bar::-webkit-progress-bar { background: var(--track); }
.bar::-webkit-progress-value { background: var(--fill); transition: width 0.2s ease; }
.bar::-moz-progress-bar { background: var(--fill); }
.bar:indeterminate { background: linear-gradient(90deg, transparent, var(--fill), transparent) 0 0 / 40% 100% no-repeat, var(--track);
  animation: job-progress-sweep 1.2s linear infinite; }
/* One rule per engine: a selector list with the other engine's pseudo-element is dropped whole. */
.bar:indeterminate::-webkit-progress-bar { background: transparent; }
.bar:indeterminate::-moz-progress-bar { background: transparent; }
@keyframes job-progress-sweep { from { background-position: -70% 0; } to { background-position: 170% 0; } }
@media (prefers-reduced-motion: reduce) { .bar:indeterminate { animation: none; } }
.message { margin: 0; font-size: 0.9em; color: var(--job-progress-muted, #59636e); overflow-wrap: anywhere; }
.error { margin: 0; color: var(--job-progress-failure, #cf222e); overflow-wrap: anywhere; }
.download { align-self: flex-start; color: var(--job-progress-link, #0969da); }
`;

/**
 * <job-progress job="ID" token="T"> follows one job with its own stream and renders it (in
 * an open shadow root, styled by JOB_PROGRESS_STYLE). It finds the API where this script
 * was served from (DEFAULT_BASE); `base-url="https://host/progress"` points it elsewhere,
 * e.g. when this file is served by another app than the progress app. Fires `job-event`
 * (detail: the event) and `job-end` (detail: {jobId, status, event | reason}) CustomEvents;
 * the `state` attribute mirrors the stream, `data-status` the job.
 */
export class JobProgressElement extends Base {
  static observedAttributes = ["job", "token", "base-url"];
  #watch = null;
  #queued = false;

  connectedCallback() { this.#schedule(); }
  disconnectedCallback() { this.#watch?.close(); this.#watch = null; }
  attributeChangedCallback() { this.#schedule(); }

  /** Attributes arrive one callback at a time: restart once, after all of them. */
  #schedule() {
    if (this.#queued) return;
    this.#queued = true;
    queueMicrotask(() => { this.#queued = false; this.#start(); });
  }

  #start() {
    this.#watch?.close();
    this.#watch = null;
    const jobId = this.getAttribute("job");
    if (!this.isConnected || !jobId) return;
    const token = this.getAttribute("token") || null;
    const baseUrl = this.getAttribute("base-url") ?? DEFAULT_BASE;
    const doc = this.ownerDocument;
    const view = new ProgressView({ jobId, token, baseUrl, doc });
    const style = doc.createElement("style");
    style.textContent = JOB_PROGRESS_STYLE;
    (this.shadowRoot ?? this.attachShadow({ mode: "open" })).replaceChildren(style, view.root);
    this.#watch = watchJob({
      jobId, token, baseUrl,
      onState: (state) => this.setAttribute("state", state),
      onEvent: (ev) => {
        view.update(ev);
        this.dataset.status = ev.status;
        this.dispatchEvent(new CustomEvent("job-event", { detail: ev }));
      },
      onEnd: (info) => { view.end(info); this.dispatchEvent(new CustomEvent("job-end", { detail: info })); },
    });
  }
}

if (globalThis.customElements && !customElements.get("job-progress")) {
  customElements.define("job-progress", JobProgressElement);
}
