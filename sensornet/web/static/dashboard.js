// sensornet dashboard: one live chart per series (sensor + kind).
//
// Plain JavaScript, no libraries, no build step: the server may run where
// there is no internet. History comes from /api/readings, new readings from
// the Server-Sent Events stream /api/stream, connection state from
// /api/sensors (polled). Charts are drawn on <canvas>.
"use strict";

(() => {
  const WINDOWS = { 300: "5 min", 3600: "1 h", 86400: "24 h" };
  // One page holds the whole window when it has at most this many readings;
  // beyond it the window is sampled: SLICES slices of up to PER_SLICE each.
  const FIRST_PAGE = 2000;
  const SLICES = 48;
  const PER_SLICE = 200;
  const MAX_POINTS = 200000; // per series, so a long-open tab stays bounded
  const SENSORS_EVERY_MS = 5000;

  const state = {
    window: 300,
    series: new Map(), // key -> series
    clockOffset: 0, // server seconds minus browser seconds
    drawPending: false,
  };

  const grid = document.getElementById("grid");
  const statusEl = document.getElementById("status");
  const emptyEl = document.getElementById("empty");
  const template = document.getElementById("card-template");

  const seriesKey = (sensor, kind) => sensor + "\u0000" + kind;
  // Units as people write them: the wire says "C" for degrees Celsius.
  const UNIT_NAMES = { C: "°C", F: "°F", degC: "°C", degF: "°F" };
  const displayUnit = (u) => UNIT_NAMES[u] || u || "";
  const serverNow = () => Date.now() / 1000 + state.clockOffset;
  const pointTime = (r) => (r.ts !== null && r.ts !== undefined ? r.ts : r.received_at);

  function setStatus(kind, text) {
    statusEl.dataset.state = kind;
    statusEl.textContent = text;
  }

  async function getJSON(url) {
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(url + " answered HTTP " + response.status);
    return response.json();
  }

  // ---- series and their cards -------------------------------------------

  function ensureSeries(sensor, kind, unit) {
    const key = seriesKey(sensor, kind);
    let s = state.series.get(key);
    if (s) {
      if (unit && !s.unit) { s.unit = displayUnit(unit); s.el.unit.textContent = s.unit; }
      return s;
    }
    const card = template.content.firstElementChild.cloneNode(true);
    card.dataset.sensor = sensor;
    card.dataset.kind = kind;
    s = {
      key, sensor, kind, unit: displayUnit(unit),
      points: [], // [t, value], ascending t
      latest: null, // {t, value}
      count: 0,
      connected: false,
      sampled: false,
      loadToken: 0,
      el: {
        card,
        value: card.querySelector(".value"),
        unit: card.querySelector(".unit"),
        conn: card.querySelector(".conn"),
        seen: card.querySelector(".seen"),
        count: card.querySelector(".count"),
        canvas: card.querySelector(".chart"),
        note: card.querySelector(".note"),
      },
    };
    card.querySelector(".sensor").textContent = sensor;
    card.querySelector(".kind").textContent = kind;
    s.el.unit.textContent = s.unit;
    // Keep cards sorted by sensor, then kind.
    let before = null;
    for (const other of grid.children) {
      const o = state.series.get(seriesKey(other.dataset.sensor, other.dataset.kind));
      if (o && (o.sensor > sensor || (o.sensor === sensor && o.kind > kind))) { before = other; break; }
    }
    grid.insertBefore(card, before);
    state.series.set(key, s);
    emptyEl.hidden = true;
    loadHistory(s);
    soonRefreshSensors(); // learn whether the new sensor is connected
    return s;
  }

  function addPoint(s, t, value) {
    const pts = s.points;
    if (!pts.length || t >= pts[pts.length - 1][0]) {
      pts.push([t, value]);
    } else {
      // A late reading (a resend): insert in time order.
      let lo = 0, hi = pts.length;
      while (lo < hi) { const mid = (lo + hi) >> 1; if (pts[mid][0] <= t) lo = mid + 1; else hi = mid; }
      pts.splice(lo, 0, [t, value]);
    }
    if (pts.length > MAX_POINTS) pts.splice(0, pts.length - MAX_POINTS);
    if (!s.latest || t >= s.latest.t) s.latest = { t, value };
  }

  function readingArrived(r) {
    const s = ensureSeries(r.sensor, r.kind, r.unit);
    addPoint(s, pointTime(r), r.value);
    s.count += 1;
  }

  // ---- loading ----------------------------------------------------------

  function readingsURL(s, since, until, limit) {
    const q = new URLSearchParams({ sensor: s.sensor, kind: s.kind, since: since.toFixed(3), limit: String(limit) });
    if (until !== null) q.set("until", until.toFixed(3));
    return "api/readings?" + q.toString();
  }

  async function inBatches(tasks, width) {
    const results = new Array(tasks.length);
    let next = 0;
    async function worker() {
      while (next < tasks.length) { const i = next++; results[i] = await tasks[i](); }
    }
    await Promise.all(Array.from({ length: Math.min(width, tasks.length) }, worker));
    return results;
  }

  async function loadHistory(s) {
    const token = ++s.loadToken;
    const end = serverNow();
    const since = end - state.window;
    let points;
    let sampled = false;
    try {
      const page = await getJSON(readingsURL(s, since, null, FIRST_PAGE));
      points = page.readings.map((r) => [pointTime(r), r.value]);
      if (page.next) {
        // Too many readings for one page: take the first PER_SLICE of each
        // of SLICES equal slices, so the whole window is covered.
        sampled = true;
        const step = (end - since) / SLICES;
        const tasks = [];
        for (let i = 0; i < SLICES; i++) {
          const a = since + i * step;
          const b = i === SLICES - 1 ? null : a + step;
          tasks.push(() => getJSON(readingsURL(s, a, b, PER_SLICE)));
        }
        const pages = await inBatches(tasks, 4);
        points = [];
        for (const p of pages) for (const r of p.readings) points.push([pointTime(r), r.value]);
      }
    } catch (err) {
      if (token === s.loadToken) s.el.note.textContent = "Could not load history: " + err.message;
      return;
    }
    if (token !== s.loadToken) return; // a newer load (another window) won
    // Keep live points that arrived while loading and are newer than the page.
    const lastT = points.length ? points[points.length - 1][0] : -Infinity;
    for (const p of s.points) if (p[0] > lastT) points.push(p);
    s.points = points;
    s.sampled = sampled;
    s.el.note.textContent = sampled
      ? "Sampled: the window holds more readings than are drawn."
      : "";
    if (points.length) {
      const [t, v] = points[points.length - 1];
      if (!s.latest || t >= s.latest.t) s.latest = { t, value: v };
    }
    s.el.canvas.dataset.loaded = "true";
    scheduleDraw();
  }

  let refreshTimer = null;
  function soonRefreshSensors() {
    if (refreshTimer === null) {
      refreshTimer = setTimeout(() => { refreshTimer = null; refreshSensors(); }, 200);
    }
  }

  async function refreshSensors() {
    let body;
    try {
      body = await getJSON("api/sensors");
    } catch (err) {
      setStatus("error", "server unreachable");
      return;
    }
    state.clockOffset = body.now - Date.now() / 1000;
    for (const row of body.sensors) {
      const s = ensureSeries(row.sensor, row.kind, row.unit);
      s.connected = row.connected;
      s.count = Math.max(row.count, s.count);
      if (row.ts !== null && row.value !== null && (!s.latest || row.ts >= s.latest.t)) {
        s.latest = { t: row.ts, value: row.value };
      }
    }
    emptyEl.hidden = state.series.size > 0;
    scheduleDraw();
  }

  // ---- drawing ----------------------------------------------------------

  function formatValue(v) {
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(2);
    if (a >= 100) return v.toFixed(1);
    return v.toFixed(2);
  }

  function pad2(n) { return String(n).padStart(2, "0"); }

  function formatClock(t, withSeconds) {
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

  function niceStep(span, count) {
    const raw = span / count;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    // 1, 2, 5 steps only: their labels need no more decimals than the step.
    for (const m of [1, 2, 5, 10]) if (raw <= m * mag) return m * mag;
    return 10 * mag;
  }

  const TIME_STEPS = [5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 14400, 21600];

  function drawChart(s, now) {
    const canvas = s.el.canvas;
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

    const box = { left: 66, right: w - 16, top: 32, bottom: h - 34 };
    const t1 = now, t0 = now - state.window;
    const xOf = (t) => box.left + ((t - t0) / (t1 - t0)) * (box.right - box.left);

    // Visible points (binary search for the first at or after t0).
    const pts = s.points;
    let lo = 0, hi = pts.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (pts[mid][0] < t0) lo = mid + 1; else hi = mid; }
    const first = lo;
    let last = pts.length;
    while (last > first && pts[last - 1][0] > t1 + 5) last--; // tolerate a little clock skew
    const visible = last - first;

    let vmin = Infinity, vmax = -Infinity;
    for (let i = first; i < last; i++) { const v = pts[i][1]; if (v < vmin) vmin = v; if (v > vmax) vmax = v; }
    if (!visible) {
      const v = s.latest ? s.latest.value : 0;
      vmin = vmax = v;
    }
    if (vmin === vmax) { const d = Math.abs(vmin) * 0.05 || 1; vmin -= d; vmax += d; }
    const margin = (vmax - vmin) * 0.08;
    vmin -= margin; vmax += margin;
    const yStep = niceStep(vmax - vmin, 4);
    const yLo = Math.floor(vmin / yStep) * yStep, yHi = Math.ceil(vmax / yStep) * yStep;
    const yOf = (v) => box.bottom - ((v - yLo) / (yHi - yLo)) * (box.bottom - box.top);

    ctx.font = "12px system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif";
    ctx.lineWidth = 1;

    // Horizontal grid and value labels.
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

    // Time grid and labels, on round local clock times.
    const tzShift = -new Date(t1 * 1000).getTimezoneOffset() * 60;
    let tStep = TIME_STEPS[TIME_STEPS.length - 1];
    for (const step of TIME_STEPS) if ((t1 - t0) / step <= 6) { tStep = step; break; }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const withSeconds = tStep < 60;
    for (let t = Math.ceil((t0 + tzShift) / tStep) * tStep - tzShift; t <= t1; t += tStep) {
      const x = Math.round(xOf(t)) + 0.5;
      ctx.strokeStyle = "#eef1f5";
      ctx.beginPath(); ctx.moveTo(x, box.top); ctx.lineTo(x, box.bottom); ctx.stroke();
      ctx.strokeStyle = "#8a939e";
      ctx.beginPath(); ctx.moveTo(x, box.bottom); ctx.lineTo(x, box.bottom + 4); ctx.stroke();
      ctx.fillStyle = "#3b4450";
      ctx.fillText(formatClock(t, withSeconds), x, box.bottom + 7);
    }

    // Axes.
    ctx.strokeStyle = "#8a939e";
    ctx.beginPath();
    ctx.moveTo(box.left + 0.5, box.top); ctx.lineTo(box.left + 0.5, box.bottom + 0.5); ctx.lineTo(box.right, box.bottom + 0.5);
    ctx.stroke();

    // Axis titles: the unit on the value axis, the clock on the time axis.
    ctx.fillStyle = "#14181f";
    ctx.font = "600 12px system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif";
    ctx.textAlign = "left";
    ctx.textBaseline = "alphabetic";
    ctx.fillText(s.kind + (s.unit ? " (" + s.unit + ")" : ""), 8, 15);
    ctx.textAlign = "right";
    ctx.fillText("local time, last " + WINDOWS[state.window], box.right, 15);

    if (!visible) {
      ctx.fillStyle = "#4a5360";
      ctx.font = "14px system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif";
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.fillText("no readings in the last " + WINDOWS[state.window], (box.left + box.right) / 2, (box.top + box.bottom) / 2);
    } else {
      ctx.save();
      ctx.beginPath();
      // Room for the latest point's dot at the right edge.
      ctx.rect(box.left, box.top - 6, box.right - box.left + 10, box.bottom - box.top + 12);
      ctx.clip();
      ctx.strokeStyle = "#0b5cd5";
      ctx.lineWidth = 2;
      ctx.lineJoin = "round";
      ctx.beginPath();
      // Many points: one min-max segment per pixel column keeps drawing fast
      // and the shape honest.
      if (visible > (box.right - box.left) * 2) {
        let col = -1, cmin = 0, cmax = 0, started = false;
        const flush = () => {
          if (col < 0) return;
          if (!started) { ctx.moveTo(col, yOf(cmin)); started = true; } else ctx.lineTo(col, yOf(cmin));
          ctx.lineTo(col, yOf(cmax));
        };
        for (let i = first; i < last; i++) {
          const x = Math.round(xOf(pts[i][0]));
          const v = pts[i][1];
          if (x !== col) { flush(); col = x; cmin = cmax = v; } else { if (v < cmin) cmin = v; if (v > cmax) cmax = v; }
        }
        flush();
      } else {
        for (let i = first; i < last; i++) {
          const x = xOf(pts[i][0]), y = yOf(pts[i][1]);
          if (i === first) ctx.moveTo(x, y); else ctx.lineTo(x, y);
        }
      }
      ctx.stroke();
      ctx.fillStyle = "#0b5cd5";
      if (visible <= 120) {
        for (let i = first; i < last; i++) {
          ctx.beginPath(); ctx.arc(xOf(pts[i][0]), yOf(pts[i][1]), 2.5, 0, 2 * Math.PI); ctx.fill();
        }
      }
      const [lt, lv] = pts[last - 1];
      ctx.beginPath(); ctx.arc(xOf(lt), yOf(lv), 4.5, 0, 2 * Math.PI); ctx.fill();
      ctx.strokeStyle = "#ffffff"; ctx.lineWidth = 1.5; ctx.stroke();
      ctx.restore();
    }

    canvas.dataset.points = String(visible);
    canvas.setAttribute(
      "aria-label",
      s.sensor + " " + s.kind + ": " + visible + " readings in the last " + WINDOWS[state.window] +
        (s.latest ? ", latest " + formatValue(s.latest.value) + " " + s.unit : ""),
    );
  }

  function drawCard(s, now) {
    if (s.latest) {
      s.el.value.textContent = formatValue(s.latest.value);
      s.el.seen.textContent = formatAgo(Math.max(0, now - s.latest.t));
      const d = new Date(s.latest.t * 1000);
      s.el.seen.dateTime = d.toISOString();
      s.el.seen.title = d.toLocaleString();
    }
    s.el.count.textContent = s.count.toLocaleString("en") + (s.count === 1 ? " reading" : " readings");
    s.el.conn.dataset.connected = String(s.connected);
    s.el.conn.textContent = s.connected ? "connected" : "not connected";
    drawChart(s, now);
  }

  function drawAll() {
    state.drawPending = false;
    const now = serverNow();
    // Forget points that slid out of the largest window.
    const horizon = now - 86400 - 60;
    for (const s of state.series.values()) {
      if (s.points.length && s.points[0][0] < horizon && state.window < 86400) {
        let i = 0;
        while (i < s.points.length && s.points[i][0] < now - state.window - 60) i++;
        if (i) s.points.splice(0, i);
      }
      drawCard(s, now);
    }
  }

  function scheduleDraw() {
    if (!state.drawPending) {
      state.drawPending = true;
      requestAnimationFrame(drawAll);
    }
  }

  // ---- wiring -----------------------------------------------------------

  function chooseWindow(seconds) {
    if (!WINDOWS[seconds]) return;
    state.window = seconds;
    for (const b of document.querySelectorAll(".window button")) {
      b.setAttribute("aria-pressed", String(Number(b.dataset.window) === seconds));
    }
    if (location.hash !== "#window=" + seconds) history.replaceState(null, "", "#window=" + seconds);
    for (const s of state.series.values()) loadHistory(s);
    scheduleDraw();
  }

  // An EventSource retries by itself after a dropped connection, but gives
  // up for good on an answer that is not a stream (the server's 503 when it
  // has as many live streams as it allows): then start a new one later.
  const STREAM_RETRY_MS = 30000;

  function connectStream(wasBroken) {
    const source = new EventSource("api/stream");
    let broken = Boolean(wasBroken);
    source.addEventListener("open", () => {
      setStatus("live", "live");
      if (broken) {
        // Readings committed while we were away: reload what the window shows.
        broken = false;
        for (const s of state.series.values()) loadHistory(s);
        refreshSensors();
      }
    });
    source.addEventListener("error", () => {
      broken = true;
      setStatus("error", "reconnecting…");
      if (source.readyState === EventSource.CLOSED) {
        source.close();
        setTimeout(() => connectStream(true), STREAM_RETRY_MS);
      }
    });
    source.addEventListener("readings", (event) => {
      for (const r of JSON.parse(event.data)) readingArrived(r);
      scheduleDraw();
    });
  }

  function start() {
    for (const b of document.querySelectorAll(".window button")) {
      b.addEventListener("click", () => chooseWindow(Number(b.dataset.window)));
    }
    const m = /^#window=(\d+)$/.exec(location.hash);
    if (m && WINDOWS[Number(m[1])]) chooseWindow(Number(m[1]));
    connectStream();
    refreshSensors().then(() => {
      if (!state.series.size) emptyEl.hidden = false;
    });
    setInterval(refreshSensors, SENSORS_EVERY_MS);
    setInterval(scheduleDraw, 1000); // slide the window, age "last seen"
    window.addEventListener("resize", scheduleDraw);
  }

  start();
})();
