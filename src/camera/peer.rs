//! One viewer's WebRTC connection (webrtc-rs): the answer to its offer, its H.264 and Opus
//! tracks, and the tasks ([`super::feed`]) that feed them from the shared encode.
//!
//! Each viewer has its own RTP packetizer, sequence numbers and SSRC over the one encoded stream,
//! so a viewer that lags can skip to the next keyframe without disturbing the others. RTP
//! timestamps follow the frames' capture (pipeline running) time, not a nominal frame rate.
//! webrtc-rs callbacks hold no reference to the connection: they only forward events by channel.

use super::congestion::{Estimate, PublishedGcc};
use super::feed::{Feed, Rungs, feed, rtcp_loop};
use super::rtcp::{KeyframeRequestForwarder, RetransmissionBudget};
use crate::media::bus::KeyframeSource;
use crate::media::h264::{self, SpsProfile};
use crate::media::pipeline::{EncodedFrame, KeyframeRequester};
use crate::media::rendition::Rendition;
use crate::signal::protocol::{IceCandidate, PeerId};
use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::{CongestionControlBuilder, Slot, TwccSenderBuilder};
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_RTX;
use rtc::rtp::extension::playout_delay_extension::PlayoutDelayExtension;
use rtc::rtp_transceiver::RTCRtpTransceiverDirection;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpHeaderExtensionCapability, TYPE_RTCP_FB_CCM, TYPE_RTCP_FB_NACK,
};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::shared::marshal::Marshal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use webrtc::media_stream::MediaStreamTrack;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceConnectionState, RTCIceGatheringState,
    RTCIceServer, RTCIceTransportPolicy, RTCPeerConnectionIceEvent, RTCPeerConnectionState,
    RTCSessionDescription, Registry, SettingEngineBuilder, register_default_interceptors,
};

/// RTP payload size limit (bytes), leaving room for SRTP, extensions and TURN framing.
pub(super) const RTP_MTU: usize = 1200;
/// The playout-delay RTP header extension: min=max=0 asks the browser to show each frame as
/// soon as it is decoded instead of holding it in its jitter buffer.
pub const PLAYOUT_DELAY_URI: &str = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay";
/// The H.264 format line campeer answers with: packetization-mode 1 and `profile_level_id`
/// (an offered profile, the stream's own level: [`h264::answer_profile_level_id`]).
pub fn h264_fmtp(profile_level_id: &str) -> String {
    format!("level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={profile_level_id}")
}

/// Errors setting up a viewer's connection.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// webrtc-rs refused something (bad SDP, no common codec, socket bind).
    #[error("webrtc: {0}")]
    Webrtc(#[from] webrtc::error::Error),
    /// The offer has no video codec campeer can send.
    #[error(
        "the viewer's offer has no video codec campeer can send (H.264 with packetization-mode=1, or VP8 with the fallback on)"
    )]
    NoCodec,
    /// A remote candidate campeer will not use (see [`candidate_refusal`]).
    #[error("candidate ignored: {0}")]
    Candidate(&'static str),
}

/// Most remote candidates taken from one viewer (a browser sends a handful; each one costs
/// connectivity checks, and webrtc-rs compares every new one with all before it).
pub const MAX_REMOTE_CANDIDATES: usize = 64;

/// Why a remote candidate line is not worth a connectivity check, if it is not: an address no
/// browser gathers (unspecified, multicast, broadcast) or port 0. The camera would otherwise send
/// STUN checks wherever a viewer points it.
pub fn candidate_refusal(line: &str) -> Option<&'static str> {
    let line = line.strip_prefix("a=").unwrap_or(line);
    let mut fields = line.split_whitespace();
    let (addr, port) = (fields.nth(4), fields.next());
    let (Some(addr), Some(port)) = (addr, port) else {
        return Some("not a candidate line");
    };
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        return Some("bad port");
    }
    if addr.ends_with(".local") {
        return None; // an mDNS name (resolved only when camera.mdns is on)
    }
    match addr.parse::<std::net::IpAddr>() {
        Err(_) => Some("address is neither an IP address nor an mDNS name"),
        Ok(ip) if ip.is_unspecified() || ip.is_multicast() => Some("unusable address"),
        Ok(std::net::IpAddr::V4(v4)) if v4.is_broadcast() => Some("broadcast address"),
        Ok(_) => None,
    }
}

