//! Automatic sharding, the I/O part: each replica keeps a Lease of its own, labelled with its
//! group, and watches the group's Leases to know who is live.
//!
//! Liveness is judged by local observation, as client-go's leader election does, so that clocks
//! need not agree: another member is live while its `renewTime` keeps changing, and gone a lease
//! duration after the last change this replica saw (or at once, when its Lease is deleted). Only a
//! Lease whose `renewTime` is already older than two lease durations when first seen is trusted by
//! the wall clock, so that a restarted replica does not wait for members long dead.
//!
//! A replica counts itself a member only after renewing its own Lease in this process *and* seeing
//! that renewal come back through its watch, and stops counting itself one (so acts on nothing)
//! when either is older than two thirds of a lease duration: before any other replica can see its
//! Lease expire, and before a watch that silently stopped could make it think others gone. It keeps trying, and when a
//! renewal succeeds again it rejoins like a new member, fenced as one. It does not exit: when the
//! API server is down every replica is in this state, and exiting would only add restarts.

use crate::shards::Ring;
use fhr_types::naming::label_value;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The label naming the group a member Lease belongs to.
pub const MEMBER_OF_LABEL: &str = "helm.integrations.flux.weave.works/member-of";

/// The Lease name of `identity` in `group`: a DNS subdomain, hashed when the identity is not one.
fn lease_name(group: &str, identity: &str) -> String {
    let clean = identity
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if clean && group.len() + identity.len() < 250 && !identity.starts_with(['-', '.']) {
        format!("{group}-{identity}")
    } else {
        format!(
            "{group}-{}",
            hex::encode(&Sha256::digest(identity.as_bytes())[..12])
        )
    }
}

/// What was last seen of another member's Lease.
struct Seen {
    holder: String,
    renewed: Option<Timestamp>,
    /// When this replica saw `renewed` change (or first saw the Lease).
    changed: Instant,
}

/// One replica's membership of a group.
#[derive(Clone)]
pub struct Membership {
    api: Api<Lease>,
    group: String,
    identity: String,
    lease: String,
    duration: Duration,
    ring: Arc<Mutex<Ring>>,
    /// Whether this replica is a member now (renewing its Lease and seeing it renewed).
    member: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Membership {
    /// Membership of `group` (Leases in `namespace`) as `identity`, whose Lease lasts `duration`.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        group: &str,
        identity: &str,
        duration: Duration,
    ) -> Membership {
        Membership {
            api: Api::namespaced(client, namespace),
            group: group.to_owned(),
            identity: identity.to_owned(),
            lease: lease_name(group, identity),
            duration,
            ring: Arc::new(Mutex::new(Ring::new(identity, duration, Instant::now()))),
            member: Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }

    /// Follows whether this replica is a member: false from the moment it cannot renew its own
    /// Lease in time, when whatever it is doing must stop before others take its releases.
    pub fn member(&self) -> tokio::sync::watch::Receiver<bool> {
        self.member.subscribe()
    }

    /// The ring this membership keeps up to date.
    pub fn ring(&self) -> Arc<Mutex<Ring>> {
        self.ring.clone()
    }

    fn selector(&self) -> String {
        format!("{MEMBER_OF_LABEL}={}", label_value(&self.group))
    }

    /// Keeps this replica's Lease renewed and the ring's membership current until `shutdown`,
    /// calling `changed` after every change of membership.
    pub async fn run(self, changed: impl Fn() + Send + 'static, shutdown: CancellationToken) {
        let mut seen: HashMap<String, Seen> = HashMap::new();
        let mut listing: Option<BTreeSet<String>> = None;
        // kube's backoff between failed watches: the loop keeps renewing meanwhile.
        let mut leases = watcher(
            self.api.clone(),
            watcher::Config::default().labels(&self.selector()),
        )
        .default_backoff()
        .boxed();
        let mut renewed_at: Option<Instant> = None;
        // When the watch last showed this replica's own Lease renewed: proof that it is current.
        let mut echoed_at: Option<Instant> = None;
        // A quarter, so that one failed renewal still leaves time for the next before two thirds.
        let mut renew = tokio::time::interval(self.duration / 4);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Often enough that an expiry is noticed well within a lease duration.
        let mut tick = tokio::time::interval((self.duration / 10).max(Duration::from_millis(200)));
        // Join only after the first listing: a replica must see the members it takes keys
        // from, or it would not fence them.
        let mut listed = false;
        let mut was_live = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                event = leases.next() => match event {
                    Some(Ok(event)) => {
                        if self.echoes_own_renewal(&event) {
                            echoed_at = Some(Instant::now());
                        }
                        if self.record(event, &mut seen, &mut listing) {
                            listed = true;
                        }
                    }
                    Some(Err(e)) => {
                        warn!(group = %self.group, error = %e, "watching member Leases failed; retrying");
                    }
                    None => return,
                },
                _ = renew.tick(), if listed => {
                    // Counted from before the request: the Lease may say so from then on.
                    let sent = Instant::now();
                    match self.renew().await {
                        Ok(()) => {
                            if !was_live {
                                info!(group = %self.group, lease = %self.lease, "joined the replicas sharing releases");
                            }
                            renewed_at = Some(sent);
                        }
                        Err(e) => warn!(lease = %self.lease, error = %e, "renewing own Lease failed; retrying"),
                    }
                }
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            let fresh = |at: Option<Instant>| at.is_some_and(|at| now - at < self.duration * 2 / 3);
            let me_live = fresh(renewed_at) && fresh(echoed_at);
            if was_live && !me_live {
                warn!(lease = %self.lease, "own Lease not renewed in time: acting on nothing until it is");
            }
            was_live = me_live;
            self.member
                .send_if_modified(|member| std::mem::replace(member, me_live) != me_live);
            let live = self.live(&seen, me_live, now);
            let did_change = self
                .ring
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .observe(live.clone(), now);
            if did_change {
                info!(group = %self.group, members = ?live, "membership changed");
                changed();
            }
        }
    }

