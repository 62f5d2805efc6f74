//! `metrics.k8s.io/v1beta1`, the resource metrics API (what metrics-server serves in
//! Kubernetes): NodeMetrics and PodMetrics, read-only, for `kubectl top` and the
//! HorizontalPodAutoscaler.
//!
//! Nothing is stored. Each request asks every node's data plane for its `/_metrics` summary
//! (with the shared node token, as `pods/log` does), in parallel, and joins the answers with the
//! stored Nodes and Pods: their labels, and the selectors of the request. A node that is not
//! Ready, or does not answer within [`NODE_TIMEOUT`], is left out, as metrics-server leaves out
//! what it could not scrape.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use serde_json::{Value, json};
use shoal_api::error::ApiError;
use shoal_api::resources::{self, ResourceInfo};
use shoal_api::selector::{FieldSelector, LabelSelector};

use crate::AppState;
use crate::request::Query;

pub const GROUP: &str = "metrics.k8s.io";
pub const VERSION: &str = "v1beta1";
/// (kind, plural, namespaced) of what the group serves.
pub static KINDS: &[(&str, &str, bool)] = &[("NodeMetrics", "nodes", false), ("PodMetrics", "pods", true)];
/// How long a node may take to answer.
const NODE_TIMEOUT: Duration = Duration::from_secs(3);

/// A request of this group: `nodes[/NAME]`, `pods`, or `namespaces/NS/pods[/NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub pods: bool,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

/// The metrics request a path names, if any (discovery of the group is not one).
pub fn target(path: &str) -> Option<Target> {
    let rest = path.strip_prefix("/apis/metrics.k8s.io/v1beta1/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    let owned = |s: &str| Some(s.to_owned());
    match parts.as_slice() {
        ["nodes"] => Some(Target { pods: false, namespace: None, name: None }),
        ["nodes", name] if !name.is_empty() => Some(Target { pods: false, namespace: None, name: owned(name) }),
        ["pods"] => Some(Target { pods: true, namespace: None, name: None }),
        ["namespaces", namespace, "pods"] if !namespace.is_empty() => Some(Target { pods: true, namespace: owned(namespace), name: None }),
        ["namespaces", namespace, "pods", name] if !namespace.is_empty() && !name.is_empty() => Some(Target { pods: true, namespace: owned(namespace), name: owned(name) }),
        _ => None,
    }
}

impl Target {
    pub fn plural(&self) -> &'static str {
        if self.pods { "pods" } else { "nodes" }
    }

    fn not_found(&self, name: &str) -> ApiError {
        let (kind, plural) = if self.pods { ("PodMetrics", "pods") } else { ("NodeMetrics", "nodes") };
        ApiError::new(404, "NotFound", format!("{plural}.{GROUP} \"{name}\" not found")).with_details(json!({"name": name, "group": GROUP, "kind": plural, "causes": [{"message": format!("no {kind} for {name}: it is not running, or its node has not measured it yet")}]}))
    }
}

/// One node's answer.
struct NodeSummary {
    name: String,
    labels: Value,
    summary: Value,
}

/// Answers a metrics request (GET only; there is nothing to watch or write).
pub async fn serve(state: &Arc<AppState>, method: &Method, target: &Target, query: &Query) -> Result<Value, ApiError> {
    if *method != Method::GET {
        return Err(ApiError::method_not_allowed(method.as_str()));
    }
    if query.flag("watch") {
        return Err(ApiError::method_not_allowed("WATCH"));
    }
    let kind = if target.pods { "Pod" } else { "Node" };
    let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or_default())?;
    let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or_default(), kind)?;
    let nodes_info = resources::by_name("nodes").expect("nodes are served");
    let nodes = list(state, nodes_info, None)?;
    let summaries = summaries(state, &nodes).await;
    let items: Vec<Value> = if target.pods {
        pod_metrics(state, target, &summaries, &|pod| labels.matches(shoal_api::meta::labels(pod)) && fields.matches(pod))?
    } else {
        summaries
            .iter()
            .filter(|s| target.name.as_ref().is_none_or(|n| *n == s.name))
            .filter(|s| {
                let node = nodes.iter().find(|n| n["metadata"]["name"] == s.name.as_str());
                node.is_some_and(|node| labels.matches(shoal_api::meta::labels(node)) && fields.matches(node))
            })
            .filter_map(node_metrics)
            .collect()
    };
    if let Some(name) = &target.name {
        return items.into_iter().next().ok_or_else(|| target.not_found(name));
    }
    let kind = if target.pods { "PodMetricsList" } else { "NodeMetricsList" };
    Ok(json!({"kind": kind, "apiVersion": format!("{GROUP}/{VERSION}"), "metadata": {}, "items": items}))
}

