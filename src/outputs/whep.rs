//! WHEP (draft-ietf-wish-whep), the standard door for players that are not campeer's page:
//! `POST /whep/<room>` with an SDP offer gets `201 Created`, the answer with every candidate
//! the camera has (many players never trickle), the session's `Location` and `ETag`, and
//! `Link: rel="ice-server"` entries with the STUN/TURN servers the room protocol would hand out.
//! `PATCH` on the session trickles the player's candidates (`application/trickle-ice-sdpfrag`;
//! an ICE restart gets 501, which players take as "start a new session"); `DELETE` ends it at
//! once.
//!
//! Owns the HTTP side only: the call itself is an ordinary viewer of the camera's one encode,
//! taken by the task that owns the viewers ([`crate::camera::CallCommand`]), under the same
//! viewer limit, connect deadline and `/metrics`. Access is the room's own
//! ([`super::access`]); the session URL, unguessable, is what later requests prove themselves
//! with. A browser page of another origin is refused unless `server.allowed-origins` lists it,
//! as for the room WebSocket; CORS then lets it read the answer.

use super::access::{Admission, ViewerAccess};
use crate::camera::{CallCommand, Refusal};
use crate::signal::admission::Admitted;
use crate::signal::ice::IceProvider;
use crate::signal::protocol::{IceCandidate, IceServer};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot};

/// The largest offer or sdpfrag taken (browsers' offers are 3–6 kB).
const MAX_BODY: usize = 64 * 1024;
/// How long the camera may take to answer before the player is told it is busy.
const ANSWER_WAIT: Duration = Duration::from_secs(10);
/// How long the answer waits for the camera's candidates to be gathered.
const GATHER_WAIT: Duration = Duration::from_secs(3);
/// Content type of offers and answers.
const SDP: &str = "application/sdp";
/// Content type of trickled candidates.
const SDPFRAG: &str = "application/trickle-ice-sdpfrag";

/// The WHEP endpoint of one camera.
pub struct Whep {
    access: ViewerAccess,
    calls: mpsc::Sender<CallCommand>,
    ice: IceProvider,
    allowed_origins: Arc<[String]>,
}

impl Whep {
    /// WHEP for the room `access` guards, its calls taken through `calls`, handing out `ice`
    /// servers, and letting pages of `allowed_origins` in besides the server's own.
    pub fn new(
        access: ViewerAccess,
        calls: mpsc::Sender<CallCommand>,
        ice: IceProvider,
        allowed_origins: Arc<[String]>,
    ) -> Self {
        Self {
            access,
            calls,
            ice,
            allowed_origins,
        }
    }

    /// `Some(origin)` for CORS when the request came from a page allowed to use WHEP; `Err`
    /// when it came from a page that is not.
    fn origin(&self, headers: &HeaderMap) -> Result<Option<HeaderValue>, Response> {
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(None);
        };
        if crate::signal::server::origin_allowed(
            origin.to_str().ok().or(Some("null")),
            get("host"),
            get("x-forwarded-host"),
            &self.allowed_origins,
        ) {
            Ok(Some(origin.clone()))
        } else {
            Err(plain(
                StatusCode::FORBIDDEN,
                "pages of this origin may not use this server (server.allowed-origins)",
            ))
        }
    }
}

/// `POST /whep/<room>`, `PATCH`/`DELETE /whep/<room>/<session>`, and their CORS preflights.
pub fn routes(whep: Arc<Whep>) -> axum::Router {
    use axum::routing::{options, post};
    axum::Router::new()
        .route("/whep/{room}", post(offer).options(preflight))
        .route(
            "/whep/{room}/{session}",
            options(preflight).patch(trickle).delete(end),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(whep)
}

/// A text response.
fn plain(status: StatusCode, why: impl Into<String>) -> Response {
    let mut text = why.into();
    text.push('\n');
    (status, text).into_response()
}

/// Adds the CORS headers for `origin` (when a page may read the response).
fn with_cors(mut res: Response, origin: Option<HeaderValue>) -> Response {
    if let Some(origin) = origin {
        let h = res.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Location, Link, ETag, Accept-Patch"),
        );
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    res
}

fn content_type_is(headers: &HeaderMap, want: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(want))
}

async fn preflight(State(whep): State<Arc<Whep>>, headers: HeaderMap) -> Response {
    let origin = match whep.origin(&headers) {
        Ok(o) => o,
        Err(refused) => return refused,
    };
    let mut res = StatusCode::NO_CONTENT.into_response();
    let h = res.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, PATCH, DELETE, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type, If-Match"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    h.insert("accept-post", HeaderValue::from_static(SDP));
    h.insert("accept-patch", HeaderValue::from_static(SDPFRAG));
    with_cors(res, origin)
}

/// The status a refused call gets.
fn refusal_response(r: Refusal) -> Response {
    let status = match r.code {
        "max-viewers" => StatusCode::SERVICE_UNAVAILABLE,
        "no-h264" => StatusCode::NOT_ACCEPTABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    let mut res = plain(status, r.message);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
    }
    res
}

