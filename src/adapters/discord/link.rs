//! The gateway connection thread's loop: asks REST for the gateway URL, then runs the
//! [`Gateway`] state machine over a [`WsClient`]: performs its actions (connect after a
//! delay, Identify/Resume/heartbeat frames, close), feeds it frames, closes and timer ticks,
//! and hands dispatches to the caller. Returns when asked to stop or after parking.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};

use super::gateway::{Action, Gateway, Input};
use super::rest::Rest;
use super::wire::{self, RestFailure};
use crate::backoff::Backoff;
use crate::net::ws::{self, WsClient, WsConfig, WsEvent};

/// How often the loop looks at the stop signal while a socket is quiet.
const STOP_CHECK: Duration = Duration::from_millis(500);
/// Tests shorten the gateway's handshake deadline ([`super::gateway::HANDSHAKE_WAIT`]) with
/// this variable (milliseconds).
pub const HANDSHAKE_ENV: &str = "TETHER_DISCORD_HANDSHAKE_MS";

/// What the loop reports to the channel.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkEvent {
    /// A gateway event (READY and RESUMED included).
    Dispatch { name: String, data: serde_json::Value },
    /// The session was lost; a new one is being identified (events in between were missed).
    SessionLost,
    /// The connection is up (READY or RESUMED) or down (with why).
    Health { connected: bool, error: Option<String> },
    /// The gateway acknowledged a heartbeat: the loop and the connection are alive.
    Alive,
    /// Stopped for good: the reason says what the person must do.
    Parked(String),
}

