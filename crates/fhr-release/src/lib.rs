//! The release as data: everything helm-operator decides, computes and checks without a Kubernetes
//! client. The reconciler gathers facts and acts; these modules classify, compare and validate, so
//! each is unit-tested on its own and the security boundaries among them (the record codec, the
//! archive check, values files) are reachable by the fuzz targets.

pub mod actions;
pub mod chart_archives;
pub mod chart_repository;
pub mod conditions;
pub mod desired;
pub mod drift;
pub mod explain;
pub mod helm;
pub mod record;
pub mod state;
pub mod values_file;
