//! The sync plan, pure: from the manifests git holds, the kinds the API server serves and what
//! the cluster has of this sync set, decide what to apply (in which order, with which labels and
//! annotations), what is unchanged, what to prune, and what to refuse. The executor in `sync.rs`
//! only talks to the API server.

use fhr_manifests::Manifest;
use fhr_types::meta::{SOURCE_COMMIT_ANNOTATION, SOURCE_PATH_ANNOTATION, SYNC_SET_LABEL};
use kube::api::DynamicObject;
use kube::discovery::{ApiCapabilities, ApiResource, Scope};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};

/// Annotation holding the digest of an object's manifest as it is in git: an unchanged manifest
/// keeps its source-commit annotation, so a new commit rewrites only what it changed.
pub const SOURCE_DIGEST_ANNOTATION: &str = "helm.integrations.flux.weave.works/source-digest";

/// An object's identity: group, kind, namespace (empty when cluster-scoped), name.
pub type Key = (String, String, String, String);
/// What the cluster has of this sync set, with the resource each was listed through.
pub type Live = HashMap<Key, (ApiResource, DynamicObject)>;
/// The API resources of the allowed kinds, by group and kind.
pub type Kinds = HashMap<(String, String), (ApiResource, ApiCapabilities)>;

/// A kind the agent may apply: `Kind`, or `group/Kind` for one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedKind {
    group: Option<String>,
    kind: String,
}

impl AllowedKind {
    /// Parses `Kind` or `group/Kind` (`core/ConfigMap` for the core group).
    pub fn parse(text: &str) -> AllowedKind {
        match text.rsplit_once('/') {
            Some((group, kind)) => AllowedKind {
                group: Some(if group == "core" {
                    String::new()
                } else {
                    group.to_owned()
                }),
                kind: kind.to_owned(),
            },
            None => AllowedKind {
                group: None,
                kind: text.to_owned(),
            },
        }
    }

    /// Whether an object of `group` and `kind` may be applied.
    pub fn matches(&self, group: &str, kind: &str) -> bool {
        self.kind == kind && self.group.as_deref().is_none_or(|g| g == group)
    }
}

/// How much of git a sync applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reapply {
    /// Every manifest: undoes hand edits (the first sync, the sync interval, a request).
    Everything,
    /// Only manifests that changed in git since their object was applied (a new commit): the
    /// cost of a commit follows what it changed, not the size of the repository.
    Changed,
}

/// The settings a plan is made with.
#[derive(Debug, Clone, Copy)]
pub struct Settings<'a> {
    /// The kinds that may be applied.
    pub allowed: &'a [AllowedKind],
    /// This agent's sync set (the label on everything it applies).
    pub sync_set: &'a str,
    /// How much to apply.
    pub scope: Reapply,
    /// Whether objects that left git are deleted.
    pub prune: bool,
    /// The commit being synced.
    pub commit: &'a str,
}

/// One object to apply.
#[derive(Debug)]
pub struct Apply {
    /// The resource to apply it through.
    pub resource: ApiResource,
    /// Its namespace (none when cluster-scoped).
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
    /// The object as it is applied: the manifest with the sync set's label and source annotations.
    pub object: Value,
    /// Where it is in git, for messages (`file:line: Kind name`).
    pub origin: String,
}

/// One object to delete, with the preconditions that make sure it is still the one listed.
#[derive(Debug)]
pub struct Prune {
    /// The resource to delete it through.
    pub resource: ApiResource,
    /// Its namespace (empty when cluster-scoped).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The listed uid.
    pub uid: Option<String>,
    /// The listed resourceVersion.
    pub resource_version: Option<String>,
}

/// What a sync does.
#[derive(Debug, Default)]
pub struct SyncPlan {
    /// Objects to apply, in order: Namespaces, CRDs, other cluster-scoped objects, namespaced ones.
    pub apply: Vec<Apply>,
    /// Objects left alone because their manifest is unchanged since they were applied.
    pub unchanged: usize,
    /// Objects of this sync set that left git.
    pub prune: Vec<Prune>,
    /// Why nothing is pruned, if so.
    pub prune_skipped: Option<String>,
    /// Objects of kinds off the allow-list (`file: Kind name`).
    pub refused_kinds: Vec<String>,
    /// Objects that cannot be applied (`file:line: …`): unserved kinds, duplicates.
    pub errors: Vec<String>,
}

