// voice-dialer dashboard: polls /dashboard/data and renders it. No build step, no dependencies.
// Data from the server is only ever inserted as text (textContent), never as HTML.
"use strict";

const POLL_MS = 1500;
const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

function num(n) {
  return Number(n).toLocaleString("en-US");
}

function duration(s) {
  if (s === null || s === undefined) return "–";
  const sign = s < 0 ? "-" : "";
  s = Math.abs(Math.round(s));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  if (h) return `${sign}${h}h ${m}m`;
  if (m) return `${sign}${m}m ${sec}s`;
  return `${sign}${sec}s`;
}

function setStatus(text, cls) {
  const s = $("status");
  s.textContent = text;
  s.className = "pill " + cls;
}

function renderCards(d) {
  const last = d.rate.attempts.slice(-10);
  const avg = last.length ? last.reduce((a, b) => a + b, 0) / last.length : 0;
  $("rate-now").textContent = avg.toFixed(1);
  $("rate-limit").textContent = d.rate.limit > 0 ? num(d.rate.limit) : "none";
  $("inflight-held").textContent = num(d.in_flight.held);
  $("inflight-cap").textContent = num(d.in_flight.cap);
  $("inflight-bar").style.width = Math.min(100, (100 * d.in_flight.held) / Math.max(1, d.in_flight.cap)) + "%";
  $("queued-total").textContent = num(d.queues.reduce((a, q) => a + q.depth, 0));
  $("queued-ready").textContent = num(d.queues.reduce((a, q) => a + q.ready, 0));
  if (d.token.present) {
    $("token-age").textContent = duration(d.token.age_s) + " old";
    $("token-expiry").textContent = "expires in " + duration(d.token.expires_in_s);
  } else {
    $("token-age").textContent = "none";
    $("token-expiry").textContent = "no token in Redis yet";
  }
  $("dead-total").textContent = num(d.errors.dead_total);
  $("errors-total").textContent = num(Object.values(d.errors.by_kind).reduce((a, b) => a + b, 0));
}

function renderQueues(queues) {
  const max = Math.max(1, ...queues.map((q) => q.depth));
  const rows = queues.map((q) => {
    const bar = el("div");
    bar.style.width = (100 * q.depth) / max + "%";
    if (!q.depth) bar.hidden = true;
    const dot = el("span", { class: "dot" + (q.worker ? " live" : ""), title: q.worker ? "worker alive" : "no worker" });
    return el("tr", { "data-priority": String(q.priority), class: "queue" },
      el("td", { text: "p" + q.priority }),
      el("td", {}, dot),
      el("td", { class: "num ready", text: num(q.ready) }),
      el("td", { class: "num depth", text: num(q.depth) }),
      el("td", { class: "bar" }, bar));
  });
  $("queue-rows").replaceChildren(...rows);
}

// 1, 2 or 5 times a power of ten, at least `raw`: round axis labels.
function niceStep(raw) {
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}

