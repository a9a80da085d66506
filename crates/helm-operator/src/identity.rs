//! Who the operator is when it reads and writes for a release: itself, or the release's
//! ServiceAccount by impersonation. Helm's storage, the drift check and `valuesFrom` go through
//! [`Identities::client`], so a tenant's release can reach only what its account may.

use std::collections::HashMap;
use std::sync::Mutex;

/// How many impersonating clients are kept. Each holds its own connection pool; past this many
/// accounts the cache starts again rather than grow without bound.
const MAX_CACHED: usize = 1024;

/// API clients per acting identity, made from the operator's own configuration.
pub struct Identities {
    base: kube::Config,
    operator: kube::Client,
    clients: Mutex<HashMap<String, kube::Client>>,
}

impl Identities {
    /// Identities made from `base`; `operator` is the client made from it as it is.
    pub fn new(base: kube::Config, operator: kube::Client) -> Self {
        Identities {
            base,
            operator,
            clients: Mutex::default(),
        }
    }

    /// The client that acts as `service_account` of `namespace`, or as the operator when `None`.
    /// The API server adds the account's groups; only the user is impersonated.
    pub fn client(
        &self,
        namespace: &str,
        service_account: Option<&str>,
    ) -> Result<kube::Client, kube::Error> {
        let Some(account) = service_account else {
            return Ok(self.operator.clone());
        };
        let user = user(namespace, account);
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(&user) {
            return Ok(client.clone());
        }
        let mut config = self.base.clone();
        config.auth_info.impersonate = Some(user.clone());
        let client = kube::Client::try_from(config)?;
        if clients.len() >= MAX_CACHED {
            clients.clear();
        }
        clients.insert(user, client.clone());
        Ok(client)
    }
}

/// The user name Kubernetes gives ServiceAccount `account` of `namespace`.
pub fn user(namespace: &str, account: &str) -> String {
    format!("system:serviceaccount:{namespace}:{account}")
}

/// The API server's message when it refused a request (403), which names the user, the verb and
/// the resource.
pub fn forbidden(error: &kube::Error) -> Option<&str> {
    match error {
        kube::Error::Api(status) if status.code == 403 => Some(&status.message),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> kube::Config {
        kube::Config::new("https://127.0.0.1:1".parse().unwrap())
    }

    #[tokio::test]
    async fn one_client_per_account_and_the_operator_for_none() {
        let operator = kube::Client::try_from(config()).unwrap();
        let identities = Identities::new(config(), operator);
        identities.client("team", None).unwrap();
        identities.client("team", Some("deployer")).unwrap();
        identities.client("team", Some("deployer")).unwrap();
        identities.client("other", Some("deployer")).unwrap();
        let cached: Vec<String> = {
            let mut keys: Vec<_> = identities.clients.lock().unwrap().keys().cloned().collect();
            keys.sort();
            keys
        };
        assert_eq!(
            cached,
            [
                "system:serviceaccount:other:deployer",
                "system:serviceaccount:team:deployer"
            ]
        );
    }
}
