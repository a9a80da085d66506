//! The Kubernetes client every daemon needs.

/// The usual configuration (in-cluster or KUBECONFIG), naming itself `<daemon>/<version>` in the
/// User-Agent header, so API server audit logs and request metrics tell the daemons (and their
/// Helm children) apart. Kept by the daemon so that clients acting as someone else (impersonation)
/// can be made from it.
pub async fn config(daemon: &str, version: &str) -> Result<kube::Config, kube::Error> {
    let mut config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    if let Ok(value) = axum::http::HeaderValue::from_str(&format!("{daemon}/{version}")) {
        config.headers.push((axum::http::header::USER_AGENT, value));
    }
    Ok(config)
}