/// The video codec of one viewer's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    /// The main encode: every browser with H.264.
    H264,
    /// The fallback encode, for browsers without H.264.
    Vp8,
}

impl VideoCodec {
    /// Lower-case name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            VideoCodec::H264 => "h264",
            VideoCodec::Vp8 => "vp8",
        }
    }
}

impl std::fmt::Display for VideoCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The codec to answer `offer` with: H.264 when the offer has the stream's profile (`h264`,
/// from its SPS), else VP8 when the fallback is on and the offer has VP8, else none.
pub fn choose_codec(offer: &str, h264: &SpsProfile, vp8_fallback: bool) -> Option<VideoCodec> {
    if h264::answer_profile_level_id(offer, h264).is_some() {
        Some(VideoCodec::H264)
    } else if vp8_fallback && offer_has_vp8(offer) {
        Some(VideoCodec::Vp8)
    } else {
        None
    }
}

/// True when the offer lists VP8.
pub fn offer_has_vp8(sdp: &str) -> bool {
    sdp.lines()
        .filter_map(|l| l.strip_prefix("a=rtpmap:"))
        .any(|l| l.to_ascii_uppercase().contains(" VP8/90000"))
}

/// The next viewer connection's number ([`Peer::conn`]).
static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Events a viewer's connection reports to the peer manager.
#[derive(Debug)]
pub enum PeerEvent {
    /// A local ICE candidate of the viewer's connection number `u64` (see [`Peer::conn`]) to
    /// trickle (`None`: gathering done).
    Candidate(PeerId, u64, Option<IceCandidate>),
    /// The viewer's connection number `u64` changed state.
    State(PeerId, u64, RTCPeerConnectionState),
    /// `camera.connect-timeout` has passed since this viewer's call (its `serial`) was answered.
    ConnectDeadline(PeerId, u64),
    /// `camera.connect-timeout` has passed since this viewer joined the room.
    ArrivalDeadline(PeerId),
}

/// Forwards webrtc-rs callbacks as [`PeerEvent`]s. Holds no reference to the connection, so no
/// reference cycle can keep a closed connection alive.
struct Events {
    viewer: PeerId,
    /// Which of the viewer's connections this is ([`Peer::conn`]).
    conn: u64,
    tx: mpsc::Sender<PeerEvent>,
    state: watch::Sender<RTCPeerConnectionState>,
    ice: watch::Sender<RTCIceConnectionState>,
    gathering: watch::Sender<RTCIceGatheringState>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Events {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            Ok(c) => {
                let cand = IceCandidate {
                    candidate: c.candidate,
                    sdp_mid: c.sdp_mid,
                    sdp_m_line_index: c.sdp_mline_index,
                    username_fragment: c.username_fragment,
                };
                let _ = self
                    .tx
                    .send(PeerEvent::Candidate(
                        self.viewer.clone(),
                        self.conn,
                        Some(cand),
                    ))
                    .await;
            }
            Err(e) => {
                tracing::debug!(viewer = %self.viewer, error = %e, "local candidate not serialisable")
            }
        }
    }

    async fn on_ice_connection_state_change(&self, state: RTCIceConnectionState) {
        let _ = self.ice.send(state);
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        let _ = self.gathering.send(state);
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.state.send(state);
        let _ = self
            .tx
            .send(PeerEvent::State(self.viewer.clone(), self.conn, state))
            .await;
    }
}

