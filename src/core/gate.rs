//! Who may reach the agent: the group policy, mention gating and the sender policy, in
//! that order. Pure. Anything not explicitly allowed is dropped; an unknown sender under
//! `senderPolicy: pairing` may ask for a pairing code, in a direct chat only.

use crate::config::{ChannelConfig, GroupPolicy, SenderPolicy};
use crate::event::InboundMessage;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// On to local commands and routing.
    Pass,
    /// An unknown sender in a direct chat under `senderPolicy: pairing`: the pairing book
    /// decides whether they get a code. The message itself never goes further.
    Pair,
    /// Dropped silently (the reason is for the log).
    Drop(&'static str),
}

/// Judge one message. `paired`: the sender is in the channel's approved list (the
/// `<channel>-allowlist.json` the operator fills with `tether pairing approve`).
pub fn check(channel: &ChannelConfig, m: &InboundMessage, paired: bool) -> Verdict {
    // An event of a webhook source that authenticated (only the webhook adapter sets this,
    // after checking the request's signature or secret): the operator chose this channel and
    // chat as its target, so no person's policy applies to it.
    if m.webhook.is_some() {
        return Verdict::Pass;
    }
    if m.is_group {
        match channel.group_policy {
            GroupPolicy::Disabled => return Verdict::Drop("groupPolicy is disabled"),
            // "*" holds defaults for every group; it is never an allow of its own.
            GroupPolicy::Allowlist if m.chat_id == "*" || !channel.groups.contains_key(&m.chat_id) => {
                return Verdict::Drop("group not in groups (groupPolicy allowlist)");
            }
            GroupPolicy::Allowlist | GroupPolicy::Open => {}
        }
        if channel.group(&m.chat_id).require_mention && !m.is_mentioned && !m.is_reply_to_bot {
            return Verdict::Drop("bot not mentioned (requireMention)");
        }
    }
    if channel.allowed_users.contains(&m.sender_id) {
        return Verdict::Pass;
    }
    match channel.sender_policy {
        SenderPolicy::Open => Verdict::Pass,
        SenderPolicy::Allowlist => Verdict::Drop("sender not in allowedUsers"),
        SenderPolicy::Pairing if paired => Verdict::Pass,
        // A code posted in a group would let anyone there pair with it.
        SenderPolicy::Pairing if m.is_group => Verdict::Drop("unpaired sender in a group (codes go to DMs only)"),
        SenderPolicy::Pairing => Verdict::Pair,
    }
}

/// Whether `text` is the `/start` command (what Telegram sends when someone opens the bot),
/// with or without a deep-link argument. `/start@otherbot` is not ours.
pub fn is_start_command(text: &str) -> bool {
    text.split_whitespace().next().is_some_and(|word| word.eq_ignore_ascii_case("/start"))
}

/// The name of a sender policy as written in the config.
pub fn sender_policy_name(policy: SenderPolicy) -> &'static str {
    match policy {
        SenderPolicy::Allowlist => "allowlist",
        SenderPolicy::Pairing => "pairing",
        SenderPolicy::Open => "open",
    }
}