/// Run until `stop` disconnects (or a message arrives on it) or the gateway parks.
pub fn run(rest: &Rest, token: &str, channel: &str, stop: &Receiver<()>, on: &mut dyn FnMut(LinkEvent)) {
    let Some(url) = gateway_url(rest, channel, stop, on) else { return };
    let handshake = std::env::var(HANDSHAKE_ENV).ok().and_then(|v| v.parse().ok()).map(Duration::from_millis);
    let mut gateway = Gateway::new(wire::gateway_url(&url), channel)
        .with_handshake_wait(handshake.unwrap_or(super::gateway::HANDSHAKE_WAIT));
    let config = WsConfig::default();
    let mut socket: Option<WsClient> = None;
    let mut actions: VecDeque<Action> = gateway.start().into();
    loop {
        while let Some(action) = actions.pop_front() {
            let frame = match action {
                Action::Connect { url, after } => {
                    if let Some(old) = socket.take() {
                        old.close(4000, "reconnecting", Duration::from_millis(200));
                    }
                    if !after.is_zero() {
                        log::info!(target: channel, "reconnecting to the Discord gateway in {} ms", after.as_millis());
                        if pause(stop, after) {
                            return;
                        }
                    }
                    let next = match ws::connect(&url, &config) {
                        Ok(client) => {
                            log::debug!(target: channel, "gateway connected: {}", client.peer());
                            socket = Some(client);
                            Input::Connected
                        }
                        Err(e) => {
                            on(LinkEvent::Health { connected: false, error: Some(format!("gateway: {e}")) });
                            Input::Closed { code: None, reason: e.to_string() }
                        }
                    };
                    actions.extend(gateway.step(next, Instant::now()));
                    continue;
                }
                Action::Close { code } => {
                    if let Some(old) = socket.take() {
                        old.close(code, "", Duration::from_millis(200));
                    }
                    continue;
                }
                Action::Identify => {
                    log::debug!(target: channel, "identifying (intents {})", wire::INTENTS);
                    wire::identify(token)
                }
                Action::Resume { session_id, seq } => {
                    log::debug!(target: channel, "resuming session after sequence {seq}");
                    wire::resume(token, &session_id, seq)
                }
                Action::Heartbeat { seq } => wire::heartbeat(seq),
                Action::Dispatch { name, data } => {
                    if name == "READY" || name == "RESUMED" {
                        on(LinkEvent::Health { connected: true, error: None });
                    }
                    on(LinkEvent::Dispatch { name, data });
                    continue;
                }
                Action::SessionLost => {
                    on(LinkEvent::SessionLost);
                    continue;
                }
                Action::Park { reason } => {
                    if let Some(old) = socket.take() {
                        old.close(1000, "", Duration::from_millis(200));
                    }
                    on(LinkEvent::Parked(reason));
                    while !pause(stop, Duration::from_secs(60)) {}
                    return;
                }
            };
            let sent = match socket.as_mut() {
                Some(client) => client.send_text(&frame).map_err(|e| e.to_string()),
                None => Err("not connected".to_string()),
            };
            if let Err(e) = sent {
                socket = None;
                actions.extend(gateway.step(Input::Closed { code: None, reason: e }, Instant::now()));
            }
        }
        if stopped(stop) {
            if let Some(client) = socket.take() {
                // 1000 ends the session: the bot shows offline at once.
                client.close(1000, "shutting down", Duration::from_millis(500));
            }
            return;
        }
        let Some(client) = socket.as_mut() else {
            // Only reachable if the machine forgot to reconnect; never spin.
            log::warn!(target: channel, "gateway idle without a socket; starting over");
            actions.extend(gateway.start());
            if pause(stop, Duration::from_secs(1)) {
                return;
            }
            continue;
        };
        let now = Instant::now();
        let deadline = gateway.next_wake().map_or(now + STOP_CHECK, |wake| wake.min(now + STOP_CHECK));
        let input = match client.read(deadline) {
            WsEvent::Text(text) => match wire::decode_frame(&text) {
                Ok(event) => {
                    if event == wire::GatewayEvent::HeartbeatAck {
                        on(LinkEvent::Alive);
                    }
                    Some(Input::Frame(event))
                }
                Err(e) => {
                    log::warn!(target: channel, "{e}; skipped");
                    None
                }
            },
            WsEvent::Close { code, reason } => {
                log::info!(target: channel, "gateway closed the connection ({}{})", code.map_or("no code".to_string(), |c| c.to_string()), if reason.is_empty() { String::new() } else { format!(": {reason}") });
                socket = None;
                on(LinkEvent::Health { connected: false, error: Some(format!("gateway closed ({code:?}) {reason}")) });
                Some(Input::Closed { code, reason })
            }
            WsEvent::Error(e) => {
                log::info!(target: channel, "gateway connection lost: {e}");
                socket = None;
                on(LinkEvent::Health { connected: false, error: Some(format!("gateway: {e}")) });
                Some(Input::Closed { code: None, reason: e.to_string() })
            }
            WsEvent::Binary(_) | WsEvent::Ping | WsEvent::Pong | WsEvent::Timeout => None,
        };
        if let Some(input) = input {
            actions.extend(gateway.step(input, Instant::now()));
        }
        // Busy sockets never time out: heartbeats are due by the clock, not by silence.
        actions.extend(gateway.step(Input::Tick, Instant::now()));
    }
}

/// `GET /gateway/bot` until it answers; `None` when stopped or parked (bad token).
fn gateway_url(rest: &Rest, channel: &str, stop: &Receiver<()>, on: &mut dyn FnMut(LinkEvent)) -> Option<String> {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        let delay = match rest.gateway_url() {
            Ok(url) => return Some(url),
            Err(RestFailure::Unauthorized(detail)) => {
                let reason = format!(
                    "Discord rejected the bot token ({detail}): fix \"token\" of channel \"{channel}\" in the config (Developer Portal → Bot → Reset Token), then restart"
                );
                on(LinkEvent::Parked(reason));
                while !pause(stop, Duration::from_secs(60)) {}
                return None;
            }
            Err(RestFailure::RateLimited(d) | RestFailure::GlobalRateLimited(d)) => d,
            Err(e) => {
                on(LinkEvent::Health { connected: false, error: Some(format!("GET /gateway/bot failed: {e}")) });
                backoff.next_delay()
            }
        };
        if pause(stop, delay) {
            return None;
        }
    }
}

/// Wait `delay` unless asked to stop; true when the loop should end.
fn pause(stop: &Receiver<()>, delay: Duration) -> bool {
    !matches!(stop.recv_timeout(delay), Err(RecvTimeoutError::Timeout))
}

fn stopped(stop: &Receiver<()>) -> bool {
    !matches!(stop.try_recv(), Err(TryRecvError::Empty))
}
