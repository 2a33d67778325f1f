// The moderation console's page: login, the live queue (server-sent events), the incident view, keyboard actions.
// Served by monitor/web/server.py; every text from the monitor is set as textContent, never as HTML.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const state = { me: null, incidents: new Map(), claims: {}, approvals: [], selected: null, detail: null,
                  events: null, shownAt: {} };
  window.__console = state;  // read by the browser tests (first time each incident was shown)

  function el(tag, text, attrs) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    return e;
  }
  function status(text, isError) {
    const s = $("status");
    s.textContent = text;
    s.className = isError ? "error" : "";
  }
  async function api(method, path, body) {
    const headers = { "Accept": "application/json" };
    if (method !== "GET") {
      headers["Content-Type"] = "application/json";
      if (state.me) headers["X-CSRF-Token"] = state.me.csrf;
    }
    const resp = await fetch(path, { method, headers, credentials: "same-origin",
                                     body: body === undefined ? undefined : JSON.stringify(body) });
    let data = {};
    try { data = await resp.json(); } catch (e) { data = {}; }
    if (resp.status === 401 && path !== "/api/login") { loggedOut("Your session ended: log in again."); }
    if (!resp.ok) throw new Error(data.error || resp.statusText);
    return { status: resp.status, data };
  }

  // ------------------------------------------------------------------ login
  function loggedOut(text) {
    state.me = null;
    if (state.events) state.events.close();
    $("console-view").hidden = true;
    $("login-view").hidden = false;
    $("logout").hidden = true;
    $("whoami").textContent = "";
    $("login-error").textContent = text || "";
  }
  function loggedIn(me) {
    state.me = me;
    $("login-view").hidden = true;
    $("console-view").hidden = false;
    $("logout").hidden = false;
    $("whoami").textContent = `${me.user} (${me.role})`;
    $("audit").hidden = !(me.role === "lead" || me.role === "admin");
    $("blur").value = me.blur_px;
    connect();
    $("queue").focus();
  }
  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const r = await api("POST", "/api/login", { user: $("login-user").value, password: $("login-password").value });
      $("login-password").value = "";
      loggedIn(r.data);
    } catch (e) { $("login-error").textContent = e.message; }
  });
  $("logout").addEventListener("click", async () => {
    try { await api("POST", "/api/logout"); } catch (e) { /* gone already */ }
    loggedOut("Logged out.");
  });

  // ------------------------------------------------------------------ live queue
  function connect() {
    if (state.events) state.events.close();
    const es = new EventSource("/api/events");
    state.events = es;
    es.addEventListener("state", (ev) => {
      const d = JSON.parse(ev.data);
      state.incidents = new Map(d.incidents.map((i) => [i.incident_id, i]));
      state.claims = d.claims;
      state.approvals = d.approvals;
      render();
      status(`Connected: ${d.incidents.length} open incidents.`);
    });
    es.addEventListener("incident", (ev) => {
      const d = JSON.parse(ev.data);
      if (d.incident) state.incidents.set(d.incident_id, d.incident); else state.incidents.delete(d.incident_id);
      state.claims = d.claims;
      render();
      if (state.selected === d.incident_id) openDetail(d.incident_id, false);
    });
    es.addEventListener("claims", (ev) => { state.claims = JSON.parse(ev.data); render(); });
    es.addEventListener("approvals", (ev) => { state.approvals = JSON.parse(ev.data); renderApprovals(); });
    es.onerror = () => {  // the console went away, or the session ended (then the page logs out)
      status("Connection to the console lost; retrying…", true);
      api("GET", "/api/me").catch(() => {});
    };
  }
  const FINAL = new Set(["dismissed", "terminated", "closed"]);
  function filtered() {
    const f = new FormData($("filters"));
    return [...state.incidents.values()].filter((i) => !FINAL.has(i.status)
      && (!f.get("bank") || i.bank === f.get("bank")) && (!f.get("severity") || i.severity === f.get("severity"))
      && (!f.get("stream") || i.stream_id === f.get("stream")) && (!f.get("node") || i.node === f.get("node")))
      .sort((a, b) => (a.first_seen < b.first_seen ? -1 : a.first_seen > b.first_seen ? 1 : 0));
  }
  function render() {
    const body = $("queue-body");
    const rows = filtered();
    body.replaceChildren();
    for (const i of rows) {
      const tr = el("tr", null, { "data-id": i.incident_id, tabindex: "-1" });
      if (i.incident_id === state.selected) { tr.className = "selected"; tr.setAttribute("aria-selected", "true"); }
      const who = state.claims[i.incident_id] || "";
      for (const text of [i.first_seen, i.stream_id, `${i.bank} / ${i.entry_label || i.entry_id}`, i.severity,
                          i.status, who]) tr.append(el("td", text));
      tr.addEventListener("click", () => select(i.incident_id, true));
      body.append(tr);
      if (!(i.incident_id in state.shownAt)) state.shownAt[i.incident_id] = Date.now();
    }
    $("queue-count").textContent = `(${rows.length})`;
    renderApprovals();
  }
  function renderApprovals() {
    const ul = $("approvals-list");
    ul.replaceChildren();
    for (const a of state.approvals) {
      const li = el("li", `${a.incident_id}: asked by ${a.requested_by}${a.reason ? ` (${a.reason})` : ""} `);
      if (state.me && state.me.role !== "viewer" && state.me.user !== a.requested_by) {
        const b = el("button", "Approve the ban", { type: "button", "data-approval": a.approval_id });
        b.addEventListener("click", () => act(() => api("POST", `/api/approvals/${a.approval_id}/approve`),
                                              "Ban approved and sent."));
        li.append(b);
      }
      ul.append(li);
    }
    if (!state.approvals.length) ul.append(el("li", "None."));
  }
  function select(id, open) {
    state.selected = id;
    render();
    const tr = document.querySelector(`#queue-body tr[data-id="${CSS.escape(id)}"]`);
    if (tr) tr.focus();
    if (open) openDetail(id, true);
  }
  function move(delta) {
    const rows = filtered();
    if (!rows.length) return;
    let k = rows.findIndex((i) => i.incident_id === state.selected);
    k = k < 0 ? 0 : Math.max(0, Math.min(rows.length - 1, k + delta));
    select(rows[k].incident_id, false);
  }

  // ------------------------------------------------------------------ incident view
  async function openDetail(id, focus) {
    let d;
    try { d = (await api("GET", `/api/incidents/${encodeURIComponent(id)}`)).data; } catch (e) {
      status(e.message, true); return;
    }
    state.detail = d;
    const i = d.incident;
    $("detail-empty").hidden = true;
    $("detail-body").hidden = false;
    const dl = $("detail-fields");
    dl.replaceChildren();
    const fields = [["Incident", i.incident_id], ["Node", i.node], ["Stream", `${i.stream_id} (${i.stream_url})`],
      ["Bank entry", `${i.bank} / ${i.entry_id}${i.entry_label ? ` (${i.entry_label})` : ""}`],
      [i.kind === "classification" ? "Score" : "Distance",
       i.kind === "classification" ? `${i.best_score} (threshold ${i.score_threshold})`
                                   : `${i.best_distance} (threshold ${i.threshold})`],
      ["Severity", i.severity], ["Status", i.status], ["Samples", i.samples],
      ["First / last seen", `${i.first_seen} / ${i.last_seen}`], ["Claimed by", d.claimed_by || "nobody"]];
    for (const [k, v] of fields) { dl.append(el("dt", k)); dl.append(el("dd", v)); }
    const m = $("matches");
    m.replaceChildren();
    for (const x of d.matches) {
      const tr = el("tr");
      for (const t of [x.media_time_s, x.sample_hash, x.distance ?? x.score, x.seq]) tr.append(el("td", t));
      m.append(tr);
    }
    const h = $("history");
    h.replaceChildren();
    for (const e of i.history) h.append(el("li", `${e.at} ${e.action} by ${e.moderator || "the monitor"}`
      + `${e.reason ? `: ${e.reason}` : ""}${e.result ? ` (${e.result})` : ""}`));
    const v = d.verification;
    $("verification").textContent = v ? (v.ok ? `verified: ${v.records} records, chain intact`
      : `NOT verified: ${v.problems.join("; ")}`) : "not available (the console runs away from the state directory)";
    $("sample").hidden = !d.has_image;
    $("no-images").hidden = d.has_image;
    const img = $("sample-img");
    $("reveal").setAttribute("aria-pressed", "false");
    img.classList.remove("revealed");
    if (d.has_image) img.src = imageUrl(id, false); else img.removeAttribute("src");
    $("report-json").href = `/api/incidents/${encodeURIComponent(id)}/report.json`;
    $("report-xml").href = `/api/incidents/${encodeURIComponent(id)}/report.xml`;
    if (focus) $("detail").focus();
  }
  // The server sends the sample greyscale and blurred; the clear one only while revealed (each fetch audited).
  function imageUrl(id, revealed) {
    return `/api/incidents/${encodeURIComponent(id)}/image?revealed=${revealed ? 1 : 0}&t=${Date.now()}`;
  }
  function reveal(on) {
    if (!state.detail || !state.detail.has_image) return;
    const img = $("sample-img");
    if (img.classList.contains("revealed") === on) return;
    img.classList.toggle("revealed", on);
    img.src = imageUrl(state.detail.incident.incident_id, on);
    $("reveal").setAttribute("aria-pressed", String(on));
  }
  // Held (pointer down for 400 ms or more): shown until let go. A click (mouse or keyboard): shown until the next.
  let downAt = 0, held = false;
  $("reveal").addEventListener("pointerdown", () => { downAt = Date.now(); held = false; reveal(true); });
  $("reveal").addEventListener("pointerup", () => {
    if (Date.now() - downAt >= 400) { held = true; reveal(false); }
  });
  $("reveal").addEventListener("click", (ev) => {
    if (held) { held = false; return; }
    if (ev.detail === 0) reveal(!$("sample-img").classList.contains("revealed"));  // keyboard: toggles
  });
  $("blur").addEventListener("change", async () => {
    const r = await api("POST", "/api/me/blur", { blur_px: Number($("blur").value) });
    state.me.blur_px = r.data.blur_px;
    if (state.detail && state.detail.has_image && !$("sample-img").classList.contains("revealed")) {
      $("sample-img").src = imageUrl(state.detail.incident.incident_id, false);
    }
  });
  $("filters").addEventListener("input", render);

  // ------------------------------------------------------------------ actions
  async function act(fn, done) {
    try {
      const r = await fn();
      status(r.status === 202 ? "A permanent ban needs a lead or a second moderator: it waits for approval."
                              : done);
      return r;
    } catch (e) { status(e.message, true); return null; }
  }
  function ask(title, note, needed) {
    return new Promise((resolve) => {
      const dlg = $("reason-dialog");
      $("reason-title").textContent = title;
      $("reason-note").textContent = note;
      $("reason-text").value = "";
      $("reason-text").required = needed;
      const done = (value) => { dlg.close(); resolve(value); };
      $("reason-form").onsubmit = (ev) => { ev.preventDefault();
        if (needed && !$("reason-text").value.trim()) { $("reason-note").textContent = "A reason is required."; return; }
        done($("reason-text").value); };
      $("reason-cancel").onclick = () => done(null);
      dlg.oncancel = () => resolve(null);
      dlg.showModal();
      $("reason-text").focus();
    });
  }
  async function command(action) {
    const id = state.selected;
    if (!id) { status("Select an incident first.", true); return; }
    const path = `/api/incidents/${encodeURIComponent(id)}`;
    if (action === "claim") return act(() => api("POST", `${path}/claim`), `Claimed ${id}.`);
    if (action === "release") return act(() => api("POST", `${path}/release`), `Released ${id}.`);
    let reason = "";
    if (action === "dismiss") {
      reason = await ask("Dismiss: why is this a false positive?", "Recorded in the evidence log.", true);
      if (reason === null) return;
    } else if (action === "terminate") {
      const perm = state.me && state.me.permanent_ban;
      reason = await ask("Terminate the stream?", perm ? "This bans the publisher permanently: a lead or a second "
        + "moderator must approve it." : "The publisher is dropped now.", false);
      if (reason === null) return;
    }
    return act(() => api("POST", `${path}/action`, { action, reason }), `${action} sent for ${id}.`);
  }
  document.querySelectorAll("[data-act]").forEach((b) => b.addEventListener("click", () => command(b.dataset.act)));
  $("audit-load").addEventListener("click", async () => {
    const r = await act(() => api("GET", "/api/audit"), "Audit log loaded.");
    if (!r) return;
    const body = $("audit-body");
    body.replaceChildren();
    for (const e of r.data.entries) {
      const tr = el("tr");
      for (const t of [e.at, e.user, e.role, e.audit, e.incident_id || ""]) tr.append(el("td", t));
      body.append(tr);
    }
  });
  const KEYS = { c: "claim", r: "release", a: "acknowledge", e: "escalate", d: "dismiss", t: "terminate" };
  document.addEventListener("keydown", (ev) => {
    if (!state.me || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const t = ev.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT")) return;
    if (document.querySelector("dialog[open]")) return;
    if (ev.key === "j" || ev.key === "ArrowDown") { move(1); ev.preventDefault(); }
    else if (ev.key === "k" || ev.key === "ArrowUp") { move(-1); ev.preventDefault(); }
    else if (ev.key === "Enter" && state.selected && t && t.tagName === "TR") { openDetail(state.selected, false); }
    else if (ev.key === "v") { reveal(!$("sample-img").classList.contains("revealed")); }
    else if (ev.key === "?") { $("help-dialog").showModal(); }
    else if (KEYS[ev.key]) { ev.preventDefault(); command(KEYS[ev.key]); }
  });

  // ------------------------------------------------------------------ start
  api("GET", "/api/me").then((r) => loggedIn(r.data)).catch(() => loggedOut(""));
})();
