//! The endpoints controller: for every Service with a selector, its EndpointSlices
//! (`discovery.k8s.io/v1`) and its legacy `Endpoints` list the matching pods that are placed on a
//! node, with `ready`, `serving` and `terminating` as kube-controller-manager sets them. Every pod
//! change is mapped to the Services selecting it, so a readiness change reaches the slices at
//! once (a reconcile is one informer read and at most one write per slice).
//!
//! Service proxies route by `targetRef` and `nodeName`: a Wasm pod has no address of its own, so
//! the address listed is its node's (`status.podIP`, which the node sets to its own address).
//!
//! The same reconcile keeps a LoadBalancer Service's `status.loadBalancer` at the Ready nodes'
//! addresses, as k3s's ServiceLB does: every node serves every NodePort.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value, json};
use shoal_api::meta;

use crate::harness::{self, Action, Reconciler, Result};
use crate::informer::{object_key, split_key};
use crate::{Context, Registered};

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.shoal.dev";

/// The most endpoints one EndpointSlice lists (kube-controller-manager's default).
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

pub struct EndpointsController {
    context: Arc<Context>,
}

/// Whether a Service's `spec.selector` (a plain label map) selects `labels`.
pub fn selects(selector: &Value, labels: Option<&Map<String, Value>>) -> bool {
    let Some(selector) = selector.as_object().filter(|s| !s.is_empty()) else { return false };
    selector.iter().all(|(key, value)| labels.and_then(|l| l.get(key)) == Some(value))
}

impl EndpointsController {
    pub fn register(context: &Arc<Context>) -> Registered<Self> {
        let queue = Arc::new(crate::queue::WorkQueue::default());
        let services = Arc::clone(context.informers.get("Service"));
        harness::watch_into(&services, &queue, harness::own_keys);
        let lookup = Arc::clone(&services);
        harness::watch_into(context.informers.get("Pod"), &queue, move |old, new| {
            let mut keys = Vec::new();
            for pod in [old, new].into_iter().flatten() {
                for service in lookup.list_namespace(meta::namespace(pod)) {
                    if selects(&service["spec"]["selector"], meta::labels(pod)) {
                        keys.push(object_key(&service));
                    }
                }
            }
            keys.sort();
            keys.dedup();
            keys
        });
        // Slices changed by someone else are put back; nodes change LoadBalancer addresses.
        harness::watch_into(context.informers.get("EndpointSlice"), &queue, |old, new| {
            [old, new].into_iter().flatten().filter_map(|slice| slice["metadata"]["labels"][SERVICE_NAME_LABEL].as_str().map(|s| format!("{}/{s}", meta::namespace(slice)))).collect()
        });
        let lookup = Arc::clone(&services);
        harness::watch_into(context.informers.get("Node"), &queue, move |_, _| {
            lookup.list().iter().filter(|s| s["spec"]["type"] == "LoadBalancer").map(|s| object_key(s)).collect()
        });
        Registered::new(Self { context: Arc::clone(context) }, queue, &services)
    }
}

/// One endpoint as the slices and Endpoints list it.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub address: String,
    pub node: String,
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

/// A Service port resolved against one pod: (name, number, protocol).
pub type ResolvedPort = (String, u16, String);

