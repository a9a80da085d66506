//! Automatic sharding, the pure part: which live replica owns a key, by rendezvous
//! (highest-random-weight) hashing, and when its new owner may act on a key that moved.
//!
//! Each replica decides alone, from the membership it has observed. Views of two replicas differ
//! for a moment after a change, so a key a replica gains from another *still live* replica is
//! fenced for one lease duration: by then the old owner has seen the new membership and dropped
//! the key, or it could not renew its own Lease and stopped acting altogether. A key gained from
//! a replica that left (its Lease deleted, or not renewed for a lease duration) moves at once: that
//! replica stopped acting before its Lease could expire in anyone's eyes.
//!
//! A replica that (re)joins waits one lease duration before acting on anything: what it saw
//! before it was a member may be stale (after an outage every replica rejoins, each at first
//! seeing only itself), and within a lease duration every live member has renewed and been
//! seen.
//!
//! The weight is SHA-256 of member and key rather than std's hasher, whose output may change
//! between Rust releases: replicas of two versions during a rollout must agree on every owner.

use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// What a replica may do about a key now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// It owns the key and may act.
    Act,
    /// It owns the key, gained from a replica that may still be finishing with it: act after this.
    Wait(Duration),
    /// Another replica owns the key (named, if any is live), or this one is not a member.
    Elsewhere(Option<String>),
}

/// One membership as observed, and since when.
#[derive(Debug, Clone)]
struct View {
    members: BTreeSet<String>,
    since: Instant,
}

/// The memberships a replica has observed lately, enough to decide ownership and fencing.
#[derive(Debug, Clone)]
pub struct Ring {
    me: String,
    lease: Duration,
    /// Oldest first; the last is the current one. Older views are kept while a move out of them
    /// can still fence a key.
    views: Vec<View>,
    /// When this replica last became a member.
    joined: Option<Instant>,
}

/// The weight of `member` for `key`: the owner is the live member of highest weight.
fn weight(member: &str, key: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(member.as_bytes());
    hasher.update([0]);
    hasher.update(key.as_bytes());
    hasher.finalize().into()
}

/// The owner of `key` among `members`, if any.
pub fn owner<'a>(members: impl IntoIterator<Item = &'a String>, key: &str) -> Option<&'a str> {
    members
        .into_iter()
        .max_by_key(|member| weight(member, key))
        .map(String::as_str)
}

impl Ring {
    /// The ring of replica `me`, whose Leases last `lease`, having observed nobody yet.
    pub fn new(me: &str, lease: Duration, now: Instant) -> Ring {
        Ring {
            me: me.to_owned(),
            lease,
            views: vec![View {
                members: BTreeSet::new(),
                since: now,
            }],
            joined: None,
        }
    }

    /// This replica's identity.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The live members now (this replica among them only while its own Lease is renewed).
    pub fn members(&self) -> &BTreeSet<String> {
        &self.current().members
    }

    fn current(&self) -> &View {
        self.views.last().expect("a ring always has a view")
    }

    /// Records the live members observed at `now`; true if the membership changed.
    pub fn observe(&mut self, live: BTreeSet<String>, now: Instant) -> bool {
        // A move out of views[0] happened at views[1].since: once a lease duration has passed
        // since, it fences nothing.
        while self.views.len() > 1 && self.views[1].since + self.lease <= now {
            self.views.remove(0);
        }
        if self.current().members == live {
            return false;
        }
        if live.contains(&self.me) && !self.current().members.contains(&self.me) {
            self.joined = Some(now);
        }
        self.views.push(View {
            members: live,
            since: now,
        });
        true
    }

    /// The live owner of `key`, if any.
    pub fn owner(&self, key: &str) -> Option<&str> {
        owner(&self.current().members, key)
    }

    /// Whether this replica may act on `key` at `now`.
    pub fn decide(&self, key: &str, now: Instant) -> Decision {
        let current = self.current();
        match self.owner(key) {
            Some(owner) if owner == self.me => {}
            other => return Decision::Elsewhere(other.map(str::to_owned)),
        }
        let mut until = self.joined.map(|joined| joined + self.lease);
        for pair in self.views.windows(2) {
            let before = owner(&pair[0].members, key);
            if let Some(previous) = before.filter(|p| *p != self.me)
                && current.members.contains(previous)
            {
                until = until.max(Some(pair[1].since + self.lease));
            }
        }
        match until {
            Some(until) if until > now => Decision::Wait(until - now),
            _ => Decision::Act,
        }
    }

