//! Who may use the camera's HTTP outputs (snapshots, WHEP): the room's own rule, a viewer
//! token as `Authorization: Bearer` or `?token=`, none for an open room unless the request
//! named the server by a name another site could have pointed here (see
//! [`crate::signal::host`]). Owns the check and the HTTP refusals it gives.

use crate::signal::admission::Admitted;
use crate::signal::host::ReachedAs;
use crate::signal::protocol::Role;
use crate::signal::router::Access;
use crate::signal::token::TokenError;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::SystemTime;

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessRefusal {
    /// The room needs a token and none came.
    #[error("room {0:?} needs a viewer token (Authorization: Bearer <token>, or ?token=)")]
    TokenRequired(String),
    /// The room is open, but the request named the server by a name another site's DNS could
    /// have pointed here, and came without a token.
    #[error(
        "room {room:?} is open only to requests that name this server by an address or one of its own names; {name:?} is not one (server.host-names), so it needs a viewer token (Authorization: Bearer <token>, or ?token=)"
    )]
    ForeignName {
        /// The room.
        room: String,
        /// The name the request gave as Host.
        name: String,
    },
    /// The token is forged, garbled or expired.
    #[error("{0}")]
    BadToken(String),
    /// A valid token, but for another room or role.
    #[error("{0}")]
    Forbidden(String),
    /// A control request (start or stop recording) came without the room's camera token;
    /// open rooms need one too.
    #[error(
        "controlling room {0:?} needs its camera token (campeer token --room ROOM --role camera) as Authorization: Bearer <token>"
    )]
    OperatorRequired(String),
}

