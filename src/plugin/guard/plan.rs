//! One room's plan: from the room's members as the homeserver has them (one `/members` call: joined,
//! invited, knocking, left and banned, each with the sender of their latest membership event) and who the
//! policy says belongs, the invites and removals to make, and the users left alone with the reason.
//!
//! People's choices win over the policy: a user whose latest membership event someone other than the guard
//! sent (they left or declined the invite, retracted their knock, or a human kicked or banned them) is not
//! invited again until an operator clears it. Bans are never touched. Only what the guard did itself (its own
//! kicks, which it remembers) is undone.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::Serialize;

use crate::plugin::invites::user_glob_matches;
use crate::plugin::room_ops::Member;

/// Who belongs in a room, with the space lists looked up.
#[derive(Debug, Clone, Default)]
pub struct Wanted {
    /// Users who belong, with why (the list that names them).
    pub invite: BTreeMap<String, String>,
    /// Users who must go, with why (revoked by a space instance, no longer its admin).
    pub remove: BTreeMap<String, String>,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub kick_unlisted: bool,
}

/// A change the plan makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Invite,
    /// A kick, the withdrawal of an invite or the rejection of a knock.
    Remove,
}

impl Change {
    pub fn name(self) -> &'static str {
        match self {
            Change::Invite => "invite",
            Change::Remove => "remove",
        }
    }
}

/// One line of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub user_id: String,
    pub change: Change,
    /// The membership before (`null`: never in the room).
    pub membership: Option<String>,
    pub reason: String,
}

/// A user the plan leaves alone, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skip {
    pub user_id: String,
    pub membership: String,
    pub reason: String,
}

/// What is known besides the members.
pub struct Memory<'a> {
    /// The guard's own account.
    pub bot: &'a str,
    /// Users the guard itself removed from this room last (so a leave the bot sent is its own doing).
    pub removed_by_guard: &'a HashSet<String>,
    /// Users an operator cleared to be invited again in this room.
    pub cleared: &'a HashSet<String>,
}

/// The plan for one room.
pub fn plan(wanted: &Wanted, members: &[Member], memory: &Memory<'_>) -> (Vec<Step>, Vec<Skip>) {
    let by_user: BTreeMap<&str, &Member> = members.iter().map(|m| (m.user_id.as_str(), m)).collect();
    let denied = |user: &str| wanted.deny.iter().any(|g| user_glob_matches(g, user));
    let allowed = |user: &str| wanted.allow.iter().any(|g| user_glob_matches(g, user));
    let (mut steps, mut skips) = (Vec::new(), Vec::new());
    let skip = |skips: &mut Vec<Skip>, member: &Member, reason: String| {
        skips.push(Skip { user_id: member.user_id.clone(), membership: member.membership.clone(), reason })
    };

    for (user, why) in &wanted.invite {
        if user == memory.bot || denied(user) {
            continue;
        }
        let Some(member) = by_user.get(user.as_str()) else {
            steps.push(Step { user_id: user.clone(), change: Change::Invite, membership: None, reason: why.clone() });
            continue;
        };
        let invite = |reason: String| Step {
            user_id: user.clone(),
            change: Change::Invite,
            membership: Some(member.membership.clone()),
            reason,
        };
        match member.membership.as_str() {
            "join" | "invite" => {}
            "ban" => skip(&mut skips, member, format!("banned by {}: bans are never touched", member.sender)),
            "knock" => steps.push(invite(format!("{why}; accepts their knock"))),
            "leave" if memory.cleared.contains(user) => steps.push(invite(format!("{why}; cleared by an operator"))),
            "leave" if member.sender == memory.bot && memory.removed_by_guard.contains(user) => {
                steps.push(invite(format!("{why}; undoes the guard's own removal")))
            }
            "leave" if member.sender == *user => skip(
                &mut skips,
                member,
                "left, declined the invite or withdrew their knock: their choice (an operator can clear it)".into(),
            ),
            "leave" if member.sender == memory.bot => skip(
                &mut skips,
                member,
                "removed by the bot's account outside this guard: a human's choice (an operator can clear it)".into(),
            ),
            "leave" => skip(
                &mut skips,
                member,
                format!("removed by {}: their choice (an operator can clear it)", member.sender),
            ),
            other => skip(&mut skips, member, format!("membership {other:?} is not one the guard knows")),
        }
    }

    for member in members {
        let user = member.user_id.as_str();
        if user == memory.bot || !matches!(member.membership.as_str(), "join" | "invite" | "knock") {
            continue;
        }
        let reason = if denied(user) {
            Some("denied by the policy".to_owned())
        } else if let Some(why) = wanted.remove.get(user).filter(|_| !wanted.invite.contains_key(user)) {
            (!allowed(user)).then(|| why.clone())
        } else if wanted.kick_unlisted && !wanted.invite.contains_key(user) && !allowed(user) {
            Some("not named or allowed by the policy (kick_unlisted)".to_owned())
        } else {
            None
        };
        if let Some(reason) = reason {
            let what = match member.membership.as_str() {
                "invite" => "withdraws the invite",
                "knock" => "rejects the knock",
                _ => "kicks",
            };
            steps.push(Step {
                user_id: user.to_owned(),
                change: Change::Remove,
                membership: Some(member.membership.clone()),
                reason: format!("{reason}; {what}"),
            });
        }
    }
    (steps, skips)
}

