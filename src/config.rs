//! The configuration file: JSON text in, a validated [`Config`] out. Pure: no file or
//! environment access here; the caller passes the text and an environment lookup.
//!
//! Keys, defaults and meanings follow Qwen Code's `channels` settings (reference spec §1), so a
//! `~/.qwen/settings.json` is accepted unchanged. Unlike Qwen, every enum and type is checked at
//! start, and an error names the file, the channel, the key, the bad value and what is allowed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::adapters::{Capabilities, Platform};
use crate::vec_map::VecMap;

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this came from (for messages).
    pub path: PathBuf,
    /// Agents by name. The top-level `agent` is stored under [`DEFAULT_AGENT`]; `agents`
    /// adds named ones. Always contains [`DEFAULT_AGENT`] (default `qwen --acp`).
    pub agents: VecMap<String, AgentConfig>,
    /// Channels by name, in name order.
    pub channels: VecMap<String, ChannelConfig>,
    /// The settings file's `env` section. Not written into our own process environment
    /// (that needs `unsafe` in edition 2024); used for `$VAR` lookups and given to the agent.
    pub env: VecMap<String, String>,
    /// Channels with `"enabled": false`, in name order: configured and checked, not started
    /// (they stay in `channels`; the daemon leaves them out).
    pub disabled: Vec<String>,
    /// `allowedChannelTypes`: the platforms a channel may use (`None`: any this build has).
    pub allowed_channel_types: Option<Vec<String>>,
    /// `audit`: the audit log (`None`: off).
    pub audit: Option<crate::audit::AuditConfig>,
}

/// Name under which the top-level `agent` object is stored in [`Config::agents`].
pub const DEFAULT_AGENT: &str = "default";

/// How to start one ACP agent process.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    pub command: String,
    pub args: Vec<String>,
    pub env: VecMap<String, String>,
    /// `startupTimeoutMs`, default 30 s: spawn to `initialize` answered.
    pub startup_timeout: Duration,
    /// `user`: run the agent as this user (name or uid; tether must run as root). `None`:
    /// as tether's own user.
    pub user: Option<String>,
    /// `group`: with `user`, the group to run as (default: the user's own).
    pub group: Option<String>,
}

/// `senderPolicy`: who may talk to the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenderPolicy {
    /// Only `allowedUsers` (the default); others are dropped silently.
    Allowlist,
    /// Unknown senders get a pairing code the operator approves.
    Pairing,
    /// Everyone.
    Open,
}

/// `dmPolicy`: whether direct (one-to-one) chats are listened to at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmPolicy {
    /// Direct messages go on to the sender policy (default).
    Open,
    /// Every direct message is dropped before any other gate: a group-only bot.
    Disabled,
}

/// `sessionScope`: which messages share one agent session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionScope {
    /// `channel:sender:chat` (default).
    User,
    /// `channel:thread-or-chat` (Qwen's legacy scope: thread ids of different chats may meet).
    Thread,
    /// One session for the whole channel.
    Single,
    /// `channel:chat:thread`, or `channel:chat` outside threads: one session per chat
    /// thread (forum topic), shared by its participants.
    ChatThread,
}

/// `groupPolicy`: which group chats are listened to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupPolicy {
    /// Every group message is ignored (default).
    Disabled,
    /// Only chat ids that are keys of `groups` (`"*"` is defaults only, never an allow).
    Allowlist,
    /// Any group.
    Open,
    /// A group asks the operator once (a code on the operator's side, never in the group);
    /// approved groups are kept in `<channel>-groups.json`.
    Pairing,
}

/// `dispatchMode`: what a message does when its session is busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DispatchMode {
    /// Cancel the running turn, then run the new message (default).
    Steer,
    /// Buffer; send all buffered messages as one turn when the running one ends.
    Collect,
    /// Queue; each message is its own turn, in order.
    Followup,
}

/// `permissions`: what happens when the agent asks to run a tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermissionPolicy {
    /// Ask the person in the chat that caused the turn (default).
    Relay,
    /// Approve once automatically (warned about at start).
    Allow,
    /// Reject automatically.
    Deny,
}

/// `showToolCalls`: progress lines for tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolCallDisplay {
    Off,
    Brief,
}

/// One entry of `groups` as written; [`ChannelConfig::group`] merges it over `"*"`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupConfig {
    pub require_mention: Option<bool>,
    pub dispatch_mode: Option<DispatchMode>,
    /// `groupHistoryLimit` of this group (0: off), overriding the channel's.
    pub history_limit: Option<usize>,
}

/// The settings that apply to one group after merging its entry over `"*"` key by key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupSettings {
    pub require_mention: bool,
    pub dispatch_mode: DispatchMode,
    /// How many unmentioned messages of authorised senders are kept as context for the
    /// next mention (0: none).
    pub history_limit: usize,
}

/// A secret value (token, client secret): kept out of `Debug` output and logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: String,
    /// The environment variable it came from, when it was written as `$NAME`.
    pub from_env: Option<String>,
}

impl Secret {
    pub fn new(value: String, from_env: Option<String>) -> Secret {
        Secret { value, from_env }
    }

    pub fn expose(&self) -> &str {
        &self.value
    }

    /// For `tether check`: where it comes from and its length, none of its characters (a
    /// Telegram token's first characters are the bot's public id, but other secrets' are not,
    /// and a shared terminal or pasted output should show nothing of any).
    pub fn masked(&self) -> String {
        let count = self.value.chars().count();
        match &self.from_env {
            Some(name) => format!("${name} (set, {count} chars)"),
            None => format!("*** ({count} chars)"),
        }
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(***)")
    }
}

/// One channel, every key typed and defaulted.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelConfig {
    pub name: String,
    /// The platform (`type`), as registered in [`crate::adapters::PLATFORMS`]. The core reads
    /// only its [`Capabilities`], never its name.
    pub platform: &'static Platform,
    /// The platform's own keys, as its adapter read and checked them.
    pub settings: PlatformSettings,
    pub model: Option<String>,
    pub sender_policy: SenderPolicy,
    pub dm_policy: DmPolicy,
    pub allowed_users: Vec<String>,
    pub session_scope: SessionScope,
    /// Absolute; default the directory tether was started in; `~` expanded.
    pub cwd: PathBuf,
    pub instructions: Option<String>,
    /// Passed through untouched.
    pub approval_mode: Option<String>,
    pub group_policy: GroupPolicy,
    pub groups: VecMap<String, GroupConfig>,
    /// `groupHistoryLimit` (0: off; at most [`MAX_GROUP_HISTORY`]).
    pub group_history_limit: usize,
    pub dispatch_mode: DispatchMode,
    /// `multiSession`: people may keep several named tasks (`/session new <name>`).
    pub multi_session: bool,
    pub block_streaming: bool,
    /// `blockStreamingChunk.minChars`, default 400.
    pub block_min_chars: usize,
    /// `blockStreamingChunk.maxChars`, default 1000.
    pub block_max_chars: usize,
    /// `blockStreamingCoalesce.idleMs`, default 1500; zero disables the idle flush.
    pub block_idle: Duration,
    pub permissions: PermissionPolicy,
    /// `permissionTimeoutMs`, default 5 minutes.
    pub permission_timeout: Duration,
    pub show_tool_calls: ToolCallDisplay,
    /// `agent`: a key of [`Config::agents`]; default [`DEFAULT_AGENT`].
    pub agent: String,
    /// `turnTimeoutMs`, default 30 minutes.
    pub turn_timeout: Duration,
    /// `maxBacklogAge`: a message older than this when tether gets to it (sent while tether
    /// was down) gets a notice instead of a turn. Default 24 hours.
    pub max_backlog_age: Duration,
    /// `evictIdleAfter`: a conversation idle this long leaves memory (it stays in
    /// `sessions.json` and is loaded again with its next message). Default 30 minutes.
    pub evict_idle_after: Duration,
    /// Keys this build does not know, kept for adapters (as Qwen does for plugins).
    pub extra: VecMap<String, serde_json::Value>,
    /// What the operator should know about this channel's keys (unknown keys, keys of Qwen
    /// features tether lacks): printed by `tether check`, logged at start.
    pub warnings: Vec<String>,
}

impl ChannelConfig {
    /// The settings for one group chat: its entry merged over `"*"` key by key, then the
    /// built-in defaults (mention required; the channel's dispatch mode).
    pub fn group(&self, chat_id: &str) -> GroupSettings {
        let specific = self.groups.get(chat_id);
        let wildcard = self.groups.get("*");
        let require_mention = specific
            .and_then(|g| g.require_mention)
            .or_else(|| wildcard.and_then(|g| g.require_mention))
            .unwrap_or(true);
        let dispatch_mode = specific
            .and_then(|g| g.dispatch_mode)
            .or_else(|| wildcard.and_then(|g| g.dispatch_mode))
            .unwrap_or(self.dispatch_mode);
        let history_limit = specific
            .and_then(|g| g.history_limit)
            .or_else(|| wildcard.and_then(|g| g.history_limit))
            .unwrap_or(self.group_history_limit);
        GroupSettings { require_mention, dispatch_mode, history_limit }
    }

    /// The channel keeps pairing files: users pair (`senderPolicy: pairing`) or groups do
    /// (`groupPolicy: pairing`).
    pub fn uses_pairing(&self) -> bool {
        self.sender_policy == SenderPolicy::Pairing || self.group_policy == GroupPolicy::Pairing
    }

    /// What the channel's platform can do.
    pub fn capabilities(&self) -> &Capabilities {
        &self.platform.capabilities
    }

    /// Every secret of this channel, for scrubbing the agent's environment.
    pub fn secrets(&self) -> impl Iterator<Item = &Secret> {
        self.settings.secrets.values()
    }

    /// The platform's secret `key` (`token`, `clientSecret`, …), if set.
    pub fn secret(&self, key: &str) -> Option<&Secret> {
        self.settings.secrets.get(key)
    }

    /// The platform's text setting `key` (`apiBase`, `listen`, …), if set.
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.settings.values.get(key).and_then(Value::as_str)
    }
}

/// A platform's own keys after its adapter read them: secrets (`$VAR` expanded) and values
/// normalised by the adapter (URLs without a trailing `/`, addresses checked).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlatformSettings {
    pub secrets: VecMap<&'static str, Secret>,
    pub values: VecMap<&'static str, Value>,
}

/// A name for a secret found inside a platform's nested keys (`env.TOKEN`,
/// `sources.ci.secret`), as [`PlatformSettings::secrets`] keys it: each distinct name is kept
/// once for the life of the process (a reload reuses it).
pub fn secret_label(name: &str) -> &'static str {
    static LABELS: std::sync::Mutex<std::collections::BTreeSet<&'static str>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut labels = LABELS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(label) = labels.get(name) {
        return label;
    }
    let label: &'static str = Box::leak(name.to_string().into_boxed_str());
    labels.insert(label);
    label
}

/// A platform's view of its channel's object in the file, for [`crate::adapters::Platform::parse`]:
/// typed getters whose errors name the file, channel, key and value.
pub struct PlatformKeys<'a> {
    obj: &'a Object,
    at: Place<'a>,
    vars: &'a Vars<'a>,
    platform: &'static str,
    /// The file's `channels` object, for keys that name another channel.
    channels: &'a Object,
}