fn list(state: &AppState, info: &ResourceInfo, namespace: Option<&str>) -> Result<Vec<Value>, ApiError> {
    Ok(state.store.list(&info.group_resource(), namespace, None, None, &|_| true).map_err(|e| ApiError::internal(e.to_string()))?.items)
}

/// Every Ready node's summary, asked in parallel; nodes that do not answer are left out.
async fn summaries(state: &AppState, nodes: &[Value]) -> Vec<NodeSummary> {
    // A node that is not Ready (its Lease lapsed) is not asked: it would only cost the timeout.
    let ready = |node: &&Value| node["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True");
    let asks = nodes.iter().filter(ready).filter_map(|node| {
        let name = node["metadata"]["name"].as_str()?.to_owned();
        let address = node["metadata"]["annotations"]["shoal.dev/data-addr"].as_str()?.to_owned();
        let labels = node["metadata"]["labels"].clone();
        let request = state.http.get(format!("http://{address}/_metrics")).bearer_auth(&state.credentials.node_token).timeout(NODE_TIMEOUT).send();
        Some(async move {
            let answer = async { request.await?.error_for_status()?.json::<Value>().await };
            match answer.await {
                Ok(summary) => Some(NodeSummary { name, labels, summary }),
                Err(error) => {
                    tracing::debug!(node = %name, %error, "the node did not answer for metrics");
                    None
                }
            }
        })
    });
    futures::future::join_all(asks).await.into_iter().flatten().collect()
}

fn node_metrics(summary: &NodeSummary) -> Option<Value> {
    let usage = &summary.summary["node"];
    let cpu = usage["cpuNanocores"].as_u64()?;
    let memory = usage["memoryBytes"].as_u64()?;
    Some(json!({
        "kind": "NodeMetrics", "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": {"name": summary.name, "labels": summary.labels, "creationTimestamp": summary.summary["timestamp"]},
        "timestamp": summary.summary["timestamp"],
        "window": window(&summary.summary),
        "usage": {"cpu": cpu_quantity(cpu), "memory": memory_quantity(memory)},
    }))
}