/// Per-viewer counters for `/metrics`.
#[derive(Debug, Default)]
pub struct PeerStats {
    /// Video frames sent.
    pub frames_sent: AtomicU64,
    /// Frames skipped while waiting for a keyframe (join, lag).
    pub frames_skipped: AtomicU64,
    /// Times this viewer fell behind the encoder.
    pub lagged: AtomicU64,
    /// PLI/FIR received.
    pub keyframe_requests: AtomicU64,
    /// RTP write errors.
    pub send_errors: AtomicU64,
    /// Round-trip time of the selected candidate pair, microseconds (0: not measured yet).
    pub rtt_us: AtomicU64,
    /// Video packet loss the viewer reports in RTCP receiver reports, per million.
    pub loss_ppm: AtomicU64,
    /// The video codec, once answered.
    pub codec: std::sync::OnceLock<VideoCodec>,
    /// What the viewer's link carries, from its transport-cc feedback.
    pub estimate: Arc<Estimate>,
    /// The rung watched: 0 the main encode, 1.. the lower renditions.
    pub rung: AtomicU64,
    /// Rung changes so far.
    pub rung_changes: AtomicU64,
    /// Frames not sent because they were [`MAX_SEND_DELAY`] late (the viewer skipped to the
    /// next keyframe instead).
    pub late_drops: AtomicU64,
    /// From the last video frame leaving the encoder to its last packet leaving the pacer,
    /// microseconds.
    pub send_delay_us: AtomicU64,
    /// The video pacing rate, bit/s (shared with the retransmission budget).
    pub pacing_shared: Arc<AtomicU64>,
    /// Retransmissions not sent: over the budget.
    pub resends_dropped: Arc<AtomicU64>,
    /// Retransmissions not sent: their packet went out too long ago to help.
    pub resends_stale: Arc<AtomicU64>,
}

/// How often a viewer's RTT and loss are sampled for `/metrics`.
const STATS_EVERY: Duration = Duration::from_secs(2);

/// Sample RTT (selected candidate pair) and video loss (RTCP receiver reports) into `stats`.
async fn sample_stats(
    pc: std::sync::Weak<dyn PeerConnection>,
    stats: Arc<PeerStats>,
    cancel: CancellationToken,
) {
    use webrtc::peer_connection::{RTCStatsReportEntry, StatsSelector};
    loop {
        tokio::select! {
            _ = tokio::time::sleep(STATS_EVERY) => {}
            _ = cancel.cancelled() => return,
        }
        let Some(pc) = pc.upgrade() else { return };
        let report = pc
            .get_stats(std::time::Instant::now(), StatsSelector::None)
            .await;
        drop(pc);
        for entry in report.iter() {
            match entry {
                RTCStatsReportEntry::IceCandidatePair(p)
                    if p.nominated && p.current_round_trip_time > 0.0 =>
                {
                    stats
                        .rtt_us
                        .store((p.current_round_trip_time * 1e6) as u64, Ordering::Relaxed);
                }
                RTCStatsReportEntry::RemoteInboundRtp(r)
                    if r.received_rtp_stream_stats.rtp_stream_stats.kind == RtpCodecKind::Video =>
                {
                    stats.loss_ppm.store(
                        (r.fraction_lost.clamp(0.0, 1.0) * 1e6) as u64,
                        Ordering::Relaxed,
                    );
                }
                _ => {}
            }
        }
    }
}

/// Everything a new viewer connection needs.
pub struct PeerSetup {
    /// The viewer's id in the room.
    pub viewer: PeerId,
    /// ICE servers: config plus `created`.
    pub ice_servers: Vec<RTCIceServer>,
    /// `all` or `relay`.
    pub relay_only: bool,
    /// Local UDP addresses to bind.
    pub udp_addrs: Vec<String>,
    /// Resolve remote `.local` candidates with mDNS.
    pub mdns: bool,
    /// Negotiate the playout-delay extension and send min=max=0 on every video packet.
    pub playout_delay_zero: bool,
    /// Where events go.
    pub events: mpsc::Sender<PeerEvent>,
    /// Encoded video.
    pub video: broadcast::Receiver<Arc<EncodedFrame>>,
    /// Encoded audio, when there is audio.
    pub audio: Option<broadcast::Receiver<Arc<EncodedFrame>>>,
    /// Asks the encoder for keyframes.
    pub keyframes: KeyframeRequester,
    /// The video codec (`video` and `keyframes` are that encoder's).
    pub codec: VideoCodec,
    /// What the H.264 stream's SPS says (its profile and level go into the answer).
    pub h264: SpsProfile,
    /// The main encode's channel (`video` is a receiver of it, or of VP8's).
    pub video_tx: broadcast::Sender<Arc<EncodedFrame>>,
    /// Lower renditions this viewer may move to (H.264 viewers), highest first.
    pub lower: Vec<Arc<Rendition>>,
    /// The main video bitrate and the audio bitrate, kbit/s (what each rung needs).
    pub video_kbps: u32,
    /// Opus bitrate, kbit/s (0 without audio).
    pub audio_kbps: u32,
}