impl PlatformKeys<'_> {
    /// A credential (`"$NAME"` reads the environment).
    pub fn secret(&self, key: &str) -> Result<Option<Secret>, ConfigError> {
        get_secret(self.obj, key, self.at, self.vars)
    }

    /// A credential the platform cannot work without; the error says how to set it.
    pub fn required_secret(&self, key: &str, what: &str, variable: &str) -> Result<Secret, ConfigError> {
        self.secret(key)?.ok_or_else(|| {
            self.error(
                key,
                format!(
                    "required for type {}: put {what} here, or \"${variable}\" to read it from the environment",
                    self.platform
                ),
            )
        })
    }

    /// A string; absent, `null` and `""` are "not set".
    pub fn string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        get_string(self.obj, key, self.at)
    }

    /// A list of user ids as `allowedUsers` holds them (numbers read as decimal text), for a
    /// platform that knows what its ids look like.
    pub fn user_ids(&self, key: &str) -> Result<Vec<String>, ConfigError> {
        get_user_ids(self.obj, key, self.at)
    }

    /// An http(s) URL without its trailing `/`, under `key` or its `alias` (not both with
    /// different values); `default` when neither is set.
    pub fn url(&self, key: &str, alias: Option<&str>, default: &str) -> Result<String, ConfigError> {
        let first = self.string(key)?;
        let second = match alias {
            Some(alias) => self.string(alias)?,
            None => None,
        };
        let (used, raw) = match (first, second) {
            (Some(a), Some(b)) if a.trim_end_matches('/') != b.trim_end_matches('/') => {
                let alias = alias.unwrap_or_default();
                return Err(self.error(
                    key,
                    format!("\"{alias}\" is also set, to a different URL (\"{b}\"): keep only one of the two"),
                ));
            }
            (Some(a), _) => (key, a),
            (None, Some(b)) => (alias.unwrap_or(key), b),
            (None, None) => return Ok(default.to_string()),
        };
        let trimmed = raw.trim_end_matches('/');
        let host = trimmed.strip_prefix("https://").or_else(|| trimmed.strip_prefix("http://"));
        match host {
            Some(host) if !host.is_empty() => Ok(trimmed.to_string()),
            _ => Err(self
                .error(used, format!("\"{raw}\" is not a URL starting with http:// or https://, e.g. \"{default}\""))),
        }
    }

    /// An IP address and port such as `127.0.0.1:8787` (host names are not accepted).
    pub fn socket_address(&self, key: &str, default: &str) -> Result<(String, SocketAddr), ConfigError> {
        let text = self.string(key)?.unwrap_or_else(|| default.to_string());
        let address = text.parse().map_err(|_| {
            self.error(
                key,
                format!("\"{text}\" is not an IP address and port such as {default} (host names are not accepted)"),
            )
        })?;
        Ok((text, address))
    }

    /// A positive integer (e.g. a size in bytes).
    pub fn positive_integer(&self, key: &str) -> Result<Option<u64>, ConfigError> {
        get_positive(self.obj, key, self.at)
    }

    /// A duration: seconds, or "90s", "30m", "24h", "7d".
    pub fn duration(&self, key: &str) -> Result<Option<Duration>, ConfigError> {
        get_duration(self.obj, key, self.at)
    }

    /// An error about `key` of this channel.
    pub fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        self.at.error(key, message)
    }

    /// The value of `key` as written (`None` when absent or `null`), for a platform key that
    /// holds an array or an object the platform reads itself.
    pub fn raw(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    /// An array of strings.
    pub fn strings(&self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        get_string_array(self.obj, key, self.at)
    }

    /// Whether the file has a channel `name` other than this one (for a key naming the
    /// channel that gets this channel's answers).
    pub fn is_other_channel(&self, name: &str) -> bool {
        self.at.channel != Some(name) && self.channels.contains_key(name)
    }

    /// The keys of this object, in file order.
    pub fn names(&self) -> Vec<String> {
        self.obj.keys().cloned().collect()
    }

    /// Read the object under `key` with these same getters (its errors name `key.inner`, and
    /// `$NAME` secrets inside it read the environment); `None` when absent or `null`.
    pub fn nested<R>(
        &self,
        key: &str,
        read: impl FnOnce(&PlatformKeys<'_>) -> Result<R, ConfigError>,
    ) -> Result<Option<R>, ConfigError> {
        let Some(value) = self.raw(key) else { return Ok(None) };
        let Value::Object(obj) = value else { return Err(type_error(self.at, key, "an object", value)) };
        let prefix = self.at.key(key);
        let at = Place { prefix: &prefix, ..self.at };
        read(&PlatformKeys { obj, at, vars: self.vars, platform: self.platform, channels: self.channels }).map(Some)
    }
}

#[cfg(test)]
impl ChannelConfig {
    /// A channel with every key at its default (as `parse` would give), for tests to adjust.
    pub fn for_tests(name: &str, platform: &'static Platform) -> ChannelConfig {
        ChannelConfig {
            name: name.into(),
            platform,
            settings: PlatformSettings::default(),
            model: None,
            sender_policy: SenderPolicy::Allowlist,
            dm_policy: DmPolicy::Open,
            allowed_users: Vec::new(),
            session_scope: SessionScope::User,
            cwd: PathBuf::from("/tmp"),
            instructions: None,
            approval_mode: None,
            group_policy: GroupPolicy::Disabled,
            groups: VecMap::new(),
            group_history_limit: 0,
            dispatch_mode: DispatchMode::Steer,
            multi_session: false,
            block_streaming: false,
            block_min_chars: 400,
            block_max_chars: 1000,
            block_idle: Duration::from_millis(1500),
            permissions: PermissionPolicy::Relay,
            permission_timeout: Duration::from_secs(300),
            show_tool_calls: ToolCallDisplay::Off,
            agent: DEFAULT_AGENT.into(),
            turn_timeout: Duration::from_secs(1800),
            max_backlog_age: Duration::from_secs(86_400),
            evict_idle_after: Duration::from_secs(1800),
            extra: VecMap::new(),
            warnings: Vec::new(),
        }
    }
}

/// What went wrong in a config file, with everything a person needs to fix it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub path: PathBuf,
    /// The channel at fault, if any.
    pub channel: Option<String>,
    /// The key at fault (dotted for nested keys: `groups.-100123.dispatchMode`).
    pub key: Option<String>,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: ", self.path.display())?;
        match (&self.channel, &self.key) {
            (Some(c), Some(k)) => write!(f, "channel \"{c}\", key \"{k}\": ")?,
            (Some(c), None) => write!(f, "channel \"{c}\": ")?,
            (None, Some(k)) => write!(f, "key \"{k}\": ")?,
            (None, None) => {}
        }
        write!(f, "{}", self.message)
    }
}

/// Where relative paths and `~` resolve, and how `$VAR` is looked up.
#[derive(Clone, Copy)]
pub struct ParseContext<'a> {
    /// The file the text came from (for messages).
    pub path: &'a Path,
    /// The directory tether runs in: the default `cwd`, and the base of relative ones.
    pub cwd: &'a Path,
    /// `$HOME`, for `~` in `cwd`.
    pub home: Option<&'a Path>,
    /// The process environment, as a lookup. The file's own `env` section is consulted first.
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// The platforms a channel's `type` may name (normally [`crate::adapters::PLATFORMS`]).
    pub platforms: &'a [&'static Platform],
}

/// Parse and validate a config file's text.
///
/// Qwen compatibility: unknown top-level keys are ignored; `null` for any optional key means
/// "use the default", and so does `""` for string keys (Qwen applied `value || default`).
/// Anything else of the wrong type, and any unknown enum value, is an error.
pub fn parse(text: &str, cx: &ParseContext<'_>) -> Result<Config, ConfigError> {
    parse_selected(text, cx, None)
}

/// [`parse`], for a command that uses only the `selected` channels (`tether start NAME`, the
/// demo, `tether pairing`): a `$VAR` of another channel that is not set is not an error
/// there (its secret stays empty), so one channel's missing token does not stop another.
/// Every other check still applies to every channel.
pub fn parse_selected(text: &str, cx: &ParseContext<'_>, selected: Option<&[String]>) -> Result<Config, ConfigError> {
    let top = Place { path: cx.path, channel: None, prefix: "" };
    let value: Value =
        serde_json::from_slice(text.as_bytes()).map_err(|e| top.error_here(format!("not valid JSON: {e}")))?;
    let Value::Object(root) = value else {
        return Err(top.error_here(format!(
            "the file must hold one JSON object ({{ \"channels\": ... }}), found {}",
            describe(&value)
        )));
    };

    let env = get_string_map(&root, "env", top)?;
    let agents = parse_agents(&root, top)?;
    let allowed_channel_types = parse_allowed_channel_types(&root, top, cx)?;
    let audit = parse_audit(&root, top, cx)?;
    let empty = Object::new();
    let mut channels = VecMap::new();
    let mut disabled = Vec::new();
    let all = get_object(&root, "channels", top)?.unwrap_or(&empty);
    for (name, value) in all {
        let at = Place { path: cx.path, channel: Some(name), prefix: "" };
        let lenient = selected.is_some_and(|names| !names.contains(name));
        let vars = Vars { file: &env, process: cx.env, lenient };
        check_channel_name(name, at)?;
        let Value::Object(obj) = value else {
            return Err(at.error_here(format!("expected an object, found {}", describe(value))));
        };
        let channel = parse_channel(name, obj, at, cx, &vars, &agents, all)?;
        if let Some(allowed) = &allowed_channel_types
            && !allowed.iter().any(|t| t == channel.platform.name)
        {
            return Err(at.error(
                "type",
                format!(
                    "\"{}\" is not in \"allowedChannelTypes\" [{}]: add it there, or remove this channel",
                    channel.platform.name,
                    allowed.join(", ")
                ),
            ));
        }
        if !get_bool(obj, "enabled", at)?.unwrap_or(true) {
            disabled.push(name.clone());
        }
        channels.insert(name.clone(), channel);
    }
    Ok(Config { path: cx.path.to_path_buf(), agents, channels, env, disabled, allowed_channel_types, audit })
}

/// `allowedChannelTypes`: each one a platform this build has.
fn parse_allowed_channel_types(
    root: &Object,
    top: Place<'_>,
    cx: &ParseContext<'_>,
) -> Result<Option<Vec<String>>, ConfigError> {
    let Some(types) = get_string_array(root, "allowedChannelTypes", top)? else { return Ok(None) };
    for name in &types {
        if crate::adapters::find(cx.platforms, name).is_none() {
            let available: Vec<&str> = cx.platforms.iter().map(|p| p.name).collect();
            return Err(top.error(
                "allowedChannelTypes",
                format!("\"{name}\" is not a platform this build has; it has: {}", available.join(", ")),
            ));
        }
    }
    Ok(Some(types))
}

/// `audit`: `{"path": "...", "content": "full" | "hash" | "none", "maxBytes": n, "maxFiles": n}`.
fn parse_audit(
    root: &Object,
    top: Place<'_>,
    cx: &ParseContext<'_>,
) -> Result<Option<crate::audit::AuditConfig>, ConfigError> {
    use crate::audit::{AuditConfig, Content, DEFAULT_MAX_BYTES, DEFAULT_MAX_FILES};
    const CONTENTS: &[(&str, Content)] = &[("full", Content::Full), ("hash", Content::Hash), ("none", Content::None)];
    let Some(obj) = get_object(root, "audit", top)? else { return Ok(None) };
    let at = Place { prefix: "audit", ..top };
    let Some(raw) = get_string(obj, "path", at)? else {
        return Err(at.error("path", "required: the audit log's file, e.g. \"/var/log/tether/audit.jsonl\""));
    };
    // `~` and relative paths as for `cwd` (the only error: `~` without HOME).
    let path = resolve_cwd(Some(raw.clone()), cx, at).map_err(|_| {
        at.error("path", format!("\"{raw}\" starts with ~ but HOME is not set: write an absolute path"))
    })?;
    let Some(content) = get_enum(obj, "content", at, CONTENTS)? else {
        return Err(at.error("content", format!("required: what to keep of texts, one of: {}", names(CONTENTS))));
    };
    Ok(Some(AuditConfig {
        path,
        content,
        max_bytes: get_positive(obj, "maxBytes", at)?.unwrap_or(DEFAULT_MAX_BYTES),
        max_files: get_positive(obj, "maxFiles", at)?.map_or(DEFAULT_MAX_FILES, to_usize),
    }))
}

type Object = Map<String, Value>;

/// Keys every channel has, whatever its platform; the platform reads its own (`Platform::keys`),
/// and every other key is kept in `extra`.
const CHANNEL_KEYS: &[&str] = &[
    "type",
    "model",
    "senderPolicy",
    "dmPolicy",
    "allowedUsers",
    "sessionScope",
    "cwd",
    "instructions",
    "approvalMode",
    "groupPolicy",
    "groups",
    "groupHistoryLimit",
    "dispatchMode",
    "multiSession",
    "blockStreaming",
    "blockStreamingChunk",
    "blockStreamingCoalesce",
    "permissions",
    "permissionTimeoutMs",
    "showToolCalls",
    "agent",
    "turnTimeoutMs",
    "maxBacklogAge",
    "evictIdleAfter",
    "enabled",
];

const SENDER_POLICIES: &[(&str, SenderPolicy)] =
    &[("allowlist", SenderPolicy::Allowlist), ("pairing", SenderPolicy::Pairing), ("open", SenderPolicy::Open)];
const DM_POLICIES: &[(&str, DmPolicy)] = &[("open", DmPolicy::Open), ("disabled", DmPolicy::Disabled)];
const SESSION_SCOPES: &[(&str, SessionScope)] = &[
    ("user", SessionScope::User),
    ("thread", SessionScope::Thread),
    ("single", SessionScope::Single),
    ("chat_thread", SessionScope::ChatThread),
];
const GROUP_POLICIES: &[(&str, GroupPolicy)] = &[
    ("disabled", GroupPolicy::Disabled),
    ("allowlist", GroupPolicy::Allowlist),
    ("open", GroupPolicy::Open),
    ("pairing", GroupPolicy::Pairing),
];
const DISPATCH_MODES: &[(&str, DispatchMode)] =
    &[("steer", DispatchMode::Steer), ("collect", DispatchMode::Collect), ("followup", DispatchMode::Followup)];
const PERMISSION_POLICIES: &[(&str, PermissionPolicy)] =
    &[("relay", PermissionPolicy::Relay), ("allow", PermissionPolicy::Allow), ("deny", PermissionPolicy::Deny)];
const TOOL_CALL_DISPLAYS: &[(&str, ToolCallDisplay)] =
    &[("off", ToolCallDisplay::Off), ("brief", ToolCallDisplay::Brief)];
/// `blockStreaming`: only the literal `"on"` enables it, as in Qwen.
const ON_OFF: &[(&str, bool)] = &[("on", true), ("off", false)];

const DEFAULT_AGENT_COMMAND: &str = "qwen";
const DEFAULT_AGENT_ARGS: &[&str] = &["--acp"];
const DEFAULT_STARTUP_TIMEOUT_MS: u64 = 30_000;
const DEFAULT_BLOCK_MIN_CHARS: u64 = 400;
const DEFAULT_BLOCK_MAX_CHARS: u64 = 1000;
const DEFAULT_BLOCK_IDLE_MS: i128 = 1500;
const DEFAULT_PERMISSION_TIMEOUT_MS: u64 = 300_000;
const DEFAULT_TURN_TIMEOUT_MS: u64 = 1_800_000;
const DEFAULT_MAX_BACKLOG_AGE_SECS: u64 = 86_400;
/// The most unmentioned group messages kept per group (`groupHistoryLimit` above it is cut
/// to it, with a warning): the context must stay a prompt, not a transcript.
pub const MAX_GROUP_HISTORY: usize = 200;

