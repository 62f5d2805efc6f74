//! Who a request to the Kubernetes API is from, and what they may do.
//!
//! Two credentials open the API:
//! - **The admin token** (the admin kubeconfig) is the cluster's administrator: user
//!   `shoal-admin` in group `system:masters`. Everything is allowed.
//! - **The node token**, which every node agent holds (user `shoal-node`, group
//!   `system:nodes`), opens only what a node agent does: the rules in [`NODE_RULES`]. A node
//!   reads pods, Services, EndpointSlices, Ingresses and the ConfigMaps and Secrets its pods
//!   use; it registers and heartbeats nodes (the Node and its Lease in `kube-node-lease`),
//!   reports pod status and events, and finishes pod deletions. It cannot create or change
//!   workloads, Services, Secrets or ConfigMaps, bind pods, or read pod logs, so a node that is
//!   taken over cannot start pods (privileged ones included) or rewrite the cluster.
//!
//! What the node token still allows: reading every Secret and ConfigMap, and writing any
//! node's status. All nodes share the token, so the API cannot tell which pods are a node's
//! own; Kubernetes' Node authorizer narrows this with a credential per node, which Shoal does
//! not have yet.
//!
//! `kubectl auth whoami`, `kubectl auth can-i` and `kubectl auth can-i --list` ask through
//! SelfSubjectReview, SelfSubjectAccessReview and SelfSubjectRulesReview; [`review`] answers
//! them from the same rules that [`authorize`] enforces.

use http::{HeaderMap, Method};
use serde_json::{Value, json};
use shoal_api::ApiError;

use crate::request::Target;

/// Who sent a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    /// The admin token: everything is allowed.
    Admin,
    /// The node token: [`NODE_RULES`].
    Node,
}

impl Identity {
    /// The user name, as `kubectl auth whoami` prints it.
    pub fn username(self) -> &'static str {
        match self {
            Identity::Admin => "shoal-admin",
            Identity::Node => "shoal-node",
        }
    }

    pub fn groups(self) -> &'static [&'static str] {
        match self {
            Identity::Admin => &["system:masters", "system:authenticated"],
            Identity::Node => &["system:nodes", "system:authenticated"],
        }
    }
}

/// The identity behind the request's bearer token, if it carries a valid one.
pub fn identify(state: &crate::AppState, headers: &HeaderMap) -> Option<Identity> {
    let token = crate::handlers::bearer_token(headers)?;
    if crate::handlers::constant_time_eq(state.credentials.admin_token.as_bytes(), token) {
        Some(Identity::Admin)
    } else if shoal_api::token::matches(&state.credentials.node_token, token) {
        Some(Identity::Node)
    } else {
        None
    }
}

/// What a request does, in the terms of Kubernetes' authorization attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attributes {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete` or `deletecollection`.
    pub verb: String,
    pub group: String,
    /// The plural (`pods`).
    pub resource: String,
    /// `status`, `log`, … or empty.
    pub subresource: String,
    /// Empty for cluster-scoped kinds and for requests across all namespaces.
    pub namespace: String,
    /// Empty for requests on a collection.
    pub name: String,
}

impl Attributes {
    /// The attributes of a request on a resource path.
    pub fn of(method: &Method, target: &Target, watch: bool) -> Self {
        let named = target.name.is_some();
        let verb = match *method {
            Method::GET | Method::HEAD if named => "get",
            Method::GET | Method::HEAD if watch => "watch",
            Method::GET | Method::HEAD => "list",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE if named => "delete",
            Method::DELETE => "deletecollection",
            _ => "",
        };
        let verb = if verb.is_empty() { method.as_str().to_ascii_lowercase() } else { verb.to_owned() };
        Self {
            verb,
            group: target.info.group.to_owned(),
            resource: target.info.plural.to_owned(),
            subresource: target.subresource.clone().unwrap_or_default(),
            namespace: target.namespace.clone().unwrap_or_default(),
            name: target.name.clone().unwrap_or_default(),
        }
    }

    /// `pods` or `pods/status`, as rules name resources.
    fn resource_path(&self) -> String {
        if self.subresource.is_empty() { self.resource.clone() } else { format!("{}/{}", self.resource, self.subresource) }
    }
}

/// One grant: these verbs on these resources of these groups, anywhere or in one namespace.
#[derive(Debug)]
pub struct Rule {
    pub verbs: &'static [&'static str],
    pub groups: &'static [&'static str],
    /// Plurals, or `plural/subresource`.
    pub resources: &'static [&'static str],
    /// Only in this namespace, when set.
    pub namespace: Option<&'static str>,
}

impl Rule {
    fn allows(&self, request: &Attributes) -> bool {
        self.verbs.contains(&request.verb.as_str())
            && self.groups.contains(&request.group.as_str())
            && self.resources.contains(&request.resource_path().as_str())
            && self.namespace.is_none_or(|namespace| namespace == request.namespace)
    }
}

