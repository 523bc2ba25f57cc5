//! Files in and out of WeChat: MIME types sniffed from magic bytes, safe names for saved
//! files under `TETHER_HOME/media/<channel>/` (0600), the `[IMAGE: /abs/path]` markers an
//! answer uses to send a picture (outside code only), and which files may be sent (only under
//! the channel's cwd or the media directory).

use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::event::AttachmentKind;

/// Largest file we download or upload: it is held in memory to be decrypted or encrypted.
pub const MAX_MEDIA_BYTES: usize = 20 * 1024 * 1024;

/// The MIME type of `bytes` from their first bytes; `kind` decides the fallback (pictures
/// without a known signature are JPEG, as both plugins assume).
pub fn sniff_mime(bytes: &[u8], kind: AttachmentKind) -> &'static str {
    let at = |offset: usize, magic: &[u8]| bytes.get(offset..offset + magic.len()) == Some(magic);
    if at(0, b"\x89PNG\r\n\x1a\n") {
        "image/png"
    } else if at(0, b"GIF87a") || at(0, b"GIF89a") {
        "image/gif"
    } else if at(0, b"RIFF") && at(8, b"WEBP") {
        "image/webp"
    } else if at(0, &[0xff, 0xd8, 0xff]) {
        "image/jpeg"
    } else if at(0, b"%PDF-") {
        "application/pdf"
    } else if at(0, b"PK\x03\x04") {
        "application/zip"
    } else if at(0, b"#!SILK") || at(1, b"#!SILK") {
        "audio/silk"
    } else if at(0, b"#!AMR") {
        "audio/amr"
    } else if at(0, b"ID3") || at(0, &[0xff, 0xfb]) {
        "audio/mpeg"
    } else if at(0, b"OggS") {
        "audio/ogg"
    } else if at(4, b"ftyp") {
        "video/mp4"
    } else {
        match kind {
            AttachmentKind::Image => "image/jpeg",
            _ => "application/octet-stream",
        }
    }
}

/// Whether sniffed bytes are a picture WeChat shows inline.
pub fn is_image(mime: &str) -> bool {
    matches!(mime, "image/png" | "image/gif" | "image/webp" | "image/jpeg")
}

/// A file name from a stranger made safe to use in our directory: its last path component,
/// control and separator characters replaced, at most 100 characters, never empty or a dot
/// name.
pub fn safe_file_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = base
        .chars()
        .map(|c| if c.is_control() || matches!(c, '/' | '\\' | ':' | '\u{2028}' | '\u{2029}') { '_' } else { c })
        .take(100)
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').to_string();
    if cleaned.is_empty() { "file".to_string() } else { cleaned }
}

/// `<home>/media/<channel>`.
pub fn media_dir(home: &Path, channel: &str) -> PathBuf {
    home.join("media").join(safe_file_name(channel))
}

/// How long received files are kept for the agent.
pub const RETENTION: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Where a received file goes: the directory of who sent it and what it is named.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    pub sender: &'a str,
    pub message_id: &'a str,
    /// Its place among the message's files, from 1.
    pub n: usize,
    pub name: &'a str,
}

/// Save a received file as `<home>/media/<channel>/<sender>/<message id>-<n>-<name>` through
/// the shared upload rules (0600, never overwriting or following a link, in 0700 directories
/// that nobody else prepared).
pub fn save(home: &Path, channel: &str, file: Received<'_>, bytes: &[u8]) -> Result<PathBuf, Error> {
    let root = media_dir(home, channel);
    let sender = sender_dir(file.sender);
    let name = format!("{}-{}-{}", safe_file_name(file.message_id), file.n, safe_file_name(file.name));
    crate::adapters::uploads::private_dir(&root, &sender)
        .and_then(|dir| crate::adapters::uploads::write_new_file(&dir, &name, bytes))
        .map_err(|source| Error::File { path: root.join(sender).join(name), action: "save", source })
}

/// A sender id as a directory name: characters outside `A-Z a-z 0-9 @ . _ -` become `_`
/// (no separators, no leading dot), at most 100.
fn sender_dir(sender: &str) -> String {
    let name: String = sender
        .chars()
        .take(100)
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '@' | '.' | '_' | '-') { c } else { '_' })
        .collect();
    match name.trim_start_matches('.') {
        "" => "unknown".to_string(),
        rest => rest.to_string(),
    }
}

/// Remove this channel's received files older than [`RETENTION`]; how many went.
pub fn clean_old(home: &Path, channel: &str) -> usize {
    crate::adapters::uploads::sweep(&media_dir(home, channel), RETENTION, std::time::SystemTime::now())
}

