//! The ServiceAccount tokens of this node's pods: every `serviceAccountToken` source of a pod's
//! projected volumes (the `kube-api-access-…` volume the API adds to each pod, or one the spec
//! declares) is a token the node requests from the TokenRequest API, bound to the pod, and
//! hands to the pod's volumes ([`crate::volumes`]) before any container starts. Like the
//! kubelet, the node requests a fresh one once the token has lived 80% of its lifetime (or 24
//! hours) and the volume is rewritten, swapped whole, so a guest reading it again always finds a
//! valid token. The API refuses a node's request unless the pod is bound to that node and runs
//! as that account, and a token bound to a pod stops working soon after the pod is deleted.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::pods::Reporter;
use crate::volumes::PodVolumes;

/// The lifetime asked for when a source names none (kube's default).
const DEFAULT_EXPIRATION_SECONDS: u64 = 3600;
/// The longest a node keeps a token before replacing it.
const MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);
/// The shortest wait between two requests for one token, whatever lifetime the API reports.
const MIN_REFRESH: Duration = Duration::from_secs(10);
const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// One token a pod's volumes hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSource {
    /// The file in its volume.
    pub path: String,
    pub audience: Option<String>,
    pub expiration_seconds: u64,
    pub volume: String,
}

/// Every token source of `pod`'s projected volumes.
pub fn sources(pod: &Value) -> Vec<TokenSource> {
    let mut found = Vec::new();
    for volume in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let name = volume["name"].as_str().unwrap_or_default();
        for source in volume["projected"]["sources"].as_array().into_iter().flatten() {
            let token = &source["serviceAccountToken"];
            if !token.is_object() {
                continue;
            }
            found.push(TokenSource {
                path: token["path"].as_str().unwrap_or_default().to_owned(),
                audience: token["audience"].as_str().filter(|a| !a.is_empty()).map(str::to_owned),
                expiration_seconds: token["expirationSeconds"].as_u64().unwrap_or(DEFAULT_EXPIRATION_SECONDS),
                volume: name.to_owned(),
            });
        }
    }
    found
}

/// When a token that lives `lifetime` is replaced: after 80% of it, or 24 hours, whichever is
/// first (the kubelet's rule), and never sooner than 10 s.
pub fn refresh_after(lifetime: Duration) -> Duration {
    lifetime.mul_f64(0.8).min(MAX_AGE).max(MIN_REFRESH)
}

/// The TokenRequest the node sends for `source` of `pod`.
pub fn request_body(pod: &Value, source: &TokenSource) -> Value {
    let mut spec = json!({
        "expirationSeconds": source.expiration_seconds,
        "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]},
    });
    if let Some(audience) = &source.audience {
        spec["audiences"] = json!([audience]);
    }
    json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
}

/// What requesting one token again takes: the TokenRequest's path and body, and where the token
/// goes. (The refresh task keeps only this, not the pod.)
struct Request {
    path: String,
    body: Vec<u8>,
    source: TokenSource,
}

impl Request {
    fn new(pod: &Value, source: TokenSource) -> Self {
        let namespace = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        let account = pod["spec"]["serviceAccountName"].as_str().unwrap_or("default");
        let body = serde_json::to_vec(&request_body(pod, &source)).unwrap_or_default();
        Self { path: format!("/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token"), body, source }
    }

    /// Requests the token and hands it to the pod's volumes; returns how long it lives.
    async fn issue(&self, shared: &Shared, volumes: &PodVolumes) -> Result<Duration, String> {
        let answer = shared.client.request(reqwest::Method::POST, &self.path, &[], Some(("application/json", self.body.clone()))).await.map_err(|e| format!("failed to fetch token: {e}"))?;
        let token = answer["status"]["token"].as_str().ok_or("failed to fetch token: the answer holds no token")?;
        let source = &self.source;
        volumes.set_token(&source.volume, &source.path, token.as_bytes());
        let expires = answer["status"]["expirationTimestamp"].as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok());
        Ok(match expires {
            Some(at) => Duration::from_secs(u64::try_from(at.as_second() - jiff::Timestamp::now().as_second()).unwrap_or(0)),
            None => Duration::from_secs(source.expiration_seconds),
        })
    }
}

