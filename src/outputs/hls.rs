//! HLS: `GET /hls/<room>/index.m3u8` and its segments, for players and devices without WebRTC
//! (Safari natively, hls.js, VLC, TVs).
//!
//! Owns the endpoint and one segmenter task that runs while anyone plays: a [`Feed`] whose
//! pipeline cuts the viewers' H.264 into MPEG-TS segments at its keyframes (`hlssink2`), with
//! AAC audio made from the Opus (players of MPEG-TS HLS take AAC, not Opus). Nothing is
//! encoded twice. The first playlist request starts it (and waits for the first segments);
//! it holds a share of capture demand while it runs, and stops `hls.idle-stop` after the last
//! request of any player, deleting its files. Access is the room's viewer rule; the playlist
//! repeats the request's token on every segment URI, since players fetch those by URL.

use super::access::ViewerAccess;
use super::feed::{
    Feed, FeedError, FeedSpec, aac_branch, aac_source_caps, video_branch, video_caps,
};
use crate::media::bus::{Delivery, Demand, KeyframeSource, Subscription};
use crate::media::pipeline::{EncodedFrame, MediaPipeline};
use crate::signal::admission::Admitted;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use gstreamer::prelude::*;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::broadcast;

/// Segments the playlist lists.
const PLAYLIST_LENGTH: u32 = 5;
/// Segments kept on disk (a player a little behind still finds its next one).
const KEEP_FILES: u32 = 10;
/// How long the first playlist request waits for the segmenter's first segments (longer with
/// long keyframe intervals: two segments and 5 s).
const FIRST_PLAYLIST_WAIT: Duration = Duration::from_secs(15);
/// A bus time gap this long between two frames is a capture restart.
const GAP: Duration = Duration::from_secs(3);

/// The HLS output of one camera.
pub struct Hls {
    media: Arc<MediaPipeline>,
    demand: Demand,
    access: ViewerAccess,
    dir: PathBuf,
    /// Segment length, whole seconds (the keyframe interval, rounded up).
    target: u32,
    idle_stop: Duration,
    /// Origins of pages that may read the stream (hls.js on a dashboard): `server.allowed-origins`.
    allowed_origins: Arc<[String]>,
    last_request: Mutex<Instant>,
    running: AtomicBool,
    /// Playlist and segment requests answered or refused.
    pub requests: AtomicU64,
    /// Times the segmenter started.
    pub starts: AtomicU64,
}

