//! The one integration-test binary: tether runs as a real process against loopback fakes,
//! with the built-in demo agent as its ACP agent.

mod access;
mod agents;
mod audit;
mod cli;
mod conversations;
mod dingtalk;
mod discord;
mod discord_gateway;
mod media;
mod permissions;
mod plugins;
mod qwen_keys;
mod replies;
mod seam;
mod service;
mod support;
mod telegram;
mod tidy;
mod webchat;
mod webhooks;
mod weixin;
