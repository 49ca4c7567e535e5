//! A WHEP player for tests and benchmarks: headless Chromium's own RTCPeerConnection driven
//! by page scripts, and raw HTTP requests for the statuses.
#![allow(dead_code)]

/// A WHEP player in the page: offer with every candidate gathered, POST, apply the answer.
/// Resolves to the response's status and headers as JSON.
pub fn play_js(path: &str, token: &str) -> String {
    format!(
        r#"(async () => {{
  const pc = new RTCPeerConnection();
  pc.addTransceiver('video', {{ direction: 'recvonly' }});
  pc.addTransceiver('audio', {{ direction: 'recvonly' }});
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise(done => {{
    if (pc.iceGatheringState === 'complete') return done();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && done();
    setTimeout(done, 5000);
  }});
  const headers = {{ 'Content-Type': 'application/sdp' }};
  if ({token:?}) headers.Authorization = 'Bearer ' + {token:?};
  const res = await fetch({path:?}, {{ method: 'POST', headers, body: pc.localDescription.sdp }});
  const body = await res.text();
  const out = {{
    status: res.status,
    location: res.headers.get('Location'),
    etag: res.headers.get('ETag'),
    contentType: res.headers.get('Content-Type'),
    candidates: body.split('\n').filter(l => l.startsWith('a=candidate:')).length,
    body: res.status === 201 ? '' : body,
  }};
  if (res.status === 201) {{
    await pc.setRemoteDescription({{ type: 'answer', sdp: body }});
    window.whepPc = pc;
    window.whepLocation = out.location;
  }}
  return JSON.stringify(out);
}})()"#
    )
}

/// Frames the page's WHEP player has decoded, audio packets and bytes it received, and its
/// connection state.
pub const DECODED_JS: &str = r#"(async () => {
  let frames = 0, audio = 0, bytes = 0;
  (await window.whepPc.getStats()).forEach(s => {
    if (s.type === 'inbound-rtp') bytes += s.bytesReceived || 0;
    if (s.type === 'inbound-rtp' && s.kind === 'video') frames = s.framesDecoded || 0;
    if (s.type === 'inbound-rtp' && s.kind === 'audio') audio = s.packetsReceived || 0;
  });
  return JSON.stringify({ frames, audio, bytes, state: window.whepPc.connectionState });
})()"#;

/// One raw HTTP/1.0 request: (status, whole response text).
pub async fn request(base: &str, head: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(host).await.expect("connect");
    let text = format!(
        "{head}\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(text.as_bytes()).await.expect("send request");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read response");
    let text = String::from_utf8_lossy(&buf).into_owned();
    (super::status_of(&text), text)
}

/// Play through WHEP until connected, DELETE the session, close: one round of a churn loop.
/// Resolves to the DELETE's status, or to what went wrong.
pub fn open_and_delete_js(path: &str, token: &str) -> String {
    format!(
        r#"(async () => {{
  const played = JSON.parse(await {play});
  if (played.status !== 201) return 'POST ' + played.status + ' ' + played.body;
  const pc = window.whepPc;
  const t0 = Date.now();
  while (pc.connectionState !== 'connected' && Date.now() - t0 < 10000) {{
    await new Promise(r => setTimeout(r, 20));
  }}
  if (pc.connectionState !== 'connected') return 'not connected: ' + pc.connectionState;
  const res = await fetch(window.whepLocation, {{ method: 'DELETE' }});
  pc.close();
  return String(res.status);
}})()"#,
        play = play_js(path, token)
    )
}

/// The base address, the room and its viewer token of the room URL `campeer run` printed
/// (`http://host:port/room/<room>?token=…`).
pub fn room_parts(url: &str) -> (String, String, String) {
    let base = super::base_of(url);
    let token = super::ws_of(url)
        .1
        .expect("the room URL carries a viewer token");
    let room = url
        .split("/room/")
        .nth(1)
        .and_then(|r| r.split('?').next())
        .expect("a room name")
        .to_owned();
    (base, room, token)
}
