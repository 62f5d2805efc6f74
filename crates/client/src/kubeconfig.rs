//! Reading a kubeconfig: the current context's server, certificate authority, token and
//! namespace.

use std::path::Path;

use base64::Engine;
use serde_json::Value;

use crate::{Error, Result};

/// What a client needs from a kubeconfig.
#[derive(Debug, Clone)]
pub struct Kubeconfig {
    pub server: String,
    /// Every server of a highly-available control plane, from the cluster's `shoal.dev/servers`
    /// extension (which kubectl ignores); the client fails over among them.
    pub other_servers: Vec<String>,
    pub certificate_authority_pem: Option<String>,
    pub insecure_skip_tls_verify: bool,
    pub token: Option<String>,
    pub namespace: String,
}

/// The name of the cluster extension that lists a highly-available control plane's servers.
pub const SERVERS_EXTENSION: &str = "shoal.dev/servers";

impl Kubeconfig {
    pub fn load(path: &Path) -> Result<Self> {
        let config_error = |detail: String| Error::Config { path: path.to_owned(), detail };
        let text = std::fs::read_to_string(path).map_err(|e| config_error(e.to_string()))?;
        let document = shoal_api::yaml::from_str(&text).map_err(config_error)?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_document(&document, base).map_err(config_error)
    }

    fn from_document(document: &Value, base: &Path) -> Result<Self, String> {
        let named = |list: &str, name: &str, field: &str| -> Option<Value> {
            document[list].as_array()?.iter().find(|item| item["name"].as_str() == Some(name)).map(|item| item[field].clone())
        };
        let context_name = document["current-context"].as_str().ok_or("no current-context")?;
        let context = named("contexts", context_name, "context").ok_or_else(|| format!("context {context_name:?} not found"))?;
        let cluster_name = context["cluster"].as_str().unwrap_or_default();
        let cluster = named("clusters", cluster_name, "cluster").ok_or_else(|| format!("cluster {cluster_name:?} not found"))?;
        let user = context["user"].as_str().and_then(|name| named("users", name, "user")).unwrap_or(Value::Null);
        let server = cluster["server"].as_str().ok_or("the cluster has no server")?.to_owned();
        let resolve = |file: &str| if Path::new(file).is_absolute() { file.into() } else { base.join(file) };
        let certificate_authority_pem = if let Some(data) = cluster["certificate-authority-data"].as_str() {
            let bytes = base64::engine::general_purpose::STANDARD.decode(data.trim()).map_err(|e| format!("certificate-authority-data: {e}"))?;
            Some(String::from_utf8(bytes).map_err(|e| e.to_string())?)
        } else if let Some(file) = cluster["certificate-authority"].as_str() {
            Some(std::fs::read_to_string(resolve(file)).map_err(|e| format!("certificate-authority {file}: {e}"))?)
        } else {
            None
        };
        let token = if let Some(token) = user["token"].as_str() {
            Some(token.to_owned())
        } else if let Some(file) = user["tokenFile"].as_str() {
            Some(std::fs::read_to_string(resolve(file)).map_err(|e| format!("tokenFile {file}: {e}"))?.trim().to_owned())
        } else {
            None
        };
        let other_servers = cluster["extensions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|extension| extension["name"] == SERVERS_EXTENSION)
            .flat_map(|extension| extension["extension"]["servers"].as_array().cloned().unwrap_or_default())
            .filter_map(|server| server.as_str().map(|s| s.trim_end_matches('/').to_owned()))
            .filter(|other| *other != server.trim_end_matches('/'))
            .collect();
        Ok(Self {
            server,
            other_servers,
            certificate_authority_pem,
            insecure_skip_tls_verify: cluster["insecure-skip-tls-verify"].as_bool().unwrap_or(false),
            token,
            namespace: context["namespace"].as_str().filter(|n| !n.is_empty()).unwrap_or("default").to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_servers_extension() {
        let document = shoal_api::yaml::from_str(
            "apiVersion: v1\nkind: Config\ncurrent-context: a\nclusters:\n- name: c\n  cluster:\n    server: https://s1:6443\n    extensions:\n    - name: shoal.dev/servers\n      extension:\n        servers: [https://s1:6443, https://s2:6443/, https://s3:6443]\nusers:\n- name: u\n  user: {token: t}\ncontexts:\n- name: a\n  context: {cluster: c, user: u}\n",
        )
        .expect("yaml");
        let config = Kubeconfig::from_document(&document, Path::new(".")).expect("kubeconfig");
        assert_eq!(config.server, "https://s1:6443");
        assert_eq!(config.other_servers, ["https://s2:6443", "https://s3:6443"]);
    }

    #[test]
    fn reads_the_current_context() {
        let document = shoal_api::yaml::from_str(
            "apiVersion: v1\nkind: Config\ncurrent-context: b\nclusters:\n- name: c1\n  cluster:\n    server: https://a\n- name: c2\n  cluster:\n    server: https://b:6443\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: t0k\ncontexts:\n- name: a\n  context: {cluster: c1, user: u}\n- name: b\n  context: {cluster: c2, user: u, namespace: team}\n",
        )
        .expect("yaml");
        let config = Kubeconfig::from_document(&document, Path::new(".")).expect("valid");
        assert_eq!(config.server, "https://b:6443");
        assert_eq!(config.token.as_deref(), Some("t0k"));
        assert_eq!(config.namespace, "team");
        assert!(config.insecure_skip_tls_verify);
    }
}