/// A live viewer connection.
pub struct Peer {
    /// The connection.
    pub pc: Arc<dyn PeerConnection>,
    /// This connection's number, unique in the process: a viewer that leaves and calls again
    /// keeps its peer id, and the events its closed connection reports late must not be taken
    /// for its new one's.
    pub conn: u64,
    /// Counters.
    pub stats: Arc<PeerStats>,
    /// Stops this viewer's tasks.
    pub cancel: CancellationToken,
    /// Its video codec.
    pub codec: VideoCodec,
    /// The second encode it watches (VP8), run while held.
    pub rendition: Option<crate::media::rendition::RenditionUse>,
    /// The H.264 `profile-level-id` its answers state.
    h264_id: Option<String>,
    /// Remote candidates taken so far.
    remote_candidates: std::sync::atomic::AtomicUsize,
    /// The local candidates' gathering, for an answer that must carry them all.
    gathering: watch::Receiver<RTCIceGatheringState>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn feedback(typ: &str, parameter: &str) -> RTCPFeedback {
    RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    }
}

/// campeer's H.264 payload type in its own registry (answers use the viewer's numbers).
const H264_PT: u8 = 102;
/// The RTX (RFC 4588) payload type paired with [`H264_PT`].
const RTX_PT: u8 = 103;
/// campeer's VP8 payload type in its own registry.
const VP8_PT: u8 = 96;
/// The RTX payload type paired with [`VP8_PT`].
const VP8_RTX_PT: u8 = 97;

fn codec_h264(profile_level_id: &str) -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: "video/H264".to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: h264_fmtp(profile_level_id),
        // Stated here rather than left to the default interceptors: NACK (answered from the
        // send buffer, over RTX when negotiated), PLI and FIR (keyframe requests).
        rtcp_feedback: vec![
            feedback(TYPE_RTCP_FB_NACK, ""),
            feedback(TYPE_RTCP_FB_NACK, "pli"),
            feedback(TYPE_RTCP_FB_CCM, "fir"),
        ],
    }
}

/// VP8 with the same feedback as H.264.
fn codec_vp8() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: "video/VP8".to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![
            feedback(TYPE_RTCP_FB_NACK, ""),
            feedback(TYPE_RTCP_FB_NACK, "pli"),
            feedback(TYPE_RTCP_FB_CCM, "fir"),
        ],
    }
}

/// RTX for the video codec (payload type `apt`): retransmissions on their own SSRC, so the
/// browser's loss and jitter statistics for the media stream stay clean.
fn codec_rtx(apt: u8) -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_RTX.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: format!("apt={apt}"),
        rtcp_feedback: vec![],
    }
}

fn codec_opus() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: "audio/opus".to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

fn local_track(kind: RtpCodecKind, codec: RTCRtpCodec, ssrc: u32) -> MediaStreamTrack {
    MediaStreamTrack::new(
        "campeer".to_owned(),
        format!("campeer-{kind}"),
        format!("campeer {kind}"),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec,
            ..Default::default()
        }],
    )
}

