//! The Kubernetes client every daemon needs.

/// A client from the usual configuration (in-cluster or KUBECONFIG) that names itself
/// `<daemon>/<version>` in the User-Agent header, so API server audit logs and request metrics
/// tell the daemons (and their Helm children) apart.
pub async fn client(daemon: &str, version: &str) -> Result<kube::Client, kube::Error> {
    let mut config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    if let Ok(value) = axum::http::HeaderValue::from_str(&format!("{daemon}/{version}")) {
        config.headers.push((axum::http::header::USER_AGENT, value));
    }
    kube::Client::try_from(config)
}
