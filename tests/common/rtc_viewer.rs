//! A WebRTC viewer outside the browser, for places a browser cannot go (the device-test VM):
//! it joins the room over the signaling WebSocket like the page does, receives campeer's tracks
//! with webrtc-rs in this process (ICE, DTLS-SRTP, RTP), and decodes them with GStreamer
//! (rtph264depay ! openh264dec, rtpopusdepay ! opusdec), so tests look at the pictures and the
//! sound a viewer gets.

use campeer::media::h264::SpsProfile;
use futures_util::{SinkExt, StreamExt};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::Registry;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::shared::marshal::Marshal;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceGatheringState, RTCPeerConnectionState,
    RTCSessionDescription, SettingEngineBuilder, register_default_interceptors,
};

/// The H.264 `profile-level-id` of an answer.
fn answered_h264(answer: &str) -> SpsProfile {
    let id = answer
        .lines()
        .filter_map(|l| l.strip_prefix("a=fmtp:"))
        .flat_map(|l| l.split(';'))
        .find_map(|p| {
            p.trim()
                .split_once("profile-level-id=")
                .map(|(_, v)| v.trim())
        })
        .unwrap_or_else(|| panic!("no profile-level-id in the answer:\n{answer}"));
    SpsProfile::from_profile_level_id(id).expect("six hex digits")
}

