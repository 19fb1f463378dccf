//! Management API authentication: admins log in with a password checked against a bcrypt hash from the config
//! (a credential), and get a bearer token signed with `server.secret_key` (HMAC-SHA256) that expires.
//!
//! Logins are throttled per client address and per user before any hashing (`throttle.rs`), and hashed on a
//! thread of their own (`hashing.rs`). Tokens stay valid across restarts until they expire; `logout-all`
//! (or a new `secret_key` and a reload) ends every one at once: each token carries the token epoch it was issued
//! in, and logout-all starts a new epoch (kept in the database).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::error::ApiError;
use super::hashing::HashPool;
use super::throttle::LoginThrottle;
use crate::config::Config;

/// Checked against when the user is unknown, so that timing does not tell which user names exist: bcrypt
/// hashes of random strings, one per accepted cost (12 to 14); the one used has the highest cost among the
/// configured admins.
const DUMMY_HASHES: [(u32, &str); 3] = [
    (12, "$2b$12$PJxzlegHskjaceBzfWbinuJK.BzTseeWJMPnye8oOIP926Ouaecum"),
    (13, "$2b$13$JEaKbJHZUcqb7qNIA9Q.Se.B5pcOATOUFxfHHzGaK1F9iXD7TJw4C"),
    (14, "$2b$14$IFVMuiORQc98h38mJmjbB.EIhn9cDLAMZAhHb5pnVQWQaGU2jkCkG"),
];

fn dummy_hash(admins: &HashMap<String, String>) -> &'static str {
    let cost = admins.values().filter_map(|h| crate::config::validate::bcrypt_cost(h)).max().unwrap_or(12);
    DUMMY_HASHES.iter().find(|(c, _)| *c == cost).map_or(DUMMY_HASHES[0].1, |(_, h)| h)
}

/// The current token epoch, shared by every `Auth` the process makes (they are replaced at a reload).
pub type Epoch = Arc<RwLock<String>>;

/// Where the epoch is kept (the database's `meta` table).
pub const EPOCH_KEY: &str = "token_epoch";

pub struct Auth {
    admins: HashMap<String, String>,
    key: Option<Vec<u8>>,
    ttl: Duration,
    epoch: Epoch,
}

/// What logging in needs besides the config: the throttle and the hashing thread, both kept across reloads.
pub struct LoginGuards {
    pub throttle: LoginThrottle,
    pub hashing: HashPool,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    iat: u64,
    exp: u64,
    #[serde(default)]
    epoch: String,
}

#[derive(Serialize)]
pub struct Issued {
    pub token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("token", &crate::config::secret::REDACTED)
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// A new random epoch.
pub fn new_epoch() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

impl Auth {
    pub fn from_config(config: &Config, epoch: Epoch) -> Self {
        Auth {
            admins: config.admins.iter().map(|(user, hash)| (user.clone(), hash.expose().to_owned())).collect(),
            key: config.server.secret_key.as_ref().map(|k| k.expose().as_bytes().to_vec()),
            ttl: Duration::from_secs(config.server.token_ttl_secs),
            epoch,
        }
    }

    fn enabled(&self) -> Result<&[u8], ApiError> {
        match &self.key {
            Some(key) if !self.admins.is_empty() => Ok(key),
            _ => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "login_disabled",
                "login is disabled: configure `admins` and `server.secret_key`",
            )),
        }
    }

    pub async fn login(
        &self,
        guards: &LoginGuards,
        client: Option<IpAddr>,
        user: &str,
        password: &str,
    ) -> Result<Issued, ApiError> {
        self.enabled()?;
        let keys: Vec<String> =
            client.map(|ip| format!("ip:{ip}")).into_iter().chain([format!("user:{user}")]).collect();
        if let Err(wait) = guards.throttle.attempt(&keys) {
            return Err(ApiError::too_many("too many login attempts; wait and try again", wait));
        }
        let hash = self.admins.get(user).map(String::as_str);
        let known = hash.is_some();
        let matches =
            guards.hashing.verify(password, hash.unwrap_or_else(|| dummy_hash(&self.admins))).await.map_err(|_| {
                ApiError::too_many("too many logins are being checked; try again", Duration::from_secs(1))
            })?;
        if !(known && matches) {
            tracing::warn!(user = %user, client = ?client, "management API login failed");
            return Err(ApiError::unauthorized());
        }
        guards.throttle.succeeded(&keys);
        Ok(Issued { token: self.issue(user, self.ttl)?, token_type: "Bearer", expires_in: self.ttl.as_secs() })
    }

    /// A signed token for `user`, valid for `ttl`.
    pub fn issue(&self, user: &str, ttl: Duration) -> Result<String, ApiError> {
        let key = self.enabled()?;
        let iat = now();
        let epoch = self.epoch.read().unwrap_or_else(|p| p.into_inner()).clone();
        let claims = Claims { sub: user.to_owned(), iat, exp: iat + ttl.as_secs(), epoch };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialize"));
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
        mac.update(payload.as_bytes());
        Ok(format!("{payload}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())))
    }

    /// The user a valid, unexpired token of the current epoch was issued to.
    pub fn verify(&self, token: &str) -> Result<String, ApiError> {
        let key = self.enabled()?;
        let (payload, signature) = token.split_once('.').ok_or_else(ApiError::unauthorized)?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| ApiError::unauthorized())?;
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
        mac.update(payload.as_bytes());
        mac.verify_slice(&signature).map_err(|_| ApiError::unauthorized())?;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(ApiError::unauthorized)?;
        let current = self.epoch.read().unwrap_or_else(|p| p.into_inner()).clone();
        if claims.exp <= now() || !self.admins.contains_key(&claims.sub) || claims.epoch != current {
            return Err(ApiError::unauthorized());
        }
        Ok(claims.sub)
    }
}

