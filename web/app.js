// medsfu consultation page: joins a room over the signalling WebSocket (docs/signalling.md),
// publishes on one RTCPeerConnection (we offer) and receives on another (the server offers).
'use strict';

const $ = (id) => document.getElementById(id);
const state = {
  ws: null, me: null, participants: new Map(), tracks: new Map(),
  pubPc: null, subPc: null, midToTrack: new Map(), pending: [], published: new Map(),
  subscribedAt: new Map(), firstFrameAt: new Map(), errors: [], publishing: Promise.resolve(),
  answerWaiter: null, speaker: null, speakers: [],
  camera: { pan_deg: 0, zoom: 1, sector: 0 }, cameraStates: 0,
  recording: false, screenshots: [], calls: new Map(), room: null, token: null,
  // The room's documents as last listed; documentsOpened: names opened in the viewer.
  documents: [], documentsOpened: [],
  // cameraGrant: the lead lent us the camera; granted: whom we (as lead) lent it to.
  cameraGrant: false, granted: new Set(),
  // The control API session (docs/control.md): a login token, kept for this tab only.
  api: {
    token: sessionStorage.getItem('medsfu.api'), user: sessionStorage.getItem('medsfu.user'),
    role: sessionStorage.getItem('medsfu.role'),
  },
  // autoMic: join with the microphone on (calls taken or placed from the centre).
  autoMic: false, muted: false, micLevel: 0, ended: null,
  // Silences (ms) after which streams are marked stale; the server's `joined` says.
  staleAfter: { media: 3000, vitals: 10000 },
  // Received video tiles: track -> { div, note, label, lastFrame }; link-loss history for tests.
  videoTiles: new Map(), link: { lostAt: null, events: [] },
};
window.medsfu = state; // read by the end-to-end tests

