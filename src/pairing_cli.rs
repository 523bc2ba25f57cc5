//! `tether pairing`: the operator's side of pairing (users under `senderPolicy: pairing`,
//! groups under `groupPolicy: pairing`). Lists, approves and denies pending requests and
//! revokes approved users and groups by editing the channel's pairing files directly
//! (see `access_files`); a running service notices within a second, and tells an approved
//! sender they are paired. Output and exit codes follow Qwen Code's `qwen channel pairing`.

use std::path::Path;

use crate::access_files::AccessFiles;
use crate::config::{ChannelConfig, Config, GroupPolicy, SenderPolicy};
use crate::core::pairing::{PairingRequest, clean_name, normalize_code};
use crate::error::Error;

pub const USAGE: &str = "\
Usage:
  tether pairing list CHANNEL             pending pairing requests
  tether pairing approve CHANNEL CODE     let the sender (or group) of CODE use the channel (any case)
  tether pairing deny CHANNEL CODE        refuse a pending request
  tether pairing revoke CHANNEL ID        take a paired user's (or group's chat id) access away
  tether pairing allowed CHANNEL          who (and which groups) may use the channel
";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairingCommand {
    List { channel: String },
    Approve { channel: String, code: String },
    Deny { channel: String, code: String },
    Revoke { channel: String, user: String },
    Allowed { channel: String },
}

impl PairingCommand {
    pub fn channel(&self) -> &str {
        match self {
            PairingCommand::List { channel }
            | PairingCommand::Approve { channel, .. }
            | PairingCommand::Deny { channel, .. }
            | PairingCommand::Revoke { channel, .. }
            | PairingCommand::Allowed { channel } => channel,
        }
    }
}

/// Parse the words after `pairing`.
pub fn parse(words: &[String]) -> Result<PairingCommand, Error> {
    let usage = |problem: String| Error::Usage(format!("{problem}\n\n{USAGE}"));
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let command = match words.as_slice() {
        ["list", channel] => PairingCommand::List { channel: channel.to_string() },
        ["allowed", channel] => PairingCommand::Allowed { channel: channel.to_string() },
        ["approve", channel, code] => PairingCommand::Approve { channel: channel.to_string(), code: code.to_string() },
        ["deny", channel, code] => PairingCommand::Deny { channel: channel.to_string(), code: code.to_string() },
        ["revoke", channel, user] => PairingCommand::Revoke { channel: channel.to_string(), user: user.to_string() },
        [] => return Err(usage("`tether pairing` needs a subcommand".into())),
        [sub @ ("list" | "allowed"), ..] => return Err(usage(format!("`tether pairing {sub}` takes one CHANNEL"))),
        [sub @ ("approve" | "deny"), ..] => return Err(usage(format!("`tether pairing {sub}` takes CHANNEL CODE"))),
        ["revoke", ..] => return Err(usage("`tether pairing revoke` takes CHANNEL USER_ID".into())),
        [other, ..] => return Err(usage(format!("unknown pairing subcommand `{other}`"))),
    };
    let channel = command.channel();
    if channel.is_empty() || !channel.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(usage(format!(
            "\"{channel}\" is not a channel name: use a name from \"channels\" in the config \
             (letters, digits, - and _)"
        )));
    }
    Ok(command)
}

/// What a command prints, and its exit status.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    pub stdout: String,
    pub stderr: String,
    pub status: i32,
}

/// Run a pairing command against the files in `home`. `config` is the config as loaded:
/// when it loads, the channel must be in it; when it does not (a `$TOKEN` unset in the
/// operator's shell, say), the command still works on the files, with a note.
pub fn run(command: &PairingCommand, home: &Path, config: Result<Config, Error>, now_ms: u64) -> Result<Report, Error> {
    let name = command.channel();
    let mut notes = String::new();
    let audit = config.as_ref().ok().and_then(|c| c.audit.clone());
    let channel = match config {
        Ok(config) => match config.channels.get(name) {
            Some(channel) => Some(channel.clone()),
            None => {
                let names: Vec<&str> = config.channels.keys().map(String::as_str).collect();
                return Err(Error::Other(format!(
                    "channel \"{name}\" not found in {}: pick one of: {}",
                    config.path.display(),
                    if names.is_empty() { "(no channels configured)".to_string() } else { names.join(", ") }
                )));
            }
        },
        Err(e) => {
            notes.push_str(&format!("note: the config was not read ({e}); channel \"{name}\" was not checked\n"));
            None
        }
    };
    let files = AccessFiles::new(home, name);
    let decision = audit.as_ref().and_then(|_| decision(command, &files, now_ms));
    let mut report = execute(command, &files, channel.as_ref(), now_ms)?;
    if let (Some(audit), Some(event), 0) = (&audit, decision, report.status) {
        // The service has its own writer; one line appended whole (O_APPEND) sits beside its
        // lines, and its next rotation carries it along.
        if let Err(e) = crate::audit_writer::append_once(audit, &event.by(crate::audit::Actor::Cli)) {
            notes.push_str(&format!("note: cannot write the audit log {}: {e}\n", audit.path.display()));
        }
    }
    report.stderr = notes + &report.stderr;
    Ok(report)
}