/// The ports `service` reaches on `pod`, or `None` when a named `targetPort` is not declared by
/// the pod (such a pod is left out, as Kubernetes does).
pub fn resolve_ports(service: &Value, pod: &Value) -> Option<Vec<ResolvedPort>> {
    let mut resolved = Vec::new();
    for port in service["spec"]["ports"].as_array().into_iter().flatten() {
        let name = port["name"].as_str().unwrap_or_default().to_owned();
        let protocol = port["protocol"].as_str().unwrap_or("TCP").to_owned();
        let number = match &port["targetPort"] {
            Value::Number(n) => n.as_u64().map(|n| n as u16),
            Value::String(named) => pod["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|c| c["ports"].as_array().into_iter().flatten())
                .find(|p| p["name"].as_str() == Some(named.as_str()))
                .and_then(|p| p["containerPort"].as_u64())
                .map(|n| n as u16),
            _ => port["port"].as_u64().map(|n| n as u16),
        }?;
        resolved.push((name, number, protocol));
    }
    Some(resolved)
}

/// The endpoints of `service` among `pods`, grouped by their resolved ports (one slice each).
pub fn plan(service: &Value, pods: &[Arc<Value>]) -> BTreeMap<Vec<ResolvedPort>, Vec<Endpoint>> {
    let mut groups: BTreeMap<Vec<ResolvedPort>, Vec<Endpoint>> = BTreeMap::new();
    let publish_not_ready = service["spec"]["publishNotReadyAddresses"] == true;
    for pod in pods {
        let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        if node.is_empty() || matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed")) || !selects(&service["spec"]["selector"], meta::labels(pod)) {
            continue;
        }
        let Some(ports) = resolve_ports(service, pod) else { continue };
        let address = pod["status"]["podIP"].as_str().or(pod["status"]["hostIP"].as_str()).unwrap_or_default();
        if address.is_empty() {
            continue;
        }
        let serving = crate::pods::is_ready(pod) || publish_not_ready;
        let terminating = crate::pods::is_terminating(pod);
        groups.entry(ports).or_default().push(Endpoint {
            address: address.to_owned(),
            node: node.to_owned(),
            namespace: meta::namespace(pod).to_owned(),
            pod: meta::name(pod).to_owned(),
            uid: meta::uid(pod).to_owned(),
            ready: serving && !terminating,
            serving,
            terminating,
        });
    }
    for endpoints in groups.values_mut() {
        endpoints.sort_by(|a, b| a.pod.cmp(&b.pod));
    }
    if groups.is_empty() {
        // No pods: one empty slice with the Service's own port numbers.
        let ports = service["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p["name"].as_str().unwrap_or_default().to_owned(), p["targetPort"].as_u64().or(p["port"].as_u64())? as u16, p["protocol"].as_str().unwrap_or("TCP").to_owned())))
            .collect();
        groups.insert(ports, Vec::new());
    }
    groups
}

fn ports_json(ports: &[ResolvedPort]) -> Value {
    Value::Array(
        ports
            .iter()
            .map(|(name, port, protocol)| {
                let mut entry = json!({"port": port, "protocol": protocol});
                if !name.is_empty() {
                    entry["name"] = json!(name);
                }
                entry
            })
            .collect(),
    )
}

fn target_ref(endpoint: &Endpoint) -> Value {
    json!({"kind": "Pod", "namespace": endpoint.namespace, "name": endpoint.pod, "uid": endpoint.uid})
}

/// The slice name for a port group: stable, so a reconcile finds its own slices again.
fn slice_name(service: &str, ports: &[ResolvedPort]) -> String {
    let signature: String = ports.iter().map(|(n, p, proto)| format!("{n}:{p}/{proto};")).collect();
    let digest = signature.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3));
    let mut name = format!("{service}-{:08x}", digest as u32);
    name.truncate(253);
    name
}

fn owner_reference(service: &Value) -> Value {
    json!([{"apiVersion": "v1", "kind": "Service", "name": meta::name(service), "uid": meta::uid(service), "controller": true, "blockOwnerDeletion": true}])
}

pub fn desired_slices(service: &Value, groups: &BTreeMap<Vec<ResolvedPort>, Vec<Endpoint>>) -> Vec<Value> {
    let name = meta::name(service);
    groups
        .iter()
        .flat_map(|(ports, endpoints)| {
            // kube-controller-manager's --max-endpoints-per-slice: 100 per slice. A port set
            // with no endpoints still gets its one, empty, slice.
            let chunks: Vec<&[Endpoint]> = if endpoints.is_empty() { vec![&[][..]] } else { endpoints.chunks(MAX_ENDPOINTS_PER_SLICE).collect() };
            chunks.into_iter().enumerate().map(move |(index, chunk)| (ports, index, chunk))
        })
        .map(|(ports, index, endpoints)| {
            let slice = if index == 0 { slice_name(name, ports) } else { format!("{}-{}", slice_name(name, ports), index + 1) };
            json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {
                    "name": slice, "namespace": meta::namespace(service),
                    "labels": {SERVICE_NAME_LABEL: name, MANAGED_BY_LABEL: MANAGED_BY},
                    "ownerReferences": owner_reference(service),
                },
                "addressType": "IPv4",
                "endpoints": endpoints.iter().map(|e| json!({
                    "addresses": [e.address],
                    "conditions": {"ready": e.ready, "serving": e.serving, "terminating": e.terminating},
                    "nodeName": e.node,
                    "targetRef": target_ref(e),
                })).collect::<Vec<_>>(),
                "ports": ports_json(ports),
            })
        })
        .collect()
}