const CONN_TEXT = {
  idle: 'not signed in', ready: 'signed in', connecting: 'connecting…', joined: 'in the call',
  connected: 'media connected', ended: 'call ended', closed: 'disconnected', failed: 'media failed',
};
function setConn(s) { const c = $('conn'); c.dataset.state = s; c.textContent = CONN_TEXT[s] || s; }
// Errors go where the person is looking: the form they used, the centre, or the room.
function errorSlot() {
  if (!$('room-panel').hidden) return $('error');
  if (!$('centre').hidden) return $('centre-error');
  return $('login-error');
}
function showError(msg, slot) { state.errors.push(msg); (slot || errorSlot()).textContent = msg; }
// m:ss of a duration in ms.
function dur(ms) { const s = Math.max(0, Math.floor(ms / 1000)); return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`; }
function send(msg) { if (state.ws && state.ws.readyState === 1) state.ws.send(JSON.stringify(msg)); }

// The control API: JSON in and out; errors are { code, message }.
async function apiCall(method, path, body) {
  const headers = { authorization: `Bearer ${state.api.token}` };
  if (body) headers['content-type'] = 'application/json';
  const r = await fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined });
  const text = await r.text();
  const v = text ? JSON.parse(text) : null;
  // An expired or refused login: back to the sign-in form.
  if (r.status === 401 || (v && v.code === 'account_disabled')) signOut();
  if (!r.ok) throw new Error(v ? `${v.code}: ${v.message}` : `HTTP ${r.status}`);
  return v;
}

function signOut() {
  for (const k of ['api', 'user', 'role']) sessionStorage.removeItem(`medsfu.${k}`);
  state.api = { token: null, user: null, role: null };
  if (state.callFeed) { state.callFeed.close(); state.callFeed = null; }
  state.calls.clear(); renderCalls();
  $('login-form').hidden = false; $('crew-form').hidden = false; $('centre').hidden = true;
  $('whoami').textContent = '';
  if (!state.me) setConn('idle');
}
const seg = encodeURIComponent;

// Signs in (a password, or a crew PIN on a registered device); a refusal is shown under
// the form that was used.
async function login(path, body, slot) {
  slot.textContent = '';
  let r, v;
  try {
    r = await fetch(path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    v = await r.json().catch(() => null);
  } catch (e) { showError(`sign-in failed: ${e.message || e}`, slot); return; }
  if (!r.ok) {
    const why = { login_failed: 'wrong user name or password', device_unknown: 'this device is not registered' };
    showError(v ? `Sign-in refused: ${why[v.code] || v.message} (${v.code})` : `Sign-in failed: HTTP ${r.status}`, slot);
    return;
  }
  state.api = { token: v.token, user: v.user, role: v.role };
  for (const k of ['token', 'user', 'role']) sessionStorage.setItem(`medsfu.${k === 'token' ? 'api' : k}`, v[k]);
  // A sign-in is a click: the ringer may play sound from now on.
  try { state.audio = state.audio || new AudioContext(); } catch (e) { /* no sound */ }
  showCentre();
}

// The centre: incoming calls live (server-sent events) and the rooms one belongs to.
function showCentre() {
  $('login-form').hidden = true; $('crew-form').hidden = true; $('centre').hidden = false;
  $('whoami').textContent = state.api.user ? `${state.api.user}${state.api.role ? ` (${state.api.role})` : ''}` : '';
  if (!state.me) setConn('ready');
  // The crew places calls; the centre (consultants, dispatchers) takes them.
  const crew = state.api.role === 'team';
  $('crew-call').hidden = !crew; $('incoming').hidden = crew;
  if (crew) { refreshRooms(); return; }
  const es = new EventSource(`/api/calls/events?access_token=${encodeURIComponent(state.api.token)}`);
  // Every (re)connection starts with the ringing calls: forget the old list then.
  es.onopen = () => { state.calls.clear(); renderCalls(); };
  const onCall = (ev) => {
    const m = JSON.parse(ev.data);
    if (m.type === 'call') state.calls.set(m.room, m); else state.calls.delete(m.room);
    renderCalls(); refreshRooms();
  };
  for (const t of ['call', 'call_taken', 'call_closed']) es.addEventListener(t, onCall);
  es.addEventListener('resync', () => { es.close(); state.calls.clear(); showCentre(); });
  // The server ended the feed: the sign-in was revoked (account disabled, secret changed,
  // device revoked). Back to the sign-in form, saying why.
  es.addEventListener('ended', (ev) => {
    const m = JSON.parse(ev.data);
    signOut(); showError(`signed out: ${String(m.reason || 'ended').replace(/_/g, ' ')}`);
  });
  es.onerror = () => { if (es.readyState === 2) showError('incoming calls: connection lost'); };
  state.callFeed = es;
  refreshRooms();
}

// Each ringing call is a card: who calls, how long they have waited, Accept. While calls
// ring the title says so and a tone sounds every two seconds.
function renderCalls() {
  const ul = $('calls'); ul.textContent = '';
  if (!state.calls.size) {
    const li = document.createElement('li'); li.className = 'hint'; li.id = 'no-calls';
    li.textContent = 'no calls waiting'; ul.appendChild(li);
  }
  for (const c of state.calls.values()) {
    if (!c.since) c.since = Number.isFinite(c.opened_at_ms) ? c.opened_at_ms : Date.now();
    const li = document.createElement('li'); li.className = 'call'; li.dataset.room = c.room;
    const who = document.createElement('span'); who.className = 'who';
    who.textContent = c.vehicle ? `Ambulance ${c.vehicle}` : `Crew ${c.by}`;
    const waiting = document.createElement('span'); waiting.className = 'waiting';
    const room = document.createElement('span'); room.className = 'hint'; room.textContent = ` call ${c.room}`;
    const pos = document.createElement('div'); pos.className = 'position'; pos.textContent = where(c.position);
    const b = document.createElement('button'); b.textContent = 'Accept'; b.className = 'accept';
    b.onclick = () => accept(c.room);
    // Dispatchers watch calls ring; only consultants accept them.
    if (state.api.role === 'dispatcher') li.append(who, waiting, room, pos); else li.append(who, waiting, room, b, pos);
    ul.appendChild(li);
  }
  updateWaiting();
}
function updateWaiting() {
  for (const li of document.querySelectorAll('#calls li.call')) {
    const c = state.calls.get(li.dataset.room);
    if (c) li.querySelector('.waiting').textContent = `waiting ${dur(Date.now() - c.since)}`;
  }
  for (const s of document.querySelectorAll('#my-rooms .since')) {
    if (s.dataset.since) s.textContent = ` · ${dur(Date.now() - Number(s.dataset.since))}`;
  }
  const n = state.calls.size;
  document.title = n && !state.me ? `(${n}) incoming call - medsfu` : 'medsfu consultation';
}
function ring() {
  if (!state.calls.size || state.me || !state.audio) return;
  try {
    const ctx = state.audio, t = ctx.currentTime;
    if (ctx.state === 'suspended') ctx.resume();
    for (const [f, at] of [[880, 0], [660, 0.25]]) {
      const o = ctx.createOscillator(), g = ctx.createGain();
      o.frequency.value = f; g.gain.setValueAtTime(0.2, t + at); g.gain.setValueAtTime(0, t + at + 0.2);
      o.connect(g).connect(ctx.destination); o.start(t + at); o.stop(t + at + 0.2);
    }
    state.rings = (state.rings || 0) + 1;
  } catch (e) { /* no sound on this device */ }
}
setInterval(updateWaiting, 1000);
setInterval(ring, 2000);

// A position as people read it: degrees to 5 places (about a metre) and its age.
function where(p) {
  if (!p) return 'position unknown';
  const age = Date.now() - p.captured_at_us / 1000;
  return `${p.lat.toFixed(5)}, ${p.lon.toFixed(5)} (${age < 60000 ? `${Math.max(0, Math.round(age / 1000))} s` : dur(age)} ago)`;
}
// Calls in progress: the rooms the caller is in, and for dispatchers every accepted call,
// each with its vehicle, lead, duration and position. Members rejoin; a dispatcher joins
// any of them without an invitation. Ringing calls' positions go onto their cards.
async function refreshRooms() {
  if (!state.api.token) return;
  let rooms;
  try { rooms = await apiCall('GET', '/api/rooms'); } catch (e) { showError(`calls: ${e.message}`); return; }
  state.rooms = rooms;
  for (const r of rooms) {
    const c = state.calls.get(r.name);
    if (c) c.position = r.position;
  }
  renderCalls();
  const ul = $('my-rooms'); ul.textContent = '';
  const active = rooms.filter((r) => r.state === 'active');
  if (!active.length) {
    const li = document.createElement('li'); li.className = 'hint'; li.textContent = 'no call in progress'; ul.appendChild(li);
  }
  for (const r of active) {
    const mine = r.members.some((m) => m.name === state.api.user);
    const li = document.createElement('li'); li.className = 'active-call'; li.dataset.room = r.name;
    const who = document.createElement('span'); who.className = 'who';
    who.textContent = r.vehicle ? `Ambulance ${r.vehicle}` : `Call ${r.name}`;
    const info = document.createElement('span'); info.className = 'info';
    info.textContent = ` · lead ${r.lead || 'none'} · ${r.members.length} in the call`;
    const since = document.createElement('span'); since.className = 'since'; since.dataset.since = r.opened_at_ms || '';
    const pos = document.createElement('span'); pos.className = 'position'; pos.textContent = ` · ${where(r.position)}`;
    const room = document.createElement('span'); room.className = 'hint'; room.textContent = ` ${r.name} `;
    const b = document.createElement('button');
    b.textContent = mine ? 'Join' : 'Join as dispatcher'; b.className = mine ? 'rejoin' : 'join-uninvited';
    b.onclick = async () => {
      try {
        if (!mine) await apiCall('POST', `/api/rooms/${seg(r.name)}/join`);
        const t = await apiCall('POST', `/api/rooms/${seg(r.name)}/token`);
        join(r.name, t.token, !mine);
      } catch (e) { showError(e.message); }
    };
    // Only dispatchers may join uninvited; others see the calls they are in.
    if (mine || state.api.role === 'dispatcher') li.append(who, info, since, pos, room, b); else li.append(who, info, since, pos, room);
    ul.appendChild(li);
  }
  updateWaiting();
}
// While signed in and not in a call, positions and calls stay fresh.
setInterval(() => { if (state.api.token && !state.me && state.api.role !== 'team') refreshRooms(); }, 10000);

async function accept(room) {
  try {
    const t = await apiCall('POST', `/api/calls/${seg(room)}/accept`);
    join(room, t.token, true);
  } catch (e) { showError(e.message); }
}

// The crew's one button: open a call and wait in it, microphone on, for a doctor.
async function callDoctor() {
  try {
    const r = await apiCall('POST', '/api/calls');
    const t = await apiCall('POST', `/api/rooms/${seg(r.name)}/token`);
    join(r.name, t.token, true);
  } catch (e) { showError(`call: ${e.message}`); }
}

// Joins `room`; `mic`: with the microphone on (asked for once).
function join(room, token, mic) {
  state.room = room; state.token = token; state.autoMic = !!mic;
  const proto = location.protocol === 'https:' ? 'wss' : 'ws';
  const ws = new WebSocket(`${proto}://${location.host}/ws`);
  state.ws = ws;
  setConn('connecting');
  // Say what this browser decodes: a browser without H.265 gets H.264 renditions.
  const codecs = ['audio', 'video'].flatMap((k) =>
    ((window.RTCRtpReceiver && RTCRtpReceiver.getCapabilities(k)) || { codecs: [] }).codecs.map((c) => c.mimeType));
  ws.onopen = () => send({ type: 'join', token, codecs: [...new Set(codecs)] });
  // A closed socket without a `left` is a lost connection: never leave the page looking live.
  ws.onclose = () => { if (!state.ended) showEnded('connection_lost'); };
  ws.onmessage = (ev) => onMessage(JSON.parse(ev.data));
  $('room-name').textContent = room;
}

