// sensornet dashboard: a fleet of sensors, one page of them at a time.
//
// Plain JavaScript, no libraries, no build step: the server may run where
// there is no internet, and its Content-Security-Policy allows nothing but
// this origin (so no inline script or style: everything is built with DOM
// APIs). What it reads:
//
//   - /api/fleet       the overview: counts by state and by kind;
//   - /api/sensors     the table, one page (50 or 100 series) at a time,
//                      filtered and sorted by the server, refreshed on a timer;
//   - /api/sparklines  one request per page for every row's trend;
//   - /api/alerts      pending and firing alerts (the panel hides on a 404);
//   - /api/readings    one series' chart (raw readings for 1 h, rollup
//                      buckets with step=auto beyond);
//   - /api/stream      the live readings of the one series the detail view
//                      shows (?sensor=&kind=), read with fetch() so that it
//                      can carry the Authorization header.
//
// The cost of the page grows with what it shows, not with the fleet: the
// table never holds more than one page, and nothing asks per sensor.
//
// Tokens: a 401 from any call shows a form asking for a reader token; the
// token is kept in sessionStorage (this tab only) and sent as
// "Authorization: Bearer ..." on every request. It never goes into an
// address, the location hash or the console.
"use strict";

(() => {
  const TOKEN_KEY = "sensornet.readerToken";
  const REFRESH_MS = 5000; // the visible page and the overview
  const SPARK_REFRESH_MS = 60000; // sparklines move slowly (minute buckets at best)
  const ALERTS_MS = 10000;
  const STREAM_RETRY_MS = 30000; // after the server refused a stream (its cap)
  const SPARK_WINDOW = 86400;
  const SPARK_POINTS = 48;
  const RAW_LIMIT = 5000; // beyond this a 10 min or 1 h chart reads minute buckets
  const RAW_RANGES = new Set(["10m", "1h"]);
  const MAX_LIVE_POINTS = 20000;
  const RANGES = {
    "10m": { seconds: 600, label: "10 min" }, // to watch a sensor live
    "1h": { seconds: 3600, label: "1 h" },
    "24h": { seconds: 86400, label: "24 h" },
    "7d": { seconds: 7 * 86400, label: "7 d" },
    "90d": { seconds: 90 * 86400, label: "90 d" },
    "1y": { seconds: 365 * 86400, label: "1 y" },
  };
  const STATES = ["live", "late", "silent", "never"];
  const STATE_NAMES = { live: "live", late: "late", silent: "silent", never: "never seen" };
  // Units as people write them: the wire says "C" for degrees Celsius.
  const UNIT_NAMES = { C: "°C", F: "°F", degC: "°C", degF: "°F" };

  const $ = (id) => document.getElementById(id);
  const el = {
    status: $("status"), updated: $("updated"), zone: $("zone"), forget: $("forget-token"),
    auth: $("auth"), authForm: $("auth-form"), authToken: $("auth-token"), authError: $("auth-error"),
    main: $("main"), listView: $("list-view"), detail: $("detail"),
    counts: $("counts"), overviewMissing: $("overview-missing"), kinds: $("kinds"),
    alerts: $("alerts"), alertList: $("alert-list"), alertCounts: $("alert-counts"), alertsNone: $("alerts-none"),
    fleet: $("fleet"), search: $("search"), stateFilter: $("state-filter"), kindFilter: $("kind-filter"),
    pageSize: $("page-size"), table: $("sensors"), rows: $("rows"), tableEmpty: $("table-empty"),
    first: $("first-page"), prev: $("prev-page"), next: $("next-page"), rangeText: $("range-text"),
    trendHead: $("trend-head"), back: $("back"),
    dTitle: $("detail-title"), dKind: $("detail-kind"), dValue: $("detail-value"), dUnit: $("detail-unit"),
    dState: $("detail-state"), dConn: $("detail-conn"), dSeen: $("detail-seen"), dCount: $("detail-count"), dInterval: $("detail-interval"),
    dLive: $("detail-live"), chart: $("chart"), chartNote: $("chart-note"),
  };

  let clockOffset = 0; // server seconds minus browser seconds

  // Performance marks for bench/dashboard.py: the overview's counts and the
  // table's first page drawn; "first useful paint" is the frame after both.
  const painted = new Set();
  function markPainted(what) {
    if (painted.has(what)) return;
    painted.add(what);
    performance.mark("sensornet:" + what);
    if (painted.has("overview") && painted.has("table") && !painted.has("useful")) {
      painted.add("useful");
      requestAnimationFrame(() => setTimeout(() => performance.mark("sensornet:first-useful-paint"), 0));
    }
  }
  const serverNow = () => Date.now() / 1000 + clockOffset;
  const displayUnit = (u) => UNIT_NAMES[u] || u || "";
  const seriesKey = (sensor, kind) => sensor + "\u0000" + kind;

  // ---- formatting -------------------------------------------------------

  const numberFormat = new Intl.NumberFormat("en");
  const count = (n) => numberFormat.format(n);

  function formatValue(v) {
    if (v === null || v === undefined) return "–";
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(2);
    if (a >= 100) return v.toFixed(1);
    return v.toFixed(2);
  }

  const pad2 = (n) => String(n).padStart(2, "0");

  function clockText(t, withSeconds) {
    const d = new Date(t * 1000);
    const hm = pad2(d.getHours()) + ":" + pad2(d.getMinutes());
    return withSeconds ? hm + ":" + pad2(d.getSeconds()) : hm;
  }

  function formatAgo(seconds) {
    if (seconds < 1.5) return "just now";
    if (seconds < 90) return Math.round(seconds) + " s ago";
    if (seconds < 5400) return Math.round(seconds / 60) + " min ago";
    if (seconds < 172800) return Math.round(seconds / 3600) + " h ago";
    return Math.round(seconds / 86400) + " days ago";
  }

  function formatDuration(seconds) {
    if (!seconds && seconds !== 0) return "–";
    if (seconds < 90) return Math.round(seconds) + " s";
    if (seconds < 5400) return Math.round(seconds / 60) + " min";
    return Math.round(seconds / 3600) + " h";
  }

  // "14:03:22 · 12 s ago" today; "3 Mar 14:03 · 5 days ago" before.
  function seenText(t) {
    if (t === null || t === undefined) return "never";
    const now = serverNow();
    const d = new Date(t * 1000);
    const today = new Date(now * 1000).toDateString() === d.toDateString();
    const when = today ? clockText(t, true)
      : d.toLocaleDateString("en-GB", { day: "numeric", month: "short" }) + " " + clockText(t, false);
    return when + " · " + formatAgo(Math.max(0, now - t));
  }

  function setTime(node, t) {
    node.textContent = seenText(t);
    if (t === null || t === undefined) { node.removeAttribute("datetime"); node.title = ""; return; }
    const d = new Date(t * 1000);
    node.dateTime = d.toISOString();
    node.title = d.toLocaleString();
  }

  // The status is a live region: it changes only when the state does, so a
  // screen reader is not told "updated" every few seconds; the time of the
  // last refresh goes beside it, outside the region.
  function setStatus(kind, text) {
    el.status.dataset.state = kind;
    if (el.status.textContent !== text) el.status.textContent = text;
    el.updated.textContent = "";
  }

  // ---- HTTP with a reader token -----------------------------------------

  class HTTPError extends Error {
    constructor(url, status) {
      super(url.split("?")[0] + " answered HTTP " + status);
      this.status = status;
    }
  }

  function storedToken() {
    try { return sessionStorage.getItem(TOKEN_KEY); } catch (e) { return null; }
  }

  let tokenWanted = null; // {promise, resolve} while the form is shown

  // Shows the form (once, however many requests were refused) and fires
  // when the person has given a token.
  function askForToken(refusedToken) {
    if (refusedToken && refusedToken === storedToken()) {
      try { sessionStorage.removeItem(TOKEN_KEY); } catch (e) { /* private mode */ }
      el.authError.hidden = false;
    }
    if (!tokenWanted) {
      let resolve;
      const promise = new Promise((r) => { resolve = r; });
      tokenWanted = { promise, resolve };
      el.auth.hidden = false;
      el.main.hidden = true; // nothing to show or reach until then
      setStatus("auth", "token needed");
      el.authToken.focus();
    }
    return tokenWanted.promise;
  }

  function tokenGiven(event) {
    event.preventDefault();
    const token = el.authToken.value.trim();
    if (!token) return;
    try { sessionStorage.setItem(TOKEN_KEY, token); } catch (e) { /* kept for this page only */ memoryToken = token; }
    el.authToken.value = "";
    el.auth.hidden = true;
    el.authError.hidden = true;
    el.main.hidden = false;
    el.forget.hidden = false;
    setStatus("connecting", "connecting…");
    const wanted = tokenWanted;
    tokenWanted = null;
    if (wanted) wanted.resolve();
  }

  let memoryToken = null;
  const currentToken = () => storedToken() || memoryToken;

  // Reads an error answer's (small) body to its end: cancelling it instead
  // would count as an aborted request.
  async function drain(response) {
    try { await response.arrayBuffer(); } catch (e) { /* gone: nothing to read */ }
  }

  // fetch() with the token; a 401 asks for one and tries again.
  async function apiFetch(url, options) {
    for (;;) {
      const headers = new Headers((options && options.headers) || {});
      const token = currentToken();
      if (token) headers.set("Authorization", "Bearer " + token);
      const response = await fetch(url, Object.assign({}, options, { headers, cache: "no-store" }));
      if (response.status !== 401) return response;
      await drain(response);
      if (token && memoryToken === token) memoryToken = null;
      await askForToken(token);
    }
  }

  async function getJSON(url, signal) {
    const response = await apiFetch(url, { headers: { Accept: "application/json" }, signal });
    if (!response.ok) {
      await drain(response);
      throw new HTTPError(url, response.status);
    }
    return response.json();
  }

  // A setTimeout promise that an AbortSignal ends early (resolving).
  function sleep(ms, signal) {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      if (signal) signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
    });
  }

  // ---- where we are: the location hash ----------------------------------

  // #q=gh-&state=late&kind=temperature&sort=-last_seen   the table
  // #sensor=NAME&kind=KIND&range=24h                      one series
  function readHash() {
    return new URLSearchParams(location.hash.replace(/^#/, ""));
  }

  const list = {
    q: "", state: "", kind: "", sort: "name", size: 50,
    cursors: [null], page: 0, // cursors[i] opens page i
    rows: [], next: null, total: null, capped: false,
    seq: 0, sparkSeq: 0,
    paged: true, // false: this server's /api/sensors answers everything at once
    sparkSupported: true,
    sparks: new Map(), // series key -> {values, at}
    kindsKnown: [],
  };

  function listHash() {
    const p = new URLSearchParams();
    if (list.q) p.set("q", list.q);
    if (list.state) p.set("state", list.state);
    if (list.kind) p.set("kind", list.kind);
    if (list.sort !== "name") p.set("sort", list.sort);
    return p.toString();
  }

  function detailHash(sensor, kind, range) {
    return new URLSearchParams({ sensor, kind, range: range || "24h" }).toString();
  }

  // ---- the overview -----------------------------------------------------

  let fleetSupported = true;

  async function loadFleet() {
    if (!fleetSupported) return;
    let body;
    try {
      body = await getJSON("api/fleet");
    } catch (err) {
      if (err.status === 404) {
        fleetSupported = false;
        el.counts.hidden = true;
        el.kinds.hidden = true;
        el.overviewMissing.hidden = false;
        markPainted("overview");
      }
      return;
    }
    clockOffset = body.now - Date.now() / 1000;
    const put = (name, n) => {
      const node = el.counts.querySelector('[data-count="' + name + '"]');
      if (node) node.textContent = count(n);
    };
    put("series", body.series);
    el.counts.querySelector('[data-count="sensors"]').textContent = "of " + count(body.sensors) + " sensors";
    const states = body.states || {};
    for (const s of STATES) put(s, states[s] || 0);
    const tbody = el.kinds.tBodies[0];
    const kinds = Object.keys(body.kinds || {}).sort();
    const rows = kinds.map((kind) => {
      const k = body.kinds[kind];
      const tr = document.createElement("tr");
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = kind;
      tr.append(th);
      for (const n of [k.series, k.live, k.late, k.silent, k.never]) {
        const td = document.createElement("td");
        td.textContent = count(n || 0);
        tr.append(td);
      }
      return tr;
    });
    tbody.replaceChildren(...rows);
    setKinds(kinds);
    if (body.alerts) showAlertCounts(body.alerts);
    markPainted("overview");
  }

  function setKinds(kinds) {
    const joined = kinds.join("\u0000");
    if (joined === list.kindsKnown.join("\u0000")) return;
    list.kindsKnown = kinds.slice();
    const options = [new Option("any", "")];
    for (const k of kinds) options.push(new Option(k, k));
    if (list.kind && !kinds.includes(list.kind)) options.push(new Option(list.kind, list.kind));
    el.kindFilter.replaceChildren(...options);
    el.kindFilter.value = list.kind;
  }

  // ---- alerts -----------------------------------------------------------

  let alertsSupported = true;

  function showAlertCounts(a) {
    const parts = [];
    if (a.firing) parts.push(count(a.firing) + " firing");
    if (a.pending) parts.push(count(a.pending) + " pending");
    el.alertCounts.textContent = parts.length ? "(" + parts.join(", ") + ")" : "";
  }

  async function loadAlerts() {
    if (!alertsSupported) return;
    let body;
    try {
      body = await getJSON("api/alerts");
    } catch (err) {
      if (err.status === 404 || err.status === 501) { alertsSupported = false; el.alerts.hidden = true; }
      return;
    }
    const open = (body.alerts || []).filter((a) => a.state === "firing" || a.state === "pending");
    open.sort((a, b) => (a.state === b.state ? (a.since || 0) - (b.since || 0) : a.state === "firing" ? -1 : 1));
    const items = open.slice(0, 20).map((a) => {
      const li = document.createElement("li");
      li.dataset.state = a.state;
      const badge = document.createElement("span");
      badge.className = "alert-state";
      badge.textContent = a.state;
      const link = document.createElement("a");
      link.href = "#" + detailHash(a.sensor, a.kind || "", "24h");
      link.textContent = a.sensor + (a.kind ? " · " + a.kind : "");
      const what = document.createElement("span");
      what.className = "alert-what";
      what.textContent = " " + a.rule + (a.value !== null && a.value !== undefined ? " (" + formatValue(a.value) + ")" : "") +
        (a.since ? ", since " + seenText(a.since) : "");
      li.append(badge, " ", link, what);
      return li;
    });
    if (open.length > items.length) {
      const li = document.createElement("li");
      li.textContent = "and " + count(open.length - items.length) + " more";
      items.push(li);
    }
    el.alertList.replaceChildren(...items);
    el.alertsNone.hidden = open.length > 0;
    el.alerts.hidden = false;
  }

  // ---- the table --------------------------------------------------------

  const isGlob = (q) => /[*?[]/.test(q);

  function globRegExp(glob) {
    let re = "^";
    for (const ch of glob) {
      if (ch === "*") re += ".*";
      else if (ch === "?") re += ".";
      else re += ch.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    }
    return new RegExp(re + "$");
  }

  function sensorsURL() {
    const p = new URLSearchParams({ limit: String(list.size), sort: list.sort });
    if (list.q) p.set(isGlob(list.q) ? "glob" : "prefix", list.q);
    if (list.state) p.set("state", list.state);
    if (list.kind) p.set("kind", list.kind);
    const cursor = list.cursors[list.page];
    if (cursor) p.set("cursor", cursor);
    return "api/sensors?" + p.toString();
  }

  // A server without paging answers every series at once: page here.
  function pageLocally(all) {
    let rows = all;
    if (list.q) {
      if (isGlob(list.q)) { const re = globRegExp(list.q); rows = rows.filter((r) => re.test(r.sensor)); }
      else rows = rows.filter((r) => r.sensor.startsWith(list.q));
    }
    if (list.kind) rows = rows.filter((r) => r.kind === list.kind);
    if (list.state) rows = rows.filter((r) => (r.state || "") === list.state);
    const desc = list.sort.startsWith("-");
    const key = list.sort.replace(/^-/, "");
    rows = rows.slice().sort((a, b) => {
      let c = 0;
      if (key === "last_seen") c = (a.last_seen || 0) - (b.last_seen || 0);
      if (c === 0) c = a.sensor < b.sensor ? -1 : a.sensor > b.sensor ? 1 : a.kind < b.kind ? -1 : a.kind > b.kind ? 1 : 0;
      return desc ? -c : c;
    });
    const start = list.page * list.size;
    const next = start + list.size < rows.length ? "local:" + (start + list.size) : null;
    const kinds = [...new Set(all.map((r) => r.kind))].sort();
    return { sensors: rows.slice(start, start + list.size), next, total: rows.length, kinds };
  }

  async function loadPage() {
    const seq = ++list.seq;
    let body;
    try {
      body = await getJSON(list.paged ? sensorsURL() : "api/sensors");
    } catch (err) {
      if (seq === list.seq) setStatus("error", "could not load sensors: " + err.message);
      return;
    }
    if (seq !== list.seq) return; // a newer request (another page or filter) won
    clockOffset = body.now - Date.now() / 1000;
    if (body.total === undefined) {
      list.paged = false;
      body = pageLocally(body.sensors);
      if (!fleetSupported) setKinds(body.kinds);
    }
    list.rows = body.sensors;
    list.next = body.next;
    list.total = body.total;
    list.capped = Boolean(body.total_capped);
    renderRows();
    setStatus("live", "up to date");
    el.updated.textContent = "at " + clockText(serverNow(), true);
    el.table.dataset.loaded = "true";
    markPainted("table");
    loadSparklines(false);
  }

  function renderRange() {
    const n = list.rows.length;
    const start = list.page * list.size;
    el.rangeText.textContent = n
      ? count(start + 1) + "–" + count(start + n) + " of " + count(list.total) + (list.capped ? "+" : "")
      : "none";
    el.first.disabled = el.prev.disabled = list.page === 0;
    el.next.disabled = !list.next;
  }

  function cell(tr, className) {
    const td = document.createElement("td");
    if (className) td.className = className;
    tr.append(td);
    return td;
  }

  function buildRow(r) {
    const tr = document.createElement("tr");
    const name = cell(tr, "name");
    const link = document.createElement("a");
    name.append(link);
    cell(tr, "kind");
    const value = cell(tr, "num-col value");
    value.append(document.createElement("span"), document.createElement("span"));
    value.lastChild.className = "unit";
    const state = document.createElement("span");
    state.className = "state";
    const conn = document.createElement("span");
    conn.className = "conn";
    cell(tr, "state-cell").append(state, conn);
    cell(tr, "seen").append(document.createElement("time"));
    cell(tr, "trend");
    fillRow(tr, r);
    return tr;
  }

  function fillRow(tr, r) {
    tr.dataset.sensor = r.sensor;
    tr.dataset.kind = r.kind || ""; // none: a sensor that never sent
    tr.dataset.state = r.state || "";
    const link = tr.querySelector(".name a");
    link.href = "#" + detailHash(r.sensor, r.kind || "", "24h");
    link.textContent = r.sensor;
    tr.querySelector(".kind").textContent = r.kind || "–";
    const value = tr.querySelector(".value");
    value.firstChild.textContent = formatValue(r.value);
    value.lastChild.textContent = r.value === null || r.value === undefined ? "" : " " + displayUnit(r.unit);
    const state = tr.querySelector(".state");
    state.dataset.state = r.state || "";
    state.textContent = STATE_NAMES[r.state] || "–";
    const conn = tr.querySelector(".conn");
    conn.dataset.connected = String(Boolean(r.connected));
    conn.textContent = r.connected ? " connected" : "";
    setTime(tr.querySelector(".seen time"), r.last_seen !== undefined && r.last_seen !== null ? r.last_seen : r.ts);
    const spark = list.sparks.get(seriesKey(r.sensor, r.kind));
    const trend = tr.querySelector(".trend");
    if (spark && trend.dataset.drawnAt !== String(spark.at)) drawSpark(trend, spark.values, r);
  }

  function renderRows() {
    const rows = list.rows;
    const existing = [...el.rows.children];
    const same = existing.length === rows.length &&
      existing.every((tr, i) => tr.dataset.sensor === rows[i].sensor && tr.dataset.kind === (rows[i].kind || ""));
    if (same) {
      // The same series in the same order: update in place (keeps focus).
      existing.forEach((tr, i) => fillRow(tr, rows[i]));
    } else {
      el.rows.replaceChildren(...rows.map(buildRow));
    }
    el.tableEmpty.hidden = rows.length > 0;
    renderRange();
  }

  // One request for every row of the page.
  async function loadSparklines(force) {
    if (!list.sparkSupported || !list.rows.length) return;
    const now = Date.now();
    const wanted = list.rows.filter((r) => {
      if (!r.kind) return false; // never sent: nothing to draw
      const s = list.sparks.get(seriesKey(r.sensor, r.kind));
      return force || !s || now - s.at > SPARK_REFRESH_MS;
    });
    if (!wanted.length) return;
    const seq = ++list.sparkSeq;
    const p = new URLSearchParams({ window: String(SPARK_WINDOW), points: String(SPARK_POINTS) });
    for (const r of wanted) p.append("series", r.sensor + ":" + r.kind);
    let body;
    try {
      body = await getJSON("api/sparklines?" + p.toString());
    } catch (err) {
      if (err.status === 404 || err.status === 501) {
        list.sparkSupported = false;
        el.table.classList.add("no-trend");
      }
      return;
    }
    if (seq !== list.sparkSeq) return;
    const at = Date.now();
    if (list.sparks.size > 2000) list.sparks.clear(); // bounded, however long the tab stays open
    for (const s of body.series || []) list.sparks.set(seriesKey(s.sensor, s.kind), { values: s.values, at });
    for (const tr of el.rows.children) {
      const spark = list.sparks.get(seriesKey(tr.dataset.sensor, tr.dataset.kind));
      const r = list.rows.find((x) => x.sensor === tr.dataset.sensor && (x.kind || "") === tr.dataset.kind);
      if (spark && r) drawSpark(tr.querySelector(".trend"), spark.values, r);
    }
    el.table.dataset.sparklines = "true";
  }

  // An inline SVG line: the page's template (a faint baseline across the
  // whole window, so a series that sent only lately, or stopped, shows
  // where in the 24 h its line is; the line; the latest point's dot),
  // filled in with DOM calls; gaps (null) break the line.
  const sparkTemplate = document.getElementById("spark-template").content.firstElementChild;

  function drawSpark(td, values, r) {
    const W = 120, H = 28, P = 3;
    const svg = sparkTemplate.cloneNode(true);
    const path = svg.querySelector(".spark-line");
    const dot = svg.querySelector(".spark-dot");
    let lo = Infinity, hi = -Infinity, drawn = 0;
    for (const v of values) if (v !== null && v !== undefined) { lo = Math.min(lo, v); hi = Math.max(hi, v); drawn++; }
    if (drawn) {
      const unit = displayUnit(r.unit);
      // The points are buckets' values: their range, not a latest reading
      // (the row's "Last value" says that).
      svg.setAttribute("aria-label", "last 24 h: between " + formatValue(lo) + " and " + formatValue(hi) + " " + unit);
      if (lo === hi) { lo -= 1; hi += 1; } // a flat line, drawn across the middle
      const x = (i) => P + (i * (W - 2 * P)) / Math.max(1, values.length - 1);
      const y = (v) => H - P - ((v - lo) / (hi - lo)) * (H - 2 * P);
      let d = "", pen = false, lastX = 0, lastY = 0;
      values.forEach((v, i) => {
        if (v === null || v === undefined) { pen = false; return; }
        lastX = x(i); lastY = y(v);
        d += (pen ? "L" : "M") + lastX.toFixed(1) + " " + lastY.toFixed(1);
        pen = true;
      });
      path.setAttribute("d", d);
      dot.setAttribute("cx", lastX.toFixed(1));
      dot.setAttribute("cy", lastY.toFixed(1));
    } else {
      path.remove();
      dot.remove();
      svg.setAttribute("aria-label", "no readings in the last 24 h");
    }
    td.dataset.points = String(drawn);
    td.dataset.drawnAt = String(Date.now());
    td.replaceChildren(svg);
  }

  function goToPage(page) {
    if (page < 0 || page >= list.cursors.length) return;
    list.page = page;
    loadPage();
  }

  function restartList() {
    list.cursors = [null];
    list.page = 0;
    history.replaceState(null, "", "#" + listHash());
    loadPage();
  }

  function renderSortHeads() {
    for (const th of el.table.querySelectorAll("th[data-sort-key]")) {
      const key = th.dataset.sortKey;
      const sorted = list.sort.replace(/^-/, "") === key;
      th.setAttribute("aria-sort", sorted ? (list.sort.startsWith("-") ? "descending" : "ascending") : "none");
    }
    for (const b of el.counts.querySelectorAll("button[data-filter-state]")) {
      b.setAttribute("aria-pressed", String(b.dataset.filterState === list.state));
    }
  }

  // ---- the detail view --------------------------------------------------

  const detail = {
    sensor: null, kind: null, range: "24h",
    mode: "buckets", step: 60, points: [], buckets: [],
    unit: "", info: null, seq: 0, stream: null, drawPending: false,
  };

  async function loadDetailInfo() {
    const { sensor, kind } = detail;
    const p = new URLSearchParams({ prefix: sensor, kind, limit: "20", sort: "name" });
    try {
      const body = await getJSON("api/sensors?" + p.toString());
      if (sensor !== detail.sensor || kind !== detail.kind) return;
      clockOffset = body.now - Date.now() / 1000;
      const row = body.sensors.find((r) => r.sensor === sensor && (r.kind || "") === kind);
      if (row) { detail.info = row; detail.unit = displayUnit(row.unit); }
      renderDetailFacts();
    } catch (err) {
      el.chartNote.textContent = "Could not load this series: " + err.message;
    }
  }

  function renderDetailFacts() {
    const info = detail.info;
    el.dUnit.textContent = detail.unit ? " " + detail.unit : "";
    if (!info) return;
    el.dValue.textContent = formatValue(info.value);
    el.dState.dataset.state = info.state || "";
    el.dState.textContent = STATE_NAMES[info.state] || "–";
    el.dConn.textContent = info.connected ? "open now" : "none";
    el.dConn.dataset.connected = String(Boolean(info.connected));
    setTime(el.dSeen, info.last_seen !== undefined && info.last_seen !== null ? info.last_seen : info.ts);
    el.dCount.textContent = count(info.count || 0);
    el.dInterval.textContent = info.interval ? formatDuration(info.interval) : "–";
  }

  async function loadChart() {
    const seq = ++detail.seq;
    const { sensor, kind } = detail;
    const range = RANGES[detail.range];
    const until = serverNow();
    const since = until - range.seconds;
    el.chart.dataset.loaded = "false";
    el.chartNote.textContent = "";
    try {
      if (RAW_RANGES.has(detail.range)) {
        const p = new URLSearchParams({ sensor, kind, since: since.toFixed(3), limit: String(RAW_LIMIT) });
        const page = await getJSON("api/readings?" + p.toString());
        if (seq !== detail.seq) return;
        if (!page.next) {
          const live = detail.mode === "raw" ? detail.points : [];
          const points = page.readings.map((r) => [r.ts, r.value]);
          mergeLive(points, live);
          detail.mode = "raw";
          detail.points = points;
          if (page.readings.length && !detail.unit) detail.unit = displayUnit(page.readings[0].unit);
          chartLoaded();
          return;
        }
      }
      const p = new URLSearchParams({
        sensor, kind, since: since.toFixed(3), until: until.toFixed(3),
        step: RAW_RANGES.has(detail.range) ? "1m" : "auto",
      });
      const body = await getJSON("api/readings?" + p.toString());
      if (seq !== detail.seq) return;
      detail.mode = "buckets";
      detail.step = body.step === "1h" ? 3600 : 60;
      detail.buckets = body.buckets.map((b) => ({ t: b.ts, min: b.min, max: b.max, mean: b.mean === null ? b.last : b.mean, last: b.last, count: b.count }));
      chartLoaded();
    } catch (err) {
      if (seq === detail.seq) el.chartNote.textContent = "Could not load the chart: " + err.message;
    }
  }

  // Live points that arrived while a page was loading and are newer than it.
  function mergeLive(points, live) {
    const lastT = points.length ? points[points.length - 1][0] : -Infinity;
    for (const p of live) if (p[0] > lastT) points.push(p);
  }

  function chartLoaded() {
    el.chart.dataset.loaded = "true";
    scheduleDraw();
  }

  function readingArrived(r) {
    if (r.sensor !== detail.sensor || r.kind !== detail.kind) return;
    const t = r.ts;
    if (detail.mode === "raw") {
      const pts = detail.points;
      if (pts.length && pts[pts.length - 1][0] === t && pts[pts.length - 1][1] === r.value) return; // already loaded
      if (!pts.length || t >= pts[pts.length - 1][0]) pts.push([t, r.value]);
      else {
        let lo = 0, hi = pts.length;
        while (lo < hi) { const mid = (lo + hi) >> 1; if (pts[mid][0] <= t) lo = mid + 1; else hi = mid; }
        if (!(lo > 0 && pts[lo - 1][0] === t)) pts.splice(lo, 0, [t, r.value]);
      }
      if (pts.length > MAX_LIVE_POINTS) pts.splice(0, pts.length - MAX_LIVE_POINTS);
    } else {
      // Folded into the last bucket. A reading committed between the chart's
      // request and its query can be counted in both: min and max stay
      // right, the bucket's mean moves a little until the next load.
      const start = Math.floor(t / detail.step) * detail.step;
      const b = detail.buckets[detail.buckets.length - 1];
      if (b && b.t === start) {
        b.mean = (b.mean * b.count + r.value) / (b.count + 1);
        b.count += 1;
        b.min = Math.min(b.min, r.value);
        b.max = Math.max(b.max, r.value);
        b.last = r.value;
      } else if (!b || start > b.t) {
        detail.buckets.push({ t: start, min: r.value, max: r.value, mean: r.value, last: r.value, count: 1 });
      }
    }
    if (!detail.unit && r.unit) detail.unit = displayUnit(r.unit);
    const info = detail.info || { sensor: r.sensor, kind: r.kind, count: 0 };
    const latestT = info.ts === null || info.ts === undefined ? -Infinity : info.ts;
    if (t >= latestT) { info.value = r.value; info.ts = t; }
    info.last_seen = Math.max(info.last_seen || 0, r.received_at || t);
    info.count = (info.count || 0) + 1;
    info.state = "live";
    detail.info = info;
    renderDetailFacts();
    el.dValue.dataset.live = "true";
    scheduleDraw();
  }

  // The live stream of one series, read with fetch() (an EventSource cannot
  // send the Authorization header). Reconnects after a dropped connection
  // (the server's retry: delay) and, after a refusal (503: as many streams
  // open as the server allows), STREAM_RETRY_MS later.
  async function runStream(sensor, kind, signal) {
    const url = "api/stream?" + new URLSearchParams({ sensor, kind }).toString();
    let retryMs = 3000;
    let broken = false;
    while (!signal.aborted) {
      let response = null;
      try {
        response = await apiFetch(url, { headers: { Accept: "text/event-stream" }, signal });
      } catch (err) {
        if (signal.aborted) return;
      }
      if (response && !response.ok) {
        await drain(response);
        setLive("error", response.status === 503 ? "live updates refused (server busy): retrying in 30 s" : "no live updates (HTTP " + response.status + ")");
        await sleep(STREAM_RETRY_MS, signal);
        broken = true;
        continue;
      }
      if (response) {
        setLive("live", "live");
        if (broken) { broken = false; loadChart(); loadDetailInfo(); } // readings committed while away
        try {
          await readEvents(response.body, (event, data) => {
            if (event === "readings") { for (const r of JSON.parse(data)) readingArrived(r); }
          }, (ms) => { retryMs = ms; });
        } catch (err) {
          if (signal.aborted) return;
        }
      }
      if (signal.aborted) return;
      broken = true;
      setLive("error", "reconnecting…");
      await sleep(retryMs, signal);
    }
  }

  // Server-Sent Events from a byte stream (the WHATWG rules this server
  // needs: "event", "data", "retry", comments; lines end with LF or CRLF).
  async function readEvents(body, onEvent, onRetry) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "", event = "message", data = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        let line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        if (line.endsWith("\r")) line = line.slice(0, -1);
        if (line === "") {
          if (data.length) onEvent(event, data.join("\n"));
          event = "message"; data = [];
          continue;
        }
        if (line.startsWith(":")) continue; // a heartbeat
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let v = colon < 0 ? "" : line.slice(colon + 1);
        if (v.startsWith(" ")) v = v.slice(1);
        if (field === "event") event = v;
        else if (field === "data") data.push(v);
        else if (field === "retry" && /^\d+$/.test(v)) onRetry(Number(v));
      }
    }
  }

  function setLive(state, text) {
    el.dLive.dataset.state = state;
    el.dLive.textContent = text;
  }

  function stopStream() {
    if (detail.stream) { detail.stream.abort(); detail.stream = null; }
    setLive("off", "not live");
  }

  function openDetail(sensor, kind, range) {
    const changed = sensor !== detail.sensor || kind !== detail.kind;
    const rangeChanged = range !== detail.range;
    detail.range = range;
    for (const b of el.detail.querySelectorAll(".ranges button")) {
      b.setAttribute("aria-pressed", String(b.dataset.range === range));
    }
    el.back.href = "#" + listHash();
    el.updated.textContent = ""; // the table's refresh time; the table is not shown
    const wasHidden = el.detail.hidden;
    el.listView.hidden = true;
    el.detail.hidden = false;
    document.title = sensor + " · " + kind + " · sensornet";
    if (changed) {
      stopStream();
      detail.sensor = sensor;
      detail.kind = kind;
      detail.info = null;
      detail.unit = "";
      detail.points = [];
      detail.buckets = [];
      el.dTitle.textContent = sensor;
      el.dKind.textContent = kind;
      el.dValue.textContent = "–";
      delete el.dValue.dataset.live;
      el.dState.textContent = "";
      el.dConn.textContent = "–";
      el.dCount.textContent = "–";
      el.dInterval.textContent = "–";
      setTime(el.dSeen, null);
      el.chart.dataset.points = "0";
      loadDetailInfo();
      const controller = new AbortController();
      detail.stream = controller;
      runStream(sensor, kind, controller.signal);
    }
    if (changed || rangeChanged || wasHidden) loadChart();
    if (wasHidden) el.detail.focus({ preventScroll: false });
  }

  function closeDetail() {
    if (el.detail.hidden) return;
    stopStream();
    const { sensor, kind } = detail;
    detail.sensor = detail.kind = null;
    el.detail.hidden = true;
    el.listView.hidden = false;
    document.title = "sensornet · fleet";
    loadPage();
    loadFleet();
    loadAlerts();
    const row = [...el.rows.children].find((tr) => tr.dataset.sensor === sensor && tr.dataset.kind === kind);
    if (row) row.querySelector("a").focus();
  }

  // ---- the chart --------------------------------------------------------

  function niceStep(span, n) {
    const raw = span / n;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 5, 10]) if (raw <= m * mag) return m * mag;
    return 10 * mag;
  }

  const CLOCK_STEPS = [60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 14400, 21600];
  const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  const DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];

  // Round local times between t0 and t1, with labels: clock times for a
  // day or less, days for a few weeks, months beyond.
  function timeTicks(t0, t1) {
    const span = t1 - t0;
    const ticks = [];
    if (span <= 2 * 86400) {
      let step = CLOCK_STEPS[CLOCK_STEPS.length - 1];
      for (const s of CLOCK_STEPS) if (span / s <= 8) { step = s; break; }
      const shift = -new Date(t1 * 1000).getTimezoneOffset() * 60;
      for (let t = Math.ceil((t0 + shift) / step) * step - shift; t <= t1; t += step) {
        const d = new Date(t * 1000);
        const midnight = d.getHours() === 0 && d.getMinutes() === 0;
        ticks.push({ t, label: midnight ? DAYS[d.getDay()] + " " + d.getDate() : clockText(t, false) });
      }
    } else if (span <= 21 * 86400) {
      const every = span <= 8 * 86400 ? 1 : 2;
      const d = new Date(t0 * 1000);
      d.setHours(0, 0, 0, 0);
      d.setDate(d.getDate() + 1);
      for (; d.getTime() / 1000 <= t1; d.setDate(d.getDate() + every)) {
        ticks.push({ t: d.getTime() / 1000, label: DAYS[d.getDay()] + " " + d.getDate() });
      }
    } else {
      const every = span <= 120 * 86400 ? 1 : 2;
      const d = new Date(t0 * 1000);
      d.setHours(0, 0, 0, 0);
      if (span <= 120 * 86400) {
        // Half months: the 1st and the 15th.
        d.setDate(d.getDate() <= 15 ? 15 : 1);
        if (d.getDate() === 1) d.setMonth(d.getMonth() + 1);
        for (; d.getTime() / 1000 <= t1; d.getDate() === 1 ? d.setDate(15) : (d.setDate(1), d.setMonth(d.getMonth() + 1))) {
          ticks.push({ t: d.getTime() / 1000, label: d.getDate() + " " + MONTHS[d.getMonth()] });
        }
      } else {
        d.setDate(1);
        d.setMonth(d.getMonth() + 1);
        for (; d.getTime() / 1000 <= t1; d.setMonth(d.getMonth() + every)) {
          const label = MONTHS[d.getMonth()] + (d.getMonth() === 0 ? " " + d.getFullYear() : "");
          ticks.push({ t: d.getTime() / 1000, label });
        }
      }
    }
    return ticks;
  }

  function scheduleDraw() {
    if (!detail.drawPending) {
      detail.drawPending = true;
      requestAnimationFrame(() => { detail.drawPending = false; drawChart(); });
    }
  }

  const FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif";

  function drawChart() {
    if (el.detail.hidden || !detail.sensor) return;
    const canvas = el.chart;
    const ratio = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (!w || !h) return;
    if (canvas.width !== Math.round(w * ratio) || canvas.height !== Math.round(h * ratio)) {
      canvas.width = Math.round(w * ratio);
      canvas.height = Math.round(h * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const range = RANGES[detail.range];
    const t1 = serverNow(), t0 = t1 - range.seconds;
    const box = { left: 70, right: w - 20, top: 36, bottom: h - 36 };
    const xOf = (t) => box.left + ((t - t0) / (t1 - t0)) * (box.right - box.left);

    // What is visible: [t, lo, hi, mid] per point or bucket.
    const items = [];
    if (detail.mode === "raw") {
      for (const [t, v] of detail.points) if (t >= t0 && t <= t1 + 5) items.push([t, v, v, v]);
    } else {
      for (const b of detail.buckets) if (b.t + detail.step > t0 && b.t <= t1 + 5) items.push([b.t + detail.step / 2, b.min, b.max, b.mean]);
    }
    let vmin = Infinity, vmax = -Infinity;
    for (const it of items) { if (it[1] < vmin) vmin = it[1]; if (it[2] > vmax) vmax = it[2]; }
    if (!items.length) { const v = detail.info && detail.info.value !== null && detail.info.value !== undefined ? detail.info.value : 0; vmin = vmax = v; }
    if (vmin === vmax) { const d = Math.abs(vmin) * 0.05 || 1; vmin -= d; vmax += d; }
    const margin = (vmax - vmin) * 0.08;
    vmin -= margin; vmax += margin;
    const yStep = niceStep(vmax - vmin, 5);
    const yLo = Math.floor(vmin / yStep) * yStep, yHi = Math.ceil(vmax / yStep) * yStep;
    const yOf = (v) => box.bottom - ((v - yLo) / (yHi - yLo)) * (box.bottom - box.top);

    ctx.font = "13px " + FONT;
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const decimals = Math.max(0, -Math.floor(Math.log10(yStep) + 1e-9));
    for (let v = yLo; v <= yHi + yStep / 2; v += yStep) {
      const y = Math.round(yOf(v)) + 0.5;
      ctx.strokeStyle = "#e3e8ee";
      ctx.beginPath(); ctx.moveTo(box.left, y); ctx.lineTo(box.right, y); ctx.stroke();
      ctx.fillStyle = "#3b4450";
      ctx.fillText(v.toFixed(Math.min(decimals, 6)), box.left - 8, y);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const tick of timeTicks(t0, t1)) {
      const x = Math.round(xOf(tick.t)) + 0.5;
      ctx.strokeStyle = "#eef1f5";
      ctx.beginPath(); ctx.moveTo(x, box.top); ctx.lineTo(x, box.bottom); ctx.stroke();
      ctx.strokeStyle = "#8a939e";
      ctx.beginPath(); ctx.moveTo(x, box.bottom); ctx.lineTo(x, box.bottom + 4); ctx.stroke();
      ctx.fillStyle = "#3b4450";
      ctx.fillText(tick.label, x, box.bottom + 8);
    }
    ctx.strokeStyle = "#8a939e";
    ctx.beginPath();
    ctx.moveTo(box.left + 0.5, box.top); ctx.lineTo(box.left + 0.5, box.bottom + 0.5); ctx.lineTo(box.right, box.bottom + 0.5);
    ctx.stroke();

    const unit = detail.unit;
    const how = detail.mode === "raw" ? "each reading" : detail.step === 3600 ? "hourly min, mean, max" : "per-minute min, mean, max";
    ctx.fillStyle = "#14181f";
    ctx.font = "600 13px " + FONT;
    ctx.textAlign = "left";
    ctx.textBaseline = "alphabetic";
    ctx.fillText(detail.kind + (unit ? " (" + unit + ")" : ""), 8, 18);
    ctx.textAlign = "right";
    ctx.fillText("last " + range.label + " · local time · " + how, box.right, 18);

    if (!items.length) {
      ctx.fillStyle = "#4a5360";
      ctx.font = "15px " + FONT;
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.fillText("no readings in the last " + range.label, (box.left + box.right) / 2, (box.top + box.bottom) / 2);
    } else {
      ctx.save();
      ctx.beginPath();
      ctx.rect(box.left, box.top - 6, box.right - box.left + 10, box.bottom - box.top + 12);
      ctx.clip();
      // A gap longer than a few steps breaks the line: a silent sensor
      // shows as silence, not as a straight line across.
      const gap = detail.mode === "raw" ? Math.max(60, (detail.info && detail.info.interval ? detail.info.interval * 3 : 0)) : detail.step * 2.5;
      const runs = [];
      let run = [];
      for (const it of items) {
        if (run.length && it[0] - run[run.length - 1][0] > gap) { runs.push(run); run = []; }
        run.push(it);
      }
      runs.push(run);
      if (detail.mode === "buckets") {
        ctx.fillStyle = "rgba(11, 92, 213, 0.18)";
        for (const r of runs) {
          ctx.beginPath();
          r.forEach((it, i) => (i ? ctx.lineTo(xOf(it[0]), yOf(it[2])) : ctx.moveTo(xOf(it[0]), yOf(it[2]))));
          for (let i = r.length - 1; i >= 0; i--) ctx.lineTo(xOf(r[i][0]), yOf(r[i][1]));
          ctx.closePath();
          ctx.fill();
        }
      }
      ctx.strokeStyle = "#0b5cd5";
      ctx.lineWidth = 2;
      ctx.lineJoin = "round";
      for (const r of runs) {
        ctx.beginPath();
        r.forEach((it, i) => (i ? ctx.lineTo(xOf(it[0]), yOf(it[3])) : ctx.moveTo(xOf(it[0]), yOf(it[3]))));
        ctx.stroke();
      }
      ctx.fillStyle = "#0b5cd5";
      if (items.length <= 120) {
        for (const it of items) { ctx.beginPath(); ctx.arc(xOf(it[0]), yOf(it[3]), 2.5, 0, 2 * Math.PI); ctx.fill(); }
      }
      const lastItem = items[items.length - 1];
      const lastV = detail.mode === "raw" ? lastItem[3] : detail.buckets[detail.buckets.length - 1].last;
      ctx.beginPath(); ctx.arc(xOf(lastItem[0]), yOf(lastV), 4.5, 0, 2 * Math.PI); ctx.fill();
      ctx.strokeStyle = "#ffffff"; ctx.lineWidth = 1.5; ctx.stroke();
      ctx.restore();
    }
    canvas.dataset.points = String(items.length);
    canvas.dataset.mode = detail.mode;
    let lo = Infinity, hi = -Infinity;
    for (const it of items) { lo = Math.min(lo, it[1]); hi = Math.max(hi, it[2]); }
    const what = detail.mode === "raw" ? " readings" : detail.step === 3600 ? " hours" : " minutes";
    canvas.setAttribute("aria-label", detail.sensor + " " + detail.kind + ", last " + range.label + ": " +
      (items.length ? count(items.length) + what + ", lowest " + formatValue(lo) + " " + unit + ", highest " +
        formatValue(hi) + " " + unit + (detail.info ? ", latest " + formatValue(detail.info.value) + " " + unit : "")
        : "no readings"));
  }

  // ---- wiring -----------------------------------------------------------

  function route() {
    const h = readHash();
    if (h.has("sensor")) {
      const range = RANGES[h.get("range")] ? h.get("range") : "24h";
      openDetail(h.get("sensor"), h.get("kind") || "", range);
      return;
    }
    const q = h.get("q") || "", state = h.get("state") || "", kind = h.get("kind") || "";
    const sort = ["name", "-name", "last_seen", "-last_seen"].includes(h.get("sort")) ? h.get("sort") : "name";
    const filtersChanged = q !== list.q || state !== list.state || kind !== list.kind || sort !== list.sort;
    list.q = q; list.state = state; list.kind = kind; list.sort = sort;
    el.search.value = q;
    el.stateFilter.value = state;
    if (kind && !list.kindsKnown.includes(kind)) setKinds(list.kindsKnown.concat([kind]).sort());
    el.kindFilter.value = kind;
    renderSortHeads();
    if (filtersChanged) { list.cursors = [null]; list.page = 0; }
    if (!el.detail.hidden) closeDetail();
    else if (filtersChanged || !el.table.dataset.loaded) loadPage();
  }

  function start() {
    el.zone.textContent = Intl.DateTimeFormat().resolvedOptions().timeZone || "browser time";
    el.forget.hidden = !currentToken();
    el.authForm.addEventListener("submit", tokenGiven);
    el.forget.addEventListener("click", () => {
      try { sessionStorage.removeItem(TOKEN_KEY); } catch (e) { /* nothing kept */ }
      memoryToken = null;
      location.reload();
    });

    let searchTimer = null;
    el.search.addEventListener("input", () => {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(() => {
        const q = el.search.value.trim();
        if (q !== list.q) { list.q = q; restartList(); }
      }, 250);
    });
    el.search.form.addEventListener("submit", (e) => {
      e.preventDefault();
      clearTimeout(searchTimer);
      list.q = el.search.value.trim();
      restartList();
    });
    el.stateFilter.addEventListener("change", () => { list.state = el.stateFilter.value; renderSortHeads(); restartList(); });
    el.kindFilter.addEventListener("change", () => { list.kind = el.kindFilter.value; restartList(); });
    el.pageSize.addEventListener("change", () => { list.size = Number(el.pageSize.value); restartList(); });
    for (const b of el.counts.querySelectorAll("button[data-filter-state]")) {
      b.addEventListener("click", () => {
        list.state = b.dataset.filterState;
        el.stateFilter.value = list.state;
        renderSortHeads();
        restartList();
      });
    }
    for (const b of el.table.querySelectorAll("th button[data-sort]")) {
      b.addEventListener("click", () => {
        const key = b.dataset.sort;
        // Name sorts A→Z first; last seen newest first.
        const first = key === "last_seen" ? "-last_seen" : "name";
        const flipped = first.startsWith("-") ? key : "-" + key;
        list.sort = list.sort === first ? flipped : first;
        renderSortHeads();
        restartList();
      });
    }
    el.first.addEventListener("click", () => goToPage(0));
    el.prev.addEventListener("click", () => goToPage(list.page - 1));
    el.next.addEventListener("click", () => {
      if (!list.next) return;
      list.cursors[list.page + 1] = list.next;
      list.cursors.length = list.page + 2;
      goToPage(list.page + 1);
    });
    // A click anywhere on a row opens it, as its link does.
    el.rows.addEventListener("click", (e) => {
      if (e.target.closest("a")) return;
      const tr = e.target.closest("tr");
      if (tr) location.hash = detailHash(tr.dataset.sensor, tr.dataset.kind, "24h");
    });
    for (const b of el.detail.querySelectorAll(".ranges button")) {
      b.addEventListener("click", () => {
        location.hash = detailHash(detail.sensor, detail.kind, b.dataset.range);
      });
    }
    window.addEventListener("hashchange", route);
    window.addEventListener("resize", scheduleDraw);

    route();
    loadFleet();
    loadAlerts();
    setInterval(() => {
      if (document.hidden) return;
      if (el.detail.hidden) { loadPage(); loadFleet(); }
      else scheduleDraw(); // slide the window
    }, REFRESH_MS);
    setInterval(() => { if (!document.hidden && el.detail.hidden) loadAlerts(); }, ALERTS_MS);
    setInterval(() => { if (!el.detail.hidden && detail.info) renderDetailFacts(); }, 1000); // age "last seen"
  }

  start();
})();