/// Answer `offer`: returns the connection and the answer SDP. Candidates trickle as events.
pub async fn answer(setup: PeerSetup, offer: String) -> Result<(Peer, String), PeerError> {
    let (video_codec, video_pt, rtx_pt, h264_id) = match setup.codec {
        VideoCodec::H264 => {
            let id =
                h264::answer_profile_level_id(&offer, &setup.h264).ok_or(PeerError::NoCodec)?;
            (codec_h264(&id), H264_PT, RTX_PT, Some(id))
        }
        VideoCodec::Vp8 if offer_has_vp8(&offer) => (codec_vp8(), VP8_PT, VP8_RTX_PT, None),
        VideoCodec::Vp8 => return Err(PeerError::NoCodec),
    };
    let mut me = MediaEngine::default();
    me.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: video_codec.clone(),
            payload_type: video_pt,
            ..Default::default()
        },
        RtpCodecKind::Video,
    )?;
    // Negotiated when the offer has RTX for the codec; the NACK responder then resends over it.
    me.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: codec_rtx(video_pt),
            payload_type: rtx_pt,
            ..Default::default()
        },
        RtpCodecKind::Video,
    )?;
    me.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: codec_opus(),
            payload_type: 111,
            ..Default::default()
        },
        RtpCodecKind::Audio,
    )?;
    if setup.playout_delay_zero {
        // Sendonly: the sender's parameters are looked up with that direction. Negotiated only
        // when the viewer's offer lists the extension.
        me.register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: PLAYOUT_DELAY_URI.to_owned(),
            },
            RtpCodecKind::Video,
            Some(RTCRtpTransceiverDirection::Sendonly),
        )?;
    }
    // NACK responder, sender reports, transport-cc negotiated; then PLI/FIR delivered to the
    // application (last). Congestion control: every packet numbered for transport-cc, the
    // viewer's feedback resolved into GCC's estimate, published to `stats.estimate` (see
    // camera::congestion for why webrtc-rs's own pacer is not in the chain).
    let stats = Arc::new(PeerStats::default());
    let needs = rung_needs(&setup);
    let registry = register_default_interceptors(Registry::new(), &mut me)?;
    let registry = registry
        .with(Slot::from(14_000), KeyframeRequestForwarder::default())
        .with(
            Slot::CongestionControl,
            CongestionControlBuilder::new(PublishedGcc::new(
                needs[0],
                GCC_MIN_BPS,
                needs[0] * 2.0,
                stats.estimate.clone(),
            ))
            .build(),
        )
        .with(Slot::TwccSender, TwccSenderBuilder::new().build())
        // Wire-ward of the NACK responder (4_000), app-ward of the send history.
        .with(
            Slot::from(3_500),
            RetransmissionBudget::new(
                stats.pacing_shared.clone(),
                stats.resends_dropped.clone(),
                stats.resends_stale.clone(),
            ),
        );
    let config = RTCConfigurationBuilder::new()
        .with_ice_servers(setup.ice_servers)
        .with_ice_transport_policy(if setup.relay_only {
            RTCIceTransportPolicy::Relay
        } else {
            RTCIceTransportPolicy::All
        })
        .build();
    let (state_tx, state_rx) = watch::channel(RTCPeerConnectionState::New);
    let (ice_tx, ice_rx) = watch::channel(RTCIceConnectionState::New);
    let (gathering_tx, gathering) = watch::channel(RTCIceGatheringState::New);
    let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    let handler = Arc::new(Events {
        viewer: setup.viewer.clone(),
        conn,
        tx: setup.events.clone(),
        state: state_tx,
        ice: ice_tx,
        gathering: gathering_tx,
    });
    let mdns_mode = if setup.mdns {
        MulticastDnsMode::QueryOnly
    } else {
        MulticastDnsMode::Disabled
    };
    let settings = SettingEngineBuilder::new()
        .with_multicast_dns_mode(mdns_mode)
        .build();
    let pc = PeerConnectionBuilder::new()
        .with_configuration(config)
        .with_setting_engine(settings)
        .with_media_engine(me)
        .with_interceptor_registry(registry)
        .with_handler(handler)
        .with_udp_addrs(setup.udp_addrs)
        .build()
        .await?;
    let pc: Arc<dyn PeerConnection> = Arc::new(pc);

    let video_ssrc = rand::random::<u32>();
    let video_track = Arc::new(TrackLocalStaticRTP::new(local_track(
        RtpCodecKind::Video,
        video_codec,
        video_ssrc,
    )));
    let video_sender = pc
        .add_track(video_track.clone() as Arc<dyn TrackLocal>)
        .await?;
    let audio = match setup.audio {
        Some(rx) => {
            let ssrc = rand::random::<u32>();
            let track = Arc::new(TrackLocalStaticRTP::new(local_track(
                RtpCodecKind::Audio,
                codec_opus(),
                ssrc,
            )));
            let sender = pc.add_track(track.clone() as Arc<dyn TrackLocal>).await?;
            Some((track, sender, ssrc, rx))
        }
        None => None,
    };

    let result: Result<String, PeerError> = async {
        pc.set_remote_description(RTCSessionDescription::offer(offer)?)
            .await?;
        let answer = pc.create_answer(None).await?;
        pc.set_local_description(answer).await?;
        Ok(described_answer(&*pc, h264_id.as_deref()).await)
    }
    .await;
    let answer_sdp = match result {
        Ok(sdp) => sdp,
        Err(e) => {
            let _ = pc.close().await;
            return Err(e);
        }
    };

    let cancel = CancellationToken::new();
    let mut tasks = Vec::new();
    // Payload types as negotiated (the browser's numbers, not the ones registered above).
    let video_pt = negotiated_pt(&video_sender).await.unwrap_or(video_pt);
    // The negotiated id, set on each packet by `feed` and written with plain `write_rtp`:
    // webrtc-rs 0.21.1's `write_rtp_with_extensions` (and its sample writer) use extension ids
    // snapshotted before negotiation, so the core rejects those packets ("extension not found").
    let playout_delay = match negotiated_extension_id(&video_sender, PLAYOUT_DELAY_URI).await {
        Some(id) => PlayoutDelayExtension::new(0, 0)
            .marshal()
            .ok()
            .map(|b| (id, b.freeze())),
        None => None,
    };
    tracing::debug!(viewer = %setup.viewer, playout_delay = playout_delay.is_some(), "video track negotiated");
    // Rung 0 is what `setup.video`/`setup.keyframes` carry; lower ones only for H.264 viewers.
    let lower = if setup.codec == VideoCodec::H264 {
        setup.lower.clone()
    } else {
        Vec::new()
    };
    let mut rung_keyframes: Vec<Arc<dyn KeyframeSource>> = vec![Arc::new(setup.keyframes.clone())];
    rung_keyframes.extend(
        lower
            .iter()
            .map(|r| Arc::new(r.keyframes.clone()) as Arc<dyn KeyframeSource>),
    );
    let rungs = Rungs {
        main: setup.video_tx.clone(),
        lower,
        keyframes: rung_keyframes,
        needs: needs.clone(),
    };
    tasks.push(tokio::spawn(feed(
        Feed {
            viewer: setup.viewer.clone(),
            track: video_track.clone(),
            pt: video_pt,
            playout_delay,
            ssrc: video_ssrc,
            clock_rate: 90_000,
            video: Some(setup.codec),
            stats: stats.clone(),
            keyframes: Some(setup.keyframes.clone()),
            rungs: Some(rungs.clone()),
        },
        setup.video,
        state_rx.clone(),
        ice_rx.clone(),
        cancel.clone(),
    )));
    tasks.push(tokio::spawn(rtcp_loop(
        video_track,
        rungs.keyframes,
        stats.clone(),
        cancel.clone(),
    )));
    tasks.push(tokio::spawn(sample_stats(
        Arc::downgrade(&pc),
        stats.clone(),
        cancel.clone(),
    )));
    if let Some((track, sender, ssrc, rx)) = audio {
        let pt = negotiated_pt(&sender).await.unwrap_or(111);
        tasks.push(tokio::spawn(feed(
            Feed {
                viewer: setup.viewer.clone(),
                track,
                pt,
                ssrc,
                clock_rate: 48_000,
                video: None,
                stats: stats.clone(),
                keyframes: None,
                playout_delay: None,
                rungs: None,
            },
            rx,
            state_rx,
            ice_rx,
            cancel.clone(),
        )));
    }
    Ok((
        Peer {
            pc,
            conn,
            stats,
            cancel,
            codec: setup.codec,
            rendition: None,
            h264_id,
            remote_candidates: Default::default(),
            gathering,
            tasks,
        },
        answer_sdp,
    ))
}