/// PodMetrics for the stored pods `filter` accepts that some node measured.
fn pod_metrics(state: &AppState, target: &Target, summaries: &[NodeSummary], filter: &dyn Fn(&Value) -> bool) -> Result<Vec<Value>, ApiError> {
    let mut measured: HashMap<&str, (&Value, &Value)> = HashMap::new();
    for summary in summaries {
        for pod in summary.summary["pods"].as_array().into_iter().flatten() {
            if let Some(uid) = pod["uid"].as_str() {
                measured.insert(uid, (pod, &summary.summary));
            }
        }
    }
    let pods_info = resources::by_name("pods").expect("pods are served");
    let mut items = Vec::new();
    for pod in list(state, pods_info, target.namespace.as_deref())? {
        if target.name.as_ref().is_some_and(|n| pod["metadata"]["name"] != n.as_str()) || !filter(&pod) {
            continue;
        }
        let Some((usage, summary)) = pod["metadata"]["uid"].as_str().and_then(|uid| measured.get(uid)) else { continue };
        let containers: Vec<Value> = usage["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| Some(json!({"name": c["name"], "usage": {"cpu": cpu_quantity(c["cpuNanocores"].as_u64()?), "memory": memory_quantity(c["memoryBytes"].as_u64()?)}})))
            .collect();
        items.push(json!({
            "kind": "PodMetrics", "apiVersion": format!("{GROUP}/{VERSION}"),
            "metadata": {"name": pod["metadata"]["name"], "namespace": pod["metadata"]["namespace"], "labels": pod["metadata"]["labels"], "creationTimestamp": summary["timestamp"]},
            "timestamp": summary["timestamp"],
            "window": window(summary),
            "containers": containers,
        }));
    }
    Ok(items)
}

/// The window as a Go duration string (`5.012s`).
fn window(summary: &Value) -> String {
    let seconds = summary["windowSeconds"].as_f64().unwrap_or(0.0);
    let text = format!("{seconds:.3}");
    format!("{}s", text.trim_end_matches('0').trim_end_matches('.'))
}

/// Nanocores as a quantity, in millicores when that is exact (`250m`), else nanocores (`1234n`).
pub fn cpu_quantity(nanocores: u64) -> String {
    if nanocores == 0 {
        "0".into()
    } else if nanocores.is_multiple_of(1_000_000) {
        format!("{}m", nanocores / 1_000_000)
    } else {
        format!("{nanocores}n")
    }
}

/// Bytes as a quantity, in the largest binary unit that is exact (`1536Ki`, `64Mi`).
pub fn memory_quantity(bytes: u64) -> String {
    for (unit, size) in [("Gi", 1u64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_the_metrics_requests() {
        let target_of = |p: &str| target(p);
        assert_eq!(target_of("/apis/metrics.k8s.io/v1beta1/nodes"), Some(Target { pods: false, namespace: None, name: None }));
        assert_eq!(target_of("/apis/metrics.k8s.io/v1beta1/nodes/n1").and_then(|t| t.name), Some("n1".into()));
        assert_eq!(target_of("/apis/metrics.k8s.io/v1beta1/pods"), Some(Target { pods: true, namespace: None, name: None }));
        assert_eq!(target_of("/apis/metrics.k8s.io/v1beta1/namespaces/ns/pods/p"), Some(Target { pods: true, namespace: Some("ns".into()), name: Some("p".into()) }));
        assert_eq!(target_of("/apis/metrics.k8s.io/v1beta1"), None, "discovery is not a metrics request");
        assert_eq!(target_of("/apis/metrics.k8s.io/v1beta1/namespaces/ns/services"), None);
        assert_eq!(target_of("/apis/metrics.k8s.io/v1/nodes"), None);
    }

    #[test]
    fn quantities_are_written_as_metrics_server_writes_them() {
        assert_eq!(cpu_quantity(0), "0");
        assert_eq!(cpu_quantity(250_000_000), "250m");
        assert_eq!(cpu_quantity(1_234_567), "1234567n");
        assert_eq!(memory_quantity(64 << 20), "64Mi");
        assert_eq!(memory_quantity(1536 << 10), "1536Ki");
        assert_eq!(memory_quantity(1000), "1000");
        assert_eq!(window(&json!({"windowSeconds": 5.0123})), "5.012s");
        assert_eq!(window(&json!({"windowSeconds": 5.0})), "5s");
    }

    #[test]
    fn the_answer_joins_a_node_summary_with_its_labels() {
        let summary = NodeSummary { name: "n1".into(), labels: json!({"a": "b"}), summary: json!({"timestamp": "2026-11-23T00:00:00Z", "windowSeconds": 2.5, "node": {"cpuNanocores": 500_000_000u64, "memoryBytes": 1u64 << 30}, "pods": []}) };
        let metrics = node_metrics(&summary).expect("measured");
        assert_eq!(metrics["usage"], json!({"cpu": "500m", "memory": "1Gi"}));
        assert_eq!(metrics["window"], "2.5s");
        assert_eq!(metrics["metadata"]["labels"], json!({"a": "b"}));
        let unmeasured = NodeSummary { summary: json!({"node": {"cpuNanocores": null, "memoryBytes": 5}}), ..summary };
        assert!(node_metrics(&unmeasured).is_none(), "no CPU sample yet: left out");
    }
}
