//! The command line: words in, one [`Command`] out, then run it. Options may stand before or
//! after the subcommand (`tether --home H start` and `tether start --home H` are the same).
//!
//! Parsing is imperative with lexopt, as in its examples; the help text is written by hand.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::adapters;
use crate::config::{self, Config, ParseContext};
use crate::error::Error;

pub const USAGE: &str = "\
tether: drive an ACP coding agent from your chat apps

Usage:
  tether demo [--listen ADDR] [--token SECRET]
                             a local web chat with the agent, no setup (default 127.0.0.1:8787);
                             an ADDR other machines can reach needs a token (--token, or
                             $TETHER_WEB_TOKEN), given once as ?token=SECRET in the address
  tether start [NAME...]     run every channel in the config, or only the named ones
      --detach               run in the background; return once it is up (or failed)
      --log-file FILE        log to FILE (appended; reopened on SIGHUP) instead of stderr
  tether stop                stop the running service (SIGTERM, then SIGKILL after 5 s)
  tether status [--json]     is it running, and how is each channel doing
  tether check               validate the config and print what would run (secrets masked)
  tether audit [--since DURATION] [--channel NAME] [--user ID] [--json]
                             print the audit log (oldest first, across rotated files)
  tether admin-url           print the admin page's address with its admin token (keep it private)
  tether pairing list|approve|deny|revoke|allowed CHANNEL [CODE|USER_ID]
                             manage who may use a channel (`tether pairing` for details)
  tether loops list|cancel [ID]
                             the scheduled loops (/loop in a chat) and their last and next runs
  tether weixin-login CHANNEL  log a WeChat channel in: scan the QR code shown with WeChat
  tether demo-agent [ARGS]   run the built-in ACP demo agent on stdin/stdout (see --help)
  tether mcp                 tether's MCP server (loop_create, loop_list, loop_cancel); the agent
                             starts it for tether's sessions, you do not
  tether version             print the version
  tether help                print this help

Options (before or after the command):
  --config PATH   the config file (default: $TETHER_HOME/config.json)
  --home DIR      where state lives (default: $TETHER_HOME, else ~/.tether)
  -v, --verbose   log debug detail (RUST_LOG overrides, e.g. RUST_LOG=tether=trace)

Signals to a running service: SIGTERM/SIGINT stop it, SIGHUP reloads the config.
";

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Demo { listen: String, token: Option<String> },
    Start { channels: Vec<String>, detach: bool, log_file: Option<PathBuf> },
    Stop,
    Status { json: bool },
    Check,
    Audit(crate::audit_cli::AuditQuery),
    AdminUrl,
    Pairing(crate::pairing_cli::PairingCommand),
    Loops(crate::loops_cli::LoopsCommand),
    DemoAgent { args: Vec<String> },
    Mcp { args: Vec<String> },
    WeixinLogin { channel: String },
    Version,
    Help,
}

/// Options every command shares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GlobalOptions {
    pub config: Option<PathBuf>,
    /// `--listen ADDR` (demo only).
    pub listen: Option<String>,
    /// `--token SECRET` (demo only).
    pub token: Option<String>,
    pub home: Option<PathBuf>,
    pub verbose: bool,
}

