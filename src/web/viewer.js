// campeer viewer: joins the room named in the URL as a viewer, calls every camera in it with one
// RTCPeerConnection each (recvonly video + audio), and shows one tile per camera.
// Protocol: docs/PROTOCOL.md. Standard APIs only.
'use strict';

(() => {
  const params = new URLSearchParams(location.search);
  const room = decodeURIComponent(location.pathname.replace(/\/+$/, '').split('/').pop() || '');
  // The token leaves the address bar once read (so it is not in the history, a bookmark or a
  // screenshot of the page); this tab keeps it in sessionStorage for a reload.
  const tokenKey = 'campeer-token:' + room;
  let token = params.get('token') || undefined;
  try {
    if (token) sessionStorage.setItem(tokenKey, token);
    else token = sessionStorage.getItem(tokenKey) || undefined;
  } catch (_) { /* storage refused: the token lives only as long as this page */ }
  if (params.has('token')) {
    params.delete('token');
    const rest = params.toString();
    history.replaceState(null, '', location.pathname + (rest ? '?' + rest : '') + location.hash);
  }
  const relayOnly = params.get('relay') === '1';
  const viewerName = params.get('name') || 'browser';

  const $ = (id) => document.getElementById(id);
  $('room-name').textContent = '· ' + room;
  document.title = room + ' · campeer';

  const state = {
    ws: null,
    myId: null,
    iceServers: [],
    relayPolicy: false, // the server's operator wants relay-only (created.iceTransportPolicy)
    cams: new Map(), // camera peer id -> {pc, tile, video, pending: [], stale, name}
    muted: true,
    attempt: 0,
    lastError: null,
  };
  // For tests and debugging from the console.
  window.campeer = state;

  function setStatus(text) { $('status').textContent = text; }
  function notice(text) {
    const n = $('notice');
    n.textContent = text || '';
    n.hidden = !text;
  }
  function send(msg) {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(msg));
  }

  $('unmute').addEventListener('click', () => {
    state.muted = !state.muted;
    for (const cam of state.cams.values()) cam.video.muted = state.muted;
    $('unmute').textContent = state.muted ? 'Unmute' : 'Mute';
  });

  function updateEmpty() {
    $('empty').hidden = state.cams.size > 0;
  }

  function makeTile(id, name) {
    const tile = document.createElement('section');
    tile.className = 'tile';
    tile.dataset.peer = id;
    const video = document.createElement('video');
    video.autoplay = true;
    video.playsInline = true;
    video.muted = state.muted;
    const bar = document.createElement('div');
    bar.className = 'bar';
    const label = document.createElement('span');
    label.className = 'name';
    label.textContent = name || 'camera';
    const st = document.createElement('span');
    st.className = 'state';
    st.textContent = 'calling…';
    const stats = document.createElement('span');
    stats.className = 'stats';
    const fs = document.createElement('button');
    fs.type = 'button';
    fs.textContent = 'Full screen';
    fs.title = 'Fullscreen';
    fs.addEventListener('click', () => (video.requestFullscreen ? video.requestFullscreen() : video.webkitEnterFullscreen && video.webkitEnterFullscreen()));
    bar.append(label, st, stats, fs);
    const err = document.createElement('div');
    err.className = 'error';
    err.hidden = true;
    tile.append(video, bar, err);
    $('tiles').append(tile);
    return { tile, video, st, stats, err };
  }

  function removeCam(id) {
    const cam = state.cams.get(id);
    if (!cam) return;
    state.cams.delete(id);
    clearInterval(cam.timer);
    try { cam.pc.close(); } catch (_) { /* already closed */ }
    cam.ui.tile.remove();
    updateEmpty();
  }

  // Once a fresh call shows video, the calls left over from a lost signaling session go.
  function dropStale() {
    for (const [id, cam] of state.cams) if (cam.stale) removeCam(id);
  }

  function call(peer) {
    if (state.cams.has(peer.id)) return;
    const pc = new RTCPeerConnection({ iceServers: state.iceServers, iceTransportPolicy: relayOnly || state.relayPolicy ? 'relay' : 'all' });
    const ui = makeTile(peer.id, peer.name);
    const cam = { id: peer.id, name: peer.name, pc, ui, video: ui.video, pending: [], stale: false, remoteSet: false, last: null, restarts: 0, since: Date.now() };
    state.cams.set(peer.id, cam);
    updateEmpty();

    pc.addTransceiver('video', { direction: 'recvonly' });
    pc.addTransceiver('audio', { direction: 'recvonly' });
    const stream = new MediaStream();
    ui.video.srcObject = stream;
    pc.ontrack = (e) => {
      stream.addTrack(e.track);
      ui.video.play().catch(() => { /* autoplay blocked until a click; muted video normally plays */ });
    };
    pc.onicecandidate = (e) => {
      send({ type: 'candidate', to: peer.id, candidate: e.candidate ? e.candidate.toJSON() : null });
    };
    pc.onconnectionstatechange = () => {
      ui.st.textContent = pc.connectionState;
      ui.st.className = 'state ' + pc.connectionState;
      if (pc.connectionState === 'connected') {
        cam.restarts = 0;
        if (!cam.stale) dropStale();
      } else if (pc.connectionState === 'failed') {
        if (cam.stale) removeCam(peer.id);
        else restart(cam);
      }
    };
    ui.video.addEventListener('resize', () => {
      ui.video.style.aspectRatio = ui.video.videoWidth + ' / ' + ui.video.videoHeight;
    });
    cam.timer = setInterval(() => showStats(cam), 1000);
    offer(cam, false);
  }

  async function offer(cam, iceRestart) {
    try {
      const o = await cam.pc.createOffer({ iceRestart });
      await cam.pc.setLocalDescription(o);
      send({ type: 'offer', to: cam.id, sdp: cam.pc.localDescription.sdp });
    } catch (e) {
      showError(cam, 'could not create an offer: ' + e);
    }
  }

  // The selected path failed (link cut, NAT rebinding): ask for new candidates on both sides.
  // If an ICE restart does not bring it back, call the camera afresh on a new connection.
  function restart(cam) {
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return;
    cam.restarts++;
    if (cam.restarts > 1) {
      const peer = { id: cam.id, name: cam.name };
      removeCam(cam.id);
      call(peer);
      return;
    }
    cam.remoteSet = false;
    offer(cam, true);
  }

  function showError(cam, text) {
    cam.ui.err.textContent = text;
    cam.ui.err.hidden = !text;
  }

  // A call that shows no picture this long after it started is placed again (a path that
  // connected but never carried media, e.g. a relay pair the two ICE agents disagree on).
  const NO_PICTURE_RECALL_MS = 10000;

  async function showStats(cam) {
    if (cam.pc.connectionState === 'closed') return;
    let report;
    try { report = await cam.pc.getStats(); } catch (_) { return; }
    let v = null;
    const codecs = new Map();
    report.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video') v = s;
      if (s.type === 'codec') codecs.set(s.id, s.mimeType);
    });
    if (!cam.stale && !cam.rejected && !(v && v.framesDecoded > 0) && Date.now() - cam.since > NO_PICTURE_RECALL_MS
        && state.cams.get(cam.id) === cam && state.ws && state.ws.readyState === WebSocket.OPEN) {
      const peer = { id: cam.id, name: cam.name };
      removeCam(cam.id);
      call(peer);
      return;
    }
    if (!v) return;
    const now = v.timestamp;
    let kbps = 0;
    if (cam.last && now > cam.last.t) kbps = (8 * (v.bytesReceived - cam.last.bytes)) / (now - cam.last.t);
    cam.last = { t: now, bytes: v.bytesReceived };
    const codec = (codecs.get(v.codecId) || '').replace('video/', '');
    cam.codec = codec;
    const res = v.frameWidth ? `${v.frameWidth}×${v.frameHeight}` : '—';
    // The camera's latency mode shows in its answer: playout-delay negotiated means "lowest".
    const answer = cam.pc.currentRemoteDescription ? cam.pc.currentRemoteDescription.sdp : '';
    cam.latency = answer.includes('rtp-hdrext/playout-delay') ? 'lowest latency' : 'smooth';
    const fps = v.framesPerSecond != null ? Math.round(v.framesPerSecond) : 0;
    cam.ui.stats.textContent = `${codec} ${res} ${fps} fps ${Math.round(kbps)} kbit/s · ${cam.latency}`;
  }

  function onMessage(msg) {
    switch (msg.type) {
      case 'created':
        state.attempt = 0;
        state.myId = msg.id;
        state.iceServers = msg.iceServers || [];
        state.relayPolicy = msg.iceTransportPolicy === 'relay';
        setStatus('in room');
        notice(null);
        for (const p of msg.peers) if (p.role === 'camera') call(p);
        break;
      case 'joined':
        if (msg.role === 'camera') call({ id: msg.id, name: msg.name });
        break;
      case 'answer': {
        const cam = state.cams.get(msg.from);
        if (!cam) break;
        cam.pc.setRemoteDescription({ type: 'answer', sdp: msg.sdp }).then(async () => {
          cam.remoteSet = true;
          for (const c of cam.pending.splice(0)) await cam.pc.addIceCandidate(c).catch(() => {});
        }).catch((e) => showError(cam, 'bad answer from camera: ' + e));
        break;
      }
      case 'candidate': {
        const cam = state.cams.get(msg.from);
        if (!cam || !msg.candidate) break;
        if (cam.remoteSet) cam.pc.addIceCandidate(msg.candidate).catch(() => {});
        else cam.pending.push(msg.candidate);
        break;
      }
      case 'exit':
        removeCam(msg.from);
        break;
      case 'error': {
        state.lastError = msg;
        const cam = msg.from && state.cams.get(msg.from);
        if (cam) { cam.rejected = true; showError(cam, msg.message); }
        else notice(`${msg.message} (${msg.code})`);
        break;
      }
      default:
        break;
    }
  }

  function connect() {
    const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';
    const ws = new WebSocket(url);
    state.ws = ws;
    setStatus('connecting…');
    ws.onopen = () => {
      send({ type: 'join', room, role: 'viewer', token, name: viewerName });
    };
    ws.onmessage = (e) => {
      let msg;
      try { msg = JSON.parse(e.data); } catch (_) { return; }
      onMessage(msg);
    };
    ws.onclose = () => {
      if (state.ws !== ws) return;
      // Keep showing what still plays; replace it once the camera is called again.
      for (const cam of state.cams.values()) cam.stale = true;
      const delay = Math.min(10000, 500 * 2 ** state.attempt) * (0.75 + Math.random() * 0.5);
      state.attempt = Math.min(state.attempt + 1, 5);
      setStatus(`signaling lost; reconnecting in ${(delay / 1000).toFixed(1)} s`);
      setTimeout(connect, delay);
    };
  }

  // Recordings of this room's camera, when its daemon records (GET /recordings; 404 when this
  // server has none for the room). <video> cannot send a header, so files carry ?token=.
  function withToken(url, extra) {
    const q = new URLSearchParams(extra || {});
    if (token) q.set('token', token);
    const qs = q.toString();
    return qs ? url + '?' + qs : url;
  }
  async function loadRecordings() {
    let listing;
    try {
      const res = await fetch(withToken('/recordings', { room }), { cache: 'no-store' });
      if (!res.ok) return;
      listing = await res.json();
    } catch (_) { return; }
    $('recordings').hidden = false;
    $('rec-state').textContent = listing.failing
      ? '· cannot write: ' + listing.failing
      : (listing.recording ? '· recording' : '· not recording');
    const list = $('rec-list');
    list.replaceChildren();
    for (const seg of listing.segments) {
      const li = document.createElement('li');
      const play = document.createElement('button');
      play.type = 'button';
      play.className = 'rec-play';
      play.textContent = new Date(seg.start).toLocaleString();
      play.addEventListener('click', () => {
        const v = $('rec-player');
        v.hidden = false;
        v.src = withToken(seg.url);
        v.play().catch(() => {});
      });
      const size = document.createElement('span');
      size.className = 'status';
      size.textContent = (seg.bytes / 1e6).toFixed(1) + ' MB' + (seg.open ? ' · being recorded' : '');
      const dl = document.createElement('a');
      dl.href = withToken(seg.url, { download: '1' });
      dl.textContent = 'download';
      li.append(play, size, dl);
      list.append(li);
    }
  }

  updateEmpty();
  connect();
  loadRecordings();
  setInterval(loadRecordings, 30000);
})();
