//! RTMP push: the one encode sent to each `[[rtmp]]` target (a streaming service, an
//! nginx-rtmp or MediaMTX server), the H.264 as it is and the audio as AAC made from the Opus
//! (RTMP players take AAC, not Opus).
//!
//! Owns one task per target: while it runs it holds a share of capture demand, and feeds a
//! [`Feed`] whose pipeline muxes FLV (`flvmux`) into `rtmp2sink`. A refused or lost
//! connection ends that pipeline; the task reconnects from the next keyframe after a backoff
//! (1 s, doubling to 30 s, back to 1 s once a connection has held for 10 s). The log names a
//! target without its stream key.

use super::feed::{
    Feed, FeedError, FeedSpec, aac_branch, aac_source_caps, video_branch, video_caps,
};
use crate::media::bus::{Delivery, Demand, KeyframeSource, Subscription};
use crate::media::pipeline::MediaPipeline;
use gstreamer::prelude::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// First wait before reconnecting.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest wait before reconnecting.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A connection that held this long resets the backoff, and counts as up.
const HELD: Duration = Duration::from_secs(10);
/// Pushing this long without an error means the server took the stream.
const UP_AFTER: Duration = Duration::from_secs(2);
/// A bus time gap this long between two frames is a capture restart.
const GAP: Duration = Duration::from_secs(3);

/// One RTMP target and what it reports.
pub struct RtmpPush {
    url: String,
    /// The URL as logs and metrics show it: without the stream key.
    pub shown: String,
    /// Whether the server is taking the stream now.
    pub up: AtomicBool,
    /// Connections made (the first and every reconnection).
    pub connects: AtomicU64,
    /// Connections that failed or broke.
    pub failures: AtomicU64,
}

/// `url` without its stream key (the last path element and any query) and without a user or
/// password: what may be logged.
pub fn without_key(url: &str) -> String {
    let no_query = url.split(['?', '#']).next().unwrap_or(url);
    let Some((scheme, rest)) = no_query.split_once("://") else {
        return "<not an rtmp:// URL>".into();
    };
    let mut parts: Vec<&str> = rest.split('/').collect();
    // user:password@host shows the host only.
    if let Some(host) = parts.first_mut()
        && let Some((_, h)) = host.rsplit_once('@')
    {
        *host = h;
    }
    while parts.len() > 1 && parts.last().is_some_and(|p| p.is_empty()) {
        parts.pop();
    }
    if parts.len() > 2 {
        parts.pop();
        format!("{scheme}://{}/…", parts.join("/"))
    } else {
        format!("{scheme}://{}", parts.join("/"))
    }
}

/// `text` with every secret of `url` (its stream key, user and password) replaced by `…`:
/// a server's error message may quote them.
fn scrub(text: &str, url: &str) -> String {
    let no_query = url.split(['?', '#']).next().unwrap_or(url);
    let rest = no_query
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(no_query);
    let mut secrets: Vec<&str> = Vec::new();
    if let Some(key) = rest.trim_end_matches('/').rsplit('/').next()
        && rest.contains('/')
    {
        secrets.push(key);
    }
    if let Some((userinfo, _)) = rest.split('/').next().and_then(|h| h.rsplit_once('@')) {
        secrets.extend(userinfo.split(':'));
    }
    if let Some(q) = url.split_once('?').map(|(_, q)| q) {
        secrets.push(q);
    }
    let mut out = text.to_owned();
    for s in secrets.into_iter().filter(|s| s.len() >= 3) {
        out = out.replace(s, "…");
    }
    out
}

