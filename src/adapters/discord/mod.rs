//! The Discord channel: a gateway thread (WebSocket: Hello, heartbeats, Identify or Resume,
//! dispatches), an inbound thread that turns dispatches into messages and button clicks, and
//! Discord's courier for the shared outbox, which delivers the core's replies over REST.
//!
//! No lost messages: a dropped connection resumes with the last sequence and Discord replays
//! what was missed; when the session cannot be resumed, the messages posted meanwhile in the
//! channels the bot was talking in are fetched over REST; so are the ones posted while tether
//! was stopped (those channels and their last message are kept in
//! `<home>/<channel>-discord.json`). Every message goes through the channel's journal
//! (deduplicated, replayed after a restart until answered).

pub(crate) mod gateway;
pub mod inbound;
pub mod link;
pub mod rest;
mod send;
pub mod wire;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::adapters::uploads::OutboundFiles;
use crate::adapters::{Capabilities, ChannelIo, Markup, Platform, RunningChannel, outbox};
use crate::config::{ChannelConfig, ConfigError, PlatformKeys, PlatformSettings};
use crate::error::Error;
use crate::event::Inbound;
use crate::health::wall_ms;
use crate::journal::JournalEntry;
use crate::media::MediaLimits;
use crate::vec_map::VecMap;
use inbound::{Delivery, Dispatcher, SentIds};
use link::LinkEvent;

/// Gateway events waiting for the inbound thread (a burst of replayed events fits).
const EVENT_QUEUE: usize = 1024;

/// The REST base when `apiBase` is not set.
const DEFAULT_API_BASE: &str = "https://discord.com/api/v10";

/// Discord, as the seam sees it.
pub const PLATFORM: Platform = Platform {
    name: "discord",
    keys: &["token", "apiBase", crate::media::KEY_MAX_BYTES],
    parse: parse_settings,
    capabilities: Capabilities {
        live_drafts: false,
        edits: true,
        buttons: true,
        max_message_len: wire::MESSAGE_LIMIT,
        markup: Markup::Markdown,
        // "typing…" lasts 10 s on Discord.
        typing_refresh: Some(Duration::from_secs(8)),
        journaled: true,
        addressed_commands: false,
    },
    heartbeats: true,
    spawn,
};

fn parse_settings(keys: &PlatformKeys<'_>) -> Result<PlatformSettings, ConfigError> {
    let token = keys.required_secret("token", "your bot token", "DISCORD_BOT_TOKEN")?;
    let api_base = keys.url("apiBase", None, DEFAULT_API_BASE)?;
    let mut values: VecMap<&'static str, Value> = [("apiBase", Value::String(api_base))].into_iter().collect();
    // Only the size limit: Discord keeps no downloads long enough to need `mediaRetention`.
    if let Some(max) = keys.positive_integer(crate::media::KEY_MAX_BYTES)? {
        values.insert(crate::media::KEY_MAX_BYTES, Value::from(max));
    }
    Ok(PlatformSettings { secrets: [("token", token)].into_iter().collect(), values })
}