async function onMessage(m) {
  switch (m.type) {
    case 'joined':
      state.me = m;
      $('join-panel').hidden = true; $('room-panel').hidden = false;
      $('publish-cam').hidden = !m.may_publish.includes('camera');
      $('publish-mic').hidden = !m.may_publish.includes('microphone');
      window.medsfuTelemetryUi.reset(); // telemetry history is replayed after every join
      if (m.stale_after_ms) state.staleAfter = m.stale_after_ms;
      addParticipant({ participant: m.participant, identity: m.identity + ' (you)', role: m.role });
      setConn('joined'); updateWaiting(); refreshDocuments();
      {
        const want = (new URLSearchParams(location.search).get('publish') || '').split(',');
        if (state.autoMic && !want.includes('microphone')) want.unshift('microphone');
        for (const what of want) {
          if ((what === 'camera' || what === 'microphone') && m.may_publish.includes(what)) await publish(what);
        }
      }
      break;
    case 'participant_joined': addParticipant(m); break;
    case 'participant_left': state.participants.delete(m.participant); renderParticipants(); break;
    case 'role_changed': {
      const p = state.participants.get(m.participant);
      if (p) p.role = m.role;
      if (state.me && m.participant === state.me.participant) {
        state.me.role = m.role; notice(`you are ${m.role} now`);
        state.granted.clear(); // a new lead starts with no grants given
      }
      renderParticipants();
      break;
    }
    case 'camera_grant':
      state.cameraGrant = m.camera;
      notice(m.camera ? 'the lead lent you the camera' : 'the lead took the camera back');
      renderParticipants();
      break;
    case 'recording':
      if (state.recording && !m.active) refreshDocuments(); // the files are complete now
      state.recording = m.active; $('rec-indicator').hidden = !m.active;
      $('record').textContent = m.active ? 'Stop recording' : 'Start recording';
      break;
    case 'screenshot':
      state.screenshots.push(m);
      if (m.file) { notice(`screenshot stored: ${m.file}`); refreshDocuments(); } else showError(`screenshot: ${m.error}`);
      break;
    case 'ecg_snapshot':
      if (m.file) { notice(`ECG snapshot stored: ${m.file}`); refreshDocuments(); }
      break;
    case 'camera_state':
      state.camera = { pan_deg: m.pan_deg, zoom: m.zoom, sector: m.sector };
      state.cameraStates++;
      $('cam-state').textContent = `pan ${Math.round(m.pan_deg)}°, zoom ${m.zoom.toFixed(1)}×` +
        (m.sector ? `, sector ${m.sector}` : '');
      $('cam-sector').value = String(m.sector);
      $('cam-pan').value = String(m.pan_deg);
      for (const b of document.querySelectorAll('#cam-sectors button')) {
        b.setAttribute('aria-pressed', String(Number(b.dataset.sector) === m.sector));
      }
      break;
    case 'camera_sent': break;
    case 'track_published': state.tracks.set(m.track, m); break;
    case 'track_unpublished': removeTile(m.track); state.tracks.delete(m.track); break;
    case 'active_speaker': state.speaker = m.participant; state.speakers.push(m.participant); renderParticipants(); break;
    case 'offer':
      try { await onServerOffer(m); } catch (e) { showError(`subscribing: ${e.message || e}`); }
      break;
    case 'publish_answer':
      await state.pubPc.setRemoteDescription({ type: 'answer', sdp: m.sdp });
      if (state.answerWaiter) { state.answerWaiter(); state.answerWaiter = null; }
      break;
    case 'error':
      showError(`${m.code}: ${m.message}`);
      // A refused publish must not block the next one.
      if (state.answerWaiter) { state.answerWaiter(); state.answerWaiter = null; }
      break;
    case 'telemetry': case 'telemetry_live': window.medsfuTelemetryUi.onMessage(m); break; // web/telemetry.js
    case 'left': showEnded(m.reason); break;
    default: break;
  }
}

