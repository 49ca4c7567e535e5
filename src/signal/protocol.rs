//! The room protocol spoken over `/ws`: every message campeer's signaling server accepts or sends.
//!
//! JSON text frames with a `type` field, names kept from seed 001 (`created`, `joined`, `offer`,
//! `answer`, `candidate`, `exit`). The server sets `from` on everything it relays; a client never
//! can. `docs/PROTOCOL.md` is the prose version of this module, with a full example session.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Version of the room protocol. Sent in `created`; bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// A peer's id, chosen by the server, unique while the server runs.
pub type PeerId = String;

/// What a peer is in a room. Viewers call cameras; viewers never call viewers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Publishes media; answers viewers' offers.
    Camera,
    /// Receives media; sends an offer to every camera in its room.
    Viewer,
}

impl Role {
    /// The lowercase name used on the wire and in tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Camera => "camera",
            Role::Viewer => "viewer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "camera" => Ok(Role::Camera),
            "viewer" => Ok(Role::Viewer),
            other => Err(format!(
                "unknown role {other:?} (expected camera or viewer)"
            )),
        }
    }
}

/// An ICE candidate as the browser's `RTCIceCandidateInit` spells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceCandidate {
    /// The `candidate:` attribute line (empty string means end of candidates for that m-line).
    pub candidate: String,
    /// The media stream id the candidate belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    /// Index of the m-line the candidate belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_m_line_index: Option<u16>,
    /// ICE username fragment, when the sender gives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

/// One STUN or TURN server for `RTCPeerConnection`'s `iceServers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    /// `stun:`, `turn:` or `turns:` URLs.
    pub urls: Vec<String>,
    /// TURN username (static, or `<expiry>:<peer id>` for TURN REST credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// A peer as listed in `created`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The peer's id, to be used in `to`.
    pub id: PeerId,
    /// Camera or viewer.
    pub role: Role,
    /// The name the peer gave at `join` (empty when it gave none).
    pub name: String,
}

/// Messages a client sends to the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ClientMessage {
    /// Enter a room. Answered by `created` (or `error`); everyone already there gets `joined`.
    Join {
        /// The room's name: 1–64 characters of `A-Z a-z 0-9 _ - .`.
        room: String,
        /// What the peer is in the room.
        role: Role,
        /// An access token (`campeer token`); required unless the room is open.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// A display name shown on viewers' tiles.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// An opaque id (1–64 printable characters) the client keeps across reconnections.
        /// When a peer joins with the role and instance of a peer still in the room (a connection
        /// that died without the server noticing, e.g. behind a cut link), the old one is retired:
        /// it gets `error` `replaced`, and the others get its `exit` before the newcomer's `joined`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        instance: Option<String>,
    },
    /// An SDP offer for the peer `to` (viewer → camera).
    Offer {
        /// Recipient peer id.
        to: PeerId,
        /// The SDP text.
        sdp: String,
    },
    /// An SDP answer for the peer `to` (camera → viewer).
    Answer {
        /// Recipient peer id.
        to: PeerId,
        /// The SDP text.
        sdp: String,
    },
    /// A trickled ICE candidate for `to`; `null` marks the end of candidates.
    Candidate {
        /// Recipient peer id.
        to: PeerId,
        /// The candidate, or `null` when gathering is complete.
        candidate: Option<IceCandidate>,
    },
    /// Tell one peer that its call was refused (a camera at its viewer limit, a codec it cannot
    /// serve). Relayed as `error` with `from` set.
    Reject {
        /// Recipient peer id.
        to: PeerId,
        /// A stable error code (see [`ErrorCode`] for the server's own).
        code: String,
        /// Human-readable text the viewer page shows.
        message: String,
    },
    /// Leave the room (the socket stays open and may `join` again).
    Exit {},
    /// Ask for fresh ICE servers (a long-joined camera whose TURN credentials near their
    /// expiry). Answered by `ice`, with the same rules as `created`; an `error` before `join`.
    Ice {},
}