impl RtmpPush {
    /// A target at `url` (`rtmp://host[:port]/app/streamkey`).
    pub fn new(url: String) -> Self {
        Self {
            shown: without_key(&url),
            url,
            up: AtomicBool::new(false),
            connects: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }
}

/// Push `media` to `push`'s target until `shutdown`, reconnecting as needed.
pub async fn run(
    push: Arc<RtmpPush>,
    media: Arc<MediaPipeline>,
    demand: Demand,
    shutdown: CancellationToken,
) {
    let _capture = demand.guard();
    let mut backoff = BACKOFF_MIN;
    let mut logged_failure: Option<String> = None;
    loop {
        let started = Instant::now();
        push.connects.fetch_add(1, Ordering::Relaxed);
        let outcome = tokio::select! {
            r = stream(&push, &media) => r,
            _ = shutdown.cancelled() => return,
        };
        push.up.store(false, Ordering::Relaxed);
        push.failures.fetch_add(1, Ordering::Relaxed);
        let why = match outcome {
            Ok(()) => return, // the media bus closed: the daemon is stopping
            Err(e) => scrub(&e.to_string(), &push.url),
        };
        if started.elapsed() > HELD {
            backoff = BACKOFF_MIN;
            // A connection held in between: the next failure is news again.
            logged_failure = None;
        }
        // The same failure again (a server that stays down) is logged once, not every retry.
        if logged_failure.as_deref() != Some(why.as_str()) {
            tracing::warn!(
                target_url = %push.shown,
                error = %why,
                "RTMP push failed; reconnecting with backoff"
            );
            logged_failure = Some(why);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection: from the next keyframe until an error; `Ok` when the bus closed.
async fn stream(push: &RtmpPush, media: &Arc<MediaPipeline>) -> Result<(), FeedError> {
    let keyframes: Arc<dyn KeyframeSource> = Arc::new(media.keyframes.clone());
    let mut video = Subscription::new(&media.video, Some(keyframes), None);
    let mut audio = media.audio.subscribe();
    let mut feed: Option<(Feed, Instant)> = None;
    let mut last_pts: Option<Duration> = None;
    loop {
        tokio::select! {
            d = video.next() => {
                let f = match d {
                    Some(Delivery::Frame(f)) => f,
                    Some(_) => continue,
                    None => return Ok(()),
                };
                if last_pts.is_some_and(|p| f.pts < p || f.pts > p + GAP) {
                    return Err(FeedError::Write("capture restarted".into()));
                }
                last_pts = Some(f.pts);
                if feed.is_none() {
                    feed = Some((open(push, media, f.pts).await?, Instant::now()));
                }
                if let Some((feed, since)) = feed.as_mut() {
                    feed.push_video(&f)?;
                    if since.elapsed() > UP_AFTER && !push.up.swap(true, Ordering::Relaxed) {
                        tracing::info!(target_url = %push.shown, "RTMP push connected");
                    }
                }
            }
            a = audio.recv(), if media.has_audio => match a {
                Ok(p) => {
                    if let Some((feed, _)) = feed.as_mut() {
                        feed.push_audio(&p)?;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
        }
    }
}

/// The FLV-over-RTMP pipeline, its time 0 at bus time `base`.
async fn open(
    push: &RtmpPush,
    media: &Arc<MediaPipeline>,
    base: Duration,
) -> Result<Feed, FeedError> {
    let video_caps = video_caps(media);
    let audio_caps = aac_source_caps(media, "the RTMP push");
    let url = push.url.clone();
    tokio::task::spawn_blocking(move || {
        let mut desc = format!(
            "{}  flvmux name=rtmpmux streamable=true ! rtmp2sink name=rtmpsink sync=false async=false",
            video_branch("rtmp", "rtmpmux.video")
        );
        if audio_caps.is_some() {
            desc.push_str("  ");
            desc.push_str(&aac_branch("rtmp", "rtmpmux.audio"));
        }
        let spec = FeedSpec {
            what: "RTMP",
            desc: &desc,
            sources: ("rtmpv", "rtmpa"),
            video_caps: &video_caps,
            audio_caps: audio_caps.as_ref(),
        };
        Feed::open(spec, base, |p| {
            let sink = p
                .by_name("rtmpsink")
                .ok_or_else(|| FeedError::Build("RTMP", "rtmp2sink missing".into()))?;
            sink.set_property("location", url.as_str());
            Ok(())
        })
    })
    .await
    .map_err(|e| FeedError::Write(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_never_show_the_stream_key() {
        assert_eq!(
            without_key("rtmp://live.example.com/app/sk_live_123"),
            "rtmp://live.example.com/app/…"
        );
        assert_eq!(
            without_key("rtmps://a.example:443/live2/abc?secret=1"),
            "rtmps://a.example:443/live2/…"
        );
        assert_eq!(without_key("rtmp://host/app"), "rtmp://host/app");
        assert_eq!(without_key("nonsense"), "<not an rtmp:// URL>");
        assert!(!without_key("rtmp://h/a/b/KEY").contains("KEY"));
        assert_eq!(without_key("rtmp://host/app/KEY/"), "rtmp://host/app/…");
        assert_eq!(
            without_key("rtmp://user:pa55@host:1935/app/KEY"),
            "rtmp://host:1935/app/…"
        );
    }

    #[test]
    fn server_messages_lose_the_secrets_they_quote() {
        let url = "rtmp://user:pa55word@host/app/sk_live_123?auth=zz9";
        let msg = "publish denied for sk_live_123 (user user, pa55word, auth=zz9)";
        let out = scrub(msg, url);
        for secret in ["sk_live_123", "pa55word", "auth=zz9"] {
            assert!(!out.contains(secret), "{out}");
        }
    }
}