function addParticipant(p) { state.participants.set(p.participant, p); renderParticipants(); }
function notice(msg) { $('notice').textContent = msg; }

// The lead steers the roof camera of the room's vehicle (the server checks the role too).
function vehicle() {
  // "~h264" participants are the server's transcoders, not vehicles.
  for (const p of state.participants.values()) {
    if (p.role === 'vehicle' && !p.identity.endsWith('~h264')) return p.participant;
  }
  return null;
}
function steer(change) {
  const v = vehicle();
  if (v) send({ type: 'camera', vehicle: v, ...change });
}
function clamp(x, lo, hi) { return Math.min(hi, Math.max(lo, x)); }
$('cam-left').onclick = () => steer({ pan_deg: clamp(state.camera.pan_deg - 15, -60, 60) });
$('cam-right').onclick = () => steer({ pan_deg: clamp(state.camera.pan_deg + 15, -60, 60) });
$('cam-zoom-in').onclick = () => steer({ zoom: clamp(state.camera.zoom + 0.5, 1, 4) });
$('cam-zoom-out').onclick = () => steer({ zoom: clamp(state.camera.zoom - 0.5, 1, 4) });
$('cam-sector').onchange = (e) => steer({ sector: Number(e.target.value) });
$('cam-pan').onchange = (e) => steer({ pan_deg: Number(e.target.value) });
for (const b of document.querySelectorAll('#cam-sectors button')) {
  b.onclick = () => steer({ sector: Number(b.dataset.sector) });
}
// The server takes the screenshot from the roof camera's stream as it is: the vehicle has
// already applied the sector (asking the server for it again would crop a ninth of a ninth).
function roofTrack() {
  for (const t of state.tracks.values()) {
    if (t.source === 'roof_camera' && !t.identity.endsWith('~h264')) return t.track;
  }
  return null;
}
$('cam-screenshot').onclick = () => {
  const t = roofTrack();
  if (t) send({ type: 'screenshot', track: t });
};
$('ecg-snapshot').onclick = () => send({ type: 'ecg_snapshot', seconds: 10 });