pub fn desired_endpoints(service: &Value, groups: &BTreeMap<Vec<ResolvedPort>, Vec<Endpoint>>) -> Value {
    let subsets: Vec<Value> = groups
        .iter()
        .filter(|(_, endpoints)| !endpoints.is_empty())
        .map(|(ports, endpoints)| {
            let address = |e: &Endpoint| json!({"ip": e.address, "nodeName": e.node, "targetRef": target_ref(e)});
            let mut subset = json!({"ports": ports_json(ports)});
            let ready: Vec<Value> = endpoints.iter().filter(|e| e.ready).map(address).collect();
            let not_ready: Vec<Value> = endpoints.iter().filter(|e| !e.ready).map(address).collect();
            if !ready.is_empty() {
                subset["addresses"] = json!(ready);
            }
            if !not_ready.is_empty() {
                subset["notReadyAddresses"] = json!(not_ready);
            }
            subset
        })
        .collect();
    let mut endpoints = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": meta::name(service), "namespace": meta::namespace(service), "labels": service["metadata"]["labels"].clone(), "ownerReferences": owner_reference(service)},
    });
    if endpoints["metadata"]["labels"].is_null() {
        endpoints["metadata"].as_object_mut().map(|m| m.remove("labels"));
    }
    if !subsets.is_empty() {
        endpoints["subsets"] = json!(subsets);
    }
    endpoints
}

/// The parts of a slice or Endpoints this controller decides.
fn decided(object: &Value) -> Value {
    json!([object["metadata"]["labels"], object["metadata"]["ownerReferences"], object["endpoints"], object["ports"], object["subsets"]])
}

