//! `multipart/form-data` bodies for file uploads (Telegram, Discord): text fields and one
//! file, with a boundary that occurs in none of the parts. Pure.

/// A `multipart/form-data` body: the text fields, then one file. `boundary` must not occur
/// in any part (see [`pick_boundary`]). File names lose quotes, backslashes and controls.
pub fn multipart(boundary: &str, fields: &[(&str, String)], file: (&str, &str, &str, &[u8])) -> Vec<u8> {
    let (field, file_name, mime, bytes) = file;
    let mut body = Vec::with_capacity(bytes.len() + 512);
    for (name, value) in fields {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").as_bytes(),
        );
    }
    let file_name: String = file_name.chars().filter(|c| !c.is_control() && !matches!(c, '"' | '\\')).collect();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{file_name}\"\r\n\
             Content-Type: {mime}\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

/// A boundary made from `seed` that occurs in none of `parts`.
pub fn pick_boundary(seed: u64, parts: &[&[u8]]) -> String {
    let mut n = seed;
    loop {
        let boundary = format!("tether-{n:016x}");
        let needle = boundary.as_bytes();
        if !parts.iter().any(|p| p.windows(needle.len()).any(|w| w == needle)) {
            return boundary;
        }
        n = n.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    }
}