// The room's documents (screenshots, ECG snapshots, recordings), read with the room token.
async function roomFetch(path) {
  const r = await fetch(`/api/rooms/${seg(state.room)}/${path}`, { headers: { authorization: `Bearer ${state.token}` } });
  if (!r.ok) {
    let msg = `HTTP ${r.status}`;
    try { const j = await r.json(); msg = j.message || j.error || msg; } catch (_) { /* not JSON */ }
    throw new Error(msg);
  }
  return r;
}
function size(bytes) {
  return bytes >= 1 << 20 ? `${(bytes / (1 << 20)).toFixed(1)} MiB` : `${Math.max(1, Math.round(bytes / 1024))} KiB`;
}
const DOC_KIND = { screenshot: 'screenshot', ecg_snapshot: 'ECG snapshot', video: 'video', audio: 'audio', metadata: 'details' };
async function refreshDocuments() {
  if (!state.room || !state.token) return;
  try {
    state.documents = await (await roomFetch('documents')).json();
  } catch (e) { showError(`documents: ${e.message}`); return; }
  const ul = $('documents'); ul.textContent = '';
  if (!state.documents.length) {
    const li = document.createElement('li'); li.className = 'hint'; li.textContent = 'no documents yet'; ul.appendChild(li);
  }
  for (const d of state.documents) {
    if (d.kind === 'metadata') continue;
    const li = document.createElement('li'); li.dataset.name = d.name; li.dataset.kind = d.kind;
    const b = document.createElement('button'); b.className = 'doc';
    b.textContent = `${DOC_KIND[d.kind] || d.kind} ${new Date(d.modified_ms).toLocaleTimeString()}`;
    b.title = d.name; b.onclick = () => openDocument(d);
    const meta = document.createElement('span'); meta.className = 'meta'; meta.textContent = size(d.bytes);
    li.append(b, meta); ul.appendChild(li);
  }
}
// Opens a document: pictures, video and sound in the viewer, PDFs as a download (the page's
// security policy keeps other documents out of it).
async function openDocument(d) {
  let blob;
  try { blob = await (await roomFetch(`documents/${seg(d.name)}`)).blob(); } catch (e) { showError(`${d.name}: ${e.message}`); return; }
  const url = URL.createObjectURL(blob);
  state.documentsOpened.push(d.name);
  if (d.kind === 'ecg_snapshot' || d.kind === 'metadata') {
    const a = document.createElement('a'); a.href = url; a.download = d.name; a.click();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    return;
  }
  for (const id of ['doc-img', 'doc-video', 'doc-audio']) {
    const el = $(id); el.hidden = true;
    if (el.src.startsWith('blob:')) URL.revokeObjectURL(el.src);
    el.removeAttribute('src');
  }
  const el = $({ screenshot: 'doc-img', video: 'doc-video', audio: 'doc-audio' }[d.kind]);
  el.src = url; el.hidden = false;
  $('doc-title').textContent = `${DOC_KIND[d.kind]} · ${new Date(d.modified_ms).toLocaleString()}`;
  $('doc-viewer').showModal();
}
$('doc-close').onclick = () => { for (const id of ['doc-video', 'doc-audio']) $(id).pause(); $('doc-viewer').close(); };
$('record').onclick = () => send({ type: 'record', action: state.recording ? 'stop' : 'start' });
$('invite-form').onsubmit = async (e) => {
  e.preventDefault();
  try {
    const m = await apiCall('POST', `/api/rooms/${seg(state.room)}/members`, { user: $('invite-user').value });
    notice(`${m.name} invited as ${m.role}`); $('invite-user').value = '';
  } catch (err) { showError(err.message); }
};
async function memberAction(method, path, body, done) {
  try { await apiCall(method, path, body); notice(done); } catch (e) { showError(e.message); }
}
function renderParticipants() {
  const role = state.me && state.me.role;
  $('camera-controls').hidden = !((role === 'lead' || (role === 'consultant' && state.cameraGrant)) && vehicle());
  $('record').hidden = !(role === 'lead' || role === 'team');
  $('ecg-snapshot').hidden = !['team', 'lead', 'consultant', 'dispatcher'].includes(role);
  // Ending the call is the control API's (the lead and the crew may): with a login session.
  $('end-call').hidden = !(state.api.token && (role === 'lead' || role === 'team'));
  // Membership is managed through the control API: only with a login session.
  const manages = role === 'lead' && !!state.api.token;
  $('invite-form').hidden = !manages;
  const ul = $('participants'); ul.textContent = '';
  for (const p of state.participants.values()) {
    const li = document.createElement('li');
    li.dataset.participant = p.participant;
    if (p.participant === state.speaker) li.className = 'speaking';
    li.textContent = p.identity;
    const r = document.createElement('span'); r.className = 'role'; r.textContent = p.role;
    li.appendChild(r);
    const mine = state.me && p.participant === state.me.participant;
    if (manages && !mine && p.role === 'consultant') {
      const b = document.createElement('button'); b.textContent = 'Hand over lead'; b.className = 'hand-over';
      b.onclick = () => memberAction('POST', `/api/rooms/${seg(state.room)}/lead`, { user: p.identity },
        `lead handed to ${p.identity}`);
      li.appendChild(b);
    }
    if (manages && !mine && p.role === 'consultant') {
      const lent = state.granted.has(p.identity);
      const b = document.createElement('button'); b.className = 'grant';
      b.textContent = lent ? 'Take camera back' : 'Lend camera';
      b.onclick = async () => {
        try {
          await apiCall('POST', `/api/rooms/${seg(state.room)}/grants`, { user: p.identity, camera: !lent });
          if (lent) state.granted.delete(p.identity); else state.granted.add(p.identity);
          renderParticipants();
        } catch (e) { showError(e.message); }
      };
      li.appendChild(b);
    }
    if (manages && !mine && (p.role === 'consultant' || p.role === 'dispatcher')) {
      const b = document.createElement('button'); b.textContent = 'Remove'; b.className = 'remove';
      b.onclick = () => memberAction('DELETE', `/api/rooms/${seg(state.room)}/members/${seg(p.identity)}`, null,
        `${p.identity} removed`);
      li.appendChild(b);
    }
    ul.appendChild(li);
  }
}

