//! The webhook channel: `POST /hooks/<source>` from any system that can send one (CI, alerting,
//! a cron job). A request that authenticates as its source (`intake.rs`) becomes a prompt into
//! a conversation bound to the source's target: a chat of another channel, where the agent's
//! answer is delivered. The event is handed to the core as a message OF THE TARGET CHANNEL,
//! marked with [`InboundMessage::webhook`](crate::event::InboundMessage::webhook): routing,
//! sessions and delivery are the target's; the gates let it through because the source
//! authenticated (see README, "Webhooks").
//!
//! This channel only listens: it has no outbox of its own to serve and no thread to supervise
//! (the small HTTP server `net::httpd` runs the connections and stops when its guard drops).

pub(crate) mod intake;

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use serde_json::{Map, Value, json};

use crate::adapters::{Capabilities, ChannelIo, Markup, Platform, RunningChannel};
use crate::config::{ChannelConfig, ConfigError, PlatformKeys, PlatformSettings, secret_label};
use crate::error::Error;
use crate::event::{ChatRef, Inbound};
use crate::health::{Probe, wall_ms};
use crate::net::httpd::{Handler, Limits, Reply, Request, Response, Server};
use crate::vec_map::VecMap;
use intake::{Auth, Delivery, Intake, Refusal, Source};

const DEFAULT_LISTEN: &str = "127.0.0.1:8790";
/// The largest body accepted; more gets 413.
pub const MAX_BODY: usize = 256 * 1024;
/// The shortest secret accepted: a short one can be guessed.
const MIN_SECRET_CHARS: usize = 16;
/// How long a request waits for room in the core's queue before it gets 503.
const INBOUND_WAIT: Duration = Duration::from_secs(2);
/// Refused requests are logged as warnings at most this often (the rest at debug level).
const REFUSAL_WARN_EVERY: Duration = Duration::from_secs(60);

/// Webhook, as the seam sees it. Nothing is ever sent through this channel (answers go to
/// each source's target channel), so its delivery capabilities are the plainest.
pub const PLATFORM: Platform = Platform {
    name: "webhook",
    keys: &["listen", "sources"],
    parse: parse_settings,
    capabilities: Capabilities {
        live_drafts: false,
        edits: false,
        buttons: false,
        max_message_len: 4000,
        markup: Markup::Plain,
        typing_refresh: None,
        journaled: false,
        addressed_commands: false,
    },
    heartbeats: false,
    spawn,
};

const SOURCES_EXAMPLE: &str =
    "{\"ci\": {\"secret\": \"$CI_WEBHOOK_SECRET\", \"target\": {\"channel\": \"phone\", \"chat\": \"111\"}}}";

fn parse_settings(keys: &PlatformKeys<'_>) -> Result<PlatformSettings, ConfigError> {
    let (listen, _) = keys.socket_address("listen", DEFAULT_LISTEN)?;
    let mut secrets = VecMap::new();
    let mut sources = Map::new();
    keys.nested("sources", |all| {
        for name in all.names() {
            let valid = !name.is_empty()
                && name.len() <= 64
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid {
                return Err(all.error(
                    &name,
                    "a source name is 1 to 64 letters, digits, '-' or '_' (it is the URL path /hooks/<name>)",
                ));
            }
            let parsed = all.nested(&name, parse_source)?;
            let (secret, source) = parsed.ok_or_else(|| all.error(&name, "expected an object"))?;
            secrets.insert(secret_label(&format!("sources.{name}.secret")), secret);
            sources.insert(name, source);
        }
        Ok(())
    })?;
    if sources.is_empty() {
        return Err(
            keys.error("sources", format!("required for type webhook: at least one source, e.g. {SOURCES_EXAMPLE}"))
        );
    }
    let values = [("listen", Value::String(listen)), ("sources", Value::Object(sources))].into_iter().collect();
    Ok(PlatformSettings { secrets, values })
}

