//! Helm's release records, read and changed through the API (the storage Secrets); what they
//! mean is `fhr_release::record`'s business. Labels are read first, so deciding never starts a
//! `helm` process.

use fhr_release::record::{self, History, RecordError};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PostParams};

/// Why a release record could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The API call failed.
    #[error("reading Helm release records: {0}")]
    Api(#[from] kube::Error),
    /// The record does not decode, or lacks what is needed.
    #[error("Helm release record {name} is unusable: {source}")]
    Corrupt {
        /// The storage Secret.
        name: String,
        /// What is wrong with it.
        #[source]
        source: RecordError,
    },
}

/// Reads every revision of `release` in `namespace` from the labels of its storage Secrets.
pub async fn history(
    client: &kube::Client,
    namespace: &str,
    release: &str,
) -> Result<History, StorageError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let selector = format!("owner=helm,name={release}");
    let list = secrets
        .list_metadata(&ListParams::default().labels(&selector))
        .await?;
    Ok(History::new(
        list.items
            .iter()
            .filter_map(|item| {
                let mut revision = record::revision_from_labels(item.metadata.labels.as_ref()?)?;
                revision.written = item
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.as_second());
                Some(revision)
            })
            .collect(),
    ))
}

/// The rendered manifest of a revision, as Helm stored it.
pub async fn manifest(
    client: &kube::Client,
    namespace: &str,
    release: &str,
    revision: i64,
) -> Result<String, StorageError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let (name, _, decoded) = read_record(&secrets, release, revision).await?;
    record::manifest(&decoded)
        .map(str::to_owned)
        .map_err(|source| StorageError::Corrupt { name, source })
}

/// Reads and decodes a revision's storage Secret: (its name, the Secret, the record).
async fn read_record(
    secrets: &Api<Secret>,
    release: &str,
    revision: i64,
) -> Result<(String, Secret, serde_json::Value), StorageError> {
    let name = format!("sh.helm.release.v1.{release}.v{revision}");
    let secret = secrets.get(&name).await?;
    let decoded = secret
        .data
        .as_ref()
        .and_then(|d| d.get("release"))
        .ok_or(RecordError::Missing("release key"))
        .and_then(|encoded| record::decode(&encoded.0))
        .map_err(|source| StorageError::Corrupt {
            name: name.clone(),
            source,
        })?;
    Ok((name, secret, decoded))
}

/// Marks a revision left `pending-*` by an interrupted action as failed, as Helm itself would have
/// had it finished, so that the normal failure handling can remediate it.
pub async fn mark_failed(
    client: &kube::Client,
    namespace: &str,
    release: &str,
    revision: i64,
) -> Result<(), StorageError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let (name, mut secret, mut decoded) = read_record(&secrets, release, revision).await?;
    let corrupt = |source| StorageError::Corrupt {
        name: name.clone(),
        source,
    };
    record::mark_failed(&mut decoded).map_err(corrupt)?;
    let encoded = record::encode(&decoded).map_err(corrupt)?;
    secret
        .data
        .get_or_insert_with(Default::default)
        .insert("release".into(), ByteString(encoded));
    secret
        .metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("status".into(), "failed".into());
    // The resourceVersion from the read makes this a compare-and-swap.
    secrets
        .replace(&name, &PostParams::default(), &secret)
        .await?;
    Ok(())
}
