//! The signaling server's brain: rooms, membership, access checks and relays, as a pure state
//! machine from (peer, message) to the messages to send, with no sockets and no clock of its own.
//!
//! The connection layer (`signal::server`) owns the sockets and calls [`Router::handle`] and
//! [`Router::disconnect`] from one task; every rule of the room protocol lives here.

use super::ice::IceProvider;
use super::protocol::{
    ClientMessage, ErrorCode, PROTOCOL_VERSION, PeerId, PeerInfo, Role, ServerMessage,
};
use super::token::{TokenError, TokenKey};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::SystemTime;

/// Longest room name.
pub const MAX_ROOM_LEN: usize = 64;
/// Longest peer name kept (longer names are cut).
pub const MAX_NAME_LEN: usize = 64;

/// True when `room` is a valid room name: 1–64 of `A-Z a-z 0-9 _ - .`.
pub fn valid_room(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= MAX_ROOM_LEN
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// Who may join which room.
#[derive(Debug, Clone)]
pub struct Access {
    /// Verifies tokens.
    pub key: TokenKey,
    /// Rooms that need no token; `*` opens all.
    pub open_rooms: HashSet<String>,
}

impl Access {
    /// True when `room` admits anyone.
    pub fn is_open(&self, room: &str) -> bool {
        self.open_rooms.contains("*") || self.open_rooms.contains(room)
    }
}

/// Size limits the router enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most peers in one room.
    pub max_peers_per_room: usize,
    /// Most rooms at once.
    pub max_rooms: usize,
}

#[derive(Debug)]
struct Member {
    room: String,
    role: Role,
    name: String,
    instance: Option<String>,
    /// When the token it joined with expires; `None` for an open room's tokenless peer.
    access_until: Option<SystemTime>,
}

/// Longest `instance` kept; longer or non-printable ones are ignored.
pub const MAX_INSTANCE_LEN: usize = 64;

/// Outgoing messages: (recipient, message).
pub type Outbox = Vec<(PeerId, ServerMessage)>;

/// Rooms and the peers in them.
#[derive(Debug)]
pub struct Router {
    access: Access,
    limits: Limits,
    ice: IceProvider,
    /// Joined peers. Connected but not joined peers are not tracked here.
    members: HashMap<PeerId, Member>,
    /// Room → its members in join order (BTreeMap keyed by join sequence).
    rooms: HashMap<String, BTreeMap<u64, PeerId>>,
    seq: u64,
    /// Peer → its join sequence number in its room.
    seq_of: HashMap<PeerId, u64>,
}

fn err(to: &PeerId, code: ErrorCode, text: impl Into<String>) -> Outbox {
    vec![(to.clone(), code.message(text))]
}

impl Router {
    /// A router with no rooms.
    pub fn new(access: Access, limits: Limits, ice: IceProvider) -> Self {
        Self {
            access,
            limits,
            ice,
            members: HashMap::new(),
            rooms: HashMap::new(),
            seq: 0,
            seq_of: HashMap::new(),
        }
    }

    /// Number of rooms with at least one peer.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Number of joined peers.
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// The role `id` joined its room with; `None` while it is in no room.
    pub fn role_of(&self, id: &PeerId) -> Option<Role> {
        self.members.get(id).map(|m| m.role)
    }

    /// The peers in `room`, in join order.
    pub fn peers_in(&self, room: &str) -> Vec<PeerInfo> {
        self.rooms
            .get(room)
            .map(|m| m.values().filter_map(|id| self.info(id)).collect())
            .unwrap_or_default()
    }

    fn info(&self, id: &PeerId) -> Option<PeerInfo> {
        self.members.get(id).map(|m| PeerInfo {
            id: id.clone(),
            role: m.role,
            name: m.name.clone(),
        })
    }

    /// Handle one message from `from` at `now`.
    pub fn handle(&mut self, from: &PeerId, msg: ClientMessage, now: SystemTime) -> Outbox {
        self.handle_via(from, None, msg, now)
    }

