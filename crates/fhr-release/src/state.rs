//! The release state machine: classify what Helm's storage says into a named state, then map each
//! state to exactly one step. Pure: the reconciler gathers the facts, this decides.

use crate::drift::Drifted;
use std::fmt;

/// Helm's status of a release revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelmStatus {
    /// `deployed`
    Deployed,
    /// `failed`
    Failed,
    /// `superseded`
    Superseded,
    /// `uninstalled` (kept with `--keep-history`)
    Uninstalled,
    /// `pending-install`, `pending-upgrade`, `pending-rollback`, `uninstalling`: an action is (or
    /// was, if it was interrupted) in flight.
    Pending(String),
    /// Anything else Helm may write.
    Other(String),
}

impl HelmStatus {
    /// Parses the `status` label of a Helm storage Secret.
    pub fn parse(status: &str) -> HelmStatus {
        match status {
            "deployed" => HelmStatus::Deployed,
            "failed" => HelmStatus::Failed,
            "superseded" => HelmStatus::Superseded,
            "uninstalled" => HelmStatus::Uninstalled,
            s if s.starts_with("pending-") || s == "uninstalling" => {
                HelmStatus::Pending(s.to_owned())
            }
            s => HelmStatus::Other(s.to_owned()),
        }
    }
}

impl fmt::Display for HelmStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HelmStatus::Deployed => f.write_str("deployed"),
            HelmStatus::Failed => f.write_str("failed"),
            HelmStatus::Superseded => f.write_str("superseded"),
            HelmStatus::Uninstalled => f.write_str("uninstalled"),
            HelmStatus::Pending(s) | HelmStatus::Other(s) => f.write_str(s),
        }
    }
}

/// The FluxHelmRelease a release record names as its manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Its namespace.
    pub namespace: String,
    /// Its name (or the label form of it).
    pub name: String,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One revision of a release, as its storage Secret's labels describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    /// Helm's revision number.
    pub number: i64,
    /// Its status.
    pub status: HelmStatus,
    /// Who manages it, if helm-operator wrote it.
    pub owner: Option<Owner>,
    /// The digest it was made from, if helm-operator wrote it.
    pub digest: Option<String>,
    /// The helm-operator replica that wrote it, if known.
    pub actor: Option<String>,
    /// When its record was written (seconds since the epoch), if known.
    pub written: Option<i64>,
}

/// What the reconciler knows when it decides.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    /// The resource being reconciled, as an owner.
    pub me: &'a Owner,
    /// `spec.releaseName` was set explicitly: an unmanaged release of that name may be adopted.
    pub adopt: bool,
    /// Digest of the chart tree and values the spec asks for.
    pub desired_digest: &'a str,
    /// The newest revision in storage.
    pub latest: Option<&'a Revision>,
    /// The newest revision with status `deployed`, if any.
    pub last_deployed: Option<i64>,
    /// `spec.rollback.enable`.
    pub rollback_enabled: bool,
    /// `status.lastAttemptedDigest`: what the previous attempt tried.
    pub last_attempted_digest: Option<&'a str>,
    /// The holder named in storage is not a FluxHelmRelease that asks for this release any more
    /// (it was deleted without uninstalling, or names another release now): its release may be
    /// taken over.
    pub holder_left: bool,
    /// `status.revision`: the revision this operator last wrote or found in sync. Helm merges the
    /// previous revision's labels into a hand-made upgrade, so the digest label alone cannot
    /// tell a hand-made revision from ours.
    pub recorded_revision: Option<i64>,
}

