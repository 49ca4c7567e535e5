//! The camera's sessions, without sockets: the task that owns the viewers (`camera::run`) on a
//! real test-pattern pipeline, called straight through its channel (`CallCommand`, as WHEP does)
//! by a webrtc-rs offerer in this process. Its signaling server is nowhere (the URL refuses), so
//! this also shows calls are taken while the camera is away from its room. The answer decodes to
//! the test picture; each refusal has its code; trickled candidates find their session or say
//! there is none; ending a session frees its place.

mod common;
use campeer::camera::{self, CallCommand, CameraAuth, CameraSettings, CameraState, Refusal};
use campeer::media::pipeline::MediaPipeline;
use campeer::media::source::{AudioSource, VideoSource};
use campeer::signal::ice::IceProvider;
use campeer::signal::protocol::IceCandidate;
use common::rtc_viewer::{RtcViewer, assert_smpte_bars};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// A camera task with at most `max_viewers`, its state, and the channel calls go in by.
struct Camera {
    calls: mpsc::Sender<CallCommand>,
    state: Arc<CameraState>,
    media: Arc<MediaPipeline>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn camera(max_viewers: usize) -> Camera {
    // The bars standing still (the `test` source moves them).
    let bars = VideoSource::Pipeline("videotestsrc is-live=true pattern=smpte".into());
    let media = MediaPipeline::build(&common::media::settings(bars, AudioSource::Test))
        .expect("test-pattern pipeline");
    media
        .start(Duration::from_secs(10))
        .expect("pipeline plays");
    let media = Arc::new(media);
    // A port nothing listens on: the camera never reaches a server.
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address");
    let settings = CameraSettings {
        signal_url: format!("ws://{nowhere}/ws"),
        room: "sessions".into(),
        name: "sessions".into(),
        auth: CameraAuth::None,
        max_viewers,
        ice: IceProvider::from_config(&Default::default()),
        relay_only: false,
        relay_when_turn: false,
        udp_addrs: vec!["127.0.0.1:0".into()],
        mdns: false,
        playout_delay_zero: false,
        connect_timeout: Duration::from_secs(30),
        viewer_demand: None,
        signal_ca: None,
    };
    let state = Arc::new(CameraState::default());
    let (calls, calls_rx) = mpsc::channel(16);
    let (ready, _) = watch::channel(false);
    let stop = CancellationToken::new();
    let task = tokio::spawn(camera::run(
        settings,
        media.clone(),
        state.clone(),
        ready,
        calls_rx,
        stop.clone(),
    ));
    Camera {
        calls,
        state,
        media,
        stop,
        task,
    }
}

impl Camera {
    /// Call with `offer`: the session and its answer (every candidate in it), or the refusal.
    async fn open(&self, offer: String) -> Result<(String, String), Refusal> {
        let (reply, rx) = oneshot::channel();
        self.calls
            .send(CallCommand::Open { offer, reply })
            .await
            .expect("the camera task takes calls");
        let opened = tokio::time::timeout(Duration::from_secs(20), rx)
            .await
            .expect("answered or refused within 20 s")
            .expect("the camera task replies")?;
        let answer = opened.answer.with_candidates(Duration::from_secs(5)).await;
        Ok((opened.session, answer))
    }

    /// Trickle `candidates` to `session`: whether there is such a session.
    async fn trickle(&self, session: &str, candidates: Vec<IceCandidate>) -> bool {
        let (reply, rx) = oneshot::channel();
        self.calls
            .send(CallCommand::Candidates {
                session: session.into(),
                candidates,
                reply,
            })
            .await
            .expect("the camera task takes calls");
        rx.await.expect("the camera task replies")
    }

    /// End `session`: whether there was such a session.
    async fn end(&self, session: &str) -> bool {
        let (reply, rx) = oneshot::channel();
        self.calls
            .send(CallCommand::End {
                session: session.into(),
                reply,
            })
            .await
            .expect("the camera task takes calls");
        rx.await.expect("the camera task replies")
    }

    /// Wait until the camera counts `n` viewers.
    async fn wait_viewers(&self, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.state.viewer_count() != n {
            assert!(
                std::time::Instant::now() < deadline,
                "the camera counts {} viewers, not {n}",
                self.state.viewer_count()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn shut(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the camera task ends within 10 s of its shutdown")
            .expect("the camera task did not panic");
        self.media.stop();
    }
}

/// An offer that names H.264 but lacks everything else an SDP needs: the camera picks H.264
/// from it, then webrtc-rs cannot take it.
const BROKEN_OFFER: &str = "v=0\r\na=rtpmap:102 H264/90000\r\na=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_answered_refused_trickled_and_ended_without_any_socket() {
    let cam = camera(1).await;

    // A call: answered with candidates, connected, decoding the test picture.
    let (viewer, offer) = RtcViewer::offering(&["42e01f"]).await;
    let (session, answer) = cam.open(offer).await.expect("the first call is answered");
    assert!(
        answer.contains("a=candidate:"),
        "the answer carries the camera's candidates:\n{answer}"
    );
    viewer.accept(&answer).await;
    let picture = viewer.wait_frames(30, Duration::from_secs(20)).await;
    assert_eq!((picture.width, picture.height), (640, 480));
    assert_smpte_bars(&picture);
    cam.wait_viewers(1).await;

    // Trickled candidates reach a session that exists, and only one.
    let late = IceCandidate {
        candidate: "candidate:1 1 udp 2122260223 127.0.0.1 9 typ host".into(),
        sdp_mid: Some("0".into()),
        sdp_m_line_index: Some(0),
        username_fragment: None,
    };
    assert!(cam.trickle(&session, vec![late.clone()]).await);
    assert!(!cam.trickle("whep-no-such-session", vec![late]).await);

    // The camera's one place is taken: the next call is refused with its code.
    let (second, offer) = RtcViewer::offering(&["42e01f"]).await;
    let refused = cam
        .open(offer)
        .await
        .expect_err("a second viewer over the limit");
    assert_eq!(refused.code, "max-viewers", "{}", refused.message);
    second.close().await;

    // Ending the session frees the place; ending it again finds nothing.
    assert!(cam.end(&session).await);
    assert!(!cam.end(&session).await);
    cam.wait_viewers(0).await;
    viewer.close().await;

    // An offer of VP8 only (and no VP8 fallback): refused as such.
    let (vp8_only, offer) = RtcViewer::offering(&["42e01f"]).await;
    let offer: String = offer
        .lines()
        .filter(|l| !l.starts_with("a=fmtp:102"))
        .map(|l| format!("{}\r\n", l.replace("H264/90000", "VP8/90000")))
        .collect();
    let refused = cam.open(offer).await.expect_err("no codec in common");
    assert_eq!(refused.code, "no-h264", "{}", refused.message);
    vp8_only.close().await;

    // An offer webrtc-rs cannot take: refused, and the camera still answers the next call.
    let refused = cam
        .open(BROKEN_OFFER.into())
        .await
        .expect_err("a broken offer");
    assert_eq!(refused.code, "answer-failed", "{}", refused.message);
    let (again, offer) = RtcViewer::offering(&["42e01f"]).await;
    let (session, answer) = cam.open(offer).await.expect("answered after the refusals");
    again.accept(&answer).await;
    again.wait_frames(10, Duration::from_secs(20)).await;
    assert!(cam.end(&session).await);
    again.close().await;
    cam.wait_viewers(0).await;

    cam.shut().await;
}