/// A viewer's answer as it grows with its local candidates (see [`Peer::answer_source`]).
pub struct AnswerSource {
    pc: Arc<dyn PeerConnection>,
    gathering: watch::Receiver<RTCIceGatheringState>,
    h264_id: Option<String>,
}

impl AnswerSource {
    /// The answer with every local candidate gathered within `within` (for clients that never
    /// trickle, as WHEP players often do not): what was gathered by then, at the latest.
    pub async fn with_candidates(mut self, within: Duration) -> String {
        let _ = tokio::time::timeout(
            within,
            self.gathering
                .wait_for(|s| *s == RTCIceGatheringState::Complete),
        )
        .await;
        described_answer(&*self.pc, self.h264_id.as_deref()).await
    }
}

/// The local description as sent to the viewer: the stream's own H.264 level stated (see
/// [`stream_level`]), candidates gathered so far included.
async fn described_answer(pc: &dyn PeerConnection, h264_id: Option<&str>) -> String {
    stream_level(
        pc.local_description()
            .await
            .map(|d| d.sdp)
            .unwrap_or_default(),
        h264_id,
    )
}

impl Peer {
    /// Its answer, to be read once its candidates are gathered, away from the task that owns
    /// the viewers.
    pub fn answer_source(&self) -> AnswerSource {
        AnswerSource {
            pc: self.pc.clone(),
            gathering: self.gathering.clone(),
            h264_id: self.h264_id.clone(),
        }
    }
}