impl Hls {
    /// HLS of `media` for viewers of `access`'s room, segments of `keyframe_interval`.
    pub fn new(
        media: Arc<MediaPipeline>,
        demand: Demand,
        access: ViewerAccess,
        keyframe_interval: Duration,
        idle_stop: Duration,
        allowed_origins: Arc<[String]>,
    ) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "campeer-hls-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let target = keyframe_interval.as_secs_f64().ceil().max(1.0) as u32;
        Self {
            media,
            demand,
            access,
            dir,
            target,
            // A player asks once a segment: with long keyframe intervals a short idle-stop
            // would end the segmenter between its requests.
            idle_stop: idle_stop.max(Duration::from_secs(u64::from(target) * 2 + 5)),
            allowed_origins,
            last_request: Mutex::new(Instant::now()),
            running: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            starts: AtomicU64::new(0),
        }
    }

    /// Whether the segmenter runs now.
    pub fn running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// Delete the segments and playlist (at exit: the segmenter is not a tracked task).
    pub fn remove_files(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    fn playlist(&self) -> PathBuf {
        self.dir.join("index.m3u8")
    }

    /// Note that a player is here (any request of its, answered now).
    fn seen(&self) {
        if let Ok(mut t) = self.last_request.lock() {
            *t = Instant::now();
        }
    }

    /// Note a playlist request and start the segmenter when it is not running.
    fn touch(self: &Arc<Self>) {
        self.seen();
        if !self.running.swap(true, Ordering::AcqRel) {
            self.starts.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(self.clone().segment());
        }
    }

    fn idle(&self) -> bool {
        self.last_request
            .lock()
            .map(|t| t.elapsed() > self.idle_stop)
            .unwrap_or(true)
    }

    /// The segmenter: from the next keyframe on, every frame into `hlssink2`, until idle.
    async fn segment(self: Arc<Self>) {
        tracing::info!(dir = %self.dir.display(), "HLS started");
        let why = self.run_segmenter().await;
        let _ = tokio::fs::remove_dir_all(&self.dir).await;
        self.running.store(false, Ordering::Release);
        match why {
            Ok(()) => tracing::info!("HLS stopped: no player asked for the playlist"),
            Err(e) => tracing::warn!(error = %e, "HLS stopped"),
        }
    }

    async fn run_segmenter(&self) -> Result<(), FeedError> {
        let _ = tokio::fs::remove_dir_all(&self.dir).await;
        // Its own directory, readable by campeer only (other users may share /tmp).
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().mode(0o700).create(&dir)
        })
        .await
        .map_err(|e| FeedError::Write(e.to_string()))?
        .map_err(|e| FeedError::Write(format!("cannot create {}: {e}", self.dir.display())))?;
        let keyframes: Arc<dyn KeyframeSource> = Arc::new(self.media.keyframes.clone());
        let mut video = Subscription::new(
            &self.media.video,
            Some(keyframes),
            Some(self.demand.guard()),
        );
        let mut audio = self.media.audio.subscribe();
        let mut feed: Option<Feed> = None;
        let mut last_pts: Option<Duration> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if self.idle() {
                        break;
                    }
                }
                d = video.next() => {
                    let f = match d {
                        Some(Delivery::Frame(f)) => f,
                        Some(_) => continue,
                        None => break,
                    };
                    if last_pts.is_some_and(|p| f.pts < p || f.pts > p + GAP) {
                        // Capture restarted: its clock began again. The segmenter ends (and
                        // its files go) rather than number segments from 0 under a playlist
                        // players already hold; their next request starts it afresh.
                        return Err(FeedError::Write("capture restarted".into()));
                    }
                    last_pts = Some(f.pts);
                    if feed.is_none() {
                        feed = Some(self.open(f.pts).await?);
                    }
                    if let Some(feed) = feed.as_mut() {
                        feed.push_video(&f)?;
                    }
                }
                a = audio.recv(), if self.media.has_audio => {
                    match a {
                        Ok(p) => {
                            if let Some(feed) = feed.as_mut() {
                                push_audio(feed, &p);
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                }
            }
        }
        if let Some(feed) = feed {
            feed.abort();
        }
        Ok(())
    }

    /// The segmenting pipeline, its time 0 at bus time `base`.
    async fn open(&self, base: Duration) -> Result<Feed, FeedError> {
        let video_caps = video_caps(&self.media);
        let audio_caps = aac_source_caps(&self.media, "HLS");
        let dir = self.dir.clone();
        let target = self.target;
        tokio::task::spawn_blocking(move || {
            let mut desc = format!(
                "{}  hlssink2 name=hlssink target-duration={target} \
                 playlist-length={PLAYLIST_LENGTH} max-files={KEEP_FILES} \
                 send-keyframe-requests=false",
                video_branch("hls", "hlssink.video")
            );
            if audio_caps.is_some() {
                desc.push_str("  ");
                desc.push_str(&aac_branch("hls", "hlssink.audio"));
            }
            let spec = FeedSpec {
                what: "HLS",
                desc: &desc,
                sources: ("hlsv", "hlsa"),
                video_caps: &video_caps,
                audio_caps: audio_caps.as_ref(),
            };
            Feed::open(spec, base, |p| {
                let sink = p
                    .by_name("hlssink")
                    .ok_or_else(|| FeedError::Build("HLS", "hlssink2 missing".into()))?;
                sink.set_property(
                    "location",
                    dir.join("segment%05d.ts").to_string_lossy().as_ref(),
                );
                sink.set_property(
                    "playlist-location",
                    dir.join("index.m3u8").to_string_lossy().as_ref(),
                );
                Ok(())
            })
        })
        .await
        .map_err(|e| FeedError::Write(e.to_string()))?
    }
}

fn push_audio(feed: &mut Feed, p: &EncodedFrame) {
    if let Err(e) = feed.push_audio(p) {
        tracing::debug!(error = %e, "HLS audio packet not taken");
    }
}

