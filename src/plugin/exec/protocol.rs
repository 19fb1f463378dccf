//! The `exec` protocol, version 1: one JSON object per line over the program's stdin (host to program) and
//! stdout (program to host). Documented in docs/exec.md, with a JSON Schema in docs/exec-protocol.schema.json.

use serde::{Deserialize, Serialize};

/// The protocol version this host speaks (`MAUBOT_PROTOCOL`, and `protocol` in `hello`).
pub const VERSION: u32 = 1;

/// Longest line a program may write (stdout); longer is a protocol error.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// What the host writes to the program.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToProgram<'a> {
    Hello {
        protocol: u32,
        instance: &'a str,
        user_id: &'a str,
        config: &'a serde_json::Value,
    },
    Message {
        id: &'a str,
        room_id: &'a str,
        sender: &'a str,
        body: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        formatted_body: Option<&'a str>,
        msgtype: &'a str,
        age_ms: u64,
        encrypted: bool,
    },
    Shutdown,
}

/// What a program writes to the host.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FromProgram {
    Ready {
        #[serde(default)]
        subscribe: Vec<String>,
    },
    Reply {
        to: String,
        body: String,
        #[serde(default)]
        html: Option<String>,
        #[serde(default)]
        notice: bool,
    },
    Send {
        room_id: String,
        body: String,
        #[serde(default)]
        key: Option<String>,
        #[serde(default)]
        html: Option<String>,
        #[serde(default)]
        notice: bool,
    },
    React {
        to: String,
        reaction: String,
    },
    Log {
        level: LogLevel,
        message: String,
    },
    Done {
        to: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// The event types a protocol-1 program can subscribe to.
pub const SUBSCRIPTIONS: &[&str] = &["message"];

/// Parses one line from the program; the error says what is wrong with it (not the line itself).
pub fn parse(line: &[u8]) -> Result<FromProgram, String> {
    let text = std::str::from_utf8(line).map_err(|_| "the line is not UTF-8".to_owned())?;
    serde_json::from_str(text.trim_end_matches(['\n', '\r'])).map_err(|e| e.to_string())
}

/// One line for the program: the JSON and a newline.
pub fn line(message: &ToProgram<'_>) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(message).expect("protocol messages serialize");
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_into_messages_and_bad_ones_say_why() {
        assert_eq!(parse(br#"{"type":"ready"}"#).unwrap(), FromProgram::Ready { subscribe: vec![] });
        assert_eq!(parse(b"{\"type\":\"done\",\"to\":\"$e\"}\n").unwrap(), FromProgram::Done { to: "$e".into() });
        let reply = parse(br#"{"type":"reply","to":"$e","body":"hi","notice":true}"#).unwrap();
        assert_eq!(reply, FromProgram::Reply { to: "$e".into(), body: "hi".into(), html: None, notice: true });
        assert!(parse(br#"{"type":"explode"}"#).unwrap_err().contains("unknown variant `explode`"));
        assert!(parse(br#"{"type":"done","to":"$e","extra":1}"#).unwrap_err().contains("unknown field `extra`"));
        assert!(parse(b"pong").unwrap_err().contains("expected"));
        assert_eq!(parse(b"\xff").unwrap_err(), "the line is not UTF-8");
        assert!(parse(br#"{"type":"log","level":"loud","message":"x"}"#).is_err());
    }

    #[test]
    fn the_hello_line_carries_the_settings() {
        let settings = serde_json::json!({"greeting": "hi"});
        let hello = ToProgram::Hello { protocol: VERSION, instance: "echo", user_id: "@e:x", config: &settings };
        assert_eq!(
            String::from_utf8(line(&hello)).unwrap(),
            "{\"type\":\"hello\",\"protocol\":1,\"instance\":\"echo\",\"user_id\":\"@e:x\",\"config\":{\"greeting\":\"hi\"}}\n"
        );
    }
}
