//! Answering a call: the viewer limit, the codec both sides have (H.264 at a profile the
//! viewer decodes, or the VP8 rendition), the passed-through source's real profile, and the new
//! viewer connection fed from the encode; and calls from outside the room (WHEP), which become
//! viewers like any other ([`CallCommand`]).

use super::{Camera, peer, warn_gated};
use crate::signal::protocol::{IceCandidate, PeerId};
use peer::PeerSetup;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::oneshot;

/// How long an offer waits for a passed-through source's first SPS.
const PASSTHROUGH_SPS_WAIT: Duration = Duration::from_secs(3);

/// Calls that reach the camera other than through its room (WHEP), sent to the task that owns
/// the viewers. Each carries the channel its answer goes back on.
#[derive(Debug)]
pub enum CallCommand {
    /// Answer `offer` with a new viewer connection.
    Open {
        /// The client's SDP offer.
        offer: String,
        /// The session's id and its answer, or why not.
        reply: oneshot::Sender<Result<OpenedCall, Refusal>>,
    },
    /// Remote candidates for `session` (trickled by the client).
    Candidates {
        /// The session.
        session: PeerId,
        /// Its candidates, in order.
        candidates: Vec<IceCandidate>,
        /// `false` when there is no such session.
        reply: oneshot::Sender<bool>,
    },
    /// End `session` now.
    End {
        /// The session.
        session: PeerId,
        /// `false` when there was no such session.
        reply: oneshot::Sender<bool>,
    },
}

/// A call taken through [`CallCommand::Open`].
pub struct OpenedCall {
    /// Its id among the camera's viewers (`/metrics` names it).
    pub session: PeerId,
    /// Its answer, complete once its candidates are gathered.
    pub answer: peer::AnswerSource,
}

impl std::fmt::Debug for OpenedCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedCall")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

/// Why a call was not taken: a protocol error code and a message for the viewer.
#[derive(Debug)]
pub struct Refusal {
    /// `max-viewers`, `no-h264` or `answer-failed`.
    pub code: &'static str,
    /// What the viewer's page or player shows.
    pub message: String,
}