/// Messages the server sends to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerMessage {
    /// To the peer that joined: its id, who is already in the room, and its ICE servers.
    Created {
        /// The joiner's own id.
        id: PeerId,
        /// The room joined.
        room: String,
        /// Everyone else already in the room.
        peers: Vec<PeerInfo>,
        /// STUN/TURN servers for this peer, TURN credentials included.
        #[serde(rename = "iceServers")]
        ice_servers: Vec<IceServer>,
        /// `"relay"` when the server's operator wants every peer to use TURN only
        /// (`RTCConfiguration.iceTransportPolicy`); absent otherwise.
        #[serde(
            rename = "iceTransportPolicy",
            default,
            skip_serializing_if = "Option::is_none"
        )]
        ice_transport_policy: Option<String>,
        /// [`PROTOCOL_VERSION`].
        protocol: u32,
    },
    /// To everyone else in the room when a peer joins.
    Joined {
        /// The newcomer's id.
        id: PeerId,
        /// The room.
        room: String,
        /// The newcomer's role.
        role: Role,
        /// The newcomer's name.
        name: String,
    },
    /// A relayed SDP offer.
    Offer {
        /// Sender's id, set by the server.
        from: PeerId,
        /// The SDP text.
        sdp: String,
    },
    /// A relayed SDP answer.
    Answer {
        /// Sender's id, set by the server.
        from: PeerId,
        /// The SDP text.
        sdp: String,
    },
    /// A relayed ICE candidate (`null`: end of candidates).
    Candidate {
        /// Sender's id, set by the server.
        from: PeerId,
        /// The candidate.
        candidate: Option<IceCandidate>,
    },
    /// A peer left the room or its connection dropped.
    Exit {
        /// The peer that left.
        from: PeerId,
        /// The room it left.
        room: String,
    },
    /// Fresh ICE servers for the peer that sent `ice`.
    Ice {
        /// As in `created`.
        #[serde(rename = "iceServers")]
        ice_servers: Vec<IceServer>,
    },
    /// Something went wrong. `from` is set when another peer refused a call (`reject`), absent
    /// when the server itself reports the error.
    Error {
        /// A stable, machine-readable code.
        code: String,
        /// Human-readable explanation.
        message: String,
        /// The peer that sent a `reject`, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<PeerId>,
    },
}

/// The server's stable error codes (`error.code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The frame is not a JSON object with a string `type`.
    BadJson,
    /// `type` names no message the server knows.
    UnknownType,
    /// A known type with missing or malformed fields.
    BadMessage,
    /// The frame is larger than the server's limit.
    TooLarge,
    /// The connection sends messages faster than allowed.
    RateLimited,
    /// A message other than `join` before joining a room.
    NotJoined,
    /// `join` while already in a room (send `exit` first).
    AlreadyJoined,
    /// The room name is empty, too long or has characters outside `A-Z a-z 0-9 _ - .`.
    BadRoom,
    /// The room is protected and no token was given.
    TokenRequired,
    /// The token is malformed, forged, or for another room or role.
    BadToken,
    /// The token's expiry has passed.
    TokenExpired,
    /// `to` names no peer in the sender's room.
    UnknownPeer,
    /// The relay is not allowed between these roles (viewers never call viewers).
    NotAllowed,
    /// The room holds its maximum of peers.
    RoomFull,
    /// The server holds its maximum of rooms.
    TooManyRooms,
    /// Another connection joined with this peer's role and `instance`; this one left the room.
    Replaced,
}

impl ErrorCode {
    /// The code as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad-json",
            ErrorCode::UnknownType => "unknown-type",
            ErrorCode::BadMessage => "bad-message",
            ErrorCode::TooLarge => "too-large",
            ErrorCode::RateLimited => "rate-limited",
            ErrorCode::NotJoined => "not-joined",
            ErrorCode::AlreadyJoined => "already-joined",
            ErrorCode::BadRoom => "bad-room",
            ErrorCode::TokenRequired => "token-required",
            ErrorCode::BadToken => "bad-token",
            ErrorCode::TokenExpired => "token-expired",
            ErrorCode::UnknownPeer => "unknown-peer",
            ErrorCode::NotAllowed => "not-allowed",
            ErrorCode::RoomFull => "room-full",
            ErrorCode::TooManyRooms => "too-many-rooms",
            ErrorCode::Replaced => "replaced",
        }
    }

    /// Build the `error` message for this code.
    pub fn message(self, text: impl Into<String>) -> ServerMessage {
        ServerMessage::Error {
            code: self.as_str().to_owned(),
            message: text.into(),
            from: None,
        }
    }
}

