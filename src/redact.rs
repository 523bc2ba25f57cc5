//! Configured secrets removed from text that came from elsewhere, before it is logged or
//! published: an upstream error (an HTTP body, a Telegram `description`, a URL in an I/O
//! error) may echo a bot token, and the log, `status.json`, `tether status` and the admin
//! page must not. The secrets are registered once the config is loaded (and on reload); the
//! log formatter and the health probes pass their text through [`clean`].

use std::borrow::Cow;
use std::sync::{PoisonError, RwLock};

use crate::config::Config;

/// What a secret becomes.
pub const MARK: &str = "[redacted]";
/// Shorter values are not registered: replacing them would mangle ordinary text, and a
/// secret that short protects nothing anyway.
const MIN_LEN: usize = 6;
/// Values remembered at most (a reload adds; old ones stay, harmlessly).
const MAX_SECRETS: usize = 256;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Remember `value` (and, for a `id:secret` bot token, its secret half) to redact.
pub fn register(value: &str) {
    let mut parts = vec![value.to_string()];
    if let Some((_, tail)) = value.split_once(':')
        && tail.len() >= 16
    {
        parts.push(tail.to_string());
    }
    let mut secrets = SECRETS.write().unwrap_or_else(PoisonError::into_inner);
    for part in parts {
        if part.len() >= MIN_LEN && !secrets.contains(&part) && secrets.len() < MAX_SECRETS {
            secrets.push(part);
        }
    }
    // Longest first, so a secret containing another is replaced whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// Register every secret of `config`: the channels' tokens and client secrets.
pub fn register_config(config: &Config) {
    for secret in config.channels.values().flat_map(|c| c.secrets()) {
        register(secret.expose());
    }
}

/// `text` with every registered secret replaced by [`MARK`].
pub fn clean(text: &str) -> Cow<'_, str> {
    let secrets = SECRETS.read().unwrap_or_else(PoisonError::into_inner);
    clean_with(text, &secrets)
}

/// [`clean`] against an explicit list (pure; the tests use it).
pub fn clean_with<'a>(text: &'a str, secrets: &[String]) -> Cow<'a, str> {
    let mut out = Cow::Borrowed(text);
    for secret in secrets {
        if out.contains(secret.as_str()) {
            out = Cow::Owned(out.replace(secret.as_str(), MARK));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_table() {
        let secrets = vec!["123456:ABCdefGHIjklMNOpqrSTU".to_string(), "ABCdefGHIjklMNOpqrSTU".to_string()];
        let cases = [
            ("plain text", "plain text"),
            (
                "POST https://api.telegram.org/bot123456:ABCdefGHIjklMNOpqrSTU/getUpdates: 502",
                "POST https://api.telegram.org/bot[redacted]/getUpdates: 502",
            ),
            ("{\"description\":\"bad token ABCdefGHIjklMNOpqrSTU\"}", "{\"description\":\"bad token [redacted]\"}"),
        ];
        for (input, expected) in cases {
            assert_eq!(clean_with(input, &secrets), expected);
        }
    }

    #[test]
    fn registered_secrets_are_cleaned_and_short_ones_ignored() {
        register("zz-test-secret-value-0001");
        register("abc");
        assert_eq!(clean("x zz-test-secret-value-0001 y"), "x [redacted] y");
        assert_eq!(clean("abc stays"), "abc stays");
    }
}