function newPc() {
  const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
  pc.onconnectionstatechange = () => setConn(pc.connectionState);
  return pc;
}

// `?video_codec=VP8` (or H264, H265) offers the camera in that codec first, for devices
// that encode one codec better than another; the server answers with the first it takes.
function preferCodec(tr, kind) {
  const want = new URLSearchParams(location.search).get('video_codec');
  if (kind !== 'video' || !want || !tr.setCodecPreferences) return;
  const all = RTCRtpReceiver.getCapabilities('video').codecs;
  const first = all.filter((c) => c.mimeType.toLowerCase() === `video/${want.toLowerCase()}`);
  if (first.length) tr.setCodecPreferences([...first, ...all.filter((c) => !first.includes(c))]);
}

// Publishes one at a time: each offer waits for the previous answer (no glare with ourselves).
function publish(source) {
  state.publishing = state.publishing.then(() => publishOne(source));
  return state.publishing;
}

async function publishOne(source) {
  try {
    const constraints = source === 'camera'
      ? { video: { width: 640, height: 360 }, audio: false } : { audio: true, video: false };
    const stream = await navigator.mediaDevices.getUserMedia(constraints);
    const track = stream.getTracks()[0];
    if (!state.pubPc) state.pubPc = newPc();
    const tr = state.pubPc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
    preferCodec(tr, track.kind);
    state.published.set(source, tr);
    if (source === 'camera') addTile('local-camera', stream, 'me (camera)', true);
    if (source === 'microphone') micControls(stream, track);
    const offer = await state.pubPc.createOffer();
    await state.pubPc.setLocalDescription(offer);
    const sources = {};
    for (const [s, t] of state.published) sources[t.mid] = s;
    const answered = new Promise((resolve) => { state.answerWaiter = resolve; });
    send({ type: 'publish', sdp: state.pubPc.localDescription.sdp, sources });
    await answered;
  } catch (e) { showError(`publish ${source}: ${e}`); }
}

async function onServerOffer(m) {
  if (!state.subPc) {
    state.subPc = newPc();
    state.subPc.ontrack = (ev) => {
      const mid = ev.transceiver.mid;
      const trackId = state.midToTrack.get(mid);
      const info = state.tracks.get(trackId) || {};
      const stream = new MediaStream([ev.track]);
      // Names people read: "amb-1 · roof camera", not the rendition's internal identity.
      const who = String(info.identity || '?').replace(/~h264$/, '');
      if (ev.track.kind === 'video') addTile(trackId, stream, `${who} · ${String(info.source || 'video').replace(/_/g, ' ')}`);
      else { const a = new Audio(); a.srcObject = stream; a.autoplay = true; a.dataset.track = trackId; document.body.appendChild(a); }
      state.subscribedAt.set(trackId, performance.now());
    };
  }
  for (const t of m.tracks) state.midToTrack.set(t.mid, t.track);
  await state.subPc.setRemoteDescription({ type: 'offer', sdp: m.sdp });
  const answer = await state.subPc.createAnswer();
  await state.subPc.setLocalDescription(answer);
  send({ type: 'answer', sdp: state.subPc.localDescription.sdp });
}

