//! The WeChat channel (Tencent's iLink bot API): QR login, a long-poll thread over
//! `getupdates` with the server's cursor, per-user context tokens, media through the CDN
//! encrypted with AES-128-ECB.

pub mod account;
pub mod api;
pub mod crypto;
pub mod link;
pub mod login;
pub mod media;
pub mod poll;
pub mod qr;
pub mod wire;
