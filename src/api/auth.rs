//! Management API authentication: admins log in with a password checked against a bcrypt hash from the config
//! (a credential), and get a bearer token signed with `server.secret_key` (HMAC-SHA256) that expires.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::error::ApiError;
use crate::config::Config;

/// Checked against when the user is unknown, so that timing does not tell which user names exist.
/// (bcrypt of a random string, cost 12.)
const DUMMY_HASH: &str = "$2b$12$PJxzlegHskjaceBzfWbinuJK.BzTseeWJMPnye8oOIP926Ouaecum";

pub struct Auth {
    admins: HashMap<String, String>,
    key: Option<Vec<u8>>,
    ttl: Duration,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    iat: u64,
    exp: u64,
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

impl Auth {
    pub fn from_config(config: &Config) -> Self {
        Auth {
            admins: config.admins.iter().map(|(user, hash)| (user.clone(), hash.expose().to_owned())).collect(),
            key: config.server.secret_key.as_ref().map(|k| k.expose().as_bytes().to_vec()),
            ttl: Duration::from_secs(config.server.token_ttl_secs),
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

    pub async fn login(&self, user: &str, password: &str) -> Result<Issued, ApiError> {
        self.enabled()?;
        let hash = self.admins.get(user).cloned();
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| DUMMY_HASH.to_owned());
        let password = password.to_owned();
        let matches = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
        if !(known && matches) {
            tracing::warn!(user = %user, "management API login failed");
            return Err(ApiError::unauthorized());
        }
        Ok(Issued { token: self.issue(user, self.ttl)?, token_type: "Bearer", expires_in: self.ttl.as_secs() })
    }

    /// A signed token for `user`, valid for `ttl`.
    pub fn issue(&self, user: &str, ttl: Duration) -> Result<String, ApiError> {
        let key = self.enabled()?;
        let iat = now();
        let claims = Claims { sub: user.to_owned(), iat, exp: iat + ttl.as_secs() };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialize"));
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
        mac.update(payload.as_bytes());
        Ok(format!("{payload}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())))
    }

    /// The user a valid, unexpired token was issued to.
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
        if claims.exp <= now() || !self.admins.contains_key(&claims.sub) {
            return Err(ApiError::unauthorized());
        }
        Ok(claims.sub)
    }
}

/// An authenticated admin (extracted from `Authorization: Bearer …`).
pub struct Admin(#[allow(dead_code)] pub String);

impl axum::extract::FromRequestParts<super::AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &super::AppState) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let token = header.and_then(|h| h.strip_prefix("Bearer ")).ok_or_else(ApiError::unauthorized)?;
        state.auth().verify(token.trim()).map(Admin)
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
        }
    }

    #[tokio::test]
    async fn login_issues_a_token_that_verifies() {
        let auth = auth();
        let issued = auth.login("alice", "correct horse").await.unwrap();
        assert_eq!(auth.verify(&issued.token).unwrap(), "alice");
        assert_eq!(auth.login("alice", "wrong").await.unwrap_err().code, "unauthorized");
        assert_eq!(auth.login("mallory", "correct horse").await.unwrap_err().code, "unauthorized");
    }

    #[test]
    fn tampered_expired_and_foreign_tokens_are_refused() {
        let auth = auth();
        let token = auth.issue("alice", Duration::from_secs(60)).unwrap();
        let (payload, signature) = token.split_once('.').unwrap();
        let forged_claims = URL_SAFE_NO_PAD.encode(br#"{"sub":"alice","iat":0,"exp":99999999999}"#);
        assert!(auth.verify(&format!("{forged_claims}.{signature}")).is_err(), "changed claims");
        assert!(auth.verify(&format!("{payload}.AAAA")).is_err(), "bad signature");
        let expired = auth.issue("alice", Duration::ZERO).unwrap();
        assert!(auth.verify(&expired).is_err(), "expired");
        let other = Auth { key: Some(b"another key another key another key".to_vec()), ..auth };
        assert!(other.verify(&token).is_err(), "signed with another key");
        assert!(DUMMY_HASH.starts_with("$2b$12$") && DUMMY_HASH.len() == 60);
    }
}