/// Whether a manifest names an allowed kind missing from `kinds` (a CRD installed since the last
/// discovery, perhaps): then discovery should run before planning.
pub fn needs_discovery(manifests: &[Manifest], allowed: &[AllowedKind], kinds: &Kinds) -> bool {
    manifests.iter().any(|m| {
        let (group, _) = split_api_version(m.api_version());
        allowed.iter().any(|a| a.matches(group, m.kind()))
            && !kinds.contains_key(&(group.to_owned(), m.kind().to_owned()))
    })
}

/// Plans a sync. `unreadable` says some manifests could not be read: then nothing is pruned,
/// since a missing manifest may only be unreadable.
pub fn plan(
    manifests: Vec<Manifest>,
    unreadable: bool,
    kinds: &Kinds,
    mut live: Live,
    settings: Settings<'_>,
) -> SyncPlan {
    let mut plan = SyncPlan::default();
    let mut seen: BTreeSet<Key> = BTreeSet::new();
    let mut ordered = Vec::new();
    for manifest in manifests {
        let (group, version) = split_api_version(manifest.api_version());
        if !settings
            .allowed
            .iter()
            .any(|a| a.matches(group, manifest.kind()))
        {
            plan.refused_kinds.push(format!(
                "{}: {} {}",
                manifest.file,
                manifest.kind(),
                manifest.name()
            ));
            continue;
        }
        let Some((resource, capabilities)) = kinds.get(&(group.to_owned(), manifest.kind().into()))
        else {
            plan.errors.push(format!(
                "{}:{}: the API server does not serve {} in {}",
                manifest.file,
                manifest.line,
                manifest.kind(),
                manifest.api_version()
            ));
            continue;
        };
        let namespace = match capabilities.scope {
            Scope::Namespaced => Some(manifest.namespace().unwrap_or("default").to_owned()),
            Scope::Cluster => None,
        };
        let key = (
            group.to_owned(),
            manifest.kind().to_owned(),
            namespace.clone().unwrap_or_default(),
            manifest.name().to_owned(),
        );
        if !seen.insert(key.clone()) {
            plan.errors.push(format!(
                "{}:{}: {} {} is defined more than once; the first definition is applied",
                manifest.file,
                manifest.line,
                manifest.kind(),
                manifest.name()
            ));
            continue;
        }
        let resource = ApiResource {
            version: version.to_owned(),
            api_version: manifest.api_version().to_owned(),
            ..resource.clone()
        };
        let previous = live.remove(&key);
        let digest = digest(&manifest.object);
        let previous_annotations = previous
            .as_ref()
            .and_then(|(_, o)| o.metadata.annotations.as_ref());
        let unchanged =
            previous_annotations.and_then(|a| a.get(SOURCE_DIGEST_ANNOTATION)) == Some(&digest);
        if settings.scope == Reapply::Changed && unchanged {
            plan.unchanged += 1;
            continue;
        }
        // An unchanged manifest keeps the commit it last changed in, so applying it is a no-op.
        let source_commit = previous_annotations
            .filter(|_| unchanged)
            .and_then(|a| a.get(SOURCE_COMMIT_ANNOTATION).cloned())
            .unwrap_or_else(|| settings.commit.to_owned());
        let object = labelled(
            &manifest,
            namespace.as_deref(),
            &settings,
            source_commit,
            digest,
        );
        ordered.push((
            apply_order(group, manifest.kind(), namespace.is_some()),
            Apply {
                resource,
                namespace,
                name: manifest.name().to_owned(),
                origin: format!(
                    "{}:{}: {} {}",
                    manifest.file,
                    manifest.line,
                    manifest.kind(),
                    manifest.name()
                ),
                object,
            },
        ));
    }
    // What namespaced objects need goes first: a FluxHelmRelease committed together with its
    // Namespace must not wait for a retry. The sort is stable, so file order holds within each.
    ordered.sort_by_key(|(order, _)| *order);
    plan.apply = ordered.into_iter().map(|(_, apply)| apply).collect();

    if !settings.prune {
        plan.prune_skipped = Some("garbage collection is off".into());
    } else if unreadable {
        plan.prune_skipped = Some("some manifests could not be read".into());
    } else {
        let mut gone: Vec<_> = live.into_iter().collect();
        gone.sort_by(|a, b| a.0.cmp(&b.0));
        plan.prune = gone
            .into_iter()
            .map(|((_, _, namespace, name), (resource, object))| Prune {
                resource,
                namespace,
                name,
                uid: object.metadata.uid,
                resource_version: object.metadata.resource_version,
            })
            .collect();
    }
    plan
}