/// Start the gateway thread and the sender of one Discord channel.
fn spawn(channel: &ChannelConfig, io: ChannelIo) -> Result<RunningChannel, Error> {
    let token = channel.secret("token").map(|t| t.expose().to_string()).unwrap_or_default();
    let api_base = channel.setting("apiBase").unwrap_or(DEFAULT_API_BASE);
    let name = channel.name.clone();
    let rest = Arc::new(rest::Rest::new(api_base, &token));
    let sent = Arc::new(SentIds::default());
    let media = io.home.join("media").join(&name);
    let media_root = media.clone();
    let state_path = io.home.join(format!("{name}-discord.json"));

    let ChannelIo { inbound, stop, probe, journal, supervisor, .. } = io;
    // The gateway thread only reads the socket and heartbeats; decoding, REST lookups,
    // downloads and gap recovery run on their own thread, so a slow one never delays a
    // heartbeat (Discord drops a connection that misses one).
    let (events_tx, events) = crossbeam_channel::bounded::<LinkEvent>(EVENT_QUEUE);
    let gateway_probe = probe.clone();
    let gateway_rest = rest.clone();
    let gateway_name = name.clone();
    supervisor.spawn(format!("dc-gateway-{name}"), move || {
        let channel = gateway_name.as_str();
        link::run(&gateway_rest, &token, channel, &stop, &mut |event| {
            match &event {
                LinkEvent::Health { connected: true, .. } | LinkEvent::Alive => gateway_probe.ok(),
                LinkEvent::Health { connected: false, error } => {
                    let error = error.clone().unwrap_or_else(|| "disconnected".to_string());
                    if gateway_probe.failed(&error) {
                        log::warn!(target: channel, "{error}");
                    }
                }
                LinkEvent::Parked(reason) => {
                    log::error!(target: channel, "{reason}. Not retrying");
                    gateway_probe.park(reason);
                }
                LinkEvent::Dispatch { .. } | LinkEvent::SessionLost => {}
            }
            if matches!(event, LinkEvent::Dispatch { .. } | LinkEvent::SessionLost) {
                let _ = events_tx.send(event);
            }
        });
    })?;

    let inbound_probe = probe.clone();
    let inbound_journal = journal.clone();
    let inbound_rest = rest.clone();
    let inbound_sent = sent.clone();
    let inbound_name = name.clone();
    supervisor.spawn(format!("dc-inbound-{name}"), move || {
        let channel = inbound_name.as_str();
        let mut dispatcher =
            Dispatcher::new(channel, inbound_rest, inbound_sent, media).with_state(state_path);
        let mut deliver = |delivery: Delivery| match delivery {
            Delivery::Message(incoming) => {
                let message = incoming.message;
                let fresh = match &inbound_journal {
                    Some(journal) => {
                        let sent_at_ms = message.sent_at_ms.unwrap_or_else(wall_ms);
                        match journal.record(vec![JournalEntry { message: message.clone(), sent_at_ms }]) {
                            Ok(fresh) => fresh,
                            Err(e) => {
                                // Discord will not send it again: better unjournaled than lost.
                                log::error!(target: channel, "cannot write the journal {}: {e}", journal.path().display());
                                vec![message]
                            }
                        }
                    }
                    None => vec![message],
                };
                for message in fresh {
                    log::debug!(target: channel, "message {:?} from {} in {}", message.message_id, message.sender_id, message.chat_id);
                    inbound_probe.received();
                    let _ = inbound.send(Inbound::Message(message));
                }
            }
            Delivery::Button(press) => {
                log::debug!(target: channel, "button {:?} pressed by {} in {}", press.data, press.sender_id, press.chat_id);
                let _ = inbound.send(Inbound::Button(press));
            }
        };
        // Ends when the gateway thread ends (it drops the sender); the state file is written
        // when due, and once more at the end.
        loop {
            let event = match dispatcher.save_due() {
                Some(due) => events.recv_deadline(due).map_err(|e| e.is_disconnected()),
                None => events.recv().map_err(|_| true),
            };
            match event {
                Ok(event) => dispatcher.on_event(&event, &mut deliver),
                Err(false) => {}
                Err(true) => break,
            }
            dispatcher.save_if_due(Instant::now(), false);
        }
        dispatcher.save_if_due(Instant::now(), true);
    })?;

    // Discord refuses attachments over its own limit: no use sending more than it takes in.
    let max_bytes = MediaLimits::from_settings(&channel.settings.values).max_bytes.min(inbound::MAX_ATTACHMENT);
    let files = OutboundFiles { roots: vec![channel.cwd.clone(), media_root], max_bytes };
    let courier = Arc::new(send::DiscordCourier { rest, sent, files });
    let settle = outbox::Settle { channel: name, journal, probe };
    let outbox = outbox::spawn(courier, settle, &supervisor)?;
    Ok(RunningChannel::delivering(outbox))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_fit_discord() {
        let c = PLATFORM.capabilities;
        assert_eq!(c.max_message_len, 2000);
        assert!(c.buttons && c.edits && c.journaled && !c.live_drafts && !c.addressed_commands);
        assert_eq!(c.markup, Markup::Markdown);
        assert!(c.typing_refresh.is_some_and(|t| t < Duration::from_secs(10)));
    }
}