/// Whether `name` is one of the segmenter's segment files (`segment00042.ts`).
pub fn is_segment_name(name: &str) -> bool {
    name.strip_prefix("segment")
        .and_then(|r| r.strip_suffix(".ts"))
        .is_some_and(|n| n.len() == 5 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// `playlist` with `?token=<token>` on every URI line, so a player fetching the segments by URL
/// passes the room's rule as the playlist request did.
pub fn with_token(playlist: &str, token: Option<&str>) -> String {
    // Tokens are URL-safe base64 with dots; anything else (an open room takes any string) is
    // not repeated, so nothing a request sends can add lines to the playlist.
    let token = token.filter(|t| {
        t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    });
    let mut out = String::with_capacity(playlist.len() + 64);
    for line in playlist.lines() {
        out.push_str(line);
        if let Some(t) = token
            && !line.is_empty()
            && !line.starts_with('#')
        {
            out.push_str("?token=");
            out.push_str(t);
        }
        out.push('\n');
    }
    out
}

/// `?token=` on HLS URLs.
#[derive(serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// The routes of `hls`.
pub fn routes(hls: Arc<Hls>) -> axum::Router {
    axum::Router::new()
        .route("/hls/{room}/{file}", axum::routing::get(file))
        .with_state(hls)
}

/// `Access-Control-Allow-Origin` for a page of an allowed origin (hls.js fetches the playlist
/// and segments with XHR); other pages get no CORS headers, so the browser keeps the response
/// from them.
fn with_cors(hls: &Hls, headers: &HeaderMap, mut res: Response) -> Response {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(origin) = headers.get(header::ORIGIN)
        && crate::signal::server::origin_allowed(
            origin.to_str().ok().or(Some("null")),
            get("host"),
            get("x-forwarded-host"),
            &hls.allowed_origins,
        )
    {
        let h = res.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    res
}

async fn file(
    State(hls): State<Arc<Hls>>,
    admitted: Option<axum::Extension<Admitted>>,
    uri: Uri,
    headers: HeaderMap,
    Path((room, name)): Path<(String, String)>,
    Query(query): Query<TokenQuery>,
) -> Response {
    let res = answer(&hls, admitted, uri, &headers, room, name, query).await;
    with_cors(&hls, &headers, res)
}

async fn answer(
    hls: &Arc<Hls>,
    admitted: Option<axum::Extension<Admitted>>,
    uri: Uri,
    headers: &HeaderMap,
    room: String,
    name: String,
    query: TokenQuery,
) -> Response {
    hls.requests.fetch_add(1, Ordering::Relaxed);
    let not_found = || (StatusCode::NOT_FOUND, "no such HLS file\n").into_response();
    if room != hls.access.room() {
        return not_found();
    }
    if let Err(e) = hls.access.check_request(
        headers,
        &uri,
        admitted.as_ref().map(|axum::Extension(a)| a),
        query.token.as_deref(),
        SystemTime::now(),
    ) {
        tracing::debug!(error = %e, "HLS refused");
        return e.into_response();
    }
    if name == "index.m3u8" {
        return playlist(
            hls,
            query.token.as_deref().or(super::access::bearer(headers)),
        )
        .await;
    }
    if !is_segment_name(&name) {
        return not_found();
    }
    match tokio::fs::read(hls.dir.join(&name)).await {
        Ok(bytes) => {
            hls.seen();
            (
                [
                    (header::CONTENT_TYPE, HeaderValue::from_static("video/mp2t")),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                ],
                bytes,
            )
                .into_response()
        }
        Err(_) => not_found(),
    }
}

async fn playlist(hls: &Arc<Hls>, token: Option<&str>) -> Response {
    hls.touch();
    let deadline = Instant::now()
        + FIRST_PLAYLIST_WAIT.max(Duration::from_secs(u64::from(hls.target) * 2 + 5));
    loop {
        // A player waiting here is a player: the segmenter is not idle.
        hls.seen();
        // hlssink2 writes the playlist once its first segment is complete.
        if let Ok(text) = tokio::fs::read_to_string(hls.playlist()).await
            && text.contains("#EXTINF")
        {
            // Idle time counts from the answer: the first one waited for a whole segment.
            hls.seen();
            return (
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/vnd.apple.mpegurl"),
                    ),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                ],
                with_token(&text, token),
            )
                .into_response();
        }
        if Instant::now() > deadline || !hls.running() {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, HeaderValue::from_static("2"))],
                "the HLS stream is not ready yet\n",
            )
                .into_response();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_segment_names_are_served() {
        assert!(is_segment_name("segment00000.ts"));
        assert!(is_segment_name("segment12345.ts"));
        for bad in [
            "segment0000.ts",
            "segment00000.mp4",
            "../segment00000.ts",
            "index.m3u8",
            "segmentabcde.ts",
        ] {
            assert!(!is_segment_name(bad), "{bad}");
        }
    }

    #[test]
    fn the_token_rides_on_every_segment_uri() {
        let p = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n\n#EXTINF:2,\nsegment00001.ts\n#EXTINF:2,\nsegment00002.ts\n";
        let out = with_token(p, Some("v1.abc.def"));
        assert!(
            out.contains("\nsegment00001.ts?token=v1.abc.def\n"),
            "{out}"
        );
        assert!(
            out.contains("\nsegment00002.ts?token=v1.abc.def\n"),
            "{out}"
        );
        assert!(out.contains("#EXTINF:2,\n"), "tags are left alone: {out}");
        assert_eq!(with_token(p, None), p);
        assert_eq!(
            with_token(p, Some("x\n#EXT-X-ENDLIST")),
            p,
            "no line injection"
        );
    }
}