/// Apply a new offer from the same viewer (ICE restart, renegotiation).
pub async fn reoffer(peer: &Peer, offer: String) -> Result<String, PeerError> {
    peer.pc
        .set_remote_description(RTCSessionDescription::offer(offer)?)
        .await?;
    let answer = peer.pc.create_answer(None).await?;
    peer.pc.set_local_description(answer).await?;
    Ok(described_answer(&*peer.pc, peer.h264_id.as_deref()).await)
}

/// The answer text with the stream's own `profile-level-id` (`id`) on its H.264 format:
/// webrtc-rs answers with the offer's parameters, so every answer would repeat the viewer's
/// level (42e01f from browsers) whatever the SPS says. With level-asymmetry-allowed (every
/// browser offers it) the answer's level is campeer's own to state; the viewer learns the level
/// it will be sent, not just the one it offered. Only the text sent to the viewer is changed:
/// webrtc-rs refuses a local description that differs from the answer it created, and it does
/// not use the level for sending.
fn stream_level(answer: String, id: Option<&str>) -> String {
    match id {
        Some(id) => h264::with_profile_level_id(&answer, id),
        None => answer,
    }
}

/// Add a remote candidate.
pub async fn add_candidate(peer: &Peer, c: IceCandidate) -> Result<(), PeerError> {
    if c.candidate.is_empty() {
        return Ok(()); // end-of-candidates marker
    }
    if let Some(why) = candidate_refusal(&c.candidate) {
        return Err(PeerError::Candidate(why));
    }
    let taken = peer
        .remote_candidates
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if taken >= MAX_REMOTE_CANDIDATES {
        return Err(PeerError::Candidate("this viewer sent too many candidates"));
    }
    peer.pc
        .add_ice_candidate(RTCIceCandidateInit {
            candidate: c.candidate,
            sdp_mid: c.sdp_mid,
            sdp_mline_index: c.sdp_m_line_index,
            username_fragment: c.username_fragment,
            ..Default::default()
        })
        .await?;
    Ok(())
}

impl Peer {
    /// Stop the tasks and close the connection, waiting (bounded) for both.
    pub async fn close(self) {
        self.cancel.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
        }
        if tokio::time::timeout(Duration::from_secs(2), self.pc.close())
            .await
            .is_err()
        {
            tracing::warn!("closing a viewer connection took over 2 s; abandoned");
        }
    }
}