/// A pairing decision `command` will make, for the audit log (read before it runs: an
/// approved or denied code leaves the pending list).
pub struct Decision {
    channel: String,
    decision: crate::audit::PairingDecision,
    sender: String,
}

impl Decision {
    pub fn by(self, by: crate::audit::Actor) -> crate::audit::AuditEvent {
        crate::audit::AuditEvent::PairingDecided {
            channel: self.channel,
            decision: self.decision,
            sender: self.sender,
            by,
        }
    }
}

/// The decision `command` is about to make, when it is one.
pub fn decision(command: &PairingCommand, files: &AccessFiles, now_ms: u64) -> Option<Decision> {
    use crate::audit::PairingDecision;
    let channel = command.channel().to_string();
    let of_code = |code: &str| {
        let code = normalize_code(code);
        let book = files.read().ok()?;
        let sender = book.live(now_ms).find(|r| r.code == code).map(|r| r.sender_id.clone());
        Some(sender.unwrap_or(code))
    };
    let (decision, sender) = match command {
        PairingCommand::Approve { code, .. } => (PairingDecision::Approved, of_code(code)?),
        PairingCommand::Deny { code, .. } => (PairingDecision::Denied, of_code(code)?),
        PairingCommand::Revoke { user, .. } => (PairingDecision::Revoked, user.clone()),
        PairingCommand::List { .. } | PairingCommand::Allowed { .. } => return None,
    };
    Some(Decision { channel, decision, sender })
}

