//! Access tokens: HS256-signed JWTs naming a room, an identity and a role.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use medsfu_core::Role;
use serde::{Deserialize, Serialize};

/// Issuer written into and required of every token.
pub const ISSUER: &str = "medsfu";

/// What a token grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer, always [`ISSUER`].
    pub iss: String,
    /// Identity of the holder (user or device name).
    pub sub: String,
    /// Room the token is valid for.
    pub room: String,
    /// Role in that room (see the requirements' roles table).
    pub role: String,
    /// Issued at (seconds since the Unix epoch).
    pub iat: u64,
    /// Expiry (seconds since the Unix epoch).
    pub exp: u64,
    /// Issued at, in milliseconds (revocation by a secret change is to the millisecond;
    /// 0 in tokens from before it was added: then `iat` counts).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub iat_ms: u64,
    /// What the token is for: empty for a room's media and signalling, [`API_SCOPE`] for
    /// the control API (then `room` is empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    /// The registered device a crew member signed in on (empty otherwise): revoking the
    /// device ends what its tokens opened.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dev: String,
}

/// The scope of control API tokens (a user's login session).
pub const API_SCOPE: &str = "api";

/// A verified grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Identity of the holder.
    pub identity: String,
    /// Room.
    pub room: String,
    /// Role.
    pub role: Role,
    /// When the token was issued (milliseconds since 1970).
    pub issued_at_ms: u64,
    /// When it expires (seconds since 1970).
    pub expires_at: u64,
    /// The device a crew member signed in on, if any.
    pub device: Option<String>,
}

/// Why a token was refused (each is a 401 with this reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// No token was presented.
    #[error("no access token")]
    Missing,
    /// The token has expired.
    #[error("access token expired")]
    Expired,
    /// The signature or issuer does not match this server.
    #[error("access token not issued by this server")]
    Foreign,
    /// The token is not a well-formed JWT of ours.
    #[error("malformed access token: {0}")]
    Malformed(String),
    /// The token is for another room.
    #[error("access token is for another room")]
    WrongRoom,
    /// A room token was used for the control API, or a login token for a room.
    #[error("access token is for another purpose (log in for the API; get a room token to join)")]
    WrongScope,
}

impl TokenError {
    /// Stable code for the wire.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Missing => "token_missing",
            TokenError::Expired => "token_expired",
            TokenError::Foreign => "token_foreign",
            TokenError::Malformed(_) => "token_malformed",
            TokenError::WrongRoom => "token_wrong_room",
            TokenError::WrongScope => "token_wrong_scope",
        }
    }
}

/// Signs and verifies tokens with one shared secret.
#[derive(Clone)]
pub struct TokenKey {
    enc: EncodingKey,
    dec: DecodingKey,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl TokenKey {
    /// A key from secret bytes (at least 32 are recommended).
    pub fn new(secret: &[u8]) -> TokenKey {
        TokenKey {
            enc: EncodingKey::from_secret(secret),
            dec: DecodingKey::from_secret(secret),
        }
    }

    /// Issues a token valid from `now` for `ttl`.
    pub fn issue(
        &self,
        room: &str,
        identity: &str,
        role: Role,
        now: SystemTime,
        ttl: Duration,
    ) -> String {
        self.issue_on(room, identity, role, None, now, ttl)
    }

    /// Issues a room token for a holder signed in on `device` (a crew's tablet).
    pub fn issue_on(
        &self,
        room: &str,
        identity: &str,
        role: Role,
        device: Option<&str>,
        now: SystemTime,
        ttl: Duration,
    ) -> String {
        self.sign(room, identity, role, device, "", now, ttl)
    }

    /// Issues a control API token (a login session) for an account or device.
    pub fn issue_api(&self, identity: &str, role: Role, now: SystemTime, ttl: Duration) -> String {
        self.issue_api_on(identity, role, None, now, ttl)
    }

    /// Issues a control API token for an account signed in on `device`.
    pub fn issue_api_on(
        &self,
        identity: &str,
        role: Role,
        device: Option<&str>,
        now: SystemTime,
        ttl: Duration,
    ) -> String {
        self.sign("", identity, role, device, API_SCOPE, now, ttl)
    }

    #[allow(clippy::too_many_arguments)]
    fn sign(
        &self,
        room: &str,
        identity: &str,
        role: Role,
        device: Option<&str>,
        scope: &str,
        now: SystemTime,
        ttl: Duration,
    ) -> String {
        let iat = unix(now);
        let claims = Claims {
            iss: ISSUER.to_owned(),
            sub: identity.to_owned(),
            room: room.to_owned(),
            role: role.as_str().to_owned(),
            iat,
            exp: iat + ttl.as_secs(),
            iat_ms: unix_ms(now),
            scope: scope.to_owned(),
            dev: device.unwrap_or_default().to_owned(),
        };
        // Encoding HS256 with an HMAC key cannot fail for serialisable claims.
        encode(&Header::new(Algorithm::HS256), &claims, &self.enc).unwrap_or_default()
    }

    /// Verifies a control API token; the grant's room is empty.
    pub fn verify_api(&self, token: &str, now: SystemTime) -> Result<Grant, TokenError> {
        let (g, scope) = self.decode(token, now)?;
        if scope != API_SCOPE {
            return Err(TokenError::WrongScope);
        }
        Ok(g)
    }

    /// Verifies a room token at time `now` and returns what it grants.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Grant, TokenError> {
        let (g, scope) = self.decode(token, now)?;
        if !scope.is_empty() {
            return Err(TokenError::WrongScope);
        }
        Ok(g)
    }

