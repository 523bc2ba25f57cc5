//! Who may reach the agent: the group policy, the DM policy, mention gating and the sender
//! policy, in that order (Qwen Code 0.24's order). Pure. Anything not explicitly allowed is
//! dropped; an unknown sender under `senderPolicy: pairing` may ask for a pairing code, in a
//! direct chat only; an unapproved group under `groupPolicy: pairing` asks the operator (the
//! code goes to the operator, never into the group).

use crate::config::{ChannelConfig, DmPolicy, GroupPolicy, SenderPolicy};
use crate::event::InboundMessage;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// On to local commands and routing.
    Pass,
    /// An unknown sender in a direct chat under `senderPolicy: pairing`: the pairing book
    /// decides whether they get a code. The message itself never goes further.
    Pair,
    /// An authorised sender mentioned the bot in a group not yet approved under
    /// `groupPolicy: pairing`: the group asks the operator for approval. The message itself
    /// never goes further.
    PairGroup,
    /// An authorised sender wrote in an admitted group without addressing the bot: not a
    /// turn, but context the next mention may carry (`groupHistoryLimit`).
    Overheard,
    /// Dropped silently (the reason is for the log).
    Drop(&'static str),
}

/// What the pairing files say about a message's sender and chat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Approvals {
    /// The sender is in `<channel>-allowlist.json` (counts under `senderPolicy: pairing`).
    pub sender: bool,
    /// The chat is in `<channel>-groups.json` (counts under `groupPolicy: pairing`).
    pub group: bool,
}