/// An answer split into its text (markers removed) and the files its `[IMAGE: /abs/path]`
/// markers name, in order. Markers inside fenced code or inline code stay as they are: the
/// agent was showing the syntax, not using it.
pub fn take_image_markers(text: &str) -> (String, Vec<PathBuf>) {
    const OPEN: &str = "[IMAGE:";
    let mut out = String::with_capacity(text.len());
    let mut paths = Vec::new();
    let mut fence: Option<(char, usize)> = None;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let marker = trimmed.chars().next().filter(|c| *c == '`' || *c == '~');
        if let Some(c) = marker {
            let run = trimmed.chars().take_while(|x| *x == c).count();
            if run >= 3 {
                match fence {
                    None => fence = Some((c, run)),
                    Some((open, len)) if open == c && run >= len && trimmed.trim_end().chars().all(|x| x == c) => {
                        fence = None
                    }
                    Some(_) => {}
                }
                out.push_str(line);
                continue;
            }
        }
        if fence.is_some() || !line.contains(OPEN) {
            out.push_str(line);
            continue;
        }
        // Outside fences: find markers that are not inside `inline code`.
        let before = paths.len();
        let mut in_code = false;
        let mut rest = line;
        let mut kept = String::new();
        while !rest.is_empty() {
            if !in_code
                && rest.starts_with(OPEN)
                && let Some(end) = rest.find(']')
                && let Some(inner) = rest.get(OPEN.len()..end)
                && Path::new(inner.trim()).is_absolute()
            {
                paths.push(PathBuf::from(inner.trim()));
                rest = rest.get(end + 1..).unwrap_or_default();
                continue;
            }
            let Some(c) = rest.chars().next() else { break };
            if c == '`' {
                in_code = !in_code;
            }
            kept.push(c);
            rest = rest.get(c.len_utf8()..).unwrap_or_default();
        }
        // A line that held only markers disappears instead of leaving a blank.
        if kept.trim().is_empty() && paths.len() > before {
            continue;
        }
        out.push_str(&kept);
    }
    (out.trim_end().to_string(), paths)
}