    /// Handle one message from `from`, a web page that reached the server by
    /// `foreign_name` when that is a name another site's DNS could have pointed at it (see
    /// [`super::host`]): open rooms are closed to such a page unless it holds a token.
    pub fn handle_via(
        &mut self,
        from: &PeerId,
        foreign_name: Option<&str>,
        msg: ClientMessage,
        now: SystemTime,
    ) -> Outbox {
        match msg {
            ClientMessage::Join {
                room,
                role,
                token,
                name,
                instance,
            } => {
                let instance = instance.filter(|i| {
                    !i.is_empty()
                        && i.len() <= MAX_INSTANCE_LEN
                        && i.chars().all(|c| c.is_ascii_graphic())
                });
                self.join(from, room, role, token, name, instance, foreign_name, now)
            }
            ClientMessage::Ice {} => match self.members.get(from) {
                Some(m) => vec![(
                    from.clone(),
                    ServerMessage::Ice {
                        ice_servers: self.ice_for(from, m.access_until, now),
                    },
                )],
                None => err(from, ErrorCode::NotJoined, "ice before join"),
            },
            ClientMessage::Exit {} => {
                if self.members.contains_key(from) {
                    self.leave(from)
                } else {
                    err(from, ErrorCode::NotJoined, "exit before join")
                }
            }
            ClientMessage::Offer { to, sdp } => self.relay(
                from,
                &to,
                ServerMessage::Offer {
                    from: from.clone(),
                    sdp,
                },
            ),
            ClientMessage::Answer { to, sdp } => self.relay(
                from,
                &to,
                ServerMessage::Answer {
                    from: from.clone(),
                    sdp,
                },
            ),
            ClientMessage::Candidate { to, candidate } => self.relay(
                from,
                &to,
                ServerMessage::Candidate {
                    from: from.clone(),
                    candidate,
                },
            ),
            ClientMessage::Reject { to, code, message } => {
                // No control characters (CR/LF would forge log lines wherever this is logged).
                let code: String = code.chars().filter(|c| !c.is_control()).take(64).collect();
                let message: String = message
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(512)
                    .collect();
                self.relay(
                    from,
                    &to,
                    ServerMessage::Error {
                        code,
                        message,
                        from: Some(from.clone()),
                    },
                )
            }
        }
    }