const READ: &[&str] = &["get", "list", "watch"];

/// What the node token may do: exactly the calls of a node agent (and of `shoal agent
/// --hollow-nodes`), and the self reviews everyone may make.
pub static NODE_RULES: &[Rule] = &[
    // The pods to run and what they reference; the Service proxy's and ingress router's inputs.
    Rule { verbs: READ, groups: &[""], resources: &["pods", "services", "endpoints", "nodes", "namespaces", "configmaps", "secrets"], namespace: None },
    Rule { verbs: READ, groups: &["discovery.k8s.io"], resources: &["endpointslices"], namespace: None },
    Rule { verbs: READ, groups: &["networking.k8s.io"], resources: &["ingresses", "ingressclasses"], namespace: None },
    // Registering the node and reporting its status.
    Rule { verbs: &["create", "update", "patch"], groups: &[""], resources: &["nodes", "nodes/status"], namespace: None },
    Rule { verbs: &["get", "create", "update", "patch"], groups: &["coordination.k8s.io"], resources: &["leases"], namespace: Some("kube-node-lease") },
    // The pods' status and events, and the end of a graceful deletion.
    Rule { verbs: &["get", "update", "patch"], groups: &[""], resources: &["pods/status"], namespace: None },
    Rule { verbs: &["delete"], groups: &[""], resources: &["pods"], namespace: None },
    Rule { verbs: &["create", "update", "patch"], groups: &["", "events.k8s.io"], resources: &["events"], namespace: None },
    Rule { verbs: &["create"], groups: &["authentication.k8s.io"], resources: &["selfsubjectreviews"], namespace: None },
    Rule { verbs: &["create"], groups: &["authorization.k8s.io"], resources: &["selfsubjectaccessreviews", "selfsubjectrulesreviews"], namespace: None },
];

/// The paths outside resources that every authenticated caller may read.
const DISCOVERY_PATHS: &[&str] = &["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/readyz", "/version", "/version/", "/openapi", "/openapi/*"];

/// Whether `identity` may make `request`: `Err` holds the 403 to answer.
pub fn authorize(identity: Identity, request: &Attributes) -> Result<(), ApiError> {
    match identity {
        Identity::Admin => Ok(()),
        Identity::Node if NODE_RULES.iter().any(|rule| rule.allows(request)) => Ok(()),
        Identity::Node => Err(forbidden(identity, request)),
    }
}

/// A 403 worded as kube-apiserver words it, with what to do instead.
fn forbidden(identity: Identity, request: &Attributes) -> ApiError {
    let group_resource = if request.group.is_empty() { request.resource.clone() } else { format!("{}.{}", request.resource, request.group) };
    let subject = if request.name.is_empty() { group_resource } else { format!("{group_resource} \"{}\"", request.name) };
    let scope = if request.namespace.is_empty() { "at the cluster scope".to_owned() } else { format!("in the namespace \"{}\"", request.namespace) };
    let message = format!(
        "{subject} is forbidden: User \"{}\" cannot {} resource \"{}\" in API group \"{}\" {scope}: the node token opens only what node agents do; use the admin kubeconfig",
        identity.username(),
        request.verb,
        request.resource_path(),
        request.group,
    );
    ApiError::forbidden(message).with_details(json!({"name": request.name, "group": request.group, "kind": request.resource}))
}

/// A self review kind: `(group, kind, plural)`, all at version `v1`, cluster-scoped, create only.
pub static REVIEWS: &[(&str, &str, &str)] = &[
    ("authentication.k8s.io", "SelfSubjectReview", "selfsubjectreviews"),
    ("authorization.k8s.io", "SelfSubjectAccessReview", "selfsubjectaccessreviews"),
    ("authorization.k8s.io", "SelfSubjectRulesReview", "selfsubjectrulesreviews"),
];

/// The groups that serve only self reviews, in discovery order.
pub fn review_groups() -> Vec<&'static str> {
    let mut groups: Vec<&'static str> = Vec::new();
    for (group, _, _) in REVIEWS {
        if !groups.contains(group) {
            groups.push(group);
        }
    }
    groups
}

/// The self review kind a path names (`/apis/authorization.k8s.io/v1/selfsubjectaccessreviews`).
pub fn review_kind(path: &str) -> Option<&'static (&'static str, &'static str, &'static str)> {
    let rest = path.trim_end_matches('/').strip_prefix("/apis/")?;
    let mut parts = rest.split('/');
    let (group, version, plural) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || version != "v1" {
        return None;
    }
    REVIEWS.iter().find(|(g, _, p)| *g == group && *p == plural)
}