/// The last decoded picture (RGB, tightly packed).
#[derive(Clone, Debug, Default)]
pub struct Picture {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

impl Picture {
    /// Mean colour of the rectangle (fractions of the picture: x0, y0, x1, y1).
    pub fn mean(&self, x0: f64, y0: f64, x1: f64, y1: f64) -> [f64; 3] {
        let (w, h) = (self.width as usize, self.height as usize);
        let (xa, xb) = ((x0 * w as f64) as usize, (x1 * w as f64) as usize);
        let (ya, yb) = ((y0 * h as f64) as usize, (y1 * h as f64) as usize);
        let mut sum = [0f64; 3];
        let mut n = 0f64;
        for y in ya..yb.min(h) {
            for x in xa..xb.min(w) {
                let i = (y * w + x) * 3;
                for c in 0..3 {
                    sum[c] += f64::from(self.rgb[i + c]);
                }
                n += 1.0;
            }
        }
        sum.map(|s| s / n.max(1.0))
    }
}

/// What the viewer has received and decoded so far.
#[derive(Default)]
pub struct Received {
    pub frames: u64,
    pub picture: Picture,
    /// When the last picture was decoded.
    pub last_frame: Option<Instant>,
    /// Decoded audio, mono S16 at 48 kHz (the last few seconds).
    pub audio: Vec<i16>,
    /// The peer connection's state, as webrtc-rs last reported it.
    pub state: String,
    /// The camera's answer SDP.
    pub answer: Option<String>,
    /// The first H.264 SPS that arrived (single NAL unit or inside a STAP-A).
    pub sps: Option<Vec<u8>>,
    /// The camera's refusal (`error` with `from`): its code and message.
    pub refused: Option<(String, String)>,
}

/// The SPS in one H.264 RTP payload, if there is one (RFC 6184: a single NAL unit, or a STAP-A
/// aggregate of size-prefixed units).
pub fn sps_in_payload(payload: &[u8]) -> Option<Vec<u8>> {
    match payload.first()? & 0x1f {
        7 => Some(payload.to_vec()),
        24 => {
            let mut rest = &payload[1..];
            while rest.len() >= 2 {
                let n = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                let unit = rest.get(2..2 + n)?;
                if unit.first().map(|b| b & 0x1f) == Some(7) {
                    return Some(unit.to_vec());
                }
                rest = &rest[2 + n..];
            }
            None
        }
        _ => None,
    }
}

/// A viewer connected to one camera of a room.
pub struct RtcViewer {
    pub received: Arc<Mutex<Received>>,
    pc: Arc<dyn PeerConnection>,
    /// Its signaling (none for a viewer called other than through a room).
    ws_task: Option<tokio::task::JoinHandle<()>>,
    pipelines: Arc<Mutex<Vec<gst::Pipeline>>>,
}

struct Handler {
    gathered: tokio::sync::mpsc::Sender<()>,
    received: Arc<Mutex<Received>>,
    pipelines: Arc<Mutex<Vec<gst::Pipeline>>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.try_send(());
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.received.lock().expect("received lock").state = state.to_string();
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let kind = track.kind().await;
        let desc = match kind {
            RtpCodecKind::Video => {
                "appsrc name=src is-live=true format=time do-timestamp=true \
                 caps=application/x-rtp,media=video,encoding-name=H264,clock-rate=90000,payload=102 ! \
                 rtpjitterbuffer latency=200 ! rtph264depay ! h264parse ! openh264dec ! \
                 videoconvert ! video/x-raw,format=RGB ! appsink name=sink sync=false"
            }
            RtpCodecKind::Audio => {
                "appsrc name=src is-live=true format=time do-timestamp=true \
                 caps=application/x-rtp,media=audio,encoding-name=OPUS,clock-rate=48000,payload=111 ! \
                 rtpjitterbuffer latency=200 ! rtpopusdepay ! opusdec ! audioconvert ! audioresample ! \
                 audio/x-raw,format=S16LE,rate=48000,channels=1 ! appsink name=sink sync=false"
            }
            _ => return,
        };
        let pipeline = gst::parse::launch(desc)
            .expect("decode pipeline")
            .downcast::<gst::Pipeline>()
            .expect("a pipeline");
        let src = pipeline
            .by_name("src")
            .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
            .expect("appsrc");
        let sink = pipeline
            .by_name("sink")
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
            .expect("appsink");
        let received = self.received.clone();
        let sps_slot = self.received.clone();
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let Some(buffer) = sample.buffer() else {
                        return Ok(gst::FlowSuccess::Ok);
                    };
                    let Ok(map) = buffer.map_readable() else {
                        return Ok(gst::FlowSuccess::Ok);
                    };
                    let mut r = received.lock().expect("received lock");
                    if kind == RtpCodecKind::Video {
                        let s = sample
                            .caps()
                            .and_then(|c| c.structure(0).map(|s| s.to_owned()));
                        let (w, h) = s
                            .map(|s| {
                                (
                                    s.get::<i32>("width").unwrap_or(0) as u32,
                                    s.get::<i32>("height").unwrap_or(0) as u32,
                                )
                            })
                            .unwrap_or((0, 0));
                        // RGB rows are padded to 4 bytes; keep them packed.
                        let stride = (w as usize * 3).div_ceil(4) * 4;
                        let mut rgb = Vec::with_capacity(w as usize * h as usize * 3);
                        for row in 0..h as usize {
                            let start = row * stride;
                            if let Some(line) = map.get(start..start + w as usize * 3) {
                                rgb.extend_from_slice(line);
                            }
                        }
                        r.frames += 1;
                        r.picture = Picture {
                            width: w,
                            height: h,
                            rgb,
                        };
                        r.last_frame = Some(Instant::now());
                    } else {
                        r.audio.extend(
                            map.chunks_exact(2)
                                .map(|b| i16::from_le_bytes([b[0], b[1]])),
                        );
                        let keep = 48_000 * 4;
                        if r.audio.len() > keep {
                            let cut = r.audio.len() - keep;
                            r.audio.drain(..cut);
                        }
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        pipeline
            .set_state(gst::State::Playing)
            .expect("play decode pipeline");
        self.pipelines
            .lock()
            .expect("pipelines lock")
            .push(pipeline);
        tokio::spawn(async move {
            while let Some(event) = track.poll().await {
                match event {
                    TrackRemoteEvent::OnRtpPacket(mut packet) => {
                        if kind == RtpCodecKind::Video {
                            if let Some(sps) = sps_in_payload(&packet.payload) {
                                let mut r = sps_slot.lock().expect("received lock");
                                r.sps.get_or_insert(sps);
                            }
                        }
                        // The decode caps name fixed payload types.
                        packet.header.payload_type = if kind == RtpCodecKind::Video {
                            102
                        } else {
                            111
                        };
                        if let Ok(bytes) = packet.marshal() {
                            let _ = src.push_buffer(gst::Buffer::from_slice(bytes));
                        }
                    }
                    TrackRemoteEvent::OnEnded => break,
                    _ => {}
                }
            }
        });
    }
}

fn codec(mime: &str, clock_rate: u32, channels: u16, fmtp: &str) -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: mime.to_owned(),
        clock_rate,
        channels,
        sdp_fmtp_line: fmtp.to_owned(),
        rtcp_feedback: vec![],
    }
}

