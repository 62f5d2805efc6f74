//! The placement decision, a pure function: a pod and a snapshot of the nodes (with the pods
//! already on them) in, a node or the reasons no node fits out. Filters, then scores, like
//! kube-scheduler's framework: Ready and schedulable, runtimes, resources, nodeSelector and node
//! affinity, taints, pod (anti-)affinity and topology spread; scored by least-allocated,
//! preferred affinities, PreferNoSchedule taints and spreading one owner's pods.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;
use shoal_api::quantity;
use shoal_api::selector::LabelSelector;

/// cpu in millicores, memory in bytes, and a pod count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub pods: i64,
    /// What scoring adds on top of `milli_cpu` and `memory`: [`DEFAULT_MILLI_CPU`] and
    /// [`DEFAULT_MEMORY`] for each container that requests none, as kube-scheduler's non-zero
    /// requests do. Without it pods that request nothing weigh nothing, and equal nodes never
    /// look fuller as they fill.
    pub unrequested_milli_cpu: i64,
    pub unrequested_memory: i64,
}

/// What scoring counts for a container without a CPU request (kube-scheduler's 100m).
pub const DEFAULT_MILLI_CPU: i64 = 100;
/// What scoring counts for a container without a memory request (kube-scheduler's 200 MiB).
pub const DEFAULT_MEMORY: i64 = 200 << 20;

impl Resources {
    /// A node's `status.allocatable`.
    pub fn of_allocatable(allocatable: &Value) -> Self {
        Self {
            milli_cpu: quantity::of_json(&allocatable["cpu"]).and_then(|q| quantity::parse_milli(&q)).unwrap_or(0),
            memory: quantity::of_json(&allocatable["memory"]).and_then(|q| quantity::parse_units(&q)).unwrap_or(0),
            pods: quantity::of_json(&allocatable["pods"]).and_then(|q| quantity::parse_units(&q)).unwrap_or(110),
            ..Self::default()
        }
    }

    /// A pod's requests: the sum over containers, or the largest init container if larger
    /// (init containers run one at a time), plus one pod.
    pub fn of_pod(spec: &Value) -> Self {
        let sum = |containers: &mut dyn Iterator<Item = &Value>| {
            // (requested cpu, requested memory, cpu as scored, memory as scored)
            let mut total = (0, 0, 0, 0);
            for container in containers {
                let requests = &container["resources"]["requests"];
                let limits = &container["resources"]["limits"];
                // A limit without a request requests the limit (as defaulting does).
                let pick = |key: &str| quantity::of_json(&requests[key]).or_else(|| quantity::of_json(&limits[key]));
                let cpu = pick("cpu").map(|q| quantity::parse_milli(&q).unwrap_or(0));
                let memory = pick("memory").map(|q| quantity::parse_units(&q).unwrap_or(0));
                total.0 += cpu.unwrap_or(0);
                total.1 += memory.unwrap_or(0);
                total.2 += cpu.unwrap_or(DEFAULT_MILLI_CPU);
                total.3 += memory.unwrap_or(DEFAULT_MEMORY);
            }
            total
        };
        let main = sum(&mut spec["containers"].as_array().into_iter().flatten());
        let mut biggest = main;
        // Init containers run one at a time: the largest of them counts if it is larger.
        for container in spec["initContainers"].as_array().into_iter().flatten() {
            let one = sum(&mut std::iter::once(container));
            biggest = (biggest.0.max(one.0), biggest.1.max(one.1), biggest.2.max(one.2), biggest.3.max(one.3));
        }
        Self { milli_cpu: biggest.0, memory: biggest.1, pods: 1, unrequested_milli_cpu: biggest.2 - biggest.0, unrequested_memory: biggest.3 - biggest.1 }
    }

    /// CPU as scoring counts it (see `unrequested_milli_cpu`).
    pub fn scored_milli_cpu(&self) -> i64 {
        self.milli_cpu + self.unrequested_milli_cpu
    }

    /// Memory as scoring counts it (see `unrequested_memory`).
    pub fn scored_memory(&self) -> i64 {
        self.memory + self.unrequested_memory
    }

    pub fn add(&mut self, other: &Self) {
        self.milli_cpu += other.milli_cpu;
        self.memory += other.memory;
        self.pods += other.pods;
        self.unrequested_milli_cpu += other.unrequested_milli_cpu;
        self.unrequested_memory += other.unrequested_memory;
    }

