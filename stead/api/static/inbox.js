// stead approvals inbox. Plain browser JavaScript (no build step, no dependencies).
//
// Flow: ask for a token once (kept in sessionStorage, so it dies with the tab), load the
// tenant's pending approvals from GET /v1/approvals, then follow GET /v1/events (server-sent
// events, read through fetch() because EventSource cannot send an Authorization header).
// If the stream cannot be opened or breaks, poll /v1/approvals every 2 s and try the stream
// again now and then. Decisions go to POST /v1/runs/{workflow_id}/approvals/{approval_id},
// the same `decide` update `stead approve` uses; the approver is the token's `sub`.
//
// Runs: the tenant's recent runs (GET /v1/runs, then `run` events). Following one reads
// GET /v1/runs/{workflow_id}/events: its steps, the text its model calls write as they write
// it (`token` events: `start` begins a step's message, and with `restart` drops what an
// earlier attempt or model wrote; `text` appends; `reset` replaces), its approvals and its
// result. A broken
// stream resumes with Last-Event-ID, so no word is lost or shown twice.
//
// Everything the server sends is inserted with textContent, never as HTML: requests and tool
// arguments come from end users and models.
"use strict";

(() => {
  const TOKEN_KEY = "stead.inbox.token";
  const POLL_MS = 2000;
  const STREAM_RETRY_MS = 15000;
  const STEPS_SHOWN = 6;
  const RUNS_SHOWN = 10;
  const RUN_RETRY_MS = 1000;
  // `run` events tell of changes after the stream's baseline; a run that started just before
  // it is in neither, so the list is also read again now and then.
  const RUNS_REFRESH_MS = 5000;

  // The page lives at <base>/inbox/; the API at <base>/v1/.
  const API_BASE = location.pathname.replace(/\/inbox(?:\/[^/]*)?$/, "");

  const $ = (id) => document.getElementById(id);
  const ui = {
    form: $("token-form"), tokenInput: $("token-input"), tokenError: $("token-error"),
    inbox: $("inbox"), list: $("approvals"), empty: $("empty"), count: $("count"),
    banner: $("banner"), flash: $("flash"), connection: $("connection"),
    whoami: $("whoami"), signOut: $("sign-out"), template: $("approval-template"),
    runs: $("runs"), runList: $("run-list"), runTemplate: $("run-template"),
    runPanel: $("run-panel"), runId: $("run-id"), runState: $("run-state"),
    runClose: $("run-close"), runMessages: $("run-messages"), runResult: $("run-result"),
    runSteps: $("run-steps"),
  };

  /** Everything that belongs to one signed-in session; replaced on sign-in/out. */
  let session = null;
  /** Approvals decided from this page: never shown again even if a stale list has them. */
  const decided = new Set();
  /** key "workflow_id/approval_id" -> {data, el, fields...} */
  const cards = new Map();
  /** workflow_id -> {el, status, agent, follow} of the recent runs list */
  const runs = new Map();
  /** The run being followed: {workflowId, abort, lastId, messages, done}, or null. */
  let follower = null;

  class ApiError extends Error {
    constructor(status, type, message) {
      super(message);
      this.status = status;
      this.type = type;
    }
  }

  // ------------------------------------------------------------------------ HTTP

  async function api(method, path, { body, signal } = {}) {
    const headers = { Authorization: `Bearer ${session.token}`, Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(API_BASE + path, {
        method, headers, signal, cache: "no-store",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, "network", `cannot reach the stead API (${err.message})`);
    }
    if (response.ok) return response.status === 204 ? null : response.json();
    throw await errorFrom(response);
  }

  async function errorFrom(response) {
    let type = "http", message = `${response.status} ${response.statusText}`.trim();
    try {
      const text = await response.text();
      try {
        const body = JSON.parse(text);
        if (body && body.error && body.error.message) {
          type = body.error.type || type;
          message = body.error.message;
          const fields = body.error.fields || [];
          if (fields.length) {
            message += ": " + fields.map((f) => `${(f.loc || []).join(".")}: ${f.message}`)
              .join("; ");
          }
        } else if (body && body.detail) {
          message = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
        }
      } catch (_) {
        if (text) message = text.slice(0, 300);
      }
    } catch (_) { /* body unreadable: keep the status line */ }
    return new ApiError(response.status, type, message);
  }

  // ------------------------------------------------------------------------ banners

  function showBanner(kind, text) {
    ui.banner.dataset.kind = kind;
    ui.banner.textContent = text;
    ui.banner.hidden = false;
  }

  function clearBanner(kind) {
    if (!kind || ui.banner.dataset.kind === kind) {
      ui.banner.hidden = true;
      ui.banner.textContent = "";
      delete ui.banner.dataset.kind;
    }
  }

  function flash(text, kind = "info") {
    ui.flash.dataset.kind = kind;
    ui.flash.textContent = text;
  }

  function setConnection(mode, text) {
    ui.connection.dataset.mode = mode;
    ui.connection.textContent = text;
  }

  /** 401/403 end the session's reading; say why and what to do. Returns true if handled. */
  function authFailure(err) {
    if (err.status === 401) {
      signOut();
      showBanner("auth", `The API refused this token (401 ${err.type}): ${err.message}. ` +
        "Paste a valid, unexpired token.");
      return true;
    }
    if (err.status === 403) {
      signOut();
      showBanner("auth", `This token may not see approvals (403 ${err.type}): ${err.message}. ` +
        "Use a token with the approver role.");
      return true;
    }
    return false;
  }

  // ------------------------------------------------------------------------ token

  function decodeClaims(token) {
    try {
      // Only to greet the user: the server, not the page, checks the signature.
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const binary = atob(part + "=".repeat((4 - part.length % 4) % 4));
      const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
      const claims = JSON.parse(new TextDecoder().decode(bytes));
      return claims && typeof claims === "object" ? claims : null;
    } catch (_) {
      return null;
    }
  }

  function tokenProblem(token) {
    if (!token) return "Paste a token first.";
    if (/\s/.test(token)) return "A token has no spaces or line breaks inside; paste it again.";
    if (token.split(".").length !== 3) {
      return "That is not a token: expected three dot-separated parts, as " +
        "`stead api token` prints.";
    }
    return null;
  }

  function askForToken() {
    ui.form.hidden = false;
    ui.inbox.hidden = true;
    ui.runs.hidden = true;
    ui.whoami.hidden = true;
    ui.signOut.hidden = true;
    setConnection("offline", "not connected");
    ui.tokenInput.focus();
  }

  function signIn(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    start(token);
  }

  function signOut() {
    stop();
    sessionStorage.removeItem(TOKEN_KEY);
    for (const key of [...cards.keys()]) removeCard(key);
    updateCount();
    for (const run of runs.values()) run.el.remove();
    runs.clear();
    askForToken();
  }

  // ------------------------------------------------------------------------ session

  function start(token) {
    stop();
    session = { token, abort: new AbortController(), pollTimer: null, retryTimer: null,
                recheckTimer: null, runsTimer: null, streaming: false };
    clearBanner();
    ui.form.hidden = true;
    ui.inbox.hidden = false;
    ui.runs.hidden = false;
    ui.signOut.hidden = false;
    const claims = decodeClaims(token);
    ui.whoami.textContent = claims
      ? `${claims.sub ?? "?"} · tenant ${claims.tenant ?? "?"}` +
        (Array.isArray(claims.roles) ? ` · ${claims.roles.join(", ")}` : "")
      : "token set";
    ui.whoami.hidden = false;
    setConnection("connecting", "connecting…");
    const mine = session;
    refresh(mine).then((outcome) => {
      if (outcome !== "ended" && session === mine) openStream(mine);
    });
    loadRuns(mine);
    mine.runsTimer = setInterval(() => loadRuns(mine), RUNS_REFRESH_MS);
    const wanted = /^#run=(.+)$/.exec(location.hash);
    if (wanted) follow(decodeURIComponent(wanted[1]));
  }

  function stop() {
    unfollow();
    if (!session) return;
    session.abort.abort();
    clearInterval(session.pollTimer);
    clearTimeout(session.retryTimer);
    clearInterval(session.recheckTimer);
    clearInterval(session.runsTimer);
    session = null;
  }

  /** One GET /v1/approvals: "ok", "failed" (said in a banner; try again later) or "ended"
   * (signed out, because of this answer or meanwhile). */
  async function refresh(mine) {
    try {
      const body = await api("GET", "/v1/approvals", { signal: mine.abort.signal });
      if (session !== mine) return "ended";
      clearBanner("network");
      render(listOf(body));
      return "ok";
    } catch (err) {
      if (err.name === "AbortError" || session !== mine) return "ended";
      if (authFailure(err)) return "ended";
      showBanner("network", err.status === 0
        ? `Cannot reach the stead API at ${location.origin}${API_BASE}/v1 — ` +
          "retrying every 2 s. Is `stead api` running?"
        : `Loading approvals failed (${err.status} ${err.type}): ${err.message} — retrying.`);
      return "failed";
    }
  }

  /** While the stream reports a server-side problem, ask /v1/approvals every 2 s until it
   * answers again (the stream itself only speaks when something changes). */
  function recheck(mine) {
    if (session !== mine || mine.recheckTimer) return;
    mine.recheckTimer = setInterval(async () => {
      if (await refresh(mine) !== "failed") {
        clearInterval(mine.recheckTimer);
        mine.recheckTimer = null;
      }
    }, POLL_MS);
  }

  function listOf(body) {
    if (Array.isArray(body)) return body;
    if (body && Array.isArray(body.approvals)) return body.approvals;
    return [];
  }

  /** Poll until the stream works again; called again after each failed stream attempt. */
  function startPolling(mine, why) {
    if (session !== mine) return;
    setConnection("polling", `polling every ${POLL_MS / 1000} s (${why})`);
    if (!mine.pollTimer) {
      mine.pollTimer = setInterval(() => refresh(mine).then(() => loadRuns(mine)), POLL_MS);
    }
    clearTimeout(mine.retryTimer);
    mine.retryTimer = setTimeout(() => openStream(mine), STREAM_RETRY_MS);
  }

  function stopPolling(mine) {
    clearInterval(mine.pollTimer);
    clearTimeout(mine.retryTimer);
    mine.pollTimer = null;
    mine.retryTimer = null;
  }

  // ------------------------------------------------------------------------ live updates

  async function openStream(mine) {
    if (session !== mine || mine.streaming) return;
    clearTimeout(mine.retryTimer);
    mine.retryTimer = null;
    let response;
    try {
      response = await fetch(`${API_BASE}/v1/events`, {
        headers: { Authorization: `Bearer ${mine.token}`, Accept: "text/event-stream" },
        signal: mine.abort.signal, cache: "no-store",
      });
    } catch (err) {
      if (err.name !== "AbortError") startPolling(mine, "live stream unreachable");
      return;
    }
    if (session !== mine) return;
    if (!response.ok) {
      const err = await errorFrom(response);
      if (!authFailure(err)) startPolling(mine, `live stream refused: ${err.status}`);
      return;
    }
    mine.streaming = true;
    stopPolling(mine);
    setConnection("live", "live");
    clearBanner("network");
    try {
      await readEvents(response.body, (event, data) => {
        if (session === mine) onEvent(mine, event, data);
      });
      if (session === mine) startPolling(mine, "live stream ended");
    } catch (err) {
      if (err.name !== "AbortError" && session === mine) {
        startPolling(mine, "live stream broke");
      }
    } finally {
      mine.streaming = false;
    }
  }

  /** Parse a text/event-stream body; call onEvent(name, data, id) per dispatched event. */
  async function readEvents(body, onEvent) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "", event = "message", data = [], id = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let newline;
      while ((newline = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + (buffer.startsWith("\r\n", newline) ? 2 : 1));
        if (line === "") {
          if (data.length) onEvent(event, data.join("\n"), id);
          event = "message";
          data = [];
          id = null;
        } else if (!line.startsWith(":")) {
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let value = colon < 0 ? "" : line.slice(colon + 1);
          if (value.startsWith(" ")) value = value.slice(1);
          if (field === "event") event = value;
          else if (field === "data") data.push(value);
          else if (field === "id") id = value;
        }
      }
    }
  }

  function onEvent(mine, event, data) {
    if (event === "approvals") {
      clearBanner("network");
      try {
        render(listOf(JSON.parse(data)));
      } catch (err) {
        console.warn("stead inbox: unreadable approvals event", err);
      }
    } else if (event === "error") {
      // The server reports a problem inside the stream (e.g. Temporal unreachable).
      let message = data;
      try {
        message = JSON.parse(data).error?.message ?? data;
      } catch (_) { /* not JSON: show it as it came */ }
      showBanner("network", `The API reports a problem: ${message} — retrying.`);
      recheck(mine);
    } else if (event === "run") {
      // Any change to what waits arrives as `approvals`; this keeps the runs list current.
      try {
        upsertRun(JSON.parse(data), { top: true });
        trimRuns();
      } catch (err) {
        console.warn("stead inbox: unreadable run event", err);
      }
    }
  }

  // ------------------------------------------------------------------------ rendering

  const keyOf = (a) => `${a.workflow_id}/${a.approval_id}`;

  function render(list) {
    const seen = new Set();
    for (const a of list) {
      const key = keyOf(a);
      if (decided.has(key)) continue;
      seen.add(key);
      const card = cards.get(key) ?? addCard(key, a);
      fill(card, a);
    }
    for (const key of [...cards.keys()]) {
      if (!seen.has(key)) removeCard(key);
    }
    updateCount();
  }

  function updateCount() {
    ui.count.textContent = String(cards.size);
    ui.empty.hidden = cards.size > 0;
  }

  function addCard(key, a) {
    const el = ui.template.content.firstElementChild.cloneNode(true);
    const q = (id) => el.querySelector(`[data-testid="${id}"]`);
    const card = {
      key, el, data: a, sending: false,
      tool: q("tool"), agent: q("agent"), deadline: q("deadline"), countdown: q("countdown"),
      request: q("request"), workflowId: q("workflow-id"), approvalId: q("approval-id"),
      awaiting: q("awaiting"), reason: q("reason"), risk: q("risk"),
      riskMeter: q("risk-meter"), factors: q("factors"), args: q("arguments"),
      steps: q("steps"), note: q("note"), approve: q("approve"), reject: q("reject"),
      edit: q("edit"), editor: q("editor"), editArgs: q("edit-arguments"),
      editError: q("edit-error"), editSubmit: q("edit-submit"), editCancel: q("edit-cancel"),
      error: q("item-error"),
    };
    el.dataset.key = key;
    el.dataset.workflowId = a.workflow_id;
    el.dataset.approvalId = a.approval_id;
    const slug = key.replace(/[^\w-]/g, "_");
    card.editor.id = `editor-${slug}`;
    card.edit.setAttribute("aria-controls", card.editor.id);
    card.editError.id = `edit-error-${slug}`;
    card.editArgs.setAttribute("aria-describedby", card.editError.id);
    const what = `${a.tool} in run ${a.workflow_id}`;
    card.approve.setAttribute("aria-label", `Approve ${what}`);
    card.reject.setAttribute("aria-label", `Reject ${what}`);
    card.edit.setAttribute("aria-label", `Edit the arguments of ${what}, then approve`);
    card.editSubmit.setAttribute("aria-label", `Approve ${what} with the edited arguments`);

    card.approve.addEventListener("click", () => decide(card, { approved: true }));
    card.reject.addEventListener("click", () => decide(card, { approved: false }));
    card.edit.addEventListener("click", () => toggleEditor(card, card.editor.hidden));
    card.editCancel.addEventListener("click", () => toggleEditor(card, false));
    card.editSubmit.addEventListener("click", () => {
      const edited = parseArguments(card.editArgs.value);
      if (typeof edited === "string") {
        card.editError.textContent = edited;
        card.editError.hidden = false;
        card.editArgs.setAttribute("aria-invalid", "true");
        card.editArgs.focus();
        return;
      }
      card.editError.hidden = true;
      card.editArgs.removeAttribute("aria-invalid");
      decide(card, { approved: true, arguments: edited });
    });

    cards.set(key, card);
    ui.list.appendChild(el);
    return card;
  }

  function removeCard(key) {
    const card = cards.get(key);
    if (!card) return;
    card.el.remove();
    cards.delete(key);
  }

  function fill(card, a) {
    card.data = a;
    card.tool.textContent = a.tool;
    card.agent.textContent = a.agent ?? "?";
    card.request.textContent = a.input ?? "";
    card.workflowId.textContent = a.workflow_id;
    card.approvalId.textContent = a.approval_id;
    card.awaiting.textContent = a.awaiting
      ? `${a.awaiting}${a.level ? ` (escalated, level ${a.level})` : ""}` : "any approver";
    card.reason.textContent = a.reason || "—";
    const risk = Number(a.risk);
    card.risk.textContent = Number.isFinite(risk) ? risk.toFixed(2) : String(a.risk);
    card.riskMeter.value = Number.isFinite(risk) ? risk : 0;
    card.riskMeter.setAttribute("aria-label", `risk ${card.risk.textContent} of 1`);
    card.el.dataset.riskLevel = risk >= 0.7 ? "high" : risk >= 0.4 ? "medium" : "low";
    replaceItems(card.factors, a.factors ?? []);
    card.args.textContent = JSON.stringify(a.arguments ?? {}, null, 2);
    replaceItems(card.steps, (a.recent_steps ?? []).slice(-STEPS_SHOWN).map(stepText));
    card.deadline.dataset.at = a.deadline ?? "";
    if (a.deadline) {
      const at = new Date(a.deadline);
      card.deadline.dateTime = at.toISOString();
      card.deadline.textContent = at.toLocaleTimeString();
    } else {
      card.deadline.textContent = "no deadline";
      card.deadline.removeAttribute("datetime");
    }
    tickCard(card, Date.now());
  }

  function replaceItems(listEl, texts) {
    const now = [...listEl.children].map((li) => li.textContent);
    if (now.length === texts.length && now.every((t, i) => t === texts[i])) return;
    listEl.replaceChildren(...texts.map((t) => {
      const li = document.createElement("li");
      li.textContent = t;
      return li;
    }));
  }

  function stepText(s) {
    const detail = s.detail ? ` — ${s.detail}` : "";
    return `step ${s.step} · ${s.kind} ${s.name}: ${s.status}${detail}`;
  }

  function tickCard(card, now) {
    const at = card.deadline.dataset.at ? Date.parse(card.deadline.dataset.at) : NaN;
    if (Number.isNaN(at)) {
      card.countdown.textContent = "";
      return;
    }
    const left = Math.round((at - now) / 1000);
    card.el.dataset.overdue = String(left <= 0);
    card.countdown.textContent = left > 0
      ? `(in ${duration(left)})`
      : "(deadline passed — escalating or auto-denying)";
  }

  function duration(seconds) {
    const h = Math.floor(seconds / 3600), m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
    if (h) return `${h} h ${m} min`;
    if (m) return `${m} min ${s} s`;
    return `${s} s`;
  }

  // ------------------------------------------------------------------------ deciding

  function toggleEditor(card, open) {
    card.editor.hidden = !open;
    card.edit.setAttribute("aria-expanded", String(open));
    if (open) {
      card.editArgs.value = JSON.stringify(card.data.arguments ?? {}, null, 2);
      card.editError.hidden = true;
      card.editArgs.removeAttribute("aria-invalid");
      card.editArgs.focus();
    }
  }

  /** The edited arguments as an object, or a message saying what is wrong with the text. */
  function parseArguments(text) {
    let value;
    try {
      value = JSON.parse(text);
    } catch (err) {
      return `Not valid JSON: ${err.message}. Nothing was sent.`;
    }
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      return "The arguments must be a JSON object ({ \"name\": value, ... }). Nothing was sent.";
    }
    return value;
  }

  function setSending(card, sending) {
    card.sending = sending;
    card.el.setAttribute("aria-busy", String(sending));
    for (const b of [card.approve, card.reject, card.edit, card.editSubmit]) b.disabled = sending;
  }

  async function decide(card, { approved, arguments: edited }) {
    if (card.sending || !session) return;
    const a = card.data;
    const body = { approved };
    const note = card.note.value.trim();
    if (note) body.note = note;
    if (edited !== undefined) body.arguments = edited;
    card.error.hidden = true;
    setSending(card, true);
    const path = `/v1/runs/${encodeURIComponent(a.workflow_id)}` +
      `/approvals/${encodeURIComponent(a.approval_id)}`;
    try {
      const outcome = await api("POST", path, { body });
      decided.add(card.key);
      removeCard(card.key);
      updateCount();
      flash(outcomeText(a, outcome, approved),
        outcome && outcome.outcome === "denied_after_edit" ? "warning" : "info");
    } catch (err) {
      if (err.name === "AbortError") return;
      setSending(card, false);
      if (err.status === 401) {
        authFailure(err);
        return;
      }
      let text;
      if (err.status === 0) {
        text = `Could not reach the API (${err.message}); the decision may not have ` +
          "arrived. The list refreshes on its own; try again if it is still here.";
      } else if (err.status === 409) {
        text = `Already decided (409): ${err.message}`;
        for (const b of [card.approve, card.reject, card.edit, card.editSubmit]) b.disabled = true;
      } else if (err.status === 403) {
        text = `Not allowed (403): ${err.message}`;
      } else {
        text = `The server refused the decision (${err.status} ${err.type}): ${err.message}`;
      }
      card.error.textContent = text;
      card.error.hidden = false;
    }
  }

  function outcomeText(a, outcome, approved) {
    const what = `${a.tool} (${a.approval_id}) in run ${a.workflow_id}`;
    const kind = outcome && outcome.outcome;
    if (kind === "denied_after_edit") {
      return `Edited ${what} was denied by the policy: ${outcome.reason || "no reason given"}`;
    }
    if (kind === "approved") return `Approved ${what}.`;
    if (kind === "rejected") return `Rejected ${what}.`;
    return `${approved ? "Approved" : "Rejected"} ${what}.`;
  }

  // ------------------------------------------------------------------------ runs

  async function loadRuns(mine) {
    try {
      const list = await api("GET", `/v1/runs?limit=${RUNS_SHOWN}`,
        { signal: mine.abort.signal });
      if (session !== mine || !Array.isArray(list)) return;
      for (const r of list) upsertRun(r);
      trimRuns();
    } catch (err) {
      // The approvals list says what is wrong with the connection or the token.
      if (err.name !== "AbortError") console.warn("stead inbox: runs not loaded", err);
    }
  }

  function upsertRun(r, { top = false } = {}) {
    let run = runs.get(r.workflow_id);
    if (!run) {
      const el = ui.runTemplate.content.firstElementChild.cloneNode(true);
      const q = (id) => el.querySelector(`[data-testid="${id}"]`);
      run = { el, status: q("run-status"), agent: q("run-agent"), follow: q("run-follow") };
      el.dataset.workflowId = r.workflow_id;
      q("run-workflow-id").textContent = r.workflow_id;
      run.follow.setAttribute("aria-label", `Follow run ${r.workflow_id}`);
      run.follow.addEventListener("click", () => follow(r.workflow_id));
      runs.set(r.workflow_id, run);
      if (top) ui.runList.prepend(el);
      else ui.runList.appendChild(el);
      if (follower && follower.workflowId === r.workflow_id) el.dataset.followed = "true";
    }
    run.el.dataset.status = r.status;
    run.agent.textContent = r.agent ?? "";
    run.status.textContent = r.awaiting_approval ? `${r.status} · awaiting approval` : r.status;
  }

  function trimRuns() {
    const rows = [...ui.runList.children];
    for (const el of rows.slice(RUNS_SHOWN)) {
      if (el.dataset.followed === "true") continue;
      runs.delete(el.dataset.workflowId);
      el.remove();
    }
  }

  function setRunState(state, text) {
    ui.runPanel.dataset.state = state;
    ui.runState.textContent = text;
  }

  function follow(workflowId) {
    unfollow();
    const mine = session;
    if (!mine) return;
    const f = { workflowId, abort: new AbortController(), lastId: null, messages: new Map(),
                done: false };
    follower = f;
    ui.runPanel.hidden = false;
    ui.runPanel.dataset.workflowId = workflowId;
    ui.runId.textContent = workflowId;
    ui.runMessages.replaceChildren();
    ui.runSteps.replaceChildren();
    ui.runResult.hidden = true;
    ui.runResult.textContent = "";
    for (const run of runs.values()) {
      run.el.dataset.followed = String(run.el.dataset.workflowId === workflowId);
    }
    history.replaceState(null, "", `#run=${encodeURIComponent(workflowId)}`);
    setRunState("connecting", "connecting…");
    readRun(mine, f);
  }

  function unfollow() {
    if (!follower) return;
    follower.abort.abort();
    follower = null;
    ui.runPanel.hidden = true;
    ui.runPanel.dataset.state = "idle";
    for (const run of runs.values()) delete run.el.dataset.followed;
    if (location.hash.startsWith("#run=")) {
      history.replaceState(null, "", location.pathname + location.search);
    }
  }

  const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  /** Read the run's stream until its result; resume after breaks with Last-Event-ID. */
  async function readRun(mine, f) {
    while (session === mine && follower === f && !f.done) {
      const headers = { Authorization: `Bearer ${mine.token}`, Accept: "text/event-stream" };
      if (f.lastId) headers["Last-Event-ID"] = f.lastId;
      let response;
      try {
        response = await fetch(
          `${API_BASE}/v1/runs/${encodeURIComponent(f.workflowId)}/events`,
          { headers, signal: f.abort.signal, cache: "no-store" });
      } catch (err) {
        if (err.name === "AbortError") return;
        setRunState("reconnecting", `Cannot reach the run's stream (${err.message}); retrying.`);
        await pause(RUN_RETRY_MS);
        continue;
      }
      if (follower !== f) return;
      if (response.status === 204) {
        setRunState("done", "finished");
        f.done = true;
        return;
      }
      if (!response.ok) {
        const err = await errorFrom(response);
        if (err.status === 401) {
          authFailure(err);
          return;
        }
        setRunState("error", `Cannot follow this run (${err.status} ${err.type}): ` +
          err.message);
        if (err.status === 404 || err.status === 403 || err.status === 422) return;
        await pause(RUN_RETRY_MS);
        continue;
      }
      setRunState("streaming", "live");
      try {
        await readEvents(response.body, (event, data, id) => onRunEvent(f, event, data, id));
      } catch (err) {
        if (err.name === "AbortError") return;
      }
      if (!f.done && follower === f) {
        setRunState("reconnecting", "The stream broke off; resuming where it stopped.");
        await pause(RUN_RETRY_MS);
      }
    }
  }

  function onRunEvent(f, event, data, id) {
    if (follower !== f) return;
    if (id) f.lastId = id;
    let d;
    try {
      d = JSON.parse(data);
    } catch (_) {
      return;
    }
    if (event === "token") applyToken(f, d);
    else if (event === "step") addLine(ui.runSteps, stepText(d));
    else if (event === "approval") addLine(ui.runSteps, approvalText(d));
    else if (event === "result") showResult(f, d);
    else if (event === "error") setRunState("streaming", `live; the server reports: ${d.message}`);
  }

  function addLine(listEl, text) {
    const li = document.createElement("li");
    li.textContent = text;
    listEl.appendChild(li);
  }

  function approvalText(a) {
    const what = a.tool ? ` ${a.tool} ${JSON.stringify(a.arguments ?? {})}` : "";
    if (a.type === "decided") return `approval ${a.approval_id}: ${a.decision} by ${a.actor}`;
    return `approval ${a.approval_id}${what}: ${a.type}, waiting for ${a.decision}`;
  }

  /** The message of a step as the stream's rules say (see the top of this file): the latest
   * `start` of a step wins; events of its other messages are stale. */
  function applyToken(f, t) {
    let m = f.messages.get(t.step);
    const id = `${t.attempt}/${t.fallback ?? 0}`;
    if (t.type === "start") {
      if (!m) {
        const el = document.createElement("li");
        const note = document.createElement("span");
        note.className = "restarted";
        note.dataset.testid = "run-message-restarted";
        note.hidden = true;
        const text = document.createElement("span");
        text.dataset.testid = "run-message-text";
        el.append(note, text);
        el.dataset.step = String(t.step);
        ui.runMessages.appendChild(el);
        m = { el, note, textEl: text, id: "", text: "" };
        f.messages.set(t.step, m);
      } else if (t.restart) {
        m.note.textContent = t.fallback
          ? `model ${t.fallback + 1} of the chain restarted this message`
          : `attempt ${t.attempt} restarted this message`;
        m.note.hidden = false;
      }
      m.id = id;
      m.text = "";
      m.el.dataset.attempt = String(t.attempt);
      m.el.dataset.writing = "true";
    } else if (!m || id !== m.id) {
      return;  // a late word of a message that was restarted
    } else if (t.type === "text") {
      m.text += t.text;
    } else if (t.type === "reset") {
      m.text = t.text;
    } else if (t.type === "end") {
      m.el.dataset.writing = "false";
      if (!m.text && t.tool_calls.length) m.text = `(calls ${t.tool_calls.join(", ")})`;
    } else if (t.type === "error") {
      m.el.dataset.writing = "false";
      m.note.textContent = `attempt ${t.attempt} failed: ${t.error ?? "error"}; retrying`;
      m.note.hidden = false;
    }
    m.textEl.textContent = m.text;
  }

  function showResult(f, r) {
    f.done = true;
    for (const m of f.messages.values()) m.el.dataset.writing = "false";
    const result = r.result;
    ui.runResult.dataset.status = r.status;
    if (result) {
      // The answer is on screen already when the last message says it; else it follows.
      const last = [...f.messages.values()].pop();
      const n = result.steps;
      const answer = result.answer && (!last || last.text !== result.answer)
        ? `: ${result.answer}` : "";
      ui.runResult.textContent = `${r.status} in ${n} step${n === 1 ? "" : "s"}${answer}` +
        (result.error ? ` (${result.error})` : "");
    } else {
      ui.runResult.textContent = `${r.status}${r.error ? `: ${r.error}` : ""}`;
    }
    ui.runResult.hidden = false;
    setRunState("done", "finished");
    const run = runs.get(f.workflowId);
    if (run) run.status.textContent = r.status;
  }

  // ------------------------------------------------------------------------ wiring

  ui.runClose.addEventListener("click", () => unfollow());

  ui.form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const token = ui.tokenInput.value.trim();
    const problem = tokenProblem(token);
    if (problem) {
      ui.tokenError.textContent = problem;
      ui.tokenError.hidden = false;
      ui.tokenInput.setAttribute("aria-invalid", "true");
      return;
    }
    ui.tokenError.hidden = true;
    ui.tokenInput.removeAttribute("aria-invalid");
    ui.tokenInput.value = "";
    signIn(token);
  });

  ui.signOut.addEventListener("click", () => {
    clearBanner();
    flash("");
    signOut();
  });

  setInterval(() => {
    const now = Date.now();
    for (const card of cards.values()) tickCard(card, now);
  }, 1000);

  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) start(saved);
  else askForToken();
})();