    /// The peer's connection closed: it leaves its room, if any.
    pub fn disconnect(&mut self, peer: &PeerId) -> Outbox {
        if self.members.contains_key(peer) {
            self.leave(peer)
        } else {
            vec![]
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn join(
        &mut self,
        from: &PeerId,
        room: String,
        role: Role,
        token: Option<String>,
        name: Option<String>,
        instance: Option<String>,
        foreign_name: Option<&str>,
        now: SystemTime,
    ) -> Outbox {
        if let Some(m) = self.members.get(from) {
            return err(
                from,
                ErrorCode::AlreadyJoined,
                format!("already in room {:?}; send exit first", m.room),
            );
        }
        if !valid_room(&room) {
            return err(
                from,
                ErrorCode::BadRoom,
                "room names are 1-64 characters of A-Z a-z 0-9 _ - .",
            );
        }
        let mut access_until = None;
        let open = self.access.is_open(&room);
        if !open || foreign_name.is_some() {
            let Some(token) = token.filter(|t| !t.is_empty()) else {
                let why = match foreign_name {
                    Some(name) if open => format!(
                        "room {room:?} is open only to pages that reach this server by an address or one of its own names; {name:?} is not one (server.host-names), so it needs a {role} token"
                    ),
                    _ => format!("room {room:?} needs a {role} token"),
                };
                return err(from, ErrorCode::TokenRequired, why);
            };
            match self.access.key.verify(&token, &room, role, now) {
                Ok(claims) => {
                    access_until =
                        Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(claims.exp));
                }
                Err(TokenError::Expired(ago)) => {
                    return err(
                        from,
                        ErrorCode::TokenExpired,
                        format!("token expired {ago} s ago"),
                    );
                }
                Err(e) => return err(from, ErrorCode::BadToken, e.to_string()),
            }
        }
        // A reconnecting client retires its own stale connection (same room, role, instance).
        let mut out: Outbox = vec![];
        if let Some(inst) = &instance {
            let stale: Vec<PeerId> = self
                .members
                .iter()
                .filter(|(_, m)| {
                    m.room == room && m.role == role && m.instance.as_ref() == Some(inst)
                })
                .map(|(id, _)| id.clone())
                .collect();
            for old in stale {
                out.push((
                    old.clone(),
                    ErrorCode::Replaced.message(
                        "a newer connection of this peer joined the room; this one left it",
                    ),
                ));
                out.extend(self.leave(&old));
            }
        }
        let occupants = self.rooms.get(&room).map(|m| m.len()).unwrap_or(0);
        if occupants == 0 && self.rooms.len() >= self.limits.max_rooms {
            return err(
                from,
                ErrorCode::TooManyRooms,
                format!(
                    "the server holds its maximum of {} rooms",
                    self.limits.max_rooms
                ),
            );
        }
        // One place is always kept for a camera: viewers alone cannot lock it out of its room.
        let viewers = self
            .rooms
            .get(&room)
            .map(|m| {
                m.values()
                    .filter(|id| self.role_of(id) == Some(Role::Viewer))
                    .count()
            })
            .unwrap_or(0);
        let max_viewers = self.limits.max_peers_per_room.saturating_sub(1).max(1);
        if occupants >= self.limits.max_peers_per_room
            || (role == Role::Viewer && viewers >= max_viewers)
        {
            return err(
                from,
                ErrorCode::RoomFull,
                format!(
                    "room {room:?} holds its maximum of {} peers (one place is kept for a camera)",
                    self.limits.max_peers_per_room
                ),
            );
        }
        let name: String = name
            .unwrap_or_default()
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_NAME_LEN)
            .collect();
        let peers = self.peers_in(&room);
        let joined: Outbox = peers
            .iter()
            .map(|p| {
                (
                    p.id.clone(),
                    ServerMessage::Joined {
                        id: from.clone(),
                        room: room.clone(),
                        role,
                        name: name.clone(),
                    },
                )
            })
            .collect();
        out.push((
            from.clone(),
            ServerMessage::Created {
                id: from.clone(),
                room: room.clone(),
                peers,
                ice_servers: self.ice_for(from, access_until, now),
                ice_transport_policy: self.ice.transport_policy(),
                protocol: PROTOCOL_VERSION,
            },
        ));
        out.extend(joined);
        self.seq += 1;
        self.rooms
            .entry(room.clone())
            .or_default()
            .insert(self.seq, from.clone());
        self.seq_of.insert(from.clone(), self.seq);
        self.members.insert(
            from.clone(),
            Member {
                room,
                role,
                name,
                instance,
                access_until,
            },
        );
        out
    }

    /// The ICE servers for `peer`: TURN credentials bounded by its token, or none for a
    /// tokenless peer unless the operator allows them.
    fn ice_for(
        &self,
        peer: &PeerId,
        access_until: Option<SystemTime>,
        now: SystemTime,
    ) -> Vec<super::protocol::IceServer> {
        match access_until {
            Some(until) => self.ice.for_peer_until(peer, now, Some(until)),
            None => self.ice.for_tokenless_peer(peer, now),
        }
    }

    fn leave(&mut self, peer: &PeerId) -> Outbox {
        let Some(m) = self.members.remove(peer) else {
            return vec![];
        };
        if let (Some(seq), Some(room)) = (self.seq_of.remove(peer), self.rooms.get_mut(&m.room)) {
            room.remove(&seq);
            if room.is_empty() {
                self.rooms.remove(&m.room);
            }
        }
        self.peers_in(&m.room)
            .into_iter()
            .map(|p| {
                (
                    p.id,
                    ServerMessage::Exit {
                        from: peer.clone(),
                        room: m.room.clone(),
                    },
                )
            })
            .collect()
    }