/// The id the answer gave extension `uri` on this sender, if negotiated (one-byte form only).
async fn negotiated_extension_id(
    sender: &Arc<dyn webrtc::rtp_transceiver::RtpSender>,
    uri: &str,
) -> Option<u8> {
    sender
        .get_parameters()
        .await
        .ok()?
        .rtp_parameters
        .header_extensions
        .iter()
        .find(|e| e.uri == uri)
        .and_then(|e| u8::try_from(e.id).ok())
        .filter(|id| (1..=14).contains(id))
}

async fn negotiated_pt(sender: &Arc<dyn webrtc::rtp_transceiver::RtpSender>) -> Option<u8> {
    sender
        .get_parameters()
        .await
        .ok()?
        .rtp_parameters
        .codecs
        .first()
        .map(|c| c.payload_type)
}

/// The lowest estimate GCC may fall to, bit/s.
const GCC_MIN_BPS: f64 = 100_000.0;
/// RTP, SRTP and UDP/IP headers on top of the media bitrate (~50 of ~1,250 bytes a packet).
const OVERHEAD: f64 = 1.05;

/// What each rung needs on the wire, bit/s: its video, the audio, and headers.
fn rung_needs(setup: &PeerSetup) -> Vec<f64> {
    let need = |video_kbps: u32| f64::from(video_kbps + setup.audio_kbps) * 1000.0 * OVERHEAD;
    let mut needs = vec![need(setup.video_kbps)];
    if setup.codec == VideoCodec::H264 {
        needs.extend(setup.lower.iter().map(|r| need(r.spec.bitrate_kbps)));
    }
    needs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_campeer_would_not_check_are_refused() {
        let ok = [
            "candidate:1 1 udp 2122260223 192.0.2.7 54321 typ host",
            "a=candidate:2 1 udp 2122260223 2001:db8::7 54321 typ host",
            "candidate:3 1 udp 2122260223 5f1c2a3b-1111-2222-3333-444455556666.local 54321 typ host",
            "candidate:4 1 tcp 1518280447 192.0.2.7 9 typ host tcptype active",
        ];
        for c in ok {
            assert_eq!(candidate_refusal(c), None, "{c}");
        }
        let refused = [
            "candidate:1 1 udp 2122260223 255.255.255.255 54321 typ host",
            "candidate:1 1 udp 2122260223 224.0.0.251 5353 typ host",
            "candidate:1 1 udp 2122260223 0.0.0.0 54321 typ host",
            "candidate:1 1 udp 2122260223 :: 54321 typ host",
            "candidate:1 1 udp 2122260223 192.0.2.7 0 typ host",
            "candidate:1 1 udp 2122260223 evil.example 54321 typ host",
            "garbage",
        ];
        for c in refused {
            assert!(candidate_refusal(c).is_some(), "{c}");
        }
    }

    #[test]
    fn h264_in_offer() {
        let cb = SpsProfile::from_profile_level_id("42c01f").unwrap();
        let high = SpsProfile::from_profile_level_id("640028").unwrap();
        let chrome = "m=video 9 UDP/TLS/RTP/SAVPF 96 108\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:108 H264/90000\r\na=fmtp:108 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n";
        let firefox_esr = "m=video 9 UDP/TLS/RTP/SAVPF 120 124 98\r\na=rtpmap:120 VP8/90000\r\na=rtpmap:98 VP9/90000\r\na=fmtp:120 max-fs=12288;max-fr=60\r\n";
        let mode0 = "a=rtpmap:97 H264/90000\r\na=fmtp:97 profile-level-id=42e01f;level-asymmetry-allowed=1\r\n";

        assert_eq!(choose_codec(chrome, &cb, true), Some(VideoCodec::H264));
        assert_eq!(choose_codec(firefox_esr, &cb, true), Some(VideoCodec::Vp8));
        assert_eq!(choose_codec(firefox_esr, &cb, false), None);
        assert_eq!(choose_codec(mode0, &cb, true), None);
        // A high-profile stream (a camera's own H.264) for a viewer that offered only
        // constrained baseline: VP8 when there is a fallback, else nothing.
        assert_eq!(choose_codec(chrome, &high, true), Some(VideoCodec::Vp8));
        assert_eq!(choose_codec(chrome, &high, false), None);
        assert_eq!(
            h264_fmtp("42e028"),
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e028"
        );
    }
}
