//! Which releases this replica acts on, as `--sharding` says: all of them (`leader`, `off`), or
//! its share by rendezvous hashing (`auto`, with `fhr_runtime::membership` keeping the ring).

use crate::metrics::Metrics;
use fhr_release::state::Revision;
use fhr_runtime::CancellationToken;
use fhr_runtime::shards::{Decision, Ring};
use fhr_types::FluxHelmRelease;
use futures::channel::mpsc::UnboundedSender;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};

/// This replica's share of the releases.
pub struct Shards {
    /// This replica's identity, written on the release records and status it writes.
    pub replica: String,
    /// The ring, with `--sharding=auto`.
    ring: Option<Arc<Mutex<Ring>>>,
    lease: Duration,
    /// False once this replica may not act at all: it lost the leader's Lease, or cannot renew
    /// its member Lease.
    acting: watch::Receiver<bool>,
}

/// The key a release is placed by (and its metrics are kept under): `namespace/name`, stable
/// for the resource's life, known before reading it.
fn key(fhr: &FluxHelmRelease) -> String {
    format!("{}/{}", fhr.namespace().unwrap_or_default(), fhr.name_any())
}

impl Shards {
    /// Every release is this replica's while `acting` (`--sharding=leader|off`).
    pub fn all(replica: &str, acting: watch::Receiver<bool>) -> Shards {
        Shards {
            replica: replica.to_owned(),
            ring: None,
            lease: Duration::ZERO,
            acting,
        }
    }

    /// This replica's share of `ring`, whose Leases last `lease`, while it is a member
    /// (`--sharding=auto`).
    pub fn auto(
        replica: &str,
        ring: Arc<Mutex<Ring>>,
        lease: Duration,
        member: watch::Receiver<bool>,
    ) -> Shards {
        Shards {
            replica: replica.to_owned(),
            ring: Some(ring),
            lease,
            acting: member,
        }
    }

    /// Resolves when this replica may no longer act at all. A Helm action in flight then is
    /// abandoned (the engine cancels it): the others are about to count this replica gone and
    /// take over, and its pending revision is theirs to unlock.
    pub async fn fenced(&self) {
        let mut acting = self.acting.clone();
        if acting.wait_for(|acting| !*acting).await.is_err() {
            // Nobody can fence this replica any more (no coordination): never.
            std::future::pending::<()>().await;
        }
    }

    /// Whether this replica may act on `fhr` now.
    pub fn decide(&self, fhr: &FluxHelmRelease) -> Decision {
        let Some(ring) = &self.ring else {
            return Decision::Act;
        };
        let ring = ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.decide(&key(fhr), Instant::now())
    }

    /// Whether `latest`, left pending, may be marked failed. With one acting replica, a pending
    /// revision found under the release lock is an interrupted one. With several, it may be
    /// another replica's action still in flight: only a gone replica's (or this one's) is
    /// unlocked, and one of unknown origin only once older than `timeout` plus a lease duration.
    pub fn may_unlock(&self, latest: &Revision, timeout: Duration) -> bool {
        let Some(ring) = &self.ring else {
            return true;
        };
        let ring = ring.lock().unwrap_or_else(|e| e.into_inner());
        match (&latest.actor, latest.written) {
            (Some(actor), _) => ring.actor_gone(actor),
            (None, Some(written)) => {
                let age = fhr_runtime::unix_now() - written as f64;
                age > (timeout + self.lease).as_secs_f64()
            }
            (None, None) => false,
        }
    }

