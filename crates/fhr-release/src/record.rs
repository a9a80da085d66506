//! Helm's release records as data: the labels of its storage Secrets (owner, status, version, our
//! digest) and the record inside them (base64 of gzip of JSON). The operator reads labels first, so
//! deciding never starts a `helm` process; it decodes a record only to read a manifest or to mark an
//! interrupted revision failed. A record comes from the cluster, so decoding is bounded.

use crate::state::{HelmStatus, Owner, Revision};
use fhr_types::meta::release_label;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};

/// Largest decompressed record accepted (Kubernetes caps a Secret at 1 MiB, and records compress
/// well; this bounds a hostile one).
pub const MAX_RECORD_BYTES: u64 = 32 << 20;

/// All revisions of one release, newest first.
#[derive(Debug, Clone, Default)]
pub struct History {
    revisions: Vec<Revision>,
}

impl History {
    /// A history of these revisions, in any order.
    pub fn new(mut revisions: Vec<Revision>) -> History {
        revisions.sort_by_key(|r| std::cmp::Reverse(r.number));
        History { revisions }
    }

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

/// Why a record does not decode or encode.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Not base64.
    #[error("not base64: {0}")]
    Base64(#[from] base64::DecodeError),
    /// The gzip stream is broken.
    #[error("not gzip: {0}")]
    Gzip(#[source] std::io::Error),
    /// Larger than [`MAX_RECORD_BYTES`] once decompressed.
    #[error("larger than {MAX_RECORD_BYTES} bytes once decompressed")]
    TooLarge,
    /// Not JSON, or not the JSON of a record.
    #[error("not a release record: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON without a field the operation needs.
    #[error("no {0}")]
    Missing(&'static str),
}

/// The revision a storage Secret's labels describe, if they name a version and a status.
pub fn revision_from_labels(labels: &BTreeMap<String, String>) -> Option<Revision> {
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
        actor: labels.get(release_label::ACTOR).cloned(),
        written: None,
    })
}

/// The owner as it is written into labels: a name longer than a label value allows is hashed.
pub fn owner(namespace: &str, name: &str) -> Owner {
    Owner {
        namespace: namespace.to_owned(),
        name: fhr_types::naming::label_value(name),
    }
}

/// The labels helm-operator replica `actor` puts on a release record.
pub fn labels(owner: &Owner, digest: &str, actor: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            release_label::ACTOR.to_owned(),
            fhr_types::naming::label_value(actor),
        ),
        (
            release_label::OWNER_NAMESPACE.to_owned(),
            owner.namespace.clone(),
        ),
        (release_label::OWNER_NAME.to_owned(), owner.name.clone()),
        (release_label::DIGEST.to_owned(), digest.to_owned()),
    ])
}

/// Decodes the `release` key of a storage Secret (already base64-decoded once by the API): Helm
/// stores base64(gzip(JSON)), or base64(JSON) in old records.
pub fn decode(data: &[u8]) -> Result<Value, RecordError> {
    use base64::Engine;
    let compressed = base64::engine::general_purpose::STANDARD.decode(data)?;
    let json = if compressed.starts_with(&[0x1f, 0x8b]) {
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(&compressed[..])
            .take(MAX_RECORD_BYTES + 1)
            .read_to_end(&mut json)
            .map_err(RecordError::Gzip)?;
        if json.len() as u64 > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge);
        }
        json
    } else {
        compressed
    };
    Ok(serde_json::from_slice(&json)?)
}

/// Encodes a record as Helm stores it.
pub fn encode(record: &Value) -> Result<Vec<u8>, RecordError> {
    use base64::Engine;
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    serde_json::to_writer(&mut gzip, record)?;
    gzip.flush().map_err(RecordError::Gzip)?;
    let compressed = gzip.finish().map_err(RecordError::Gzip)?;
    Ok(base64::engine::general_purpose::STANDARD
        .encode(compressed)
        .into_bytes())
}

/// The rendered manifest of a record.
pub fn manifest(record: &Value) -> Result<&str, RecordError> {
    record["manifest"]
        .as_str()
        .ok_or(RecordError::Missing("manifest"))
}

/// Marks a record left `pending-*` by an interrupted action as failed, as Helm itself would have
/// had it finished, so that the normal failure handling can remediate it.
pub fn mark_failed(record: &mut Value) -> Result<(), RecordError> {
    let info = record
        .get_mut("info")
        .and_then(Value::as_object_mut)
        .ok_or(RecordError::Missing("info"))?;
    info.insert("status".into(), "failed".into());
    info.insert(
        "description".into(),
        "Interrupted before it finished; marked failed by helm-operator".into(),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_into_a_revision() {
        let me = owner("team", "web");
        let mut labels = labels(&me, "abc", "helm-operator-0");
        labels.insert("version".into(), "7".into());
        labels.insert("status".into(), "deployed".into());
        labels.insert("owner".into(), "helm".into());
        let revision = revision_from_labels(&labels).unwrap();
        assert_eq!(revision.number, 7);
        assert_eq!(revision.status, HelmStatus::Deployed);
        assert_eq!(revision.owner, Some(me));
        assert_eq!(revision.digest.as_deref(), Some("abc"));
        assert_eq!(revision.actor.as_deref(), Some("helm-operator-0"));
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
    fn records_round_trip_and_an_interrupted_one_is_marked_failed() {
        let mut record = serde_json::json!({"name": "web", "info": {"status": "pending-upgrade"},
            "version": 2, "manifest": "kind: ConfigMap\n"});
        let encoded = encode(&record).unwrap();
        assert_eq!(decode(&encoded).unwrap(), record);
        assert_eq!(manifest(&record).unwrap(), "kind: ConfigMap\n");
        mark_failed(&mut record).unwrap();
        assert_eq!(record["info"]["status"], "failed");
        assert!(matches!(
            mark_failed(&mut serde_json::json!({})),
            Err(RecordError::Missing("info"))
        ));
    }

    #[test]
    fn hostile_records_are_refused_with_a_reason() {
        use base64::Engine;
        assert!(matches!(decode(b"%%%"), Err(RecordError::Base64(_))));
        // A gzip bomb: 40 MiB of zeros compresses to a few tens of KiB.
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gzip.write_all(&vec![b'0'; 40 << 20]).unwrap();
        let bomb = base64::engine::general_purpose::STANDARD.encode(gzip.finish().unwrap());
        assert!(matches!(
            decode(bomb.as_bytes()),
            Err(RecordError::TooLarge)
        ));
        let not_json = base64::engine::general_purpose::STANDARD.encode(b"{not json");
        assert!(matches!(
            decode(not_json.as_bytes()),
            Err(RecordError::Json(_))
        ));
    }

    #[test]
    fn history_is_newest_first() {
        let revision = |number, status: &str| Revision {
            number,
            status: HelmStatus::parse(status),
            owner: None,
            digest: None,
            actor: None,
            written: None,
        };
        let history = History::new(vec![
            revision(1, "superseded"),
            revision(3, "failed"),
            revision(2, "deployed"),
        ]);
        assert_eq!(history.latest().unwrap().number, 3);
        assert_eq!(history.last_deployed(), Some(2));
    }
}