/// The real path of a file an answer asks to send, if it may be sent: it must exist, be a
/// regular file under one of `roots` after resolving links (so `..` and symlinks cannot
/// reach elsewhere), and be at most [`MAX_MEDIA_BYTES`].
pub fn allowed_outgoing(path: &Path, roots: &[PathBuf]) -> Result<PathBuf, String> {
    let real = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let inside = roots.iter().filter_map(|r| std::fs::canonicalize(r).ok()).any(|root| real.starts_with(&root));
    if !inside {
        let shown: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        return Err(format!("{}: not under {} (only files there may be sent)", path.display(), shown.join(" or ")));
    }
    let meta = std::fs::metadata(&real).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{}: not a regular file", path.display()));
    }
    if meta.len() > MAX_MEDIA_BYTES as u64 {
        return Err(format!(
            "{}: {} bytes, more than the {} MB limit",
            path.display(),
            meta.len(),
            MAX_MEDIA_BYTES >> 20
        ));
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mime_from_magic_bytes() {
        let cases: Vec<(&[u8], AttachmentKind, &str)> = vec![
            (b"\x89PNG\r\n\x1a\nrest", AttachmentKind::Image, "image/png"),
            (b"GIF89a..", AttachmentKind::Image, "image/gif"),
            (b"RIFF\0\0\0\0WEBPVP8 ", AttachmentKind::Image, "image/webp"),
            (b"RIFF\0\0\0\0WAVE", AttachmentKind::File, "application/octet-stream"),
            (&[0xff, 0xd8, 0xff, 0xe0], AttachmentKind::Image, "image/jpeg"),
            (b"garbage", AttachmentKind::Image, "image/jpeg"),
            (b"garbage", AttachmentKind::File, "application/octet-stream"),
            (b"%PDF-1.7", AttachmentKind::File, "application/pdf"),
            (b"\x02#!SILK_V3", AttachmentKind::Audio, "audio/silk"),
            (b"\0\0\0\x18ftypmp42", AttachmentKind::Video, "video/mp4"),
            (b"", AttachmentKind::File, "application/octet-stream"),
            (b"\x89P", AttachmentKind::File, "application/octet-stream"),
        ];
        for (bytes, kind, want) in cases {
            assert_eq!(sniff_mime(bytes, kind), want, "{bytes:?}");
        }
        assert!(is_image("image/webp") && !is_image("application/pdf"));
    }

    #[test]
    fn hostile_file_names() {
        let cases = [
            ("report.pdf", "report.pdf"),
            ("../../etc/passwd", "passwd"),
            ("..\\..\\boot.ini", "boot.ini"),
            ("..", "file"),
            (".hidden", "hidden"),
            ("", "file"),
            ("a\nb\u{0}c", "a_b_c"),
            ("C:evil", "C_evil"),
        ];
        for (name, want) in cases {
            assert_eq!(safe_file_name(name), want, "{name:?}");
        }
        assert_eq!(safe_file_name(&"é".repeat(300)).chars().count(), 100);
    }

    #[test]
    fn image_markers_outside_code_only() {
        let cases: Vec<(&str, &str, Vec<&str>)> = vec![
            ("Here it is [IMAGE: /tmp/a.png] done", "Here it is  done", vec!["/tmp/a.png"]),
            ("Chart:\n[IMAGE: /srv/p/chart.png]\nBye", "Chart:\nBye", vec!["/srv/p/chart.png"]),
            ("Use `[IMAGE: /x.png]` to send", "Use `[IMAGE: /x.png]` to send", vec![]),
            (
                "```\n[IMAGE: /in/fence.png]\n```\n[IMAGE: /out.png]",
                "```\n[IMAGE: /in/fence.png]\n```",
                vec!["/out.png"],
            ),
            ("~~~~\n```\n[IMAGE: /still/in.png]\n~~~~\nok", "~~~~\n```\n[IMAGE: /still/in.png]\n~~~~\nok", vec![]),
            ("[IMAGE: relative.png]", "[IMAGE: relative.png]", vec![]),
            ("[IMAGE: /a.png][IMAGE: /b.png]", "", vec!["/a.png", "/b.png"]),
            ("[IMAGE: /unclosed.png", "[IMAGE: /unclosed.png", vec![]),
            ("émoji 😀 [IMAGE: /ü.png] ok", "émoji 😀  ok", vec!["/ü.png"]),
        ];
        for (text, want_text, want_paths) in cases {
            let (got, paths) = take_image_markers(text);
            assert_eq!(got, want_text, "{text:?}");
            let want: Vec<PathBuf> = want_paths.iter().map(PathBuf::from).collect();
            assert_eq!(paths, want, "{text:?}");
        }
    }

    #[test]
    fn only_files_under_the_roots_may_be_sent() {
        let base = std::env::temp_dir().join(format!("tether-wx-media-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (cwd, media, outside) = (base.join("cwd"), base.join("media"), base.join("outside"));
        for dir in [&cwd, &media, &outside] {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(cwd.join("ok.png"), b"x").unwrap();
        std::fs::write(media.join("in.png"), b"x").unwrap();
        std::fs::write(outside.join("secret.png"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.join("secret.png"), cwd.join("link.png")).unwrap();
        let roots = vec![cwd.clone(), media.clone()];
        assert!(allowed_outgoing(&cwd.join("ok.png"), &roots).is_ok());
        assert!(allowed_outgoing(&media.join("in.png"), &roots).is_ok());
        for bad in
            [outside.join("secret.png"), cwd.join("link.png"), cwd.join("../outside/secret.png"), cwd.join("none.png")]
        {
            assert!(allowed_outgoing(&bad, &roots).is_err(), "{}", bad.display());
        }
        assert!(allowed_outgoing(&cwd, &roots).unwrap_err().contains("not a regular file"));
        let file = |name| Received { sender: "u/1@im.wechat", message_id: "123", n: 1, name };
        // `media/wx` is 0755 (made by this test): someone else's directory is never used.
        std::fs::create_dir_all(base.join("media/wx")).unwrap();
        let err = save(&base, "wx", file("x.pdf"), b"data").unwrap_err().to_string();
        assert!(err.contains("open to other users"), "{err}");
        let home = base.join("home");
        assert_eq!((sender_dir(".."), sender_dir("a/../b é")), ("unknown".to_string(), "a_.._b__".to_string()));
        let saved = save(&home, "wx", file("../x.pdf"), b"data").unwrap();
        assert_eq!(saved, home.join("media/wx/u_1@im.wechat/123-1-x.pdf"));
        // Never overwritten: a second file of the same name gets its own.
        let again = save(&home, "wx", file("x.pdf"), b"other").unwrap();
        assert_eq!(again, home.join("media/wx/u_1@im.wechat/1-123-1-x.pdf"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&saved).unwrap().permissions().mode() & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&base);
    }
}