/// The manifest as it is applied: in its namespace, with this sync set's label and the source
/// annotations.
fn labelled(
    manifest: &Manifest,
    namespace: Option<&str>,
    settings: &Settings<'_>,
    source_commit: String,
    digest: String,
) -> Value {
    let mut object = manifest.object.clone();
    let Some(metadata) = object["metadata"].as_object_mut() else {
        return object;
    };
    if let Some(namespace) = namespace {
        metadata.insert("namespace".into(), namespace.into());
    }
    let labels = metadata
        .entry("labels")
        .or_insert_with(|| Value::Object(Default::default()));
    if let Some(labels) = labels.as_object_mut() {
        labels.insert(SYNC_SET_LABEL.into(), settings.sync_set.into());
    }
    let annotations = metadata
        .entry("annotations")
        .or_insert_with(|| Value::Object(Default::default()));
    if let Some(annotations) = annotations.as_object_mut() {
        annotations.insert(SOURCE_COMMIT_ANNOTATION.into(), source_commit.into());
        annotations.insert(SOURCE_PATH_ANNOTATION.into(), manifest.file.clone().into());
        annotations.insert(SOURCE_DIGEST_ANNOTATION.into(), digest.into());
    }
    object
}

/// Where an object goes in a sync: Namespaces, then CRDs, then other cluster-scoped objects, then
/// namespaced ones.
fn apply_order(group: &str, kind: &str, namespaced: bool) -> u8 {
    match (group, kind, namespaced) {
        ("", "Namespace", _) => 0,
        ("apiextensions.k8s.io", "CustomResourceDefinition", _) => 1,
        (_, _, false) => 2,
        (_, _, true) => 3,
    }
}

/// `group/version` split; the core group is empty.
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((group, version)) => (group, version),
        None => ("", api_version),
    }
}

