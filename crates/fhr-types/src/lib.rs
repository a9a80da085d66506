//! The `FluxHelmRelease` API shared by flux-agent and helm-operator.
//!
//! Types, the CRD, label and annotation names, and the pure rules both daemons apply: values
//! merging, release naming, chart path validation. Nothing here does I/O.

pub mod api;
pub mod chart_path;
pub mod duration;
pub mod meta;
pub mod naming;
pub mod values;

pub use api::{
    DriftMemory, FluxHelmRelease, FluxHelmReleaseSpec, FluxHelmReleaseStatus, KeyRef,
    LocalObjectReference, RepositoryChart, Rollback, ValuesFromSource, crd,
};
pub use values::{NameValue, Values};