function renderChart(rate) {
  const W = 800, H = 220, L = 44, R = 8, T = 10, B = 22;
  const chart = $("rate-chart");
  const n = rate.attempts.length;
  const peak = Math.max(1, rate.limit * 1.15, ...rate.attempts, ...rate.sent);
  const step = niceStep(peak / 4);
  const top = step * Math.ceil(peak / step);
  const x = (i) => L + ((W - L - R) * i) / Math.max(1, n - 1);
  const y = (v) => H - B - ((H - T - B) * v) / top;
  const nodes = [];
  for (let v = 0; v <= top + step / 2; v += step) {
    nodes.push(svg("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    const label = svg("text", { class: "axis", x: L - 6, y: y(v) + 4, "text-anchor": "end" });
    label.textContent = step >= 1 ? String(Math.round(v)) : v.toFixed(1);
    nodes.push(label);
  }
  for (let m = 0; m <= 5; m++) {
    const i = Math.round(((n - 1) * m) / 5);
    const anchor = m === 0 ? "start" : m === 5 ? "end" : "middle";
    const label = svg("text", { class: "axis", x: x(i), y: H - 6, "text-anchor": anchor });
    label.textContent = m === 5 ? "now" : `-${5 - m}m`;
    nodes.push(label);
  }
  const path = (series) => series.map((v, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`).join("");
  if (n) {
    nodes.push(svg("path", { class: "att", d: path(rate.attempts) }));
    nodes.push(svg("path", { class: "sent", d: path(rate.sent) }));
  }
  if (rate.limit > 0) {
    nodes.push(svg("line", { class: "limit", x1: L, x2: W - R, y1: y(rate.limit), y2: y(rate.limit) }));
  }
  chart.replaceChildren(...nodes);
}

function renderCounts(tbodyId, counts) {
  const entries = Object.entries(counts);
  const rows = entries.length
    ? entries.map(([kind, n]) => el("tr", { "data-kind": kind }, el("td", { text: kind }), el("td", { class: "num", text: num(n) })))
    : [el("tr", {}, el("td", { class: "muted", text: "none" }))];
  $(tbodyId).replaceChildren(...rows);
}

// Campaigns: one row each (newest first) with a stacked progress bar of its job states, its counts and
// callback outcomes, send rate and ETA, and pause/resume/cancel controls. Controls POST to the API with
// the session cookie and the X-Requested-With header (see worker/http/auth.py); a read-only (dashboard
// key) session gets none. Cancel asks for confirmation inside the row. UI state (a pending confirmation,
// an action in flight, its error) survives the re-render of every poll.
const BAR_STATES = [
  ["sent", "seg-sent"], ["sending", "seg-sending"], ["failed", "seg-bad"], ["dead", "seg-bad"],
  ["unknown", "seg-bad"], ["expired", "seg-off"], ["suppressed", "seg-off"], ["cancelled", "seg-off"],
];
const OUTCOME_LABELS = [["answered", "answered"], ["unanswered", "unanswered"], ["failed_to_connect", "failed to connect"]];
const campaignUi = { confirm: new Set(), busy: new Set(), errors: new Map() };
// The status an action answered, shown until a poll brings data at least as new (the server caches the
// dashboard data for a second, so the next poll may still say "active" right after a pause).
const campaignOverrides = new Map();
let lastData = null;

function mergeCampaigns(rows) {
  return (rows || []).map((c) => {
    const o = campaignOverrides.get(c.name);
    if (!o) return c;
    if (Date.parse(c.as_of) >= Date.parse(o.as_of)) {
      campaignOverrides.delete(c.name);
      return c;
    }
    return o;
  });
}

function campaignControls(c) {
  if (document.body.dataset.role === "viewer") return el("span", { class: "muted", text: "read-only" });
  const box = el("span", { class: "controls" });
  if (c.status === "cancelled") return box;
  const busy = campaignUi.busy.has(c.name);
  const button = (action, label, cls) => {
    const b = el("button", { type: "button", class: "btn " + (cls || ""), "data-action": action, text: label });
    if (busy) b.disabled = true;
    b.addEventListener("click", () => onCampaignButton(c.name, action));
    return b;
  };
  if (campaignUi.confirm.has(c.name)) {
    box.append(el("span", { class: "confirm-text", text: `Cancel ${c.name}? Unsent calls are never dialled.` }),
      button("cancel-yes", "Yes, cancel", "btn-bad"), button("cancel-no", "No"));
    return box;
  }
  if (c.status === "active") box.append(button("pause", "Pause"));
  if (c.status === "paused") box.append(button("resume", "Resume"));
  box.append(button("cancel", "Cancel…", "btn-bad-outline"));
  return box;
}

async function onCampaignButton(name, action) {
  if (action === "cancel") campaignUi.confirm.add(name);
  if (action === "cancel-no") campaignUi.confirm.delete(name);
  if (action === "cancel" || action === "cancel-no") {
    if (lastData) renderCampaigns(lastData.campaigns);
    return;
  }
  const verb = action === "cancel-yes" ? "cancel" : action;
  campaignUi.confirm.delete(name);
  campaignUi.busy.add(name);
  campaignUi.errors.delete(name);
  if (lastData) renderCampaigns(lastData.campaigns);
  try {
    const r = await fetch(`/v1/campaigns/${encodeURIComponent(name)}:${verb}`, {
      method: "POST", credentials: "same-origin", cache: "no-store",
      headers: { "X-Requested-With": "dialer-dashboard", Accept: "application/json" },
    });
    const body = await r.json().catch(() => null);
    if (!r.ok) throw new Error((body && body.error && body.error.message) || "HTTP " + r.status);
    if (body && body.campaign) {
      campaignOverrides.set(name, body.campaign);
      if (lastData) lastData.campaigns = mergeCampaigns(lastData.campaigns);
    }
  } catch (e) {
    campaignUi.errors.set(name, `${verb} failed: ${e.message}`);
  } finally {
    campaignUi.busy.delete(name);
    if (lastData) renderCampaigns(lastData.campaigns);
  }
}

function countSpan(key, label, value, cls) {
  return el("span", { class: "count " + (cls || ""), "data-key": key },
    el("b", { text: num(value) }), " " + label);
}

function renderCampaign(c) {
  const total = Number(c.total || 0);
  const bar = el("div", { class: "progress stacked", title: `${num(total - c.remaining)} of ${num(total)} done` });
  for (const [state, cls] of BAR_STATES) {
    const n = Number((c.states || {})[state] || 0);
    if (!n || !total) continue;
    const seg = el("div", { class: cls, "data-state": state, title: `${state}: ${num(n)}` });
    seg.style.width = (100 * n) / total + "%";
    bar.append(seg);
  }
  const states = el("div", { class: "counts states" });
  for (const [state, n] of Object.entries(c.states || {})) {
    if (n) states.append(countSpan(state, state, n, "state-" + state));
  }
  if (!states.childElementCount) states.append(el("span", { class: "muted", text: "no jobs" }));
  const outcomes = el("div", { class: "counts outcomes" });
  for (const [key, label] of OUTCOME_LABELS) outcomes.append(countSpan(key, label, (c.outcomes || {})[key] || 0));
  outcomes.append(countSpan("redials", "redials", c.redials || 0));
  if (c.parked) outcomes.append(countSpan("parked", "parked", c.parked));
  const done = total - Number(c.remaining || 0);
  const pct = total ? Math.floor((100 * done) / total) : 0;
  const head = el("div", { class: "campaign-head" },
    el("h3", { text: c.name }),
    el("span", { class: "pill status-" + c.status, "data-role": "status", text: c.status }),
    el("span", { class: "muted progress-text", text: `${num(done)} / ${num(total)} done (${pct}%)` }),
    el("span", { class: "muted rate", text: `${Number(c.send_rate_per_s || 0).toFixed(1)}/s` }),
    el("span", { class: "muted eta", text: "ETA " + duration(c.eta_s) }),
    el("span", { class: "spacer" }),
    campaignControls(c));
  const row = el("div", { class: "campaign", "data-campaign": c.name, "data-status": c.status }, head, bar, states, outcomes);
  const err = campaignUi.errors.get(c.name);
  if (err) row.append(el("p", { class: "campaign-error", role: "alert", text: err }));
  return row;
}

function renderCampaigns(rows) {
  const box = $("campaign-rows");
  if (!rows || !rows.length) {
    box.replaceChildren(el("p", { class: "muted", text: "No campaigns." }));
    return;
  }
  box.replaceChildren(...rows.slice().reverse().map(renderCampaign));
}

function render(d) {
  d.campaigns = mergeCampaigns(d.campaigns);
  lastData = d;
  renderCards(d);
  renderQueues(d.queues);
  renderChart(d.rate);
  renderCounts("error-rows", d.errors.by_kind);
  renderCounts("dead-rows", d.errors.dead_by_kind);
  renderCampaigns(d.campaigns);
  $("updated").textContent = "updated " + new Date(d.now * 1000).toLocaleTimeString();
  document.body.dataset.loaded = "1";
}

async function poll() {
  try {
    const r = await fetch("/dashboard/data", { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } });
    if (r.status === 401) {
      location.reload(); // the session expired: the page shows the login form
      return;
    }
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
    setStatus("live", "pill-ok");
  } catch (e) {
    setStatus("offline (" + e.message + ")", "pill-bad");
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

document.addEventListener("DOMContentLoaded", poll);
