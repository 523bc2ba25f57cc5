//! The WeChat channel (Tencent's iLink bot API, reference: platform-protocols §2): a QR login
//! (`tether weixin-login CHANNEL`, [`login`]), a long-poll thread over `getupdates` with the
//! server's cursor ([`poll`]), and the shared outbox with WeChat's courier (below) for
//! replies: plain text, split at [`wire::TEXT_LIMIT`], each send echoing the user's latest
//! `context_token`, pictures and files named by `[IMAGE: /abs/path]` markers uploaded with
//! AES-128-ECB, and "typing…" while a turn runs.
//!
//! State in TETHER_HOME ([`account`]): the login, the cursor and the context tokens, so that
//! neither messages nor the ability to answer are lost across restarts. Media under
//! `TETHER_HOME/media/<channel>/` ([`media`]).

pub mod account;
pub mod api;
pub mod crypto;
pub mod link;
pub mod login;
pub mod media;
pub mod poll;
pub mod qr;
pub mod wire;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::adapters::outbox::{self, Call, Courier, Failure, Piece};
use crate::adapters::pacing::PacingRules;
use crate::adapters::{Capabilities, ChannelIo, Markup, Platform, RunningChannel};
use crate::config::{ChannelConfig, ConfigError, PlatformKeys, PlatformSettings};
use crate::error::Error;

use link::{Link, Settings};

/// WeChat, as the seam sees it.
pub const PLATFORM: Platform = Platform {
    name: "weixin",
    keys: &["baseUrl", "apiBase", "cdnBaseUrl"],
    parse: parse_settings,
    capabilities: Capabilities {
        live_drafts: false,
        edits: false,
        buttons: false,
        max_message_len: wire::TEXT_LIMIT,
        markup: Markup::Plain,
        // Tencent's plugin repeats the indicator every 5 s while it works.
        typing_refresh: Some(Duration::from_secs(5)),
        journaled: true,
        addressed_commands: false,
    },
    heartbeats: true,
    spawn,
};

fn parse_settings(keys: &PlatformKeys<'_>) -> Result<PlatformSettings, ConfigError> {
    let base = keys.url("baseUrl", Some("apiBase"), wire::DEFAULT_API_BASE)?;
    let cdn = keys.url("cdnBaseUrl", None, wire::DEFAULT_CDN_BASE)?;
    Ok(PlatformSettings {
        secrets: Default::default(),
        values: [("baseUrl", Value::String(base)), ("cdnBaseUrl", Value::String(cdn))].into_iter().collect(),
    })
}

fn settings(channel: &ChannelConfig) -> Settings {
    Settings {
        channel: channel.name.clone(),
        login_base: channel.setting("baseUrl").unwrap_or(wire::DEFAULT_API_BASE).to_string(),
        cdn_base: channel.setting("cdnBaseUrl").unwrap_or(wire::DEFAULT_CDN_BASE).to_string(),
        cwd: channel.cwd.clone(),
    }
}

/// Start the poller and the outbox of one WeChat channel.
fn spawn(channel: &ChannelConfig, io: ChannelIo) -> Result<RunningChannel, Error> {
    let link = Arc::new(Link::new(settings(channel), &io.home));
    // Load the login and the saved context tokens now: replies to journaled messages may go
    // out before the first poll returns.
    if let Err(why) = link.session() {
        log::debug!(target: channel.name.as_str(), "no usable login yet: {why:?}");
    }
    let journal = io.journal.ok_or_else(|| Error::Other(format!("channel \"{}\": no journal", channel.name)))?;
    let cursor = Arc::new(Mutex::new(poll::CursorKeeper::new(io.home.clone(), &channel.name)));
    let poller = poll::Poller {
        link: link.clone(),
        config: channel.clone(),
        inbound: io.inbound,
        stop: io.stop,
        probe: io.probe.clone(),
        journal: journal.clone(),
        cursor: cursor.clone(),
    };
    io.supervisor.spawn(format!("wx-poll-{}", channel.name), move || poller.run())?;
    let courier = Arc::new(WeixinCourier { link });
    let settle = outbox::Settle { channel: channel.name.clone(), journal: Some(journal), probe: io.probe };
    let outbox = outbox::spawn(courier, settle, &io.supervisor)?;
    let guard: Box<dyn Send> = Box::new(poll::CursorFlush(cursor));
    Ok(RunningChannel { guard: Some(guard), ..RunningChannel::delivering(outbox) })
}

/// WeChat's limits: no published rate; a few messages in a burst per user, then about one a
/// second, and at most about ten answers per user message anyway (the server's rule).
const PACING: PacingRules = PacingRules {
    chat_burst: 3,
    chat_refill: Duration::from_secs(1),
    bot_limit: 20,
    bot_window: Duration::from_secs(1),
};

/// Delivers the outbox's calls through one channel's [`Link`].
struct WeixinCourier {
    link: Arc<Link>,
}

/// A reply as WeChat pieces: the text without its `[IMAGE: …]` markers, as plain text split
/// to the limit (`formatted: false`), then one piece per file to upload, whose text is the
/// path (`formatted: true` marks these: WeChat has no markup, so no text piece is formatted).
pub(crate) fn render_reply(markdown: &str) -> Vec<Piece> {
    let (text, files) = media::take_image_markers(markdown);
    let mut pieces: Vec<Piece> =
        wire::reply_texts(&text).into_iter().map(|text| Piece { text, formatted: false }).collect();
    pieces.extend(files.into_iter().map(|path| Piece { text: path.display().to_string(), formatted: true }));
    pieces
}

