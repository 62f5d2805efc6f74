//! The kinds Shoal serves and how each one is addressed (group, version, plural, scope).

/// One served kind.
#[derive(Debug, PartialEq, Eq)]
pub struct ResourceInfo {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Whether the kind has a `status` subresource (then the main resource ignores status
    /// changes and `/status` ignores everything else).
    pub has_status: bool,
    /// Whether the kind has a `scale` subresource.
    pub has_scale: bool,
}

impl ResourceInfo {
    /// `apps/v1`, or `v1` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_owned() } else { format!("{}/{}", self.group, self.version) }
    }

    /// `deployments.apps`, or `pods` for the core group: how Kubernetes names the resource in
    /// messages, and the store's key prefix.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() { self.plural.to_owned() } else { format!("{}.{}", self.plural, self.group) }
    }

    /// `Deployment.apps`, as used in "is invalid" messages.
    pub fn group_kind(&self) -> String {
        if self.group.is_empty() { self.kind.to_owned() } else { format!("{}.{}", self.kind, self.group) }
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// The path prefix of the group version: `/api/v1` or `/apis/apps/v1`.
    pub fn group_version_path(&self) -> String {
        if self.group.is_empty() { format!("/api/{}", self.version) } else { format!("/apis/{}/{}", self.group, self.version) }
    }

    /// The collection path, in `namespace` for namespaced kinds (all namespaces when `None`).
    pub fn collection_path(&self, namespace: Option<&str>) -> String {
        match (self.namespaced, namespace) {
            (true, Some(namespace)) => format!("{}/namespaces/{}/{}", self.group_version_path(), namespace, self.plural),
            _ => format!("{}/{}", self.group_version_path(), self.plural),
        }
    }

    pub fn object_path(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}/{}", self.collection_path(namespace), name)
    }
}

macro_rules! resource {
    ($group:literal, $kind:literal, $plural:literal, $singular:literal, $namespaced:literal,
     [$($short:literal),*], [$($category:literal),*], status: $status:literal, scale: $scale:literal) => {
        resource!($group, "v1", $kind, $plural, $singular, $namespaced, [$($short),*], [$($category),*], status: $status, scale: $scale)
    };
    ($group:literal, $version:literal, $kind:literal, $plural:literal, $singular:literal, $namespaced:literal,
     [$($short:literal),*], [$($category:literal),*], status: $status:literal, scale: $scale:literal) => {
        ResourceInfo {
            group: $group, version: $version, kind: $kind, plural: $plural, singular: $singular,
            namespaced: $namespaced, short_names: &[$($short),*], categories: &[$($category),*],
            has_status: $status, has_scale: $scale,
        }
    };
}