function toggleBig(div) {
  const on = !div.classList.contains('big');
  for (const t of document.querySelectorAll('.tile.big')) t.classList.remove('big');
  div.classList.toggle('big', on);
  if (on && div.requestFullscreen) div.requestFullscreen().catch(() => { /* not allowed: the page's width */ });
  if (!on && document.fullscreenElement) document.exitFullscreen().catch(() => {});
}
document.addEventListener('fullscreenchange', () => {
  if (!document.fullscreenElement) for (const t of document.querySelectorAll('.tile.big')) t.classList.remove('big');
});
document.addEventListener('keydown', (e) => {
  if (e.key === 'Escape') for (const t of document.querySelectorAll('.tile.big')) t.classList.remove('big');
});
function addTile(id, stream, label, muted) {
  removeTile(id);
  const div = document.createElement('div'); div.className = 'tile'; div.dataset.track = id;
  const v = document.createElement('video'); v.autoplay = true; v.playsInline = true; v.muted = true;
  v.srcObject = stream; div.appendChild(v);
  const l = document.createElement('span'); l.className = 'label'; l.textContent = label; div.appendChild(l);
  // Enlarge: the tile fills the screen (the browser's full screen where it allows, else
  // the page's width); a second click or Escape brings it back.
  const big = document.createElement('button'); big.className = 'enlarge'; big.title = 'Full screen';
  big.setAttribute('aria-label', `Full screen: ${label}`); big.textContent = '⛶';
  big.onclick = () => toggleBig(div);
  v.ondblclick = () => toggleBig(div);
  div.appendChild(big);
  if (!muted) {
    // Every decoded frame is noted: a picture silent for staleAfter.media is marked stale.
    const note = document.createElement('span'); note.className = 'stale-note'; note.hidden = true; div.appendChild(note);
    const info = state.tracks.get(id) || {};
    const fromVehicle = [...state.participants.values()].some((p) => p.identity === info.identity && p.role === 'vehicle');
    const t = { div, note, label, lastFrame: null, fromVehicle };
    state.videoTiles.set(id, t);
    const onFrame = () => {
      t.lastFrame = performance.now();
      if (!state.firstFrameAt.has(id)) state.firstFrameAt.set(id, t.lastFrame);
      if (state.videoTiles.get(id) === t) v.requestVideoFrameCallback(onFrame);
    };
    if (v.requestVideoFrameCallback) v.requestVideoFrameCallback(onFrame);
  }
  $('tiles').appendChild(div);
}
function removeTile(id) {
  state.videoTiles.delete(id);
  document.querySelectorAll(`[data-track="${id}"]`).forEach((e) => e.remove());
}

// ---- the microphone: mute button and level ----
function micControls(stream, track) {
  $('publish-mic').hidden = true; $('mute').hidden = false; $('mic-level').hidden = false;
  try {
    const ctx = state.audio || new AudioContext(); state.audio = ctx;
    const an = ctx.createAnalyser(); an.fftSize = 512;
    ctx.createMediaStreamSource(stream).connect(an);
    const buf = new Float32Array(an.fftSize);
    state.micMeter = setInterval(() => {
      an.getFloatTimeDomainData(buf);
      let sum = 0; for (const x of buf) sum += x * x;
      state.micLevel = track.enabled ? Math.min(1, Math.sqrt(sum / buf.length) * 4) : 0;
      $('mic-level').value = state.micLevel;
    }, 100);
  } catch (e) { /* no level meter here */ }
}
$('mute').onclick = () => {
  const tr = state.published.get('microphone'), t = tr && tr.sender.track;
  if (!t) return;
  t.enabled = !t.enabled; state.muted = !t.enabled;
  $('mute').setAttribute('aria-pressed', String(state.muted));
  $('mute').textContent = state.muted ? 'Unmute' : 'Mute';
  notice(state.muted ? 'your microphone is muted' : 'your microphone is on');
};