/// Answers a self review posted by `identity`: the request object with its `status` filled.
pub fn review(identity: Identity, kind: &(&str, &str, &str), method: &Method, mut object: Value) -> Result<Value, ApiError> {
    let (group, kind, _) = *kind;
    if *method != Method::POST {
        return Err(ApiError::method_not_allowed(method.as_str()));
    }
    let api_version = format!("{group}/v1");
    if !object.is_object() {
        return Err(ApiError::bad_request(format!("a {kind} must be a JSON object")));
    }
    for (field, expected) in [("apiVersion", api_version.as_str()), ("kind", kind)] {
        if let Some(sent) = object.get(field).and_then(Value::as_str)
            && sent != expected
        {
            return Err(ApiError::bad_request(format!("the body is a {sent} ({field}), not a {expected}")));
        }
    }
    let status = match kind {
        "SelfSubjectReview" => json!({"userInfo": {"username": identity.username(), "groups": identity.groups()}}),
        "SelfSubjectAccessReview" => access_review(identity, &object["spec"])?,
        _ => rules_review(identity, object["spec"]["namespace"].as_str().unwrap_or_default()),
    };
    object["apiVersion"] = json!(api_version);
    object["kind"] = json!(kind);
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    object["status"] = status;
    Ok(object)
}

fn access_review(identity: Identity, spec: &Value) -> Result<Value, ApiError> {
    let text = |value: &Value, field: &str| value[field].as_str().unwrap_or_default().to_owned();
    let (allowed, reason) = if let Some(attributes) = spec.get("resourceAttributes").filter(|a| a.is_object()) {
        let request = Attributes {
            verb: text(attributes, "verb"),
            group: text(attributes, "group"),
            resource: text(attributes, "resource"),
            subresource: text(attributes, "subresource"),
            namespace: text(attributes, "namespace"),
            name: text(attributes, "name"),
        };
        if request.verb.is_empty() || request.resource.is_empty() {
            return Err(ApiError::bad_request("spec.resourceAttributes needs a verb and a resource"));
        }
        match (identity, authorize(identity, &request)) {
            (Identity::Admin, _) => (true, "shoal-admin (system:masters) may do everything".to_owned()),
            (_, Ok(())) => (true, format!("node agents may {} {}", request.verb, request.resource_path())),
            (_, Err(_)) => (false, "the node token opens only what node agents do".to_owned()),
        }
    } else if let Some(attributes) = spec.get("nonResourceAttributes").filter(|a| a.is_object()) {
        let (path, verb) = (text(attributes, "path"), text(attributes, "verb"));
        let discovery = verb == "get" && DISCOVERY_PATHS.iter().any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => path == *pattern,
        });
        match identity {
            Identity::Admin => (true, "shoal-admin (system:masters) may do everything".to_owned()),
            Identity::Node if discovery => (true, "every authenticated user may read discovery, version and health".to_owned()),
            Identity::Node => (false, "the node token opens only what node agents do".to_owned()),
        }
    } else {
        return Err(ApiError::bad_request("spec needs resourceAttributes or nonResourceAttributes"));
    };
    Ok(json!({"allowed": allowed, "reason": reason}))
}

