//! The node's view of Services: every Service with its ports and the endpoints its
//! EndpointSlices list, kept from informers and rebuilt per Service when it or one of its slices
//! changes. The proxy ([`crate::proxy`]) asks it two things: which Service a name or cluster IP
//! means, and which endpoint to send a request to (least outstanding requests among the ready
//! ones, with `sessionAffinity: ClientIP`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_api::meta;
use shoal_client::informer::Informer;

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The cluster domain of Service names (`NAME.NS.svc.cluster.local`).
pub const CLUSTER_DOMAIN: &str = "cluster.local";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    pub node_port: Option<u16>,
    pub protocol: String,
}

/// One endpoint of a Service, with its live count of requests in flight.
#[derive(Debug, Clone)]
pub struct EndpointEntry {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub node: String,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// The endpoint's port numbers by Service port name.
    pub ports: Vec<(String, u16)>,
    /// The slice's address for it: the pod's own for a pod with a network namespace (one with
    /// an OCI container), else its node's.
    pub address: Option<IpAddr>,
    pub outstanding: Arc<AtomicUsize>,
}

impl EndpointEntry {
    pub fn port_for(&self, service_port: &ServicePort) -> Option<u16> {
        self.ports.iter().find(|(name, _)| *name == service_port.name).map(|(_, number)| *number)
    }
}

#[derive(Debug)]
pub struct ServiceEntry {
    pub namespace: String,
    pub name: String,
    pub service_type: String,
    pub cluster_ip: Option<Ipv4Addr>,
    pub ports: Vec<ServicePort>,
    /// `Some(timeout)` for `sessionAffinity: ClientIP`.
    pub affinity: Option<Duration>,
    pub endpoints: Vec<EndpointEntry>,
}

impl ServiceEntry {
    /// The Service port a request on `port` means (any port of the Service; `None`: the first).
    pub fn port(&self, port: Option<u16>) -> Option<&ServicePort> {
        match port {
            Some(number) => self.ports.iter().find(|p| p.port == number),
            None => self.ports.iter().find(|p| p.port == 80).or(self.ports.first()),
        }
    }

    pub fn has_ready_endpoint(&self) -> bool {
        self.endpoints.iter().any(|e| e.ready)
    }
}

/// A chosen endpoint. Dropping it ends the request's count against the endpoint.
pub struct Pick {
    pub endpoint: EndpointEntry,
    pub port: u16,
}