/// One source's keys: its secret, and the rest as JSON for the channel's settings.
fn parse_source(s: &PlatformKeys<'_>) -> Result<(crate::config::Secret, Value), ConfigError> {
    let secret = s.required_secret("secret", "a shared secret (16 characters or more)", "CI_WEBHOOK_SECRET")?;
    if secret.expose().chars().count() < MIN_SECRET_CHARS {
        return Err(s.error("secret", format!("shorter than {MIN_SECRET_CHARS} characters: use a long random value")));
    }
    let signature = match s.string("signature")?.as_deref() {
        None | Some("hmac-sha256") => "hmac-sha256",
        Some("header") => "header",
        Some(other) => {
            return Err(s.error("signature", format!("\"{other}\" is not one of: hmac-sha256, header")));
        }
    };
    let header = s.string("header")?.unwrap_or_else(|| intake::DEFAULT_SECRET_HEADER.to_string());
    let target = s
        .nested("target", |t| {
            let channel = t.string("channel")?.ok_or_else(|| {
                t.error("channel", "required: the channel whose chat gets the agent's answers, e.g. \"phone\"")
            })?;
            if !t.is_other_channel(&channel) {
                return Err(t.error(
                    "channel",
                    format!("\"{channel}\" is not another channel of this file: name the channel (e.g. a telegram one) whose chat gets the answers"),
                ));
            }
            let chat = id(t, "chat")?
                .ok_or_else(|| t.error("chat", "required: the chat id the answers go to, e.g. \"111\""))?;
            Ok(json!({"channel": channel, "chat": chat, "thread": id(t, "thread")?}))
        })?
        .ok_or_else(|| s.error("target", "required: {\"channel\": \"phone\", \"chat\": \"111\"}"))?;
    let template = s.string("template")?;
    let session = s.string("session")?;
    let source =
        json!({"signature": signature, "header": header, "target": target, "template": template, "session": session});
    Ok((secret, source))
}

/// A chat or thread id: a string, or an integer (Telegram ids are numbers).
fn id(keys: &PlatformKeys<'_>, key: &str) -> Result<Option<String>, ConfigError> {
    match keys.raw(key) {
        Some(Value::Number(n)) if n.is_i64() => Ok(Some(n.to_string())),
        _ => keys.string(key),
    }
}

/// The sources of a channel, from its settings.
fn sources(channel: &ChannelConfig) -> Vec<Source> {
    let Some(Value::Object(all)) = channel.settings.values.get("sources") else { return Vec::new() };
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    all.iter()
        .map(|(name, s)| {
            let target = s.get("target").cloned().unwrap_or_default();
            Source {
                name: name.clone(),
                secret: channel
                    .secret(secret_label(&format!("sources.{name}.secret")))
                    .map(|s| s.expose().to_string())
                    .unwrap_or_default(),
                auth: match text(s, "signature").as_deref() {
                    Some("header") => Auth::Header(text(s, "header").unwrap_or_default()),
                    _ => Auth::HmacSha256,
                },
                target: ChatRef {
                    channel: text(&target, "channel").unwrap_or_default(),
                    chat_id: text(&target, "chat").unwrap_or_default(),
                    thread_id: text(&target, "thread"),
                },
                template: text(s, "template").unwrap_or_else(|| intake::DEFAULT_TEMPLATE.to_string()),
                session: text(s, "session").unwrap_or_else(|| name.clone()),
            }
        })
        .collect()
}

struct State {
    channel: String,
    intake: Mutex<Intake>,
    inbound: Sender<Inbound>,
    probe: Probe,
    last_warning: Mutex<Option<Instant>>,
}

