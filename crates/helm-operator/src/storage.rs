//! Helm's release records, read through the API from its storage Secrets: labels first (owner,
//! status, version, our digest), so deciding never starts a `helm` process.

use crate::decide::{HelmStatus, Owner, Revision};
use fhr_types::meta::release_label;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PostParams};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Write};

/// Largest decompressed release record accepted when unlocking (Kubernetes caps a Secret at 1 MiB,
/// and records compress well; this bounds a hostile one).
const MAX_RECORD_BYTES: u64 = 32 << 20;

/// All revisions of one release, newest first.
#[derive(Debug, Clone, Default)]
pub struct History {
    revisions: Vec<Revision>,
}

impl History {
    /// The newest revision.
    pub fn latest(&self) -> Option<&Revision> {
        self.revisions.first()
    }

    /// The newest revision with status `deployed`.
    pub fn last_deployed(&self) -> Option<i64> {
        self.revisions
            .iter()
            .find(|r| r.status == HelmStatus::Deployed)
            .map(|r| r.number)
    }
}

/// Why a release record could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The API call failed.
    #[error("reading Helm release records: {0}")]
    Api(#[from] kube::Error),
    /// The record does not decode.
    #[error("Helm release record {0} does not decode: {1}")]
    Corrupt(String, String),
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
    let mut revisions: Vec<Revision> = list
        .items
        .iter()
        .filter_map(|item| revision_from_labels(item.metadata.labels.as_ref()?))
        .collect();
    revisions.sort_by_key(|r| std::cmp::Reverse(r.number));
    Ok(History { revisions })
}

fn revision_from_labels(labels: &BTreeMap<String, String>) -> Option<Revision> {
    let number = labels.get("version")?.parse().ok()?;
    let status = HelmStatus::parse(labels.get("status")?);
    let owner = match (
        labels.get(release_label::OWNER_NAMESPACE),
        labels.get(release_label::OWNER_NAME),
    ) {
        (Some(namespace), Some(name)) => Some(Owner {
            namespace: namespace.clone(),
            name: name.clone(),
        }),
        _ => None,
    };
    Some(Revision {
        number,
        status,
        owner,
        digest: labels.get(release_label::DIGEST).cloned(),
    })
}

/// The owner as it is written into labels: a name longer than a label value allows is hashed.
pub fn owner(namespace: &str, name: &str) -> Owner {
    let name = if name.len() <= 63 {
        name.to_owned()
    } else {
        let digest = Sha256::digest(name.as_bytes());
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("h-{hex}")
    };
    Owner {
        namespace: namespace.to_owned(),
        name,
    }
}

/// The labels helm-operator puts on a release record.
pub fn labels(owner: &Owner, digest: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            release_label::OWNER_NAMESPACE.to_owned(),
            owner.namespace.clone(),
        ),
        (release_label::OWNER_NAME.to_owned(), owner.name.clone()),
        (release_label::DIGEST.to_owned(), digest.to_owned()),
    ])
}

/// The rendered manifest of a revision, as Helm stored it.
pub async fn manifest(
    client: &kube::Client,
    namespace: &str,
    release: &str,
    revision: i64,
) -> Result<String, StorageError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let (name, _, record) = read_record(&secrets, release, revision).await?;
    record["manifest"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| StorageError::Corrupt(name, "no manifest".into()))
}

/// Reads and decodes a revision's storage Secret: (its name, the Secret, the record).
async fn read_record(
    secrets: &Api<Secret>,
    release: &str,
    revision: i64,
) -> Result<(String, Secret, serde_json::Value), StorageError> {
    let name = format!("sh.helm.release.v1.{release}.v{revision}");
    let secret = secrets.get(&name).await?;
    let encoded = secret
        .data
        .as_ref()
        .and_then(|d| d.get("release"))
        .ok_or_else(|| StorageError::Corrupt(name.clone(), "no release key".into()))?;
    let record = decode_record(&encoded.0).map_err(|e| StorageError::Corrupt(name.clone(), e))?;
    Ok((name, secret, record))
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
    let (name, mut secret, mut record) = read_record(&secrets, release, revision).await?;
    let corrupt = |what: &str| StorageError::Corrupt(name.clone(), what.to_owned());
    let info = record
        .get_mut("info")
        .and_then(|i| i.as_object_mut())
        .ok_or_else(|| corrupt("no info"))?;
    info.insert("status".into(), "failed".into());
    info.insert(
        "description".into(),
        "Interrupted before it finished; marked failed by helm-operator".into(),
    );
    let encoded = encode_record(&record).map_err(|e| corrupt(&e))?;
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

/// Helm stores base64(gzip(JSON)) inside the Secret's (already base64-decoded) data.
fn decode_record(data: &[u8]) -> Result<serde_json::Value, String> {
    use base64::Engine;
    let compressed = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| e.to_string())?;
    let mut json = Vec::new();
    if compressed.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(&compressed[..])
            .take(MAX_RECORD_BYTES)
            .read_to_end(&mut json)
            .map_err(|e| e.to_string())?;
    } else {
        json = compressed;
    }
    serde_json::from_slice(&json).map_err(|e| e.to_string())
}

fn encode_record(record: &serde_json::Value) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    serde_json::to_writer(&mut gzip, record).map_err(|e| e.to_string())?;
    gzip.flush().map_err(|e| e.to_string())?;
    let compressed = gzip.finish().map_err(|e| e.to_string())?;
    Ok(base64::engine::general_purpose::STANDARD
        .encode(compressed)
        .into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_into_a_revision() {
        let me = owner("team", "web");
        let mut labels = labels(&me, "abc");
        labels.insert("version".into(), "7".into());
        labels.insert("status".into(), "deployed".into());
        labels.insert("owner".into(), "helm".into());
        let revision = revision_from_labels(&labels).unwrap();
        assert_eq!(revision.number, 7);
        assert_eq!(revision.status, HelmStatus::Deployed);
        assert_eq!(revision.owner, Some(me));
        assert_eq!(revision.digest.as_deref(), Some("abc"));
    }

    #[test]
    fn records_written_by_hand_have_no_owner() {
        let labels = BTreeMap::from([
            ("version".to_owned(), "1".to_owned()),
            ("status".to_owned(), "deployed".to_owned()),
        ]);
        assert_eq!(revision_from_labels(&labels).unwrap().owner, None);
    }

    #[test]
    fn long_names_are_hashed_into_a_valid_label_value() {
        let long = "n".repeat(200);
        let a = owner("team", &long);
        assert!(a.name.len() <= 63);
        assert_eq!(a, owner("team", &long));
        assert_ne!(a, owner("team", &"m".repeat(200)));
    }

    #[test]
    fn records_round_trip_through_helms_encoding() {
        let record =
            serde_json::json!({"name": "web", "info": {"status": "pending-upgrade"}, "version": 2});
        let encoded = encode_record(&record).unwrap();
        assert_eq!(decode_record(&encoded).unwrap(), record);
    }
}