/// The command itself, given the channel's config when it is known.
pub fn execute(
    command: &PairingCommand,
    files: &AccessFiles,
    channel: Option<&ChannelConfig>,
    now_ms: u64,
) -> Result<Report, Error> {
    let name = command.channel();
    let mut report = Report::default();
    let policy_note = |report: &mut Report| {
        if let Some(c) = channel.filter(|c| c.sender_policy != SenderPolicy::Pairing) {
            report.stderr.push_str(&format!(
                "note: channel \"{name}\" has senderPolicy \"{}\": approved users count only under \"pairing\"\n",
                crate::core::gate::sender_policy_name(c.sender_policy)
            ));
        }
    };
    let group_policy_note = |report: &mut Report| {
        if let Some(c) = channel.filter(|c| c.group_policy != GroupPolicy::Pairing) {
            report.stderr.push_str(&format!(
                "note: channel \"{name}\" has groupPolicy \"{}\": approved groups count only under \"pairing\"\n",
                crate::core::gate::group_policy_name(c.group_policy)
            ));
        }
    };
    match command {
        PairingCommand::List { .. } => {
            let book = files.read()?;
            let live: Vec<&PairingRequest> = book.live(now_ms).collect();
            if live.is_empty() {
                report.stdout.push_str("No pending pairing requests.\n");
            } else {
                report.stdout.push_str(&format!("Pending pairing requests for \"{name}\":\n"));
                for r in live {
                    let minutes = now_ms.saturating_sub(r.created_at) / 60_000;
                    let asker = match r.group() {
                        Some(group) => {
                            format!("Group: {} (asked by {})", clean_name(group), who(&r.sender_id, &r.sender_name))
                        }
                        None => format!("Sender: {}", who(&r.sender_id, &r.sender_name)),
                    };
                    report.stdout.push_str(&format!("  Code: {}  {asker}  {minutes}m ago\n", r.code));
                }
            }
        }
        PairingCommand::Approve { code, .. } => match files.update(now_ms, |book| book.approve(code, now_ms))? {
            Some(r) if r.group().is_some() => {
                report.stdout.push_str(&format!(
                    "Approved: group {} can now use channel \"{name}\" (each member still needs to pass its senderPolicy).\n",
                    clean_name(r.group().unwrap_or_default()),
                ));
                group_policy_note(&mut report);
            }
            Some(r) => {
                report.stdout.push_str(&format!(
                    "Approved: {} can now use channel \"{name}\".\n",
                    who(&r.sender_id, &r.sender_name)
                ));
                policy_note(&mut report);
            }
            None => missed(&mut report, name, code),
        },
        PairingCommand::Deny { code, .. } => match files.update(now_ms, |book| book.deny(code, now_ms))? {
            Some(r) => {
                let asker = match r.group() {
                    Some(group) => format!("group {}", clean_name(group)),
                    None => who(&r.sender_id, &r.sender_name),
                };
                report.stdout.push_str(&format!("Denied: {asker}; code {} no longer works.\n", r.code));
            }
            None => missed(&mut report, name, code),
        },
        PairingCommand::Revoke { user, .. } => {
            let in_config = channel.is_some_and(|c| c.allowed_users.contains(user));
            let config_note = || match channel {
                Some(c) if in_config => format!(
                    "\"{user}\" is also in allowedUsers of channel \"{name}\" in the config, which still lets them in: remove them there\n",
                    name = c.name
                ),
                _ => String::new(),
            };
            let (was_group, revoked) =
                files.update(now_ms, |book| (book.is_group_approved(user), book.revoke(user)))?;
            if revoked && was_group {
                report.stdout.push_str(&format!("Revoked: group {user} can no longer use channel \"{name}\".\n"));
            } else if revoked {
                report.stdout.push_str(&format!("Revoked: {user} can no longer use channel \"{name}\".\n"));
                report.stderr.push_str(&config_note());
            } else {
                report.stderr.push_str(&format!("User \"{user}\" is not a paired user of channel \"{name}\".\n"));
                report.stderr.push_str(&config_note());
                report.status = 1;
            }
        }
        PairingCommand::Allowed { .. } => {
            let book = files.read()?;
            let configured = channel.map(|c| c.allowed_users.as_slice()).unwrap_or_default();
            let paired: Vec<&String> = book.approved().iter().filter(|id| !configured.contains(id)).collect();
            if configured.is_empty() && paired.is_empty() {
                report.stdout.push_str(&format!("No approved users for \"{name}\".\n"));
            } else {
                report.stdout.push_str(&format!("Approved users for \"{name}\":\n"));
                for id in configured {
                    report.stdout.push_str(&format!("  {}  (allowedUsers in the config)\n", clean_name(id)));
                }
                for id in paired {
                    report.stdout.push_str(&format!("  {}  (paired)\n", clean_name(id)));
                }
            }
            if !book.approved_groups().is_empty() {
                report.stdout.push_str(&format!("Approved groups for \"{name}\":\n"));
                for id in book.approved_groups() {
                    report.stdout.push_str(&format!("  {}  (paired group)\n", clean_name(id)));
                }
            }
            if channel.is_some_and(|c| c.sender_policy == SenderPolicy::Open) {
                report.stdout.push_str("senderPolicy is \"open\": anyone may use this channel.\n");
            }
            policy_note(&mut report);
        }
    }
    Ok(report)
}

fn missed(report: &mut Report, channel: &str, code: &str) {
    report.stderr.push_str(&format!(
        "No pending request found for code \"{}\". It may have expired.\nSee the live codes with: tether pairing list {channel}\n",
        normalize_code(code)
    ));
    report.status = 1;
}