fn spawn(channel: &ChannelConfig, io: ChannelIo) -> Result<RunningChannel, Error> {
    let name = channel.name.clone();
    let sources = sources(channel);
    if let Some(s) = sources.iter().find(|s| s.target.channel == name) {
        return Err(Error::Other(format!(
            "channel \"{name}\", key \"sources.{}.target.channel\": a webhook channel cannot answer into itself; name the channel of the chat that gets the answers",
            s.name
        )));
    }
    let listen = channel.setting("listen").unwrap_or(DEFAULT_LISTEN).to_string();
    let address: SocketAddr = listen.parse().map_err(|_| {
        Error::Other(format!("channel \"{name}\", key \"listen\": \"{listen}\" is not an IP address and port"))
    })?;
    let listener = TcpListener::bind(address).map_err(|e| {
        Error::Other(format!(
            "channel \"{name}\": cannot listen on {listen}: {e}; choose another address with `listen`"
        ))
    })?;
    let state = Arc::new(State {
        channel: name.clone(),
        intake: Mutex::new(Intake::new(sources)),
        inbound: io.inbound,
        probe: io.probe.clone(),
        last_warning: Mutex::new(None),
    });
    let handler: Handler = Arc::new(move |request| Reply::Respond(handle(&state, &request)));
    let limits = Limits { max_body: MAX_BODY, ..Limits::default() };
    let server = Server::start(listener, &format!("webhook-{name}"), limits, handler)
        .map_err(|e| Error::Other(format!("channel \"{name}\": cannot start the webhook server: {e}")))?;
    io.probe.ok();
    let reached_at = format!("webhooks on http://{}/hooks/<source>", server.local_addr());
    Ok(RunningChannel { reached_at: Some(reached_at), guard: Some(Box::new(server)), ..RunningChannel::default() })
}

fn handle(state: &State, request: &Request) -> Response {
    let Some(source) = request.path.strip_prefix("/hooks/") else {
        return Response::text(404, "not found; webhooks are POST /hooks/<source>\n");
    };
    if request.method != "POST" {
        return Response::text(405, "POST only\n").header("Allow", "POST");
    }
    let header = |name: &str| request.header(name).map(str::to_string);
    let delivery = Delivery { source, header: &header, body: &request.body };
    let judged =
        state.intake.lock().unwrap_or_else(PoisonError::into_inner).judge(&delivery, wall_ms() / 1000, Instant::now());
    match judged {
        Ok(message) => {
            log::info!(target: state.channel.as_str(), "event from source {source} accepted ({} bytes): answering in chat {} of channel {}",
                request.body.len(), message.chat_id, message.channel);
            state.probe.received();
            match state.inbound.send_timeout(Inbound::Message(message), INBOUND_WAIT) {
                Ok(()) => Response::text(202, "accepted\n"),
                Err(_) => Response::text(503, "busy; try again later\n").header("Retry-After", "10"),
            }
        }
        Err(refusal) => {
            report(state, source, request.peer, &refusal);
            let response = Response::text(refusal.status(), format!("{}\n", refusal.reason()));
            match refusal {
                Refusal::RateLimited(wait) => response.header("Retry-After", &wait.as_secs().max(1).to_string()),
                _ => response,
            }
        }
    }
}

/// A refused request: a warning at most once a minute (a flood must not flood the log).
fn report(state: &State, source: &str, peer: Option<SocketAddr>, refusal: &Refusal) {
    let now = Instant::now();
    let mut last = state.last_warning.lock().unwrap_or_else(PoisonError::into_inner);
    let warn = last.is_none_or(|at| now.saturating_duration_since(at) >= REFUSAL_WARN_EVERY);
    let source = intake_cut(source);
    let from = peer.map(|p| p.ip().to_string()).unwrap_or_default();
    let line =
        format!("refused a request for source {source:?} from {from}: {} ({})", refusal.reason(), refusal.status());
    if warn {
        *last = Some(now);
        log::warn!(target: state.channel.as_str(), "{line} (refusals are logged as warnings at most once a minute)");
    } else {
        log::debug!(target: state.channel.as_str(), "{line}");
    }
}