    pub fn subtract(&mut self, other: &Self) {
        self.milli_cpu -= other.milli_cpu;
        self.memory -= other.memory;
        self.pods -= other.pods;
        self.unrequested_milli_cpu -= other.unrequested_milli_cpu;
        self.unrequested_memory -= other.unrequested_memory;
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: String,
}

impl Taint {
    pub fn parse_all(taints: &Value) -> Vec<Self> {
        taints
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| Taint {
                key: t["key"].as_str().unwrap_or_default().into(),
                value: t["value"].as_str().unwrap_or_default().into(),
                effect: t["effect"].as_str().unwrap_or_default().into(),
            })
            .collect()
    }
}

/// Whether one of `tolerations` (a pod's `spec.tolerations`) tolerates `taint`.
pub fn tolerates(tolerations: &Value, taint: &Taint) -> bool {
    tolerations.as_array().into_iter().flatten().any(|toleration| toleration_matches(toleration, taint))
}

pub fn toleration_matches(toleration: &Value, taint: &Taint) -> bool {
    let effect = toleration["effect"].as_str().unwrap_or_default();
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = toleration["key"].as_str().unwrap_or_default();
    let operator = toleration["operator"].as_str().unwrap_or("Equal");
    if key.is_empty() {
        // An empty key with Exists tolerates everything.
        return operator == "Exists";
    }
    if key != taint.key {
        return false;
    }
    match operator {
        "Exists" => true,
        _ => toleration["value"].as_str().unwrap_or_default() == taint.value,
    }
}

/// A pod already placed on a node, as affinity and spreading see it.
#[derive(Debug, Clone)]
pub struct PlacedPod {
    /// `namespace/name`.
    pub key: String,
    pub namespace: String,
    pub labels: serde_json::Map<String, Value>,
    pub owner_uid: Option<String>,
    /// The pod's required anti-affinity terms, which constrain pods placed after it.
    pub anti_affinity: Vec<Value>,
}

/// A node as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub name: String,
    pub labels: serde_json::Map<String, Value>,
    pub ready: bool,
    pub unschedulable: bool,
    pub taints: Vec<Taint>,
    pub allocatable: Resources,
    pub requested: Resources,
    /// The pods counted on this node. Change it through [`NodeView::add_pod`] and
    /// [`NodeView::remove_pod`], which keep `anti_affinity_pods` right.
    pub pods: Vec<PlacedPod>,
    /// How many of `pods` carry required anti-affinity terms (most nodes: none, so a placement
    /// need not look at every placed pod).
    pub anti_affinity_pods: usize,
    /// Labelled `shoal.dev/wasm=true` / `shoal.dev/containers=true` (read once, not per pod).
    pub runs_wasm: bool,
    pub runs_containers: bool,
}

impl NodeView {
    pub fn from_node(node: &Value) -> Self {
        let ready = node["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True");
        Self {
            name: node["metadata"]["name"].as_str().unwrap_or_default().into(),
            labels: node["metadata"]["labels"].as_object().cloned().unwrap_or_default(),
            ready,
            unschedulable: node["spec"]["unschedulable"] == true,
            taints: Taint::parse_all(&node["spec"]["taints"]),
            allocatable: Resources::of_allocatable(&node["status"]["allocatable"]),
            requested: Resources::default(),
            pods: Vec::new(),
            anti_affinity_pods: 0,
            runs_wasm: node["metadata"]["labels"]["shoal.dev/wasm"] == "true",
            runs_containers: node["metadata"]["labels"]["shoal.dev/containers"] == "true",
        }
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).and_then(Value::as_str)
    }

    /// Counts `pod` on this node.
    pub fn add_pod(&mut self, pod: PlacedPod) {
        if !pod.anti_affinity.is_empty() {
            self.anti_affinity_pods += 1;
        }
        self.pods.push(pod);
    }

    /// Stops counting the pod with `key`.
    pub fn remove_pod(&mut self, key: &str) {
        if let Some(position) = self.pods.iter().position(|p| p.key == key)
            && !self.pods.swap_remove(position).anti_affinity.is_empty()
        {
            self.anti_affinity_pods -= 1;
        }
    }
}

/// What the scheduler needs of the pod being placed.
#[derive(Debug, Clone)]
pub struct PodView {
    pub namespace: String,
    pub labels: serde_json::Map<String, Value>,
    pub requests: Resources,
    pub node_selector: serde_json::Map<String, Value>,
    pub affinity: Value,
    pub tolerations: Value,
    pub owner_uid: Option<String>,
    pub runtime: Runtime,
    pub topology_spread: Value,
}

