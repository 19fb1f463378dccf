//! Registering bot users: Synapse's shared-secret admin registration (HMAC-SHA1 nonce flow) and the
//! `m.login.registration_token` user-interactive flow (conduwuit family, Synapse). Which one a server offers is
//! detected, not assumed. Registration only creates the account (`inhibit_login`); the caller logs in afterwards
//! so that every bot device is created the same way.

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha1::Sha1;
use url::Url;

/// What `register` needs. Either secret may be absent.
pub struct Registration<'a> {
    pub homeserver: &'a Url,
    pub localpart: &'a str,
    pub password: &'a str,
    pub shared_secret: Option<&'a str>,
    pub token: Option<&'a str>,
    /// Register the user as a server admin (shared-secret registration only: Synapse's admin API).
    pub admin: bool,
}

/// How the account came to exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    SharedSecret,
    RegistrationToken,
    /// The user existed already; log in with the configured password.
    AlreadyExists,
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("cannot reach the homeserver at {url}: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("the homeserver answered {status} to {what}: {body}")]
    Unexpected { what: &'static str, status: u16, body: String },
    #[error(
        "the homeserver rejected the registration shared secret (HMAC incorrect): check that \
         registration_shared_secret matches the homeserver's `registration_shared_secret`"
    )]
    BadSharedSecret,
    #[error("the homeserver rejected the registration token: it is invalid, used up or expired. Issue a new one")]
    BadToken,
    #[error(
        "the homeserver offers neither registration method that is configured (tried: {tried}). Synapse needs \
         `registration_shared_secret` (its admin API); conduwuit/continuwuity/tuwunel need `registration_token` with \
         token registration enabled on the server"
    )]
    NotOffered { tried: String },
    #[error(
        "registration needs more steps than a bot can complete ({stages}); create the user by hand and configure its password"
    )]
    UnsupportedStages { stages: String },
}

pub async fn register(http: &reqwest::Client, reg: &Registration<'_>) -> Result<Registered, RegisterError> {
    let mut tried = Vec::new();
    if let Some(secret) = reg.shared_secret {
        tried.push("shared secret");
        if let Some(outcome) = shared_secret(http, reg, secret).await? {
            return Ok(outcome);
        }
    }
    if let Some(token) = reg.token {
        tried.push("registration token");
        if let Some(outcome) = registration_token(http, reg, token).await? {
            return Ok(outcome);
        }
    }
    Err(RegisterError::NotOffered { tried: tried.join(", ") })
}

fn endpoint(base: &Url, path: &str) -> String {
    format!("{}/{path}", base.as_str().trim_end_matches('/'))
}

async fn send(request: reqwest::RequestBuilder, url: &str) -> Result<(u16, Value), RegisterError> {
    let response = request.send().await.map_err(|source| RegisterError::Http { url: url.to_owned(), source })?;
    let status = response.status().as_u16();
    let body = response.text().await.map_err(|source| RegisterError::Http { url: url.to_owned(), source })?;
    Ok((status, serde_json::from_str(&body).unwrap_or(Value::String(body))))
}

fn errcode(body: &Value) -> &str {
    body.get("errcode").and_then(Value::as_str).unwrap_or_default()
}

/// Synapse admin registration. `None` when the server does not offer it.
async fn shared_secret(
    http: &reqwest::Client,
    reg: &Registration<'_>,
    secret: &str,
) -> Result<Option<Registered>, RegisterError> {
    let url = endpoint(reg.homeserver, "_synapse/admin/v1/register");
    let (status, body) = send(http.get(&url), &url).await?;
    let Some(nonce) = body.get("nonce").and_then(Value::as_str).filter(|_| status == 200) else {
        tracing::debug!(status, "no shared-secret registration on this homeserver");
        return Ok(None);
    };
    let mac = shared_secret_mac(secret, nonce, reg.localpart, reg.password, reg.admin);
    let request = json!({
        "nonce": nonce,
        "username": reg.localpart,
        "password": reg.password,
        "admin": reg.admin,
        "mac": mac,
        "inhibit_login": true,
    });
    let (status, body) = send(http.post(&url).json(&request), &url).await?;
    match (status, errcode(&body)) {
        (200, _) => Ok(Some(Registered::SharedSecret)),
        (_, "M_USER_IN_USE") => Ok(Some(Registered::AlreadyExists)),
        (403, _) => Err(RegisterError::BadSharedSecret),
        (400, _) if body.to_string().contains("not enabled") => Ok(None),
        (status, _) => {
            Err(RegisterError::Unexpected { what: "shared-secret registration", status, body: body.to_string() })
        }
    }
}