impl Courier for WeixinCourier {
    fn render(&self, markdown: &str) -> Vec<Piece> {
        render_reply(markdown)
    }

    fn plain(&self, _piece: &Piece) -> Option<Piece> {
        None // Everything is plain already; WeChat never refuses markup.
    }

    fn perform(&self, call: &Call) -> Result<Option<String>, Failure> {
        let result = match call {
            // Not queued: this courier has no `files()`; its own render takes the markers.
            Call::SendFile { .. } => return Err(Failure::Rejected("WeChat files go through its render".into())),
            Call::Typing(chat) => self.link.typing(&chat.chat_id),
            Call::Send { chat, piece, .. } if piece.formatted => self.send_file(&chat.chat_id, &piece.text),
            // No edits on WeChat: the new text goes as a new message.
            Call::Send { chat, piece, .. } | Call::Edit { chat, piece, .. } => {
                self.link.send_text(&chat.chat_id, &piece.text)
            }
            Call::Ack { .. } => Ok(()),
        };
        result.map(|()| None).map_err(|f| self.failure(f))
    }

    fn pacing(&self) -> PacingRules {
        PACING
    }
}

impl WeixinCourier {
    /// Upload and send a file; one that may not or cannot be sent is replaced by a short
    /// notice, so the user knows a picture was meant.
    fn send_file(&self, user: &str, path: &str) -> Result<(), wire::Failure> {
        match self.link.send_file(user, &PathBuf::from(path)) {
            Err(wire::Failure::Rejected(why)) => {
                log::warn!(target: self.link.channel(), "file not sent to {user}: {why}");
                let name = std::path::Path::new(path).file_name().map(|n| n.to_string_lossy().into_owned());
                let notice = format!("(could not send the file {})", name.unwrap_or_else(|| path.to_string()));
                self.link.send_text(user, &notice)
            }
            other => other,
        }
    }

    /// WeChat's failure in the outbox's classes: an expired login is never retried, a busy
    /// server is, a missing context token ends the reply (the user must write first).
    fn failure(&self, failure: wire::Failure) -> Failure {
        let channel = self.link.channel();
        match failure {
            wire::Failure::SessionExpired(d) => {
                Failure::Unauthorized(format!("{d}: the WeChat login is gone; run `tether weixin-login {channel}`"))
            }
            wire::Failure::Busy(_) => Failure::RateLimited(Duration::from_secs(2)),
            wire::Failure::Transient(d) => Failure::Transient(d),
            wire::Failure::NoContext(d) => Failure::Blocked(format!(
                "{d}; WeChat delivers answers only within about 24 h of the user's last message and about \
                 10 per message: the user must write again"
            )),
            wire::Failure::Rejected(d) => Failure::Rejected(d),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_become_plain_pieces_then_files() {
        let pieces =
            render_reply("# Done\n\nHere is the **chart**:\n[IMAGE: /srv/p/chart.png]\n\n`[IMAGE: /not/this.png]`");
        assert_eq!(
            pieces,
            vec![
                Piece { text: "Done\n\nHere is the chart:\n\n[IMAGE: /not/this.png]".into(), formatted: false },
                Piece { text: "/srv/p/chart.png".into(), formatted: true },
            ]
        );
        assert!(render_reply("").is_empty());
        assert_eq!(render_reply("[IMAGE: /a.png]"), vec![Piece { text: "/a.png".into(), formatted: true }]);
        let long = render_reply(&"word ".repeat(2000));
        assert_eq!(long.len(), 3);
        assert!(long.iter().all(|p| !p.formatted && p.text.chars().count() <= wire::TEXT_LIMIT));
    }

    fn parse(channel: &str) -> Result<crate::config::Config, String> {
        let text = format!(r#"{{"channels": {{"wx": {{"type": "weixin"{channel}}}}}}}"#);
        let env = |_: &str| None;
        let cx = crate::config::ParseContext {
            path: std::path::Path::new("/etc/tether/config.json"),
            cwd: std::path::Path::new("/srv"),
            home: None,
            env: &env,
            platforms: &[&PLATFORM],
        };
        crate::config::parse(&text, &cx).map_err(|e| e.to_string())
    }

    #[test]
    fn settings_from_the_config() {
        let config = parse("").unwrap();
        let wx = &config.channels["wx"];
        assert_eq!(settings(wx).login_base, "https://ilinkai.weixin.qq.com");
        assert_eq!(settings(wx).cdn_base, "https://novac2c.cdn.weixin.qq.com/c2c");
        assert!(wx.secrets().next().is_none(), "the token lives in the account file");
        let config = parse(r#", "apiBase": "http://127.0.0.1:9/", "cdnBaseUrl": "http://127.0.0.1:9/c2c/""#).unwrap();
        let s = settings(&config.channels["wx"]);
        assert_eq!((s.login_base.as_str(), s.cdn_base.as_str()), ("http://127.0.0.1:9", "http://127.0.0.1:9/c2c"));
        let err = parse(r#", "cdnBaseUrl": "novac2c.cdn.weixin.qq.com""#).unwrap_err();
        assert!(err.contains(r#"channel "wx", key "cdnBaseUrl": "novac2c.cdn.weixin.qq.com" is not a URL"#), "{err}");
    }
}