/// The users a list of space instances names, and who they revoked: `(members, revoked)`.
pub fn space_users<'a>(
    lists: impl IntoIterator<Item = (&'a str, &'a crate::plugin::directory::SpaceUsers, bool)>,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let (mut members, mut revoked) = (BTreeMap::new(), BTreeMap::new());
    for (instance, users, admins_only) in lists {
        let belong: &BTreeSet<String> = if admins_only { &users.admins } else { &users.members };
        for user in belong {
            members.entry(user.clone()).or_insert_with(|| {
                format!("{} of the space instance `{instance}`", if admins_only { "an admin" } else { "a member" })
            });
        }
        for user in users.known.iter().filter(|u| !belong.contains(*u)) {
            revoked.entry(user.clone()).or_insert_with(|| {
                if admins_only {
                    format!("not an admin of the space instance `{instance}`")
                } else {
                    format!("revoked by the space instance `{instance}`")
                }
            });
        }
    }
    (members, revoked)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOT: &str = "@guard:x";

    fn member(user: &str, membership: &str, sender: &str) -> Member {
        Member {
            user_id: user.into(),
            membership: membership.into(),
            sender: sender.into(),
            event_id: format!("$ev-{user}"),
            reason: None,
        }
    }

    fn wanted(invite: &[&str]) -> Wanted {
        Wanted { invite: invite.iter().map(|u| (u.to_string(), "listed".to_owned())).collect(), ..Default::default() }
    }

    fn run(wanted: &Wanted, members: &[Member], removed: &[&str], cleared: &[&str]) -> (Vec<Step>, Vec<Skip>) {
        let removed: HashSet<String> = removed.iter().map(|s| s.to_string()).collect();
        let cleared: HashSet<String> = cleared.iter().map(|s| s.to_string()).collect();
        plan(wanted, members, &Memory { bot: BOT, removed_by_guard: &removed, cleared: &cleared })
    }

    fn changes(steps: &[Step]) -> Vec<(&str, Change)> {
        steps.iter().map(|s| (s.user_id.as_str(), s.change)).collect()
    }

    #[test]
    fn the_missing_are_invited_and_the_present_left_alone() {
        let members = [member("@in:x", "join", "@in:x"), member("@asked:x", "invite", BOT)];
        let (steps, skips) = run(&wanted(&["@in:x", "@asked:x", "@new:x"]), &members, &[], &[]);
        assert_eq!(changes(&steps), [("@new:x", Change::Invite)]);
        assert_eq!(steps[0].membership, None);
        assert!(skips.is_empty());
    }

    #[test]
    fn a_persons_own_leave_a_humans_kick_and_a_ban_are_respected() {
        let members = [
            member("@left:x", "leave", "@left:x"),
            member("@kicked:x", "leave", "@admin:x"),
            member("@banned:x", "ban", "@admin:x"),
            member("@bot-account:x", "leave", BOT),
        ];
        let (steps, skips) = run(&wanted(&["@left:x", "@kicked:x", "@banned:x", "@bot-account:x"]), &members, &[], &[]);
        assert!(steps.is_empty(), "{steps:?}");
        let reasons: BTreeMap<&str, &str> = skips.iter().map(|s| (s.user_id.as_str(), s.reason.as_str())).collect();
        assert!(reasons["@left:x"].contains("their choice"));
        assert!(reasons["@kicked:x"].contains("removed by @admin:x"));
        assert!(reasons["@banned:x"].contains("bans are never touched"));
        assert!(reasons["@bot-account:x"].contains("removed by the bot's account outside this guard"), "{reasons:?}");
    }

    #[test]
    fn the_guards_own_removal_is_undone_and_a_cleared_user_invited() {
        let members = [member("@was-removed:x", "leave", BOT), member("@left:x", "leave", "@left:x")];
        let (steps, skips) = run(&wanted(&["@was-removed:x", "@left:x"]), &members, &["@was-removed:x"], &["@left:x"]);
        assert_eq!(changes(&steps), [("@left:x", Change::Invite), ("@was-removed:x", Change::Invite)]);
        assert!(steps[0].reason.contains("cleared by an operator"));
        assert!(steps[1].reason.contains("undoes the guard's own removal"));
        assert!(skips.is_empty());
    }

    #[test]
    fn only_named_users_are_removed_unless_kick_unlisted() {
        let members = [
            member("@denied:x", "join", "@denied:x"),
            member("@invited-denied:x", "invite", "@admin:x"),
            member("@knocker:x", "knock", "@knocker:x"),
            member("@guest:other", "join", "@guest:other"),
            member("@staff:x", "join", "@staff:x"),
            member("@revoked:x", "join", "@revoked:x"),
            member(BOT, "join", BOT),
        ];
        let mut policy = wanted(&["@denied:x"]);
        policy.deny = vec!["@*denied:x".into()];
        policy.allow = vec!["@staff:*".into()];
        policy.remove.insert("@revoked:x".into(), "revoked by the space instance `team`".into());
        let (steps, _) = run(&policy, &members, &[], &[]);
        assert_eq!(
            changes(&steps),
            [("@denied:x", Change::Remove), ("@invited-denied:x", Change::Remove), ("@revoked:x", Change::Remove)],
            "deny wins over the user list; strangers and the knocker are not named"
        );
        assert!(steps[1].reason.ends_with("withdraws the invite"));
        policy.kick_unlisted = true;
        let (steps, _) = run(&policy, &members, &[], &[]);
        let removed: Vec<&str> = steps.iter().map(|s| s.user_id.as_str()).collect();
        assert_eq!(removed, ["@denied:x", "@invited-denied:x", "@knocker:x", "@guest:other", "@revoked:x"]);
        assert!(steps[2].reason.ends_with("rejects the knock"));
    }

    #[test]
    fn a_wanted_knocker_is_let_in_and_the_bot_is_never_touched() {
        let members = [member("@k:x", "knock", "@k:x"), member(BOT, "join", BOT)];
        let mut policy = wanted(&["@k:x", BOT]);
        policy.deny = vec!["@guard:*".into()];
        policy.kick_unlisted = true;
        let (steps, _) = run(&policy, &members, &[], &[]);
        assert_eq!(changes(&steps), [("@k:x", Change::Invite)]);
    }

    #[test]
    fn space_lists_give_members_and_the_revoked() {
        let team = crate::plugin::directory::SpaceUsers {
            members: ["@a:x".to_owned(), "@b:x".to_owned()].into(),
            admins: ["@a:x".to_owned()].into(),
            known: ["@a:x".to_owned(), "@b:x".to_owned(), "@gone:x".to_owned()].into(),
        };
        let (members, revoked) = space_users([("team", &team, false)]);
        assert_eq!(members.keys().collect::<Vec<_>>(), ["@a:x", "@b:x"]);
        assert_eq!(revoked.keys().collect::<Vec<_>>(), ["@gone:x"]);
        let (admins, not_admins) = space_users([("team", &team, true)]);
        assert_eq!(admins.keys().collect::<Vec<_>>(), ["@a:x"]);
        assert_eq!(not_admins.keys().collect::<Vec<_>>(), ["@b:x", "@gone:x"]);
    }
}