/// The name of a group policy as written in the config.
pub fn group_policy_name(policy: GroupPolicy) -> &'static str {
    match policy {
        GroupPolicy::Disabled => "disabled",
        GroupPolicy::Allowlist => "allowlist",
        GroupPolicy::Open => "open",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GroupConfig;
    use crate::core::tests::channel;

    const ALLOWED: &str = "111";
    const PAIRED: &str = "222";
    const STRANGER: &str = "999";
    const LISTED_GROUP: &str = "-100";
    const OTHER_GROUP: &str = "-200";

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Where {
        Dm,
        Group(&'static str),
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Address {
        /// Neither mentioned nor a reply (a forged `@otherbot`, the name in a code span or
        /// a URL: the adapter reports these as not mentioned).
        Plain,
        Mention,
        ReplyToBot,
    }

    /// `groups` as configured: which keys, and where `requireMention: false` is written.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Groups {
        /// `{"-100": {}}`
        Listed,
        /// `{"-100": {"requireMention": false}}`
        ListedNoMention,
        /// `{"*": {"requireMention": false}, "-100": {}}`: the group inherits false key by key.
        WildcardNoMention,
        /// `{"*": {"requireMention": false}, "-100": {"requireMention": true}}`
        ListedOverridesWildcard,
    }

    fn configured(sender: SenderPolicy, group: GroupPolicy, groups: Groups) -> ChannelConfig {
        let mut c = channel("tg");
        c.sender_policy = sender;
        c.allowed_users = vec![ALLOWED.into()];
        c.group_policy = group;
        let entry = |m: Option<bool>| GroupConfig { require_mention: m, dispatch_mode: None };
        c.groups = match groups {
            Groups::Listed => [(LISTED_GROUP.to_string(), entry(None))].into(),
            Groups::ListedNoMention => [(LISTED_GROUP.to_string(), entry(Some(false)))].into(),
            Groups::WildcardNoMention => {
                [("*".to_string(), entry(Some(false))), (LISTED_GROUP.to_string(), entry(None))].into()
            }
            Groups::ListedOverridesWildcard => {
                [("*".to_string(), entry(Some(false))), (LISTED_GROUP.to_string(), entry(Some(true)))].into()
            }
        };
        c
    }

    fn message(sender: &str, place: Where, address: Address) -> InboundMessage {
        let (chat_id, is_group) = match place {
            Where::Dm => (sender.to_string(), false),
            Where::Group(id) => (id.to_string(), true),
        };
        InboundMessage {
            channel: "tg".into(),
            sender_id: sender.into(),
            sender_name: "N".into(),
            chat_id,
            is_group,
            // The adapter marks every direct message as addressed to the bot.
            is_mentioned: !is_group || address == Address::Mention,
            is_reply_to_bot: address == Address::ReplyToBot,
            text: "hi".into(),
            ..Default::default()
        }
    }

    /// Hand-written cases: the ones a reviewer would ask about first.
    #[test]
    fn table_of_notable_cases() {
        use Address::{Mention, Plain, ReplyToBot};
        use GroupPolicy as G;
        use Groups::{Listed, ListedNoMention, ListedOverridesWildcard, WildcardNoMention};
        use SenderPolicy as S;
        let (dm, g100, g200, gstar) =
            (Where::Dm, Where::Group(LISTED_GROUP), Where::Group(OTHER_GROUP), Where::Group("*"));
        let pass = Verdict::Pass;
        let disabled = Verdict::Drop("groupPolicy is disabled");
        let unlisted = Verdict::Drop("group not in groups (groupPolicy allowlist)");
        let unmentioned = Verdict::Drop("bot not mentioned (requireMention)");
        let not_allowed = Verdict::Drop("sender not in allowedUsers");
        let no_codes = Verdict::Drop("unpaired sender in a group (codes go to DMs only)");
        #[rustfmt::skip]
        let cases: Vec<(S, G, Groups, &str, Where, Address, &Verdict)> = vec![
            // Direct messages: only the sender policy matters.
            (S::Allowlist, G::Disabled, Listed, ALLOWED, dm, Plain, &pass),
            (S::Allowlist, G::Disabled, Listed, STRANGER, dm, Plain, &not_allowed),
            // Under allowlist the pairing file does not count: only allowedUsers.
            (S::Allowlist, G::Disabled, Listed, PAIRED, dm, Plain, &not_allowed),
            (S::Pairing, G::Disabled, Listed, ALLOWED, dm, Plain, &pass),
            (S::Pairing, G::Disabled, Listed, PAIRED, dm, Plain, &pass),
            (S::Pairing, G::Disabled, Listed, STRANGER, dm, Plain, &Verdict::Pair),
            (S::Open, G::Disabled, Listed, STRANGER, dm, Plain, &pass),
            // Groups: the group policy first, whoever the sender is.
            (S::Open, G::Disabled, Listed, ALLOWED, g100, Mention, &disabled),
            (S::Open, G::Allowlist, Listed, ALLOWED, g200, Mention, &unlisted),
            (S::Open, G::Allowlist, WildcardNoMention, ALLOWED, g200, Mention, &unlisted),
            (S::Open, G::Allowlist, WildcardNoMention, ALLOWED, gstar, Mention, &unlisted),
            (S::Open, G::Allowlist, Listed, STRANGER, g100, Mention, &pass),
            (S::Open, G::Open, Listed, STRANGER, g200, Mention, &pass),
            // Then the mention (or a reply to the bot).
            (S::Open, G::Open, Listed, ALLOWED, g200, Plain, &unmentioned),
            (S::Open, G::Open, Listed, ALLOWED, g200, ReplyToBot, &pass),
            (S::Open, G::Allowlist, ListedNoMention, ALLOWED, g100, Plain, &pass),
            // A group's entry is merged over "*" key by key.
            (S::Open, G::Allowlist, WildcardNoMention, ALLOWED, g100, Plain, &pass),
            (S::Open, G::Allowlist, ListedOverridesWildcard, ALLOWED, g100, Plain, &unmentioned),
            // Under open groups "*" applies to groups without an entry.
            (S::Open, G::Open, WildcardNoMention, ALLOWED, g200, Plain, &pass),
            // Then the sender: no codes in groups.
            (S::Pairing, G::Open, Listed, STRANGER, g100, Mention, &no_codes),
            (S::Pairing, G::Open, Listed, PAIRED, g100, Mention, &pass),
            (S::Allowlist, G::Open, Listed, STRANGER, g100, ReplyToBot, &not_allowed),
        ];
        for (sender, group, groups, who, place, address, expected) in cases {
            let c = configured(sender, group, groups);
            let got = check(&c, &message(who, place, address), who == PAIRED);
            assert_eq!(&got, expected, "{sender:?} {group:?} {groups:?} sender={who} {place:?} {address:?}");
        }
    }

    /// Every combination, against the rules stated independently as "what must hold for a
    /// message to reach routing".
    #[test]
    fn every_combination_reaches_routing_only_when_the_rules_allow() {
        let senders = [SenderPolicy::Allowlist, SenderPolicy::Pairing, SenderPolicy::Open];
        let group_policies = [GroupPolicy::Disabled, GroupPolicy::Allowlist, GroupPolicy::Open];
        let groups_forms =
            [Groups::Listed, Groups::ListedNoMention, Groups::WildcardNoMention, Groups::ListedOverridesWildcard];
        let places = [Where::Dm, Where::Group(LISTED_GROUP), Where::Group(OTHER_GROUP), Where::Group("*")];
        let addresses = [Address::Plain, Address::Mention, Address::ReplyToBot];
        let who = [ALLOWED, PAIRED, STRANGER];
        let mut passed = 0;
        let mut total = 0;
        for sender in senders {
            for group in group_policies {
                for groups in groups_forms {
                    let c = configured(sender, group, groups);
                    for place in places {
                        for address in addresses {
                            for id in who {
                                let got = check(&c, &message(id, place, address), id == PAIRED);
                                let expected = oracle(sender, group, groups, id, place, address);
                                assert_eq!(
                                    got, expected,
                                    "{sender:?} {group:?} {groups:?} sender={id} {place:?} {address:?}"
                                );
                                total += 1;
                                passed += usize::from(got == Verdict::Pass);
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(total, 3 * 3 * 4 * 4 * 3 * 3);
        // Sanity: the table is not all drops nor all passes.
        assert!(passed > 50 && passed < total / 2, "{passed} of {total} passed");
    }

    /// The rules, written as facts about the configuration rather than as the code's steps.
    fn oracle(
        sender: SenderPolicy,
        group: GroupPolicy,
        groups: Groups,
        id: &str,
        place: Where,
        address: Address,
    ) -> Verdict {
        let in_group = place != Where::Dm;
        let chat_is_listed = place == Where::Group(LISTED_GROUP);
        let group_admitted = match group {
            GroupPolicy::Disabled => false,
            GroupPolicy::Allowlist => chat_is_listed,
            GroupPolicy::Open => true,
        };
        // requireMention after merging the chat's own entry over "*" key by key.
        let mention_required = match (groups, chat_is_listed) {
            (Groups::Listed, _) => true,
            (Groups::ListedNoMention, listed) => !listed,
            (Groups::WildcardNoMention, _) => false,
            (Groups::ListedOverridesWildcard, listed) => listed,
        };
        let addressed = address != Address::Plain;
        let known = id == ALLOWED || (id == PAIRED && sender == SenderPolicy::Pairing);
        let sender_ok = known || sender == SenderPolicy::Open;
        if in_group && !group_admitted {
            return Verdict::Drop(if group == GroupPolicy::Disabled {
                "groupPolicy is disabled"
            } else {
                "group not in groups (groupPolicy allowlist)"
            });
        }
        if in_group && mention_required && !addressed {
            return Verdict::Drop("bot not mentioned (requireMention)");
        }
        match (sender_ok, sender, in_group) {
            (true, _, _) => Verdict::Pass,
            (false, SenderPolicy::Pairing, false) => Verdict::Pair,
            (false, SenderPolicy::Pairing, true) => Verdict::Drop("unpaired sender in a group (codes go to DMs only)"),
            (false, _, _) => Verdict::Drop("sender not in allowedUsers"),
        }
    }

    /// A webhook event (marked by the webhook adapter after its signature checked out) passes
    /// whatever the policies; the same words from a sender merely named like a webhook are a
    /// stranger's (open policies let strangers through anyway).
    #[test]
    fn an_authenticated_webhook_event_passes_and_a_lookalike_sender_does_not() {
        let senders = [SenderPolicy::Allowlist, SenderPolicy::Pairing, SenderPolicy::Open];
        let group_policies = [GroupPolicy::Disabled, GroupPolicy::Allowlist, GroupPolicy::Open];
        let places = [Where::Dm, Where::Group(LISTED_GROUP), Where::Group(OTHER_GROUP)];
        for sender in senders {
            for group in group_policies {
                let c = configured(sender, group, Groups::Listed);
                for place in places {
                    let lookalike = message("webhook:ci", place, Address::Plain);
                    let event = InboundMessage { webhook: Some("ci".into()), ..lookalike.clone() };
                    assert_eq!(check(&c, &event, false), Verdict::Pass, "{sender:?} {group:?} {place:?}");
                    let expected = oracle(sender, group, Groups::Listed, "webhook:ci", place, Address::Plain);
                    assert_eq!(check(&c, &lookalike, false), expected, "{sender:?} {group:?} {place:?}");
                }
            }
        }
    }

    #[test]
    fn start_command_forms() {
        let cases = [
            ("/start", true),
            ("/START", true),
            ("  /start abc123", true),
            ("/start@other_bot", false),
            ("/started", false),
            ("start", false),
            ("hello /start", false),
            ("", false),
        ];
        for (text, expected) in cases {
            assert_eq!(is_start_command(text), expected, "{text:?}");
        }
    }
}