/// Parse the words after the program name.
pub fn parse_args(args: Vec<OsString>) -> Result<(Command, GlobalOptions), Error> {
    use lexopt::prelude::*;
    // Group chat ids are negative numbers (`tether pairing revoke phone -100123`): words,
    // never options. They pass the option parser masked and are restored below.
    let args = args.into_iter().map(|a| match a.to_str().and_then(negative_number_digits) {
        Some(digits) => OsString::from(format!("{NEGATIVE}{digits}")),
        None => a,
    });
    let mut parser = lexopt::Parser::from_args(args);
    let mut opts = GlobalOptions::default();
    let mut command: Option<String> = None;
    let mut words: Vec<String> = Vec::new();
    let (mut detach, mut log_file, mut json) = (false, None::<PathBuf>, false);
    while let Some(arg) = parser.next()? {
        match arg {
            Long("config") => opts.config = Some(parser.value()?.into()),
            Long("detach") => detach = true,
            Long("log-file") => log_file = Some(parser.value()?.into()),
            Long("json") => json = true,
            Long(name @ ("since" | "channel" | "user")) if command.as_deref() == Some("audit") => {
                words.push(format!("--{name}"));
                words.push(parser.value()?.string()?);
            }
            Long("home") => opts.home = Some(parser.value()?.into()),
            Long("listen") if command.as_deref() == Some("demo") => opts.listen = Some(parser.value()?.string()?),
            Long("token") if command.as_deref() == Some("demo") => opts.token = Some(parser.value()?.string()?),
            Short('v') | Long("verbose") => opts.verbose = true,
            Short('h') | Long("help") if command.is_none() => return Ok((Command::Help, opts)),
            Short('V') | Long("version") if command.is_none() => return Ok((Command::Version, opts)),
            Value(word) if command.is_none() => {
                let word = unmask(word.string()?);
                if word == "demo-agent" {
                    // Everything after goes to the demo agent untouched (it has its own --help).
                    let rest = parser.raw_args()?.map(|a| a.to_string_lossy().into_owned()).collect();
                    return Ok((Command::DemoAgent { args: rest }, opts));
                }
                if word == "mcp" {
                    // Started by the agent; its words are its own (`--help`).
                    let rest = parser.raw_args()?.map(|a| a.to_string_lossy().into_owned()).collect();
                    return Ok((Command::Mcp { args: rest }, opts));
                }
                command = Some(word);
            }
            Value(word) => words.push(unmask(word.string()?)),
            _ => return Err(Error::Usage(format!("{}\n\n{USAGE}", arg.unexpected()))),
        }
    }
    let misplaced = match command.as_deref() {
        Some("start") if json => Some("--json"),
        Some("status") if detach || log_file.is_some() => Some(if detach { "--detach" } else { "--log-file" }),
        Some("audit") if !detach && log_file.is_none() => None,
        Some("start" | "status") => None,
        _ if detach => Some("--detach"),
        _ if log_file.is_some() => Some("--log-file"),
        _ if json => Some("--json"),
        _ => None,
    };
    if let (Some(option), Some(word)) = (misplaced, command.as_deref()) {
        return Err(Error::Usage(format!("`{word}` does not take {option}\n\n{USAGE}")));
    }
    let command = match command.as_deref() {
        Some("start") => Command::Start { channels: words, detach, log_file },
        Some("stop") if words.is_empty() => Command::Stop,
        Some("status") if words.is_empty() => Command::Status { json },
        Some("demo") if words.is_empty() => Command::Demo {
            listen: opts.listen.clone().unwrap_or_else(|| DEMO_LISTEN.to_string()),
            token: opts.token.clone(),
        },
        Some("check") if words.is_empty() => Command::Check,
        Some("admin-url") if words.is_empty() => Command::AdminUrl,
        Some("version") if words.is_empty() => Command::Version,
        Some("help") => Command::Help,
        Some("pairing") => Command::Pairing(crate::pairing_cli::parse(&words)?),
        Some("loops") => Command::Loops(crate::loops_cli::parse(&words)?),
        Some("audit") => Command::Audit(crate::audit_cli::parse(&words, json)?),
        Some("weixin-login") => match words.as_slice() {
            [channel] => Command::WeixinLogin { channel: channel.clone() },
            _ => {
                return Err(Error::Usage(format!(
                    "`weixin-login` takes one CHANNEL (a channel of type \"weixin\")\n\n{USAGE}"
                )));
            }
        },
        None => return Err(Error::Usage(format!("no command given\n\n{USAGE}"))),
        Some(word @ ("check" | "version" | "demo" | "stop" | "status" | "admin-url")) => {
            return Err(Error::Usage(format!("`{word}` takes no arguments (got: {})\n\n{USAGE}", words.join(" "))));
        }
        Some(other) => return Err(Error::Usage(format!("unknown command `{other}`\n\n{USAGE}"))),
    };
    Ok((command, opts))
}

/// Stands for the `-` of a negative number while the options are parsed.
const NEGATIVE: char = '\u{1}';

/// The digits of a negative number such as `-100123`.
fn negative_number_digits(text: &str) -> Option<&str> {
    text.strip_prefix('-').filter(|digits| !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()))
}

fn unmask(word: String) -> String {
    match word.strip_prefix(NEGATIVE) {
        Some(digits) => format!("-{digits}"),
        None => word,
    }
}