/// The name of `value` as the config writes it (`"chat_thread"`, not `ChatThread`).
fn spelling<T: PartialEq + Copy>(choices: &[(&'static str, T)], value: T) -> &'static str {
    choices.iter().find(|(_, v)| *v == value).map_or("?", |(name, _)| name)
}

impl SenderPolicy {
    pub fn name(self) -> &'static str {
        spelling(SENDER_POLICIES, self)
    }
}

impl DmPolicy {
    pub fn name(self) -> &'static str {
        spelling(DM_POLICIES, self)
    }
}

impl SessionScope {
    pub fn name(self) -> &'static str {
        spelling(SESSION_SCOPES, self)
    }
}

impl GroupPolicy {
    pub fn name(self) -> &'static str {
        spelling(GROUP_POLICIES, self)
    }
}

impl DispatchMode {
    pub fn name(self) -> &'static str {
        spelling(DISPATCH_MODES, self)
    }
}

impl PermissionPolicy {
    pub fn name(self) -> &'static str {
        spelling(PERMISSION_POLICIES, self)
    }
}

/// The keys of one `groups` entry.
const GROUP_KEYS: &[&str] = &["requireMention", "dispatchMode", "groupHistoryLimit"];

/// Keys of Qwen Code's channel schema (0.24) that belong to one platform: in a channel of
/// another type they are a mistake worth a word.
const QWEN_PLATFORM_KEYS: &[(&str, &[&str])] = &[
    ("token", &["telegram", "webchat"]),
    ("clientId", &["dingtalk", "feishu"]),
    ("clientSecret", &["dingtalk", "feishu"]),
    ("botId", &["wecom"]),
    ("secret", &["wecom"]),
    ("baseUrl", &["weixin", "telegram"]),
];

/// Keys of Qwen Code features tether does not have, with the platforms they apply to
/// (empty: every platform) and what tether does instead. A platform that implements one
/// lists it in its own `keys`, and then it is not warned about.
const QWEN_FEATURES_LACKING: &[(&str, &[&str], &str)] = &[
    (
        "outputMode",
        &[],
        "tether has no output modes: it sends the final answer, plus a line per tool call with \"showToolCalls\": \"brief\"",
    ),
    ("identity", &[], "tether sends no identity block: say who the bot is in \"instructions\""),
    ("memoryScope", &[], "tether has no channel memory: put lasting facts in \"instructions\""),
    ("webhooks", &[], "tether has no webhook-triggered tasks; the key is ignored"),
    ("maxTurns", &[], "tether does not rotate sessions: /clear (or the admin page) starts a fresh conversation"),
    ("maxAgeHours", &[], "tether does not rotate sessions: /clear (or the admin page) starts a fresh conversation"),
    ("pollInterval", &[], "tether's pollers hold long polls and need no interval; the key is ignored"),
    ("useConnectionManager", &["dingtalk"], "tether reconnects the stream by itself; the key is ignored"),
    ("atSender", &["dingtalk"], "tether answers in the conversation without @-mentioning the sender"),
    ("interactiveCards", &["dingtalk"], "tether sends Markdown messages, not interactive cards"),
];

/// The top-level `agent` (under [`DEFAULT_AGENT`]) plus the named `agents`.
fn parse_agents(root: &Object, top: Place<'_>) -> Result<VecMap<String, AgentConfig>, ConfigError> {
    let empty = Object::new();
    let mut agents = VecMap::new();
    let default = get_object(root, "agent", top)?.unwrap_or(&empty);
    let at = Place { prefix: "agent", ..top };
    agents.insert(DEFAULT_AGENT.to_string(), parse_agent(default, at, false)?);
    for (name, value) in get_object(root, "agents", top)?.unwrap_or(&empty) {
        let key = format!("agents.{name}");
        if name == DEFAULT_AGENT {
            return Err(top.error(
                &key,
                "the name \"default\" is reserved for the top-level \"agent\": \
                 rename this agent, or move it to \"agent\"",
            ));
        }
        let Value::Object(obj) = value else {
            return Err(type_error(top, &key, "an object", value));
        };
        let at = Place { prefix: &key, ..top };
        agents.insert(name.clone(), parse_agent(obj, at, true)?);
    }
    Ok(agents)
}

/// One agent object. `args` defaults to `--acp` only together with the default command:
/// another program's flags are unknown.
fn parse_agent(obj: &Object, at: Place<'_>, command_required: bool) -> Result<AgentConfig, ConfigError> {
    let (command, default_args) = match get_string(obj, "command", at)? {
        Some(command) => (command, Vec::new()),
        None if command_required => {
            return Err(at.error(
                "command",
                "required: the program to start, e.g. \"gemini\" (with \"args\" such as \
                 [\"--experimental-acp\"])",
            ));
        }
        None => (DEFAULT_AGENT_COMMAND.to_string(), DEFAULT_AGENT_ARGS.iter().map(|a| a.to_string()).collect()),
    };
    Ok(AgentConfig {
        command,
        args: get_string_array(obj, "args", at)?.unwrap_or(default_args),
        env: get_string_map(obj, "env", at)?,
        startup_timeout: millis(get_positive(obj, "startupTimeoutMs", at)?, DEFAULT_STARTUP_TIMEOUT_MS),
        user: get_string(obj, "user", at)?,
        group: match (get_string(obj, "group", at)?, obj.contains_key("user")) {
            (Some(_), false) => {
                return Err(at.error("group", "needs \"user\" too: the agent runs as that user, in this group"));
            }
            (group, _) => group,
        },
    })
}

/// Channel names end up in file names and routing keys.
fn check_channel_name(name: &str, at: Place<'_>) -> Result<(), ConfigError> {
    let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(at.error_here(
            "a channel name must be non-empty and use only ASCII letters, digits, - and _ \
             (it is used in file names): rename it, e.g. \"my-telegram\"",
        ))
    }
}

fn parse_channel(
    name: &str,
    obj: &Object,
    at: Place<'_>,
    cx: &ParseContext<'_>,
    vars: &Vars<'_>,
    agents: &VecMap<String, AgentConfig>,
    all_channels: &Object,
) -> Result<ChannelConfig, ConfigError> {
    let type_name = get_string(obj, "type", at)?;
    let available = || cx.platforms.iter().map(|p| p.name).collect::<Vec<_>>().join(", ");
    let Some(type_name) = type_name else {
        return Err(at.error("type", format!("missing: every channel needs a \"type\", one of: {}", available())));
    };
    let platform = crate::adapters::find(cx.platforms, &type_name).ok_or_else(|| {
        at.error("type", format!("\"{type_name}\" is not a platform this build has; it has: {}", available()))
    })?;
    let keys = PlatformKeys { obj, at, vars, platform: platform.name, channels: all_channels };
    let settings = (platform.parse)(&keys)?;

    let agent = get_string(obj, "agent", at)?.unwrap_or_else(|| DEFAULT_AGENT.to_string());
    if !agents.contains_key(&agent) {
        let known: Vec<&str> = agents.keys().map(String::as_str).collect();
        return Err(at.error(
            "agent",
            format!("unknown agent \"{agent}\"; known agents: {} (define it under \"agents\")", known.join(", ")),
        ));
    }

    let empty = Object::new();
    let chunk_key = at.key("blockStreamingChunk");
    let chunk_at = Place { prefix: &chunk_key, ..at };
    let chunk = get_object(obj, "blockStreamingChunk", at)?.unwrap_or(&empty);
    let block_min_chars = get_positive(chunk, "minChars", chunk_at)?.unwrap_or(DEFAULT_BLOCK_MIN_CHARS);
    let block_max_chars = get_positive(chunk, "maxChars", chunk_at)?.unwrap_or(DEFAULT_BLOCK_MAX_CHARS);
    if block_min_chars > block_max_chars {
        return Err(at.error(
            "blockStreamingChunk",
            format!("minChars ({block_min_chars}) is larger than maxChars ({block_max_chars})"),
        ));
    }
    let coalesce_key = at.key("blockStreamingCoalesce");
    let coalesce_at = Place { prefix: &coalesce_key, ..at };
    let coalesce = get_object(obj, "blockStreamingCoalesce", at)?.unwrap_or(&empty);
    // Qwen: `idleMs <= 0` disables the idle flush.
    let idle_ms = get_integer(coalesce, "idleMs", coalesce_at)?.unwrap_or(DEFAULT_BLOCK_IDLE_MS);
    let block_idle = Duration::from_millis(u64::try_from(idle_ms).unwrap_or(0));

    let mut warnings = key_warnings(obj, platform, cx.platforms);
    let allowed_users = get_user_ids(obj, "allowedUsers", at)?;
    check_placeholders(&allowed_users, at)?;
    let approval_mode = get_string(obj, "approvalMode", at)?;
    if let Some(mode) = &approval_mode {
        warnings.push(format!(
            "`approvalMode` (\"{mode}\"): tether does not pass it to the agent; it asks in the chat before a tool \
             runs. Use \"permissions\": \"relay\" (default), \"allow\" (like yolo) or \"deny\""
        ));
    }
    let group_history_limit = get_history_limit(obj, at, &mut warnings)?.unwrap_or(0);
    let groups = get_groups(obj, at, &mut warnings)?;
    let sender_policy = get_enum(obj, "senderPolicy", at, SENDER_POLICIES)?.unwrap_or(SenderPolicy::Allowlist);
    let group_policy = get_enum(obj, "groupPolicy", at, GROUP_POLICIES)?.unwrap_or(GroupPolicy::Disabled);
    if group_policy == GroupPolicy::Pairing && sender_policy == SenderPolicy::Allowlist && allowed_users.is_empty() {
        warnings.push(
            "`groupPolicy` is \"pairing\", but only someone allowed may make a group ask, and with \
             senderPolicy \"allowlist\" and no allowedUsers nobody is: add your id to allowedUsers"
                .to_string(),
        );
    }

    Ok(ChannelConfig {
        name: name.to_string(),
        platform,
        settings,
        model: get_string(obj, "model", at)?,
        sender_policy,
        dm_policy: get_enum(obj, "dmPolicy", at, DM_POLICIES)?.unwrap_or(DmPolicy::Open),
        allowed_users,
        session_scope: get_enum(obj, "sessionScope", at, SESSION_SCOPES)?.unwrap_or(SessionScope::User),
        cwd: resolve_cwd(get_string(obj, "cwd", at)?, cx, at)?,
        instructions: get_string(obj, "instructions", at)?,
        approval_mode,
        group_policy,
        groups,
        group_history_limit,
        dispatch_mode: get_enum(obj, "dispatchMode", at, DISPATCH_MODES)?.unwrap_or(DispatchMode::Steer),
        multi_session: get_bool(obj, "multiSession", at)?.unwrap_or(false),
        block_streaming: get_enum(obj, "blockStreaming", at, ON_OFF)?.unwrap_or(false),
        block_min_chars: to_usize(block_min_chars),
        block_max_chars: to_usize(block_max_chars),
        block_idle,
        permissions: get_enum(obj, "permissions", at, PERMISSION_POLICIES)?.unwrap_or(PermissionPolicy::Relay),
        permission_timeout: millis(get_positive(obj, "permissionTimeoutMs", at)?, DEFAULT_PERMISSION_TIMEOUT_MS),
        show_tool_calls: get_enum(obj, "showToolCalls", at, TOOL_CALL_DISPLAYS)?.unwrap_or(ToolCallDisplay::Off),
        agent,
        turn_timeout: millis(get_positive(obj, "turnTimeoutMs", at)?, DEFAULT_TURN_TIMEOUT_MS),
        max_backlog_age: get_duration(obj, "maxBacklogAge", at)?
            .unwrap_or(Duration::from_secs(DEFAULT_MAX_BACKLOG_AGE_SECS)),
        evict_idle_after: get_duration(obj, "evictIdleAfter", at)?.unwrap_or(Duration::from_secs(1800)),
        extra: obj
            .iter()
            .filter(|(key, _)| !CHANNEL_KEYS.contains(&key.as_str()) && !platform.keys.contains(&key.as_str()))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
        warnings,
    })
}

/// Warnings for the keys of a channel that neither `config.rs` nor its platform reads: a
/// Qwen feature tether lacks (what it does instead), another platform's key, or an unknown
/// key (with the closest known one).
fn key_warnings(obj: &Object, platform: &Platform, platforms: &[&'static Platform]) -> Vec<String> {
    let type_name = platform.name;
    let applies = |types: &[&str]| types.is_empty() || types.contains(&type_name);
    let mut known: Vec<&str> = CHANNEL_KEYS.iter().chain(platform.keys).copied().collect();
    known.extend(QWEN_FEATURES_LACKING.iter().filter(|(_, types, _)| applies(types)).map(|(key, _, _)| *key));
    let mut warnings = Vec::new();
    for key in obj.keys().map(String::as_str) {
        if CHANNEL_KEYS.contains(&key) || platform.keys.contains(&key) {
            continue;
        }
        if let Some((_, _, instead)) = QWEN_FEATURES_LACKING.iter().find(|(k, types, _)| *k == key && applies(types)) {
            warnings.push(format!("`{key}`: a Qwen Code setting tether does not have; {instead}"));
            continue;
        }
        let mut owners: Vec<&str> =
            platforms.iter().filter(|p| p.name != type_name && p.keys.contains(&key)).map(|p| p.name).collect();
        for (_, types) in QWEN_PLATFORM_KEYS.iter().filter(|(k, _)| *k == key) {
            for t in types.iter().filter(|t| **t != type_name) {
                if !owners.contains(t) {
                    owners.push(t);
                }
            }
        }
        if !owners.is_empty() {
            warnings.push(format!(
                "`{key}`: a key of {} channels, not of type {type_name}; ignored here",
                owners.join(" and ")
            ));
            continue;
        }
        warnings.push(match closest(key, &known) {
            Some(near) => format!("`{key}`: unknown key; did you mean `{near}`?"),
            None => format!("`{key}`: unknown key; ignored"),
        });
    }
    warnings
}

/// The known key nearest to `key` by edit distance (case ignored), when near enough to be a
/// typo: at most a third of its length, and at least 1, 2 for longer keys.
fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    let lower = key.to_lowercase();
    let best = known.iter().map(|k| (edit_distance(&lower, &k.to_lowercase()), *k)).min_by_key(|(d, _)| *d)?;
    let allowed = (key.chars().count() / 3).max(1);
    (best.0 <= allowed).then_some(best.1)
}