    fn relay(&mut self, from: &PeerId, to: &PeerId, msg: ServerMessage) -> Outbox {
        let Some(sender) = self.members.get(from) else {
            return err(from, ErrorCode::NotJoined, "join a room first");
        };
        let Some(target) = self.members.get(to).filter(|t| t.room == sender.room) else {
            let shown: String = to.chars().take(32).collect();
            return err(
                from,
                ErrorCode::UnknownPeer,
                format!("no peer {shown:?} in room {:?}", sender.room),
            );
        };
        if target.role == sender.role {
            return err(
                from,
                ErrorCode::NotAllowed,
                format!("a {} cannot call a {}", sender.role, target.role),
            );
        }
        vec![(to.clone(), msg)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::protocol::IceCandidate;
    use std::time::{Duration, UNIX_EPOCH};

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_000_000)
    }

    fn key() -> TokenKey {
        TokenKey::new(b"test-secret".to_vec())
    }

    fn router(open: &[&str]) -> Router {
        Router::new(
            Access {
                key: key(),
                open_rooms: open.iter().map(|s| s.to_string()).collect(),
            },
            Limits {
                max_peers_per_room: 4,
                max_rooms: 2,
            },
            IceProvider::default(),
        )
    }

    fn join(r: &mut Router, id: &str, room: &str, role: Role, token: Option<String>) -> Outbox {
        r.handle(
            &id.to_string(),
            ClientMessage::Join {
                room: room.into(),
                role,
                token,
                name: Some(format!("n-{id}")),
                instance: None,
            },
            now(),
        )
    }

    fn code(out: &Outbox) -> &str {
        match out.as_slice() {
            [(_, ServerMessage::Error { code, .. })] => code,
            other => panic!("expected one error, got {other:?}"),
        }
    }

    #[test]
    fn join_created_joined_in_order() {
        let mut r = router(&["lab"]);
        let out = join(&mut r, "cam", "lab", Role::Camera, None);
        assert_eq!(out.len(), 1);
        assert!(
            matches!(&out[0], (to, ServerMessage::Created { id, peers, protocol: 1, .. }) if to == "cam" && id == "cam" && peers.is_empty())
        );

        let out = join(&mut r, "v1", "lab", Role::Viewer, None);
        assert_eq!(out.len(), 2);
        let (to, ServerMessage::Created { peers, .. }) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(to, "v1");
        assert_eq!(
            peers,
            &vec![PeerInfo {
                id: "cam".into(),
                role: Role::Camera,
                name: "n-cam".into()
            }]
        );
        assert_eq!(
            out[1],
            (
                "cam".into(),
                ServerMessage::Joined {
                    id: "v1".into(),
                    room: "lab".into(),
                    role: Role::Viewer,
                    name: "n-v1".into()
                }
            )
        );

        let out = join(&mut r, "v2", "lab", Role::Viewer, None);
        let (_, ServerMessage::Created { peers, .. }) = &out[0] else {
            panic!()
        };
        assert_eq!(
            peers.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
            ["cam", "v1"]
        );
        assert_eq!(
            out.iter()
                .skip(1)
                .map(|(to, _)| to.as_str())
                .collect::<Vec<_>>(),
            ["cam", "v1"]
        );
    }

