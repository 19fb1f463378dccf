//! Syntax checks for the identifiers a config holds. Each returns a reason that completes the sentence
//! "`value` is not valid: ...".

/// An instance id: `[a-z0-9][a-z0-9-]*`, at most 64 characters (it names a directory and a credential prefix).
pub fn check_instance_id(id: &str) -> Result<(), String> {
    let mut chars = id.chars();
    match chars.next() {
        None => return Err("it is empty".into()),
        Some(c) if !(c.is_ascii_lowercase() || c.is_ascii_digit()) => {
            return Err("it must start with a lower-case letter or digit".into());
        }
        _ => {}
    }
    if let Some(bad) = chars.find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')) {
        return Err(format!("`{bad}` is not allowed; use lower-case letters, digits and `-`"));
    }
    if id.len() > 64 {
        return Err("it is longer than 64 characters".into());
    }
    Ok(())
}

/// The longest user or room ID the Matrix spec allows, in bytes.
pub const MAX_ID_BYTES: usize = 255;

/// A Matrix user ID `@localpart:server_name` with a localpart of `[a-z0-9._=/+-]`, at most 255 bytes.
pub fn check_user_id(user: &str) -> Result<(), String> {
    if user.len() > MAX_ID_BYTES {
        return Err(format!("it is {} bytes long; Matrix IDs have at most {MAX_ID_BYTES}", user.len()));
    }
    let Some(rest) = user.strip_prefix('@') else {
        return Err("a Matrix user ID starts with `@`, like `@bot:example.org`".into());
    };
    let Some((localpart, server)) = rest.split_once(':') else {
        return Err("it has no `:server_name` part, like `@bot:example.org`".into());
    };
    if localpart.is_empty() {
        return Err("the localpart before `:` is empty".into());
    }
    if let Some(bad) =
        localpart.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "._=/+-".contains(*c)))
    {
        return Err(format!("`{bad}` is not allowed in the localpart; use lower-case letters, digits and `._=/+-`"));
    }
    check_server_name(server)
}

/// A server name: a DNS name, IPv4 address or `[IPv6]`, with an optional `:port`.
pub fn check_server_name(server: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = server.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return Err(format!("server name `{server}` has an unclosed `[`"));
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("`{v6}` is not an IPv6 address"));
        }
        (None, after.strip_prefix(':'))
    } else {
        match server.rsplit_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(server), None),
        }
    };
    if let Some(host) = host {
        if host.is_empty() {
            return Err("the server name is empty".into());
        }
        if let Some(bad) = host.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '.' || *c == '-')) {
            return Err(format!("`{bad}` is not allowed in the server name `{host}`"));
        }
    }
    if let Some(port) = port
        && port.parse::<u16>().map(|p| p == 0).unwrap_or(true)
    {
        return Err(format!("`{port}` is not a port number"));
    }
    Ok(())
}

/// The server name of a user ID that passed [`check_user_id`].
pub fn server_name_of(user: &str) -> &str {
    user.split_once(':').map(|(_, server)| server).unwrap_or_default()
}

/// A room ID: `!opaque:server_name`, or `!opaque` (room version 12 drops the server name).
pub fn check_room_id(room: &str) -> Result<(), String> {
    if room.len() > MAX_ID_BYTES {
        return Err(format!("it is {} bytes long; Matrix IDs have at most {MAX_ID_BYTES}", room.len()));
    }
    if room.starts_with('#') {
        return Err("this is a room alias; use the room ID (`!…`), shown in the room's advanced settings".into());
    }
    let Some(rest) = room.strip_prefix('!') else {
        return Err("a room ID starts with `!`, like `!abc123:example.org`".into());
    };
    let (opaque, server) = match rest.split_once(':') {
        Some((opaque, server)) => (opaque, Some(server)),
        None => (rest, None),
    };
    if opaque.is_empty() {
        return Err("the part after `!` is empty".into());
    }
    if opaque.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("it contains whitespace".into());
    }
    match server {
        Some(server) => check_server_name(server),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids() {
        assert!(check_instance_id("ping-1").is_ok());
        assert!(check_instance_id("0bot").is_ok());
        assert!(check_instance_id("-bot").is_err());
        assert!(check_instance_id("Bot").is_err());
        assert!(check_instance_id("my_bot").unwrap_err().contains("`_`"));
        assert!(check_instance_id("").is_err());
    }

    #[test]
    fn user_ids() {
        assert!(check_user_id("@bot:example.org").is_ok());
        assert!(check_user_id("@bot-1.x:127.0.0.1:8448").is_ok());
        assert!(check_user_id("@bot:[::1]:8448").is_ok());
        assert!(check_user_id("bot:example.org").unwrap_err().contains("starts with `@`"));
        assert!(check_user_id("@bot").unwrap_err().contains("server_name"));
        assert!(check_user_id("@Bot:example.org").unwrap_err().contains("`B`"));
        assert!(check_user_id("@bot:exa mple.org").is_err());
        assert!(check_user_id("@bot:example.org:0").is_err());
        assert!(check_user_id(&format!("@{}:example.org", "a".repeat(250))).unwrap_err().contains("255"));
    }

    #[test]
    fn room_ids() {
        assert!(check_room_id("!abc:example.org").is_ok());
        assert!(check_room_id("!31hneApxJ_1o-63DmFrpeqnkFfWppnzWso1JvH3ogLM").is_ok());
        assert!(check_room_id("#room:example.org").unwrap_err().contains("alias"));
        assert!(check_room_id("abc:example.org").is_err());
        assert!(check_room_id("!:example.org").is_err());
    }
}