/// The message types a client may send, for telling `unknown-type` from `bad-message`.
const CLIENT_TYPES: &[&str] = &[
    "join",
    "offer",
    "answer",
    "candidate",
    "reject",
    "exit",
    "ice",
];

/// Parse one text frame from a client into a message, or the `error` to send back.
pub fn parse_client(text: &str) -> Result<ClientMessage, ServerMessage> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| ErrorCode::BadJson.message(format!("not valid JSON: {e}")))?;
    let Some(kind) = value.get("type").and_then(|t| t.as_str()) else {
        return Err(ErrorCode::BadJson.message("expected a JSON object with a string \"type\""));
    };
    if !CLIENT_TYPES.contains(&kind) {
        let shown: String = kind.chars().take(32).collect();
        return Err(ErrorCode::UnknownType.message(format!(
            "unknown message type {shown:?}; expected one of {}",
            CLIENT_TYPES.join(", ")
        )));
    }
    let kind = kind.to_owned();
    serde_json::from_value(value)
        .map_err(|e| ErrorCode::BadMessage.message(format!("bad {kind:?} message: {e}")))
}

impl ServerMessage {
    /// The JSON text frame for this message.
    pub fn to_json(&self) -> String {
        // Serializing these plain structs (strings, numbers, vectors) cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_parses_with_and_without_optionals() {
        let m = parse_client(r#"{"type":"join","room":"garden","role":"viewer"}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::Join {
                room: "garden".into(),
                role: Role::Viewer,
                token: None,
                name: None,
                instance: None,
            }
        );
        let m =
            parse_client(r#"{"type":"join","room":"g","role":"camera","token":"t","name":"Shed"}"#)
                .unwrap();
        assert!(matches!(
            m,
            ClientMessage::Join {
                role: Role::Camera,
                ..
            }
        ));
    }

    #[test]
    fn candidate_null_and_browser_shape() {
        let m = parse_client(r#"{"type":"candidate","to":"a","candidate":null}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::Candidate {
                to: "a".into(),
                candidate: None
            }
        );
        let m = parse_client(
            r#"{"type":"candidate","to":"a","candidate":{"candidate":"candidate:1 1 udp 1 1.2.3.4 5 typ host","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"x"}}"#,
        )
        .unwrap();
        let ClientMessage::Candidate {
            candidate: Some(c), ..
        } = m
        else {
            panic!("{m:?}")
        };
        assert_eq!(c.sdp_mid.as_deref(), Some("0"));
        assert_eq!(c.sdp_m_line_index, Some(0));
    }

    #[test]
    fn errors_have_stable_codes() {
        let code = |text: &str| match parse_client(text) {
            Err(ServerMessage::Error { code, .. }) => code,
            other => panic!("{other:?}"),
        };
        assert_eq!(code("{not json"), "bad-json");
        assert_eq!(code("[1,2]"), "bad-json");
        assert_eq!(code(r#"{"type":5}"#), "bad-json");
        assert_eq!(code(r#"{"type":"dance"}"#), "unknown-type");
        assert_eq!(code(r#"{"type":"offer","to":"x"}"#), "bad-message");
        assert_eq!(
            code(r#"{"type":"join","room":"r","role":"admin"}"#),
            "bad-message"
        );
        // `from` is the server's to set; a client that sends it is refused, not believed.
        assert_eq!(
            code(r#"{"type":"offer","to":"x","sdp":"v=0","from":"y"}"#),
            "bad-message"
        );
    }

    #[test]
    fn server_messages_use_wire_names() {
        let m = ServerMessage::Created {
            id: "a".into(),
            room: "r".into(),
            peers: vec![],
            ice_servers: vec![IceServer {
                urls: vec!["stun:x".into()],
                username: None,
                credential: None,
            }],
            ice_transport_policy: None,
            protocol: PROTOCOL_VERSION,
        };
        let v: serde_json::Value = serde_json::from_str(&m.to_json()).unwrap();
        assert_eq!(v["type"], "created");
        assert_eq!(v["iceServers"][0]["urls"][0], "stun:x");
        let e = ErrorCode::RoomFull.message("full").to_json();
        assert_eq!(e, r#"{"type":"error","code":"room-full","message":"full"}"#);
    }
}
