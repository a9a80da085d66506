//! Leader election with a `coordination.k8s.io` Lease, so that of several replicas only one acts.
//!
//! A replica takes the Lease when it is free or expired, renews it every third of its duration,
//! and treats a renewal that cannot happen before expiry as lost leadership: it stops acting at
//! once (the daemon exits and is restarted as a standby) rather than risk two leaders. On a clean
//! shutdown the Lease is released so that a standby takes over without waiting for expiry.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// One replica's claim on a Lease.
#[derive(Clone)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl Elector {
    /// A claim on Lease `name` in `namespace` as `identity`, valid for `duration` without renewal.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Elector {
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
        }
    }

    /// This replica's identity: the pod name, else the host name and process id.
    pub fn default_identity() -> String {
        std::env::var("POD_NAME").unwrap_or_else(|_| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        })
    }

    /// Waits until this replica holds the Lease; false if shutdown came first.
    pub async fn acquire(&self, shutdown: &CancellationToken) -> bool {
        let retry = self.duration / 3;
        loop {
            match self.try_take().await {
                Ok(true) => {
                    info!(lease = %self.name, identity = %self.identity, "became leader");
                    return true;
                }
                Ok(false) => {}
                Err(e) => warn!(lease = %self.name, error = %e, "cannot read or take the Lease"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(retry) => {}
            }
        }
    }

    /// Renews the Lease until `shutdown`, then releases it. Cancels `lost` (and returns) when the
    /// Lease could not be renewed before it expired or another replica holds it.
    pub async fn hold(self, shutdown: CancellationToken, lost: CancellationToken) {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.release().await;
                    return;
                }
                _ = tokio::time::sleep(self.duration / 3) => {}
            }
            match self.try_take().await {
                Ok(true) => last_renewal = tokio::time::Instant::now(),
                Ok(false) => {
                    warn!(lease = %self.name, "another replica holds the Lease: leadership lost");
                    lost.cancel();
                    return;
                }
                Err(e) => warn!(lease = %self.name, error = %e, "Lease renewal failed; retrying"),
            }
            // Stop before the Lease can have expired in another replica's eyes.
            if last_renewal.elapsed() > self.duration * 2 / 3 {
                warn!(lease = %self.name, "Lease not renewed in time: leadership lost");
                lost.cancel();
                return;
            }
        }
    }

    /// Takes or renews the Lease if it is free, expired or ours; Ok(false) when another holds it.
    async fn try_take(&self) -> Result<bool, kube::Error> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let seconds = lease_seconds(self.duration);
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = new_lease(&self.name, None, &self.identity, self.duration);
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.identity.as_str());
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(renewed), Some(duration)) => {
                let expiry =
                    renewed.0 + k8s_openapi::jiff::SignedDuration::from_secs(i64::from(duration));
                expiry < now.0
            }
            _ => true,
        };
        if !(ours || holder.is_none() || expired) {
            return Ok(false);
        }
        if !ours {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(now);
        // The resourceVersion from the read makes this a compare-and-swap: of two replicas
        // taking an expired Lease at once, one gets a conflict.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up so that a standby need not wait for it to expire.
    async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!(lease = %self.name, "released the Lease"),
            Err(e) => warn!(lease = %self.name, error = %e, "cannot release the Lease"),
        }
    }
}

/// A Lease's duration in whole seconds, as the API has it (at least 1).
pub(crate) fn lease_seconds(duration: Duration) -> i32 {
    i32::try_from(duration.as_secs()).unwrap_or(i32::MAX).max(1)
}

/// A Lease `name` (with `labels`) held by `identity` from now, for `duration`.
pub(crate) fn new_lease(
    name: &str,
    labels: Option<std::collections::BTreeMap<String, String>>,
    identity: &str,
    duration: Duration,
) -> Lease {
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels,
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(identity.to_owned()),
            lease_duration_seconds: Some(lease_seconds(duration)),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(0),
            ..Default::default()
        }),
    }
}

/// Where the Leases live: `--leader-election-namespace`, else the pod's namespace, else
/// `default_namespace`.
pub fn lease_namespace(args: &crate::cli::LeaderArgs, default_namespace: &str) -> String {
    args.leader_election_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| default_namespace.to_owned())
}

/// Takes part in leader election as `args` say: waits (not ready, as a standby) until this replica
/// leads, and keeps the Lease while it runs. Returns a token cancelled if leadership is lost
/// (never, with election off), or `None` if shutdown came first.
pub async fn lead(
    client: &kube::Client,
    args: &crate::cli::LeaderArgs,
    default_namespace: &str,
    lease: &str,
    health: &crate::Health,
    shutdown: &CancellationToken,
) -> Option<CancellationToken> {
    let lost = CancellationToken::new();
    if !args.leader_election {
        return Some(lost);
    }
    let namespace = lease_namespace(args, default_namespace);
    let elector = Elector::new(
        client.clone(),
        &namespace,
        lease,
        &Elector::default_identity(),
        args.lease_duration,
    );
    health.set_not_ready(format!("standby: waiting for Lease {namespace}/{lease}"));
    if !elector.acquire(shutdown).await {
        return None;
    }
    tokio::spawn(elector.hold(shutdown.clone(), lost.clone()));
    Some(lost)
}

/// Losing the Lease stops everything at once, as a shutdown does: two leaders must never act.
pub fn stop_when_lost(lost: &CancellationToken, shutdown: &CancellationToken) {
    let (lost, shutdown) = (lost.clone(), shutdown.clone());
    tokio::spawn(async move {
        lost.cancelled().await;
        tracing::error!("leadership lost; stopping");
        shutdown.cancel();
    });
}