    /// Keeps the share current: after each change of membership (and every few seconds, for
    /// resources that arrived meanwhile) the releases this replica gained are reconciled, the
    /// ones it lost are forgotten by the metrics.
    pub async fn rebalance(
        &self,
        store: Store<FluxHelmRelease>,
        changed: Arc<Notify>,
        trigger: UnboundedSender<ObjectRef<FluxHelmRelease>>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) {
        let mut owned: HashMap<String, ObjectRef<FluxHelmRelease>> = HashMap::new();
        let mut was: (bool, BTreeSet<String>) = (false, BTreeSet::new());
        loop {
            // In a block: the ring's lock must not be held across the await below.
            let (now_owned, members, member) = {
                let ring = self
                    .ring
                    .as_ref()
                    .map(|ring| ring.lock().unwrap_or_else(|e| e.into_inner()));
                let now_owned: HashMap<_, _> = store
                    .state()
                    .iter()
                    .map(|fhr| (key(fhr), fhr))
                    .filter(|(key, _)| {
                        ring.as_ref()
                            .is_none_or(|ring| ring.owner(key) == Some(ring.me()))
                    })
                    .map(|(key, fhr)| (key, ObjectRef::from_obj(&**fhr)))
                    .collect();
                let (members, member) = match &ring {
                    Some(ring) => (ring.members().clone(), ring.members().contains(ring.me())),
                    None => (BTreeSet::from([self.replica.clone()]), true),
                };
                (now_owned, members, member)
            };
            let gained: Vec<_> = now_owned
                .iter()
                .filter(|(key, _)| !owned.contains_key(*key))
                .map(|(_, resource)| resource.clone())
                .collect();
            let lost: Vec<_> = owned
                .keys()
                .filter(|key| !now_owned.contains_key(*key))
                .cloned()
                .collect();
            // Resources the watch brings are queued by it; these came by a change of membership.
            if self.ring.is_some() {
                for resource in &gained {
                    let _ = trigger.unbounded_send(resource.clone());
                }
            }
            for key in lost.iter().cloned() {
                metrics.set_ready(key, None);
            }
            // Joining or leaving, or resources coming and going, are not handovers.
            let (moved_in, moved_out) = if was.0 && member && was.1 != members {
                (gained.len(), lost.len())
            } else {
                (0, 0)
            };
            metrics.shard(now_owned.len(), members.len(), moved_in, moved_out);
            if self.ring.is_some() && (!gained.is_empty() || !lost.is_empty()) {
                tracing::info!(
                    gained = gained.len(),
                    lost = lost.len(),
                    owned = now_owned.len(),
                    members = members.len(),
                    "share of releases changed"
                );
            }
            was = (member, members);
            owned = now_owned;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhr_release::state::HelmStatus;
    use std::collections::BTreeSet;

    const LEASE: Duration = Duration::from_secs(15);
    const TIMEOUT: Duration = Duration::from_secs(300);

    fn pending(actor: Option<&str>, age: Duration) -> Revision {
        Revision {
            number: 2,
            status: HelmStatus::parse("pending-upgrade"),
            owner: None,
            digest: None,
            actor: actor.map(Into::into),
            written: Some((fhr_runtime::unix_now() - age.as_secs_f64()) as i64),
        }
    }

    fn sharded(members: &[&str]) -> Shards {
        let mut ring = Ring::new("op-a", LEASE, Instant::now());
        ring.observe(
            members
                .iter()
                .map(|m| m.to_string())
                .collect::<BTreeSet<_>>(),
            Instant::now(),
        );
        let (_, member) = watch::channel(true);
        Shards::auto("op-a", Arc::new(Mutex::new(ring)), LEASE, member)
    }

    #[test]
    fn a_live_replicas_pending_action_is_left_alone_and_a_gone_ones_is_unlocked() {
        let shards = sharded(&["op-a", "op-b"]);
        let fresh = Duration::from_secs(1);
        assert!(!shards.may_unlock(&pending(Some("op-b"), fresh), TIMEOUT));
        assert!(shards.may_unlock(&pending(Some("op-c"), fresh), TIMEOUT));
        // This replica's own: it holds the release's lock, so no action of its own is running.
        assert!(shards.may_unlock(&pending(Some("op-a"), fresh), TIMEOUT));
        // Written by an older operator, with no actor: only once the action must have ended.
        assert!(!shards.may_unlock(&pending(None, TIMEOUT), TIMEOUT));
        assert!(shards.may_unlock(&pending(None, TIMEOUT + LEASE * 2), TIMEOUT));
    }

    #[test]
    fn with_one_acting_replica_a_pending_revision_is_an_interrupted_one() {
        let (_, acting) = watch::channel(true);
        let shards = Shards::all("op-a", acting);
        assert!(shards.may_unlock(&pending(Some("op-b"), Duration::ZERO), TIMEOUT));
    }

    #[tokio::test]
    async fn an_action_is_fenced_when_the_replica_stops_being_a_member_and_never_without() {
        let (member, acting) = watch::channel(true);
        let shards = Shards::auto(
            "op-a",
            Arc::new(Mutex::new(Ring::new("op-a", LEASE, Instant::now()))),
            LEASE,
            acting,
        );
        member.send(false).unwrap();
        let fenced = tokio::time::timeout(Duration::from_secs(5), shards.fenced()).await;
        assert!(fenced.is_ok(), "not fenced after dropping out");
        // With no coordination (the sender gone), nothing fences.
        let (gone, acting) = watch::channel(true);
        drop(gone);
        let shards = Shards::all("op-a", acting);
        let fenced = tokio::time::timeout(Duration::from_millis(50), shards.fenced()).await;
        assert!(fenced.is_err(), "fenced with nobody to fence it");
    }
}