    fn decode(&self, token: &str, now: SystemTime) -> Result<(Grant, String), TokenError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.set_issuer(&[ISSUER]);
        v.set_required_spec_claims(&["exp", "iss", "sub"]);
        // Expiry is checked below against the caller's clock, not the library's.
        v.validate_exp = false;
        let data = decode::<Claims>(token, &self.dec, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature | K::InvalidIssuer | K::InvalidAlgorithm => TokenError::Foreign,
                _ => TokenError::Malformed(e.to_string()),
            }
        })?;
        let c = data.claims;
        if unix(now) >= c.exp {
            return Err(TokenError::Expired);
        }
        let role = c.role.parse::<Role>().map_err(TokenError::Malformed)?;
        Ok((
            Grant {
                identity: c.sub,
                room: c.room,
                role,
                issued_at_ms: if c.iat_ms > 0 {
                    c.iat_ms
                } else {
                    c.iat.saturating_mul(1000)
                },
                expires_at: c.exp,
                device: (!c.dev.is_empty()).then_some(c.dev),
            },
            c.scope,
        ))
    }

    /// Verifies a token and that it is for `room`.
    pub fn verify_for_room(
        &self,
        token: &str,
        room: &str,
        now: SystemTime,
    ) -> Result<Grant, TokenError> {
        let g = self.verify(token, now)?;
        if g.room != room {
            return Err(TokenError::WrongRoom);
        }
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify() {
        let k = TokenKey::new(b"0123456789abcdef0123456789abcdef");
        let now = SystemTime::now();
        let t = k.issue("r1", "dr-who", Role::Lead, now, Duration::from_secs(60));
        let g = k.verify_for_room(&t, "r1", now).unwrap();
        assert_eq!(g.identity, "dr-who");
        assert_eq!(g.role, Role::Lead);
        assert_eq!(k.verify_for_room(&t, "r2", now), Err(TokenError::WrongRoom));
    }

    #[test]
    fn expired_foreign_and_garbage_tokens_are_refused_with_reasons() {
        let k = TokenKey::new(b"0123456789abcdef0123456789abcdef");
        let other = TokenKey::new(b"another secret, another server!!");
        let now = SystemTime::now();
        let t = k.issue("r", "x", Role::Team, now, Duration::from_secs(60));
        assert_eq!(
            k.verify(&t, now + Duration::from_secs(61)),
            Err(TokenError::Expired)
        );
        let f = other.issue("r", "x", Role::Team, now, Duration::from_secs(60));
        assert_eq!(k.verify(&f, now), Err(TokenError::Foreign));
        assert_eq!(
            k.verify("not.a.jwt", now).map_err(|e| e.code()),
            Err("token_malformed")
        );
        assert_eq!(
            k.verify("", now).map_err(|e| e.code()),
            Err("token_malformed")
        );
    }

    #[test]
    fn api_and_room_tokens_are_not_interchangeable() {
        let k = TokenKey::new(b"0123456789abcdef0123456789abcdef");
        let now = SystemTime::now();
        let api = k.issue_api("ana", Role::Consultant, now, Duration::from_secs(60));
        let room = k.issue("r", "ana", Role::Lead, now, Duration::from_secs(60));
        assert_eq!(k.verify_api(&api, now).unwrap().identity, "ana");
        assert_eq!(k.verify(&api, now), Err(TokenError::WrongScope));
        assert_eq!(k.verify_api(&room, now), Err(TokenError::WrongScope));
        assert_eq!(
            k.verify_api(&api, now + Duration::from_secs(60)),
            Err(TokenError::Expired)
        );
    }
}