/// One `Link` header value for an ICE server URL (RFC 8288 quoting).
fn ice_link(url: &str, server: &IceServer) -> Option<HeaderValue> {
    let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut v = format!("<{url}>; rel=\"ice-server\"");
    if let (Some(user), Some(cred)) = (&server.username, &server.credential) {
        v.push_str(&format!(
            "; username=\"{}\"; credential=\"{}\"; credential-type=\"password\"",
            quote(user),
            quote(cred)
        ));
    }
    HeaderValue::from_str(&v).ok()
}

async fn offer(
    State(whep): State<Arc<Whep>>,
    Path(room): Path<String>,
    admitted: Option<axum::Extension<Admitted>>,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let origin = match whep.origin(&headers) {
        Ok(o) => o,
        Err(refused) => return refused,
    };
    let res = answer(
        &whep,
        &room,
        admitted.as_ref().map(|e| &e.0),
        &uri,
        &headers,
        body,
    )
    .await;
    with_cors(res, origin)
}

async fn answer(
    whep: &Whep,
    room: &str,
    admitted: Option<&Admitted>,
    uri: &Uri,
    headers: &HeaderMap,
    body: String,
) -> Response {
    if room != whep.access.room() {
        return plain(StatusCode::NOT_FOUND, "no camera streams to that room here");
    }
    if !content_type_is(headers, SDP) {
        return plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a WHEP offer is an SDP (Content-Type: application/sdp)",
        );
    }
    let now = SystemTime::now();
    let admission = match whep.access.check_request(headers, uri, admitted, None, now) {
        Ok(a) => a,
        Err(refused) => return refused.into_response(),
    };
    if !body.starts_with("v=0") {
        return plain(StatusCode::BAD_REQUEST, "the body is not an SDP offer");
    }
    let (reply, answered) = oneshot::channel();
    let sent = whep.calls.send(CallCommand::Open { offer: body, reply });
    let call = match tokio::time::timeout(ANSWER_WAIT, async {
        sent.await.ok()?;
        answered.await.ok()
    })
    .await
    {
        Ok(Some(Ok(call))) => call,
        Ok(Some(Err(refused))) => return refusal_response(refused),
        Ok(None) => return plain(StatusCode::SERVICE_UNAVAILABLE, "the camera is stopping"),
        Err(_) => {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the camera did not answer in time; try again",
            );
        }
    };
    let sdp = call.answer.with_candidates(GATHER_WAIT).await;
    let servers = match admission {
        Admission::Open => whep.ice.for_tokenless_peer(&call.session, now),
        Admission::Token { until } => whep.ice.for_peer_until(
            &call.session,
            now,
            Some(std::time::UNIX_EPOCH + Duration::from_secs(until)),
        ),
    };
    let mut res = (StatusCode::CREATED, sdp).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDP));
    if let Ok(v) = HeaderValue::from_str(&format!("/whep/{room}/{}", call.session)) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&etag(&call.session)) {
        h.insert(header::ETAG, v);
    }
    h.insert("accept-patch", HeaderValue::from_static(SDPFRAG));
    for s in &servers {
        for url in &s.urls {
            if let Some(v) = ice_link(url, s) {
                h.append(header::LINK, v);
            }
        }
    }
    res
}

/// A session's entity tag: it never restarts ICE, so one per session.
fn etag(session: &str) -> String {
    format!("\"{session}\"")
}

/// A session id as campeer makes them (`whep-` and 16 hex digits).
fn valid_session(s: &str) -> bool {
    s.strip_prefix("whep-")
        .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The candidates of a trickle-ice-sdpfrag (RFC 8840), with the media section they belong to.
fn sdpfrag_candidates(frag: &str) -> Vec<IceCandidate> {
    let mut out = Vec::new();
    let mut mid: Option<String> = None;
    let mut index: Option<u16> = None;
    let mut ufrag: Option<String> = None;
    for line in frag.lines().map(str::trim) {
        if line.starts_with("m=") {
            index = Some(index.map_or(0, |i| i.saturating_add(1)));
            mid = None;
        } else if let Some(m) = line.strip_prefix("a=mid:") {
            mid = Some(m.to_owned());
        } else if let Some(u) = line.strip_prefix("a=ice-ufrag:") {
            ufrag = Some(u.to_owned());
        } else if let Some(c) = line.strip_prefix("a=") {
            if c.starts_with("candidate:") {
                out.push(IceCandidate {
                    candidate: c.to_owned(),
                    sdp_mid: mid.clone(),
                    sdp_m_line_index: index,
                    username_fragment: ufrag.clone(),
                });
            }
        }
    }
    out
}

/// 404 unless `session` names one of this room's sessions as campeer makes them.
fn unknown_session(whep: &Whep, room: &str, session: &str) -> Option<Response> {
    (room != whep.access.room() || !valid_session(session))
        .then(|| plain(StatusCode::NOT_FOUND, "no such WHEP session"))
}

/// Send the camera `command` made with a reply channel; `done` when it knew the session.
async fn ask_camera(
    whep: &Whep,
    command: impl FnOnce(oneshot::Sender<bool>) -> CallCommand,
    done: StatusCode,
) -> Response {
    let (reply, known) = oneshot::channel();
    if whep.calls.send(command(reply)).await.is_err() {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "the camera is stopping");
    }
    match known.await {
        Ok(true) => done.into_response(),
        _ => plain(StatusCode::NOT_FOUND, "no such WHEP session (it ended)"),
    }
}