impl Camera {
    /// Answer `from`'s first offer with a new viewer connection fed from the encode, or say
    /// why not (its viewer limit, no codec both sides have, an offer it cannot take).
    pub(super) async fn new_call(&mut self, from: PeerId, sdp: String) -> Result<String, Refusal> {
        if self.peers.len() >= self.settings.max_viewers {
            self.state.viewers_refused.fetch_add(1, Ordering::Relaxed);
            warn_gated!(self.refusals, viewer = %from, max = self.settings.max_viewers, "viewer refused: camera at its viewer limit");
            let message = format!(
                "this camera serves at most {} viewers at once; try again later",
                self.settings.max_viewers
            );
            return Err(Refusal {
                code: "max-viewers",
                message,
            });
        }
        let ice = self.webrtc_ice_servers().await;
        let has_turn = ice
            .iter()
            .any(|s| s.urls.iter().any(|u| u.starts_with("turn")));
        if self.media.encoder == crate::media::encoder::EncoderKind::Passthrough
            && self.media.sent_sps().is_none()
            && self.media.stats.started_unix_ms.load(Ordering::Relaxed) != 0
        {
            // A passed-through source picks its own profile: answer with what it
            // really sends, once its first keyframe is out (bounded; before any start,
            // as for the first viewer of an on-demand camera, the guess is used).
            let deadline = tokio::time::Instant::now() + PASSTHROUGH_SPS_WAIT;
            while self.media.sent_sps().is_none() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let h264 = self.media.h264_profile();
        let Some(codec) = peer::choose_codec(&sdp, &h264, self.media.vp8.is_some()) else {
            let codecs = offered_codecs(&sdp);
            let message = if crate::media::h264::offered_h264(&sdp).is_empty() {
                warn_gated!(self.refusals, viewer = %from, offered = %codecs, "viewer cannot decode H.264 and the VP8 fallback is off (video.fallback); refused");
                "this browser cannot decode H.264 video; try Chrome, Safari, or Firefox with the OpenH264 plugin".to_owned()
            } else {
                warn_gated!(self.refusals, viewer = %from, offered = %codecs, stream = %h264, "viewer's offer has no H.264 of the stream's profile and there is no VP8 fallback; refused");
                format!(
                    "this camera sends H.264 {h264}, which this browser does not offer to decode"
                )
            };
            return Err(Refusal {
                code: "no-h264",
                message,
            });
        };
        let (video, keyframes) = match (codec, &self.media.vp8) {
            (peer::VideoCodec::Vp8, Some(vp8)) => (vp8.video.subscribe(), vp8.keyframes.clone()),
            _ => (self.media.video.subscribe(), self.media.keyframes.clone()),
        };
        let setup = PeerSetup {
            viewer: from.clone(),
            ice_servers: ice,
            relay_only: self.settings.relay_only
                || self.state.relay_auto.load(Ordering::Relaxed)
                || (self.settings.relay_when_turn && has_turn),
            udp_addrs: self.settings.udp_addrs.clone(),
            mdns: self.settings.mdns,
            playout_delay_zero: self.settings.playout_delay_zero,
            events: self.events_tx.clone(),
            video,
            audio: self.media.has_audio.then(|| self.media.audio.subscribe()),
            keyframes,
            codec,
            h264,
            video_tx: self.media.video.clone(),
            lower: self.media.renditions.clone(),
            video_kbps: self.media.video_kbps(),
            audio_kbps: if self.media.has_audio {
                self.media.audio_kbps
            } else {
                0
            },
        };
        match peer::answer(setup, sdp).await {
            Ok((mut p, answer)) => {
                if codec == peer::VideoCodec::Vp8 {
                    p.rendition = self.media.vp8.as_ref().map(|r| r.acquire());
                }
                let _ = p.stats.codec.set(codec);
                if let Ok(mut v) = self.state.viewers.lock() {
                    v.insert(from.clone(), p.stats.clone());
                }
                self.arm_connect_deadline(&from, p.cancel.clone());
                self.peers.insert(from.clone(), p);
                self.peer_session.insert(from.clone(), self.session);
                self.publish_count();
                tracing::info!(viewer = %from, viewers = self.peers.len(), %codec, "viewer connecting");
                Ok(answer)
            }
            Err(e) => {
                warn_gated!(self.refusals, viewer = %from, error = %e, "cannot answer viewer's offer");
                let message = format!("the camera could not answer: {e}");
                Err(Refusal {
                    code: "answer-failed",
                    message,
                })
            }
        }
    }

    /// A call from outside the room (see [`CallCommand`]).
    pub(super) async fn on_call_command(&mut self, cmd: CallCommand) {
        match cmd {
            CallCommand::Open { offer, reply } => {
                let session = format!("whep-{:016x}", rand::random::<u64>());
                let result = self.new_call(session.clone(), offer).await;
                let opened = match result {
                    Ok(_) => match self.peers.get(&session) {
                        Some(p) => {
                            self.outside.insert(session.clone());
                            Ok(OpenedCall {
                                answer: p.answer_source(),
                                session,
                            })
                        }
                        None => Err(Refusal {
                            code: "answer-failed",
                            message: "the call ended before it was answered".into(),
                        }),
                    },
                    Err(r) => Err(r),
                };
                if let Err(Ok(call)) = reply.send(opened) {
                    // The client went away while it was being answered.
                    self.drop_peer(&call.session, "its client left before the answer");
                }
            }
            CallCommand::Candidates {
                session,
                candidates,
                reply,
            } => {
                let known = match self.peers.get(&session) {
                    Some(p) if self.outside.contains(&session) => {
                        for c in candidates {
                            if let Err(e) = peer::add_candidate(p, c).await {
                                tracing::debug!(viewer = %session, error = %e, "remote candidate refused");
                            }
                        }
                        true
                    }
                    _ => false,
                };
                let _ = reply.send(known);
            }
            CallCommand::End { session, reply } => {
                let known = self.outside.contains(&session);
                if known {
                    self.drop_peer(&session, "its client ended the session");
                }
                let _ = reply.send(known);
            }
        }
    }
}

/// The codec names in an SDP offer, for log lines.
pub fn offered_codecs(sdp: &str) -> String {
    let mut names: Vec<String> = sdp
        .lines()
        .filter_map(|l| l.strip_prefix("a=rtpmap:"))
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|c| c.split('/').next())
        .filter(|c| {
            !matches!(
                c.to_ascii_lowercase().as_str(),
                "rtx" | "red" | "ulpfec" | "flexfec-03" | "cn" | "telephone-event"
            )
        })
        .map(str::to_owned)
        .collect();
    names.dedup();
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_list() {
        let sdp = "a=rtpmap:120 VP8/90000\r\na=rtpmap:124 rtx/90000\r\na=rtpmap:98 VP9/90000\r\na=rtpmap:109 opus/48000/2\r\n";
        assert_eq!(offered_codecs(sdp), "VP8, VP9, opus");
    }
}
