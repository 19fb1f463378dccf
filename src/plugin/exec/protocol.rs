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
    /// `m.text`, `m.emote` (subscription `message`), `m.notice` (`notice`) and edits (`edit`: `replaces` names
    /// the edited message, `body` is the new text).
    Message {
        #[serde(flatten)]
        common: Common<'a>,
        body: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        formatted_body: Option<&'a str>,
        msgtype: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        reply_to: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        thread: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        replaces: Option<&'a str>,
    },
    Reaction {
        #[serde(flatten)]
        common: Common<'a>,
        to: &'a str,
        reaction: &'a str,
    },
    Membership {
        #[serde(flatten)]
        common: Common<'a>,
        user_id: &'a str,
        membership: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        previous: Option<&'a str>,
        /// `member` (the user's own doing), `bot` (one of this host's bots) or `other`.
        by: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
    },
    State {
        #[serde(flatten)]
        common: Common<'a>,
        event_type: &'a str,
        state_key: &'a str,
        content: &'a serde_json::Value,
    },
    /// The bot was invited (`sender`: by whom); `joined`: whether the host accepted (`allow_invites_from`).
    Invite {
        #[serde(flatten)]
        common: Common<'a>,
        joined: bool,
    },
    /// Carry out a job the program accepted (`job`); answered with `job_done` or `job_failed` whenever it is
    /// finished, while events keep coming. `room_id`, `event_id`, `sender`: the event it was accepted for.
    RunJob {
        key: &'a str,
        payload: &'a serde_json::Value,
        attempt: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        room_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        event_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        sender: Option<&'a str>,
    },
    /// An HTTP request to the bot (`/_plugins/<id>/...` or one of its listeners); answered with
    /// `http_response`. `body` when it is UTF-8, else `body_base64`.
    Http {
        id: &'a str,
        method: &'a str,
        path: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        query: Option<&'a str>,
        headers: &'a [(String, String)],
        #[serde(skip_serializing_if = "Option::is_none")]
        body: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        body_base64: Option<String>,
        peer: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        client_common_name: Option<&'a str>,
        /// On the management server with an admin's bearer token: the admin's name (the token is not passed).
        #[serde(skip_serializing_if = "Option::is_none")]
        operator: Option<&'a str>,
    },
    /// A timer tick (`ready`'s `tick_secs`), between events; answered like an event (sends with a key, jobs)
    /// up to `done` naming `id`.
    Tick {
        id: &'a str,
        /// Milliseconds since the epoch.
        ts: u64,
    },
    /// The answer to a `call`: `value` when it worked, else `error`.
    Result {
        to: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        value: Option<serde_json::Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<CallError>,
    },
    Shutdown,
}

/// Why a `call` failed: `code` is the homeserver's `errcode` (`M_FORBIDDEN`, ...) when it refused, else one of
/// `unknown_method`, `bad_params`, `too_many_calls`, `failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallError {
    pub code: String,
    pub message: String,
}

/// A membership change a program asks for (`invite`, `kick`, `ban`, `unban`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberLine {
    pub room_id: String,
    pub user_id: String,
    #[serde(default)]
    pub reason: Option<String>,
}

/// What every event carries.
#[derive(Debug, Serialize)]
pub struct Common<'a> {
    /// The event id; the program's `done` names it.
    pub id: &'a str,
    pub room_id: &'a str,
    pub sender: &'a str,
    /// The homeserver's timestamp, milliseconds since the epoch.
    pub ts: u64,
    pub age_ms: u64,
    pub encrypted: bool,
}