    /// Whether `event` shows this replica's own Lease (each renewal changes it).
    fn echoes_own_renewal(&self, event: &watcher::Event<Lease>) -> bool {
        match event {
            watcher::Event::Apply(lease) | watcher::Event::InitApply(lease) => {
                lease.metadata.name.as_deref() == Some(self.lease.as_str())
                    && lease
                        .spec
                        .as_ref()
                        .and_then(|s| s.holder_identity.as_deref())
                        == Some(self.identity.as_str())
            }
            _ => false,
        }
    }

    /// Takes a watch event into `seen`; true when a complete listing has been seen.
    fn record(
        &self,
        event: watcher::Event<Lease>,
        seen: &mut HashMap<String, Seen>,
        listing: &mut Option<BTreeSet<String>>,
    ) -> bool {
        match event {
            watcher::Event::Init => *listing = Some(BTreeSet::new()),
            watcher::Event::InitApply(lease) => {
                if let Some(names) = listing.as_mut() {
                    names.insert(lease.metadata.name.clone().unwrap_or_default());
                }
                self.see(lease, seen);
            }
            watcher::Event::InitDone => {
                let names = listing.take().unwrap_or_default();
                seen.retain(|name, _| names.contains(name));
                return true;
            }
            watcher::Event::Apply(lease) => self.see(lease, seen),
            watcher::Event::Delete(lease) => {
                seen.remove(&lease.metadata.name.unwrap_or_default());
            }
        }
        false
    }

    fn see(&self, lease: Lease, seen: &mut HashMap<String, Seen>) {
        let Some(name) = lease.metadata.name else {
            return;
        };
        if name == self.lease {
            return;
        }
        let spec = lease.spec.unwrap_or_default();
        let holder = spec.holder_identity.unwrap_or_default();
        let renewed = spec.renew_time.map(|t| t.0);
        let now = Instant::now();
        match seen.get_mut(&name) {
            Some(known) if known.renewed == renewed && known.holder == holder => {}
            Some(known) => {
                known.holder = holder;
                known.renewed = renewed;
                known.changed = now;
            }
            None => {
                // First sight: a Lease long unrenewed by the wall clock is gone already.
                let stale = renewed.is_none_or(|at| {
                    at + SignedDuration::try_from(self.duration * 2).unwrap_or_default()
                        < Timestamp::now()
                });
                let changed = if stale {
                    now.checked_sub(self.duration).unwrap_or(now)
                } else {
                    now
                };
                seen.insert(
                    name,
                    Seen {
                        holder,
                        renewed,
                        changed,
                    },
                );
            }
        }
    }

    /// The live members: others renewed within a lease duration as observed here, and this
    /// replica if `me_live`.
    fn live(&self, seen: &HashMap<String, Seen>, me_live: bool, now: Instant) -> BTreeSet<String> {
        let mut live: BTreeSet<String> = seen
            .values()
            .filter(|s| !s.holder.is_empty() && now - s.changed < self.duration)
            .map(|s| s.holder.clone())
            .collect();
        // Another process with this identity (a stale Lease under another name) is still us.
        live.remove(&self.identity);
        if me_live {
            live.insert(self.identity.clone());
        }
        live
    }

    /// Creates or renews this replica's Lease.
    async fn renew(&self) -> Result<(), kube::Error> {
        let now = MicroTime(Timestamp::now());
        let seconds = crate::leader::lease_seconds(self.duration);
        let patch = serde_json::json!({
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": seconds,
                "renewTime": now,
            }
        });
        match self
            .api
            .patch(&self.lease, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            other => return other.map(drop),
        }
        let labels = BTreeMap::from([(MEMBER_OF_LABEL.to_owned(), label_value(&self.group))]);
        let lease =
            crate::leader::new_lease(&self.lease, Some(labels), &self.identity, self.duration);
        self.api
            .create(&PostParams::default(), &lease)
            .await
            .map(drop)
    }

    /// Deletes this replica's Lease, so that the others take its releases at once. Call only
    /// when it acts on nothing any more.
    pub async fn leave(&self) {
        self.ring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(BTreeSet::new(), Instant::now());
        match self.api.delete(&self.lease, &DeleteParams::default()).await {
            Ok(_) => info!(lease = %self.lease, "left the replicas sharing releases"),
            Err(kube::Error::Api(e)) if e.code == 404 => {
                info!(lease = %self.lease, "left the replicas sharing releases");
            }
            Err(e) => warn!(lease = %self.lease, error = %e, "cannot delete own Lease"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_names_are_dns_names_and_label_values_fit() {
        assert_eq!(
            lease_name("helm-operator", "helm-operator-5d8c-x2x"),
            "helm-operator-helm-operator-5d8c-x2x"
        );
        let odd = lease_name("helm-operator", "Host_Name-12");
        assert!(
            odd.starts_with("helm-operator-") && !odd.contains('_'),
            "{odd}"
        );
        assert_eq!(label_value("helm-operator"), "helm-operator");
        assert!(label_value(&"x".repeat(80)).len() <= 63);
    }
}
