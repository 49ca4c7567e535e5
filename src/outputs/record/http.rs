//! Recordings over HTTP: `GET /recordings` lists the segments (JSON), `GET /recordings/<name>`
//! serves one with byte ranges (so `<video>` can seek) under the room's viewer rule, and
//! `POST /recordings/start` and `/recordings/stop` switch recording under the operator's rule
//! (the room's camera token).

use super::{Recorder, store};
use crate::outputs::access::ViewerAccess;
use crate::signal::admission::Admitted;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// The recordings of one camera, as its HTTP routes see them.
pub struct Recordings {
    /// The recorder.
    pub recorder: Arc<Recorder>,
    /// The room's access rule.
    pub access: ViewerAccess,
}

/// `?token=`, `?room=` and `?download` on recording URLs.
#[derive(serde::Deserialize)]
struct RecQuery {
    token: Option<String>,
    room: Option<String>,
    download: Option<String>,
}

/// The routes of `recordings`.
pub fn routes(recordings: Arc<Recordings>) -> axum::Router {
    axum::Router::new()
        .route("/recordings", axum::routing::get(list))
        .route("/recordings/start", axum::routing::post(start))
        .route("/recordings/stop", axum::routing::post(stop))
        .route("/recordings/{name}", axum::routing::get(segment))
        .with_state(recordings)
}

/// One segment in the listing.
#[derive(serde::Serialize)]
struct Listed {
    name: String,
    /// RFC 3339 UTC start.
    start: String,
    bytes: u64,
    /// Being written now.
    open: bool,
    url: String,
}

/// The listing.
#[derive(serde::Serialize)]
struct Listing {
    room: String,
    recording: bool,
    failing: Option<String>,
    segments: Vec<Listed>,
}

/// The refusal, unless the viewer rule admits the request; 404 for another room's page.
fn viewer_refusal(
    rec: &Recordings,
    admitted: Option<&axum::Extension<Admitted>>,
    uri: &Uri,
    headers: &HeaderMap,
    query: &RecQuery,
) -> Option<Response> {
    if query
        .room
        .as_deref()
        .is_some_and(|r| r != rec.access.room())
    {
        return Some((StatusCode::NOT_FOUND, "no recordings for that room\n").into_response());
    }
    rec.access
        .check_request(
            headers,
            uri,
            admitted.map(|axum::Extension(a)| a),
            query.token.as_deref(),
            SystemTime::now(),
        )
        .err()
        .map(|e| {
            tracing::debug!(error = %e, "recordings refused");
            e.into_response()
        })
}

fn state_of(rec: &Recordings) -> Result<Listing, std::io::Error> {
    let current = rec.recorder.current();
    let segments = store::list(rec.recorder.dir())?
        .into_iter()
        .rev()
        .map(|s| Listed {
            open: current.as_deref() == Some(s.name.as_str()),
            url: format!("/recordings/{}", s.name),
            start: store::rfc3339(s.start),
            bytes: s.bytes,
            name: s.name,
        })
        .collect();
    Ok(Listing {
        room: rec.access.room().to_owned(),
        recording: rec.recorder.wanted(),
        failing: rec.recorder.failing(),
        segments,
    })
}

fn json_state(rec: &Recordings) -> Response {
    match state_of(rec) {
        Ok(l) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            serde_json::to_string(&l).unwrap_or_default(),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot list {}: {e}\n", rec.recorder.dir().display()),
        )
            .into_response(),
    }
}

async fn list(
    State(rec): State<Arc<Recordings>>,
    admitted: Option<axum::Extension<Admitted>>,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<RecQuery>,
) -> Response {
    if let Some(r) = viewer_refusal(&rec, admitted.as_ref(), &uri, &headers, &query) {
        return r;
    }
    let rec2 = rec.clone();
    tokio::task::spawn_blocking(move || json_state(&rec2))
        .await
        .unwrap_or_else(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response())
}

async fn control(rec: &Recordings, headers: &HeaderMap, on: bool) -> Response {
    if let Err(e) = rec.access.check_operator(headers, SystemTime::now()) {
        tracing::info!(error = %e, "recording control refused");
        return e.into_response();
    }
    tracing::info!(on, "recording switched over HTTP");
    rec.recorder.set_wanted(on);
    json_state(rec)
}

async fn start(State(rec): State<Arc<Recordings>>, headers: HeaderMap) -> Response {
    control(&rec, &headers, true).await
}