/// The release's state, named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseState {
    /// No release of that name.
    Absent,
    /// Managed by another FluxHelmRelease.
    OwnedByOther(Owner),
    /// Managed by a FluxHelmRelease that no longer asks for it: take it over.
    LeftByOwner(Owner),
    /// A release nobody manages, and adoption was not asked for.
    Unmanaged,
    /// A release nobody manages, named explicitly: take it over.
    Adoptable,
    /// Left `pending-*` by an action that did not finish (the operator acts on one release at a
    /// time, so a pending release it finds is not in flight).
    Locked(HelmStatus),
    /// The last attempt at this exact digest failed, and there is a deployed revision to go back to.
    FailedWithRollback(i64),
    /// The last attempt at this exact digest failed and was already rolled back.
    RolledBack,
    /// Failed, and no revision was ever deployed: the failed install must be removed first.
    FailedInstall,
    /// Failed (retry, or the spec changed since).
    Failed,
    /// Deployed from another chart or values.
    OutOfSync,
    /// Deployed from exactly the desired chart and values.
    InSync,
    /// In sync as far as Helm knows, but objects were changed or deleted by someone else.
    Drifted(Vec<Drifted>),
}

/// The one step to take about a state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `helm upgrade --install`.
    Install,
    /// `helm upgrade` (also how an adopted release gets our labels).
    Upgrade,
    /// Mark the pending revision failed in storage; the next reconcile remediates.
    Unlock,
    /// `helm rollback` to the given revision.
    Rollback(i64),
    /// `helm uninstall` a failed first install, then install again.
    Reinstall,
    /// Nothing to do.
    Nothing,
    /// Report a conflict; never touch the release.
    Conflict(String),
}

/// A FluxHelmRelease asking for a release name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The resource, as an owner.
    pub owner: Owner,
    /// Its creation time (seconds since the epoch); unknown sorts last.
    pub created: Option<i64>,
    /// It is being deleted.
    pub deleting: bool,
}

/// Which of the resources asking for one release may act on it, decided before any Helm action so
/// that two resources never race for it: the one holding it in Helm's storage while it still asks
/// for it (also while it is being deleted: its uninstall comes first), otherwise the oldest claim
/// that is not being deleted (by creation time, then name). A live holder keeps its release even
/// against an older claim: taking it over would replace another resource's chart and values.
pub fn rightful<'a>(claims: &'a [Claim], holder: Option<&Owner>) -> Option<&'a Owner> {
    if let Some(held) = claims.iter().find(|c| Some(&c.owner) == holder) {
        return Some(&held.owner);
    }
    claims
        .iter()
        .filter(|c| !c.deleting)
        .min_by(|a, b| {
            let age = |c: &Claim| (c.created.is_none(), c.created);
            age(a)
                .cmp(&age(b))
                .then_with(|| a.owner.name.cmp(&b.owner.name))
        })
        .map(|c| &c.owner)
}

/// Names the state of the release.
pub fn classify(facts: &Facts<'_>) -> ReleaseState {
    let Some(latest) = facts.latest else {
        return ReleaseState::Absent;
    };
    match &latest.owner {
        Some(owner) if owner != facts.me && facts.holder_left => {
            return ReleaseState::LeftByOwner(owner.clone());
        }
        Some(owner) if owner != facts.me => return ReleaseState::OwnedByOther(owner.clone()),
        None if !facts.adopt => return ReleaseState::Unmanaged,
        None => return ReleaseState::Adoptable,
        Some(_) => {}
    }
    let desired = Some(facts.desired_digest);
    match &latest.status {
        HelmStatus::Pending(_) => ReleaseState::Locked(latest.status.clone()),
        HelmStatus::Deployed
            if latest.digest.as_deref() == desired
                && facts.recorded_revision.is_none_or(|r| r == latest.number) =>
        {
            ReleaseState::InSync
        }
        // A rollback's revision carries the labels of the revision it restored, so it is deployed
        // with an older digest right after this digest failed.
        HelmStatus::Deployed
            if facts.rollback_enabled && facts.last_attempted_digest == desired =>
        {
            ReleaseState::RolledBack
        }
        HelmStatus::Deployed => ReleaseState::OutOfSync,
        HelmStatus::Failed
        | HelmStatus::Uninstalled
        | HelmStatus::Superseded
        | HelmStatus::Other(_) => match facts.last_deployed {
            None => ReleaseState::FailedInstall,
            Some(revision)
                if facts.rollback_enabled
                    && latest.digest.as_deref() == desired
                    && facts.last_attempted_digest == desired =>
            {
                ReleaseState::FailedWithRollback(revision)
            }
            Some(_) => ReleaseState::Failed,
        },
    }
}

