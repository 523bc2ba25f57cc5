//! The Telegram channel: a long-poll thread (`getUpdates`) that reports messages, and a
//! sender thread that delivers replies and typing indicators. The two never wait for each
//! other: a failing send does not stop polling.

mod send;
pub mod wire;

use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use serde_json::Value;

use crate::backoff::Backoff;
use crate::config::ChannelConfig;
use crate::error::Error;
use crate::event::{Inbound, Outbound};
use crate::net::http::HttpClient;
use wire::{BotIdentity, Failure};

/// How long Telegram holds a `getUpdates` call open when there is nothing new.
const POLL_HOLD: Duration = Duration::from_secs(30);
/// Our side waits this much longer than the hold before calling the poll dead.
const POLL_MARGIN: Duration = Duration::from_secs(10);

/// The Bot API endpoint of one bot.
#[derive(Debug, Clone)]
struct Api {
    http: HttpClient,
    /// `{apiBase}/bot{token}`: never logged.
    base: String,
    channel: String,
}

impl Api {
    fn call(&self, method: &str, body: &Value, timeout: Duration) -> Result<Value, Failure> {
        let url = format!("{}/{method}", self.base);
        match self.http.post_json(&url, body, timeout) {
            Ok((status, text)) => wire::parse_reply(status, &text),
            Err(e) => Err(Failure::Transient(e.to_string())),
        }
    }
}

/// Start the poller and the sender of one Telegram channel.
/// `stop` closes (all senders dropped) when the channel must shut down.
pub fn spawn(
    channel: &ChannelConfig,
    inbound: Sender<Inbound>,
    outbox: Receiver<Outbound>,
    stop: Receiver<()>,
) -> Result<(), Error> {
    let token = channel.token.as_ref().map(|t| t.expose().to_string()).unwrap_or_default();
    let api = Api {
        http: HttpClient::default(),
        base: format!("{}/bot{token}", channel.api_base),
        channel: channel.name.clone(),
    };
    let poll_api = api.clone();
    let poll_stop = stop.clone();
    spawn_named(format!("tg-poll-{}", channel.name), move || poll_loop(&poll_api, &inbound, &poll_stop))?;
    send::spawn(&api, outbox)?;
    Ok(())
}

fn spawn_named(name: String, f: impl FnOnce() + Send + 'static) -> Result<(), Error> {
    thread::Builder::new()
        .name(name.clone())
        .stack_size(256 * 1024)
        .spawn(f)
        .map(|_| ())
        .map_err(|e| Error::Other(format!("cannot start thread {name}: {e}")))
}

/// Wait `delay` unless asked to stop; true when the loop should end.
fn pause(stop: &Receiver<()>, delay: Duration) -> bool {
    !matches!(stop.recv_timeout(delay), Err(crossbeam_channel::RecvTimeoutError::Timeout))
}

/// The delay a failure asks for: Telegram's own `retry_after`, a slow retry for problems
/// that need a person, backoff for the rest.
fn failure_delay(failure: &Failure, backoff: &mut Backoff) -> Duration {
    match failure {
        Failure::RateLimited(d) => *d,
        Failure::Unauthorized(_) => Duration::from_secs(300).max(backoff.next_delay()),
        _ => backoff.next_delay(),
    }
}

fn poll_loop(api: &Api, inbound: &Sender<Inbound>, stop: &Receiver<()>) {
    let target = api.channel.as_str();
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let bot = loop {
        match api.call("getMe", &Value::Object(Default::default()), Duration::from_secs(30)) {
            Ok(result) => match wire::parse_identity(&result) {
                Some(bot) => break bot,
                None => log::error!(target: target, "getMe answered without id and username: {result}"),
            },
            Err(failure) => {
                log::error!(target: target, "getMe failed: {failure}");
                let _ = inbound.send(Inbound::Health {
                    channel: api.channel.clone(),
                    connected: false,
                    error: Some(failure.to_string()),
                });
                if pause(stop, failure_delay(&failure, &mut backoff)) {
                    return;
                }
                continue;
            }
        }
        if pause(stop, backoff.next_delay()) {
            return;
        }
    };
    log::info!(target: target, "connected as @{} ({})", bot.username, bot.id);
    backoff.reset();
    let _ = inbound.send(Inbound::Health { channel: api.channel.clone(), connected: true, error: None });
    let mut offset: i64 = 0;
    loop {
        if !matches!(stop.try_recv(), Err(crossbeam_channel::TryRecvError::Empty)) {
            return;
        }
        match api.call("getUpdates", &wire::get_updates(offset, POLL_HOLD), POLL_HOLD + POLL_MARGIN) {
            Ok(result) => {
                if backoff.attempts() > 0 {
                    log::info!(target: target, "polling again after {} failed attempts", backoff.attempts());
                    let _ =
                        inbound.send(Inbound::Health { channel: api.channel.clone(), connected: true, error: None });
                }
                backoff.reset();
                offset = deliver(&result, offset, api, &bot, inbound);
            }
            Err(failure) => {
                log::warn!(target: target, "getUpdates failed: {failure}");
                let _ = inbound.send(Inbound::Health {
                    channel: api.channel.clone(),
                    connected: false,
                    error: Some(failure.to_string()),
                });
                if pause(stop, failure_delay(&failure, &mut backoff)) {
                    return;
                }
            }
        }
    }
}

/// Hand one batch of updates to the core; return the next offset.
fn deliver(result: &Value, offset: i64, api: &Api, bot: &BotIdentity, inbound: &Sender<Inbound>) -> i64 {
    let (last_id, messages) = wire::parse_updates(result, &api.channel, bot);
    for message in messages {
        log::debug!(target: api.channel.as_str(), "message {:?} from {} in {}", message.message_id, message.sender_id, message.chat_id);
        if inbound.send(Inbound::Message(message)).is_err() {
            return offset;
        }
    }
    for press in wire::parse_button_presses(result, &api.channel) {
        log::debug!(target: api.channel.as_str(), "button {:?} pressed by {} in {}", press.data, press.sender_id, press.chat_id);
        if inbound.send(Inbound::Button(press)).is_err() {
            return offset;
        }
    }
    last_id.map_or(offset, |id| id + 1)
}