/// Levenshtein distance in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

/// `allowedUsers` copied from an example unchanged (`YOUR_TELEGRAM_USER_ID`, `<your id>`)
/// would let nobody in, silently.
fn check_placeholders(users: &[String], at: Place<'_>) -> Result<(), ConfigError> {
    for (i, user) in users.iter().enumerate() {
        let upper = user.to_uppercase();
        let placeholder =
            upper.contains("YOUR") || upper.contains("USER_ID") || (user.starts_with('<') && user.ends_with('>'));
        if placeholder {
            return Err(at.error(
                &format!("allowedUsers[{i}]"),
                format!(
                    "\"{user}\" is a placeholder from an example: replace it with a real user id. To find yours, \
                     send the bot a message while tether runs: the log says \"dropped message from <id>\" \
                     (or use \"senderPolicy\": \"pairing\" and `tether pairing list`)"
                ),
            ));
        }
    }
    Ok(())
}

/// `groupHistoryLimit` of a channel or group entry: a whole number, 0 is off, more than
/// [`MAX_GROUP_HISTORY`] is cut to it.
fn get_history_limit(obj: &Object, at: Place<'_>, warnings: &mut Vec<String>) -> Result<Option<usize>, ConfigError> {
    const KEY: &str = "groupHistoryLimit";
    let Some(limit) = get_integer(obj, KEY, at)? else { return Ok(None) };
    let Ok(limit) = u64::try_from(limit) else {
        return Err(at.error(KEY, format!("{limit} is negative: write 0 (off) or how many messages to keep")));
    };
    let limit = to_usize(limit);
    if limit > MAX_GROUP_HISTORY {
        warnings.push(format!("`{}`: {limit} is more than tether keeps; using {MAX_GROUP_HISTORY}", at.key(KEY)));
        return Ok(Some(MAX_GROUP_HISTORY));
    }
    Ok(Some(limit))
}

/// `cwd`: `~` and `~/x` use the home directory; relative paths are taken from where tether
/// runs; `.` components are dropped.
fn resolve_cwd(raw: Option<String>, cx: &ParseContext<'_>, at: Place<'_>) -> Result<PathBuf, ConfigError> {
    let Some(raw) = raw else {
        return Ok(cx.cwd.to_path_buf());
    };
    let path = match raw.strip_prefix('~') {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => {
            let home = cx.home.ok_or_else(|| {
                at.error("cwd", format!("\"{raw}\" starts with ~ but HOME is not set: write an absolute path"))
            })?;
            home.join(rest.trim_start_matches('/'))
        }
        _ => PathBuf::from(&raw),
    };
    let absolute = if path.is_absolute() { path } else { cx.cwd.join(path) };
    Ok(absolute.components().collect())
}

/// `groups`: chat id (or `"*"`) → entry. Unknown keys inside an entry are warned about.
fn get_groups(
    obj: &Object,
    at: Place<'_>,
    warnings: &mut Vec<String>,
) -> Result<VecMap<String, GroupConfig>, ConfigError> {
    let mut groups = VecMap::new();
    let Some(entries) = get_object(obj, "groups", at)? else {
        return Ok(groups);
    };
    for (id, entry) in entries {
        let key = at.key(&format!("groups.{id}"));
        let group = match entry {
            Value::Null => GroupConfig::default(),
            Value::Object(entry) => {
                let entry_at = Place { prefix: &key, ..at };
                for unknown in entry.keys().filter(|k| !GROUP_KEYS.contains(&k.as_str())) {
                    warnings.push(match closest(unknown, GROUP_KEYS) {
                        Some(near) => format!("`{key}.{unknown}`: unknown key; did you mean `{near}`?"),
                        None => format!("`{key}.{unknown}`: unknown key; ignored"),
                    });
                }
                GroupConfig {
                    require_mention: get_bool(entry, "requireMention", entry_at)?,
                    dispatch_mode: get_enum(entry, "dispatchMode", entry_at, DISPATCH_MODES)?,
                    history_limit: get_history_limit(entry, entry_at, warnings)?,
                }
            }
            other => return Err(type_error(at, &format!("groups.{id}"), "an object", other)),
        };
        groups.insert(id.clone(), group);
    }
    Ok(groups)
}

/// Where `$VAR` is looked up: the file's `env` section first, then the process environment.
struct Vars<'a> {
    file: &'a VecMap<String, String>,
    process: &'a dyn Fn(&str) -> Option<String>,
    /// The channel is not used by this command: an unset variable reads as empty.
    lenient: bool,
}

impl Vars<'_> {
    /// The variable's value; unset and empty are the same (spec §1.4).
    fn get(&self, name: &str) -> Option<String> {
        self.file
            .get(name)
            .filter(|v| !v.is_empty())
            .cloned()
            .or_else(|| (self.process)(name).filter(|v| !v.is_empty()))
    }
}

/// A credential: `"$NAME"` reads the variable NAME (the whole remainder, no `${}` and no
/// partial interpolation); anything else is the value itself.
fn get_secret(obj: &Object, key: &str, at: Place<'_>, vars: &Vars<'_>) -> Result<Option<Secret>, ConfigError> {
    let Some(raw) = get_string(obj, key, at)? else {
        return Ok(None);
    };
    let Some(name) = raw.strip_prefix('$') else {
        return Ok(Some(Secret::new(raw, None)));
    };
    if name.is_empty() {
        return Err(at.error(
            key,
            "\"$\" alone names no variable: write \"$NAME\" to read NAME from the environment, or the value itself",
        ));
    }
    match vars.get(name) {
        Some(value) => Ok(Some(Secret::new(value, Some(name.to_string())))),
        None if vars.lenient => Ok(Some(Secret::new(String::new(), Some(name.to_string())))),
        None => Err(at.error(
            key,
            format!(
                "environment variable {name} is not set (referenced as ${name}): set it, or put it in the \"env\" section of {}",
                at.path.display()
            ),
        )),
    }
}

/// Where a value sits in the file, for error messages: the channel (if any) and a dotted key
/// prefix for nested objects.
#[derive(Clone, Copy)]
struct Place<'a> {
    path: &'a Path,
    channel: Option<&'a str>,
    prefix: &'a str,
}

impl Place<'_> {
    /// The full dotted name of `key` inside this place.
    fn key(&self, key: &str) -> String {
        if self.prefix.is_empty() { key.to_string() } else { format!("{}.{key}", self.prefix) }
    }

    /// An error about `key` inside this place.
    fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: self.path.to_path_buf(),
            channel: self.channel.map(str::to_string),
            key: Some(self.key(key)),
            message: message.into(),
        }
    }

    /// An error about this place itself (the whole file, channel or nested object).
    fn error_here(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: self.path.to_path_buf(),
            channel: self.channel.map(str::to_string),
            key: (!self.prefix.is_empty()).then(|| self.prefix.to_string()),
            message: message.into(),
        }
    }
}

/// A JSON value as a person would name it: `number 3`, `string "x"`, `an array`.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {}", Value::String(s.clone())),
        Value::Array(_) => "an array".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

fn type_error(at: Place<'_>, key: &str, expected: &str, found: &Value) -> ConfigError {
    at.error(key, format!("expected {expected}, found {}", describe(found)))
}

/// The allowed names of an enum key, for messages.
fn names<T>(choices: &[(&str, T)]) -> String {
    choices.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(", ")
}

/// A string; absent, `null` and `""` are all "not set".
fn get_string(obj: &Object, key: &str, at: Place<'_>) -> Result<Option<String>, ConfigError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(type_error(at, key, "a string", other)),
    }
}

/// One of `choices` by name; absent, `null` and `""` are "not set".
fn get_enum<T: Copy>(obj: &Object, key: &str, at: Place<'_>, choices: &[(&str, T)]) -> Result<Option<T>, ConfigError> {
    let Some(text) = get_string(obj, key, at)? else {
        return Ok(None);
    };
    match choices.iter().find(|(name, _)| *name == text) {
        Some(&(_, value)) => Ok(Some(value)),
        None => Err(at.error(key, format!("\"{text}\" is not one of: {}", names(choices)))),
    }
}

fn get_bool(obj: &Object, key: &str, at: Place<'_>) -> Result<Option<bool>, ConfigError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(type_error(at, key, "true or false", other)),
    }
}

/// A whole number of any sign (`1500.0` and `"1500"` are errors).
fn get_integer(obj: &Object, key: &str, at: Place<'_>) -> Result<Option<i128>, ConfigError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => {
            Ok(n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from)))
        }
        Some(other) => Err(type_error(at, key, "an integer", other)),
    }
}

/// A whole number above zero.
fn get_positive(obj: &Object, key: &str, at: Place<'_>) -> Result<Option<u64>, ConfigError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => match value.as_u64() {
            Some(n) if n > 0 => Ok(Some(n)),
            _ => Err(type_error(at, key, "a positive integer", value)),
        },
    }
}

fn get_object<'o>(obj: &'o Object, key: &str, at: Place<'_>) -> Result<Option<&'o Object>, ConfigError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(inner)) => Ok(Some(inner)),
        Some(other) => Err(type_error(at, key, "an object", other)),
    }
}

/// An array of strings (empty strings kept: they may be meaningful program arguments).
fn get_string_array(obj: &Object, key: &str, at: Place<'_>) -> Result<Option<Vec<String>>, ConfigError> {
    let items = match obj.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(other) => return Err(type_error(at, key, "an array of strings", other)),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) => Ok(s.clone()),
            other => Err(type_error(at, &format!("{key}[{i}]"), "a string", other)),
        })
        .collect::<Result<_, _>>()
        .map(Some)
}

/// `allowedUsers`: strings, or integers turned into their decimal text (people paste
/// Telegram ids as numbers).
fn get_user_ids(obj: &Object, key: &str, at: Place<'_>) -> Result<Vec<String>, ConfigError> {
    let items = match obj.get(key) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => return Err(type_error(at, key, "an array of user ids", other)),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
            other => Err(type_error(at, &format!("{key}[{i}]"), "a user id (string or integer)", other)),
        })
        .collect()
}

/// An object of strings (`env` sections).
fn get_string_map(obj: &Object, key: &str, at: Place<'_>) -> Result<VecMap<String, String>, ConfigError> {
    let empty = Object::new();
    let mut map = VecMap::new();
    for (name, value) in get_object(obj, key, at)?.unwrap_or(&empty) {
        match value {
            Value::String(s) => map.insert(name.clone(), s.clone()),
            other => return Err(type_error(at, &format!("{key}.{name}"), "a string", other)),
        };
    }
    Ok(map)
}

/// A duration: a number of seconds, or a string of a number and a unit (`"90s"`, `"30m"`,
/// `"24h"`, `"7d"`). Zero is refused: it would turn every message into a notice.
fn get_duration(obj: &Object, key: &str, at: Place<'_>) -> Result<Option<Duration>, ConfigError> {
    const EXPECTED: &str = "a duration such as \"24h\", \"30m\", \"90s\", \"7d\" or a positive number of seconds";
    let secs = match obj.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s.is_empty() => return Ok(None),
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => parse_duration_secs(s.trim()),
        Some(_) => None,
    };
    match (secs, obj.get(key)) {
        (Some(secs), _) if secs > 0 => Ok(Some(Duration::from_secs(secs))),
        (_, Some(value)) => Err(type_error(at, key, EXPECTED, value)),
        (_, None) => Ok(None),
    }
}

pub(crate) fn parse_duration_secs(text: &str) -> Option<u64> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at_checked(split)?;
    let scale = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(scale)
}