/// Which runtime a pod needs on its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// Wasm components: nodes labelled `shoal.dev/wasm=true`.
    Wasm,
    /// OCI containers: nodes labelled `shoal.dev/containers=true`.
    Containers,
}

/// The RuntimeClass names that ask for OCI containers rather than Wasm.
pub const CONTAINER_RUNTIME_CLASSES: &[&str] = &["containerd", "runc", "oci"];

impl PodView {
    pub fn from_pod(pod: &Value) -> Self {
        let runtime_class = pod["spec"]["runtimeClassName"].as_str().unwrap_or_default();
        Self {
            namespace: pod["metadata"]["namespace"].as_str().unwrap_or("default").into(),
            labels: pod["metadata"]["labels"].as_object().cloned().unwrap_or_default(),
            requests: Resources::of_pod(&pod["spec"]),
            node_selector: pod["spec"]["nodeSelector"].as_object().cloned().unwrap_or_default(),
            affinity: pod["spec"]["affinity"].clone(),
            tolerations: pod["spec"]["tolerations"].clone(),
            owner_uid: crate::informer::controller_of(pod).and_then(|o| o["uid"].as_str()).map(str::to_owned),
            runtime: if CONTAINER_RUNTIME_CLASSES.contains(&runtime_class) { Runtime::Containers } else { Runtime::Wasm },
            topology_spread: pod["spec"]["topologySpreadConstraints"].clone(),
        }
    }

    pub fn placed(&self) -> PlacedPod {
        PlacedPod {
            key: String::new(),
            namespace: self.namespace.clone(),
            labels: self.labels.clone(),
            owner_uid: self.owner_uid.clone(),
            anti_affinity: required_terms(&self.affinity["podAntiAffinity"]).to_vec(),
        }
    }
}

/// Why no node fits: a count of nodes per reason, rendered as kube-scheduler does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unschedulable {
    pub nodes: usize,
    pub reasons: BTreeMap<String, usize>,
}

impl std::fmt::Display for Unschedulable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.nodes == 0 {
            return write!(f, "0/0 nodes are available: no nodes registered.");
        }
        let reasons: Vec<String> = self.reasons.iter().map(|(reason, count)| format!("{count} {reason}")).collect();
        write!(f, "0/{} nodes are available: {}.", self.nodes, reasons.join(", "))
    }
}

fn required_terms(affinity: &Value) -> &[Value] {
    affinity["requiredDuringSchedulingIgnoredDuringExecution"].as_array().map(Vec::as_slice).unwrap_or_default()
}

