//! The WeChat channel (Tencent's iLink bot API): QR login, a long-poll thread over
//! `getupdates` with the server's cursor, per-user context tokens, media through the CDN
//! encrypted with AES-128-ECB.

pub mod crypto;
pub mod media;
pub mod wire;