/// HMAC-SHA1 over nonce, user, password and `admin`/`notadmin`, joined by NUL bytes, hex encoded.
pub fn shared_secret_mac(secret: &str, nonce: &str, user: &str, password: &str, admin: bool) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    for (i, part) in [nonce, user, password, if admin { "admin" } else { "notadmin" }].iter().enumerate() {
        if i > 0 {
            mac.update(b"\0");
        }
        mac.update(part.as_bytes());
    }
    hex::encode(mac.finalize().into_bytes())
}

/// The user-interactive `m.login.registration_token` flow. `None` when the server does not offer it.
async fn registration_token(
    http: &reqwest::Client,
    reg: &Registration<'_>,
    token: &str,
) -> Result<Option<Registered>, RegisterError> {
    let url = endpoint(reg.homeserver, "_matrix/client/v3/register?kind=user");
    let mut request = json!({
        "username": reg.localpart,
        "password": reg.password,
        "inhibit_login": true,
    });
    // At most a few rounds: token, then possibly m.login.dummy.
    for _ in 0..4 {
        let sent_token = request.get("auth").is_some_and(|a| a["type"] == "m.login.registration_token");
        let (status, body) = send(http.post(&url).json(&request), &url).await?;
        match (status, errcode(&body)) {
            (200, _) => return Ok(Some(Registered::RegistrationToken)),
            (_, "M_USER_IN_USE") => return Ok(Some(Registered::AlreadyExists)),
            (401, _) if body.get("flows").is_some() => {
                let completed: Vec<&str> = body
                    .get("completed")
                    .and_then(Value::as_array)
                    .map(|c| c.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                if sent_token && !completed.contains(&"m.login.registration_token") {
                    return Err(RegisterError::BadToken);
                }
                let Some(stages) = next_stages(&body, &completed) else {
                    return Ok(None);
                };
                let session = body.get("session").and_then(Value::as_str).unwrap_or_default();
                request["auth"] = match stages.first().map(String::as_str) {
                    Some("m.login.registration_token") => {
                        json!({"type": "m.login.registration_token", "token": token, "session": session})
                    }
                    Some("m.login.dummy") => json!({"type": "m.login.dummy", "session": session}),
                    _ => {
                        return Err(RegisterError::UnsupportedStages { stages: stages.join(", ") });
                    }
                };
            }
            (_, "M_FORBIDDEN" | "M_UNAUTHORIZED") if sent_token => {
                return Err(RegisterError::BadToken);
            }
            // Registration disabled or not implemented.
            (403..=405, _) => return Ok(None),
            (status, _) => {
                return Err(RegisterError::Unexpected { what: "token registration", status, body: body.to_string() });
            }
        }
    }
    Err(RegisterError::UnsupportedStages { stages: "too many rounds".into() })
}

/// The remaining stages of the first flow that uses a registration token and nothing a bot cannot do.
fn next_stages(body: &Value, completed: &[&str]) -> Option<Vec<String>> {
    let flows = body.get("flows")?.as_array()?;
    flows
        .iter()
        .filter_map(|flow| flow.get("stages")?.as_array())
        .map(|stages| stages.iter().filter_map(Value::as_str).collect::<Vec<_>>())
        .filter(|stages| stages.contains(&"m.login.registration_token"))
        .find(|stages| stages.iter().all(|s| matches!(*s, "m.login.registration_token" | "m.login.dummy")))
        .map(|stages| stages.into_iter().filter(|s| !completed.contains(s)).map(str::to_owned).collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_matches_synapse_reference() {
        // hmac.new(b"secret", b"abc\x00bot\x00pw\x00notadmin", hashlib.sha1).hexdigest()
        assert_eq!(shared_secret_mac("secret", "abc", "bot", "pw", false), "bc97a1918bc67018ab6c9774cad19bcd9cd97b34");
        assert_ne!(shared_secret_mac("secret", "abc", "bot", "pw", true), "bc97a1918bc67018ab6c9774cad19bcd9cd97b34");
    }

    #[test]
    fn flows_pick_token_flow() {
        let body = json!({"flows": [{"stages": ["m.login.email.identity"]},
                                     {"stages": ["m.login.registration_token", "m.login.dummy"]}],
                          "session": "s"});
        assert_eq!(next_stages(&body, &[]).unwrap(), vec!["m.login.registration_token", "m.login.dummy"]);
        assert_eq!(next_stages(&body, &["m.login.registration_token"]).unwrap(), vec!["m.login.dummy"]);
        let without = json!({"flows": [{"stages": ["m.login.dummy"]}]});
        assert!(next_stages(&without, &[]).is_none());
    }
}