impl Drop for Pick {
    fn drop(&mut self) {
        self.endpoint.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

type Key = (String, String);
/// ClientIP sessions: (namespace, service, client) → (pod uid, last use).
type Sessions = HashMap<(String, String, IpAddr), (String, Instant)>;

#[derive(Default)]
pub struct ServiceTable {
    entries: RwLock<HashMap<Key, Arc<ServiceEntry>>>,
    by_cluster_ip: RwLock<HashMap<Ipv4Addr, Key>>,
    /// Data-plane addresses of nodes, by name.
    node_addresses: RwLock<HashMap<String, String>>,
    /// Nodes' InternalIPs, by name.
    node_ips: RwLock<HashMap<String, IpAddr>>,
    /// Requests in flight per endpoint uid, kept across rebuilds.
    outstanding: Mutex<HashMap<String, Arc<AtomicUsize>>>,
    affinity: Mutex<Sessions>,
    /// Bumped when a Service (not merely its endpoints) changes, for the node-port listeners.
    pub changes: tokio::sync::watch::Sender<u64>,
    rotation: AtomicUsize,
}

impl ServiceTable {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Follows Services, EndpointSlices and Nodes from these informers (before they start).
    pub fn follow(self: &Arc<Self>, services: &Arc<Informer>, slices: &Arc<Informer>, nodes: &Arc<Informer>) {
        let (table, source_services, source_slices) = (Arc::clone(self), Arc::clone(services), Arc::clone(slices));
        services.on_change(Box::new(move |old, new| {
            if let Some(service) = new.or(old) {
                table.rebuild(&source_services, &source_slices, meta::namespace(service), meta::name(service));
                table.changes.send_modify(|version| *version += 1);
            }
        }));
        let (table, source_services, source_slices) = (Arc::clone(self), Arc::clone(services), Arc::clone(slices));
        slices.on_change(Box::new(move |old, new| {
            let mut names: Vec<(String, String)> = [old, new]
                .into_iter()
                .flatten()
                .filter_map(|s| s["metadata"]["labels"][SERVICE_NAME_LABEL].as_str().map(|n| (meta::namespace(s).to_owned(), n.to_owned())))
                .collect();
            names.dedup();
            for (namespace, name) in names {
                table.rebuild(&source_services, &source_slices, &namespace, &name);
            }
        }));
        let table = Arc::clone(self);
        nodes.on_change(Box::new(move |old, new| {
            let mut ips = table.node_ips.write().unwrap_or_else(|p| p.into_inner());
            match new.map(|node| (meta::name(node), meta::internal_ip(node).and_then(|ip| ip.parse().ok()))) {
                Some((name, Some(ip))) => ips.insert(name.to_owned(), ip),
                Some((name, None)) => ips.remove(name),
                None => old.and_then(|node| ips.remove(meta::name(node))),
            };
            drop(ips);
            let mut addresses = table.node_addresses.write().unwrap_or_else(|p| p.into_inner());
            match new {
                Some(node) => match node["metadata"]["annotations"][crate::DATA_ADDR_ANNOTATION].as_str() {
                    Some(address) => addresses.insert(meta::name(node).to_owned(), address.to_owned()),
                    None => addresses.remove(meta::name(node)),
                },
                None => old.and_then(|node| addresses.remove(meta::name(node))),
            };
        }));
    }

    /// Recomputes one Service's entry from the caches.
    fn rebuild(&self, services: &Informer, slices: &Informer, namespace: &str, name: &str) {
        let key = (namespace.to_owned(), name.to_owned());
        let service = services.get_named(namespace, name);
        let entry = service.map(|service| {
            let slices: Vec<Arc<Value>> = slices.list_namespace(namespace).into_iter().filter(|s| s["metadata"]["labels"][SERVICE_NAME_LABEL] == name).collect();
            let mut outstanding = self.outstanding.lock().unwrap_or_else(|p| p.into_inner());
            Arc::new(entry_of(&service, &slices, &mut outstanding))
        });
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        let mut by_ip = self.by_cluster_ip.write().unwrap_or_else(|p| p.into_inner());
        if let Some(old_ip) = entries.get(&key).and_then(|e| e.cluster_ip) {
            by_ip.remove(&old_ip);
        }
        match entry {
            Some(entry) => {
                if let Some(ip) = entry.cluster_ip {
                    by_ip.insert(ip, key.clone());
                }
                entries.insert(key, entry);
            }
            None => {
                entries.remove(&key);
            }
        }
        drop((entries, by_ip));
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<ServiceEntry>> {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).get(&(namespace.to_owned(), name.to_owned())).cloned()
    }

    pub fn all(&self) -> Vec<Arc<ServiceEntry>> {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// The Service a request's host means: `NAME` (in `caller_namespace`), `NAME.NS`,
    /// `NAME.NS.svc`, `NAME.NS.svc.cluster.local`, or a cluster IP. `None` for other hosts.
    pub fn resolve(&self, host: &str, caller_namespace: &str) -> Option<Arc<ServiceEntry>> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if let Ok(ip) = host.parse::<Ipv4Addr>() {
            let key = self.by_cluster_ip.read().unwrap_or_else(|p| p.into_inner()).get(&ip).cloned()?;
            return self.get(&key.0, &key.1);
        }
        let labels: Vec<&str> = host.split('.').collect();
        let (name, namespace) = match labels.as_slice() {
            [name] => (*name, caller_namespace),
            [name, namespace] => (*name, *namespace),
            [name, namespace, "svc"] => (*name, *namespace),
            [name, namespace, "svc", rest @ ..] if rest.join(".") == CLUSTER_DOMAIN => (*name, *namespace),
            _ => return None,
        };
        self.get(namespace, name)
    }

    pub fn node_address(&self, node: &str) -> Option<String> {
        self.node_addresses.read().unwrap_or_else(|p| p.into_inner()).get(node).cloned()
    }

    /// The endpoint's own address, when its pod has a network namespace of its own: its slice
    /// address differs from its node's InternalIP. Such an endpoint takes raw TCP at that
    /// address; the others are HTTP components reached through their node.
    pub fn own_address(&self, endpoint: &EndpointEntry) -> Option<IpAddr> {
        let address = endpoint.address?;
        let node_ip = *self.node_ips.read().unwrap_or_else(|p| p.into_inner()).get(&endpoint.node)?;
        (address != node_ip).then_some(address)
    }

    /// Chooses an endpoint of `service` for `port`: the session's endpoint under ClientIP
    /// affinity if it is still ready, else the ready endpoint with the fewest requests in flight
    /// (ties rotate). Terminating endpoints that still serve are used only when none is ready.
    /// `exclude` lists endpoints (uids) a retry must avoid.
    pub fn pick(&self, service: &ServiceEntry, port: &ServicePort, client: Option<IpAddr>, exclude: &[String]) -> Option<Pick> {
        let usable = |e: &&EndpointEntry| e.port_for(port).is_some() && !exclude.contains(&e.uid);
        let mut candidates: Vec<&EndpointEntry> = service.endpoints.iter().filter(|e| e.ready).filter(usable).collect();
        if candidates.is_empty() {
            candidates = service.endpoints.iter().filter(|e| e.serving && e.terminating).filter(usable).collect();
        }
        if candidates.is_empty() {
            return None;
        }
        let affinity_key = service.affinity.zip(client).map(|(timeout, ip)| ((service.namespace.clone(), service.name.clone(), ip), timeout));
        let mut chosen = None;
        if let Some((key, timeout)) = &affinity_key {
            let sessions = self.affinity.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((uid, last)) = sessions.get(key)
                && last.elapsed() < *timeout
            {
                chosen = candidates.iter().find(|e| &e.uid == uid).copied();
            }
        }
        let chosen = chosen.unwrap_or_else(|| {
            let start = self.rotation.fetch_add(1, Ordering::Relaxed) % candidates.len();
            let mut best = candidates[start];
            for offset in 1..candidates.len() {
                let candidate = candidates[(start + offset) % candidates.len()];
                if candidate.outstanding.load(Ordering::Relaxed) < best.outstanding.load(Ordering::Relaxed) {
                    best = candidate;
                }
            }
            best
        });
        if let Some((key, _)) = affinity_key {
            let mut sessions = self.affinity.lock().unwrap_or_else(|p| p.into_inner());
            if sessions.len() > 100_000 {
                sessions.retain(|_, (_, last)| last.elapsed() < Duration::from_secs(3 * 3600));
            }
            sessions.insert(key, (chosen.uid.clone(), Instant::now()));
        }
        let target_port = chosen.port_for(port)?;
        chosen.outstanding.fetch_add(1, Ordering::Relaxed);
        Some(Pick { port: target_port, endpoint: chosen.clone() })
    }
}

/// The entry of one Service from its object and its slices.
pub fn entry_of(service: &Value, slices: &[Arc<Value>], outstanding: &mut HashMap<String, Arc<AtomicUsize>>) -> ServiceEntry {
    let spec = &service["spec"];
    let ports = spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some(ServicePort {
                name: p["name"].as_str().unwrap_or_default().to_owned(),
                port: u16::try_from(p["port"].as_u64()?).ok()?,
                node_port: p["nodePort"].as_u64().and_then(|n| u16::try_from(n).ok()),
                protocol: p["protocol"].as_str().unwrap_or("TCP").to_owned(),
            })
        })
        .collect();
    let affinity = (spec["sessionAffinity"] == "ClientIP").then(|| Duration::from_secs(spec["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"].as_u64().unwrap_or(10_800)));
    let mut endpoints = Vec::new();
    for slice in slices {
        let slice_ports: Vec<(String, u16)> = slice["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p["name"].as_str().unwrap_or_default().to_owned(), u16::try_from(p["port"].as_u64()?).ok()?)))
            .collect();
        for endpoint in slice["endpoints"].as_array().into_iter().flatten() {
            let target = &endpoint["targetRef"];
            let uid = target["uid"].as_str().unwrap_or_default().to_owned();
            let node = endpoint["nodeName"].as_str().unwrap_or_default().to_owned();
            if uid.is_empty() || node.is_empty() {
                continue;
            }
            let conditions = &endpoint["conditions"];
            // Kubernetes: a missing `ready` means ready; `serving` defaults to `ready`.
            let ready = conditions["ready"].as_bool().unwrap_or(true);
            endpoints.push(EndpointEntry {
                namespace: target["namespace"].as_str().unwrap_or(meta::namespace(slice)).to_owned(),
                pod: target["name"].as_str().unwrap_or_default().to_owned(),
                outstanding: Arc::clone(outstanding.entry(uid.clone()).or_default()),
                uid,
                node,
                ready,
                serving: conditions["serving"].as_bool().unwrap_or(ready),
                terminating: conditions["terminating"].as_bool().unwrap_or(false),
                ports: slice_ports.clone(),
                address: endpoint["addresses"][0].as_str().and_then(|a| a.parse().ok()),
            });
        }
    }
    ServiceEntry {
        namespace: meta::namespace(service).to_owned(),
        name: meta::name(service).to_owned(),
        service_type: spec["type"].as_str().unwrap_or("ClusterIP").to_owned(),
        cluster_ip: spec["clusterIP"].as_str().and_then(|ip| ip.parse().ok()),
        ports,
        affinity,
        endpoints,
    }
}

/// Splits `host[:port]` (as in a Host header or URI authority).
pub fn split_host_port(authority: &str) -> (&str, Option<u16>) {
    if authority.starts_with('[') {
        return match authority.rsplit_once("]:") {
            Some((host, port)) => (host.trim_start_matches('['), port.parse().ok()),
            None => (authority.trim_start_matches('[').trim_end_matches(']'), None),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, port.parse().ok()),
        _ => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn table_with(service: Value, slices: Vec<Value>) -> (ServiceTable, Arc<ServiceEntry>) {
        let table = ServiceTable::default();
        let slices: Vec<Arc<Value>> = slices.into_iter().map(Arc::new).collect();
        let entry = Arc::new(entry_of(&service, &slices, &mut table.outstanding.lock().unwrap()));
        table.entries.write().unwrap().insert((entry.namespace.clone(), entry.name.clone()), Arc::clone(&entry));
        if let Some(ip) = entry.cluster_ip {
            table.by_cluster_ip.write().unwrap().insert(ip, (entry.namespace.clone(), entry.name.clone()));
        }
        (table, entry)
    }

    fn endpoint(pod: &str, node: &str, ready: bool, terminating: bool) -> Value {
        json!({"addresses": ["127.0.0.1"], "nodeName": node, "conditions": {"ready": ready, "serving": ready || terminating, "terminating": terminating},
            "targetRef": {"kind": "Pod", "namespace": "default", "name": pod, "uid": format!("uid-{pod}")}})
    }

    fn web(affinity: bool, endpoints: Vec<Value>) -> (ServiceTable, Arc<ServiceEntry>) {
        let mut service = json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {"clusterIP": "10.43.0.9", "ports": [{"port": 80, "targetPort": 8080}]}});
        if affinity {
            service["spec"]["sessionAffinity"] = json!("ClientIP");
        }
        table_with(service, vec![json!({"metadata": {"name": "web-1", "namespace": "default", "labels": {SERVICE_NAME_LABEL: "web"}}, "ports": [{"port": 8080}], "endpoints": endpoints})])
    }