impl ReleaseState {
    /// An in-sync release whose objects drifted is [`ReleaseState::Drifted`]; drift is looked for
    /// only once the release is known to be in sync, so it comes after [`classify`].
    pub fn with_drift(self, drift: Vec<Drifted>) -> ReleaseState {
        match self {
            ReleaseState::InSync if !drift.is_empty() => ReleaseState::Drifted(drift),
            state => state,
        }
    }

    /// The one step this state calls for, for release `release` (named in conflict messages).
    pub fn step(&self, release: &str) -> Step {
        step(self, release)
    }
}

fn step(state: &ReleaseState, release: &str) -> Step {
    match state {
        ReleaseState::Absent => Step::Install,
        ReleaseState::OwnedByOther(owner) => Step::Conflict(format!(
            "release {release} is managed by FluxHelmRelease {owner}; give this resource another releaseName"
        )),
        ReleaseState::Unmanaged => Step::Conflict(format!(
            "release {release} exists and is not managed by helm-operator; set spec.releaseName: {release} explicitly to adopt it"
        )),
        ReleaseState::Adoptable | ReleaseState::LeftByOwner(_) => Step::Upgrade,
        ReleaseState::Locked(_) => Step::Unlock,
        ReleaseState::FailedWithRollback(revision) => Step::Rollback(*revision),
        ReleaseState::RolledBack => Step::Nothing,
        ReleaseState::FailedInstall => Step::Reinstall,
        ReleaseState::Failed | ReleaseState::OutOfSync | ReleaseState::Drifted(_) => Step::Upgrade,
        ReleaseState::InSync => Step::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Owner {
        Owner {
            namespace: "team".into(),
            name: "web".into(),
        }
    }

    fn revision(number: i64, status: &str, owner: Option<Owner>, digest: &str) -> Revision {
        Revision {
            number,
            status: HelmStatus::parse(status),
            owner,
            digest: Some(digest.into()).filter(|d: &String| !d.is_empty()),
            actor: None,
            written: None,
        }
    }

    fn facts<'a>(me: &'a Owner, latest: Option<&'a Revision>) -> Facts<'a> {
        Facts {
            me,
            adopt: false,
            desired_digest: "want",
            latest,
            last_deployed: latest
                .filter(|r| r.status == HelmStatus::Deployed)
                .map(|r| r.number),
            rollback_enabled: false,
            last_attempted_digest: None,
            holder_left: false,
            recorded_revision: None,
        }
    }

    fn claim(name: &str, created: i64, deleting: bool) -> Claim {
        Claim {
            owner: Owner {
                namespace: "team".into(),
                name: name.into(),
            },
            created: Some(created),
            deleting,
        }
    }

    #[test]
    fn the_oldest_claim_wins_a_free_release() {
        let claims = [claim("b", 10, false), claim("a", 20, false)];
        assert_eq!(rightful(&claims, None).unwrap().name, "b");
        // Same second: the name decides, so every replica and reconcile agrees.
        let claims = [claim("b", 10, false), claim("a", 10, false)];
        assert_eq!(rightful(&claims, None).unwrap().name, "a");
    }

    #[test]
    fn a_live_holder_keeps_its_release_and_a_leaving_one_uninstalls_first() {
        let claims = [claim("old", 10, false), claim("holder", 20, false)];
        let holder = claims[1].owner.clone();
        assert_eq!(rightful(&claims, Some(&holder)).unwrap().name, "holder");
        let claims = [claim("old", 10, false), claim("holder", 20, true)];
        assert_eq!(rightful(&claims, Some(&holder)).unwrap().name, "holder");
        // Gone (no claim any more): the oldest remaining claim takes over.
        let claims = [claim("young", 30, false), claim("old", 10, false)];
        assert_eq!(rightful(&claims, Some(&holder)).unwrap().name, "old");
        // Nobody left but resources being deleted.
        let claims = [claim("old", 10, true)];
        assert_eq!(rightful(&claims, None), None);
    }

    #[test]
    fn a_release_its_holder_left_is_taken_over() {
        let me = me();
        let gone = Owner {
            namespace: "team".into(),
            name: "gone".into(),
        };
        let r = revision(1, "deployed", Some(gone.clone()), "theirs");
        let mut f = facts(&me, Some(&r));
        f.holder_left = true;
        assert_eq!(state(&f), (ReleaseState::LeftByOwner(gone), Step::Upgrade));
    }

    fn state(facts: &Facts<'_>) -> (ReleaseState, Step) {
        let state = classify(facts);
        let step = state.step("team-web");
        (state, step)
    }

    #[test]
    fn absent_release_is_installed() {
        let me = me();
        assert_eq!(
            state(&facts(&me, None)),
            (ReleaseState::Absent, Step::Install)
        );
    }

    #[test]
    fn equal_digest_means_in_sync_and_nothing_runs() {
        let me = me();
        let r = revision(3, "deployed", Some(me.clone()), "want");
        assert_eq!(
            state(&facts(&me, Some(&r))),
            (ReleaseState::InSync, Step::Nothing)
        );
    }

    #[test]
    fn changed_digest_upgrades() {
        let me = me();
        let r = revision(3, "deployed", Some(me.clone()), "old");
        assert_eq!(
            state(&facts(&me, Some(&r))),
            (ReleaseState::OutOfSync, Step::Upgrade)
        );
    }

    #[test]
    fn a_release_upgraded_by_hand_is_out_of_sync() {
        // A hand-made `helm upgrade` inherits our labels, digest included, from revision 3.
        let me = me();
        let r = revision(4, "deployed", Some(me.clone()), "want");
        let mut f = facts(&me, Some(&r));
        f.recorded_revision = Some(3);
        assert_eq!(state(&f), (ReleaseState::OutOfSync, Step::Upgrade));
        f.recorded_revision = Some(4);
        assert_eq!(state(&f), (ReleaseState::InSync, Step::Nothing));
    }

    #[test]
    fn unmanaged_release_is_a_conflict_unless_named_explicitly() {
        let me = me();
        let r = revision(1, "deployed", None, "");
        let (s, a) = state(&facts(&me, Some(&r)));
        assert_eq!(s, ReleaseState::Unmanaged);
        assert!(matches!(a, Step::Conflict(m) if m.contains("set spec.releaseName")));

        let mut adopt = facts(&me, Some(&r));
        adopt.adopt = true;
        assert_eq!(state(&adopt), (ReleaseState::Adoptable, Step::Upgrade));
    }

    #[test]
    fn a_release_of_another_resource_is_never_touched() {
        let me = me();
        let other = Owner {
            namespace: "team".into(),
            name: "other".into(),
        };
        let r = revision(1, "deployed", Some(other.clone()), "want");
        let mut f = facts(&me, Some(&r));
        f.adopt = true;
        let (s, a) = state(&f);
        assert_eq!(s, ReleaseState::OwnedByOther(other));
        assert!(matches!(a, Step::Conflict(m) if m.contains("team/other")));
    }

    #[test]
    fn pending_releases_are_unlocked_first() {
        let me = me();
        for status in [
            "pending-install",
            "pending-upgrade",
            "pending-rollback",
            "uninstalling",
        ] {
            let r = revision(2, status, Some(me.clone()), "want");
            let (s, a) = state(&facts(&me, Some(&r)));
            assert!(matches!(s, ReleaseState::Locked(_)), "{status}");
            assert_eq!(a, Step::Unlock, "{status}");
        }
    }

    #[test]
    fn a_failed_first_install_is_removed_and_installed_again() {
        let me = me();
        let r = revision(1, "failed", Some(me.clone()), "want");
        assert_eq!(
            state(&facts(&me, Some(&r))),
            (ReleaseState::FailedInstall, Step::Reinstall)
        );
    }

    #[test]
    fn a_failed_upgrade_is_retried_without_rollback() {
        let me = me();
        let r = revision(2, "failed", Some(me.clone()), "want");
        let mut f = facts(&me, Some(&r));
        f.last_deployed = Some(1);
        f.last_attempted_digest = Some("want");
        assert_eq!(state(&f), (ReleaseState::Failed, Step::Upgrade));
    }

    #[test]
    fn a_failed_upgrade_rolls_back_once_then_waits_for_a_change() {
        let me = me();
        let failed = revision(2, "failed", Some(me.clone()), "want");
        let mut f = facts(&me, Some(&failed));
        f.last_deployed = Some(1);
        f.rollback_enabled = true;
        f.last_attempted_digest = Some("want");
        assert_eq!(
            state(&f),
            (ReleaseState::FailedWithRollback(1), Step::Rollback(1))
        );

        // Helm's rollback writes revision 3 as a copy of revision 1, with revision 1's labels.
        let rolled_back = revision(3, "deployed", Some(me.clone()), "old");
        let mut f = facts(&me, Some(&rolled_back));
        f.rollback_enabled = true;
        f.last_attempted_digest = Some("want");
        assert_eq!(state(&f), (ReleaseState::RolledBack, Step::Nothing));

        // A new commit or spec change (a new desired digest) tries again.
        f.desired_digest = "newer";
        assert_eq!(state(&f), (ReleaseState::OutOfSync, Step::Upgrade));
    }

    #[test]
    fn a_failed_release_whose_spec_changed_upgrades_even_with_rollback() {
        let me = me();
        let failed = revision(2, "failed", Some(me.clone()), "broken");
        let mut f = facts(&me, Some(&failed));
        f.last_deployed = Some(1);
        f.rollback_enabled = true;
        f.last_attempted_digest = Some("broken");
        assert_eq!(state(&f), (ReleaseState::Failed, Step::Upgrade));
    }

    #[test]
    fn every_state_calls_for_exactly_one_step() {
        let other = Owner {
            namespace: "team".into(),
            name: "other".into(),
        };
        let table = [
            (ReleaseState::Absent, Step::Install),
            (ReleaseState::LeftByOwner(other.clone()), Step::Upgrade),
            (ReleaseState::Adoptable, Step::Upgrade),
            (
                ReleaseState::Locked(HelmStatus::parse("pending-install")),
                Step::Unlock,
            ),
            (ReleaseState::FailedWithRollback(3), Step::Rollback(3)),
            (ReleaseState::RolledBack, Step::Nothing),
            (ReleaseState::FailedInstall, Step::Reinstall),
            (ReleaseState::Failed, Step::Upgrade),
            (ReleaseState::OutOfSync, Step::Upgrade),
            (ReleaseState::InSync, Step::Nothing),
            (
                ReleaseState::Drifted(vec![Drifted {
                    object: "ConfigMap team/web".into(),
                    fields: vec!["data.message".into()],
                }]),
                Step::Upgrade,
            ),
        ];
        for (state, expected) in table {
            assert_eq!(state.step("team-web"), expected, "{state:?}");
        }
        for conflict in [ReleaseState::OwnedByOther(other), ReleaseState::Unmanaged] {
            assert!(
                matches!(conflict.step("team-web"), Step::Conflict(m) if m.contains("team-web")),
                "{conflict:?}"
            );
        }
    }

    #[test]
    fn drift_matters_only_for_a_release_in_sync() {
        let drift = vec![Drifted {
            object: "ConfigMap team/web".into(),
            fields: vec![],
        }];
        assert!(matches!(
            ReleaseState::InSync.with_drift(drift.clone()),
            ReleaseState::Drifted(_)
        ));
        assert_eq!(
            ReleaseState::InSync.with_drift(vec![]),
            ReleaseState::InSync
        );
        assert_eq!(
            ReleaseState::OutOfSync.with_drift(drift),
            ReleaseState::OutOfSync
        );
    }

    #[test]
    fn statuses_parse() {
        assert_eq!(
            HelmStatus::parse("pending-upgrade"),
            HelmStatus::Pending("pending-upgrade".into())
        );
        assert_eq!(HelmStatus::parse("deployed").to_string(), "deployed");
        assert_eq!(
            HelmStatus::parse("weird"),
            HelmStatus::Other("weird".into())
        );
    }
}
