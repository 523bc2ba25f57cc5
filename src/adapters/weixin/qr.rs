//! A QR code for the terminal: two rows of modules per line of text with Unicode half
//! blocks (`▀ ▄ █`), light modules drawn as ink so that a dark terminal shows dark-on-light,
//! with a quiet zone. On a terminal, colours are forced (white on black) so a light theme
//! scans too.

use qrcodegen::{QrCode, QrCodeEcc};

/// Modules of light margin around the code (scanners need some; 2 keeps it small).
const QUIET: i32 = 2;

/// The code for `text` as lines of half blocks; `None` when the text is too long for a QR
/// code (the caller then shows only the URL).
pub fn render(text: &str, colour: bool) -> Option<String> {
    let code = QrCode::encode_text(text, QrCodeEcc::Low).ok()?;
    let size = code.size();
    // Outside the code (the quiet zone) every module is light.
    let light = |x: i32, y: i32| !(0..size).contains(&x) || !(0..size).contains(&y) || !code.get_module(x, y);
    let mut out = String::new();
    let mut y = -QUIET;
    while y < size + QUIET {
        if colour {
            out.push_str("\x1b[97;40m");
        }
        for x in -QUIET..size + QUIET {
            out.push(match (light(x, y), light(x, y + 1) && y + 1 < size + QUIET) {
                (true, true) => '█',
                (true, false) => '▀',
                (false, true) => '▄',
                (false, false) => ' ',
            });
        }
        if colour {
            out.push_str("\x1b[0m");
        }
        out.push('\n');
        y += 2;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Read the modules back from the half blocks (inverse of `render`).
    fn modules(drawn: &str) -> Vec<Vec<bool>> {
        let mut rows = Vec::new();
        for line in drawn.lines() {
            let (top, bottom): (Vec<bool>, Vec<bool>) = line
                .chars()
                .map(|c| match c {
                    '█' => (true, true),
                    '▀' => (true, false),
                    '▄' => (false, true),
                    _ => (false, false),
                })
                .unzip();
            rows.push(top);
            rows.push(bottom);
        }
        rows
    }

    #[test]
    fn the_drawing_is_the_code() {
        let url = "https://liteapp.weixin.qq.com/q/7GiQu1?qrcode=0123456789abcdef&bot_type=3";
        let drawn = render(url, false).unwrap();
        let code = QrCode::encode_text(url, QrCodeEcc::Low).unwrap();
        let size = code.size();
        let rows = modules(&drawn);
        let width = (size + 2 * QUIET) as usize;
        assert!(drawn.lines().all(|l| l.chars().count() == width));
        for y in 0..size {
            for x in 0..size {
                let light = rows[(y + QUIET) as usize][(x + QUIET) as usize];
                assert_eq!(light, !code.get_module(x, y), "module {x},{y}");
            }
        }
        // The quiet zone is light all round.
        assert!(rows[0].iter().all(|m| *m) && rows[1].iter().all(|m| *m));
        assert!(rows.iter().take((size + 2 * QUIET) as usize).all(|r| r[0] && r[1] && r[width - 1]));
        // Half the rows: a code of 37 modules fits in ~21 lines.
        assert_eq!(drawn.lines().count(), (size + 2 * QUIET + 1) as usize / 2);
    }

    #[test]
    fn colour_wraps_each_line_and_too_long_is_none() {
        let drawn = render("x", true).unwrap();
        assert!(drawn.lines().all(|l| l.starts_with("\x1b[97;40m") && l.ends_with("\x1b[0m")));
        assert_eq!(render(&"x".repeat(8000), false), None);
    }
}