/// Issues every token `pod`'s volumes hold, retrying with growing waits (each failure is a
/// `FailedMount` event, as the kubelet reports it), then keeps each one fresh until `stop`.
/// Returns false when the pod stopped before every token was written.
pub(crate) async fn keep(shared: &Arc<Shared>, reporter: &Arc<Reporter>, pod: &Value, volumes: &Arc<PodVolumes>, stop: &CancellationToken) -> bool {
    for source in sources(pod) {
        let request = Request::new(pod, source);
        let mut wait = FIRST_RETRY;
        let lifetime = loop {
            match request.issue(shared, volumes).await {
                Ok(lifetime) => break lifetime,
                Err(message) => {
                    reporter.event("Warning", "FailedMount", &format!("MountVolume.SetUp failed for volume \"{}\": {message}", request.source.volume)).await;
                    tokio::select! {
                        _ = stop.cancelled() => return false,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(MAX_RETRY);
                }
            }
        };
        let (task_shared, stop, volumes) = (Arc::clone(shared), stop.clone(), Arc::clone(volumes));
        let pod_name = format!("{}/{}", reporter.namespace, reporter.name);
        shared.tasks.spawn(async move {
            let mut next = refresh_after(lifetime);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(next) => {}
                }
                next = match request.issue(&task_shared, &volumes).await {
                    Ok(lifetime) => refresh_after(lifetime),
                    // The volume still holds the last token, valid for a while yet: try again soon.
                    Err(message) => {
                        tracing::warn!(pod = %pod_name, volume = %request.source.volume, %message, "refreshing a ServiceAccount token");
                        MIN_REFRESH
                    }
                };
            }
        });
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_replaced_at_80_percent_of_their_life_or_a_day() {
        assert_eq!(refresh_after(Duration::from_secs(3607)), Duration::from_secs_f64(3607.0 * 0.8));
        assert_eq!(refresh_after(Duration::from_secs(600)), Duration::from_secs(480));
        assert_eq!(refresh_after(Duration::from_secs(7 * 24 * 3600)), MAX_AGE);
        assert_eq!(refresh_after(Duration::ZERO), MIN_REFRESH, "a token reported as already expired is not asked for in a loop");
    }

    #[test]
    fn every_projected_token_source_is_found_and_requested_bound_to_the_pod() {
        let pod = json!({
            "metadata": {"name": "web", "namespace": "team", "uid": "u-1"},
            "spec": {"serviceAccountName": "bot", "volumes": [
                {"name": "config", "configMap": {"name": "c"}},
                {"name": "kube-api-access-abcde", "projected": {"sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt"}},
                ]}},
                {"name": "vault", "projected": {"sources": [{"serviceAccountToken": {"path": "vault/token", "audience": "vault"}}]}},
            ]},
        });
        let found = sources(&pod);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].volume, "kube-api-access-abcde");
        assert_eq!((found[0].path.as_str(), found[0].expiration_seconds, found[0].audience.as_deref()), ("token", 3607, None));
        assert_eq!((found[1].path.as_str(), found[1].expiration_seconds, found[1].audience.as_deref()), ("vault/token", 3600, Some("vault")));
        let body = request_body(&pod, &found[1]);
        assert_eq!(body["spec"]["boundObjectRef"], json!({"kind": "Pod", "apiVersion": "v1", "name": "web", "uid": "u-1"}));
        assert_eq!(body["spec"]["audiences"], json!(["vault"]));
        assert!(request_body(&pod, &found[0])["spec"]["audiences"].is_null(), "the API's own audience is the default");
    }
}