/// What a program writes to the host.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FromProgram {
    Ready {
        #[serde(default)]
        subscribe: Vec<String>,
        /// The program answers HTTP requests (`http` lines).
        #[serde(default)]
        http: bool,
        /// The program wants a `tick` this often (seconds).
        #[serde(default)]
        tick_secs: Option<u64>,
        /// `false`: the program changes no rooms (no membership, state or power level changes, no new rooms),
        /// so its syncs leave out the bot's own events ([`crate::plugin::Plugin::changes_rooms`]). Default: it may.
        #[serde(default)]
        changes_rooms: Option<bool>,
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
    /// Replaces the content of one of the bot's own messages.
    Edit {
        to: String,
        body: String,
        #[serde(default)]
        html: Option<String>,
        #[serde(default)]
        notice: bool,
    },
    /// Redacts an event in the room of the event being handled.
    Redact {
        to: String,
        #[serde(default)]
        reason: Option<String>,
    },
    /// Accepts a job: kept by the host (once per key) and handed back as `run_job`, now and after restarts,
    /// until the program finishes it.
    Job {
        key: String,
        #[serde(default)]
        payload: serde_json::Value,
    },
    /// The answer to an `http` line.
    HttpResponse {
        to: String,
        status: u16,
        #[serde(default)]
        headers: std::collections::BTreeMap<String, String>,
        #[serde(default)]
        body: String,
    },
    /// A job is finished: the host carries out `actions` (reply, send, react, edit, redact, job) once.
    JobDone {
        key: String,
        #[serde(default)]
        actions: Vec<FromProgram>,
    },
    /// A job failed: tried again later (up to 5 times), unless `permanent`.
    JobFailed {
        key: String,
        error: String,
        #[serde(default)]
        permanent: bool,
    },
    /// Membership changes, carried out unless the user's membership already is so.
    Invite(MemberLine),
    Kick(MemberLine),
    Ban(MemberLine),
    Unban(MemberLine),
    /// A state event, sent unless the room has it with this content.
    SetState {
        room_id: String,
        event_type: String,
        #[serde(default)]
        state_key: String,
        content: serde_json::Value,
    },
    SetPowerLevel {
        room_id: String,
        user_id: String,
        level: i64,
    },
    /// A room or Space, created unless its alias exists.
    CreateRoom {
        room: crate::plugin::RoomSpec,
    },
    /// A file in the program's data directory (`path` relative to it, or absolute inside it), uploaded and
    /// posted once.
    SendFile {
        room_id: String,
        file: crate::plugin::FileSpec,
        #[serde(default)]
        key: Option<String>,
    },
    /// A question to the host about Matrix or a room operation, at any time; answered with `result`.
    Call {
        id: String,
        method: String,
        #[serde(default)]
        params: serde_json::Value,
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
        assert_eq!(
            parse(br#"{"type":"ready"}"#).unwrap(),
            FromProgram::Ready { subscribe: vec![], http: false, tick_secs: None, changes_rooms: None }
        );
        assert_eq!(parse(b"{\"type\":\"done\",\"to\":\"$e\"}\n").unwrap(), FromProgram::Done { to: "$e".into() });
        let reply = parse(br#"{"type":"reply","to":"$e","body":"hi","notice":true}"#).unwrap();
        assert_eq!(reply, FromProgram::Reply { to: "$e".into(), body: "hi".into(), html: None, notice: true });
        assert!(parse(br#"{"type":"explode"}"#).unwrap_err().contains("unknown variant `explode`"));
        assert!(parse(br#"{"type":"done","to":"$e","extra":1}"#).unwrap_err().contains("unknown field `extra`"));
        assert!(parse(b"pong").unwrap_err().contains("expected"));
        assert_eq!(parse(b"\xff").unwrap_err(), "the line is not UTF-8");
        assert!(parse(br#"{"type":"log","level":"loud","message":"x"}"#).is_err());
    }

    /// A minimal value for a schema property.
    fn example(property: &serde_json::Value) -> serde_json::Value {
        if let Some(value) = property.get("const") {
            return value.clone();
        }
        if let Some(values) = property.get("enum") {
            return values[0].clone();
        }
        match property["type"].as_str() {
            Some("string") => "$x:example.org".into(),
            Some("integer") => 1.into(),
            Some("boolean") => true.into(),
            Some("array") => serde_json::json!([]),
            // A nested object with its required fields (a room spec, a file).
            _ => {
                let properties = property["properties"].as_object();
                let required = property["required"].as_array().into_iter().flatten();
                let fields =
                    required.filter_map(|k| k.as_str()).map(|k| (k.to_owned(), example(&properties.unwrap()[k])));
                serde_json::Value::Object(fields.collect())
            }
        }
    }

    #[test]
    fn the_published_schema_matches_what_the_host_reads_and_writes() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../../docs/exec-protocol.schema.json")).unwrap();
        let from = schema["$defs"]["FromProgram"]["oneOf"].as_array().unwrap();
        assert_eq!(from.len(), 21, "one schema per message a program may write");
        for variant in from {
            let properties = variant["properties"].as_object().unwrap();
            let required: serde_json::Map<_, _> = variant["required"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| (k.as_str().unwrap().to_owned(), example(&properties[k.as_str().unwrap()])))
                .collect();
            let all: serde_json::Map<_, _> = properties.iter().map(|(k, p)| (k.clone(), example(p))).collect();
            for object in [required, all] {
                let line = serde_json::Value::Object(object).to_string();
                assert!(parse(line.as_bytes()).is_ok(), "{line}: {:?}", parse(line.as_bytes()));
            }
        }
        let to = schema["$defs"]["ToProgram"]["oneOf"].as_array().unwrap();
        let settings = serde_json::json!({});
        let common = || Common { id: "$e", room_id: "!r:x", sender: "@s:x", ts: 1, age_ms: 1, encrypted: false };
        let content = serde_json::json!({"topic": "t"});
        let written = [
            ToProgram::Hello { protocol: VERSION, instance: "i", user_id: "@u:x", config: &settings },
            ToProgram::Message {
                common: common(),
                body: "b",
                formatted_body: Some("<b>b</b>"),
                msgtype: "m.text",
                reply_to: Some("$r"),
                thread: Some("$t"),
                replaces: Some("$o"),
            },
            ToProgram::Reaction { common: common(), to: "$e", reaction: "👍" },
            ToProgram::Membership {
                common: common(),
                user_id: "@m:x",
                membership: "leave",
                previous: Some("join"),
                by: "other",
                reason: Some("r"),
            },
            ToProgram::State { common: common(), event_type: "m.room.topic", state_key: "", content: &content },
            ToProgram::Invite { common: common(), joined: true },
            ToProgram::RunJob {
                key: "k",
                payload: &content,
                attempt: 1,
                room_id: Some("!r:x"),
                event_id: Some("$e"),
                sender: Some("@s:x"),
            },
            ToProgram::Http {
                id: "http-1",
                method: "POST",
                path: "/hook",
                query: Some("a=1"),
                headers: &[("content-type".to_owned(), "application/json".to_owned())],
                body: Some("{}"),
                body_base64: Some("AA==".into()),
                peer: "127.0.0.1:5".into(),
                client_common_name: Some("caller"),
                operator: None,
            },
            ToProgram::Tick { id: "tick-1", ts: 1 },
            ToProgram::Result {
                to: "c1",
                value: Some(content.clone()),
                error: Some(CallError { code: "M_FORBIDDEN".into(), message: "no".into() }),
            },
            ToProgram::Shutdown,
        ];
        assert_eq!(written.len(), to.len(), "one schema per message the host writes");
        for (message, variant) in written.iter().zip(to) {
            let value: serde_json::Value = serde_json::from_slice(&line(message)).unwrap();
            let properties = variant["properties"].as_object().unwrap();
            for key in value.as_object().unwrap().keys() {
                assert!(properties.contains_key(key), "`{key}` of {value} is in the schema");
            }
            for key in variant["required"].as_array().unwrap() {
                assert!(value.get(key.as_str().unwrap()).is_some(), "{value} has the required `{key}`");
            }
            assert_eq!(value["type"], variant["properties"]["type"]["const"]);
        }
    }

    #[test]
    fn room_actions_and_calls_parse() {
        let invite = parse(br#"{"type":"invite","room_id":"!r:x","user_id":"@u:x"}"#).unwrap();
        assert_eq!(
            invite,
            FromProgram::Invite(MemberLine { room_id: "!r:x".into(), user_id: "@u:x".into(), reason: None })
        );
        let create = parse(br#"{"type":"create_room","room":{"alias":"ops","space":true}}"#).unwrap();
        assert!(matches!(create, FromProgram::CreateRoom { room } if room.alias == "ops" && room.space));
        assert!(
            parse(br#"{"type":"create_room","room":{"alias":"ops","nmae":"x"}}"#)
                .unwrap_err()
                .contains("unknown field `nmae`")
        );
        let call = parse(br#"{"type":"call","id":"c1","method":"members","params":{"room_id":"!r:x"}}"#).unwrap();
        assert!(matches!(call, FromProgram::Call { id, method, .. } if id == "c1" && method == "members"));
        let result = ToProgram::Result { to: "c1", value: Some(serde_json::json!([])), error: None };
        assert_eq!(String::from_utf8(line(&result)).unwrap(), "{\"type\":\"result\",\"to\":\"c1\",\"value\":[]}\n");
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