/// A `NodeSelectorRequirement` against a node's labels (or its name, for matchFields).
fn node_requirement_matches(requirement: &Value, value: Option<&str>) -> bool {
    let values: Vec<&str> = requirement["values"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    match requirement["operator"].as_str().unwrap_or_default() {
        "In" => value.is_some_and(|v| values.contains(&v)),
        "NotIn" => value.is_none_or(|v| !values.contains(&v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => value.and_then(|v| v.parse::<i64>().ok()).zip(values.first().and_then(|v| v.parse::<i64>().ok())).is_some_and(|(v, bound)| v > bound),
        "Lt" => value.and_then(|v| v.parse::<i64>().ok()).zip(values.first().and_then(|v| v.parse::<i64>().ok())).is_some_and(|(v, bound)| v < bound),
        _ => false,
    }
}

/// A `NodeSelectorTerm`: every expression and field requirement holds. An empty term matches
/// nothing, as in Kubernetes.
fn node_term_matches(term: &Value, node: &NodeView) -> bool {
    let expressions = term["matchExpressions"].as_array().map(Vec::as_slice).unwrap_or_default();
    let fields = term["matchFields"].as_array().map(Vec::as_slice).unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    expressions.iter().all(|r| node_requirement_matches(r, r["key"].as_str().and_then(|k| node.label(k))))
        && fields.iter().all(|r| r["key"] == "metadata.name" && node_requirement_matches(r, Some(&node.name)))
}

fn node_affinity_matches(pod: &PodView, node: &NodeView) -> bool {
    let selector_ok = pod.node_selector.iter().all(|(k, v)| node.labels.get(k) == Some(v));
    let required = &pod.affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"];
    let affinity_ok = match required.as_array() {
        Some(terms) => terms.iter().any(|t| node_term_matches(t, node)),
        None => true,
    };
    selector_ok && affinity_ok
}

/// Whether `placed` is selected by a pod-affinity `term` written in a pod of `namespace`.
fn term_selects(term: &Value, term_namespace: &str, placed: &PlacedPod) -> bool {
    let namespaces: Vec<&str> = term["namespaces"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let namespace_ok = if namespaces.is_empty() { placed.namespace == term_namespace } else { namespaces.contains(&placed.namespace.as_str()) };
    if !namespace_ok {
        return false;
    }
    match LabelSelector::from_object(&term["labelSelector"]) {
        // A missing labelSelector selects nothing.
        Ok(selector) if !term["labelSelector"].is_null() => selector.matches(Some(&placed.labels)),
        _ => false,
    }
}

/// Whether any pod on a node in `node`'s topology domain (by `term.topologyKey`) matches.
fn domain_has_match(term: &Value, term_namespace: &str, node: &NodeView, nodes: &[NodeView]) -> bool {
    let Some(key) = term["topologyKey"].as_str() else { return false };
    let Some(domain) = node.label(key) else { return false };
    nodes.iter().filter(|n| n.label(key) == Some(domain)).any(|n| n.pods.iter().any(|p| term_selects(term, term_namespace, p)))
}

/// What `place` works out once per pod rather than once per node.
struct Precomputed<'a> {
    /// Placed pods with required anti-affinity, and their nodes.
    anti_affinity_holders: Vec<(&'a NodeView, &'a PlacedPod)>,
    /// Pods of the same owner per zone.
    zone_siblings: HashMap<&'a str, i64>,
    /// Per topologySpreadConstraint: matching pods per domain, and the smallest count.
    spread: Vec<Option<(HashMap<&'a str, i64>, i64)>>,
}

impl<'a> Precomputed<'a> {
    fn new(pod: &PodView, nodes: &'a [NodeView]) -> Self {
        let anti_affinity_holders =
            nodes.iter().filter(|n| n.anti_affinity_pods > 0).flat_map(|n| n.pods.iter().filter(|p| !p.anti_affinity.is_empty()).map(move |p| (n, p))).collect();
        let mut zone_siblings = HashMap::new();
        if let Some(owner) = &pod.owner_uid {
            for node in nodes {
                if let Some(zone) = node.label("topology.kubernetes.io/zone") {
                    *zone_siblings.entry(zone).or_insert(0) += node.pods.iter().filter(|p| p.owner_uid.as_ref() == Some(owner)).count() as i64;
                }
            }
        }
        let spread = pod
            .topology_spread
            .as_array()
            .into_iter()
            .flatten()
            .map(|constraint| {
                let key = constraint["topologyKey"].as_str()?;
                let selector = LabelSelector::from_object(&constraint["labelSelector"]).ok()?;
                let mut counts: HashMap<&str, i64> = HashMap::new();
                for candidate in nodes.iter().filter(|n| n.ready && !n.unschedulable && node_affinity_matches(pod, n)) {
                    let Some(domain) = candidate.label(key) else { continue };
                    let matching = candidate.pods.iter().filter(|p| p.namespace == pod.namespace && selector.matches(Some(&p.labels))).count() as i64;
                    *counts.entry(domain).or_insert(0) += matching;
                }
                let minimum = counts.values().copied().min().unwrap_or(0);
                Some((counts, minimum))
            })
            .collect();
        Self { anti_affinity_holders, zone_siblings, spread }
    }

    /// The skew placing the pod on `node` would create under constraint `index`.
    fn skew(&self, index: usize, constraint: &Value, node: &NodeView) -> Option<i64> {
        let (counts, minimum) = self.spread.get(index)?.as_ref()?;
        let domain = node.label(constraint["topologyKey"].as_str()?)?;
        Some(counts.get(domain).copied().unwrap_or(0) + 1 - minimum)
    }
}

/// The verdict on one node: `Ok(())` or the reason it does not fit.
fn filter(pod: &PodView, node: &NodeView, nodes: &[NodeView], pre: &Precomputed<'_>) -> Result<(), String> {
    if node.unschedulable {
        return Err("node(s) were unschedulable".into());
    }
    if !node.ready {
        return Err("node(s) were not ready".into());
    }
    match pod.runtime {
        Runtime::Wasm if !node.runs_wasm => return Err("node(s) cannot run Wasm components".into()),
        Runtime::Containers if !node.runs_containers => return Err("node(s) cannot run OCI containers".into()),
        _ => {}
    }
    if let Some(taint) = node.taints.iter().find(|t| (t.effect == "NoSchedule" || t.effect == "NoExecute") && !tolerates(&pod.tolerations, t)) {
        return Err(format!("node(s) had untolerated taint {{{}: {}}}", taint.key, taint.value));
    }
    if !node_affinity_matches(pod, node) {
        return Err("node(s) didn't match Pod's node affinity/selector".into());
    }
    let free = |allocatable: i64, requested: i64| allocatable - requested;
    if pod.requests.pods + node.requested.pods > node.allocatable.pods {
        return Err("Too many pods".into());
    }
    if pod.requests.milli_cpu > 0 && pod.requests.milli_cpu > free(node.allocatable.milli_cpu, node.requested.milli_cpu) {
        return Err("Insufficient cpu".into());
    }
    if pod.requests.memory > 0 && pod.requests.memory > free(node.allocatable.memory, node.requested.memory) {
        return Err("Insufficient memory".into());
    }
    for term in required_terms(&pod.affinity["podAffinity"]) {
        if !domain_has_match(term, &pod.namespace, node, nodes) {
            // The first pod of a group that selects itself may go anywhere.
            let me = pod.placed();
            let anywhere = nodes.iter().any(|n| n.pods.iter().any(|p| term_selects(term, &pod.namespace, p)));
            if anywhere || !term_selects(term, &pod.namespace, &me) || node.label(term["topologyKey"].as_str().unwrap_or_default()).is_none() {
                return Err("node(s) didn't match pod affinity rules".into());
            }
        }
    }
    for term in required_terms(&pod.affinity["podAntiAffinity"]) {
        if domain_has_match(term, &pod.namespace, node, nodes) {
            return Err("node(s) didn't match pod anti-affinity rules".into());
        }
    }
    // Existing pods' anti-affinity against this pod (symmetry).
    if !pre.anti_affinity_holders.is_empty() {
        let me = pod.placed();
        for (other_node, placed) in &pre.anti_affinity_holders {
            for term in &placed.anti_affinity {
                let Some(key) = term["topologyKey"].as_str() else { continue };
                if other_node.label(key).is_some() && other_node.label(key) == node.label(key) && term_selects(term, &placed.namespace, &me) {
                    return Err("node(s) didn't satisfy existing pods anti-affinity rules".into());
                }
            }
        }
    }
    for (index, constraint) in pod.topology_spread.as_array().into_iter().flatten().enumerate() {
        if constraint["whenUnsatisfiable"].as_str().unwrap_or("DoNotSchedule") != "DoNotSchedule" {
            continue;
        }
        if let Some(skew) = pre.skew(index, constraint, node)
            && skew > constraint["maxSkew"].as_i64().unwrap_or(1)
        {
            return Err("node(s) didn't match pod topology spread constraints".into());
        }
    }
    Ok(())
}

/// A node's score out of roughly 0..=300: least allocated, preferences, spreading.
fn score(pod: &PodView, node: &NodeView, nodes: &[NodeView], pre: &Precomputed<'_>) -> i64 {
    let fraction = |requested: i64, allocatable: i64| if allocatable <= 0 { 0 } else { ((allocatable - requested).max(0) * 100) / allocatable };
    let cpu = fraction(node.requested.scored_milli_cpu() + pod.requests.scored_milli_cpu(), node.allocatable.milli_cpu);
    let memory = fraction(node.requested.scored_memory() + pod.requests.scored_memory(), node.allocatable.memory);
    let pods = fraction(node.requested.pods + 1, node.allocatable.pods);
    let mut score = (cpu + memory + pods) / 3;

    for preference in pod.affinity["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"].as_array().into_iter().flatten() {
        if node_term_matches(&preference["preference"], node) {
            score += preference["weight"].as_i64().unwrap_or(0);
        }
    }
    for (field, sign) in [("podAffinity", 1), ("podAntiAffinity", -1)] {
        for preference in pod.affinity[field]["preferredDuringSchedulingIgnoredDuringExecution"].as_array().into_iter().flatten() {
            if domain_has_match(&preference["podAffinityTerm"], &pod.namespace, node, nodes) {
                score += sign * preference["weight"].as_i64().unwrap_or(0);
            }
        }
    }
    let soft_taints = node.taints.iter().filter(|t| t.effect == "PreferNoSchedule" && !tolerates(&pod.tolerations, t)).count() as i64;
    score -= 50 * soft_taints;

    // Spread one owner's pods across nodes and zones (the default topology spread).
    if let Some(owner) = &pod.owner_uid {
        let siblings_here = node.pods.iter().filter(|p| p.owner_uid.as_ref() == Some(owner)).count() as i64;
        score -= 20 * siblings_here;
        if let Some(zone) = node.label("topology.kubernetes.io/zone") {
            score -= 10 * pre.zone_siblings.get(zone).copied().unwrap_or(0);
        }
    }
    for (index, constraint) in pod.topology_spread.as_array().into_iter().flatten().enumerate() {
        if constraint["whenUnsatisfiable"] == "ScheduleAnyway"
            && let Some(skew) = pre.skew(index, constraint, node)
        {
            score -= 10 * skew;
        }
    }
    score
}

/// How many feasible nodes are scored before choosing, as kube-scheduler's
/// percentageOfNodesToScore: all of them in small clusters, a rotating sample in large ones.
pub fn feasible_nodes_to_score(nodes: usize) -> usize {
    if nodes <= 100 {
        return nodes;
    }
    let percentage = 50usize.saturating_sub(nodes / 125).max(5);
    (nodes * percentage / 100).max(100)
}

/// Places `pod` on the best of `nodes`, or says why none fits. The search starts at node
/// `start` (rotate it between calls so equal nodes share the load) and stops once
/// [`feasible_nodes_to_score`] nodes have passed the filters.
pub fn place(pod: &PodView, nodes: &[NodeView], start: usize) -> Result<usize, Unschedulable> {
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut best: Option<(i64, usize)> = None;
    let count = nodes.len();
    let enough = feasible_nodes_to_score(count);
    let mut feasible = 0;
    let pre = Precomputed::new(pod, nodes);
    for offset in 0..count {
        if feasible >= enough {
            break;
        }
        let index = (offset + start) % count;
        let node = &nodes[index];
        match filter(pod, node, nodes, &pre) {
            Ok(()) => {
                feasible += 1;
                let score = score(pod, node, nodes, &pre);
                if best.is_none_or(|(best_score, _)| score > best_score) {
                    best = Some((score, index));
                }
            }
            Err(reason) => *reasons.entry(reason).or_insert(0) += 1,
        }
    }
    best.map(|(_, index)| index).ok_or(Unschedulable { nodes: count, reasons })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, extra: Value) -> NodeView {
        let mut node = json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "shoal.dev/wasm": "true"}},
            "spec": {},
            "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"}, "conditions": [{"type": "Ready", "status": "True"}]},
        });
        shoal_api::patch::merge_patch(&mut node, &extra);
        NodeView::from_node(&node)
    }

    fn pod(extra: Value) -> PodView {
        let mut pod = json!({"metadata": {"namespace": "default", "name": "p", "labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}});
        shoal_api::patch::merge_patch(&mut pod, &extra);
        PodView::from_pod(&pod)
    }

    fn with_pod(mut node: NodeView, labels: Value, owner: Option<&str>) -> NodeView {
        node.add_pod(PlacedPod {
            key: format!("default/x{}", node.pods.len()),
            namespace: "default".into(),
            labels: labels.as_object().cloned().unwrap_or_default(),
            owner_uid: owner.map(str::to_owned),
            anti_affinity: Vec::new(),
        });
        node.requested.pods += 1;
        node
    }

    fn chosen(pod: &PodView, nodes: &[NodeView]) -> Result<String, String> {
        place(pod, nodes, 0).map(|i| nodes[i].name.clone()).map_err(|u| u.to_string())
    }

    #[test]
    fn placements() {
        let small_memory = json!({"status": {"allocatable": {"memory": "64Mi"}}});
        let cases: Vec<(&str, PodView, Vec<NodeView>, Result<&str, &str>)> = vec![
            ("the only node", pod(json!({})), vec![node("a", json!({}))], Ok("a")),
            ("no nodes", pod(json!({})), vec![], Err("0/0 nodes are available: no nodes registered.")),
            (
                "cordoned and not ready nodes are skipped",
                pod(json!({})),
                vec![node("a", json!({"spec": {"unschedulable": true}})), node("b", json!({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}})), node("c", json!({}))],
                Ok("c"),
            ),
            (
                "reasons are counted per node",
                pod(json!({"spec": {"containers": [{"name": "c", "image": "x", "resources": {"requests": {"memory": "1Gi"}}}]}})),
                vec![
                    node("a", small_memory.clone()),
                    node("b", small_memory.clone()),
                    node("c", json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}})),
                ],
                Err("0/3 nodes are available: 2 Insufficient memory, 1 node(s) had untolerated taint {dedicated: gpu}."),
            ),
            (
                "a toleration admits a tainted node",
                pod(json!({"spec": {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}})),
                vec![node("a", json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}))],
                Ok("a"),
            ),
            (
                "Exists with an empty key tolerates every taint",
                pod(json!({"spec": {"tolerations": [{"operator": "Exists"}]}})),
                vec![node("a", json!({"spec": {"taints": [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]}}))],
                Ok("a"),
            ),
            (
                "PreferNoSchedule only lowers the score",
                pod(json!({})),
                vec![node("a", json!({"spec": {"taints": [{"key": "k", "effect": "PreferNoSchedule"}]}})), node("b", json!({}))],
                Ok("b"),
            ),
            (
                "nodeSelector",
                pod(json!({"spec": {"nodeSelector": {"disk": "ssd"}}})),
                vec![node("a", json!({})), node("b", json!({"metadata": {"labels": {"disk": "ssd"}}}))],
                Ok("b"),
            ),
            (
                "required node affinity: terms are ORed, expressions ANDed",
                pod(json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z1"]}, {"key": "gen", "operator": "Gt", "values": ["3"]}]},
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["c"]}]}
                ]}}}}})),
                vec![
                    node("a", json!({"metadata": {"labels": {"zone": "z1", "gen": "2"}}})),
                    node("b", json!({"metadata": {"labels": {"zone": "z2", "gen": "9"}}})),
                    node("c", json!({})),
                ],
                Ok("c"),
            ),
            (
                "no node matches the affinity",
                pod(json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "Exists"}]}]}}}}})),
                vec![node("a", json!({})), node("b", json!({}))],
                Err("0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector."),
            ),
            (
                "preferred node affinity wins among fitting nodes",
                pod(json!({"spec": {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 80, "preference": {"matchExpressions": [{"key": "fast", "operator": "Exists"}]}}]}}}})),
                vec![node("a", json!({})), node("b", json!({"metadata": {"labels": {"fast": "yes"}}}))],
                Ok("b"),
            ),
            (
                "least allocated: the emptier node",
                pod(json!({"spec": {"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "500m"}}}]}})),
                vec![{ let mut n = node("a", json!({})); n.requested.milli_cpu = 1500; n }, node("b", json!({}))],
                Ok("b"),
            ),
            (
                "insufficient cpu",
                pod(json!({"spec": {"containers": [{"name": "c", "image": "x", "resources": {"limits": {"cpu": "3"}}}]}})),
                vec![node("a", json!({}))],
                Err("0/1 nodes are available: 1 Insufficient cpu."),
            ),
            (
                "too many pods",
                pod(json!({})),
                vec![node("a", json!({"status": {"allocatable": {"pods": "1"}}})).clone()].into_iter().map(|n| with_pod(n, json!({}), None)).collect(),
                Err("0/1 nodes are available: 1 Too many pods."),
            ),
            (
                "OCI containers need a containers node",
                pod(json!({"spec": {"runtimeClassName": "containerd"}})),
                vec![node("a", json!({})), node("b", json!({"metadata": {"labels": {"shoal.dev/containers": "true", "shoal.dev/wasm": null}}}))],
                Ok("b"),
            ),
            (
                "Wasm needs a wasm node",
                pod(json!({})),
                vec![node("a", json!({"metadata": {"labels": {"shoal.dev/wasm": null}}}))],
                Err("0/1 nodes are available: 1 node(s) cannot run Wasm components."),
            ),
            (
                "pod anti-affinity keeps replicas apart",
                pod(json!({"spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}}})),
                vec![with_pod(node("a", json!({})), json!({"app": "web"}), None), node("b", json!({}))],
                Ok("b"),
            ),
            (
                "pod affinity follows the cache",
                pod(json!({"spec": {"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "zone"}]}}}})),
                vec![
                    node("a", json!({"metadata": {"labels": {"zone": "z1"}}})),
                    node("b", json!({"metadata": {"labels": {"zone": "z2"}}})),
                    with_pod(node("c", json!({"metadata": {"labels": {"zone": "z2"}}})), json!({"app": "cache"}), None),
                ],
                Ok("b"),
            ),
            (
                "pod affinity with nothing to follow",
                pod(json!({"spec": {"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "zone"}]}}}})),
                vec![node("a", json!({"metadata": {"labels": {"zone": "z1"}}}))],
                Err("0/1 nodes are available: 1 node(s) didn't match pod affinity rules."),
            ),
            (
                "one owner's pods spread across nodes",
                pod(json!({"metadata": {"ownerReferences": [{"uid": "rs-1", "controller": true, "kind": "ReplicaSet", "name": "rs"}]}})),
                vec![with_pod(node("a", json!({})), json!({"app": "web"}), Some("rs-1")), node("b", json!({}))],
                Ok("b"),
            ),
            (
                "topology spread: maxSkew 1 across zones",
                pod(json!({"spec": {"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}]}})),
                vec![
                    with_pod(node("a", json!({"metadata": {"labels": {"zone": "z1"}}})), json!({"app": "web"}), None),
                    with_pod(node("b", json!({"metadata": {"labels": {"zone": "z1"}}})), json!({"app": "web"}), None),
                    with_pod(node("c", json!({"metadata": {"labels": {"zone": "z2"}}})), json!({"app": "web"}), None),
                ],
                Ok("c"),
            ),
        ];
        for (name, pod, nodes, expected) in cases {
            let expected = expected.map(str::to_owned).map_err(str::to_owned);
            assert_eq!(chosen(&pod, &nodes), expected, "case: {name}");
        }
    }

    #[test]
    fn existing_anti_affinity_is_symmetric() {
        let mut holder = node("a", json!({}));
        holder.add_pod(PlacedPod {
            key: "default/db".into(),
            namespace: "default".into(),
            labels: serde_json::Map::new(),
            owner_uid: None,
            anti_affinity: vec![json!({"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"})],
        });
        let nodes = vec![holder, node("b", json!({}))];
        assert_eq!(chosen(&pod(json!({})), &nodes), Ok("b".into()));
    }

    #[test]
    fn large_clusters_score_a_sample() {
        assert_eq!(feasible_nodes_to_score(3), 3);
        assert_eq!(feasible_nodes_to_score(100), 100);
        assert_eq!(feasible_nodes_to_score(1000), 420);
        assert_eq!(feasible_nodes_to_score(5000), 500);
        assert_eq!(feasible_nodes_to_score(10_000), 500);
    }

    #[test]
    fn requests_count_init_containers_and_limits() {
        let requests = Resources::of_pod(&json!({
            "initContainers": [{"resources": {"requests": {"cpu": "2", "memory": "1Mi"}}}],
            "containers": [{"resources": {"requests": {"cpu": "100m"}}}, {"resources": {"limits": {"cpu": "200m", "memory": "64Mi"}}}],
        }));
        // Scoring counts 200 MiB for the container that asks for no memory.
        assert_eq!(requests, Resources { milli_cpu: 2000, memory: 64 << 20, pods: 1, unrequested_milli_cpu: 0, unrequested_memory: 200 << 20 });
        assert_eq!((requests.scored_milli_cpu(), requests.scored_memory()), (2000, 264 << 20));
    }

    #[test]
    fn pods_that_request_nothing_still_fill_a_node_for_scoring() {
        let nothing = Resources::of_pod(&json!({"containers": [{"name": "main"}]}));
        assert_eq!((nothing.milli_cpu, nothing.memory), (0, 0), "nothing is reserved for fitting");
        assert_eq!((nothing.scored_milli_cpu(), nothing.scored_memory()), (DEFAULT_MILLI_CPU, DEFAULT_MEMORY));
        let explicit_zero = Resources::of_pod(&json!({"containers": [{"resources": {"requests": {"cpu": "0"}}}]}));
        assert_eq!(explicit_zero.scored_milli_cpu(), 0, "an explicit zero is kept, as kube-scheduler keeps it");
        // Two equal nodes with room for 1,000 pods each: one pod more on a decides, wherever the
        // search starts (a pod count alone moves the score by less than a point).
        let mut fuller = node("a", json!({"status": {"allocatable": {"pods": "1000"}}}));
        fuller.requested.add(&nothing);
        let nodes = vec![fuller, node("b", json!({"status": {"allocatable": {"pods": "1000"}}}))];
        let view = pod(json!({}));
        for start in 0..2 {
            assert_eq!(place(&view, &nodes, start).map(|i| nodes[i].name.clone()), Ok("b".into()), "start {start}");
        }
    }
}
