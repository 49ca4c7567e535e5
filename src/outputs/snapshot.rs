//! Snapshots: `GET /snapshot.jpg`, a JPEG of the camera's current picture at the configured
//! size, for Home Assistant's generic camera, scripts and status pages.
//!
//! Owns the endpoint (its access check is the room's own, [`super::access`]) and the sharing of
//! conversions:
//! requests that arrive while one is on its way wait for it, and a picture younger than one
//! frame interval is handed out again, so a burst of requests costs one JPEG encode. Taking a
//! snapshot holds a share of capture demand, so it wakes an idle on-demand camera.

use super::access::{AccessRefusal, ViewerAccess};
use crate::media::bus::Demand;
use crate::media::pipeline::{EncodedFrame, MediaPipeline};
use crate::signal::admission::Admitted;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// Why no snapshot was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The room's access rule refused the request.
    #[error(transparent)]
    Refused(#[from] AccessRefusal),
    /// The camera gave no picture (none in time, or none it can convert).
    #[error("{0}")]
    Unavailable(String),
}

impl IntoResponse for SnapshotError {
    fn into_response(self) -> Response {
        match self {
            SnapshotError::Refused(r) => r.into_response(),
            SnapshotError::Unavailable(why) => {
                (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response()
            }
        }
    }
}

/// A conversion's outcome, once there is one.
type Outcome = Option<Result<Arc<EncodedFrame>, SnapshotError>>;

/// The conversion in progress and the last picture.
#[derive(Default)]
struct Shared {
    inflight: Option<watch::Receiver<Outcome>>,
    last: Option<Arc<EncodedFrame>>,
}

/// The snapshot service of one camera.
pub struct Snapshots {
    media: Arc<MediaPipeline>,
    demand: Demand,
    access: ViewerAccess,
    /// A picture this young is handed out again.
    frame_interval: Duration,
    /// How long a request waits for a picture (capture may have to start first).
    timeout: Duration,
    shared: Mutex<Shared>,
    /// Requests answered or refused.
    pub requests: AtomicU64,
}

impl Snapshots {
    /// Snapshots of `media`'s picture for viewers of `room`, waiting up to `timeout`.
    pub fn new(
        media: Arc<MediaPipeline>,
        demand: Demand,
        access: ViewerAccess,
        framerate: u32,
        timeout: Duration,
    ) -> Self {
        Self {
            media,
            demand,
            access,
            frame_interval: Duration::from_secs(1) / framerate.max(1),
            timeout,
            shared: Mutex::new(Shared::default()),
            requests: AtomicU64::new(0),
        }
    }

    /// JPEG conversions done so far.
    pub fn conversions(&self) -> u64 {
        self.media
            .snapshots
            .as_ref()
            .map(|b| b.stats.frames.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// The room's access rule these pictures are under.
    pub fn access(&self) -> &ViewerAccess {
        &self.access
    }

    /// Whether the camera has raw pictures to make JPEGs of (not when its own H.264 is passed
    /// through).
    pub fn has_pictures(&self) -> bool {
        self.media.snapshots.is_some()
    }

    /// A share of capture demand (an idle on-demand camera starts for it).
    pub fn demand_guard(&self) -> crate::media::bus::DemandGuard {
        self.demand.guard()
    }

    /// The current picture as a JPEG: a recent one, the one being made, or a new one.
    pub async fn take(self: &Arc<Self>) -> Result<Arc<EncodedFrame>, SnapshotError> {
        if self.media.snapshots.is_none() {
            return Err(SnapshotError::Unavailable(
                "this camera's own H.264 is passed through as it is: there is no raw picture to \
                 make a JPEG of"
                    .into(),
            ));
        }
        let mut rx = {
            let Ok(mut shared) = self.shared.lock() else {
                return Err(SnapshotError::Unavailable("snapshot state poisoned".into()));
            };
            if let Some(last) = &shared.last
                && last.at.elapsed() <= self.frame_interval
            {
                return Ok(last.clone());
            }
            match &shared.inflight {
                // Still on its way (its task alive and without an outcome): wait for it.
                Some(rx) if rx.borrow().is_none() && rx.has_changed().is_ok() => rx.clone(),
                _ => {
                    let (tx, rx) = watch::channel(None);
                    shared.inflight = Some(rx.clone());
                    // Its own task: a request that gives up does not cancel the others' picture.
                    tokio::spawn(self.clone().convert(tx));
                    rx
                }
            }
        };
        match rx.wait_for(Option::is_some).await {
            Ok(result) => result
                .clone()
                .unwrap_or_else(|| Err(SnapshotError::Unavailable("no picture was made".into()))),
            Err(_) => Err(SnapshotError::Unavailable(
                "the conversion ended without a picture".into(),
            )),
        }
    }

    /// Let one raw picture through to the JPEG encoder (starting capture if it is idle) and
    /// publish what comes out, or why nothing did.
    async fn convert(self: Arc<Self>, tx: watch::Sender<Outcome>) {
        let Some(branch) = self.media.snapshots.as_ref() else {
            return;
        };
        let mut jpegs = branch.jpeg.subscribe();
        let _capture = self.demand.guard();
        branch.arm();
        let picture = async {
            loop {
                match jpegs.recv().await {
                    Ok(jpeg) => return Some(jpeg),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        };
        let result = match tokio::time::timeout(self.timeout, picture).await {
            Ok(Some(jpeg)) => Ok(jpeg),
            Ok(None) => Err(SnapshotError::Unavailable("capture was shut down".into())),
            Err(_) => {
                branch.disarm();
                tracing::warn!(
                    source = %self.media.source,
                    timeout = ?self.timeout,
                    "snapshot: the camera delivered no picture in time"
                );
                Err(SnapshotError::Unavailable(format!(
                    "the camera delivered no picture within {:.1} s",
                    self.timeout.as_secs_f64()
                )))
            }
        };
        if let (Ok(jpeg), Ok(mut shared)) = (&result, self.shared.lock()) {
            shared.last = Some(jpeg.clone());
        }
        tx.send_replace(Some(result));
    }
}

/// `?token=` on the snapshot URL.
#[derive(serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// `GET /snapshot.jpg` for `snapshots`.
pub fn routes(snapshots: Arc<Snapshots>) -> axum::Router {
    axum::Router::new()
        .route("/snapshot.jpg", axum::routing::get(snapshot))
        .with_state(snapshots)
}

async fn snapshot(
    State(snapshots): State<Arc<Snapshots>>,
    admitted: Option<axum::Extension<Admitted>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> Response {
    snapshots.requests.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = snapshots.access.check_request(
        &headers,
        &uri,
        admitted.as_ref().map(|axum::Extension(a)| a),
        query.token.as_deref(),
        SystemTime::now(),
    ) {
        tracing::debug!(error = %e, "snapshot refused");
        return e.into_response();
    }
    match snapshots.take().await {
        Ok(jpeg) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg")),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            jpeg.data.clone(),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_picture_is_a_503_and_a_refusal_keeps_its_status() {
        let res = SnapshotError::Unavailable("none".into()).into_response();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        let res = SnapshotError::from(AccessRefusal::Forbidden("room".into())).into_response();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        let res = SnapshotError::from(AccessRefusal::TokenRequired("cam".into())).into_response();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert!(res.headers().contains_key(header::WWW_AUTHENTICATE));
    }
}