/// Run tether with the process arguments; returns the exit status.
pub fn main() -> i32 {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let (command, opts) = match parse_args(args.clone()) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("tether: {e}");
            return e.exit_code();
        }
    };
    match run(command, &opts, &args) {
        Ok(code) => code,
        Err(e) => {
            log::error!(target: "tether", "{e}");
            // In the foreground the log is stderr: the error is already there once.
            if !crate::logging::on_stderr() {
                eprintln!("tether: {e}");
            }
            e.exit_code()
        }
    }
}

fn run(command: Command, opts: &GlobalOptions, args: &[OsString]) -> Result<i32, Error> {
    match command {
        Command::Help => {
            print!("{USAGE}");
            Ok(0)
        }
        Command::Version => {
            println!("tether {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        Command::DemoAgent { args } => Ok(crate::demo_agent::run(&args)),
        Command::Mcp { args } => Ok(crate::mcp::run(&args)),
        Command::Check => {
            let config = load_config(opts, None)?;
            print!("{}", describe(&config, &home_dir(opts)?));
            // Everything `start` would refuse before it talks to a platform.
            preflight(&config, &[])?;
            Ok(0)
        }
        Command::Audit(query) => {
            let config = load_config(opts, None)?;
            let stdout = std::io::stdout();
            crate::audit_cli::run(&config, &query, crate::health::wall_ms(), &mut stdout.lock())
        }
        Command::AdminUrl => {
            let home = home_dir(opts)?;
            let token = crate::admin_token::load_or_create(&home)?;
            // Without a config file, the admin page is the demo's. Only addresses are read: no
            // channel's variables are needed.
            let bases = match load_config(opts, Some(&[])) {
                Ok(config) => webchat_bases(&config),
                Err(_) if opts.config.is_none() => vec![format!("http://{DEMO_LISTEN}/")],
                Err(e) => return Err(e),
            };
            if bases.is_empty() {
                return Err(Error::Other(
                    "no web chat channel in the config: the admin page is served by one; add a channel \
                     with \"type\": \"webchat\""
                        .into(),
                ));
            }
            for base in bases {
                println!("{}", crate::admin_token::admin_url(&base, &token));
            }
            Ok(0)
        }
        Command::Pairing(command) => {
            let config = load_config(opts, Some(&[command.channel().to_string()]));
            let home = home_dir(opts)?;
            let report = crate::pairing_cli::run(&command, &home, config, crate::health::wall_ms())?;
            print!("{}", report.stdout);
            eprint!("{}", report.stderr);
            Ok(report.status)
        }
        Command::Loops(command) => {
            print!("{}", crate::loops_cli::run(&command, &home_dir(opts)?)?);
            Ok(0)
        }
        Command::Demo { listen, token } => {
            crate::malloc_tuning::restart_tuned();
            crate::logging::init(opts.verbose);
            let state = demo_agent_state();
            let (config, agent) = demo_config(opts, &listen, token.as_deref(), state.as_deref())?;
            crate::redact::register_config(&config);
            println!("tether demo: talking to {agent}");
            // The demo's one channel is open: no pairing files, so any home will do. It is not
            // the service: no pid file, no status.json, no config to reload.
            let options = crate::daemon::Options {
                home: home_dir(opts).unwrap_or_default(),
                only: Vec::new(),
                reload: None,
                log_file: None,
                as_service: false,
                stop: None,
            };
            let result = crate::daemon::run(config, options);
            if let Some(state) = state {
                let _ = std::fs::remove_dir_all(state);
            }
            result?;
            Ok(0)
        }
        Command::Stop => Ok(crate::service::stop(&home_dir(opts)?)),
        Command::Status { json } => {
            let home = home_dir(opts)?;
            let code = crate::service::status(&home, json);
            if !json {
                print!("{}", weixin_accounts(&home));
            }
            Ok(code)
        }
        Command::WeixinLogin { channel } => weixin_login(opts, &channel),
        // The channels named are in `args`, which the background process gets.
        Command::Start { channels, detach: true, log_file } => {
            // Check the config here, so that its errors are shown, not buried in the log.
            let config = load_config(opts, selection(&channels))?;
            preflight(&config, &channels)?;
            let home = home_dir(opts)?;
            crate::store::ensure_private_dir(&home)?;
            let log_file = log_file.unwrap_or_else(|| home.join("tether.log"));
            let slowest = config.agents.values().map(|a| a.startup_timeout).max().unwrap_or_default();
            let wait = (slowest + Duration::from_secs(15)).max(Duration::from_secs(30));
            crate::service::detach(args, &home, &log_file, wait)
        }
        Command::Start { channels, detach: false, log_file } => {
            crate::malloc_tuning::restart_tuned();
            let log_file = log_file.map(|path| crate::service::LogFile::open(&path)).transpose()?;
            crate::logging::init_to(opts.verbose, log_file.as_ref().map(|f| Box::new(f.writer()) as Box<_>));
            let config = load_config(opts, selection(&channels))?;
            crate::redact::register_config(&config);
            log::info!(target: "tether", "tether {} starting with {}", env!("CARGO_PKG_VERSION"), config.path.display());
            log_warnings(&config, &channels);
            preflight(&config, &channels)?;
            let reload_opts = opts.clone();
            let reload_channels = channels.clone();
            let options = crate::daemon::Options {
                home: home_dir(opts)?,
                only: channels,
                reload: Some(Box::new(move || {
                    let config = load_config(&reload_opts, selection(&reload_channels))?;
                    crate::redact::register_config(&config);
                    log_warnings(&config, &reload_channels);
                    Ok(config)
                })),
                log_file,
                as_service: true,
                stop: None,
            };
            crate::daemon::run(config, options)?;
            Ok(0)
        }
    }
}

/// `tether weixin-login CHANNEL`: the channel must be a WeChat channel of the config.
fn weixin_login(opts: &GlobalOptions, name: &str) -> Result<i32, Error> {
    use std::io::IsTerminal;
    let config = load_config(opts, Some(&[name.to_string()]))?;
    let home = home_dir(opts)?;
    let Some(channel) = config.channels.get(name) else {
        let names: Vec<&str> = config.channels.keys().map(String::as_str).collect();
        return Err(Error::Usage(format!(
            "{}: no channel \"{name}\" (channels: {})",
            config.path.display(),
            if names.is_empty() { "none".to_string() } else { names.join(", ") }
        )));
    };
    if channel.platform.name != crate::adapters::weixin::PLATFORM.name {
        return Err(Error::Usage(format!(
            "{}: channel \"{name}\" is of type \"{}\", not \"weixin\"",
            config.path.display(),
            channel.platform.name
        )));
    }
    let login_base = channel.setting("baseUrl").unwrap_or(crate::adapters::weixin::wire::DEFAULT_API_BASE);
    let mut stdout = std::io::stdout();
    let mut read_line = || {
        let mut line = String::new();
        match std::io::stdin().read_line(&mut line) {
            Ok(n) if n > 0 => Some(line),
            _ => None,
        }
    };
    let account = crate::adapters::weixin::login::run(crate::adapters::weixin::login::Login {
        channel: name,
        home: &home,
        login_base,
        colour: std::io::stdout().is_terminal(),
        out: &mut stdout,
        read_line: &mut read_line,
        now_ms: crate::health::wall_ms,
    })?;
    println!(
        "Logged in: bot {}{}. Saved to {}.",
        account.bot_id,
        account.user_id.as_deref().map(|u| format!(" for WeChat user {u}")).unwrap_or_default(),
        crate::adapters::weixin::account::account_path(&home, name).display()
    );
    println!("A running service picks the new login up by itself; else run `tether start`.");
    Ok(0)
}

/// The WeChat logins kept in `home`, for `tether status`.
fn weixin_accounts(home: &Path) -> String {
    let channels = crate::adapters::weixin::account::logged_in_channels(home);
    if channels.is_empty() {
        return String::new();
    }
    let now = crate::health::wall_ms();
    let mut out = "WeChat logins:\n".to_string();
    for channel in channels {
        out.push_str(&format!("  {channel}: {}\n", crate::adapters::weixin::account::describe(home, &channel, now)));
    }
    out
}

/// The base URL of each web chat channel, from its `listen` (an unspecified address shown as
/// 127.0.0.1, as the service prints it).
fn webchat_bases(config: &Config) -> Vec<String> {
    config
        .channels
        .values()
        .filter_map(|c| c.setting("listen"))
        .map(|listen| {
            let listen = listen.replace("0.0.0.0:", "127.0.0.1:").replace("[::]:", "[::1]:");
            format!("http://{listen}/")
        })
        .collect()
}

/// Where `tether demo` serves the web chat unless `--listen` says otherwise.
pub const DEMO_LISTEN: &str = "127.0.0.1:8787";

/// The demo's config: one web chat channel open to this machine's browsers, talking to the
/// configured agent when there is one and its command is found, else to the built-in demo
/// agent. Also says which agent it chose, and why.
pub fn demo_config(
    opts: &GlobalOptions,
    listen: &str,
    token: Option<&str>,
    state: Option<&Path>,
) -> Result<(Config, String), Error> {
    let config_path = match &opts.config {
        Some(path) => Some(path.clone()),
        None => home_dir(opts).ok().map(|home| home.join("config.json")).filter(|p| p.exists()),
    };
    let user = match config_path {
        // Only its agent is used: no channel of it needs its variables.
        Some(_) => Some(load_config(opts, Some(&[]))?),
        None => None,
    };
    let exe = std::env::current_exe().map_err(|e| Error::Other(format!("cannot find the tether binary: {e}")))?;
    let mut args = vec!["demo-agent".to_string(), "--chunk-delay".into(), "40".into()];
    // Sessions the demo agent can load again after a `crash`, so the retry is answered.
    if let Some(state) = state {
        args.extend(["--state".to_string(), state.display().to_string()]);
    }
    let demo_agent = serde_json::json!({"command": exe, "args": args});
    // Tool calls and plans shown as they stream: what the demo agent's `tools` word is for.
    let mut web =
        serde_json::json!({"type": "webchat", "listen": listen, "senderPolicy": "open", "showToolCalls": "brief"});
    match token {
        Some(token) => web["token"] = token.into(),
        None if std::env::var_os("TETHER_WEB_TOKEN").is_some_and(|t| !t.is_empty()) => {
            web["token"] = "$TETHER_WEB_TOKEN".into()
        }
        None => {}
    }
    let text = serde_json::json!({"agent": demo_agent, "channels": {"web": web}}).to_string();
    let cwd = std::env::current_dir().map_err(|e| Error::Other(format!("cannot read the current directory: {e}")))?;
    let user_home = std::env::var_os("HOME").map(PathBuf::from);
    let env = |name: &str| std::env::var(name).ok();
    let path = PathBuf::from("(tether demo)");
    let cx =
        ParseContext { path: &path, cwd: &cwd, home: user_home.as_deref(), env: &env, platforms: adapters::PLATFORMS };
    let mut config = config::parse(&text, &cx).map_err(|e| match e.key.as_deref() {
        Some("token") => Error::Usage(format!(
            "--listen {listen} can be reached from other machines, so the web chat needs a token: \
             pass --token SECRET (or set TETHER_WEB_TOKEN=SECRET), then open the address tether prints, \
             which ends in ?token=SECRET. Or listen on {DEMO_LISTEN}"
        )),
        _ => Error::Usage(format!("--listen {listen}: {}", e.message)),
    })?;
    let mut description = "the built-in demo agent (no agent configured)".to_string();
    if let Some(user) = user {
        let Some(agent) = user.agents.get(config::DEFAULT_AGENT) else { return Ok((config, description)) };
        let shown = format!("{} {}", agent.command, agent.args.join(" "));
        if command_exists(&agent.command) {
            description = format!("the configured agent `{}` (from {})", shown.trim(), user.path.display());
            config.agents.insert(config::DEFAULT_AGENT.to_string(), agent.clone());
            config.env = user.env.clone();
        } else {
            description = format!("the built-in demo agent (the configured `{}` was not found)", shown.trim());
        }
    }
    Ok((config, description))
}

/// A fresh directory for the demo agent's sessions (removed when the demo ends); `None`
/// when it cannot be made (the demo then runs without: a `crash` retry crashes again).
fn demo_agent_state() -> Option<PathBuf> {
    let dir = std::env::temp_dir().join(format!("tether-demo-agent-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    crate::store::ensure_private_dir(&dir).ok().map(|()| dir)
}

/// Whether `command` names a program that can be run: a path that exists, or a name found
/// in one of `$PATH`'s directories.
fn command_exists(command: &str) -> bool {
    if command == "tether" {
        return true;
    }
    if command.contains('/') {
        return Path::new(command).is_file();
    }
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(command).is_file()))
}

/// `--home`, else `$TETHER_HOME`, else `~/.tether`.
pub fn home_dir(opts: &GlobalOptions) -> Result<PathBuf, Error> {
    if let Some(home) = &opts.home {
        return Ok(home.clone());
    }
    if let Some(home) = std::env::var_os("TETHER_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(user_home) => Ok(Path::new(&user_home).join(".tether")),
        None => Err(Error::Other("cannot find a home for state: set TETHER_HOME or pass --home DIR".into())),
    }
}

/// The channels a `start` uses: the named ones, or (none named) all.
fn selection(channels: &[String]) -> Option<&[String]> {
    (!channels.is_empty()).then_some(channels)
}

/// Log each warning about the keys of the channels that will run.
fn log_warnings(config: &Config, only: &[String]) {
    for channel in config.channels.values().filter(|c| only.is_empty() || only.contains(&c.name)) {
        for warning in &channel.warnings {
            log::warn!(target: channel.name.as_str(), "{}: {warning}", config.path.display());
        }
    }
}

/// What `start` refuses before it talks to any platform, so that `check` refuses it too:
/// no channels or an unknown channel name (config errors, exit 2), a channel's `cwd` that is
/// not a directory or an agent command that is not found (the machine, exit 1). Every
/// problem is listed, not just the first.
pub fn preflight(config: &Config, only: &[String]) -> Result<(), Error> {
    let path = config.path.display();
    let mut config_problems = Vec::new();
    let mut machine_problems = Vec::new();
    for name in only.iter().filter(|n| !config.channels.contains_key(*n)) {
        let known: Vec<&str> = config.channels.keys().map(String::as_str).collect();
        config_problems.push(format!(
            "channel \"{name}\" not found in {path}: add it under \"channels\", or pick one of: {}",
            known.join(", ")
        ));
    }
    let used: Vec<&config::ChannelConfig> =
        config.channels.values().filter(|c| only.is_empty() || only.contains(&c.name)).collect();
    if config.channels.is_empty() {
        config_problems.push(format!(
            "no channels configured in {path}: add entries under \"channels\" (see README), or run `tether demo`"
        ));
    }
    for channel in &used {
        if !channel.cwd.is_dir() {
            machine_problems.push(format!(
                "{path}: channel \"{}\", key \"cwd\": {} is not an existing directory: create it or fix the path",
                channel.name,
                channel.cwd.display()
            ));
        }
    }
    let mut agents: Vec<&str> = used.iter().map(|c| c.agent.as_str()).collect();
    agents.sort_unstable();
    agents.dedup();
    for name in agents {
        let Some(agent) = config.agents.get(name) else { continue };
        if !command_exists(&agent.command) {
            let key = if name == config::DEFAULT_AGENT {
                "agent.command".to_string()
            } else {
                format!("agents.{name}.command")
            };
            let missing = if agent.command.contains('/') {
                "is not a file".to_string()
            } else {
                format!("is not found on PATH ({})", std::env::var("PATH").unwrap_or_default())
            };
            machine_problems.push(format!(
                "{path}: {key}: `{}` {missing}: install the agent, or set its full path; \
                 `tether demo` runs the built-in demo agent",
                agent.command,
            ));
        }
    }
    let all: Vec<String> = config_problems.iter().chain(&machine_problems).cloned().collect();
    match (config_problems.is_empty(), all.is_empty()) {
        (_, true) => Ok(()),
        (false, _) => Err(Error::Usage(all.join("\n"))),
        (true, false) => Err(Error::Other(all.join("\n"))),
    }
}

/// Read and validate the config file that `opts` points at. `selected`: the channels the
/// command uses (`None`: all); only theirs `$VAR`s must be set.
pub fn load_config(opts: &GlobalOptions, selected: Option<&[String]>) -> Result<Config, Error> {
    let path = match &opts.config {
        Some(path) => path.clone(),
        None => home_dir(opts)?.join("config.json"),
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Other(format!(
                "no config file at {}: create one (see README, \"Configuration\"), pass --config PATH, \
                 or try `tether demo` which needs none",
                path.display()
            ))
        } else {
            Error::File { path: path.clone(), action: "read", source: e }
        }
    })?;
    let cwd = std::env::current_dir().map_err(|e| Error::Other(format!("cannot read the current directory: {e}")))?;
    let user_home = std::env::var_os("HOME").map(PathBuf::from);
    let env = |name: &str| std::env::var(name).ok();
    let cx =
        ParseContext { path: &path, cwd: &cwd, home: user_home.as_deref(), env: &env, platforms: adapters::PLATFORMS };
    Ok(config::parse_selected(&text, &cx, selected)?)
}