fn rules_review(identity: Identity, namespace: &str) -> Value {
    let (resource_rules, non_resource_rules): (Vec<Value>, Vec<Value>) = match identity {
        Identity::Admin => (vec![json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]})], vec![json!({"verbs": ["*"], "nonResourceURLs": ["*"]})]),
        Identity::Node => (
            NODE_RULES
                .iter()
                .filter(|rule| rule.namespace.is_none_or(|only| only == namespace))
                .map(|rule| json!({"verbs": rule.verbs, "apiGroups": rule.groups, "resources": rule.resources}))
                .collect(),
            vec![json!({"verbs": ["get"], "nonResourceURLs": DISCOVERY_PATHS})],
        ),
    };
    json!({"resourceRules": resource_rules, "nonResourceRules": non_resource_rules, "incomplete": false})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(verb: &str, group: &str, resource: &str, subresource: &str, namespace: &str) -> Attributes {
        Attributes { verb: verb.into(), group: group.into(), resource: resource.into(), subresource: subresource.into(), namespace: namespace.into(), name: String::new() }
    }

    #[test]
    fn nodes_may_do_what_node_agents_do() {
        for allowed in [
            request("watch", "", "pods", "", ""),
            request("list", "", "secrets", "", ""),
            request("get", "", "configmaps", "", "default"),
            request("watch", "discovery.k8s.io", "endpointslices", "", ""),
            request("list", "networking.k8s.io", "ingressclasses", "", ""),
            request("create", "", "nodes", "", ""),
            request("update", "", "nodes", "status", ""),
            request("patch", "coordination.k8s.io", "leases", "", "kube-node-lease"),
            request("patch", "", "pods", "status", "default"),
            request("delete", "", "pods", "", "default"),
            request("create", "", "events", "", "default"),
            request("create", "authorization.k8s.io", "selfsubjectaccessreviews", "", ""),
        ] {
            assert!(authorize(Identity::Node, &allowed).is_ok(), "{allowed:?}");
        }
    }

    #[test]
    fn nodes_may_not_change_workloads_or_secrets() {
        for denied in [
            request("create", "", "pods", "", "default"),
            request("update", "", "pods", "", "default"),
            request("create", "", "pods", "binding", "default"),
            request("get", "", "pods", "log", "default"),
            request("create", "apps", "deployments", "", "default"),
            request("list", "apps", "deployments", "", "default"),
            request("create", "", "secrets", "", "default"),
            request("delete", "", "configmaps", "", "default"),
            request("deletecollection", "", "pods", "", "default"),
            request("delete", "", "nodes", "", ""),
            request("update", "coordination.k8s.io", "leases", "", "kube-system"),
            request("update", "", "services", "", "default"),
        ] {
            let error = authorize(Identity::Node, &denied).expect_err(&format!("{denied:?} is denied"));
            assert_eq!(error.code, 403);
        }
        for anything in [request("create", "apps", "deployments", "", "default"), request("delete", "", "nodes", "", "")] {
            assert!(authorize(Identity::Admin, &anything).is_ok());
        }
    }

    #[test]
    fn a_denial_says_who_what_and_where_as_kubernetes_does() {
        let mut denied = request("create", "apps", "deployments", "", "shop");
        let error = authorize(Identity::Node, &denied).expect_err("denied");
        assert!(error.message.starts_with(r#"deployments.apps is forbidden: User "shoal-node" cannot create resource "deployments" in API group "apps" in the namespace "shop""#), "{}", error.message);
        denied = Attributes { name: "p".into(), ..request("get", "", "pods", "log", "") };
        let error = authorize(Identity::Node, &denied).expect_err("denied");
        assert!(error.message.starts_with(r#"pods "p" is forbidden: User "shoal-node" cannot get resource "pods/log" in API group "" at the cluster scope"#), "{}", error.message);
    }

    #[test]
    fn the_verb_follows_the_method_and_the_target() {
        let pods = shoal_api::resources::by_name("pods").expect("pods");
        let target = |name: Option<&str>| Target { info: pods, namespace: Some("default".into()), name: name.map(Into::into), subresource: None };
        assert_eq!(Attributes::of(&Method::GET, &target(None), false).verb, "list");
        assert_eq!(Attributes::of(&Method::GET, &target(None), true).verb, "watch");
        assert_eq!(Attributes::of(&Method::GET, &target(Some("p")), false).verb, "get");
        assert_eq!(Attributes::of(&Method::DELETE, &target(None), false).verb, "deletecollection");
        assert_eq!(Attributes::of(&Method::DELETE, &target(Some("p")), false).verb, "delete");
        assert_eq!(Attributes::of(&Method::PATCH, &target(Some("p")), false).verb, "patch");
    }

    #[test]
    fn reviews_answer_from_the_same_rules() {
        let kind = review_kind("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews").expect("served");
        let ask = |identity, verb: &str, group: &str, resource: &str| {
            let body = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": {"resourceAttributes": {"namespace": "default", "verb": verb, "group": group, "resource": resource}}});
            review(identity, kind, &Method::POST, body).expect("answered")["status"]["allowed"].clone()
        };
        assert_eq!(ask(Identity::Node, "watch", "", "pods"), json!(true));
        assert_eq!(ask(Identity::Node, "create", "apps", "deployments"), json!(false));
        assert_eq!(ask(Identity::Admin, "create", "apps", "deployments"), json!(true));
        let whoami = review(Identity::Node, review_kind("/apis/authentication.k8s.io/v1/selfsubjectreviews").expect("served"), &Method::POST, json!({})).expect("answered");
        assert_eq!(whoami["status"]["userInfo"]["username"], "shoal-node");
        assert_eq!(whoami["kind"], "SelfSubjectReview");
        let rules = review(Identity::Node, review_kind("/apis/authorization.k8s.io/v1/selfsubjectrulesreviews").expect("served"), &Method::POST, json!({"spec": {"namespace": "default"}})).expect("answered");
        let listed = rules["status"]["resourceRules"].as_array().expect("rules");
        assert!(listed.iter().all(|rule| rule["resources"] != json!(["leases"])), "the lease rule holds only in kube-node-lease");
        assert!(review(Identity::Node, kind, &Method::GET, json!({})).is_err());
        assert!(review(Identity::Node, kind, &Method::POST, json!({"kind": "Pod"})).is_err());
        assert!(review(Identity::Node, kind, &Method::POST, json!({"spec": {}})).is_err());
        assert!(review_kind("/apis/authorization.k8s.io/v1beta1/selfsubjectaccessreviews").is_none());
    }
}
