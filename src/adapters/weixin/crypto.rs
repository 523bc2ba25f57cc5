//! WeChat's media cipher: AES-128-ECB with PKCS#7 padding (no IV; not CBC), the three ways a
//! key arrives (hex; base64 of 16 raw bytes; base64 of 32 hex characters), and the small
//! encodings around it (hex, base64, MD5 of an upload). Pure.

use aes::Aes128;
use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use md5::{Digest, Md5};

/// AES block size in bytes.
const BLOCK: usize = 16;

/// A 16-byte AES-128 key.
pub type Key = [u8; 16];

/// How a key was written on the wire (reference §2.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyEncoding {
    /// `image_item.aeskey`: 32 hex characters.
    Hex,
    /// `media.aes_key`: base64 of the 16 raw bytes (seen on images).
    Base64Raw,
    /// `media.aes_key`: base64 of the 32 hex characters (files, voice, video; what we send).
    Base64Hex,
}

/// Why ciphertext or a key could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CryptoError {
    /// The ciphertext is empty or not a whole number of blocks.
    Length(usize),
    /// The last block does not end in valid PKCS#7 padding (wrong key, or damaged data).
    Padding,
    /// The key text is not one of the three encodings.
    Key(String),
}

impl std::fmt::Display for CryptoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CryptoError::Length(n) => write!(f, "ciphertext of {n} bytes is not a whole number of 16-byte blocks"),
            CryptoError::Padding => f.write_str("bad PKCS#7 padding after decryption (wrong key or damaged file)"),
            CryptoError::Key(why) => write!(f, "unusable AES key: {why}"),
        }
    }
}

/// The ciphertext length for `plain_len` bytes: PKCS#7 always adds 1 to 16 bytes.
pub fn padded_len(plain_len: usize) -> usize {
    (plain_len / BLOCK + 1) * BLOCK
}

/// Encrypt with AES-128-ECB and PKCS#7 padding.
pub fn encrypt(key: &Key, plain: &[u8]) -> Vec<u8> {
    let cipher = Aes128::new(GenericArray::from_slice(key));
    let pad = BLOCK - plain.len() % BLOCK;
    let mut out = Vec::with_capacity(plain.len() + pad);
    out.extend_from_slice(plain);
    out.extend(std::iter::repeat_n(pad as u8, pad));
    for block in out.chunks_exact_mut(BLOCK) {
        cipher.encrypt_block(GenericArray::from_mut_slice(block));
    }
    out
}

/// Decrypt AES-128-ECB and remove (and check) the PKCS#7 padding.
pub fn decrypt(key: &Key, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if data.is_empty() || !data.len().is_multiple_of(BLOCK) {
        return Err(CryptoError::Length(data.len()));
    }
    let cipher = Aes128::new(GenericArray::from_slice(key));
    let mut out = data.to_vec();
    for block in out.chunks_exact_mut(BLOCK) {
        cipher.decrypt_block(GenericArray::from_mut_slice(block));
    }
    let pad = out.last().copied().unwrap_or(0) as usize;
    if pad == 0 || pad > BLOCK || out.len() < pad {
        return Err(CryptoError::Padding);
    }
    let body_len = out.len() - pad;
    if !out.get(body_len..).unwrap_or_default().iter().all(|b| *b as usize == pad) {
        return Err(CryptoError::Padding);
    }
    out.truncate(body_len);
    Ok(out)
}

/// The key of a received media item: `image_item.aeskey` (hex) when present, else
/// `media.aes_key` (base64 of raw bytes or of hex). `Ok(None)`: no key at all (the item is
/// plain bytes, Tencent's fallback for images).
pub fn media_key(hex_key: Option<&str>, base64_key: Option<&str>) -> Result<Option<Key>, CryptoError> {
    if let Some(hex) = hex_key.map(str::trim).filter(|k| !k.is_empty()) {
        return decode_key(hex, KeyEncoding::Hex).map(Some);
    }
    match base64_key.map(str::trim).filter(|k| !k.is_empty()) {
        Some(text) => decode_base64_key(text).map(Some),
        None => Ok(None),
    }
}

/// A base64 key in either of its two forms, told apart by the decoded length.
pub fn decode_base64_key(text: &str) -> Result<Key, CryptoError> {
    let bytes = BASE64.decode(text.trim()).map_err(|e| CryptoError::Key(format!("not base64 ({e})")))?;
    match bytes.len() {
        16 => decode_key(text, KeyEncoding::Base64Raw),
        32 => decode_key(text, KeyEncoding::Base64Hex),
        n => Err(CryptoError::Key(format!("base64 decodes to {n} bytes, not 16 raw or 32 hex"))),
    }
}

/// A key written in `encoding`.
pub fn decode_key(text: &str, encoding: KeyEncoding) -> Result<Key, CryptoError> {
    let text = text.trim();
    let bytes = match encoding {
        KeyEncoding::Hex => from_hex(text).ok_or_else(|| CryptoError::Key("not hex".into()))?,
        KeyEncoding::Base64Raw => BASE64.decode(text).map_err(|e| CryptoError::Key(format!("not base64 ({e})")))?,
        KeyEncoding::Base64Hex => {
            let hex = BASE64.decode(text).map_err(|e| CryptoError::Key(format!("not base64 ({e})")))?;
            let hex = std::str::from_utf8(&hex).map_err(|_| CryptoError::Key("base64 of something not hex".into()))?;
            from_hex(hex).ok_or_else(|| CryptoError::Key("base64 of something not hex".into()))?
        }
    };
    Key::try_from(bytes.as_slice()).map_err(|_| CryptoError::Key(format!("{} bytes, not 16", bytes.len())))
}