/// The `tether check` report: what would run, with secrets masked.
pub fn describe(config: &Config, home: &Path) -> String {
    let mut out = format!("config: {}\nhome:   {}\n", config.path.display(), home.display());
    out.push_str("agents:\n");
    for (name, agent) in &config.agents {
        let used = config.channels.values().any(|c| c.agent == *name);
        let env: Vec<&str> = agent.env.keys().map(String::as_str).collect();
        out.push_str(&format!(
            "  {name}: {} {}{}{}\n",
            agent.command,
            agent.args.join(" "),
            if env.is_empty() { String::new() } else { format!(" (env: {})", env.join(", ")) },
            if used { "" } else { " (unused)" }
        ));
    }
    if config.channels.is_empty() {
        out.push_str("channels: none (add entries under \"channels\")\n");
    } else {
        out.push_str("channels:\n");
    }
    for channel in config.channels.values() {
        out.push_str(&format!("  {} ({})\n", channel.name, channel.platform.name));
        for (label, secret) in &channel.settings.secrets {
            out.push_str(&format!("    {label}: {}\n", secret.masked()));
        }
        out.push_str(&format!(
            "    agent: {}\n    cwd: {}\n    senderPolicy: {}, dmPolicy: {}, allowedUsers: {}\n    sessionScope: {}, dispatchMode: {}, groupPolicy: {}, permissions: {}\n",
            channel.agent,
            channel.cwd.display(),
            channel.sender_policy.name(),
            channel.dm_policy.name(),
            if channel.allowed_users.is_empty() { "none".to_string() } else { channel.allowed_users.join(", ") },
            channel.session_scope.name(),
            channel.dispatch_mode.name(),
            channel.group_policy.name(),
            channel.permissions.name(),
        ));
        if channel.group_history_limit > 0 || channel.groups.values().any(|g| g.history_limit.unwrap_or(0) > 0) {
            out.push_str(&format!("    groupHistoryLimit: {}\n", channel.group_history_limit));
        }
        for (key, value) in &channel.settings.values {
            let shown = value.as_str().map_or_else(|| value.to_string(), str::to_string);
            out.push_str(&format!("    {key}: {shown}\n"));
        }
        if let Some(model) = &channel.model {
            out.push_str(&format!("    model: {model}\n"));
        }
        if channel.platform.name == crate::adapters::weixin::PLATFORM.name {
            let now = crate::health::wall_ms();
            out.push_str(&format!(
                "    WeChat login: {}\n",
                crate::adapters::weixin::account::describe(home, &channel.name, now)
            ));
        }
        if config.disabled.contains(&channel.name) {
            out.push_str("    disabled: \"enabled\": false, so it is not started\n");
        }
        for warning in &channel.warnings {
            out.push_str(&format!("    warning: {warning}\n"));
        }
    }
    if let Some(types) = &config.allowed_channel_types {
        out.push_str(&format!("allowedChannelTypes: {}\n", types.join(", ")));
    }
    match &config.audit {
        Some(audit) => out.push_str(&format!(
            "audit: {} (content {}, rotated at {} bytes, {} files kept)\n",
            audit.path.display(),
            audit.content.name(),
            audit.max_bytes,
            audit.max_files
        )),
        None => out.push_str("audit: off\n"),
    }
    let warnings: usize = config.channels.values().map(|c| c.warnings.len()).sum();
    if warnings > 0 {
        out.push_str(&format!(
            "{warnings} warning(s): tether runs, but the keys named above do not do what they say\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(words: &[&str]) -> Result<(Command, GlobalOptions), String> {
        parse_args(words.iter().map(OsString::from).collect()).map_err(|e| e.to_string())
    }

    #[test]
    fn options_before_or_after_the_command() {
        let home = GlobalOptions { home: Some("H".into()), ..Default::default() };
        let start = Command::Start { channels: vec![], detach: false, log_file: None };
        assert_eq!(parse(&["--home", "H", "start"]), Ok((start.clone(), home.clone())));
        assert_eq!(parse(&["start", "--home", "H"]), Ok((start, home)));
        assert_eq!(
            parse(&["start", "a", "-v", "b", "--config=c.json"]),
            Ok((
                Command::Start { channels: vec!["a".into(), "b".into()], detach: false, log_file: None },
                GlobalOptions { config: Some("c.json".into()), verbose: true, ..Default::default() }
            ))
        );
    }

    #[test]
    fn table_of_commands() {
        let cases: Vec<(&[&str], Result<Command, &str>)> = vec![
            (&["check"], Ok(Command::Check)),
            (&["admin-url"], Ok(Command::AdminUrl)),
            (&["stop"], Ok(Command::Stop)),
            (&["status"], Ok(Command::Status { json: false })),
            (&["status", "--json"], Ok(Command::Status { json: true })),
            (&["--json", "status"], Ok(Command::Status { json: true })),
            (
                &["start", "--detach", "--log-file", "/var/log/t.log", "phone"],
                Ok(Command::Start {
                    channels: vec!["phone".into()],
                    detach: true,
                    log_file: Some("/var/log/t.log".into()),
                }),
            ),
            (&["start", "--json"], Err("`start` does not take --json")),
            (&["status", "--detach"], Err("`status` does not take --detach")),
            (&["stop", "--log-file", "x"], Err("`stop` does not take --log-file")),
            (&["stop", "now"], Err("`stop` takes no arguments")),
            (&["demo"], Ok(Command::Demo { listen: DEMO_LISTEN.into(), token: None })),
            (&["demo", "--listen", "127.0.0.1:0"], Ok(Command::Demo { listen: "127.0.0.1:0".into(), token: None })),
            (
                &["demo", "--listen", "0.0.0.0:9000", "--token", "s3"],
                Ok(Command::Demo { listen: "0.0.0.0:9000".into(), token: Some("s3".into()) }),
            ),
            (&["start", "--token", "x"], Err("invalid option '--token'")),
            (&["--listen", "x", "start"], Err("invalid option '--listen'")),
            (&["version"], Ok(Command::Version)),
            (&["--version"], Ok(Command::Version)),
            (&["help"], Ok(Command::Help)),
            (&["--help"], Ok(Command::Help)),
            (&["demo-agent", "--help"], Ok(Command::DemoAgent { args: vec!["--help".into()] })),
            (&["demo-agent", "--state", "/x"], Ok(Command::DemoAgent { args: vec!["--state".into(), "/x".into()] })),
            (&["mcp"], Ok(Command::Mcp { args: vec![] })),
            (&["mcp", "--help"], Ok(Command::Mcp { args: vec!["--help".into()] })),
            (&[], Err("no command given")),
            (&["frobnicate"], Err("unknown command `frobnicate`")),
            (&["check", "extra"], Err("`check` takes no arguments")),
            (
                &["pairing", "approve", "phone", "abcd2345", "--home", "H"],
                Ok(Command::Pairing(crate::pairing_cli::PairingCommand::Approve {
                    channel: "phone".into(),
                    code: "abcd2345".into(),
                })),
            ),
            (&["pairing", "approve", "phone"], Err("takes CHANNEL CODE")),
            (
                &["pairing", "revoke", "phone", "-100123", "-v"],
                Ok(Command::Pairing(crate::pairing_cli::PairingCommand::Revoke {
                    channel: "phone".into(),
                    user: "-100123".into(),
                })),
            ),
            (&["start", "-1x"], Err("invalid option")),
            (&["weixin-login", "wx"], Ok(Command::WeixinLogin { channel: "wx".into() })),
            (&["weixin-login"], Err("`weixin-login` takes one CHANNEL")),
            (&["weixin-login", "a", "b"], Err("`weixin-login` takes one CHANNEL")),
            (&["start", "--bogus"], Err("invalid option '--bogus'")),
        ];
        for (words, expected) in cases {
            match (parse(words), expected) {
                (Ok((got, _)), Ok(want)) => assert_eq!(got, want, "{words:?}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{words:?}: {got}"),
                (got, want) => panic!("{words:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn usage_errors_exit_2() {
        let err = parse_args(vec![OsString::from("nope")]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