fn digest(object: &Value) -> String {
    let hash = Sha256::digest(serde_json::to_vec(object).expect("JSON serialises"));
    hex::encode(&hash[..16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::discovery::verbs;

    const FHR_GROUP: &str = "helm.integrations.flux.weave.works";

    /// The kinds a test cluster serves: FluxHelmRelease, Namespace, ConfigMap, ClusterRole.
    fn kinds() -> Kinds {
        let kind = |group: &str, version: &str, kind: &str, plural: &str, scope: Scope| {
            let api_version = if group.is_empty() {
                version.to_owned()
            } else {
                format!("{group}/{version}")
            };
            let resource = ApiResource {
                group: group.into(),
                version: version.into(),
                api_version,
                kind: kind.into(),
                plural: plural.into(),
            };
            let capabilities = ApiCapabilities {
                scope,
                subresources: vec![],
                operations: vec![verbs::PATCH.into()],
            };
            (
                (group.to_owned(), kind.to_owned()),
                (resource, capabilities),
            )
        };
        HashMap::from([
            kind(
                FHR_GROUP,
                "v1alpha",
                "FluxHelmRelease",
                "fluxhelmreleases",
                Scope::Namespaced,
            ),
            kind("", "v1", "Namespace", "namespaces", Scope::Cluster),
            kind("", "v1", "ConfigMap", "configmaps", Scope::Namespaced),
            kind(
                "rbac.authorization.k8s.io",
                "v1",
                "ClusterRole",
                "clusterroles",
                Scope::Cluster,
            ),
        ])
    }

    fn manifests(file: &str, yaml: &str) -> Vec<Manifest> {
        let (found, errors) = fhr_manifests::parse_file(file, yaml.as_bytes());
        assert!(errors.is_empty(), "{errors:?}");
        found
    }

    const REPOSITORY: &str = "\
apiVersion: helm.integrations.flux.weave.works/v1alpha
kind: FluxHelmRelease
metadata:
  name: web
  namespace: team
spec:
  chartGitPath: webapp
---
apiVersion: v1
kind: Namespace
metadata:
  name: team
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: escalate
---
apiVersion: example.com/v1
kind: Widget
metadata:
  name: w
";

    fn settings<'a>(allowed: &'a [AllowedKind], scope: Reapply) -> Settings<'a> {
        Settings {
            allowed,
            sync_set: "main",
            scope,
            prune: true,
            commit: "c2",
        }
    }

    fn allowed() -> Vec<AllowedKind> {
        ["FluxHelmRelease", "Namespace", "example.com/Widget"]
            .iter()
            .map(|k| AllowedKind::parse(k))
            .collect()
    }

    #[test]
    fn allowed_kinds_are_applied_in_order_labelled_and_the_rest_reported() {
        let allowed = allowed();
        let plan = plan(
            manifests("releases.yaml", REPOSITORY),
            false,
            &kinds(),
            Live::new(),
            settings(&allowed, Reapply::Everything),
        );
        let names: Vec<_> = plan.apply.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["team", "web"], "the Namespace goes first");
        assert_eq!(
            plan.refused_kinds,
            ["releases.yaml: ClusterRoleBinding escalate"]
        );
        assert_eq!(
            plan.errors,
            ["releases.yaml:18: the API server does not serve Widget in example.com/v1"]
        );
        let web = &plan.apply[1].object;
        assert_eq!(web["metadata"]["labels"][SYNC_SET_LABEL], "main");
        assert_eq!(
            web["metadata"]["annotations"][SOURCE_COMMIT_ANNOTATION],
            "c2"
        );
        assert_eq!(
            web["metadata"]["annotations"][SOURCE_PATH_ANNOTATION],
            "releases.yaml"
        );
        assert_eq!(plan.apply[0].namespace, None);
        assert_eq!(plan.apply[1].namespace.as_deref(), Some("team"));
    }

    #[test]
    fn a_kind_nobody_has_discovered_asks_for_discovery() {
        let allowed = allowed();
        let found = manifests("releases.yaml", REPOSITORY);
        assert!(
            needs_discovery(&found, &allowed, &kinds()),
            "Widget is allowed but unknown"
        );
        let only_known = [AllowedKind::parse("FluxHelmRelease")];
        assert!(!needs_discovery(&found, &only_known, &kinds()));
    }

    /// The live object as a previous sync of `commit` applied `manifest`.
    fn applied(manifest: &Manifest, commit: &str) -> (Key, (ApiResource, DynamicObject)) {
        let allowed = allowed();
        let settings = Settings {
            commit,
            ..settings(&allowed, Reapply::Everything)
        };
        let one = plan(
            vec![manifest.clone()],
            false,
            &kinds(),
            Live::new(),
            settings,
        );
        let apply = one.apply.into_iter().next().unwrap();
        let mut object: DynamicObject = serde_json::from_value(apply.object).unwrap();
        object.metadata.uid = Some(format!("uid-{}", apply.name));
        object.metadata.resource_version = Some("7".into());
        let (group, _) = split_api_version(manifest.api_version());
        let key = (
            group.to_owned(),
            manifest.kind().to_owned(),
            apply.namespace.clone().unwrap_or_default(),
            apply.name.clone(),
        );
        (key, (apply.resource, object))
    }

    #[test]
    fn a_commit_applies_only_what_changed_and_keeps_the_commit_of_the_rest() {
        let allowed = allowed();
        let before = manifests("a.yaml", REPOSITORY);
        let live: Live = before[..2].iter().map(|m| applied(m, "c1")).collect();
        let after = REPOSITORY.replace("chartGitPath: webapp", "chartGitPath: other");
        let incremental = plan(
            manifests("a.yaml", &after),
            false,
            &kinds(),
            live.clone(),
            settings(&allowed, Reapply::Changed),
        );
        let names: Vec<_> = incremental.apply.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["web"]);
        assert_eq!(incremental.unchanged, 1);
        // A full sync applies everything; the unchanged Namespace keeps the commit it came in.
        let full = plan(
            manifests("a.yaml", &after),
            false,
            &kinds(),
            live,
            settings(&allowed, Reapply::Everything),
        );
        let namespace = &full.apply[0];
        assert_eq!(namespace.name, "team");
        assert_eq!(
            namespace.object["metadata"]["annotations"][SOURCE_COMMIT_ANNOTATION],
            "c1"
        );
        assert_eq!(
            full.apply[1].object["metadata"]["annotations"][SOURCE_COMMIT_ANNOTATION],
            "c2"
        );
    }

    #[test]
    fn what_left_git_is_pruned_with_preconditions_unless_that_is_unsafe_or_off() {
        let allowed = allowed();
        let before = manifests("a.yaml", REPOSITORY);
        let live: Live = before[..2].iter().map(|m| applied(m, "c1")).collect();
        let only_namespace = || manifests("a.yaml", &REPOSITORY[REPOSITORY.find("---").unwrap()..]);
        let pruning = plan(
            only_namespace(),
            false,
            &kinds(),
            live.clone(),
            settings(&allowed, Reapply::Changed),
        );
        assert_eq!(pruning.prune.len(), 1);
        let gone = &pruning.prune[0];
        assert_eq!(
            (gone.namespace.as_str(), gone.name.as_str()),
            ("team", "web")
        );
        assert_eq!(gone.uid.as_deref(), Some("uid-web"));
        assert_eq!(gone.resource_version.as_deref(), Some("7"));

        let unreadable = plan(
            only_namespace(),
            true,
            &kinds(),
            live.clone(),
            settings(&allowed, Reapply::Changed),
        );
        assert!(unreadable.prune.is_empty());
        assert_eq!(
            unreadable.prune_skipped.as_deref(),
            Some("some manifests could not be read")
        );
        let off = plan(
            only_namespace(),
            false,
            &kinds(),
            live,
            Settings {
                prune: false,
                ..settings(&allowed, Reapply::Changed)
            },
        );
        assert!(off.prune.is_empty());
    }

    #[test]
    fn a_second_definition_of_an_object_is_refused() {
        let allowed = allowed();
        let twice = format!(
            "{REPOSITORY}---\n{}",
            &REPOSITORY[..REPOSITORY.find("---").unwrap()]
        );
        let plan = plan(
            manifests("a.yaml", &twice),
            false,
            &kinds(),
            Live::new(),
            settings(&allowed, Reapply::Everything),
        );
        assert_eq!(plan.apply.len(), 2);
        assert!(
            plan.errors
                .iter()
                .any(|e| e.contains("defined more than once")),
            "{:?}",
            plan.errors
        );
    }

    #[test]
    fn allowed_kinds_match_by_kind_or_group_and_kind() {
        let any = AllowedKind::parse("FluxHelmRelease");
        assert!(any.matches(FHR_GROUP, "FluxHelmRelease"));
        assert!(!any.matches(FHR_GROUP, "Other"));
        let grouped = AllowedKind::parse("rbac.authorization.k8s.io/ClusterRoleBinding");
        assert!(grouped.matches("rbac.authorization.k8s.io", "ClusterRoleBinding"));
        assert!(!grouped.matches("evil.example.com", "ClusterRoleBinding"));
        let core = AllowedKind::parse("core/ConfigMap");
        assert!(core.matches("", "ConfigMap"));
    }

    #[test]
    fn digests_follow_content() {
        let a = serde_json::json!({"kind": "A", "spec": {"x": 1}});
        let b = serde_json::json!({"spec": {"x": 1}, "kind": "A"});
        let c = serde_json::json!({"kind": "A", "spec": {"x": 2}});
        assert_eq!(digest(&a), digest(&b));
        assert_ne!(digest(&a), digest(&c));
    }
}