async fn stop(State(rec): State<Arc<Recordings>>, headers: HeaderMap) -> Response {
    control(&rec, &headers, false).await
}

/// What a `Range` header asks of a file of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeAsk {
    /// The whole file (no header, or one this server does not take: several ranges).
    Whole,
    /// Bytes `start..=end`.
    Part(u64, u64),
    /// Nothing of it can be given (416).
    Unsatisfiable,
}

/// Read a `Range` header for a file of `len` bytes.
pub fn parse_range(value: Option<&str>, len: u64) -> RangeAsk {
    let Some(v) = value else {
        return RangeAsk::Whole;
    };
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return RangeAsk::Whole;
    };
    if spec.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAsk::Unsatisfiable;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |t: &str| t.parse::<u64>().ok();
    let (start, end) = match (a.is_empty(), b.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match num(b) {
            Some(0) | None => return RangeAsk::Unsatisfiable,
            Some(n) => (len.saturating_sub(n), len.saturating_sub(1)),
        },
        (false, true) => match num(a) {
            Some(s) => (s, len.saturating_sub(1)),
            None => return RangeAsk::Unsatisfiable,
        },
        (false, false) => match (num(a), num(b)) {
            (Some(s), Some(e)) if s <= e => (s, e.min(len.saturating_sub(1))),
            _ => return RangeAsk::Unsatisfiable,
        },
        (true, true) => return RangeAsk::Unsatisfiable,
    };
    if len == 0 || start >= len {
        return RangeAsk::Unsatisfiable;
    }
    RangeAsk::Part(start, end)
}

async fn segment(
    State(rec): State<Arc<Recordings>>,
    admitted: Option<axum::Extension<Admitted>>,
    uri: Uri,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(query): Query<RecQuery>,
) -> Response {
    if let Some(r) = viewer_refusal(&rec, admitted.as_ref(), &uri, &headers, &query) {
        return r;
    }
    let not_found = || (StatusCode::NOT_FOUND, "no such recording\n").into_response();
    // Only segment names: no other file of the directory, no path out of it.
    if store::parse_segment_name(&name).is_none() {
        return not_found();
    }
    let path = rec.recorder.dir().join(&name);
    let Ok(mut file) = tokio::fs::File::open(&path).await else {
        return not_found();
    };
    let len = match file.metadata().await {
        Ok(m) if m.is_file() => m.len(),
        _ => return not_found(),
    };
    let ask = parse_range(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        len,
    );
    let (status, start, count) = match ask {
        RangeAsk::Whole => (StatusCode::OK, 0, len),
        RangeAsk::Part(s, e) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
        RangeAsk::Unsatisfiable => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            )
                .into_response();
        }
    };
    if start > 0 && file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
        return not_found();
    }
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file.take(count)));
    let mut res = Response::new(body);
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp4"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&count.to_string()) {
        h.insert(header::CONTENT_LENGTH, v);
    }
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", start + count - 1))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    if query.download.is_some()
        // The name is a checked segment name: plain ASCII, no quotes.
        && let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
    {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_read_as_browsers_send_them() {
        assert_eq!(parse_range(None, 100), RangeAsk::Whole);
        assert_eq!(parse_range(Some("bytes=0-"), 100), RangeAsk::Part(0, 99));
        assert_eq!(
            parse_range(Some("bytes=10-19"), 100),
            RangeAsk::Part(10, 19)
        );
        assert_eq!(
            parse_range(Some("bytes=90-500"), 100),
            RangeAsk::Part(90, 99)
        );
        assert_eq!(parse_range(Some("bytes=-30"), 100), RangeAsk::Part(70, 99));
        assert_eq!(parse_range(Some("bytes=-300"), 100), RangeAsk::Part(0, 99));
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), RangeAsk::Whole);
        assert_eq!(parse_range(Some("items=0-1"), 100), RangeAsk::Whole);
        for bad in [
            "bytes=100-",
            "bytes=5-2",
            "bytes=-0",
            "bytes=x-",
            "bytes=-",
            "bytes=7",
        ] {
            assert_eq!(
                parse_range(Some(bad), 100),
                RangeAsk::Unsatisfiable,
                "{bad}"
            );
        }
        assert_eq!(parse_range(Some("bytes=0-"), 0), RangeAsk::Unsatisfiable);
    }
}