    #[test]
    fn relay_sets_from_and_respects_roles() {
        let mut r = router(&["lab"]);
        join(&mut r, "cam", "lab", Role::Camera, None);
        join(&mut r, "v1", "lab", Role::Viewer, None);
        join(&mut r, "v2", "lab", Role::Viewer, None);
        let out = r.handle(
            &"v1".into(),
            ClientMessage::Offer {
                to: "cam".into(),
                sdp: "o".into(),
            },
            now(),
        );
        assert_eq!(
            out,
            vec![(
                "cam".into(),
                ServerMessage::Offer {
                    from: "v1".into(),
                    sdp: "o".into()
                }
            )]
        );
        let out = r.handle(
            &"cam".into(),
            ClientMessage::Answer {
                to: "v1".into(),
                sdp: "a".into(),
            },
            now(),
        );
        assert_eq!(
            out,
            vec![(
                "v1".into(),
                ServerMessage::Answer {
                    from: "cam".into(),
                    sdp: "a".into()
                }
            )]
        );
        let cand = IceCandidate {
            candidate: "candidate:x".into(),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
            username_fragment: None,
        };
        let out = r.handle(
            &"cam".into(),
            ClientMessage::Candidate {
                to: "v1".into(),
                candidate: Some(cand.clone()),
            },
            now(),
        );
        assert_eq!(
            out,
            vec![(
                "v1".into(),
                ServerMessage::Candidate {
                    from: "cam".into(),
                    candidate: Some(cand)
                }
            )]
        );
        let out = r.handle(
            &"cam".into(),
            ClientMessage::Candidate {
                to: "v1".into(),
                candidate: None,
            },
            now(),
        );
        assert_eq!(
            out,
            vec![(
                "v1".into(),
                ServerMessage::Candidate {
                    from: "cam".into(),
                    candidate: None
                }
            )]
        );
        // Viewers never call viewers.
        let out = r.handle(
            &"v1".into(),
            ClientMessage::Offer {
                to: "v2".into(),
                sdp: "o".into(),
            },
            now(),
        );
        assert_eq!(code(&out), "not-allowed");
        // Reject is relayed as an error from the camera.
        let out = r.handle(
            &"cam".into(),
            ClientMessage::Reject {
                to: "v2".into(),
                code: "max-viewers".into(),
                message: "full".into(),
            },
            now(),
        );
        assert_eq!(
            out,
            vec![(
                "v2".into(),
                ServerMessage::Error {
                    code: "max-viewers".into(),
                    message: "full".into(),
                    from: Some("cam".into())
                }
            )]
        );
    }

    #[test]
    fn relay_only_within_room() {
        let mut r = router(&["*"]);
        join(&mut r, "cam", "a", Role::Camera, None);
        join(&mut r, "v", "b", Role::Viewer, None);
        let out = r.handle(
            &"v".into(),
            ClientMessage::Offer {
                to: "cam".into(),
                sdp: "o".into(),
            },
            now(),
        );
        assert_eq!(code(&out), "unknown-peer");
        let out = r.handle(
            &"v".into(),
            ClientMessage::Offer {
                to: "nobody".into(),
                sdp: "o".into(),
            },
            now(),
        );
        assert_eq!(code(&out), "unknown-peer");
    }

    #[test]
    fn exit_and_disconnect_notify_room() {
        let mut r = router(&["lab"]);
        join(&mut r, "cam", "lab", Role::Camera, None);
        join(&mut r, "v1", "lab", Role::Viewer, None);
        join(&mut r, "v2", "lab", Role::Viewer, None);
        let out = r.handle(&"v1".into(), ClientMessage::Exit {}, now());
        let exit = |from: &str| ServerMessage::Exit {
            from: from.into(),
            room: "lab".into(),
        };
        assert_eq!(
            out,
            vec![("cam".into(), exit("v1")), ("v2".into(), exit("v1"))]
        );
        // v1 may join again after exit.
        assert!(matches!(
            join(&mut r, "v1", "lab", Role::Viewer, None)[0].1,
            ServerMessage::Created { .. }
        ));
        let out = r.disconnect(&"cam".into());
        assert_eq!(
            out,
            vec![("v2".into(), exit("cam")), ("v1".into(), exit("cam"))]
        );
        assert!(
            r.disconnect(&"cam".into()).is_empty(),
            "second disconnect is a no-op"
        );
        r.disconnect(&"v1".into());
        r.disconnect(&"v2".into());
        assert_eq!(r.room_count(), 0, "empty rooms are forgotten");
        assert_eq!(r.member_count(), 0);
    }