impl AccessRefusal {
    /// 401 (with `WWW-Authenticate: Bearer`) or 403.
    pub fn status(&self) -> StatusCode {
        match self {
            AccessRefusal::Forbidden(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

impl IntoResponse for AccessRefusal {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut res = (status, format!("{self}\n")).into_response();
        if status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

/// The access rule of one camera's room for its HTTP outputs.
#[derive(Clone)]
pub struct ViewerAccess {
    access: Access,
    room: String,
    /// Names besides LAN-only ones an open room answers to without a token.
    host_names: Arc<[String]>,
}

/// Who was let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// An open room, without a token.
    Open,
    /// A viewer token valid until this Unix time.
    Token {
        /// Its expiry.
        until: u64,
    },
}

impl ViewerAccess {
    /// The rule of `room` under `access`, open rooms trusting `host_names` besides LAN names.
    pub fn new(access: Access, room: String, host_names: Arc<[String]>) -> Self {
        Self {
            access,
            room,
            host_names,
        }
    }

    /// The camera's room.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// The rule applied to `token`, for a request that named the server as `reached` says.
    pub fn check(
        &self,
        token: Option<&str>,
        reached: &ReachedAs,
        now: SystemTime,
    ) -> Result<Admission, AccessRefusal> {
        let open = self.access.is_open(&self.room);
        let token = token.filter(|t| !t.is_empty());
        if open && (reached.foreign().is_none() || token.is_none()) {
            return match reached.foreign() {
                None => Ok(Admission::Open),
                Some(name) => Err(AccessRefusal::ForeignName {
                    room: self.room.clone(),
                    name: name.to_owned(),
                }),
            };
        }
        let Some(token) = token else {
            return Err(AccessRefusal::TokenRequired(self.room.clone()));
        };
        match self.access.key.verify(token, &self.room, Role::Viewer, now) {
            Ok(claims) => Ok(Admission::Token { until: claims.exp }),
            Err(e @ (TokenError::WrongRoom(_) | TokenError::WrongRole(_))) => {
                Err(AccessRefusal::Forbidden(e.to_string()))
            }
            Err(e) => Err(AccessRefusal::BadToken(e.to_string())),
        }
    }

    /// The operator's rule, for requests that change what the camera does (start or stop a
    /// recording): a camera token of the room as a bearer token, open room or not. A viewer
    /// token is refused (403): watching is not controlling.
    pub fn check_operator(
        &self,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> Result<(), AccessRefusal> {
        let Some(token) = bearer(headers).filter(|t| !t.is_empty()) else {
            return Err(AccessRefusal::OperatorRequired(self.room.clone()));
        };
        match self.access.key.verify(token, &self.room, Role::Camera, now) {
            Ok(_) => Ok(()),
            Err(e @ (TokenError::WrongRoom(_) | TokenError::WrongRole(_))) => {
                Err(AccessRefusal::Forbidden(e.to_string()))
            }
            Err(e) => Err(AccessRefusal::BadToken(e.to_string())),
        }
    }

    /// The rule applied to an HTTP request: its bearer token (or `query_token`), and the Host
    /// it named on a connection `admitted` says is or is not encrypted.
    pub fn check_request(
        &self,
        headers: &HeaderMap,
        uri: &Uri,
        admitted: Option<&Admitted>,
        query_token: Option<&str>,
        now: SystemTime,
    ) -> Result<Admission, AccessRefusal> {
        let token = bearer(headers).or(query_token);
        // A page's same-origin GET carries no Origin: every request is judged by its Host.
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or(uri.authority().map(|a| a.as_str()));
        let tls = admitted.is_some_and(|a| a.tls);
        let reached = ReachedAs::judge(host, tls, &self.host_names);
        self.check(token, &reached, now)
    }
}

/// The bearer token of an `Authorization` header, if it has one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::token::TokenKey;
    use std::time::Duration;

    fn rule(open: bool) -> ViewerAccess {
        ViewerAccess::new(
            Access {
                key: TokenKey::new(b"test-secret".to_vec()),
                open_rooms: if open {
                    ["cam".to_string()].into()
                } else {
                    Default::default()
                },
            },
            "cam".into(),
            Arc::from(Vec::new()),
        )
    }

    #[test]
    fn control_needs_the_rooms_camera_token_even_in_an_open_room() {
        let key = TokenKey::new(b"test-secret".to_vec());
        let now = SystemTime::now();
        let with = |t: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
            );
            h
        };
        for open in [false, true] {
            let r = rule(open);
            assert_eq!(
                r.check_operator(&HeaderMap::new(), now),
                Err(AccessRefusal::OperatorRequired("cam".into()))
            );
            let viewer = key.sign("cam", Role::Viewer, Duration::from_secs(60), now);
            assert!(matches!(
                r.check_operator(&with(&viewer), now),
                Err(AccessRefusal::Forbidden(_))
            ));
            let other = key.sign("garden", Role::Camera, Duration::from_secs(60), now);
            assert!(matches!(
                r.check_operator(&with(&other), now),
                Err(AccessRefusal::Forbidden(_))
            ));
            let camera = key.sign("cam", Role::Camera, Duration::from_secs(60), now);
            assert_eq!(r.check_operator(&with(&camera), now), Ok(()));
            assert!(matches!(
                r.check_operator(&with("v1.forged.sig"), now),
                Err(AccessRefusal::BadToken(_))
            ));
        }
    }

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc.def"),
        );
        assert_eq!(bearer(&h), Some("abc.def"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  xyz "),
        );
        assert_eq!(bearer(&h), Some("xyz"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dXNlcg=="),
        );
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn the_rooms_rule_with_the_right_refusal() {
        let now = SystemTime::now();
        let key = TokenKey::new(b"test-secret".to_vec());
        let ttl = Duration::from_secs(60);
        let viewer = key.sign("cam", Role::Viewer, ttl, now);
        let local = ReachedAs(None);
        let foreign = ReachedAs(Some("evil.example".into()));

        assert_eq!(rule(true).check(None, &local, now), Ok(Admission::Open));
        assert!(matches!(
            rule(true).check(None, &foreign, now),
            Err(AccessRefusal::ForeignName { .. })
        ));
        assert!(matches!(
            rule(true).check(Some(&viewer), &foreign, now),
            Ok(Admission::Token { .. })
        ));
        assert_eq!(
            rule(false).check(None, &local, now),
            Err(AccessRefusal::TokenRequired("cam".into()))
        );
        assert!(matches!(
            rule(false).check(Some(&viewer), &local, now),
            Ok(Admission::Token { .. })
        ));
        let camera = key.sign("cam", Role::Camera, ttl, now);
        let other = key.sign("other", Role::Viewer, ttl, now);
        for wrong in [camera, other] {
            let e = rule(false).check(Some(&wrong), &local, now).unwrap_err();
            assert_eq!(e.status(), StatusCode::FORBIDDEN);
        }
        let e = rule(false).check(Some("garbage"), &local, now).unwrap_err();
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
        let res = e.into_response();
        assert!(res.headers().contains_key(header::WWW_AUTHENTICATE));
    }
}