/// `key` written in `encoding`.
pub fn encode_key(key: &Key, encoding: KeyEncoding) -> String {
    match encoding {
        KeyEncoding::Hex => to_hex(key),
        KeyEncoding::Base64Raw => BASE64.encode(key),
        KeyEncoding::Base64Hex => BASE64.encode(to_hex(key)),
    }
}

/// A fresh random key (and, with the same source, an upload's file key).
pub fn random_key() -> Result<Key, String> {
    let mut key = [0u8; 16];
    getrandom::fill(&mut key).map_err(|e| format!("no randomness from the system: {e}"))?;
    Ok(key)
}

/// Lower-case hex.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex (either case) to bytes; `None` for odd length or a non-hex character.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = text.bytes().map(|c| (c as char).to_digit(16).map(|d| d as u8)).collect::<Option<_>>()?;
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    Some(digits.chunks_exact(2).map(|pair| pair[0] << 4 | pair[1]).collect())
}

pub fn base64_encode(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

/// Hex MD5 of an upload's plaintext (`rawfilemd5`).
pub fn md5_hex(bytes: &[u8]) -> String {
    to_hex(&Md5::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        from_hex(text).unwrap()
    }

    fn key(text: &str) -> Key {
        Key::try_from(hex(text).as_slice()).unwrap()
    }

    /// FIPS-197 appendix C.1 and NIST SP 800-38A F.1.1 (ECB-AES128): the first blocks of our
    /// output are the published ciphertext; the padding block follows.
    #[test]
    fn nist_known_answers() {
        let cases = [
            (
                "000102030405060708090a0b0c0d0e0f",
                "00112233445566778899aabbccddeeff",
                "69c4e0d86a7b0430d8cdb78070b4c55a",
            ),
            (
                "2b7e151628aed2a6abf7158809cf4f3c",
                "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51\
                 30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710",
                "3ad77bb40d7a3660a89ecaf32466ef97f5d3d58503b9699de785895a96fdbaaf\
                 43b1cd7f598ece23881b00e3ed0306887b0c785e27e8ad3f8223207104725dd4",
            ),
        ];
        for (k, plain, want) in cases {
            let (k, plain, want) = (key(k), hex(plain), hex(want));
            let out = encrypt(&k, &plain);
            assert_eq!(out.len(), padded_len(plain.len()));
            assert_eq!(&out[..want.len()], want.as_slice(), "key {}", to_hex(&k));
            // The padding block is a full block of 16s, encrypted.
            assert_eq!(&out[want.len()..], encrypt(&k, &[])[..].as_ref());
            assert_eq!(decrypt(&k, &out).unwrap(), plain);
        }
    }

    #[test]
    fn padding_lengths_and_bad_input() {
        let k = key("2b7e151628aed2a6abf7158809cf4f3c");
        for n in [0, 1, 15, 16, 17, 31, 32, 100] {
            let plain: Vec<u8> = (0..n as u8).collect();
            let out = encrypt(&k, &plain);
            assert_eq!(out.len(), padded_len(n), "{n}");
            assert_eq!(out.len(), (n + 1).div_ceil(16) * 16, "the reference's formula, {n}");
            assert_eq!(decrypt(&k, &out).unwrap(), plain);
        }
        assert_eq!(decrypt(&k, &[]), Err(CryptoError::Length(0)));
        assert_eq!(decrypt(&k, &[0; 17]), Err(CryptoError::Length(17)));
        // The wrong key almost surely leaves invalid padding.
        let out = encrypt(&k, b"a secret picture");
        assert_eq!(decrypt(&key("000102030405060708090a0b0c0d0e0f"), &out), Err(CryptoError::Padding));
    }

    #[test]
    fn round_trip_with_each_key_encoding() {
        let k = random_key().unwrap();
        let plain = b"\x89PNG\r\n\x1a\n not really a picture".to_vec();
        let cipher = encrypt(&k, &plain);
        for encoding in [KeyEncoding::Hex, KeyEncoding::Base64Raw, KeyEncoding::Base64Hex] {
            let text = encode_key(&k, encoding);
            assert_eq!(decode_key(&text, encoding).unwrap(), k, "{encoding:?}");
            let found = match encoding {
                KeyEncoding::Hex => media_key(Some(&text), None),
                _ => media_key(None, Some(&text)),
            };
            assert_eq!(decrypt(&found.unwrap().unwrap(), &cipher).unwrap(), plain, "{encoding:?}");
        }
        assert_eq!(encode_key(&k, KeyEncoding::Hex).len(), 32);
        // The hex key wins over the base64 one, as both plugins do for images.
        let other = encode_key(&[7; 16], KeyEncoding::Base64Raw);
        assert_eq!(media_key(Some(&to_hex(&k)), Some(&other)).unwrap(), Some(k));
        assert_eq!(media_key(Some(" "), None).unwrap(), None);
        assert_eq!(media_key(None, None).unwrap(), None);
    }

    #[test]
    fn unusable_keys_are_refused() {
        let bad = [
            media_key(Some("abc"), None),
            media_key(Some("zz112233445566778899aabbccddeeff"), None),
            media_key(Some("00112233"), None),
            media_key(None, Some("not base64!")),
            media_key(None, Some(&BASE64.encode([1u8; 24]))),
            media_key(None, Some(&BASE64.encode("g".repeat(32)))),
        ];
        for result in bad {
            assert!(matches!(result, Err(CryptoError::Key(_))), "{result:?}");
        }
    }

    #[test]
    fn hex_and_md5() {
        assert_eq!(to_hex(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(from_hex("00ABff"), Some(vec![0, 0xab, 0xff]));
        assert_eq!(from_hex("0"), None);
        assert_eq!(from_hex("é1"), None);
        // RFC 1321 test suite.
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
    }
}