    #[test]
    fn messages_before_join_and_double_join() {
        let mut r = router(&["lab"]);
        assert_eq!(
            code(&r.handle(
                &"x".into(),
                ClientMessage::Offer {
                    to: "y".into(),
                    sdp: "".into()
                },
                now()
            )),
            "not-joined"
        );
        assert_eq!(
            code(&r.handle(&"x".into(), ClientMessage::Exit {}, now())),
            "not-joined"
        );
        join(&mut r, "x", "lab", Role::Viewer, None);
        assert_eq!(
            code(&join(&mut r, "x", "lab", Role::Viewer, None)),
            "already-joined"
        );
        assert_eq!(code(&join(&mut r, "y", "", Role::Viewer, None)), "bad-room");
        assert_eq!(
            code(&join(&mut r, "y", "a/b", Role::Viewer, None)),
            "bad-room"
        );
        assert_eq!(
            code(&join(&mut r, "y", &"a".repeat(65), Role::Viewer, None)),
            "bad-room"
        );
    }

    #[test]
    fn tokens_guard_protected_rooms() {
        let mut r = router(&["open"]);
        assert_eq!(
            code(&join(&mut r, "a", "secret", Role::Viewer, None)),
            "token-required"
        );
        assert_eq!(
            code(&join(
                &mut r,
                "a",
                "secret",
                Role::Viewer,
                Some("junk".into())
            )),
            "bad-token"
        );
        let ttl = Duration::from_secs(60);
        let viewer = key().sign("secret", Role::Viewer, ttl, now());
        // A viewer token never admits a camera.
        assert_eq!(
            code(&join(
                &mut r,
                "a",
                "secret",
                Role::Camera,
                Some(viewer.clone())
            )),
            "bad-token"
        );
        // Nor a viewer into another room.
        assert_eq!(
            code(&join(
                &mut r,
                "a",
                "other",
                Role::Viewer,
                Some(viewer.clone())
            )),
            "bad-token"
        );
        let expired = key().sign(
            "secret",
            Role::Viewer,
            ttl,
            now() - Duration::from_secs(120),
        );
        assert_eq!(
            code(&join(&mut r, "a", "secret", Role::Viewer, Some(expired))),
            "token-expired"
        );
        let forged = TokenKey::new(b"guess".to_vec()).sign("secret", Role::Viewer, ttl, now());
        assert_eq!(
            code(&join(&mut r, "a", "secret", Role::Viewer, Some(forged))),
            "bad-token"
        );
        assert!(matches!(
            join(&mut r, "a", "secret", Role::Viewer, Some(viewer))[0].1,
            ServerMessage::Created { .. }
        ));
        let cam = key().sign("secret", Role::Camera, ttl, now());
        assert!(matches!(
            join(&mut r, "c", "secret", Role::Camera, Some(cam))[0].1,
            ServerMessage::Created { .. }
        ));
        // Open rooms need none.
        assert!(matches!(
            join(&mut r, "b", "open", Role::Camera, None)[0].1,
            ServerMessage::Created { .. }
        ));
    }

    #[test]
    fn an_open_room_needs_a_token_from_a_page_reached_by_a_foreign_name() {
        let mut r = router(&["lab"]);
        let via = |r: &mut Router, id: &str, token: Option<String>| {
            r.handle_via(
                &id.to_string(),
                Some("evil.example:8080"),
                ClientMessage::Join {
                    room: "lab".into(),
                    role: Role::Viewer,
                    token,
                    name: None,
                    instance: None,
                },
                now(),
            )
        };
        let out = via(&mut r, "page", None);
        assert_eq!(code(&out), "token-required");
        let [(_, ServerMessage::Error { message, .. })] = out.as_slice() else {
            panic!("{out:?}")
        };
        assert!(message.contains("evil.example:8080") && message.contains("server.host-names"));
        assert_eq!(r.member_count(), 0);
        // A token still opens it, as for a closed room.
        let viewer = key().sign("lab", Role::Viewer, Duration::from_secs(60), now());
        assert!(matches!(
            via(&mut r, "page", Some(viewer))[0].1,
            ServerMessage::Created { .. }
        ));
        // The same page at an address or the server's own name needs none.
        assert!(matches!(
            join(&mut r, "lan", "lab", Role::Viewer, None)[0].1,
            ServerMessage::Created { .. }
        ));
    }