// ---- staleness: what has not been updated for a while is shown as such ----
function checkStale() {
  if (!state.me || state.ended) return;
  const now = performance.now(), lim = state.staleAfter;
  let videoAge = null;
  for (const t of state.videoTiles.values()) {
    const age = t.lastFrame === null ? null : now - t.lastFrame;
    const stale = age !== null && age > lim.media;
    t.div.classList.toggle('stale', stale); t.note.hidden = !stale;
    if (stale) {
      t.note.textContent = `no picture for ${dur(age)}`;
      if (t.fromVehicle) videoAge = Math.max(videoAge || 0, age);
    }
  }
  const tel = window.medsfuTelemetryUi.staleness(now, lim);
  // The vehicle's link is lost when its telemetry stops (or, without telemetry, its video).
  const lostFor = tel.frames ? (tel.lost ? tel.age : null) : videoAge;
  const b = $('link-banner'), link = state.link;
  if (lostFor !== null) {
    if (link.lostAt === null) { link.lostAt = now - lostFor; link.events.push({ lost: Date.now() }); }
    const what = [...(videoAge !== null ? ['video'] : []), ...tel.stale].join(', ');
    b.dataset.state = 'lost'; b.hidden = false;
    b.textContent = `Link lost ${dur(lostFor)}: ${what || 'data'} not updating` +
      (tel.lastCaptured ? `, last data at ${tel.lastCaptured}` : '');
  } else if (link.lostAt !== null) {
    const was = now - link.lostAt;
    link.lostAt = null; link.events.push({ back: Date.now(), after_ms: was });
    b.dataset.state = 'back'; b.hidden = false; b.textContent = `Link back (lost for ${dur(was)})`;
    clearTimeout(link.hideTimer);
    link.hideTimer = setTimeout(() => { if (link.lostAt === null) b.hidden = true; }, 5000);
  }
}
setInterval(checkStale, 250);

// ---- the end of a call, for whatever reason: nothing left looking live ----
const ENDED = {
  room_closed: ['The call has ended', 'The call was ended for everyone; the room is closed.'],
  left: ['You left the call', 'The call goes on for the others; you can join again from your rooms.'],
  removed: ['You were taken out of the call', 'The lead removed you from this room.'],
  replaced: ['This call continues elsewhere', 'You joined the same call from another page or device.'],
  timeout: ['Connection lost', 'The server stopped hearing from this page.'],
  connection_lost: ['Connection lost', 'The connection to the server closed. Join again to continue.'],
  server_shutdown: ['Server restarting', 'The server is shutting down; join again in a moment.'],
  token_expired: ['Your access expired', 'Sign in again to continue.'],
};
function showEnded(reason) {
  if (state.ended) return;
  state.ended = reason || 'closed';
  for (const pc of [state.pubPc, state.subPc]) if (pc) pc.close();
  for (const tr of state.published.values()) if (tr.sender.track) tr.sender.track.stop();
  clearInterval(state.micMeter);
  if (state.ws && state.ws.readyState <= 1) state.ws.close();
  state.videoTiles.clear();
  document.querySelectorAll('#tiles .tile, audio[data-track]').forEach((e) => e.remove());
  for (const id of ['controls', 'camera-controls', 'invite-form', 'link-banner', 'rec-indicator']) $(id).hidden = true;
  const [title, text] = ENDED[state.ended] || ['Disconnected', `The session ended (${state.ended}).`];
  $('ended-title').textContent = title; $('ended-reason').textContent = text; $('ended').hidden = false;
  setConn('ended');
  window.medsfuTelemetryUi.end();
}
$('ended-back').onclick = () => { location.href = location.pathname; };
$('end-call').onclick = async () => {
  const b = $('end-call');
  // Two clicks: ending a call for everyone must not happen by a slip.
  if (b.dataset.confirm !== '1') {
    b.dataset.confirm = '1'; b.textContent = 'Really end the call for everyone?';
    setTimeout(() => { b.dataset.confirm = ''; b.textContent = 'End call'; }, 5000);
    return;
  }
  try { await apiCall('DELETE', `/api/rooms/${seg(state.room)}`); } catch (e) { showError(`end call: ${e.message}`); }
};

// Frames decoded per received video track, for the tests and the curious.
state.videoStats = async () => {
  if (!state.subPc) return {};
  const out = {};
  const report = await state.subPc.getStats();
  report.forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') {
      out[state.midToTrack.get(s.mid) || s.mid] = { framesDecoded: s.framesDecoded || 0, codec: s.codecId };
    }
  });
  return out;
};

$('join-form').onsubmit = (e) => { e.preventDefault(); join($('room').value, $('token').value); };
$('login-form').onsubmit = (e) => {
  e.preventDefault();
  login('/api/login', { user: $('login-user').value, password: $('login-password').value }, $('login-error'));
};
$('crew-form').onsubmit = (e) => {
  e.preventDefault();
  login('/api/login/crew', { user: $('crew-user').value, pin: $('crew-pin').value, device_token: $('crew-device').value }, $('crew-error'));
};
$('call-doctor').onclick = callDoctor;
$('sign-out').onclick = signOut;
if (state.api.token) showCentre();
$('publish-mic').onclick = () => publish('microphone');
$('publish-cam').onclick = () => publish('camera');
$('leave').onclick = () => { send({ type: 'leave' }); };

const params = new URLSearchParams(location.search);
if (params.get('room')) $('room').value = params.get('room');
if (params.get('token')) $('token').value = params.get('token');
if (params.get('room') && params.get('token')) join(params.get('room'), params.get('token'));
