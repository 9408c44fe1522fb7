// medsfu consultation page, Patient panel: ambulance telemetry (ECG, vitals, GPS, vehicle status,
// chat) from the `telemetry` / `telemetry_live` messages of the signalling WebSocket. app.js hands
// those messages to medsfuTelemetryUi.onMessage. Every buffer is bounded; the ECG is drawn once
// per animation frame at the samples' real rate; text panels are updated at most once per batch.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const PX_PER_MM = 96 / 25.4; // CSS px at 96 px per inch; the CSS grid uses the same `mm`
  const MM_PER_S = 25, MM_PER_MV = 10, GAP_MM = 4;
  const RING_S = 12;       // seconds of samples kept per lead: history keeps only its tail
  const START_LAG_S = 0.5; // the pen runs this far behind the newest sample (jitter buffer)
  const MAX_LAG_S = 2.5;   // further behind (history replay, hidden tab): jump ahead, do not race
  const MAX_CHAT_ITEMS = 300, MAX_GPS_POINTS = 20000;
  const TWELVE = ['I', 'II', 'III', 'aVR', 'aVL', 'aVF', 'V1', 'V2', 'V3', 'V4', 'V5', 'V6'];
  const COLUMNS = [['I', 'II', 'III'], ['aVR', 'aVL', 'aVF'], ['V1', 'V2', 'V3'], ['V4', 'V5', 'V6']];
  const STATUS_LABELS = { departed: 'Departed', stopped: 'Stopped', handover: 'Handover', done: 'Done', returning: 'Returning' };

  // Read by the end-to-end tests; mutated in place, never replaced.
  const T = window.medsfuTelemetry = {};
  let ecg, vitals, gps, chat, statusInfo, flushTimer = null, loopRunning = false;
  // Arrival (performance.now()) of the newest frame and the newest capture time seen.
  let lastArrival = null, lastCapturedUs = null;

  function reset() {
    Object.assign(T, { frames: 0, live: false, bySource: {}, vitals: {}, status: null, chats: 0, gpsFixes: 0, gpsGridM: 0, ecgSamplesDrawn: 0, lost: false, ended: false });
    lastArrival = null; lastCapturedUs = null;
    ecg = { streams: new Map(), source: null, choice: null, controlsDirty: true, dirty: true };
    vitals = new Map(); // vital -> { value, unit, at }
    gps = { points: [], last: null, dirty: true };
    chat = { pending: [], clear: true };
    statusInfo = null;
    schedule();
  }

  const pad = (n) => String(n).padStart(2, '0');
  function hms(us) {
    const d = new Date(Number(us) / 1000);
    return Number.isFinite(d.getTime()) ? `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}` : '--:--:--';
  }

  function onMessage(m) {
    if (m.type === 'telemetry_live') T.live = true;
    else if (m.type === 'telemetry' && Array.isArray(m.frames)) {
      if (m.frames.length) lastArrival = performance.now();
      for (const f of m.frames) {
        if (!f || typeof f !== 'object') continue;
        if (Number.isFinite(f.captured_at_us) && !(f.captured_at_us <= lastCapturedUs)) lastCapturedUs = f.captured_at_us;
        try { onFrame(f); } catch (e) { console.warn('telemetry frame', e); }
      }
    } else return;
    schedule();
    if (!loopRunning) { loopRunning = true; requestAnimationFrame(tick); }
  }

  function onFrame(f) {
    T.frames++;
    if (f.source !== undefined && f.seq !== undefined) T.bySource[f.source] = f.seq;
    switch (f.kind) {
      case 'waveform': addWaveform(f); break;
      case 'vital':
        if (typeof f.vital === 'string' && typeof f.value === 'number') {
          T.vitals[f.vital] = f.value;
          vitals.set(f.vital, { value: f.value, unit: f.unit, at: f.measured_at_us ?? f.captured_at_us, got: performance.now() });
        }
        break;
      case 'gps': addFix(f); break;
      case 'status':
        T.status = String(f.status);
        statusInfo = { status: T.status, at: f.captured_at_us };
        break;
      case 'chat':
        T.chats++;
        pushChat({ at: f.captured_at_us, author: String(f.author ?? '?'), text: String(f.text ?? '') });
        break;
      case 'snapshot_request':
        pushChat({ at: f.captured_at_us, note: `${f.requested_by ?? '?'} requested a ${f.seconds ?? '?'} s snapshot` });
        break;
      default: break;
    }
  }

  // ---- ECG: per source, one ring of samples per lead, indexed by absolute sample number ----

  function addWaveform(f) {
    const rate = Number(f.sample_rate_hz), first = Number(f.first_sample);
    if (!(rate > 0 && rate <= 20000) || !Number.isSafeInteger(first) || first < 0) return;
    if (!Array.isArray(f.leads) || !Array.isArray(f.mv)) return;
    const n = Array.isArray(f.mv[0]) ? f.mv[0].length : 0;
    if (!n) return;
    let s = ecg.streams.get(f.source);
    if (!s || s.rate !== rate) {
      s = { source: f.source, rate, cap: Math.ceil(rate * RING_S), leads: new Map(), writeEnd: null, start: 0, pen: null, lastT: null, lastWrite: 0 };
      ecg.streams.set(f.source, s);
      ecg.controlsDirty = true;
    }
    // Show the first source; follow another one when the shown source has been silent for 5 s.
    const shown = currentStream(), now = performance.now();
    if (!shown || (shown !== s && now - shown.lastWrite > 5000) || ecg.source === f.source) {
      if (ecg.source !== f.source) ecg.controlsDirty = true;
      ecg.source = f.source; ecg.dirty = true;
    }
    s.lastWrite = now;
    // The source restarted (its sample numbers went back by more than a second): start afresh.
    if (s.writeEnd !== null && first + n < s.writeEnd - rate) {
      for (const buf of s.leads.values()) buf.fill(NaN);
      s.writeEnd = null; s.pen = null;
    }
    for (const name of f.leads) {
      if (typeof name === 'string' && !s.leads.has(name) && s.leads.size < 16) {
        s.leads.set(name, new Float32Array(s.cap).fill(NaN));
        ecg.controlsDirty = true;
      }
    }
    if (s.writeEnd === null) { s.writeEnd = first; s.start = first; }
    const end = Math.max(s.writeEnd, first + n), lo = end - s.cap;
    for (const [name, buf] of s.leads) {
      for (let i = Math.max(s.writeEnd, lo); i < first; i++) buf[i % s.cap] = NaN; // lost samples
      const li = f.leads.indexOf(name), mv = li >= 0 && Array.isArray(f.mv[li]) ? f.mv[li] : null;
      for (let k = Math.max(0, lo - first); k < n; k++) {
        const v = mv ? mv[k] : NaN;
        buf[(first + k) % s.cap] = typeof v === 'number' ? v : NaN;
      }
    }
    s.writeEnd = end;
  }

  function currentStream() { return ecg.source === null ? null : ecg.streams.get(ecg.source) || null; }

  // Moves the pen of the shown stream at the real sample rate, gently faster or slower to keep
  // START_LAG_S of buffer against clock drift; after a stall (or a history burst) it jumps ahead.
  function advance(s, now) {
    const dt = s.lastT === null ? 0 : Math.min((now - s.lastT) / 1000, 0.25);
    s.lastT = now;
    if (s.writeEnd === null) return;
    const target = s.writeEnd - START_LAG_S * s.rate;
    if (s.pen === null) {
      if (target < s.start) return; // wait until half a second is buffered
      s.pen = target; ecg.dirty = true; return;
    }
    if (s.writeEnd - s.pen > MAX_LAG_S * s.rate || s.pen > s.writeEnd) { s.pen = target; ecg.dirty = true; return; }
    const lag = (s.writeEnd - s.pen) / s.rate;
    const speed = 1 + Math.max(-0.05, Math.min(0.05, (lag - START_LAG_S) * 0.05));
    const next = Math.min(s.writeEnd, s.pen + dt * s.rate * speed);
    const drawn = Math.floor(next) - Math.floor(s.pen);
    if (drawn > 0) { T.ecgSamplesDrawn += drawn; ecg.dirty = true; }
    s.pen = next;
  }

  function tick(now) {
    requestAnimationFrame(tick);
    const s = currentStream();
    if (s) advance(s, now);
    if (ecg.controlsDirty) { ecg.controlsDirty = false; updateEcgControls(s); }
    if (ecg.dirty) { ecg.dirty = false; drawEcg(s); }
  }

  function fitCanvas(c) {
    const dpr = window.devicePixelRatio || 1, w = c.clientWidth, h = c.clientHeight;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr); c.height = Math.round(h * dpr);
    }
    const ctx = c.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    return { ctx, w, h };
  }

  function drawEcg(s) {
    const c = $('ecg');
    const { ctx, w, h } = fitCanvas(c);
    if (!s || s.pen === null || w === 0) return;
    ctx.lineWidth = 1.4; ctx.lineJoin = 'round'; ctx.font = '12px system-ui, sans-serif';
    if (ecg.choice === '12') {
      const cw = w / COLUMNS.length, ch = h / 3;
      COLUMNS.forEach((col, ci) => col.forEach((name, ri) => trace(ctx, s, name, ci * cw, ri * ch, cw, ch)));
    } else trace(ctx, s, ecg.choice, 0, 0, w, h);
  }

  // One sweep: sample i sits at x = (i * px per sample) mod width; the samples up to the pen are
  // drawn, and a GAP_MM band ahead of the pen stays erased.
  function trace(ctx, s, name, x0, y0, w, h) {
    const buf = s.leads.get(name);
    ctx.fillStyle = '#9c9';
    ctx.fillText(name || '', x0 + 4, y0 + 13);
    if (!buf) return;
    const pps = MM_PER_S * PX_PER_MM / s.rate, ypm = MM_PER_MV * PX_PER_MM, mid = y0 + h / 2;
    const end = Math.floor(s.pen), span = Math.floor((w - GAP_MM * PX_PER_MM) / pps);
    const lo = Math.max(end - span, s.writeEnd - s.cap, 0);
    ctx.save();
    ctx.beginPath(); ctx.rect(x0, y0, w, h); ctx.clip();
    ctx.beginPath();
    let down = false, prevX = Infinity, x = 0, y = 0;
    for (let i = lo; i < end; i++) {
      const v = buf[i % s.cap];
      if (v !== v) { down = false; continue; } // NaN: no sample
      x = x0 + (i * pps) % w; y = mid - v * ypm;
      if (down && x >= prevX) ctx.lineTo(x, y); else ctx.moveTo(x, y);
      down = true; prevX = x;
    }
    // A trace that stopped is grey, never a green line that looks live.
    ctx.strokeStyle = ecg.stale ? '#777' : '#3f6'; ctx.stroke();
    if (down && !ecg.stale) { ctx.fillStyle = '#cfc'; ctx.fillRect(x - 1.5, y - 1.5, 3, 3); }
    if (ecg.stale) {
      ctx.fillStyle = '#f66'; ctx.font = 'bold 14px system-ui, sans-serif';
      ctx.fillText(ecg.stale === 'call ended' ? 'call ended' : `no ECG signal for ${ecg.stale}`, x0 + 40, y0 + 14);
    }
    ctx.restore();
  }

  // Rebuilds the <select>s; runs only when a source or a lead appears, or the source is changed.
  function updateEcgControls(s) {
    const sources = [...ecg.streams.keys()];
    let sel = $('ecg-source');
    sel.textContent = '';
    for (const src of sources) {
      const o = document.createElement('option'); o.value = String(src); o.textContent = `source ${src}`; sel.appendChild(o);
    }
    sel.value = String(ecg.source);
    sel.hidden = sources.length < 2;
    const leads = s ? [...s.leads.keys()] : [];
    const has12 = TWELVE.every((l) => leads.includes(l));
    if (!(ecg.choice === '12' ? has12 : leads.includes(ecg.choice))) {
      ecg.choice = ['II', 'MLII'].find((l) => leads.includes(l)) || leads[0] || null;
    }
    sel = $('ecg-lead');
    sel.textContent = '';
    for (const l of leads) {
      const o = document.createElement('option'); o.value = l; o.textContent = `Lead ${l}`; sel.appendChild(o);
    }
    if (has12) {
      const o = document.createElement('option'); o.value = '12'; o.textContent = '12-lead'; sel.appendChild(o);
    }
    if (ecg.choice !== null) sel.value = ecg.choice;
    $('ecg').dataset.layout = ecg.choice === '12' ? '12' : '1';
    ecg.dirty = true;
  }

  // ---- GPS ----

  function addFix(f) {
    const lat = Number(f.lat), lon = Number(f.lon);
    if (!(Math.abs(lat) <= 90 && Math.abs(lon) <= 180)) return;
    T.gpsFixes++;
    gps.last = f; gps.got = performance.now();
    gps.points.push(lat, lon);
    if (gps.points.length > 2 * MAX_GPS_POINTS) { // thin out the older half, keep the latest fix
      const p = gps.points, out = [];
      for (let i = 0; i < p.length - 2; i += 4) out.push(p[i], p[i + 1]);
      out.push(p[p.length - 2], p[p.length - 1]);
      gps.points = out;
    }
    gps.dirty = true;
  }

  function drawTrack() {
    const { ctx, w, h } = fitCanvas($('gps-track'));
    const p = gps.points;
    if (p.length < 2 || w === 0) return;
    let minLat = Infinity, maxLat = -Infinity, minLon = Infinity, maxLon = -Infinity;
    for (let i = 0; i < p.length; i += 2) {
      minLat = Math.min(minLat, p[i]); maxLat = Math.max(maxLat, p[i]);
      minLon = Math.min(minLon, p[i + 1]); maxLon = Math.max(maxLon, p[i + 1]);
    }
    const k = Math.cos(((minLat + maxLat) / 2) * Math.PI / 180); // equirectangular
    const spanX = Math.max((maxLon - minLon) * k, 0.0005), spanY = Math.max(maxLat - minLat, 0.0005); // >= ~50 m
    const m = 8, scale = Math.min((w - 2 * m) / spanX, (h - 2 * m) / spanY);
    const cx = (minLon + maxLon) / 2, cy = (minLat + maxLat) / 2;
    const X = (lon) => w / 2 + (lon - cx) * k * scale, Y = (lat) => h / 2 - (lat - cy) * scale;
    // No map tiles reach a closed field network: a metric grid gives the scale instead
    // (a degree of latitude is 111.32 km), with north up.
    const pxPerM = scale / 111320;
    const step = [10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000]
      .find((s) => s * pxPerM >= 40) || 100000;
    const stepPx = step * pxPerM;
    ctx.beginPath();
    for (let x = (w / 2) % stepPx; x < w; x += stepPx) { ctx.moveTo(x, 0); ctx.lineTo(x, h); }
    for (let y = (h / 2) % stepPx; y < h; y += stepPx) { ctx.moveTo(0, y); ctx.lineTo(w, y); }
    ctx.strokeStyle = 'rgba(120, 170, 120, .25)'; ctx.lineWidth = 1; ctx.stroke();
    ctx.fillStyle = '#9b9'; ctx.font = '11px sans-serif';
    ctx.fillText(`grid ${step >= 1000 ? `${step / 1000} km` : `${step} m`}`, 6, h - 6);
    ctx.fillText('N ↑', w - 30, 14);
    T.gpsGridM = step;
    ctx.beginPath();
    for (let i = 0; i < p.length; i += 2) {
      if (i === 0) ctx.moveTo(X(p[i + 1]), Y(p[i])); else ctx.lineTo(X(p[i + 1]), Y(p[i]));
    }
    ctx.strokeStyle = '#6af'; ctx.lineWidth = 2; ctx.lineJoin = 'round'; ctx.stroke();
    ctx.beginPath();
    ctx.arc(X(p[p.length - 1]), Y(p[p.length - 2]), 5, 0, 2 * Math.PI);
    ctx.fillStyle = '#f44'; ctx.fill(); ctx.strokeStyle = '#fff'; ctx.lineWidth = 1.5; ctx.stroke();
  }

  // ---- chat ----

  function pushChat(item) {
    chat.pending.push(item);
    if (chat.pending.length > MAX_CHAT_ITEMS) chat.pending.shift();
  }

  function sendChat(e) {
    e.preventDefault();
    const input = $('chat-text');
    const text = input.value.trim().slice(0, 1000);
    const ws = window.medsfu && window.medsfu.ws;
    if (!text || !ws || ws.readyState !== 1) return;
    ws.send(JSON.stringify({ type: 'chat', text }));
    input.value = '';
  }

  // ---- text panels: batched, also while the page is hidden (setTimeout, not rAF) ----

  function schedule() { if (flushTimer === null) flushTimer = setTimeout(flush, 30); }

  const fmt = (v, unit) => (unit === '°C' || unit === 'kPa' ? v.toFixed(1) : String(Math.round(v)));

  function flush() {
    flushTimer = null;
    const st = $('tele-state');
    st.dataset.state = T.ended ? 'ended' : T.lost ? 'stale' : T.live ? 'live' : T.frames ? 'history' : 'idle';
    st.textContent = { ended: 'call ended', stale: 'link lost', live: 'live', history: 'replaying history', idle: 'no telemetry' }[st.dataset.state];

    for (const row of document.querySelectorAll('#vitals tr[data-vital]')) {
      const cells = row.querySelectorAll('td');
      if (row.dataset.vital === 'nibp') {
        const [sys, dia, mean] = ['nibp_systolic', 'nibp_diastolic', 'nibp_mean'].map((k) => vitals.get(k));
        const any = sys || dia || mean;
        const part = (x) => (x ? fmt(x.value, x.unit) : '–');
        cells[0].textContent = any ? `${part(sys)}/${part(dia)} (${part(mean)})` : '—';
        cells[1].textContent = any ? (any.unit || 'mmHg') : '';
        cells[2].textContent = any ? hms(Math.max(...[sys, dia, mean].filter(Boolean).map((x) => Number(x.at)))) : '';
      } else {
        const x = vitals.get(row.dataset.vital);
        cells[0].textContent = x ? fmt(x.value, x.unit) : '—';
        cells[1].textContent = x ? (x.unit || '') : '';
        cells[2].textContent = x ? hms(x.at) : '';
      }
    }

    const vs = $('vehicle-status');
    vs.dataset.status = statusInfo ? statusInfo.status : '';
    vs.textContent = statusInfo ? `${STATUS_LABELS[statusInfo.status] || statusInfo.status} · ${hms(statusInfo.at)}` : 'no vehicle status';

    if (gps.dirty) {
      gps.dirty = false;
      const g = gps.last;
      $('gps-text').textContent = g
        ? `${Number(g.lat).toFixed(5)}, ${Number(g.lon).toFixed(5)} · ${Math.round(Number(g.speed_mps) * 3.6)} km/h`
          + (Number.isFinite(Number(g.accuracy_m)) ? ` · ±${Math.round(g.accuracy_m)} m` : '') + ` · ${hms(g.captured_at_us)}`
        : 'no position';
      drawTrack();
    }

    const log = $('chat-log');
    if (chat.clear) { log.textContent = ''; chat.clear = false; }
    if (chat.pending.length) {
      const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 20;
      const frag = document.createDocumentFragment();
      for (const c of chat.pending) {
        const li = document.createElement('li');
        const t = document.createElement('time'); t.textContent = hms(c.at); li.appendChild(t);
        if (c.note !== undefined) { li.className = 'note'; li.appendChild(document.createTextNode(c.note)); } else {
          const a = document.createElement('b'); a.textContent = `${c.author}: `; li.appendChild(a);
          li.appendChild(document.createTextNode(c.text));
        }
        frag.appendChild(li);
      }
      chat.pending = [];
      log.appendChild(frag);
      while (log.childElementCount > MAX_CHAT_ITEMS) log.firstElementChild.remove();
      if (atBottom) log.scrollTop = log.scrollHeight;
    }
  }

  // ---- staleness (called by app.js four times a second) ----

  const ago = (ms) => (ms < 60000 ? `${Math.floor(ms / 1000)} s ago` : `${Math.floor(ms / 60000)} min ago`);
  const clock = (ms) => { const s = Math.floor(ms / 1000); return `${Math.floor(s / 60)}:${pad(s % 60)}`; };

  // Marks what has not been updated within `lim` ({ media, vitals } ms): the ECG trace, each
  // vital, the position; says whether the link (any telemetry) is lost and for how long.
  function staleness(now, lim) {
    const out = { frames: T.frames, lost: false, age: null, stale: [], lastCaptured: lastCapturedUs === null ? null : hms(lastCapturedUs) };
    if (T.ended || lastArrival === null) return out;
    out.age = now - lastArrival;
    out.lost = out.age > lim.media;
    if (out.lost !== T.lost) { T.lost = out.lost; schedule(); }
    const s = currentStream();
    const ecgAge = s ? now - s.lastWrite : null;
    const ecgStale = ecgAge !== null && ecgAge > lim.media ? clock(ecgAge) : false;
    if (ecgStale !== ecg.stale) { ecg.stale = ecgStale; ecg.dirty = true; }
    if (ecgStale) out.stale.push('ECG');
    let vitalsStale = false;
    for (const row of document.querySelectorAll('#vitals tr[data-vital]')) {
      const keys = row.dataset.vital === 'nibp' ? ['nibp_systolic', 'nibp_diastolic', 'nibp_mean'] : [row.dataset.vital];
      const got = Math.max(...keys.map((k) => (vitals.get(k) ? vitals.get(k).got : -Infinity)));
      const age = Number.isFinite(got) ? now - got : null;
      const stale = age !== null && (age > lim.vitals || out.lost);
      row.classList.toggle('stale', stale);
      row.querySelector('td.age').textContent = age === null ? '' : `received ${ago(age)}`;
      vitalsStale = vitalsStale || stale;
    }
    if (vitalsStale) out.stale.push('vitals');
    const gpsStale = gps.got !== undefined && (now - gps.got > lim.vitals || out.lost);
    const gt = $('gps-text');
    gt.classList.toggle('stale', gpsStale);
    gt.dataset.age = gps.got === undefined ? '' : ago(now - gps.got);
    if (gpsStale) out.stale.push('position');
    return out;
  }

  // The call ended: nothing may look live any more.
  function end() {
    T.ended = true; T.live = false; ecg.stale = 'call ended'; ecg.dirty = true; schedule();
  }

  $('ecg-lead').onchange = (e) => { ecg.choice = e.target.value; $('ecg').dataset.layout = ecg.choice === '12' ? '12' : '1'; ecg.dirty = true; };
  $('ecg-source').onchange = (e) => {
    const src = [...ecg.streams.keys()].find((k) => String(k) === e.target.value);
    if (src !== undefined) { ecg.source = src; ecg.controlsDirty = true; ecg.dirty = true; }
  };
  $('chat-form').onsubmit = sendChat;
  if (window.ResizeObserver) {
    new ResizeObserver(() => { ecg.dirty = true; gps.dirty = true; schedule(); }).observe($('patient'));
  }

  reset();
  window.medsfuTelemetryUi = { onMessage, reset, staleness, end };
})();