/// The InternalIPs of the Ready, schedulable nodes that `serves` accepts, sorted: what a
/// LoadBalancer Service's or an Ingress's status lists.
pub(crate) fn node_addresses(context: &Context, serves: impl Fn(&Value) -> bool) -> Vec<String> {
    let mut addresses: Vec<String> = context
        .informers
        .get("Node")
        .list()
        .iter()
        .filter(|node| node["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        .filter(|node| node["spec"]["unschedulable"] != true)
        .filter(|node| serves(node))
        .filter_map(|node| meta::internal_ip(node).map(str::to_owned))
        .collect();
    addresses.sort();
    addresses.dedup();
    addresses
}

impl EndpointsController {
    async fn write(&self, kind: &str, namespace: &str, current: Option<&Value>, desired: Value) -> Result<()> {
        let info = crate::info(kind);
        let informer = self.context.informers.get(kind);
        match current {
            Some(current) if decided(current) == decided(&desired) => Ok(()),
            Some(current) => {
                let mut updated = desired;
                updated["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
                let stored = self.context.client.replace(info, Some(namespace), meta::name(current), &updated).await?;
                informer.remember(stored);
                Ok(())
            }
            None => {
                let stored = match self.context.client.create(info, Some(namespace), &desired, "endpointslice-controller").await {
                    Ok(stored) => stored,
                    Err(shoal_client::Error::Api(status)) if status.code == 409 => return Err(harness::Error::Other(format!("{kind} {} exists; looking again", meta::name(&desired)))),
                    Err(error) => return Err(error.into()),
                };
                informer.remember(stored);
                Ok(())
            }
        }
    }

    async fn load_balancer_status(&self, service: &Value) -> Result<()> {
        let ingress: Vec<Value> = if service["spec"]["type"] == "LoadBalancer" { node_addresses(&self.context, |_| true).into_iter().map(|ip| json!({"ip": ip, "ipMode": "VIP"})).collect() } else { Vec::new() };
        let status = if ingress.is_empty() { json!({"loadBalancer": {}}) } else { json!({"loadBalancer": {"ingress": ingress}}) };
        harness::write_status(&self.context.client, "Service", self.context.informers.get("Service"), service, status).await?;
        Ok(())
    }
}

impl Reconciler for EndpointsController {
    fn name(&self) -> &'static str {
        "endpoints"
    }

    async fn reconcile(&self, key: &str) -> Result<Action> {
        let (namespace, name) = split_key(key);
        let Some(service) = self.context.informers.get("Service").get(key) else {
            // Gone: its slices and Endpoints carry its owner reference and are collected.
            return Ok(Action::Done);
        };
        self.load_balancer_status(&service).await?;
        if service["spec"]["selector"].as_object().is_none_or(|s| s.is_empty()) || !service["metadata"]["deletionTimestamp"].is_null() {
            // Without a selector the endpoints are the user's to write.
            return Ok(Action::Done);
        }
        let pods = self.context.informers.get("Pod").list_namespace(namespace);
        let groups = plan(&service, &pods);
        let slices_cache = self.context.informers.get("EndpointSlice");
        let existing: Vec<Arc<Value>> = slices_cache
            .list_namespace(namespace)
            .into_iter()
            .filter(|s| s["metadata"]["labels"][SERVICE_NAME_LABEL] == name && s["metadata"]["labels"][MANAGED_BY_LABEL] == MANAGED_BY)
            .collect();
        let desired = desired_slices(&service, &groups);
        for slice in &desired {
            let current = existing.iter().find(|s| meta::name(s) == meta::name(slice)).map(|s| &**s);
            self.write("EndpointSlice", namespace, current, slice.clone()).await?;
        }
        for stale in existing.iter().filter(|s| !desired.iter().any(|d| meta::name(d) == meta::name(s))) {
            match self.context.client.delete(crate::info("EndpointSlice"), Some(namespace), meta::name(stale), &json!({})).await {
                Ok(_) => slices_cache.remember_deleted(stale),
                Err(shoal_client::Error::Api(status)) if status.code == 404 => slices_cache.remember_deleted(stale),
                Err(error) => return Err(error.into()),
            }
        }
        let endpoints = desired_endpoints(&service, &groups);
        let current = self.context.informers.get("Endpoints").get(key);
        self.write("Endpoints", namespace, current.as_deref(), endpoints).await?;
        Ok(Action::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, node: &str, ready: bool, terminating: bool) -> Arc<Value> {
        let mut pod = json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": {"app": "web"}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        });
        if terminating {
            pod["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        Arc::new(pod)
    }

    fn service(target: Value) -> Value {
        json!({"metadata": {"name": "web", "namespace": "default", "uid": "svc"}, "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": target, "protocol": "TCP"}]}})
    }

    #[test]
    fn conditions_follow_readiness_and_termination() {
        let pods = vec![pod("a", "n1", true, false), pod("b", "n2", false, false), pod("c", "n1", true, true), pod("pending", "", true, false)];
        let groups = plan(&service(json!("http")), &pods);
        let endpoints = &groups[&vec![("http".to_owned(), 8080, "TCP".to_owned())]];
        let summary: Vec<(&str, bool, bool, bool)> = endpoints.iter().map(|e| (e.pod.as_str(), e.ready, e.serving, e.terminating)).collect();
        assert_eq!(summary, vec![("a", true, true, false), ("b", false, false, false), ("c", false, true, true)]);
        let slices = desired_slices(&service(json!("http")), &groups);
        assert_eq!(slices.len(), 1);
        assert_eq!(slices[0]["endpoints"][0]["targetRef"]["name"], "a");
        assert_eq!(slices[0]["endpoints"][1]["nodeName"], "n2");
        assert_eq!(slices[0]["metadata"]["labels"][SERVICE_NAME_LABEL], "web");
        let legacy = desired_endpoints(&service(json!("http")), &groups);
        assert_eq!(legacy["subsets"][0]["addresses"].as_array().unwrap().len(), 1);
        assert_eq!(legacy["subsets"][0]["notReadyAddresses"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn unknown_named_ports_leave_the_pod_out_and_empty_services_keep_one_slice() {
        let groups = plan(&service(json!("grpc")), &[pod("a", "n1", true, false)]);
        assert_eq!(groups.len(), 1);
        assert!(groups.values().next().unwrap().is_empty());
        let numeric = plan(&service(json!(9000)), &[pod("a", "n1", true, false)]);
        assert_eq!(numeric.keys().next().unwrap()[0].1, 9000);
        assert!(desired_endpoints(&service(json!(9000)), &plan(&service(json!(9000)), &[])).get("subsets").is_none());
    }

    #[test]
    fn slices_hold_at_most_a_hundred_endpoints() {
        let pods: Vec<Arc<Value>> = (0..250).map(|i| pod(&format!("p{i:03}"), "n1", true, false)).collect();
        let groups = plan(&service(json!("http")), &pods);
        let slices = desired_slices(&service(json!("http")), &groups);
        let sizes: Vec<usize> = slices.iter().map(|s| s["endpoints"].as_array().map_or(0, Vec::len)).collect();
        assert_eq!(sizes, [100, 100, 50]);
        let names: Vec<&str> = slices.iter().map(meta::name).collect();
        assert!(names[1] == format!("{}-2", names[0]) && names[2] == format!("{}-3", names[0]), "{names:?}");
        let empty = desired_slices(&service(json!("http")), &plan(&service(json!("http")), &[]));
        assert_eq!(empty.len(), 1, "a Service without endpoints keeps one empty slice");
    }

    #[test]
    fn selectors_are_plain_maps() {
        let labels = json!({"app": "web", "tier": "front"});
        assert!(selects(&json!({"app": "web"}), labels.as_object()));
        assert!(!selects(&json!({"app": "api"}), labels.as_object()));
        assert!(!selects(&json!({}), labels.as_object()), "an empty selector selects nothing here");
    }
}
