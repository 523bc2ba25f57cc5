//! Who may reach the agent: the group policy, mention gating and the sender policy, in
//! that order. Pure. Anything not explicitly allowed is dropped.

use crate::config::{ChannelConfig, GroupPolicy, SenderPolicy};
use crate::event::InboundMessage;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Dropped silently (the reason is for the log).
    Drop(&'static str),
}

pub fn check(channel: &ChannelConfig, m: &InboundMessage) -> Verdict {
    if m.is_group {
        match channel.group_policy {
            GroupPolicy::Disabled => return Verdict::Drop("groupPolicy is disabled"),
            GroupPolicy::Allowlist if m.chat_id == "*" || !channel.groups.contains_key(&m.chat_id) => {
                return Verdict::Drop("group not in groups (groupPolicy allowlist)");
            }
            _ => {}
        }
        if channel.group(&m.chat_id).require_mention && !m.is_mentioned && !m.is_reply_to_bot {
            return Verdict::Drop("bot not mentioned (requireMention)");
        }
    }
    let listed = channel.allowed_users.contains(&m.sender_id);
    match channel.sender_policy {
        SenderPolicy::Open => Verdict::Pass,
        _ if listed => Verdict::Pass,
        SenderPolicy::Allowlist => Verdict::Drop("sender not in allowedUsers"),
        SenderPolicy::Pairing => Verdict::Drop("sender not paired"),
    }
}