/// Why a trickle request is not taken, if it is not.
fn trickle_refusal(headers: &HeaderMap, session: &str) -> Option<Response> {
    if !content_type_is(headers, SDPFRAG) {
        return Some(plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "trickled candidates are an application/trickle-ice-sdpfrag",
        ));
    }
    let tag = headers.get(header::IF_MATCH)?.to_str().unwrap_or("").trim();
    if tag == "*" {
        // An ICE restart (the draft's `If-Match: *`): players take 501 and start over.
        return Some(plain(
            StatusCode::NOT_IMPLEMENTED,
            "ICE restart is not supported; end this session and start a new one",
        ));
    }
    (tag != etag(session)).then(|| {
        plain(
            StatusCode::PRECONDITION_FAILED,
            "that is not this session's ETag",
        )
    })
}

async fn trickle(
    State(whep): State<Arc<Whep>>,
    Path((room, session)): Path<(String, String)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let origin = match whep.origin(&headers) {
        Ok(o) => o,
        Err(refused) => return refused,
    };
    if let Some(refused) =
        unknown_session(&whep, &room, &session).or_else(|| trickle_refusal(&headers, &session))
    {
        return with_cors(refused, origin);
    }
    let candidates = sdpfrag_candidates(&body);
    let res = ask_camera(
        &whep,
        |reply| CallCommand::Candidates {
            session,
            candidates,
            reply,
        },
        StatusCode::NO_CONTENT,
    )
    .await;
    with_cors(res, origin)
}

async fn end(
    State(whep): State<Arc<Whep>>,
    Path((room, session)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let origin = match whep.origin(&headers) {
        Ok(o) => o,
        Err(refused) => return refused,
    };
    if let Some(refused) = unknown_session(&whep, &room, &session) {
        return with_cors(refused, origin);
    }
    let res = ask_camera(
        &whep,
        |reply| CallCommand::End { session, reply },
        StatusCode::OK,
    )
    .await;
    with_cors(res, origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trickled_candidates_keep_their_media_section() {
        let frag = "a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n\
                    m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
                    a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host\r\n\
                    m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n\
                    a=candidate:3471623853 1 udp 2122194687 198.51.100.2 61765 typ host\r\n\
                    a=end-of-candidates\r\n";
        let c = sdpfrag_candidates(frag);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].sdp_mid.as_deref(), Some("0"));
        assert_eq!(c[0].sdp_m_line_index, Some(0));
        assert!(c[0].candidate.starts_with("candidate:1387637174 1 udp"));
        assert_eq!(c[1].sdp_mid.as_deref(), Some("1"));
        assert_eq!(c[1].sdp_m_line_index, Some(1));
        assert_eq!(c[1].username_fragment.as_deref(), Some("EsAw"));
        assert!(sdpfrag_candidates("garbage\n\u{0}").is_empty());
    }

    #[test]
    fn ice_servers_become_link_headers() {
        let turn = IceServer {
            urls: vec!["turn:t.example:3478?transport=udp".into()],
            username: Some("1700000000:whep-1".into()),
            credential: Some("a\"b".into()),
        };
        let v = ice_link(&turn.urls[0], &turn).expect("a header value");
        assert_eq!(
            v.to_str().expect("ASCII"),
            "<turn:t.example:3478?transport=udp>; rel=\"ice-server\"; username=\"1700000000:whep-1\"; credential=\"a\\\"b\"; credential-type=\"password\""
        );
        let stun = IceServer {
            urls: vec!["stun:s.example".into()],
            username: None,
            credential: None,
        };
        assert_eq!(
            ice_link(&stun.urls[0], &stun).expect("a header value"),
            "<stun:s.example>; rel=\"ice-server\""
        );
    }

    #[test]
    fn session_ids_are_only_those_campeer_makes() {
        assert!(valid_session("whep-0123456789abcdef"));
        assert!(!valid_session("whep-0123"));
        assert!(!valid_session("0123456789abcdef"));
        assert!(!valid_session("whep-0123456789abcdeg"));
    }

    #[test]
    fn refusals_get_the_statuses_players_expect() {
        let r = |code| {
            refusal_response(Refusal {
                code,
                message: "why".into(),
            })
            .status()
        };
        assert_eq!(r("max-viewers"), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r("no-h264"), StatusCode::NOT_ACCEPTABLE);
        assert_eq!(r("answer-failed"), StatusCode::BAD_REQUEST);
    }
}