    #[test]
    fn limits() {
        let mut r = router(&["*"]);
        for i in 0..3 {
            join(&mut r, &format!("v{i}"), "a", Role::Viewer, None);
        }
        // Viewers fill all but one place: that one is kept for a camera.
        assert_eq!(
            code(&join(&mut r, "v3", "a", Role::Viewer, None)),
            "room-full"
        );
        assert!(matches!(
            join(&mut r, "cam", "a", Role::Camera, None)[0].1,
            ServerMessage::Created { .. }
        ));
        assert_eq!(
            code(&join(&mut r, "cam2", "a", Role::Camera, None)),
            "room-full"
        );
        r.disconnect(&"cam".into());
        join(&mut r, "w", "b", Role::Viewer, None);
        assert_eq!(
            code(&join(&mut r, "z", "c", Role::Viewer, None)),
            "too-many-rooms"
        );
        // Joining an existing room is still fine at the room limit.
        r.disconnect(&"v0".into());
        assert!(matches!(
            join(&mut r, "z", "a", Role::Viewer, None)[0].1,
            ServerMessage::Created { .. }
        ));
    }

    #[test]
    fn names_are_sanitised() {
        let mut r = router(&["*"]);
        let out = r.handle(
            &"a".into(),
            ClientMessage::Join {
                room: "r".into(),
                role: Role::Camera,
                token: None,
                name: Some(format!("x\u{7}y{}", "z".repeat(100))),
                instance: None,
            },
            now(),
        );
        assert!(matches!(&out[0].1, ServerMessage::Created { .. }));
        assert_eq!(r.peers_in("r")[0].name.len(), MAX_NAME_LEN);
        assert!(r.peers_in("r")[0].name.starts_with("xy"));
        // A reject's code and message reach the other side without control characters.
        join(&mut r, "v", "r", Role::Viewer, None);
        let out = r.handle(
            &"v".into(),
            ClientMessage::Reject {
                to: "a".into(),
                code: "x\r\nERROR forged".into(),
                message: "line\nbreak".into(),
            },
            now(),
        );
        match &out[0].1 {
            ServerMessage::Error { code, message, .. } => {
                assert_eq!(code, "xERROR forged");
                assert_eq!(message, "linebreak");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reconnecting_camera_retires_its_stale_connection() {
        let mut r = router(&["lab"]);
        let cam = |inst: &str| ClientMessage::Join {
            room: "lab".into(),
            role: Role::Camera,
            token: None,
            name: Some("Shed".into()),
            instance: Some(inst.into()),
        };
        r.handle(&"c1".to_string(), cam("i-1"), now());
        join(&mut r, "v", "lab", Role::Viewer, None);
        // Another camera with another instance stays.
        r.handle(&"c2".to_string(), cam("i-2"), now());
        let out = r.handle(&"c3".to_string(), cam("i-1"), now());
        // The stale connection is told, the viewer sees its exit before the newcomer joins.
        let to_c1: Vec<_> = out.iter().filter(|(to, _)| to == "c1").collect();
        assert!(
            matches!(&to_c1[..], [(_, ServerMessage::Error { code, .. })] if code == "replaced"),
            "{out:?}"
        );
        let to_v: Vec<&ServerMessage> = out
            .iter()
            .filter(|(to, _)| to == "v")
            .map(|(_, m)| m)
            .collect();
        assert!(
            matches!(to_v[0], ServerMessage::Exit { from, .. } if from == "c1"),
            "{to_v:?}"
        );
        assert!(
            matches!(to_v[1], ServerMessage::Joined { id, .. } if id == "c3"),
            "{to_v:?}"
        );
        let ids: Vec<String> = r.peers_in("lab").into_iter().map(|p| p.id).collect();
        assert_eq!(ids, ["v", "c2", "c3"]);
        // The retired connection is no longer a member: its messages need a new join.
        let out = r.handle(
            &"c1".to_string(),
            ClientMessage::Answer {
                to: "v".into(),
                sdp: "x".into(),
            },
            now(),
        );
        assert!(
            matches!(&out[0].1, ServerMessage::Error { code, .. } if code == "not-joined"),
            "{out:?}"
        );
        // A viewer with the same instance string does not retire a camera.
        let out = r.handle(
            &"v2".to_string(),
            ClientMessage::Join {
                room: "lab".into(),
                role: Role::Viewer,
                token: None,
                name: None,
                instance: Some("i-2".into()),
            },
            now(),
        );
        assert!(
            !out.iter()
                .any(|(_, m)| matches!(m, ServerMessage::Exit { .. })),
            "{out:?}"
        );
    }

    #[test]
    fn turn_credentials_go_to_token_holders_and_open_rooms_only_if_allowed() {
        let router_with = |for_open_rooms| {
            let cfg = crate::config::IceConfig {
                turn_rest: Some(crate::config::TurnRestConfig {
                    urls: vec!["turn:t:3478".into()],
                    secret: "k".into(),
                    ttl: Duration::from_secs(3600),
                    for_open_rooms,
                }),
                ..Default::default()
            };
            Router::new(
                Access {
                    key: key(),
                    open_rooms: ["lab".to_string()].into(),
                },
                Limits {
                    max_peers_per_room: 4,
                    max_rooms: 4,
                },
                IceProvider::from_config(&cfg),
            )
        };
        let turn_users = |out: &Outbox| -> Vec<Option<String>> {
            match &out[0].1 {
                ServerMessage::Created { ice_servers, .. } => {
                    ice_servers.iter().map(|s| s.username.clone()).collect()
                }
                other => panic!("expected created, got {other:?}"),
            }
        };
        let mut r = router_with(false);
        // Anyone may join the open room: no relay for them.
        assert!(turn_users(&join(&mut r, "v", "lab", Role::Viewer, None)).is_empty());
        // A token holder gets credentials, expiring with the token (10 min here, not 1 h).
        let token = key().sign("secret", Role::Viewer, Duration::from_secs(600), now());
        let users = turn_users(&join(&mut r, "w", "secret", Role::Viewer, Some(token)));
        let expiry = now()
            .duration_since(UNIX_EPOCH)
            .expect("after the epoch")
            .as_secs()
            + 600;
        assert_eq!(users, vec![Some(format!("{expiry}:w"))]);
        // The operator may hand them out in open rooms too.
        let mut r = router_with(true);
        assert_eq!(
            turn_users(&join(&mut r, "v", "lab", Role::Viewer, None)).len(),
            1
        );
    }

    #[test]
    fn relay_policy_is_handed_out() {
        let cfg = crate::config::IceConfig {
            transport_policy: crate::config::TransportPolicy::Relay,
            ..Default::default()
        };
        let mut r = Router::new(
            Access {
                key: key(),
                open_rooms: ["lab".to_string()].into(),
            },
            Limits {
                max_peers_per_room: 4,
                max_rooms: 2,
            },
            IceProvider::from_config(&cfg),
        );
        let out = join(&mut r, "v", "lab", Role::Viewer, None);
        let json = out[0].1.to_json();
        assert!(json.contains(r#""iceTransportPolicy":"relay""#), "{json}");
        let out = join(&mut router(&["lab"]), "v", "lab", Role::Viewer, None);
        assert!(!out[0].1.to_json().contains("iceTransportPolicy"));
    }
}
