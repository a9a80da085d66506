//! Helm release names: the default `<namespace>-<name>` and the rule every name must follow.

/// Longest Helm release name: Helm refuses longer ones because it derives object names from it.
pub const MAX_RELEASE_NAME: usize = 53;

/// Why a release name is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseNameError {
    /// Longer than [`MAX_RELEASE_NAME`].
    #[error(
        "release name {name:?} is {len} characters long; Helm allows at most {MAX_RELEASE_NAME}"
    )]
    TooLong {
        /// The name, as given.
        name: String,
        /// Its length.
        len: usize,
    },
    /// Not a DNS-1123 label.
    #[error(
        "release name {0:?} is not a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit"
    )]
    NotDnsLabel(String),
}

/// Checks that `name` is a valid Helm release name: a DNS-1123 label of at most 53 characters.
pub fn validate_release_name(name: &str) -> Result<(), ReleaseNameError> {
    if name.len() > MAX_RELEASE_NAME {
        return Err(ReleaseNameError::TooLong {
            name: name.chars().take(MAX_RELEASE_NAME + 10).collect(),
            len: name.len(),
        });
    }
    let bytes = name.as_bytes();
    let ok_inner = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    let ok_edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let valid = match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => ok_edge(first) && ok_edge(last) && bytes.iter().all(ok_inner),
        _ => false,
    };
    if valid {
        Ok(())
    } else {
        Err(ReleaseNameError::NotDnsLabel(name.to_owned()))
    }
}

/// The release name when `spec.releaseName` is not set: `<namespace>-<name>`.
pub fn default_release_name(namespace: &str, name: &str) -> String {
    format!("{namespace}-{name}")
}

/// The release name a resource manages: `spec.releaseName` if set, else the default; validated.
pub fn release_name(
    namespace: &str,
    name: &str,
    explicit: Option<&str>,
) -> Result<String, ReleaseNameError> {
    let release = match explicit {
        Some(explicit) => explicit.to_owned(),
        None => default_release_name(namespace, name),
    };
    validate_release_name(&release)?;
    Ok(release)
}

/// A value as it is written into a label (an owner's name, a replica, a group): itself when it
/// is a valid label value (at most 63 characters, alphanumerics and `-_.` inside), else a digest
/// of it: a replica named by a host name must not make every Helm record it writes invalid.
pub fn label_value(value: &str) -> String {
    use sha2::Digest as _;
    let inner = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let valid = value.len() <= 63
        && value.chars().all(inner)
        && value
            .chars()
            .next()
            .is_none_or(|c| c.is_ascii_alphanumeric())
        && value
            .chars()
            .last()
            .is_none_or(|c| c.is_ascii_alphanumeric());
    if valid {
        value.to_owned()
    } else {
        format!(
            "h-{}",
            hex::encode(&sha2::Sha256::digest(value.as_bytes())[..16])
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_name_is_namespace_dash_name() {
        assert_eq!(
            release_name("team-a", "mongodb", None).unwrap(),
            "team-a-mongodb"
        );
    }

    #[test]
    fn explicit_name_wins() {
        assert_eq!(
            release_name("team-a", "mongodb", Some("mongo-database")).unwrap(),
            "mongo-database"
        );
    }

    #[test]
    fn valid_names_pass() {
        for name in ["a", "a1", "mongo-database", &"x".repeat(MAX_RELEASE_NAME)] {
            assert_eq!(validate_release_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn invalid_names_are_refused() {
        for name in ["", "-a", "a-", "Mongo", "a_b", "a.b", "a b", "ä"] {
            assert!(
                matches!(
                    validate_release_name(name),
                    Err(ReleaseNameError::NotDnsLabel(_))
                ),
                "{name:?}"
            );
        }
    }

    #[test]
    fn too_long_default_names_are_refused_with_the_length() {
        let name = "n".repeat(40);
        let err = release_name("a-long-namespace", &name, None).unwrap_err();
        assert_eq!(
            err,
            ReleaseNameError::TooLong {
                name: format!("a-long-namespace-{name}"),
                len: 57
            }
        );
        assert!(err.to_string().contains("at most 53"));
    }

    #[test]
    fn dotted_resource_names_make_an_invalid_default() {
        // metadata.name may hold dots; a Helm release name may not, so the user must set releaseName.
        assert!(release_name("ns", "my.app", None).is_err());
    }

    #[test]
    fn label_values_are_kept_when_valid_and_hashed_when_not() {
        assert_eq!(
            label_value("helm-operator-5d8c-x2x"),
            "helm-operator-5d8c-x2x"
        );
        for odd in ["host name-12", "-leading", &"x".repeat(64), "a/b"] {
            let value = label_value(odd);
            assert!(
                value.starts_with("h-") && value.len() <= 63,
                "{odd}: {value}"
            );
        }
    }
}