/// Every served kind. The order is the order discovery lists them in.
pub static RESOURCES: &[ResourceInfo] = &[
    resource!("", "Namespace", "namespaces", "namespace", false, ["ns"], [], status: true, scale: false),
    resource!("", "Pod", "pods", "pod", true, ["po"], ["all"], status: true, scale: false),
    resource!("", "Service", "services", "service", true, ["svc"], ["all"], status: true, scale: false),
    resource!("", "Endpoints", "endpoints", "endpoints", true, ["ep"], [], status: false, scale: false),
    resource!("", "ConfigMap", "configmaps", "configmap", true, ["cm"], [], status: false, scale: false),
    resource!("", "Secret", "secrets", "secret", true, [], [], status: false, scale: false),
    resource!("", "Node", "nodes", "node", false, ["no"], [], status: true, scale: false),
    resource!("", "Event", "events", "event", true, ["ev"], [], status: false, scale: false),
    resource!("", "ServiceAccount", "serviceaccounts", "serviceaccount", true, ["sa"], [], status: false, scale: false),
    resource!("apps", "Deployment", "deployments", "deployment", true, ["deploy"], ["all"], status: true, scale: true),
    resource!("apps", "ReplicaSet", "replicasets", "replicaset", true, ["rs"], ["all"], status: true, scale: true),
    resource!("apps", "DaemonSet", "daemonsets", "daemonset", true, ["ds"], ["all"], status: true, scale: false),
    resource!("batch", "Job", "jobs", "job", true, [], ["all"], status: true, scale: false),
    resource!("batch", "CronJob", "cronjobs", "cronjob", true, ["cj"], ["all"], status: true, scale: false),
    resource!("networking.k8s.io", "Ingress", "ingresses", "ingress", true, ["ing"], [], status: true, scale: false),
    resource!("networking.k8s.io", "IngressClass", "ingressclasses", "ingressclass", false, [], [], status: false, scale: false),
    resource!("discovery.k8s.io", "EndpointSlice", "endpointslices", "endpointslice", true, [], [], status: false, scale: false),
    resource!("coordination.k8s.io", "Lease", "leases", "lease", true, [], [], status: false, scale: false),
    resource!("rbac.authorization.k8s.io", "Role", "roles", "role", true, [], [], status: false, scale: false),
    resource!("rbac.authorization.k8s.io", "ClusterRole", "clusterroles", "clusterrole", false, [], [], status: false, scale: false),
    resource!("rbac.authorization.k8s.io", "RoleBinding", "rolebindings", "rolebinding", true, [], [], status: false, scale: false),
    resource!("rbac.authorization.k8s.io", "ClusterRoleBinding", "clusterrolebindings", "clusterrolebinding", false, [], [], status: false, scale: false),
    resource!("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", "horizontalpodautoscaler", true, ["hpa"], ["all"], status: true, scale: false),
];

/// The kind served at `group`/`version`/`plural`.
pub fn by_path(group: &str, version: &str, plural: &str) -> Option<&'static ResourceInfo> {
    RESOURCES.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The kind named by an object's `apiVersion` and `kind`.
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceInfo> {
    RESOURCES.iter().find(|r| r.kind == kind && r.api_version() == api_version)
}

/// The kind a user means by `name` on the command line: plural, singular, short name or kind,
/// case-insensitively, optionally qualified by group (`deployments.apps`).
pub fn by_name(name: &str) -> Option<&'static ResourceInfo> {
    let name = name.to_ascii_lowercase();
    let (base, group) = match name.split_once('.') {
        Some((base, group)) => (base.to_owned(), Some(group.to_owned())),
        None => (name.clone(), None),
    };
    RESOURCES.iter().find(|r| {
        let names_match = r.plural == base
            || r.singular == base
            || r.kind.to_ascii_lowercase() == base
            || r.short_names.contains(&base.as_str());
        names_match && group.as_deref().is_none_or(|group| group == r.group)
    })
}

/// The groups served under `/apis`, in discovery order.
pub fn groups() -> Vec<&'static str> {
    let mut groups: Vec<&'static str> = Vec::new();
    for resource in RESOURCES {
        if !resource.group.is_empty() && !groups.contains(&resource.group) {
            groups.push(resource.group);
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_like_kubectl() {
        assert_eq!(by_name("deploy").map(|r| r.kind), Some("Deployment"));
        assert_eq!(by_name("Deployments.apps").map(|r| r.kind), Some("Deployment"));
        assert_eq!(by_name("po").map(|r| r.kind), Some("Pod"));
        assert_eq!(by_name("hpa").map(|r| r.api_version()), Some("autoscaling/v2".to_owned()));
        assert_eq!(by_name("deployments.batch"), None);
        assert_eq!(by_kind("apps/v1", "ReplicaSet").map(|r| r.group_resource()), Some("replicasets.apps".to_owned()));
    }

    #[test]
    fn every_kind_has_a_k8s_openapi_schema() {
        for resource in RESOURCES {
            assert!(crate::admission::has_schema(resource), "{} has no schema", resource.kind);
        }
    }
}
