//! Room access tokens: HMAC-SHA256-signed grants of one role in one room until an expiry.
//!
//! Format: `v1.<base64url(JSON {room, role, exp})>.<base64url(HMAC-SHA256(secret, payload))>`.
//! `room` may be `*` (any room). `exp` is seconds since the Unix epoch. A viewer token never
//! admits a camera, and a camera token never admits a viewer.

use super::protocol::Role;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

type HmacSha256 = Hmac<Sha256>;

const PREFIX: &str = "v1.";
/// Tokens longer than this are refused before any decoding work.
const MAX_TOKEN_LEN: usize = 1024;

/// What a token grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Room name, or `*` for every room.
    pub room: String,
    /// The role the bearer may take.
    pub role: Role,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token of this format, or a forged/garbled one.
    #[error("token is malformed or its signature does not match")]
    Invalid,
    /// Valid, but for another room.
    #[error("token is for room {0:?}")]
    WrongRoom(String),
    /// Valid, but for the other role.
    #[error("token is for role {0}")]
    WrongRole(Role),
    /// Valid, but expired.
    #[error("token expired {0} s ago")]
    Expired(u64),
}

/// Signs and checks tokens with one secret.
#[derive(Clone)]
pub struct TokenKey {
    secret: Vec<u8>,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<secret>)")
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TokenKey {
    /// A key from the shared secret.
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self {
            secret: secret.into(),
        }
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length; `new_from_slice` only fails for fixed-size MACs.
        HmacSha256::new_from_slice(&self.secret).expect("HMAC takes keys of any length")
    }

    /// A token granting `role` in `room` for `ttl` from `now`.
    pub fn sign(&self, room: &str, role: Role, ttl: Duration, now: SystemTime) -> String {
        let claims = Claims {
            room: room.to_owned(),
            role,
            exp: unix_secs(now).saturating_add(ttl.as_secs()),
        };
        // A struct of a string, an enum and an integer always serializes.
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{PREFIX}{payload}.{sig}")
    }

    /// Check `token` for `role` in `room` at `now`.
    pub fn verify(
        &self,
        token: &str,
        room: &str,
        role: Role,
        now: SystemTime,
    ) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Invalid);
        }
        let rest = token.strip_prefix(PREFIX).ok_or(TokenError::Invalid)?;
        let (payload, sig) = rest.split_once('.').ok_or(TokenError::Invalid)?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| TokenError::Invalid)?;
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        // Constant-time comparison.
        mac.verify_slice(&sig).map_err(|_| TokenError::Invalid)?;
        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Invalid)?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Invalid)?;
        if claims.room != "*" && claims.room != room {
            return Err(TokenError::WrongRoom(claims.room));
        }
        if claims.role != role {
            return Err(TokenError::WrongRole(claims.role));
        }
        let now = unix_secs(now);
        if now >= claims.exp {
            return Err(TokenError::Expired(now - claims.exp));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn round_trip_and_scope() {
        let key = TokenKey::new(b"s3cret".to_vec());
        let t = key.sign("garden", Role::Viewer, Duration::from_secs(60), at(1000));
        assert_eq!(
            key.verify(&t, "garden", Role::Viewer, at(1059))
                .unwrap()
                .exp,
            1060
        );
        assert_eq!(
            key.verify(&t, "garden", Role::Viewer, at(1060)),
            Err(TokenError::Expired(0))
        );
        assert_eq!(
            key.verify(&t, "garden", Role::Camera, at(1001)),
            Err(TokenError::WrongRole(Role::Viewer))
        );
        assert_eq!(
            key.verify(&t, "shed", Role::Viewer, at(1001)),
            Err(TokenError::WrongRoom("garden".into()))
        );
        let any = key.sign("*", Role::Camera, Duration::from_secs(60), at(1000));
        assert!(key.verify(&any, "shed", Role::Camera, at(1001)).is_ok());
    }

    #[test]
    fn forgeries_are_refused() {
        let key = TokenKey::new(b"s3cret".to_vec());
        let other = TokenKey::new(b"other".to_vec());
        let t = other.sign("garden", Role::Viewer, Duration::from_secs(60), at(1000));
        assert_eq!(
            key.verify(&t, "garden", Role::Viewer, at(1001)),
            Err(TokenError::Invalid)
        );
        // Swap in a payload that claims the camera role, keeping the viewer signature.
        let good = key.sign("garden", Role::Viewer, Duration::from_secs(60), at(1000));
        let cam = key.sign("garden", Role::Camera, Duration::from_secs(60), at(1000));
        let (_, sig) = good.rsplit_once('.').unwrap();
        let (payload, _) = cam.rsplit_once('.').unwrap();
        let forged = format!("{payload}.{sig}");
        assert_eq!(
            key.verify(&forged, "garden", Role::Camera, at(1001)),
            Err(TokenError::Invalid)
        );
        for junk in ["", "v1.", "v1..", "v2.a.b", "v1.!!.??", &"v1.a".repeat(400)] {
            assert_eq!(
                key.verify(junk, "garden", Role::Viewer, at(1001)),
                Err(TokenError::Invalid)
            );
        }
    }
}