/// An authenticated admin (extracted from `Authorization: Bearer …`; the scheme is case-insensitive, RFC 7235).
pub struct Admin(pub String);

/// The token of an `Authorization` header value, if it uses the bearer scheme.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

impl axum::extract::FromRequestParts<super::AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &super::AppState) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let token = header.and_then(bearer_token).ok_or_else(ApiError::unauthorized)?;
        state.auth().verify(token).map(Admin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth {
            admins: HashMap::from([("alice".to_owned(), bcrypt::hash("correct horse", 4).unwrap())]),
            key: Some(b"0123456789abcdef0123456789abcdef".to_vec()),
            ttl: Duration::from_secs(60),
            epoch: Arc::new(RwLock::new("one".into())),
        }
    }

    fn guards() -> LoginGuards {
        LoginGuards { throttle: LoginThrottle::default(), hashing: HashPool::start() }
    }

    #[tokio::test]
    async fn login_issues_a_token_that_verifies_until_a_new_epoch() {
        let (auth, guards) = (auth(), guards());
        let issued = auth.login(&guards, None, "alice", "correct horse").await.unwrap();
        assert_eq!(auth.verify(&issued.token).unwrap(), "alice");
        assert_eq!(auth.login(&guards, None, "alice", "wrong").await.unwrap_err().code, "unauthorized");
        assert_eq!(auth.login(&guards, None, "mallory", "correct horse").await.unwrap_err().code, "unauthorized");
        *auth.epoch.write().unwrap() = new_epoch();
        assert!(auth.verify(&issued.token).is_err(), "logout-all ends earlier tokens");
    }

    #[tokio::test]
    async fn repeated_failures_are_throttled_before_hashing() {
        let (auth, guards) = (auth(), guards());
        let client = Some("127.0.0.1".parse().unwrap());
        let mut codes = Vec::new();
        for _ in 0..8 {
            codes.push(auth.login(&guards, client, "alice", "wrong").await.unwrap_err().code);
        }
        assert_eq!(&codes[..4], ["unauthorized"; 4]);
        assert!(codes[4..].iter().all(|c| *c == "too_many_requests"), "{codes:?}");
    }

    #[test]
    fn tampered_expired_and_foreign_tokens_are_refused() {
        let auth = auth();
        let token = auth.issue("alice", Duration::from_secs(60)).unwrap();
        let (payload, signature) = token.split_once('.').unwrap();
        let forged_claims = URL_SAFE_NO_PAD.encode(br#"{"sub":"alice","iat":0,"exp":99999999999,"epoch":"one"}"#);
        assert!(auth.verify(&format!("{forged_claims}.{signature}")).is_err(), "changed claims");
        assert!(auth.verify(&format!("{payload}.AAAA")).is_err(), "bad signature");
        let expired = auth.issue("alice", Duration::ZERO).unwrap();
        assert!(auth.verify(&expired).is_err(), "expired");
        let other = Auth { key: Some(b"another key another key another key".to_vec()), ..auth };
        assert!(other.verify(&token).is_err(), "signed with another key");
        for (cost, hash) in DUMMY_HASHES {
            assert_eq!(crate::config::validate::bcrypt_cost(hash), Some(cost));
        }
        let admins = HashMap::from([("a".to_owned(), DUMMY_HASHES[2].1.to_owned())]);
        assert_eq!(dummy_hash(&admins), DUMMY_HASHES[2].1, "unknown users cost as much as the costliest admin");
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
    }
}