impl RtcViewer {
    /// Join the room of `room_url` (`http://host:port/room/<room>?token=…`) as a viewer, call
    /// its camera and start decoding what arrives.
    pub async fn connect(room_url: &str) -> RtcViewer {
        Self::connect_offering(room_url, &["42e01f"]).await
    }

    /// [`RtcViewer::connect`] with an offer listing H.264 in these `profile-level-id`s (each
    /// with packetization-mode 1), in this order.
    pub async fn connect_offering(room_url: &str, h264: &[&str]) -> RtcViewer {
        gst::init().expect("gstreamer init");
        let (base, rest) = room_url
            .trim_start_matches("http://")
            .split_once("/room/")
            .expect("a room URL");
        let (room, token) = match rest.split_once("?token=") {
            Some((room, token)) => (room.to_owned(), token.to_owned()),
            None => (rest.to_owned(), String::new()),
        };
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{base}/ws"))
            .await
            .expect("signaling websocket");
        let (mut tx, mut rx) = ws.split();
        let join = json!({"type": "join", "room": room, "role": "viewer", "token": token, "name": "rtc-viewer"});
        tx.send(Message::text(join.to_string()))
            .await
            .expect("send join");

        // The camera: already in the room (created) or joining later (joined).
        let camera = loop {
            let msg = tokio::time::timeout(Duration::from_secs(60), rx.next())
                .await
                .expect("signaling answered within 60 s")
                .expect("signaling open")
                .expect("signaling frame");
            let Ok(v) = serde_json::from_str::<Value>(msg.to_text().unwrap_or("")) else {
                continue;
            };
            match v["type"].as_str() {
                Some("created") => {
                    let cam = v["peers"].as_array().and_then(|p| {
                        p.iter()
                            .find(|p| p["role"] == "camera")
                            .and_then(|p| p["id"].as_str().map(str::to_owned))
                    });
                    if let Some(cam) = cam {
                        break cam;
                    }
                }
                Some("joined") if v["role"] == "camera" => {
                    break v["id"].as_str().expect("joined id").to_owned();
                }
                Some("error") => panic!("signaling error: {v}"),
                _ => {}
            }
        };

        let (viewer, sdp) = RtcViewer::offering(h264).await;
        let RtcViewer {
            received,
            pc,
            pipelines,
            ..
        } = viewer;
        let offer = json!({"type": "offer", "to": camera, "sdp": sdp});
        tx.send(Message::text(offer.to_string()))
            .await
            .expect("send offer");

        let pc2 = pc.clone();
        let seen = received.clone();
        let ws_task = tokio::spawn(async move {
            let _tx = tx; // the socket stays open while the viewer lives
            while let Some(Ok(msg)) = rx.next().await {
                let Ok(v) = serde_json::from_str::<Value>(msg.to_text().unwrap_or("")) else {
                    continue;
                };
                match v["type"].as_str() {
                    Some("answer") => {
                        let sdp = v["sdp"].as_str().unwrap_or_default().to_owned();
                        seen.lock().expect("received lock").answer = Some(sdp.clone());
                        let answer = RTCSessionDescription::answer(sdp).expect("answer SDP");
                        pc2.set_remote_description(answer)
                            .await
                            .expect("remote answer");
                    }
                    Some("candidate") if v["candidate"].is_object() => {
                        if let Ok(c) =
                            serde_json::from_value::<RTCIceCandidateInit>(v["candidate"].clone())
                        {
                            if !c.candidate.is_empty() {
                                let _ = pc2.add_ice_candidate(c).await;
                            }
                        }
                    }
                    Some("error") => {
                        eprintln!("rtc viewer: signaling error {v}");
                        if v["from"].is_string() {
                            seen.lock().expect("received lock").refused = Some((
                                v["code"].as_str().unwrap_or_default().to_owned(),
                                v["message"].as_str().unwrap_or_default().to_owned(),
                            ));
                        }
                    }
                    _ => {}
                }
            }
        });
        RtcViewer {
            received,
            pc,
            ws_task: Some(ws_task),
            pipelines,
        }
    }

