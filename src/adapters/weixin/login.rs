//! `tether weixin-login CHANNEL`: fetch a login QR code, show it, poll its status through
//! every state (`wait`, `scaned`, `confirmed`; `expired` → a new code, at most three;
//! `scaned_but_redirect` → poll at the host named; `need_verifycode` → ask for the digits the
//! phone shows), then store the account. [`decide`] is the pure rule; [`run`] does the I/O.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::Error;

use super::account::{self, Account};
use super::api::{self, Api};
use super::wire::{self, Confirmed, Failure, QrStatus};

/// Codes fetched before giving up (both reference plugins stop at three).
pub const MAX_CODES: u32 = 3;
/// The whole login gives up after this long.
const DEADLINE: Duration = Duration::from_secs(8 * 60);
/// Our wait for one status poll (the server holds it up to ~35 s).
const POLL_TIMEOUT: Duration = Duration::from_secs(40);
/// At least this long between two polls.
const POLL_PAUSE: Duration = Duration::from_secs(1);

/// What to do after a status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Poll,
    /// Keep polling, at this base from now on.
    PollAt(String),
    NewCode,
    AskVerifyCode,
    Done(Confirmed),
    /// The bot was already bound here: the saved account stays.
    KeepExisting,
    Fail(String),
}

/// The rule: `codes_used` codes were fetched so far, the last one reported `status`.
pub fn decide(codes_used: u32, status: &QrStatus) -> Next {
    let new_code = |why: &str| {
        if codes_used < MAX_CODES {
            Next::NewCode
        } else {
            Next::Fail(format!("{why} {MAX_CODES} times; run `tether weixin-login` again when ready to scan"))
        }
    };
    match status {
        QrStatus::Wait | QrStatus::Scanned | QrStatus::Unknown(_) => Next::Poll,
        QrStatus::Redirect(base) => Next::PollAt(base.clone()),
        QrStatus::Expired => new_code("the QR code expired"),
        QrStatus::VerifyCodeBlocked => new_code("too many wrong verification codes"),
        QrStatus::NeedVerifyCode => Next::AskVerifyCode,
        QrStatus::Confirmed(confirmed) => Next::Done(confirmed.clone()),
        QrStatus::AlreadyBound => Next::KeepExisting,
    }
}

/// What the login needs from its surroundings.
pub struct Login<'a> {
    pub channel: &'a str,
    pub home: &'a Path,
    /// Where the QR code is fetched and polled (the channel's `baseUrl`).
    pub login_base: &'a str,
    /// Draw the QR code with forced colours (stdout is a terminal).
    pub colour: bool,
    pub out: &'a mut dyn Write,
    /// Reads one line from the person (the verification digits); `None` at end of input.
    pub read_line: &'a mut dyn FnMut() -> Option<String>,
    pub now_ms: fn() -> u64,
}