    #[test]
    fn names_and_cluster_ips_resolve() {
        let (table, _) = web(false, vec![]);
        for host in ["web", "web.default", "web.default.svc", "web.default.svc.cluster.local", "WEB.default.svc.cluster.local.", "10.43.0.9"] {
            assert!(table.resolve(host, "default").is_some(), "{host}");
        }
        assert!(table.resolve("web", "other").is_none());
        assert!(table.resolve("web.default.svc.example.com", "default").is_none());
        assert!(table.resolve("example.com", "default").is_none());
        assert_eq!(split_host_port("web.default:8080"), ("web.default", Some(8080)));
        assert_eq!(split_host_port("[::1]:80"), ("::1", Some(80)));
    }

    #[test]
    fn least_outstanding_among_ready_endpoints() {
        let (table, entry) = web(false, vec![endpoint("a", "n1", true, false), endpoint("b", "n2", true, false), endpoint("c", "n2", false, false)]);
        let port = entry.port(Some(80)).unwrap().clone();
        let first = table.pick(&entry, &port, None, &[]).unwrap();
        let second = table.pick(&entry, &port, None, &[]).unwrap();
        assert_ne!(first.endpoint.pod, second.endpoint.pod, "the busy endpoint is avoided");
        assert_eq!(first.port, 8080);
        drop(first);
        for _ in 0..20 {
            let pick = table.pick(&entry, &port, None, &[]).unwrap();
            assert_ne!(pick.endpoint.pod, "c", "not-ready endpoints get nothing");
        }
        let retry = table.pick(&entry, &port, None, &["uid-a".to_owned(), "uid-b".to_owned()]);
        assert!(retry.is_none());
    }