/// Judge one message against the channel's policies and the pairing files.
pub fn check(channel: &ChannelConfig, m: &InboundMessage, approvals: Approvals) -> Verdict {
    // An event of a webhook source that authenticated (only the webhook adapter sets this,
    // after checking the request's signature or secret): the operator chose this channel and
    // chat as its target, so no person's policy applies to it.
    if m.webhook.is_some() {
        return Verdict::Pass;
    }
    let sender_ok = channel.allowed_users.contains(&m.sender_id)
        || match channel.sender_policy {
            SenderPolicy::Open => true,
            SenderPolicy::Allowlist => false,
            SenderPolicy::Pairing => approvals.sender,
        };
    let addressed = m.is_mentioned || m.is_reply_to_bot;
    if m.is_group {
        match channel.group_policy {
            GroupPolicy::Disabled => return Verdict::Drop("groupPolicy is disabled"),
            // "*" holds defaults for every group; it is never an allow of its own.
            GroupPolicy::Allowlist if m.chat_id == "*" || !channel.groups.contains_key(&m.chat_id) => {
                return Verdict::Drop("group not in groups (groupPolicy allowlist)");
            }
            // Only someone who may use the bot can make a group ask: strangers adding the
            // bot to groups must not fill the operator's pending list.
            GroupPolicy::Pairing if !approvals.group => {
                return match (addressed, sender_ok) {
                    (true, true) => Verdict::PairGroup,
                    (true, false) => Verdict::Drop("unapproved group, sender not allowed to ask (groupPolicy pairing)"),
                    (false, _) => Verdict::Drop("unapproved group (groupPolicy pairing)"),
                };
            }
            GroupPolicy::Allowlist | GroupPolicy::Open | GroupPolicy::Pairing => {}
        }
    } else if channel.dm_policy == DmPolicy::Disabled {
        return Verdict::Drop("direct messages are disabled (dmPolicy)");
    }
    if m.is_group && channel.group(&m.chat_id).require_mention && !addressed {
        return if sender_ok { Verdict::Overheard } else { Verdict::Drop("bot not mentioned (requireMention)") };
    }
    match channel.sender_policy {
        _ if sender_ok => Verdict::Pass,
        SenderPolicy::Allowlist | SenderPolicy::Open => Verdict::Drop("sender not in allowedUsers"),
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
        GroupPolicy::Pairing => "pairing",
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
        let entry = |m: Option<bool>| GroupConfig { require_mention: m, ..GroupConfig::default() };
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
        let overheard = Verdict::Overheard;
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
            (S::Open, G::Open, Listed, ALLOWED, g200, Plain, &overheard),
            (S::Allowlist, G::Open, Listed, STRANGER, g200, Plain, &unmentioned),
            (S::Open, G::Open, Listed, ALLOWED, g200, ReplyToBot, &pass),
            (S::Open, G::Allowlist, ListedNoMention, ALLOWED, g100, Plain, &pass),
            // A group's entry is merged over "*" key by key.
            (S::Open, G::Allowlist, WildcardNoMention, ALLOWED, g100, Plain, &pass),
            (S::Open, G::Allowlist, ListedOverridesWildcard, ALLOWED, g100, Plain, &overheard),
            // Under open groups "*" applies to groups without an entry.
            (S::Open, G::Open, WildcardNoMention, ALLOWED, g200, Plain, &pass),
            // Then the sender: no codes in groups.
            (S::Pairing, G::Open, Listed, STRANGER, g100, Mention, &no_codes),
            (S::Pairing, G::Open, Listed, PAIRED, g100, Mention, &pass),
            (S::Allowlist, G::Open, Listed, STRANGER, g100, ReplyToBot, &not_allowed),
        ];
        for (sender, group, groups, who, place, address, expected) in cases {
            let c = configured(sender, group, groups);
            let got = check(&c, &message(who, place, address), Approvals { sender: who == PAIRED, group: false });
            assert_eq!(&got, expected, "{sender:?} {group:?} {groups:?} sender={who} {place:?} {address:?}");
        }
    }

    /// `dmPolicy` and `groupPolicy: pairing`, which the full table below leaves out.
    #[test]
    fn dm_policy_and_group_pairing() {
        use Address::{Mention, Plain, ReplyToBot};
        use DmPolicy as D;
        use GroupPolicy as G;
        use SenderPolicy as S;
        let (dm, group) = (Where::Dm, Where::Group(OTHER_GROUP));
        let dms_off = Verdict::Drop("direct messages are disabled (dmPolicy)");
        let unapproved = Verdict::Drop("unapproved group (groupPolicy pairing)");
        let may_not_ask = Verdict::Drop("unapproved group, sender not allowed to ask (groupPolicy pairing)");
        let not_allowed = Verdict::Drop("sender not in allowedUsers");
        let (pass, pair_group, overheard) = (Verdict::Pass, Verdict::PairGroup, Verdict::Overheard);
        #[rustfmt::skip]
        type Case<'a> = (D, G, S, &'a str, Where, Address, bool, &'a Verdict);
        let cases: Vec<Case> = vec![
            // dmPolicy disabled drops every DM before any other gate: no pass, no code.
            (D::Disabled, G::Open, S::Allowlist, ALLOWED, dm, Plain, false, &dms_off),
            (D::Disabled, G::Open, S::Pairing, STRANGER, dm, Plain, false, &dms_off),
            (D::Disabled, G::Open, S::Pairing, PAIRED, dm, Plain, false, &dms_off),
            (D::Disabled, G::Open, S::Open, STRANGER, dm, Plain, false, &dms_off),
            // ... and leaves groups alone.
            (D::Disabled, G::Open, S::Allowlist, ALLOWED, group, Mention, false, &pass),
            (D::Disabled, G::Open, S::Allowlist, ALLOWED, group, Plain, false, &overheard),
            (D::Open, G::Open, S::Allowlist, ALLOWED, dm, Plain, false, &pass),
            // groupPolicy pairing: an unapproved group asks once it is addressed by someone
            // who may use the bot; nothing else from it goes anywhere.
            (D::Open, G::Pairing, S::Allowlist, ALLOWED, group, Mention, false, &pair_group),
            (D::Open, G::Pairing, S::Allowlist, ALLOWED, group, ReplyToBot, false, &pair_group),
            (D::Open, G::Pairing, S::Pairing, PAIRED, group, Mention, false, &pair_group),
            (D::Open, G::Pairing, S::Open, STRANGER, group, Mention, false, &pair_group),
            (D::Open, G::Pairing, S::Allowlist, ALLOWED, group, Plain, false, &unapproved),
            (D::Open, G::Pairing, S::Allowlist, STRANGER, group, Mention, false, &may_not_ask),
            (D::Open, G::Pairing, S::Pairing, STRANGER, group, Mention, false, &may_not_ask),
            // An approved group is admitted; its members still pass the sender policy.
            (D::Open, G::Pairing, S::Allowlist, ALLOWED, group, Mention, true, &pass),
            (D::Open, G::Pairing, S::Allowlist, STRANGER, group, Mention, true, &not_allowed),
            (D::Open, G::Pairing, S::Pairing, PAIRED, group, Mention, true, &pass),
            (D::Open, G::Pairing, S::Open, STRANGER, group, Mention, true, &pass),
            (D::Open, G::Pairing, S::Allowlist, ALLOWED, group, Plain, true, &overheard),
            // Approval of a group means nothing in a DM or under another group policy.
            (
                D::Open,
                G::Disabled,
                S::Allowlist,
                ALLOWED,
                group,
                Mention,
                true,
                &Verdict::Drop("groupPolicy is disabled"),
            ),
            (D::Open, G::Pairing, S::Allowlist, STRANGER, dm, Plain, true, &not_allowed),
        ];
        for (dm_policy, group_policy, sender, who, place, address, group_approved, expected) in cases {
            let mut c = configured(sender, group_policy, Groups::Listed);
            c.dm_policy = dm_policy;
            let approvals = Approvals { sender: who == PAIRED, group: group_approved };
            let got = check(&c, &message(who, place, address), approvals);
            assert_eq!(
                &got, expected,
                "{dm_policy:?} {group_policy:?} {sender:?} sender={who} {place:?} {address:?} approved={group_approved}"
            );
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
                                let got = check(
                                    &c,
                                    &message(id, place, address),
                                    Approvals { sender: id == PAIRED, group: false },
                                );
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
            GroupPolicy::Pairing => unreachable!("not in this table"),
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
            return if sender_ok { Verdict::Overheard } else { Verdict::Drop("bot not mentioned (requireMention)") };
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
                    assert_eq!(
                        check(&c, &event, Approvals::default()),
                        Verdict::Pass,
                        "{sender:?} {group:?} {place:?}"
                    );
                    let expected = oracle(sender, group, Groups::Listed, "webhook:ci", place, Address::Plain);
                    assert_eq!(check(&c, &lookalike, Approvals::default()), expected, "{sender:?} {group:?} {place:?}");
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
