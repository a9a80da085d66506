//! What the controller watches besides FluxHelmRelease objects, and which changes of theirs start
//! a reconcile.

use fhr_types::FluxHelmRelease;
use fhr_types::meta::RECONCILE_REQUEST_ANNOTATION;
use kube::ResourceExt;
use kube::api::Api;
use std::hash::{Hash, Hasher};

/// What a reconcile decision depends on besides git and storage: the spec (generation), a
/// reconcile request, deletion and finalizers.
pub fn decision_inputs(fhr: &FluxHelmRelease) -> Option<u64> {
    let mut hash = std::collections::hash_map::DefaultHasher::new();
    fhr.metadata.generation.hash(&mut hash);
    fhr.annotations()
        .get(RECONCILE_REQUEST_ANNOTATION)
        .hash(&mut hash);
    fhr.metadata.deletion_timestamp.is_some().hash(&mut hash);
    fhr.finalizers().hash(&mut hash);
    Some(hash.finish())
}

pub fn scoped<K>(client: &kube::Client, namespace: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// Maps a changed ConfigMap or Secret to the resources in its namespace that name it
/// (`names(spec, object name)`: through `valuesFrom`, or a chart repository's `secretRef`).
pub fn referencing<K: kube::Resource>(
    store: kube::runtime::reflector::Store<FluxHelmRelease>,
    names: fn(&fhr_types::FluxHelmReleaseSpec, &str) -> bool,
) -> impl Fn(
    kube::core::PartialObjectMeta<K>,
) -> Vec<kube::runtime::reflector::ObjectRef<FluxHelmRelease>>
+ Send
+ Sync
+ 'static {
    move |object| {
        let (namespace, name) = (
            object.metadata.namespace.unwrap_or_default(),
            object.metadata.name.unwrap_or_default(),
        );
        store
            .state()
            .iter()
            .filter(|fhr| fhr.metadata.namespace.as_deref() == Some(namespace.as_str()))
            .filter(|fhr| names(&fhr.spec, &name))
            .map(|fhr| kube::runtime::reflector::ObjectRef::from_obj(&**fhr))
            .collect()
    }
}

/// Whether a spec's `valuesFrom` names ConfigMap `name`.
pub fn names_config_map(spec: &fhr_types::FluxHelmReleaseSpec, name: &str) -> bool {
    spec.values_from
        .iter()
        .filter_map(|source| source.config_map_key_ref.as_ref())
        .any(|r| r.name == name)
}

/// Whether a spec names Secret `name`: in `valuesFrom`, or as its chart repository's
/// credentials or CA.
pub fn names_secret(spec: &fhr_types::FluxHelmReleaseSpec, name: &str) -> bool {
    spec.values_from
        .iter()
        .filter_map(|source| source.secret_key_ref.as_ref())
        .any(|r| r.name == name)
        || spec.chart.as_ref().is_some_and(|chart| {
            [&chart.secret_ref, &chart.ca_secret_ref]
                .into_iter()
                .flatten()
                .any(|r| r.name == name)
        })
}