    #[test]
    fn terminating_endpoints_serve_only_when_nothing_is_ready() {
        let (table, entry) = web(false, vec![endpoint("old", "n1", false, true)]);
        let port = entry.port(None).unwrap().clone();
        assert_eq!(table.pick(&entry, &port, None, &[]).unwrap().endpoint.pod, "old");
        let (table, entry) = web(false, vec![endpoint("old", "n1", false, true), endpoint("new", "n1", true, false)]);
        for _ in 0..5 {
            assert_eq!(table.pick(&entry, &port, None, &[]).unwrap().endpoint.pod, "new");
        }
    }

    #[test]
    fn only_pods_with_an_address_of_their_own_take_raw_tcp() {
        let mut container = endpoint("box", "n1", true, false);
        container["addresses"] = json!(["10.88.4.7"]);
        let (table, entry) = web(false, vec![endpoint("wasm", "n1", true, false), container, endpoint("elsewhere", "n2", true, false)]);
        table.node_ips.write().unwrap().insert("n1".into(), "127.0.0.1".parse().unwrap());
        let own: Vec<Option<String>> = entry.endpoints.iter().map(|e| table.own_address(e).map(|a| a.to_string())).collect();
        // The Wasm pod's address is its node's; n2's address is not known yet.
        assert_eq!(own, [None, Some("10.88.4.7".to_owned()), None]);
        let node = json!({"metadata": {"name": "n2"}, "status": {"addresses": [{"type": "Hostname", "address": "n2"}, {"type": "InternalIP", "address": "192.0.2.1"}]}});
        assert_eq!(meta::internal_ip(&node), Some("192.0.2.1"));
    }

    #[test]
    fn client_ip_affinity_sticks() {
        let (table, entry) = web(true, vec![endpoint("a", "n1", true, false), endpoint("b", "n1", true, false), endpoint("c", "n1", true, false)]);
        let port = entry.port(None).unwrap().clone();
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let first = table.pick(&entry, &port, Some(client), &[]).unwrap().endpoint.pod.clone();
        for _ in 0..10 {
            assert_eq!(table.pick(&entry, &port, Some(client), &[]).unwrap().endpoint.pod, first);
        }
    }
}
