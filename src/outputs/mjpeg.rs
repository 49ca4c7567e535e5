//! MJPEG over HTTP: `GET /mjpeg`, a `multipart/x-mixed-replace` stream of JPEGs for `<img>`
//! tags, 3D-printer front ends (OctoPrint, Mainsail, Fluidd) and dashboards that do not speak
//! WebRTC.
//!
//! Owns the endpoint and one producer task that runs while anyone watches: it takes a picture
//! from the snapshot branch ([`super::snapshot`]) every `1 / camera.mjpeg-fps` and publishes it
//! on a `watch` channel, so every client shares each JPEG and a slow client gets the newest
//! picture when it reads again, never a backlog. Its access check is the room's own
//! ([`super::access`]); the producer holds a share of capture demand, so it wakes an idle
//! on-demand camera and keeps it up while a client watches.

use super::snapshot::Snapshots;
use crate::media::pipeline::EncodedFrame;
use crate::signal::admission::Admitted;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// The part boundary of the multipart stream.
const BOUNDARY: &str = "campeerframe";
/// How long the producer waits after a failed picture before trying again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// The MJPEG stream of one camera.
pub struct Mjpeg {
    snapshots: Arc<Snapshots>,
    interval: Duration,
    /// The newest picture as a whole multipart part, made once for every client.
    latest: watch::Sender<Option<Bytes>>,
    producing: AtomicBool,
    /// JPEGs published to the clients.
    pub frames: AtomicU64,
}

impl Mjpeg {
    /// A stream of `snapshots`' pictures at `fps` a second.
    pub fn new(snapshots: Arc<Snapshots>, fps: u32) -> Self {
        Self {
            snapshots,
            interval: Duration::from_secs(1) / fps.max(1),
            latest: watch::channel(None).0,
            producing: AtomicBool::new(false),
            frames: AtomicU64::new(0),
        }
    }

    /// Clients watching now.
    pub fn clients(&self) -> usize {
        self.latest.receiver_count()
    }

    /// A client's view of the newest picture; starts the producer if it is not running.
    fn subscribe(self: &Arc<Self>) -> watch::Receiver<Option<Bytes>> {
        let rx = self.latest.subscribe();
        if !self.producing.swap(true, Ordering::AcqRel) {
            tokio::spawn(self.clone().produce());
        }
        rx
    }

    /// Take a picture every interval while anyone watches.
    async fn produce(self: Arc<Self>) {
        let _capture = self.snapshots.demand_guard();
        loop {
            if self.latest.receiver_count() == 0 {
                self.producing.store(false, Ordering::Release);
                // A client that came in between finds `producing` false and starts another
                // producer, or this one keeps going for it: never none, never two.
                if self.latest.receiver_count() == 0 || self.producing.swap(true, Ordering::AcqRel)
                {
                    return;
                }
            }
            let started = tokio::time::Instant::now();
            match self.snapshots.take().await {
                Ok(jpeg) => {
                    self.frames.fetch_add(1, Ordering::Relaxed);
                    self.latest.send_replace(Some(part(&jpeg)));
                    tokio::time::sleep_until(started + self.interval).await;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "mjpeg: no picture");
                    tokio::time::sleep(RETRY_AFTER_FAILURE).await;
                }
            }
        }
    }
}

/// One part of the multipart stream.
fn part(jpeg: &EncodedFrame) -> Bytes {
    let head = format!(
        "--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
        jpeg.data.len()
    );
    let mut out = Vec::with_capacity(head.len() + jpeg.data.len() + 2);
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(&jpeg.data);
    out.extend_from_slice(b"\r\n");
    Bytes::from(out)
}

/// `?token=` on the stream URL (an `<img>` cannot send headers).
#[derive(serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// `GET /mjpeg` for `mjpeg`.
pub fn routes(mjpeg: Arc<Mjpeg>) -> axum::Router {
    axum::Router::new()
        .route("/mjpeg", axum::routing::get(stream))
        .with_state(mjpeg)
}

async fn stream(
    State(mjpeg): State<Arc<Mjpeg>>,
    admitted: Option<axum::Extension<Admitted>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> Response {
    if let Err(e) = mjpeg.snapshots.access().check_request(
        &headers,
        &uri,
        admitted.as_ref().map(|axum::Extension(a)| a),
        query.token.as_deref(),
        SystemTime::now(),
    ) {
        tracing::debug!(error = %e, "mjpeg refused");
        return e.into_response();
    }
    if !mjpeg.snapshots.has_pictures() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "this camera's own H.264 is passed through as it is: there is no raw picture to \
             make JPEGs of\n",
        )
            .into_response();
    }
    let mut rx = mjpeg.subscribe();
    // A picture already there goes out at once.
    rx.mark_changed();
    // Pulled by hyper only as fast as the client reads: a stalled client holds one picture.
    let parts = futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            rx.changed().await.ok()?;
            let part = rx.borrow_and_update().clone();
            if let Some(part) = part {
                return Some((Ok::<_, std::convert::Infallible>(part), rx));
            }
        }
    });
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("multipart/x-mixed-replace; boundary=campeerframe"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        axum::body::Body::from_stream(parts),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_is_a_boundary_headers_and_the_jpeg() {
        let jpeg = EncodedFrame {
            data: Bytes::from_static(&[0xff, 0xd8, 0xff, 0xd9]),
            pts: Duration::ZERO,
            duration: None,
            keyframe: true,
            at: std::time::Instant::now(),
        };
        assert_eq!(
            &part(&jpeg)[..],
            b"--campeerframe\r\nContent-Type: image/jpeg\r\nContent-Length: 4\r\n\r\n\xff\xd8\xff\xd9\r\n"
        );
    }
}