fn intake_cut(text: &str) -> String {
    text.chars().take(64).collect()
}

#[cfg(test)]
mod tests {

    use serde_json::json;

    use super::*;
    use crate::config::Config;

    fn parse(hooks: Value) -> Result<Config, ConfigError> {
        let text = json!({"channels": {"phone": {"type": "telegram", "token": "1:x"}, "hooks": hooks}}).to_string();
        crate::config::parse_for_tests(&text, crate::adapters::PLATFORMS, &[("CI_SECRET", "from-the-environment-123")])
    }

    fn hooks(source: Value) -> Value {
        json!({"type": "webhook", "listen": "127.0.0.1:0", "sources": {"ci": source}})
    }

    #[test]
    fn sources_are_read_with_their_secrets_and_targets() {
        let config = parse(hooks(json!({
            "secret": "$CI_SECRET", "signature": "header", "header": "X-Token",
            "target": {"channel": "phone", "chat": -100123, "thread": 7}, "session": "ops"
        })))
        .unwrap();
        let channel = &config.channels["hooks"];
        let sources = sources(channel);
        assert_eq!(sources.len(), 1);
        let s = &sources[0];
        assert_eq!((s.name.as_str(), s.secret.as_str()), ("ci", "from-the-environment-123"));
        assert_eq!(s.auth, Auth::Header("X-Token".into()));
        let target = ChatRef { channel: "phone".into(), chat_id: "-100123".into(), thread_id: Some("7".into()) };
        assert_eq!((&s.target, s.session.as_str(), s.template.as_str()), (&target, "ops", intake::DEFAULT_TEMPLATE));
        // The secret is a secret: masked by `tether check`, scrubbed from logs.
        assert_eq!(channel.secrets().map(|s| s.expose()).collect::<Vec<_>>(), vec!["from-the-environment-123"]);
    }

    #[test]
    fn bad_sources_name_the_key_and_what_to_do() {
        let target = json!({"channel": "phone", "chat": "1"});
        let long = "0123456789abcdef";
        let cases = [
            (json!({"type": "webhook"}), "key \"sources\": required for type webhook"),
            (json!({"type": "webhook", "sources": {}}), "at least one source"),
            (json!({"type": "webhook", "sources": {"a/b": {}}}), "key \"sources.a/b\": a source name is"),
            (json!({"type": "webhook", "sources": {"ci": 3}}), "key \"sources.ci\": expected an object"),
            (hooks(json!({"target": target})), "key \"sources.ci.secret\": required for type webhook"),
            (hooks(json!({"secret": "short", "target": target})), "shorter than 16 characters"),
            (hooks(json!({"secret": "$NOPE", "target": target})), "environment variable NOPE is not set"),
            (hooks(json!({"secret": long, "target": target, "signature": "md5"})), "\"md5\" is not one of"),
            (hooks(json!({"secret": long})), "key \"sources.ci.target\": required"),
            (hooks(json!({"secret": long, "target": {"chat": "1"}})), "key \"sources.ci.target.channel\": required"),
            (
                hooks(json!({"secret": long, "target": {"channel": "nope", "chat": "1"}})),
                "\"nope\" is not another channel",
            ),
            (
                hooks(json!({"secret": long, "target": {"channel": "hooks", "chat": "1"}})),
                "\"hooks\" is not another channel",
            ),
            (
                hooks(json!({"secret": long, "target": {"channel": "phone"}})),
                "key \"sources.ci.target.chat\": required",
            ),
            (
                json!({"type": "webhook", "listen": "localhost:80", "sources": {}}),
                "key \"listen\": \"localhost:80\" is not an IP",
            ),
        ];
        for (hooks, expected) in cases {
            let error = parse(hooks.clone()).expect_err(&hooks.to_string()).to_string();
            assert!(error.contains(expected), "{hooks}: {error}");
            assert!(error.contains("channel \"hooks\""), "{error}");
        }
    }
}
