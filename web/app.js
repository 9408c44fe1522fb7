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
};
window.medsfu = state; // read by the end-to-end tests

function setConn(s) { const c = $('conn'); c.dataset.state = s; c.textContent = s; }
function showError(msg) { state.errors.push(msg); $('error').textContent = msg; }
function send(msg) { if (state.ws && state.ws.readyState === 1) state.ws.send(JSON.stringify(msg)); }

function join(room, token) {
  const proto = location.protocol === 'https:' ? 'wss' : 'ws';
  const ws = new WebSocket(`${proto}://${location.host}/ws`);
  state.ws = ws;
  setConn('connecting');
  // Say what this browser decodes: a browser without H.265 gets H.264 renditions.
  const codecs = ['audio', 'video'].flatMap((k) =>
    ((window.RTCRtpReceiver && RTCRtpReceiver.getCapabilities(k)) || { codecs: [] }).codecs.map((c) => c.mimeType));
  ws.onopen = () => send({ type: 'join', token, codecs: [...new Set(codecs)] });
  ws.onclose = () => { setConn('closed'); };
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
      addParticipant({ participant: m.participant, identity: m.identity + ' (you)', role: m.role });
      setConn('joined');
      for (const what of (new URLSearchParams(location.search).get('publish') || '').split(',')) {
        if (what === 'camera' || what === 'microphone') await publish(what);
      }
      break;
    case 'participant_joined': addParticipant(m); break;
    case 'participant_left': state.participants.delete(m.participant); renderParticipants(); break;
    case 'camera_state':
      state.camera = { pan_deg: m.pan_deg, zoom: m.zoom, sector: m.sector };
      state.cameraStates++;
      $('cam-state').textContent = `pan ${Math.round(m.pan_deg)}°, zoom ${m.zoom.toFixed(1)}×` +
        (m.sector ? `, sector ${m.sector}` : '');
      $('cam-sector').value = String(m.sector);
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
    case 'left': setConn('closed'); showError(`left: ${m.reason}`); break;
    default: break;
  }
}

function addParticipant(p) { state.participants.set(p.participant, p); renderParticipants(); }

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
function renderParticipants() {
  $('camera-controls').hidden = !(state.me && state.me.role === 'lead' && vehicle());
  const ul = $('participants'); ul.textContent = '';
  for (const p of state.participants.values()) {
    const li = document.createElement('li');
    li.dataset.participant = p.participant;
    if (p.participant === state.speaker) li.className = 'speaking';
    li.textContent = p.identity;
    const r = document.createElement('span'); r.className = 'role'; r.textContent = p.role;
    li.appendChild(r); ul.appendChild(li);
  }
}

function newPc() {
  const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
  pc.onconnectionstatechange = () => setConn(pc.connectionState);
  return pc;
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
    state.published.set(source, tr);
    if (source === 'camera') addTile('local-camera', stream, 'me (camera)', true);
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
      if (ev.track.kind === 'video') addTile(trackId, stream, `${info.identity || '?'} (${info.source || 'video'})`);
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

function addTile(id, stream, label, muted) {
  removeTile(id);
  const div = document.createElement('div'); div.className = 'tile'; div.dataset.track = id;
  const v = document.createElement('video'); v.autoplay = true; v.playsInline = true; v.muted = true;
  v.srcObject = stream; div.appendChild(v);
  if (!muted && v.requestVideoFrameCallback) {
    v.requestVideoFrameCallback(() => { if (!state.firstFrameAt.has(id)) state.firstFrameAt.set(id, performance.now()); });
  }
  const l = document.createElement('span'); l.className = 'label'; l.textContent = label; div.appendChild(l);
  $('tiles').appendChild(div);
}
function removeTile(id) { document.querySelectorAll(`[data-track="${id}"]`).forEach((e) => e.remove()); }

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
$('publish-mic').onclick = () => publish('microphone');
$('publish-cam').onclick = () => publish('camera');
$('leave').onclick = () => { send({ type: 'leave' }); };

const params = new URLSearchParams(location.search);
if (params.get('room')) $('room').value = params.get('room');
if (params.get('token')) $('token').value = params.get('token');
if (params.get('room') && params.get('token')) join(params.get('room'), params.get('token'));