/// Run the login to the end: the stored account, or why not.
pub fn run(login: Login<'_>) -> Result<Account, Error> {
    let Login { channel, home, login_base, colour, out, read_line, now_ms } = login;
    let api = Api::new(login_base, wire::DEFAULT_CDN_BASE, None);
    let deadline = Instant::now() + DEADLINE;
    let mut codes_used = 0;
    let say = |out: &mut dyn Write, text: &str| {
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    };
    loop {
        let code = fetch_code(&api, login_base)?;
        codes_used += 1;
        show(out, &code, colour, codes_used);
        let mut poll_base = login_base.to_string();
        let mut verify: Option<String> = None;
        let mut last_said = String::new();
        loop {
            if Instant::now() >= deadline {
                return Err(Error::Other(format!(
                    "WeChat login of channel \"{channel}\": nobody confirmed within {} minutes; run it again",
                    DEADLINE.as_secs() / 60
                )));
            }
            let started = Instant::now();
            let status =
                match api.get_at(&poll_base, &wire::qr_status_path(&code.qrcode, verify.as_deref()), POLL_TIMEOUT) {
                    Ok(reply) => wire::parse_qr_status(&reply),
                    // A client timeout or a gateway error during the long poll means "still waiting".
                    Err(f @ (Failure::Transient(_) | Failure::Busy(_))) => {
                        if !api::is_timeout(&f) {
                            log::debug!(target: "weixin", "QR status poll: {f}");
                        }
                        QrStatus::Wait
                    }
                    Err(f) => return Err(Error::Other(format!("WeChat login of channel \"{channel}\": {f}"))),
                };
            let said = match &status {
                QrStatus::Wait => "Waiting for the scan…".to_string(),
                QrStatus::Scanned => "Scanned: confirm the login on your phone.".to_string(),
                QrStatus::Unknown(s) => format!("The server says \"{s}\"; still waiting."),
                _ => String::new(),
            };
            if !said.is_empty() && said != last_said {
                say(out, &said);
                last_said = said;
            }
            match decide(codes_used, &status) {
                Next::Poll => {}
                Next::PollAt(base) => {
                    say(out, &format!("Scanned: the server moved this login to {base}; confirm on your phone."));
                    poll_base = base;
                }
                Next::NewCode => {
                    say(
                        out,
                        &format!(
                            "The QR code is no longer valid; here is a new one ({} of {MAX_CODES}).",
                            codes_used + 1
                        ),
                    );
                    break;
                }
                Next::AskVerifyCode => {
                    say(out, "Type the verification digits your phone shows, then Enter:");
                    match read_line().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()) {
                        Some(digits) => verify = Some(digits),
                        None => {
                            return Err(Error::Other(format!(
                                "WeChat login of channel \"{channel}\": a verification code is needed and none was typed"
                            )));
                        }
                    }
                    continue;
                }
                Next::Done(confirmed) => {
                    let account = Account {
                        token: confirmed.bot_token,
                        bot_id: confirmed.bot_id,
                        base_url: confirmed.base_url.unwrap_or_else(|| login_base.trim_end_matches('/').to_string()),
                        user_id: confirmed.user_id,
                        saved_at: now_ms(),
                    };
                    account::save_account(home, channel, &account)?;
                    return Ok(account);
                }
                Next::KeepExisting => {
                    return match account::load_account(home, channel)? {
                        Some(account) => Ok(account),
                        None => Err(Error::Other(format!(
                            "WeChat login of channel \"{channel}\": the server says this bot is already bound, \
                             but {} does not exist; unbind it in WeChat and run the login again",
                            account::account_path(home, channel).display()
                        ))),
                    };
                }
                Next::Fail(why) => return Err(Error::Other(format!("WeChat login of channel \"{channel}\": {why}"))),
            }
            if let Some(rest) = POLL_PAUSE.checked_sub(started.elapsed()) {
                std::thread::sleep(rest);
            }
        }
    }
}

/// A new QR code; transient failures are retried a few times.
fn fetch_code(api: &Api, login_base: &str) -> Result<wire::QrCode, Error> {
    let mut last = String::new();
    for attempt in 0..3 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_secs(2));
        }
        match api.get_at(login_base, wire::path::QR_CODE, Duration::from_secs(30)) {
            Ok(reply) => match wire::parse_qr_code(&reply) {
                Some(code) => return Ok(code),
                None => last = format!("the reply has no qrcode and qrcode_img_content: {reply}"),
            },
            Err(f @ (Failure::Transient(_) | Failure::Busy(_))) => last = f.to_string(),
            Err(f) => last = f.to_string(),
        }
    }
    Err(Error::Other(format!("cannot get a login QR code from {login_base}: {last}")))
}

fn show(out: &mut dyn Write, code: &wire::QrCode, colour: bool, n: u32) {
    let drawn = super::qr::render(&code.content, colour);
    let _ = writeln!(out, "\nScan this QR code with WeChat on your phone (code {n} of at most {MAX_CODES}):\n");
    if let Some(drawn) = drawn {
        let _ = write!(out, "{drawn}");
    }
    let _ = writeln!(out, "\nOr open this link in WeChat: {}\n", code.content);
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_for_each_state() {
        let confirmed = Confirmed { bot_token: "t".into(), bot_id: "b".into(), base_url: None, user_id: None };
        let cases = vec![
            (1, QrStatus::Wait, Next::Poll),
            (1, QrStatus::Scanned, Next::Poll),
            (1, QrStatus::Unknown("new".into()), Next::Poll),
            (1, QrStatus::Redirect("http://r".into()), Next::PollAt("http://r".into())),
            (1, QrStatus::Expired, Next::NewCode),
            (2, QrStatus::Expired, Next::NewCode),
            (1, QrStatus::VerifyCodeBlocked, Next::NewCode),
            (1, QrStatus::NeedVerifyCode, Next::AskVerifyCode),
            (1, QrStatus::Confirmed(confirmed.clone()), Next::Done(confirmed)),
            (1, QrStatus::AlreadyBound, Next::KeepExisting),
        ];
        for (used, status, want) in cases {
            assert_eq!(decide(used, &status), want, "{used} {status:?}");
        }
        assert!(matches!(decide(3, &QrStatus::Expired), Next::Fail(why) if why.contains("expired 3 times")));
        assert!(matches!(decide(3, &QrStatus::VerifyCodeBlocked), Next::Fail(_)));
    }
}