/// A sender as shown to the operator: the real id first, then the display name in quotes.
/// A name is chosen by the sender, so one made to look like another user's id ("111") must
/// not be read as the id.
pub fn who(id: &str, name: &str) -> String {
    format!("{} (name \"{}\")", clean_name(id), clean_name(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::pairing::PairingRequest;
    use crate::store;

    fn config(channel: serde_json::Value) -> Config {
        let text = serde_json::json!({"channels": {"phone": channel}}).to_string();
        let env = |_: &str| None;
        let cx = crate::config::ParseContext {
            path: Path::new("/etc/tether.json"),
            cwd: Path::new("/srv"),
            home: None,
            env: &env,
            platforms: crate::adapters::PLATFORMS,
        };
        crate::config::parse(&text, &cx).unwrap()
    }

    fn phone(policy: &str) -> ChannelConfig {
        let c = config(
            serde_json::json!({"type": "telegram", "token": "1:x", "senderPolicy": policy, "allowedUsers": ["111"]}),
        );
        c.channels["phone"].clone()
    }

    const T0: u64 = 1_700_000_000_000;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_name_imitating_an_id_is_shown_after_the_real_id() {
        let cases = [
            ("555", "111", "555 (name \"111\")"),
            ("555", "Ada (111)", "555 (name \"Ada (111)\")"),
            ("555", "111\u{1b}[2K", "555 (name \"111 [2K\")"),
        ];
        for (id, name, expected) in cases {
            assert_eq!(who(id, name), expected, "{name:?}");
        }
    }

    #[test]
    fn parsing() {
        let ok: Vec<(&[&str], PairingCommand)> = vec![
            (&["list", "phone"], PairingCommand::List { channel: "phone".into() }),
            (&["allowed", "my-tg_2"], PairingCommand::Allowed { channel: "my-tg_2".into() }),
            (
                &["approve", "phone", "abcd2345"],
                PairingCommand::Approve { channel: "phone".into(), code: "abcd2345".into() },
            ),
            (&["deny", "phone", "X"], PairingCommand::Deny { channel: "phone".into(), code: "X".into() }),
            (&["revoke", "phone", "42"], PairingCommand::Revoke { channel: "phone".into(), user: "42".into() }),
        ];
        for (w, expected) in ok {
            assert_eq!(parse(&words(w)).unwrap(), expected, "{w:?}");
        }
        let bad: Vec<(&[&str], &str)> = vec![
            (&[], "needs a subcommand"),
            (&["list"], "takes one CHANNEL"),
            (&["approve", "phone"], "takes CHANNEL CODE"),
            (&["revoke", "phone"], "takes CHANNEL USER_ID"),
            (&["frob", "phone"], "unknown pairing subcommand `frob`"),
            (&["list", "../etc"], "is not a channel name"),
            (&["list", ""], "is not a channel name"),
        ];
        for (w, expected) in bad {
            let err = parse(&words(w)).unwrap_err();
            assert_eq!(err.exit_code(), 2);
            let text = err.to_string();
            assert!(text.contains(expected) && text.contains("Usage:"), "{w:?}: {text}");
        }
    }

    fn home(label: &str) -> std::path::PathBuf {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).unwrap();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        std::env::temp_dir().join(format!("tether-pcli-{label}-{hex}"))
    }

    fn request(sender: &str, name: &str, code: &str, created_at: u64) -> PairingRequest {
        PairingRequest {
            sender_id: sender.into(),
            sender_name: name.into(),
            code: code.into(),
            created_at,
            chat_id: Some(sender.into()),
            subject: None,
        }
    }

    fn run_on(files: &AccessFiles, channel: Option<&ChannelConfig>, w: &[&str], now: u64) -> Report {
        let command = parse(&words(w)).unwrap();
        execute(&command, files, channel, now).unwrap()
    }

    #[test]
    fn list_approve_deny_revoke_allowed_outputs() {
        let dir = home("outputs");
        let files = AccessFiles::new(&dir, "phone");
        let channel = phone("pairing");
        let c = Some(&channel);
        let out = |stdout: &str| Report { stdout: stdout.into(), ..Default::default() };
        let err = |stderr: &str, status| Report { stderr: stderr.into(), status, ..Default::default() };
        assert_eq!(run_on(&files, c, &["list", "phone"], T0), out("No pending pairing requests.\n"));
        store::ensure_private_dir(&dir).unwrap();
        store::write_json_atomic(
            &files.pairing,
            &[
                request("7", "Ada\u{1b}[31m", "ABCDEFGH", T0 - 5 * 60_000),
                request("8", "Bob", "JKLMNPQR", T0),
                request("9", "Old", "STUVWXYZ", T0 - 61 * 60_000),
            ],
        )
        .unwrap();
        assert_eq!(
            run_on(&files, c, &["list", "phone"], T0),
            out(
                "Pending pairing requests for \"phone\":\n  Code: ABCDEFGH  Sender: 7 (name \"Ada [31m\")  5m ago\n  Code: JKLMNPQR  Sender: 8 (name \"Bob\")  0m ago\n"
            )
        );
        let miss = "No pending request found for code \"STUVWXYZ\". It may have expired.\nSee the live codes with: tether pairing list phone\n";
        assert_eq!(run_on(&files, c, &["approve", "phone", "stuvwxyz"], T0), err(miss, 1));
        assert_eq!(
            run_on(&files, c, &["approve", "phone", "abcdefgh"], T0),
            out("Approved: 7 (name \"Ada [31m\") can now use channel \"phone\".\n")
        );
        assert_eq!(
            run_on(&files, c, &["deny", "phone", "JKLMNPQR"], T0),
            out("Denied: 8 (name \"Bob\"); code JKLMNPQR no longer works.\n")
        );
        assert_eq!(run_on(&files, c, &["list", "phone"], T0), out("No pending pairing requests.\n"));
        assert_eq!(
            run_on(&files, c, &["allowed", "phone"], T0),
            out("Approved users for \"phone\":\n  111  (allowedUsers in the config)\n  7  (paired)\n")
        );
        assert_eq!(
            run_on(&files, c, &["revoke", "phone", "7"], T0),
            out("Revoked: 7 can no longer use channel \"phone\".\n")
        );
        assert_eq!(
            run_on(&files, c, &["revoke", "phone", "7"], T0),
            err("User \"7\" is not a paired user of channel \"phone\".\n", 1)
        );
        let r = run_on(&files, c, &["revoke", "phone", "111"], T0);
        assert_eq!(r.status, 1);
        assert!(r.stderr.contains("also in allowedUsers"), "{}", r.stderr);
        // Without a config: files only.
        assert_eq!(run_on(&files, None, &["allowed", "phone"], T0), out("No approved users for \"phone\".\n"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn approving_under_another_policy_says_it_has_no_effect() {
        let dir = home("policy");
        let files = AccessFiles::new(&dir, "phone");
        files.update(T0, |b| b.insert(request("7", "Ada", "ABCDEFGH", T0))).unwrap();
        let channel = phone("allowlist");
        let r = run_on(&files, Some(&channel), &["approve", "phone", "ABCDEFGH"], T0);
        assert_eq!(r.status, 0);
        assert!(r.stderr.contains("senderPolicy \"allowlist\""), "{}", r.stderr);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn groups_are_listed_approved_allowed_and_revoked() {
        use crate::core::pairing::{Subject, SubjectKind};
        let dir = home("groups");
        let files = AccessFiles::new(&dir, "phone");
        let group = PairingRequest {
            chat_id: Some("-100".into()),
            subject: Some(Subject { kind: SubjectKind::Group, id: "-100".into(), name: "-100".into() }),
            ..request("7", "Ada", "GRPCODE2", T0)
        };
        files.update(T0, |b| b.insert(group)).unwrap();
        // The same sender's own request is another request.
        files.update(T0, |b| b.insert(request("7", "Ada", "USERCOD3", T0))).unwrap();
        let list = run_on(&files, None, &["list", "phone"], T0 + 120_000);
        assert_eq!(
            list.stdout,
            "Pending pairing requests for \"phone\":\n  Code: GRPCODE2  Group: -100 (asked by 7 (name \"Ada\"))  2m ago\n  Code: USERCOD3  Sender: 7 (name \"Ada\")  2m ago\n"
        );
        let mut channel = phone("allowlist");
        channel.group_policy = GroupPolicy::Pairing;
        let r = run_on(&files, Some(&channel), &["approve", "phone", "grpcode2"], T0);
        assert_eq!(
            r.stdout,
            "Approved: group -100 can now use channel \"phone\" (each member still needs to pass its senderPolicy).\n"
        );
        assert_eq!(r.stderr, "");
        assert_eq!(std::fs::read_to_string(&files.groups).unwrap(), "[\n  \"-100\"\n]\n");
        assert!(!files.allowlist.exists(), "a group's approval approves no user");
        let r = run_on(&files, Some(&channel), &["allowed", "phone"], T0);
        assert!(r.stdout.contains("Approved groups for \"phone\":\n  -100  (paired group)\n"), "{}", r.stdout);
        let r = run_on(&files, Some(&channel), &["revoke", "phone", "-100"], T0);
        assert_eq!(r.stdout, "Revoked: group -100 can no longer use channel \"phone\".\n");
        assert_eq!(std::fs::read_to_string(&files.groups).unwrap(), "[]\n");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_unknown_channel_is_an_error_and_an_unreadable_config_a_note() {
        let dir = home("config");
        let config = config(serde_json::json!({"type": "telegram", "token": "1:x"}));
        let cmd = PairingCommand::List { channel: "phnoe".into() };
        let err = run(&cmd, &dir, Ok(config), T0).unwrap_err().to_string();
        assert!(err.contains("channel \"phnoe\" not found in /etc/tether.json: pick one of: phone"), "{err}");
        let r = run(&cmd, &dir, Err(Error::Other("TELEGRAM_BOT_TOKEN is not set".into())), T0).unwrap();
        assert_eq!(r.stdout, "No pending pairing requests.\n");
        assert!(r.stderr.contains("TELEGRAM_BOT_TOKEN is not set") && r.stderr.contains("not checked"), "{}", r.stderr);
        assert!(!dir.exists(), "listing creates nothing");
    }
}