    /// A viewer that is not in any room: its offer (H.264 in these `profile-level-id`s, Opus;
    /// every candidate inside), for a call made some other way (WHEP, or straight to the task
    /// that owns the camera's viewers). Give it the answer with [`RtcViewer::accept`].
    pub async fn offering(h264: &[&str]) -> (RtcViewer, String) {
        gst::init().expect("gstreamer init");
        let mut me = MediaEngine::default();
        for (i, id) in h264.iter().enumerate() {
            me.register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: codec(
                        "video/H264",
                        90_000,
                        0,
                        &format!(
                            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={id}"
                        ),
                    ),
                    payload_type: 102 + i as u8 * 2,
                    ..Default::default()
                },
                RtpCodecKind::Video,
            )
            .expect("register H.264");
        }
        me.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: codec("audio/opus", 48_000, 2, "minptime=10;useinbandfec=1"),
                payload_type: 111,
                ..Default::default()
            },
            RtpCodecKind::Audio,
        )
        .expect("register Opus");
        let registry =
            register_default_interceptors(Registry::new(), &mut me).expect("interceptors");
        let (gathered_tx, mut gathered_rx) = tokio::sync::mpsc::channel(1);
        let received = Arc::new(Mutex::new(Received::default()));
        let pipelines = Arc::new(Mutex::new(Vec::new()));
        let handler = Arc::new(Handler {
            gathered: gathered_tx,
            received: received.clone(),
            pipelines: pipelines.clone(),
        });
        let pc = PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            // Loopback only: no multicast DNS (the VM has no multicast route at all).
            .with_setting_engine(
                SettingEngineBuilder::new()
                    .with_multicast_dns_mode(MulticastDnsMode::Disabled)
                    .build(),
            )
            .with_media_engine(me)
            .with_interceptor_registry(registry)
            .with_handler(handler)
            .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
            .build()
            .await
            .expect("peer connection");
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        for kind in [RtpCodecKind::Video, RtpCodecKind::Audio] {
            pc.add_transceiver_from_kind(
                kind,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    ..Default::default()
                }),
            )
            .await
            .expect("recvonly transceiver");
        }
        let offer = pc.create_offer(None).await.expect("offer");
        pc.set_local_description(offer).await.expect("local offer");
        // Candidates go inside the offer: no trickling from this side.
        let _ = tokio::time::timeout(Duration::from_secs(10), gathered_rx.recv()).await;
        let sdp = pc.local_description().await.expect("local description").sdp;
        let viewer = RtcViewer {
            received,
            pc,
            ws_task: None,
            pipelines,
        };
        (viewer, sdp)
    }

    /// Take the camera's answer to [`RtcViewer::offering`]'s offer.
    pub async fn accept(&self, answer: &str) {
        self.received.lock().expect("received lock").answer = Some(answer.to_owned());
        let answer = RTCSessionDescription::answer(answer.to_owned()).expect("answer SDP");
        self.pc
            .set_remote_description(answer)
            .await
            .expect("remote answer");
    }

    /// Wait until the viewer has the answer and an SPS (or a refusal): the H.264 profile and
    /// level the answer states, and those the SPS has.
    pub async fn wait_answer_and_sps(&self) -> (SpsProfile, SpsProfile) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            {
                let r = self.received.lock().expect("received lock");
                assert!(r.refused.is_none(), "refused: {:?}", r.refused);
                if let (Some(a), Some(s)) = (&r.answer, &r.sps) {
                    return (answered_h264(a), SpsProfile::parse(s).expect("an SPS"));
                }
            }
            assert!(Instant::now() < deadline, "no answer and SPS within 20 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Decoded video frames so far.
    pub fn frames(&self) -> u64 {
        self.received.lock().expect("received lock").frames
    }

    /// Wait until `n` more frames than now have been decoded; the last picture.
    pub async fn wait_frames(&self, n: u64, timeout: Duration) -> Picture {
        let start = self.frames();
        let deadline = Instant::now() + timeout;
        loop {
            {
                let r = self.received.lock().expect("received lock");
                if r.frames >= start + n {
                    return r.picture.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} frames decoded in {timeout:?}",
                self.frames() - start
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The dominant frequency (Hz) of the last `seconds` of decoded audio, from zero crossings;
    /// `None` before that much audio arrived.
    pub fn tone_hz(&self, seconds: f64) -> Option<f64> {
        let r = self.received.lock().expect("received lock");
        let n = (48_000.0 * seconds) as usize;
        if r.audio.len() < n {
            return None;
        }
        let tail = &r.audio[r.audio.len() - n..];
        let crossings = tail.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
        Some(crossings as f64 / 2.0 / seconds)
    }

    /// Root-mean-square level of the last `seconds` of audio (0..32768).
    pub fn audio_rms(&self, seconds: f64) -> f64 {
        let r = self.received.lock().expect("received lock");
        let n = ((48_000.0 * seconds) as usize).min(r.audio.len());
        let tail = &r.audio[r.audio.len() - n..];
        let sum: f64 = tail.iter().map(|s| f64::from(*s).powi(2)).sum();
        (sum / n.max(1) as f64).sqrt()
    }

    /// The peer connection's state, for tests that watch it across a capture fault.
    pub fn connection_state(&self) -> String {
        self.received.lock().expect("received lock").state.clone()
    }

    pub async fn close(self) {
        if let Some(t) = &self.ws_task {
            t.abort();
        }
        let _ = self.pc.close().await;
        for p in self.pipelines.lock().expect("pipelines lock").drain(..) {
            let _ = p.set_state(gst::State::Null);
        }
    }
}

/// The seven bars across the top two thirds of GStreamer's `smpte` test picture, as which of
/// R, G, B are lit: grey, yellow, cyan, green, magenta, red, blue.
pub const SMPTE_BARS: [[bool; 3]; 7] = [
    [true, true, true],
    [true, true, false],
    [false, true, true],
    [false, true, false],
    [true, false, true],
    [true, false, false],
    [false, false, true],
];

/// Which channels of each bar's centre (at a third of the height) are lit in `p`: a channel is
/// lit above 128 and dark below 64; anything between is reported as a mismatch by the caller.
pub fn bars_seen(p: &Picture) -> Vec<[f64; 3]> {
    (0..7)
        .map(|i| {
            let x = (i as f64 + 0.5) / 7.0;
            p.mean(x - 0.02, 0.25, x + 0.02, 0.40)
        })
        .collect()
}

/// Panic with the measured colours unless `p` shows the SMPTE bars in order.
pub fn assert_smpte_bars(p: &Picture) {
    let seen = bars_seen(p);
    let ok = seen.iter().zip(SMPTE_BARS.iter()).all(|(rgb, lit)| {
        rgb.iter()
            .zip(lit.iter())
            .all(|(v, on)| if *on { *v > 128.0 } else { *v < 64.0 })
    });
    assert!(
        ok,
        "the {}x{} picture does not show the SMPTE bars; bar centres (R,G,B): {:?}",
        p.width,
        p.height,
        seen.iter()
            .map(|c| c.map(|v| v.round() as u8))
            .collect::<Vec<_>>()
    );
}