fn millis(value: Option<u64>, default: u64) -> Duration {
    Duration::from_millis(value.unwrap_or(default))
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// For tests (here and in the platforms' own): parse `text` as `/etc/tether/config.json`,
/// with cwd `/srv/start`, home `/home/ann`, the given process environment and `platforms`.
#[cfg(test)]
pub(crate) fn parse_for_tests(
    text: &str,
    platforms: &[&'static Platform],
    env: &[(&str, &str)],
) -> Result<Config, ConfigError> {
    let vars: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let lookup = move |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let cx = ParseContext {
        path: Path::new("/etc/tether/config.json"),
        cwd: Path::new("/srv/start"),
        home: Some(Path::new("/home/ann")),
        env: &lookup,
        platforms,
    };
    parse(text, &cx)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/etc/tether/config.json";

    /// Parse with a fixed file, cwd `/srv/start`, home `/home/ann` and the given process
    /// environment.
    fn parse_with(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        parse_for_tests(text, crate::adapters::PLATFORMS, env)
    }

    /// What the Telegram adapter reads from a channel with `token` and the default `apiBase`.
    fn telegram_settings(token: &str, from_env: Option<&str>) -> PlatformSettings {
        PlatformSettings {
            secrets: [("token", Secret::new(token.into(), from_env.map(str::to_string)))].into(),
            values: [("apiBase", Value::String("https://api.telegram.org".into()))].into(),
        }
    }

    /// A file with one telegram channel "phone" (token set) plus the given extra keys.
    fn telegram(extra: &str) -> String {
        let sep = if extra.is_empty() { "" } else { ", " };
        format!(r#"{{"channels": {{"phone": {{"type": "telegram", "token": "123:abc"{sep}{extra}}}}}}}"#)
    }

    fn channel(config: &Config, name: &str) -> ChannelConfig {
        match config.channels.get(name) {
            Some(c) => c.clone(),
            None => panic!("no channel {name} in {config:?}"),
        }
    }

    fn phone(extra: &str) -> ChannelConfig {
        match parse_with(&telegram(extra), &[]) {
            Ok(config) => channel(&config, "phone"),
            Err(e) => panic!("{extra}: {e}"),
        }
    }

    fn error_text(text: &str, env: &[(&str, &str)]) -> String {
        match parse_with(text, env) {
            Ok(config) => panic!("expected an error for {text}, got {config:?}"),
            Err(e) => e.to_string(),
        }
    }

    const DESIGN_EXAMPLE: &str = r#"{
      "agent": { "command": "qwen", "args": ["--acp"], "env": {}, "startupTimeoutMs": 30000 },
      "agents": { "gemini": { "command": "gemini", "args": ["--experimental-acp"] } },
      "channels": {
        "phone": {
          "type": "telegram", "token": "$TELEGRAM_BOT_TOKEN",
          "senderPolicy": "pairing", "allowedUsers": ["123456789"],
          "sessionScope": "user", "cwd": "/srv/project", "model": "qwen3.5-plus",
          "instructions": "Be brief.", "groupPolicy": "allowlist",
          "groups": { "*": { "requireMention": true }, "-100123": { "dispatchMode": "collect" } },
          "dispatchMode": "steer", "blockStreaming": "on",
          "permissions": "relay", "agent": "gemini", "apiBase": "https://api.telegram.org"
        }
      }
    }"#;

    #[test]
    fn design_example_parses_fully() {
        let config = match parse_with(DESIGN_EXAMPLE, &[("TELEGRAM_BOT_TOKEN", "42:secret")]) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(config.path, PathBuf::from(FILE));
        assert_eq!(config.agents.len(), 2);
        assert_eq!(
            config.agents["default"],
            AgentConfig {
                command: "qwen".into(),
                args: vec!["--acp".into()],
                env: VecMap::new(),
                startup_timeout: Duration::from_secs(30),
                user: None,
                group: None,
            }
        );
        assert_eq!(config.agents["gemini"].command, "gemini");
        assert_eq!(config.agents["gemini"].args, vec!["--experimental-acp".to_string()]);
        let phone = channel(&config, "phone");
        let expected = ChannelConfig {
            name: "phone".into(),
            platform: &crate::adapters::telegram::PLATFORM,
            settings: telegram_settings("42:secret", Some("TELEGRAM_BOT_TOKEN")),
            model: Some("qwen3.5-plus".into()),
            sender_policy: SenderPolicy::Pairing,
            dm_policy: DmPolicy::Open,
            allowed_users: vec!["123456789".into()],
            session_scope: SessionScope::User,
            cwd: PathBuf::from("/srv/project"),
            instructions: Some("Be brief.".into()),
            approval_mode: None,
            group_policy: GroupPolicy::Allowlist,
            groups: VecMap::from_iter([
                (
                    "*".to_string(),
                    GroupConfig { require_mention: Some(true), dispatch_mode: None, history_limit: None },
                ),
                (
                    "-100123".to_string(),
                    GroupConfig {
                        require_mention: None,
                        dispatch_mode: Some(DispatchMode::Collect),
                        history_limit: None,
                    },
                ),
            ]),
            group_history_limit: 0,
            dispatch_mode: DispatchMode::Steer,
            multi_session: false,
            block_streaming: true,
            block_min_chars: 400,
            block_max_chars: 1000,
            block_idle: Duration::from_millis(1500),
            permissions: PermissionPolicy::Relay,
            permission_timeout: Duration::from_secs(300),
            show_tool_calls: ToolCallDisplay::Off,
            agent: "gemini".into(),
            turn_timeout: Duration::from_secs(1800),
            max_backlog_age: Duration::from_secs(86_400),
            evict_idle_after: Duration::from_secs(1800),
            extra: VecMap::new(),
            warnings: Vec::new(),
        };
        assert_eq!(phone, expected);
    }

    #[test]
    fn qwen_settings_json_is_accepted_unchanged() {
        let text = r#"{
          "theme": "GitHub",
          "mcpServers": { "fs": { "command": "npx", "args": ["fs-server"] } },
          "model": { "name": "qwen3-coder-plus" },
          "env": { "TELEGRAM_BOT_TOKEN": "from-file", "OTHER": "x" },
          "channels": {
            "my-telegram": {
              "type": "telegram", "token": "$TELEGRAM_BOT_TOKEN",
              "groupPolicy": "open",
              "groups": { "*": { "requireMention": false, "groupHistoryLimit": 20 } },
              "dmPolicy": "open",
              "pollInterval": 60000
            }
          }
        }"#;
        // The file's env section wins over the process environment.
        let config = match parse_with(text, &[("TELEGRAM_BOT_TOKEN", "from-process")]) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(
            config.env,
            VecMap::from_iter([
                ("TELEGRAM_BOT_TOKEN".to_string(), "from-file".to_string()),
                ("OTHER".to_string(), "x".to_string()),
            ])
        );
        let c = channel(&config, "my-telegram");
        assert_eq!(c.secret("token").map(Secret::expose), Some("from-file"));
        assert_eq!(c.secret("token").and_then(|s| s.from_env.as_deref()), Some("TELEGRAM_BOT_TOKEN"));
        assert_eq!(c.group_policy, GroupPolicy::Open);
        assert_eq!(
            c.groups["*"],
            GroupConfig { require_mention: Some(false), dispatch_mode: None, history_limit: Some(20) }
        );
        assert_eq!(c.dm_policy, DmPolicy::Open);
        assert_eq!(c.extra, VecMap::from_iter([("pollInterval".to_string(), serde_json::json!(60000))]));
        assert_eq!(
            c.warnings,
            [
                "`pollInterval`: a Qwen Code setting tether does not have; tether's pollers hold long polls and need no interval; the key is ignored"
            ]
        );
        assert_eq!(c.agent, DEFAULT_AGENT);
    }

    #[test]
    fn every_default() {
        let config = match parse_with(&telegram(""), &[]) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert!(config.env.is_empty());
        assert_eq!(
            config.agents,
            VecMap::from_iter([(
                "default".to_string(),
                AgentConfig {
                    command: "qwen".into(),
                    args: vec!["--acp".into()],
                    env: VecMap::new(),
                    startup_timeout: Duration::from_millis(30_000),
                    user: None,
                    group: None,
                }
            )])
        );
        let c = channel(&config, "phone");
        let expected = ChannelConfig {
            name: "phone".into(),
            platform: &crate::adapters::telegram::PLATFORM,
            settings: telegram_settings("123:abc", None),
            model: None,
            sender_policy: SenderPolicy::Allowlist,
            dm_policy: DmPolicy::Open,
            allowed_users: vec![],
            session_scope: SessionScope::User,
            cwd: PathBuf::from("/srv/start"),
            instructions: None,
            approval_mode: None,
            group_policy: GroupPolicy::Disabled,
            groups: VecMap::new(),
            group_history_limit: 0,
            dispatch_mode: DispatchMode::Steer,
            multi_session: false,
            block_streaming: false,
            block_min_chars: 400,
            block_max_chars: 1000,
            block_idle: Duration::from_millis(1500),
            permissions: PermissionPolicy::Relay,
            permission_timeout: Duration::from_millis(300_000),
            show_tool_calls: ToolCallDisplay::Off,
            agent: "default".into(),
            turn_timeout: Duration::from_millis(1_800_000),
            max_backlog_age: Duration::from_secs(86_400),
            evict_idle_after: Duration::from_secs(1800),
            extra: VecMap::new(),
            warnings: Vec::new(),
        };
        assert_eq!(c, expected);
    }

    #[test]
    fn empty_file_object_has_no_channels_and_the_default_agent() {
        let config = match parse_with("{}", &[]) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert!(config.channels.is_empty());
        assert_eq!(config.agents.keys().collect::<Vec<_>>(), vec!["default"]);
        let config = match parse_with(r#"{"channels": null, "agent": null, "env": null}"#, &[]) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert!(config.channels.is_empty());
        assert_eq!(config.agents["default"].command, "qwen");
    }

    #[test]
    fn null_and_empty_string_mean_default() {
        // Qwen applied `value || default`; each of these must parse to the defaults.
        let cases = [
            r#""senderPolicy": null, "sessionScope": null, "groupPolicy": null, "dispatchMode": null"#,
            r#""senderPolicy": "", "sessionScope": "", "groupPolicy": "", "dispatchMode": """#,
            r#""permissions": "", "showToolCalls": null, "blockStreaming": "", "agent": """#,
            r#""allowedUsers": null, "groups": null, "cwd": null, "model": null, "instructions": null"#,
            r#""cwd": "", "model": "", "apiBase": "", "baseUrl": null"#,
            r#""blockStreamingChunk": null, "blockStreamingCoalesce": null, "approvalMode": null"#,
            r#""blockStreamingChunk": {"minChars": null, "maxChars": null}, "blockStreamingCoalesce": {"idleMs": null}"#,
            r#""permissionTimeoutMs": null, "turnTimeoutMs": null"#,
        ];
        let defaults = phone("");
        for extra in cases {
            assert_eq!(phone(extra), defaults, "{extra}");
        }
    }

    #[test]
    fn enum_values_are_read() {
        type Check = fn(&ChannelConfig) -> bool;
        let cases: [(&str, Check); 12] = [
            (r#""senderPolicy": "open""#, |c| c.sender_policy == SenderPolicy::Open),
            (r#""senderPolicy": "pairing""#, |c| c.sender_policy == SenderPolicy::Pairing),
            (r#""sessionScope": "thread""#, |c| c.session_scope == SessionScope::Thread),
            (r#""sessionScope": "single""#, |c| c.session_scope == SessionScope::Single),
            (r#""groupPolicy": "open""#, |c| c.group_policy == GroupPolicy::Open),
            (r#""dispatchMode": "collect""#, |c| c.dispatch_mode == DispatchMode::Collect),
            (r#""dispatchMode": "followup""#, |c| c.dispatch_mode == DispatchMode::Followup),
            (r#""blockStreaming": "off""#, |c| !c.block_streaming),
            (r#""permissions": "allow""#, |c| c.permissions == PermissionPolicy::Allow),
            (r#""permissions": "deny""#, |c| c.permissions == PermissionPolicy::Deny),
            (r#""showToolCalls": "brief""#, |c| c.show_tool_calls == ToolCallDisplay::Brief),
            (r#""approvalMode": "yolo""#, |c| c.approval_mode.as_deref() == Some("yolo")),
        ];
        for (extra, check) in cases {
            assert!(check(&phone(extra)), "{extra}");
        }
    }

    #[test]
    fn errors_display_file_channel_key_and_fix() {
        let p = FILE;
        let cases: Vec<(String, String)> = vec![
            // Enum values.
            (
                telegram(r#""senderPolicy": "allowList""#),
                format!(
                    r#"{p}: channel "phone", key "senderPolicy": "allowList" is not one of: allowlist, pairing, open"#
                ),
            ),
            (
                telegram(r#""sessionScope": "chat-thread""#),
                format!(
                    r#"{p}: channel "phone", key "sessionScope": "chat-thread" is not one of: user, thread, single, chat_thread"#
                ),
            ),
            (
                telegram(r#""groupPolicy": "paired""#),
                format!(
                    r#"{p}: channel "phone", key "groupPolicy": "paired" is not one of: disabled, allowlist, open, pairing"#
                ),
            ),
            (
                telegram(r#""dispatchMode": "queue""#),
                format!(r#"{p}: channel "phone", key "dispatchMode": "queue" is not one of: steer, collect, followup"#),
            ),
            (
                telegram(r#""blockStreaming": "yes""#),
                format!(r#"{p}: channel "phone", key "blockStreaming": "yes" is not one of: on, off"#),
            ),
            (
                telegram(r#""permissions": "ask""#),
                format!(r#"{p}: channel "phone", key "permissions": "ask" is not one of: relay, allow, deny"#),
            ),
            (
                telegram(r#""showToolCalls": "full""#),
                format!(r#"{p}: channel "phone", key "showToolCalls": "full" is not one of: off, brief"#),
            ),
            (
                telegram(r#""groups": {"-100123": {"dispatchMode": "later"}}"#),
                format!(
                    r#"{p}: channel "phone", key "groups.-100123.dispatchMode": "later" is not one of: steer, collect, followup"#
                ),
            ),
            // Wrong types.
            (
                telegram(r#""senderPolicy": 3"#),
                format!(r#"{p}: channel "phone", key "senderPolicy": expected a string, found number 3"#),
            ),
            (
                telegram(r#""blockStreaming": true"#),
                format!(r#"{p}: channel "phone", key "blockStreaming": expected a string, found boolean true"#),
            ),
            (
                telegram(r#""token": 12345"#),
                format!(r#"{p}: channel "phone", key "token": expected a string, found number 12345"#),
            ),
            (
                telegram(r#""cwd": ["/a"]"#),
                format!(r#"{p}: channel "phone", key "cwd": expected a string, found an array"#),
            ),
            (
                telegram(r#""allowedUsers": "123""#),
                format!(
                    r#"{p}: channel "phone", key "allowedUsers": expected an array of user ids, found string "123""#
                ),
            ),
            (
                telegram(r#""allowedUsers": ["1", 2.5]"#),
                format!(
                    r#"{p}: channel "phone", key "allowedUsers[1]": expected a user id (string or integer), found number 2.5"#
                ),
            ),
            (
                telegram(r#""groups": ["-100"]"#),
                format!(r#"{p}: channel "phone", key "groups": expected an object, found an array"#),
            ),
            (
                telegram(r#""groups": {"-100": true}"#),
                format!(r#"{p}: channel "phone", key "groups.-100": expected an object, found boolean true"#),
            ),
            (
                telegram(r#""groups": {"*": {"requireMention": "no"}}"#),
                format!(
                    r#"{p}: channel "phone", key "groups.*.requireMention": expected true or false, found string "no""#
                ),
            ),
            (
                telegram(r#""permissionTimeoutMs": 0"#),
                format!(
                    r#"{p}: channel "phone", key "permissionTimeoutMs": expected a positive integer, found number 0"#
                ),
            ),
            (
                telegram(r#""turnTimeoutMs": -5"#),
                format!(r#"{p}: channel "phone", key "turnTimeoutMs": expected a positive integer, found number -5"#),
            ),
            (
                telegram(r#""turnTimeoutMs": "60000""#),
                format!(
                    r#"{p}: channel "phone", key "turnTimeoutMs": expected a positive integer, found string "60000""#
                ),
            ),
            (
                telegram(r#""blockStreamingChunk": {"minChars": 1.5}"#),
                format!(
                    r#"{p}: channel "phone", key "blockStreamingChunk.minChars": expected a positive integer, found number 1.5"#
                ),
            ),
            (
                telegram(r#""blockStreamingChunk": {"minChars": 500, "maxChars": 100}"#),
                format!(
                    r#"{p}: channel "phone", key "blockStreamingChunk": minChars (500) is larger than maxChars (100)"#
                ),
            ),
            (
                telegram(r#""blockStreamingChunk": {"minChars": 1001}"#),
                format!(
                    r#"{p}: channel "phone", key "blockStreamingChunk": minChars (1001) is larger than maxChars (1000)"#
                ),
            ),
            (
                telegram(r#""blockStreamingCoalesce": {"idleMs": "soon"}"#),
                format!(
                    r#"{p}: channel "phone", key "blockStreamingCoalesce.idleMs": expected an integer, found string "soon""#
                ),
            ),
            (
                telegram(r#""blockStreamingCoalesce": 1500"#),
                format!(r#"{p}: channel "phone", key "blockStreamingCoalesce": expected an object, found number 1500"#),
            ),
            // Type and required secrets.
            (
                r#"{"channels": {"phone": {"token": "x"}}}"#.into(),
                // Every registered platform is listed (one line per platform in adapters::PLATFORMS).
                format!(
                    r#"{p}: channel "phone", key "type": missing: every channel needs a "type", one of: {}"#,
                    crate::adapters::PLATFORMS.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
                ),
            ),
            (
                r#"{"channels": {"phone": {"type": "slack"}}}"#.into(),
                format!(
                    r#"{p}: channel "phone", key "type": "slack" is not a platform this build has; it has: {}"#,
                    crate::adapters::PLATFORMS.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
                ),
            ),
            (
                r#"{"channels": {"phone": {"type": "telegram"}}}"#.into(),
                format!(
                    r#"{p}: channel "phone", key "token": required for type telegram: put your bot token here, or "$TELEGRAM_BOT_TOKEN" to read it from the environment"#
                ),
            ),
            (
                r#"{"channels": {"phone": {"type": "telegram", "token": ""}}}"#.into(),
                format!(
                    r#"{p}: channel "phone", key "token": required for type telegram: put your bot token here, or "$TELEGRAM_BOT_TOKEN" to read it from the environment"#
                ),
            ),
            // Agents.
            (
                telegram(r#""agent": "claude""#),
                format!(
                    r#"{p}: channel "phone", key "agent": unknown agent "claude"; known agents: default (define it under "agents")"#
                ),
            ),
            (
                r#"{"agents": {"default": {"command": "x"}}}"#.into(),
                format!(
                    r#"{p}: key "agents.default": the name "default" is reserved for the top-level "agent": rename this agent, or move it to "agent""#
                ),
            ),
            (
                r#"{"agents": {"gemini": {"args": ["--experimental-acp"]}}}"#.into(),
                format!(
                    r#"{p}: key "agents.gemini.command": required: the program to start, e.g. "gemini" (with "args" such as ["--experimental-acp"])"#
                ),
            ),
            (
                r#"{"agents": {"gemini": "gemini"}}"#.into(),
                format!(r#"{p}: key "agents.gemini": expected an object, found string "gemini""#),
            ),
            (
                r#"{"agent": {"group": "agents"}}"#.into(),
                format!(r#"{p}: key "agent.group": needs "user" too: the agent runs as that user, in this group"#),
            ),
            (
                r#"{"agent": {"args": "--acp"}}"#.into(),
                format!(r#"{p}: key "agent.args": expected an array of strings, found string "--acp""#),
            ),
            (
                r#"{"agent": {"args": ["--acp", 1]}}"#.into(),
                format!(r#"{p}: key "agent.args[1]": expected a string, found number 1"#),
            ),
            (
                r#"{"agent": {"env": {"DEBUG": 1}}}"#.into(),
                format!(r#"{p}: key "agent.env.DEBUG": expected a string, found number 1"#),
            ),
            (
                r#"{"agent": {"startupTimeoutMs": 0}}"#.into(),
                format!(r#"{p}: key "agent.startupTimeoutMs": expected a positive integer, found number 0"#),
            ),
            (r#"{"agent": "qwen"}"#.into(), format!(r#"{p}: key "agent": expected an object, found string "qwen""#)),
            // Top level.
            (r#"{"env": {"A": true}}"#.into(), format!(r#"{p}: key "env.A": expected a string, found boolean true"#)),
            (r#"{"channels": []}"#.into(), format!(r#"{p}: key "channels": expected an object, found an array"#)),
            (
                r#"{"channels": {"phone": "telegram"}}"#.into(),
                format!(r#"{p}: channel "phone": expected an object, found string "telegram""#),
            ),
            (
                "[1, 2]".into(),
                format!(r#"{p}: the file must hold one JSON object ({{ "channels": ... }}), found an array"#),
            ),
            (
                "{\n  \"channels\": {\n    \"a\": 1,\n  }\n}".into(),
                format!("{p}: not valid JSON: trailing comma at line 4 column 3"),
            ),
            ("".into(), format!("{p}: not valid JSON: EOF while parsing a value at line 1 column 0")),
        ];
        for (text, expected) in cases {
            assert_eq!(error_text(&text, &[]), expected, "{text}");
        }
    }

    #[test]
    fn error_fields_are_structured() {
        let err = match parse_with(&telegram(r#""groups": {"-100123": {"dispatchMode": 7}}"#), &[]) {
            Ok(c) => panic!("{c:?}"),
            Err(e) => e,
        };
        assert_eq!(err.path, PathBuf::from(FILE));
        assert_eq!(err.channel.as_deref(), Some("phone"));
        assert_eq!(err.key.as_deref(), Some("groups.-100123.dispatchMode"));
        assert_eq!(err.message, "expected a string, found number 7");
    }

    #[test]
    fn env_var_expansion() {
        // (token as written, process environment, file env section, expected value and
        // variable, or the expected error message)
        type Expected = Result<(&'static str, Option<&'static str>), &'static str>;
        type Env = &'static [(&'static str, &'static str)];
        let cases: [(&str, Env, &str, Expected); 9] = [
            ("$TOKEN", &[("TOKEN", "proc")], "{}", Ok(("proc", Some("TOKEN")))),
            ("$TOKEN", &[("TOKEN", "proc")], r#"{"TOKEN": "file"}"#, Ok(("file", Some("TOKEN")))),
            // An empty entry in the file falls back to the process environment.
            ("$TOKEN", &[("TOKEN", "proc")], r#"{"TOKEN": ""}"#, Ok(("proc", Some("TOKEN")))),
            ("abc$X", &[("X", "never")], "{}", Ok(("abc$X", None))),
            ("$X/extra", &[("X/extra", "whole-name"), ("X", "prefix")], "{}", Ok(("whole-name", Some("X/extra")))),
            (
                "${X}",
                &[("X", "v")],
                "{}",
                Err(
                    "environment variable {X} is not set (referenced as ${X}): set it, or put it in the \"env\" section of /etc/tether/config.json",
                ),
            ),
            (
                "$TOKEN",
                &[],
                "{}",
                Err(
                    "environment variable TOKEN is not set (referenced as $TOKEN): set it, or put it in the \"env\" section of /etc/tether/config.json",
                ),
            ),
            (
                "$TOKEN",
                &[("TOKEN", "")],
                r#"{"TOKEN": ""}"#,
                Err(
                    "environment variable TOKEN is not set (referenced as $TOKEN): set it, or put it in the \"env\" section of /etc/tether/config.json",
                ),
            ),
            (
                "$",
                &[],
                "{}",
                Err(
                    "\"$\" alone names no variable: write \"$NAME\" to read NAME from the environment, or the value itself",
                ),
            ),
        ];
        for (written, process, file_env, expected) in cases {
            let text = format!(
                r#"{{"env": {file_env}, "channels": {{"phone": {{"type": "telegram", "token": {}}}}}}}"#,
                Value::String(written.into())
            );
            let got = parse_with(&text, process);
            match (got, expected) {
                (Ok(config), Ok((value, from_env))) => {
                    let phone = channel(&config, "phone");
                    let token = phone.secret("token");
                    assert_eq!(token.map(Secret::expose), Some(value), "{written}");
                    assert_eq!(token.and_then(|t| t.from_env.as_deref()), from_env, "{written}");
                }
                (Err(e), Err(message)) => {
                    assert_eq!(e.key.as_deref(), Some("token"), "{written}");
                    assert_eq!(e.message, message, "{written}");
                }
                (got, expected) => panic!("{written}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn env_var_expansion_applies_only_to_credentials() {
        let text = r#"{"channels": {"tg": {"type": "telegram", "token": "$ID", "apiBase": "$URL",
            "cwd": "/srv/$HOME", "instructions": "$NOT", "model": "$MODEL"},
            "web": {"type": "webchat", "token": "$SECRET", "allowedUsers": ["$U"]}}}"#;
        let env = [("ID", "id-1"), ("SECRET", "s-2"), ("MODEL", "m"), ("URL", "https://x")];
        let error = match parse_with(text, &env) {
            Ok(c) => panic!("{c:?}"),
            Err(e) => e,
        };
        // Only credentials are expanded: "$URL" stays itself, which is not a URL.
        assert_eq!(error.key.as_deref(), Some("apiBase"));
        let config = match parse_with(&text.replace("\"$URL\"", "null"), &env) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let tg = channel(&config, "tg");
        assert_eq!(tg.secret("token"), Some(&Secret::new("id-1".into(), Some("ID".into()))));
        assert_eq!(tg.cwd, PathBuf::from("/srv/$HOME"));
        assert_eq!(tg.instructions.as_deref(), Some("$NOT"));
        assert_eq!(tg.model.as_deref(), Some("$MODEL"));
        assert_eq!(tg.secrets().map(Secret::expose).collect::<Vec<_>>(), vec!["id-1"]);
        let web = channel(&config, "web");
        assert_eq!(web.allowed_users, vec!["$U".to_string()]);
        assert_eq!(web.secrets().map(Secret::expose).collect::<Vec<_>>(), vec!["s-2"]);
    }

    #[test]
    fn cwd_resolution() {
        let cases = [
            (r#""cwd": "~""#, "/home/ann"),
            (r#""cwd": "~/""#, "/home/ann"),
            (r#""cwd": "~/code/app""#, "/home/ann/code/app"),
            (r#""cwd": "project""#, "/srv/start/project"),
            (r#""cwd": "./project/""#, "/srv/start/project"),
            (r#""cwd": "../other""#, "/srv/start/../other"),
            (r#""cwd": "~bob/x""#, "/srv/start/~bob/x"),
            (r#""cwd": "/abs/./path""#, "/abs/path"),
            (r#""cwd": null"#, "/srv/start"),
        ];
        for (extra, expected) in cases {
            assert_eq!(phone(extra).cwd, PathBuf::from(expected), "{extra}");
        }
    }

    #[test]
    fn cwd_tilde_without_home_is_an_error() {
        let lookup = |_: &str| None;
        let cx = ParseContext {
            path: Path::new(FILE),
            cwd: Path::new("/srv"),
            home: None,
            env: &lookup,
            platforms: crate::adapters::PLATFORMS,
        };
        let err = match parse(&telegram(r#""cwd": "~/x""#), &cx) {
            Ok(c) => panic!("{c:?}"),
            Err(e) => e,
        };
        assert_eq!(
            err.to_string(),
            format!(
                r#"{FILE}: channel "phone", key "cwd": "~/x" starts with ~ but HOME is not set: write an absolute path"#
            )
        );
    }

    #[test]
    fn groups_merge_specific_over_wildcard_key_by_key() {
        let c = phone(
            r#""dispatchMode": "followup", "groupHistoryLimit": 50, "groups": {
                "*": {"requireMention": false, "dispatchMode": "collect"},
                "-1": {"requireMention": true},
                "-2": {"dispatchMode": "steer"},
                "-3": {"groupHistoryLimit": 5},
                "-4": null,
                "-5": {"groupHistoryLimit": 0}
            }"#,
        );
        let cases = [
            ("-1", true, DispatchMode::Collect, 50),
            ("-2", false, DispatchMode::Steer, 50),
            ("-3", false, DispatchMode::Collect, 5),
            ("-4", false, DispatchMode::Collect, 50),
            ("-5", false, DispatchMode::Collect, 0),
            ("-999", false, DispatchMode::Collect, 50),
        ];
        for (chat, require_mention, dispatch_mode, history_limit) in cases {
            assert_eq!(c.group(chat), GroupSettings { require_mention, dispatch_mode, history_limit }, "{chat}");
        }
        // No "*": the built-in defaults (mention required; the channel's dispatch mode).
        let c = phone(r#""dispatchMode": "followup", "groups": {"-1": {"requireMention": false}}"#);
        let cases = [("-1", false, DispatchMode::Followup), ("-2", true, DispatchMode::Followup)];
        for (chat, require_mention, dispatch_mode) in cases {
            assert_eq!(c.group(chat), GroupSettings { require_mention, dispatch_mode, history_limit: 0 }, "{chat}");
        }
    }

    #[test]
    fn named_agents_and_agent_defaults() {
        let text = r#"{
          "agent": {"command": "/opt/qwen", "env": {"A": "1"}, "startupTimeoutMs": 5000},
          "agents": {"gemini": {"command": "gemini", "args": ["--experimental-acp"]}, "bare": {"command": "x"}},
          "channels": {"a": {"type": "webchat", "agent": "gemini"}, "b": {"type": "webchat"}}
        }"#;
        let config = match parse_with(text, &[]) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let default = &config.agents["default"];
        assert_eq!(default.command, "/opt/qwen");
        // A command other than the default gets no default args.
        assert!(default.args.is_empty());
        assert_eq!(default.env, VecMap::from_iter([("A".to_string(), "1".to_string())]));
        assert_eq!(default.startup_timeout, Duration::from_secs(5));
        assert!(config.agents["bare"].args.is_empty());
        assert_eq!(config.agents["bare"].startup_timeout, Duration::from_secs(30));
        assert_eq!(channel(&config, "a").agent, "gemini");
        assert_eq!(channel(&config, "b").agent, "default");
        let err = error_text(
            r#"{"agents": {"gemini": {"command": "gemini"}}, "channels": {"a": {"type": "webchat", "agent": "claude"}}}"#,
            &[],
        );
        assert!(
            err.ends_with(r#"unknown agent "claude"; known agents: default, gemini (define it under "agents")"#),
            "{err}"
        );
        // Default args with the default command, and explicit args win.
        let config = match parse_with(r#"{"agent": {"args": ["--acp", "--debug"]}}"#, &[]) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(config.agents["default"].command, "qwen");
        assert_eq!(config.agents["default"].args, vec!["--acp".to_string(), "--debug".to_string()]);
    }

    #[test]
    fn api_base_defaults_aliases_and_trailing_slash() {
        let tg = r#""type": "telegram", "token": "t""#;
        let cases = [
            (String::new(), Ok("https://api.telegram.org")),
            (r#", "baseUrl": "https://proxy.example/tg/""#.into(), Ok("https://proxy.example/tg")),
            (r#", "apiBase": "http://127.0.0.1:9000//""#.into(), Ok("http://127.0.0.1:9000")),
            (r#", "apiBase": "http://a/", "baseUrl": "http://a""#.into(), Ok("http://a")),
            (
                r#", "apiBase": "http://a", "baseUrl": "http://b""#.into(),
                Err(
                    r#"channel "c", key "apiBase": "baseUrl" is also set, to a different URL ("http://b"): keep only one of the two"#,
                ),
            ),
            (
                r#", "baseUrl": "api.telegram.org""#.into(),
                Err(
                    r#"channel "c", key "baseUrl": "api.telegram.org" is not a URL starting with http:// or https://, e.g. "https://api.telegram.org""#,
                ),
            ),
            (
                r#", "apiBase": "https:///""#.into(),
                Err(
                    r#"channel "c", key "apiBase": "https:///" is not a URL starting with http:// or https://, e.g. "https://api.telegram.org""#,
                ),
            ),
        ];
        for (keys, expected) in cases {
            let keys = format!("{tg}{keys}");
            let text = format!(r#"{{"channels": {{"c": {{{keys}}}}}}}"#);
            match (parse_with(&text, &[]), expected) {
                (Ok(config), Ok(base)) => {
                    assert_eq!(channel(&config, "c").setting("apiBase"), Some(base), "{keys}")
                }
                (Err(e), Err(message)) => {
                    assert_eq!(e.to_string(), format!("{FILE}: {message}"), "{keys}")
                }
                (got, expected) => panic!("{keys}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn max_backlog_age_takes_seconds_or_a_unit() {
        let day = Duration::from_secs(86_400);
        let cases = [
            (r#""maxBacklogAge": 3600"#, Ok(Duration::from_secs(3600))),
            (r#""maxBacklogAge": "90s""#, Ok(Duration::from_secs(90))),
            (r#""maxBacklogAge": "30m""#, Ok(Duration::from_secs(1800))),
            (r#""maxBacklogAge": "48h""#, Ok(Duration::from_secs(2 * 86_400))),
            (r#""maxBacklogAge": " 7d ""#, Ok(Duration::from_secs(7 * 86_400))),
            (r#""maxBacklogAge": null"#, Ok(day)),
            (r#""maxBacklogAge": """#, Ok(day)),
            (r#""maxBacklogAge": 0"#, Err("found number 0")),
            (r#""maxBacklogAge": "0h""#, Err(r#"found string "0h""#)),
            (r#""maxBacklogAge": -5"#, Err("found number -5")),
            (r#""maxBacklogAge": 1.5"#, Err("found number 1.5")),
            (r#""maxBacklogAge": "24 hours""#, Err(r#"found string "24 hours""#)),
            (r#""maxBacklogAge": "h""#, Err(r#"found string "h""#)),
            (r#""maxBacklogAge": "99999999999999999999d""#, Err("99999999999999999999d")),
            (r#""maxBacklogAge": true"#, Err("found boolean true")),
        ];
        for (extra, expected) in cases {
            match (parse_with(&telegram(extra), &[]), expected) {
                (Ok(config), Ok(age)) => assert_eq!(channel(&config, "phone").max_backlog_age, age, "{extra}"),
                (Err(e), Err(found)) => {
                    let e = e.to_string();
                    assert!(
                        e.starts_with(&format!(
                            r#"{FILE}: channel "phone", key "maxBacklogAge": expected a duration such as "24h""#
                        )),
                        "{extra}: {e}"
                    );
                    assert!(e.contains(found), "{extra}: {e}");
                }
                (got, expected) => panic!("{extra}: got {got:?}, expected {expected:?}"),
            }
        }
        assert_eq!(phone("").max_backlog_age, day);
    }

    #[test]
    fn allowed_users_accept_numbers_as_decimal_strings() {
        let c = phone(r#""allowedUsers": ["42", 123456789, -1001234567890, 18446744073709551615]"#);
        assert_eq!(c.allowed_users, vec!["42", "123456789", "-1001234567890", "18446744073709551615"]);
    }

    #[test]
    fn block_streaming_settings() {
        let cases = [
            (r#""blockStreamingChunk": {"minChars": 10}"#, 10, 1000, 1500),
            (r#""blockStreamingChunk": {"maxChars": 4000}"#, 400, 4000, 1500),
            (r#""blockStreamingChunk": {"minChars": 50, "maxChars": 50}"#, 50, 50, 1500),
            (r#""blockStreamingCoalesce": {"idleMs": 250}"#, 400, 1000, 250),
            (r#""blockStreamingCoalesce": {"idleMs": 0}"#, 400, 1000, 0),
            (r#""blockStreamingCoalesce": {"idleMs": -1}"#, 400, 1000, 0),
            (r#""blockStreamingCoalesce": {}"#, 400, 1000, 1500),
        ];
        for (extra, min, max, idle_ms) in cases {
            let c = phone(extra);
            assert_eq!(
                (c.block_min_chars, c.block_max_chars, c.block_idle),
                (min, max, Duration::from_millis(idle_ms)),
                "{extra}"
            );
        }
        assert!(phone(r#""blockStreaming": "on""#).block_streaming);
    }

    #[test]
    fn listen_address_and_webchat_token() {
        let cases = [
            (r#""type": "webchat""#, Ok("127.0.0.1:8787")),
            (r#""type": "webchat", "listen": "127.0.0.1:0""#, Ok("127.0.0.1:0")),
            (r#""type": "webchat", "listen": "[::1]:9000""#, Ok("[::1]:9000")),
            (r#""type": "webchat", "listen": "0.0.0.0:8787", "token": "t""#, Ok("0.0.0.0:8787")),
            (
                r#""type": "webchat", "listen": "0.0.0.0:8787""#,
                Err(
                    r#"channel "c", key "token": required because "listen" (0.0.0.0:8787) is not a loopback address: anyone who can reach it could drive the agent. Set a token (or "$VAR"), or listen on 127.0.0.1:8787"#,
                ),
            ),
            (
                r#""type": "webchat", "listen": "localhost:8787""#,
                Err(
                    r#"channel "c", key "listen": "localhost:8787" is not an IP address and port such as 127.0.0.1:8787 (host names are not accepted)"#,
                ),
            ),
            (
                r#""type": "webchat", "listen": 8787"#,
                Err(r#"channel "c", key "listen": expected a string, found number 8787"#),
            ),
        ];
        for (keys, expected) in cases {
            let text = format!(r#"{{"channels": {{"c": {{{keys}}}}}}}"#);
            match (parse_with(&text, &[]), expected) {
                (Ok(config), Ok(listen)) => {
                    assert_eq!(channel(&config, "c").setting("listen"), Some(listen), "{keys}")
                }
                (Err(e), Err(message)) => {
                    assert_eq!(e.to_string(), format!("{FILE}: {message}"), "{keys}")
                }
                (got, expected) => panic!("{keys}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn channel_names() {
        let message = "a channel name must be non-empty and use only ASCII letters, digits, - and _ (it is used in file names): rename it, e.g. \"my-telegram\"";
        let cases = [
            ("my-telegram", true),
            ("Chat_2", true),
            ("", false),
            ("my telegram", false),
            ("../etc", false),
            ("a/b", false),
            ("a.b", false),
            ("téléphone", false),
        ];
        for (name, valid) in cases {
            let text = format!(r#"{{"channels": {{{}: {{"type": "webchat"}}}}}}"#, Value::String(name.into()));
            match parse_with(&text, &[]) {
                Ok(config) => {
                    assert!(valid, "{name:?} was accepted");
                    assert_eq!(channel(&config, name).name, name);
                }
                Err(e) => {
                    assert!(!valid, "{name:?}: {e}");
                    assert_eq!(e.to_string(), format!("{FILE}: channel \"{name}\": {message}"));
                }
            }
        }
    }

    #[test]
    fn unknown_channel_keys_are_kept_in_extra() {
        let c = phone(r#""useConnectionManager": false, "interactiveCards": {"enabled": true}, "model": "m""#);
        assert_eq!(
            c.extra,
            VecMap::from_iter([
                ("interactiveCards".to_string(), serde_json::json!({"enabled": true})),
                ("useConnectionManager".to_string(), serde_json::json!(false)),
            ])
        );
        // The platform's keys, including the alias, never land in extra; another platform's do.
        let c = phone(r#""baseUrl": "https://x", "listen": "127.0.0.1:1""#);
        assert_eq!(c.extra, VecMap::from_iter([("listen".to_string(), serde_json::json!("127.0.0.1:1"))]));
    }

    #[test]
    fn a_type_this_build_lacks_names_the_ones_it_has() {
        let error = error_text(r#"{"channels": {"c": {"type": "carrier-pigeon"}}}"#, &[]);
        let names: Vec<&str> = crate::adapters::PLATFORMS.iter().map(|p| p.name).collect();
        assert_eq!(
            error,
            format!(
                r#"{FILE}: channel "c", key "type": "carrier-pigeon" is not a platform this build has; it has: {}"#,
                names.join(", ")
            )
        );
    }

    #[test]
    fn secrets_never_print_whole() {
        let secret_value = "123456:ABCdefGHIjklMNOpqr";
        let cases = [
            (Secret::new(secret_value.into(), None), "*** (25 chars)"),
            (
                Secret::new(secret_value.into(), Some("TELEGRAM_BOT_TOKEN".into())),
                "$TELEGRAM_BOT_TOKEN (set, 25 chars)",
            ),
            (Secret::new("abcdefgh".into(), None), "*** (8 chars)"),
            (Secret::new("é".into(), Some("E".into())), "$E (set, 1 chars)"),
        ];
        for (secret, masked) in cases {
            assert_eq!(secret.masked(), masked);
            assert!(!secret.masked().contains(secret.expose()), "{masked}");
            let head: String = secret.expose().chars().take(2).collect();
            assert!(!secret.masked().contains(&head), "no first characters: {masked}");
            assert_eq!(format!("{secret:?}"), "Secret(***)");
        }
        // Neither Debug of a whole config nor an error shows the value.
        let config = match parse_with(&telegram(""), &[]) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert!(!format!("{config:?}").contains("123:abc"));
        let text = format!(
            r#"{{"channels": {{"p": {{"type": "telegram", "token": "{secret_value}", "dispatchMode": "x"}}}}}}"#
        );
        assert!(!error_text(&text, &[]).contains(secret_value));
    }

    #[test]
    fn audit_enabled_and_allowed_channel_types() {
        use crate::audit::{AuditConfig, Content};
        let config = parse_with(
            r#"{"audit": {"path": "logs/audit.jsonl", "content": "hash", "maxFiles": 3},
                "allowedChannelTypes": ["telegram", "webchat"],
                "channels": {"phone": {"type": "telegram", "token": "123:abc", "enabled": false},
                             "web": {"type": "webchat"}}}"#,
            &[],
        )
        .unwrap();
        let expected = AuditConfig {
            path: PathBuf::from("/srv/start/logs/audit.jsonl"),
            content: Content::Hash,
            max_bytes: crate::audit::DEFAULT_MAX_BYTES,
            max_files: 3,
        };
        assert_eq!(config.audit, Some(expected));
        assert_eq!(config.disabled.iter().collect::<Vec<_>>(), ["phone"]);
        assert_eq!(config.channels.len(), 2, "a disabled channel stays configured");
        let off = parse_with(&telegram(""), &[]).unwrap();
        assert_eq!((off.audit, off.disabled.len(), off.allowed_channel_types), (None, 0, None));

        let p = FILE;
        let cases = [
            (
                r#"{"allowedChannelTypes": ["webchat"], "channels": {"phone": {"type": "telegram", "token": "1:a"}}}"#,
                format!(
                    r#"{p}: channel "phone", key "type": "telegram" is not in "allowedChannelTypes" [webchat]: add it there, or remove this channel"#
                ),
            ),
            (
                r#"{"allowedChannelTypes": ["slack"]}"#,
                format!(r#"{p}: key "allowedChannelTypes": "slack" is not a platform this build has; it has: "#),
            ),
            (
                r#"{"audit": {"content": "full"}}"#,
                format!(r#"{p}: key "audit.path": required: the audit log's file, e.g. "/var/log/tether/audit.jsonl""#),
            ),
            (r#"{"audit": {"path": "/a", "content": "some"}}"#, format!(r#"{p}: key "audit.content": "#)),
            (
                r#"{"channels": {"web": {"type": "webchat", "enabled": "no"}}}"#,
                format!(r#"{p}: channel "web", key "enabled": expected true or false"#),
            ),
        ];
        for (text, expected) in cases {
            let error = error_text(text, &[]);
            assert!(error.starts_with(&expected), "{error}\nexpected: {expected}");
        }
    }

    /// A settings.json written as Qwen Code 0.24's channel docs show it: every key of the
    /// options table, and a Telegram, a WeChat and a DingTalk channel.
    const QWEN_024_SETTINGS: &str = r#"{
      "env": {"DINGTALK_CLIENT_ID": "ding-id", "DINGTALK_CLIENT_SECRET": "ding-secret"},
      "channels": {
        "my-telegram": {
          "type": "telegram",
          "token": "$MY_BOT_TOKEN",
          "model": "qwen3.5-plus",
          "senderPolicy": "allowlist",
          "allowedUsers": ["123456789"],
          "sessionScope": "user",
          "cwd": "/path/to/working/directory",
          "instructions": "Optional system instructions for the agent.",
          "groupPolicy": "disabled",
          "dmPolicy": "open",
          "groupHistoryLimit": 0,
          "groups": {"*": {"requireMention": true}, "-100123456": {"requireMention": false, "dispatchMode": "collect"}},
          "dispatchMode": "steer",
          "blockStreaming": "on",
          "blockStreamingChunk": {"minChars": 400, "maxChars": 1000},
          "blockStreamingCoalesce": {"idleMs": 1500}
        },
        "my-weixin": {"type": "weixin", "baseUrl": "https://ilinkai.weixin.qq.com", "sessionScope": "chat_thread", "dmPolicy": "open"},
        "my-dingtalk": {
          "type": "dingtalk",
          "clientId": "$DINGTALK_CLIENT_ID",
          "clientSecret": "$DINGTALK_CLIENT_SECRET",
          "groupPolicy": "open",
          "groupHistoryLimit": 50,
          "dmPolicy": "disabled",
          "groups": {"*": {"requireMention": true}, "sensitive-group-id": {"requireMention": true, "groupHistoryLimit": 0}}
        }
      }
    }"#;

    #[test]
    fn qwen_024_documented_settings_parse_with_every_key_honoured() {
        let platforms = crate::adapters::PLATFORMS;
        let config = match parse_for_tests(QWEN_024_SETTINGS, platforms, &[("MY_BOT_TOKEN", "1:abc")]) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let tg = channel(&config, "my-telegram");
        assert_eq!(tg.secret("token").map(Secret::expose), Some("1:abc"));
        assert_eq!(tg.model.as_deref(), Some("qwen3.5-plus"));
        assert_eq!(
            (tg.sender_policy, tg.dm_policy, tg.group_policy),
            (SenderPolicy::Allowlist, DmPolicy::Open, GroupPolicy::Disabled)
        );
        assert_eq!(tg.allowed_users, ["123456789"]);
        assert_eq!(tg.session_scope, SessionScope::User);
        assert_eq!(tg.cwd, PathBuf::from("/path/to/working/directory"));
        assert_eq!(tg.instructions.as_deref(), Some("Optional system instructions for the agent."));
        assert_eq!(tg.group_history_limit, 0);
        assert_eq!(
            tg.group("-100123456"),
            GroupSettings { require_mention: false, dispatch_mode: DispatchMode::Collect, history_limit: 0 }
        );
        assert!(tg.block_streaming);
        assert_eq!((tg.block_min_chars, tg.block_max_chars, tg.block_idle), (400, 1000, Duration::from_millis(1500)));
        let wx = channel(&config, "my-weixin");
        assert_eq!(wx.session_scope, SessionScope::ChatThread);
        assert_eq!(wx.setting("baseUrl"), Some("https://ilinkai.weixin.qq.com"));
        let ding = channel(&config, "my-dingtalk");
        assert_eq!(ding.secret("clientSecret").map(Secret::expose), Some("ding-secret"));
        assert_eq!(ding.dm_policy, DmPolicy::Disabled);
        assert_eq!(ding.group("any").history_limit, 50);
        assert_eq!(ding.group("sensitive-group-id").history_limit, 0);
        // Nothing unknown, nothing to warn about, nothing left over.
        for c in config.channels.values() {
            assert_eq!((c.warnings.as_slice(), c.extra.len()), (&[] as &[String], 0), "{}", c.name);
        }
    }

    #[test]
    fn unknown_and_unsupported_keys_are_warned_about_never_silently_dropped() {
        let c = phone(
            r#""sendrPolicy": "open", "dmpolicy": "disabled", "outputMode": "final_only",
               "clientId": "x", "listen": "127.0.0.1:1", "zzzzzzzz": 1, "approvalMode": "yolo",
               "groupHistoryLimit": 5000, "groups": {"-1": {"requireMentoin": false}}"#,
        );
        let expected = [
            "`sendrPolicy`: unknown key; did you mean `senderPolicy`?",
            "`dmpolicy`: unknown key; did you mean `dmPolicy`?",
            "`outputMode`: a Qwen Code setting tether does not have; tether has no output modes: it sends the final answer, plus a line per tool call with \"showToolCalls\": \"brief\"",
            "`clientId`: a key of dingtalk and feishu channels, not of type telegram; ignored here",
            "`listen`: a key of webchat and webhook channels, not of type telegram; ignored here",
            "`zzzzzzzz`: unknown key; ignored",
            "`approvalMode` (\"yolo\"): tether does not pass it to the agent; it asks in the chat before a tool runs. Use \"permissions\": \"relay\" (default), \"allow\" (like yolo) or \"deny\"",
            "`groupHistoryLimit`: 5000 is more than tether keeps; using 200",
            "`groups.-1.requireMentoin`: unknown key; did you mean `requireMention`?",
        ];
        for line in expected {
            assert!(c.warnings.iter().any(|w| w == line), "missing {line:?} in {:#?}", c.warnings);
        }
        assert_eq!(c.warnings.len(), expected.len(), "{:#?}", c.warnings);
        // A typo is a warning, not a silent default: the channel still has the default.
        assert_eq!(c.sender_policy, SenderPolicy::Allowlist);
        assert_eq!(c.group_history_limit, MAX_GROUP_HISTORY);
    }

    #[test]
    fn dingtalk_keys_of_qwen_features_tether_lacks_are_warned_about() {
        let text = r#"{"channels": {"ding": {"type": "dingtalk", "clientId": "i", "clientSecret": "s",
            "useConnectionManager": true, "atSender": true, "interactiveCards": {"enabled": true}, "outputMode": "final_only"}}}"#;
        let config = match parse_with(text, &[]) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let warned: Vec<String> =
            channel(&config, "ding").warnings.iter().filter_map(|w| w.split('`').nth(1).map(str::to_string)).collect();
        assert_eq!(warned, ["atSender", "interactiveCards", "outputMode", "useConnectionManager"]);
    }

    #[test]
    fn closest_key_by_edit_distance() {
        let known = ["senderPolicy", "sessionScope", "dmPolicy", "groups", "cwd"];
        let cases = [
            ("sendrPolicy", Some("senderPolicy")),
            ("SenderPolicy", Some("senderPolicy")),
            ("sessionscope", Some("sessionScope")),
            ("group", Some("groups")),
            ("cwdd", Some("cwd")),
            ("xyz", None),
            ("completelyDifferent", None),
            ("", None),
        ];
        for (key, expected) in cases {
            assert_eq!(closest(key, &known), expected, "{key}");
        }
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("é", "e"), 1);
    }

    #[test]
    fn placeholders_and_non_numeric_telegram_ids_are_errors_that_say_how_to_find_an_id() {
        let cases = [
            (
                r#""allowedUsers": ["YOUR_TELEGRAM_USER_ID"]"#,
                "allowedUsers[0]",
                "\"YOUR_TELEGRAM_USER_ID\" is not a Telegram user id",
            ),
            (r#""allowedUsers": ["123", "@alice"]"#, "allowedUsers[1]", "\"@alice\" is not a Telegram user id"),
            (r#""allowedUsers": ["-"]"#, "allowedUsers[0]", "\"-\" is not a Telegram user id"),
        ];
        for (keys, key, start) in cases {
            let e = error_text(&telegram(keys), &[]);
            assert!(e.starts_with(&format!("{FILE}: channel \"phone\", key \"{key}\": {start}")), "{e}");
            assert!(e.contains("dropped message from <id>") && e.contains("@userinfobot"), "{e}");
        }
        // Any platform: an example's placeholder.
        for id in ["YOUR_USER_ID", "<your id>", "your-id-here"] {
            let text = format!(r#"{{"channels": {{"c": {{"type": "webchat", "allowedUsers": ["{id}"]}}}}}}"#);
            let e = error_text(&text, &[]);
            assert!(e.contains(&format!("key \"allowedUsers[0]\": \"{id}\" is a placeholder from an example")), "{e}");
            assert!(e.contains("dropped message from <id>"), "{e}");
        }
    }

    #[test]
    fn group_pairing_that_nobody_can_start_is_warned_about() {
        let warned = |keys: &str| phone(keys).warnings.iter().any(|w| w.starts_with("`groupPolicy` is \"pairing\""));
        assert!(warned(r#""groupPolicy": "pairing""#));
        assert!(!warned(r#""groupPolicy": "pairing", "allowedUsers": ["42"]"#));
        assert!(!warned(r#""groupPolicy": "pairing", "senderPolicy": "pairing""#));
        assert!(!warned(r#""groupPolicy": "open""#));
    }

    #[test]
    fn history_limits_and_dm_policy_values() {
        assert_eq!(phone(r#""groupHistoryLimit": 20"#).group_history_limit, 20);
        assert_eq!(phone(r#""groupHistoryLimit": null"#).group_history_limit, 0);
        let e = error_text(&telegram(r#""groupHistoryLimit": -1"#), &[]);
        assert!(
            e.ends_with("key \"groupHistoryLimit\": -1 is negative: write 0 (off) or how many messages to keep"),
            "{e}"
        );
        let e = error_text(&telegram(r#""groups": {"-1": {"groupHistoryLimit": "5"}}"#), &[]);
        assert!(e.ends_with("key \"groups.-1.groupHistoryLimit\": expected an integer, found string \"5\""), "{e}");
        assert_eq!(phone(r#""dmPolicy": "disabled""#).dm_policy, DmPolicy::Disabled);
        let e = error_text(&telegram(r#""dmPolicy": "off""#), &[]);
        assert!(e.ends_with("key \"dmPolicy\": \"off\" is not one of: open, disabled"), "{e}");
    }

    #[test]
    fn only_the_selected_channels_need_their_variables() {
        let text = r#"{"channels": {
            "a": {"type": "telegram", "token": "$A_TOKEN"},
            "b": {"type": "telegram", "token": "$B_TOKEN"}
        }}"#;
        let lookup = |name: &str| (name == "A_TOKEN").then(|| "1:a".to_string());
        let cx = ParseContext {
            path: Path::new(FILE),
            cwd: Path::new("/srv"),
            home: None,
            env: &lookup,
            platforms: crate::adapters::PLATFORMS,
        };
        let all = parse(text, &cx).unwrap_err().to_string();
        assert!(all.contains("channel \"b\", key \"token\": environment variable B_TOKEN is not set"), "{all}");
        let selected = ["a".to_string()];
        let config = match parse_selected(text, &cx, Some(&selected)) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(channel(&config, "a").secret("token").map(Secret::expose), Some("1:a"));
        assert_eq!(channel(&config, "b").secret("token").map(Secret::expose), Some(""));
        // Selecting none (the demo) needs none; other mistakes still count.
        assert!(parse_selected(text, &cx, Some(&[])).is_ok());
        let bad = text.replace("\"$B_TOKEN\"}", "\"$B_TOKEN\", \"dispatchMode\": \"x\"}");
        assert!(parse_selected(&bad, &cx, Some(&[])).is_err());
    }
}