    /// Whether a Helm revision left pending by `actor` may be marked failed: it is this replica's
    /// own (one action per release at a time here, so none is running), or its replica is no
    /// longer live, so stopped acting. Unknown actors are decided by the caller (by age).
    pub fn actor_gone(&self, actor: &str) -> bool {
        actor == self.me || !self.current().members.contains(actor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(15);

    fn set(members: &[&str]) -> BTreeSet<String> {
        members.iter().map(|m| m.to_string()).collect()
    }

    fn keys() -> Vec<String> {
        (0..300)
            .map(|i| format!("team-{}/release-{i}", i % 7))
            .collect()
    }

    #[test]
    fn three_members_share_300_keys_evenly_and_agree_on_every_owner() {
        let now = Instant::now();
        let members = set(&["op-a", "op-b", "op-c"]);
        let rings: Vec<Ring> = ["op-a", "op-b", "op-c"]
            .iter()
            .map(|me| {
                let mut ring = Ring::new(me, LEASE, now);
                ring.observe(members.clone(), now);
                ring
            })
            .collect();
        for ring in &rings {
            let mine = keys()
                .iter()
                .filter(|k| ring.owner(k) == Some(ring.me()))
                .count();
            assert!((70..=130).contains(&mine), "{} owns {mine}", ring.me());
        }
        // Having just joined, nobody acts for a lease duration; then exactly one does.
        assert!(
            rings
                .iter()
                .all(|r| r.decide("team/web", now) != Decision::Act)
        );
        for key in keys() {
            let acting = rings
                .iter()
                .filter(|r| r.decide(&key, now + LEASE) == Decision::Act)
                .count();
            assert_eq!(acting, 1, "{key}");
        }
    }

    #[test]
    fn a_joining_member_takes_only_its_share_and_waits_one_lease_for_it() {
        let start = Instant::now();
        let mut old = Ring::new("op-a", LEASE, start);
        old.observe(set(&["op-a", "op-b", "op-c"]), start);
        let mut joiner = Ring::new("op-d", LEASE, start);
        joiner.observe(set(&["op-a", "op-b", "op-c"]), start);
        let joined = start + Duration::from_secs(60);
        assert!(joiner.observe(set(&["op-a", "op-b", "op-c", "op-d"]), joined));
        // Whichever key it owns, it waits a lease duration after joining.
        assert!(matches!(
            joiner.decide("team/web", joined),
            Decision::Wait(_) | Decision::Elsewhere(_)
        ));
        let mut moved = 0;
        for key in keys() {
            let before = old.owner(&key).unwrap().to_owned();
            let after = joiner.owner(&key).unwrap().to_owned();
            if before != after {
                // Rendezvous hashing moves keys only to the newcomer.
                assert_eq!(after, "op-d", "{key} moved between old members");
                moved += 1;
                assert_eq!(
                    joiner.decide(&key, joined + Duration::from_secs(1)),
                    Decision::Wait(LEASE - Duration::from_secs(1))
                );
                assert_eq!(joiner.decide(&key, joined + LEASE), Decision::Act);
            }
        }
        assert!(
            (45..=105).contains(&moved),
            "{moved} of 300 moved to a 4th member"
        );
    }

    #[test]
    fn keys_of_a_member_that_left_move_at_once() {
        let start = Instant::now();
        let mut ring = Ring::new("op-a", LEASE, start);
        ring.observe(set(&["op-a", "op-b"]), start);
        let left = start + Duration::from_secs(30);
        ring.observe(set(&["op-a"]), left);
        for key in keys() {
            assert_eq!(ring.decide(&key, left), Decision::Act, "{key}");
        }
    }

    #[test]
    fn a_replica_that_is_not_a_member_acts_on_nothing() {
        let now = Instant::now();
        let mut ring = Ring::new("op-a", LEASE, now);
        ring.observe(set(&["op-b"]), now);
        assert_eq!(
            ring.decide("team/web", now),
            Decision::Elsewhere(Some("op-b".into()))
        );
        // Its own Lease not renewed: it drops out of its own view and everything is elsewhere.
        ring.observe(set(&["op-a", "op-b"]), now);
        ring.observe(set(&["op-b"]), now + Duration::from_secs(1));
        assert!(
            keys()
                .iter()
                .all(|k| ring.decide(k, now + LEASE * 2) != Decision::Act)
        );
        // Back after an outage in which it saw nobody: seeing only itself at first, it still
        // waits a lease duration, time enough to see the others renew.
        let back = now + Duration::from_secs(60);
        ring.observe(BTreeSet::new(), back - Duration::from_secs(1));
        ring.observe(set(&["op-a"]), back);
        assert!(keys().iter().all(|k| ring.decide(k, back) != Decision::Act));
        assert!(
            keys()
                .iter()
                .all(|k| ring.decide(k, back + LEASE) == Decision::Act)
        );
    }

    #[test]
    fn a_joiner_waits_a_lease_for_keys_of_a_live_member_and_then_forgets_old_views() {
        let start = Instant::now();
        let mut ring = Ring::new("op-a", LEASE, start);
        ring.observe(set(&["op-b"]), start);
        // Joining takes every key from op-b (the only other member) under the fence.
        let joined = start + Duration::from_secs(1);
        ring.observe(set(&["op-a", "op-b"]), joined);
        let key = keys()
            .into_iter()
            .find(|k| ring.owner(k) == Some("op-a"))
            .unwrap();
        assert!(matches!(ring.decide(&key, joined), Decision::Wait(_)));
        assert_eq!(ring.decide(&key, joined + LEASE), Decision::Act);
        // Old views are forgotten once they can fence nothing.
        ring.observe(set(&["op-a", "op-b"]), joined + LEASE * 3);
        assert_eq!(ring.views.len(), 1);
    }

    #[test]
    fn only_pending_revisions_of_gone_replicas_may_be_unlocked() {
        let now = Instant::now();
        let mut ring = Ring::new("op-a", LEASE, now);
        ring.observe(set(&["op-a", "op-b"]), now);
        assert!(ring.actor_gone("op-a"));
        assert!(!ring.actor_gone("op-b"));
        assert!(ring.actor_gone("op-c"));
    }
}
