//! The ICE servers handed to each peer in `created`: static STUN/TURN entries from the config,
//! plus TURN REST ephemeral credentials for coturn's `use-auth-secret` mode
//! (username `<expiry>:<peer id>`, credential `base64(HMAC-SHA1(secret, username))`).

use super::protocol::IceServer;
use crate::config::IceConfig;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Computes each peer's ICE server list.
#[derive(Debug, Clone, Default)]
pub struct IceProvider {
    static_servers: Vec<IceServer>,
    rest: Option<(Vec<String>, Vec<u8>, Duration)>,
    /// TURN REST credentials also for peers that joined an open room without a token.
    rest_for_open_rooms: bool,
    relay_only: bool,
}

/// The TURN REST credential pair for `user` valid until `now + ttl`.
pub fn turn_rest_credentials(
    secret: &[u8],
    user: &str,
    ttl: Duration,
    now: SystemTime,
) -> (String, String) {
    let expiry = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + ttl.as_secs();
    let username = format!("{expiry}:{user}");
    // HMAC accepts keys of any length; `new_from_slice` only fails for fixed-size MACs.
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(username.as_bytes());
    (username, STANDARD.encode(mac.finalize().into_bytes()))
}

impl IceProvider {
    /// From the `[ice]` config section.
    pub fn from_config(c: &IceConfig) -> Self {
        Self {
            static_servers: c
                .servers
                .iter()
                .map(|s| IceServer {
                    urls: s.urls.clone(),
                    username: s.username.clone(),
                    credential: s.credential.clone(),
                })
                .collect(),
            rest: c
                .turn_rest
                .as_ref()
                .map(|t| (t.urls.clone(), t.secret.clone().into_bytes(), t.ttl)),
            rest_for_open_rooms: c.turn_rest.as_ref().is_some_and(|t| t.for_open_rooms),
            relay_only: c.transport_policy == crate::config::TransportPolicy::Relay,
        }
    }

    /// `Some("relay")` when the operator wants every peer relay-only (handed out in `created`).
    pub fn transport_policy(&self) -> Option<String> {
        self.relay_only.then(|| "relay".to_owned())
    }

    /// The list for `peer` at `now`.
    pub fn for_peer(&self, peer: &str, now: SystemTime) -> Vec<IceServer> {
        self.for_peer_until(peer, now, None)
    }

    /// The list for a peer that joined an open room without a token: no TURN REST credentials
    /// unless the operator hands them out there too (`[ice.turn-rest] for-open-rooms`), so the
    /// TURN server is no open relay for whoever reaches the signaling server.
    pub fn for_tokenless_peer(&self, peer: &str, now: SystemTime) -> Vec<IceServer> {
        if self.rest_for_open_rooms {
            self.for_peer(peer, now)
        } else {
            self.static_servers.clone()
        }
    }

    /// Whether TURN REST credentials are configured but kept from tokenless peers.
    pub fn withholds_from_open_rooms(&self) -> bool {
        self.rest.is_some() && !self.rest_for_open_rooms
    }

    /// The list for `peer` at `now`, its TURN credentials expiring no later than `not_after`
    /// (the expiry of the token it joined with: a relay outlives no access).
    pub fn for_peer_until(
        &self,
        peer: &str,
        now: SystemTime,
        not_after: Option<SystemTime>,
    ) -> Vec<IceServer> {
        let mut out = self.static_servers.clone();
        if let Some((urls, secret, ttl)) = &self.rest {
            let ttl = match not_after {
                Some(end) => (*ttl).min(end.duration_since(now).unwrap_or_default()),
                None => *ttl,
            };
            let (username, credential) = turn_rest_credentials(secret, peer, ttl, now);
            out.push(IceServer {
                urls: urls.clone(),
                username: Some(username),
                credential: Some(credential),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{IceServerConfig, TurnRestConfig};

    #[test]
    fn coturn_rest_credentials() {
        // Reference value computed with: printf '%s' '1000086400:peer1' | openssl dgst -sha1 -hmac secret -binary | base64
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let (u, c) = turn_rest_credentials(b"secret", "peer1", Duration::from_secs(86_400), now);
        assert_eq!(u, "1000086400:peer1");
        assert_eq!(c, "ZeZRqiv+iJBhP+YI6UYgtbKjQIU=");
    }

    #[test]
    fn turn_credentials_end_with_the_token() {
        let p = IceProvider {
            static_servers: vec![],
            rest: Some((
                vec!["turn:t.example".into()],
                b"secret".to_vec(),
                Duration::from_secs(86_400),
            )),
            rest_for_open_rooms: false,
            relay_only: false,
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let user = |not_after| p.for_peer_until("v1", now, not_after)[0].username.clone();
        assert_eq!(
            user(None).as_deref(),
            Some("1000086400:v1"),
            "the configured ttl"
        );
        let soon = Some(now + Duration::from_secs(600));
        assert_eq!(
            user(soon).as_deref(),
            Some("1000000600:v1"),
            "no later than the token"
        );
        let later = Some(now + Duration::from_secs(10 * 86_400));
        assert_eq!(
            user(later).as_deref(),
            Some("1000086400:v1"),
            "no later than the ttl"
        );
    }

    #[test]
    fn static_then_rest() {
        let p = IceProvider::from_config(&IceConfig {
            servers: vec![IceServerConfig {
                urls: vec!["stun:s:3478".into()],
                username: None,
                credential: None,
            }],
            turn_rest: Some(TurnRestConfig {
                urls: vec!["turn:t:3478".into()],
                secret: "k".into(),
                ttl: Duration::from_secs(60),
                for_open_rooms: false,
            }),
            transport_policy: Default::default(),
        });
        let list = p.for_peer("abc", UNIX_EPOCH + Duration::from_secs(100));
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].urls, vec!["stun:s:3478".to_string()]);
        assert_eq!(list[1].username.as_deref(), Some("160:abc"));
    }
}
