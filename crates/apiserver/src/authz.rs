//! Who a request to the Kubernetes API is from, and what they may do.
//!
//! Three kinds of credential open the API:
//! - **The admin token** (the admin kubeconfig) is the cluster's administrator: user
//!   `shoal-admin` in group `system:masters`. Everything is allowed.
//! - **A node's own credential** (user `system:node:NAME`, group `system:nodes`), which an agent
//!   receives when it joins (`tokens::issue_node_credential`), opens what that node's agent
//!   does: [`NODE_RULES`], narrowed as Kubernetes' Node authorizer and NodeRestriction narrow a
//!   kubelet (see [`node_restriction`]). It reads pods, Services, EndpointSlices and Ingresses;
//!   of Secrets and ConfigMaps only those a pod bound to it uses (and TLS Secrets, which its
//!   ingress router serves); it writes only its own Node and Lease, and the status and
//!   deletion of the pods bound to it; and it requests tokens only for the ServiceAccounts its
//!   pods run as, bound to those pods.
//! - **The shared node token** (user `shoal-node`, group `system:nodes`) is the bootstrap
//!   secret agents join with, and the credential of the server's own node and of hollow nodes.
//!   It opens [`NODE_RULES`] for any node.
//!
//! - **A ServiceAccount token** (`kubectl create token`, [`crate::serviceaccounts`]) is user
//!   `system:serviceaccount:NS:NAME` in groups `system:serviceaccounts`,
//!   `system:serviceaccounts:NS` and `system:authenticated`; what it may do is what the Roles
//!   and ClusterRoles bound to it grant ([`crate::rbac`]). The admin, and whoever RBAC grants
//!   `impersonate`, may also act as another user and groups (`kubectl --as jane --as-group
//!   devs`), judged the same way ([`impersonate`]).
//!
//! None of the node credentials lets a node create or change workloads, Services, Secrets or
//! ConfigMaps, bind pods or read pod logs, so a node that is taken over cannot start pods
//! (privileged ones included) or rewrite the cluster; with its own credential it cannot read
//! other nodes' Secrets either.
//!
//! `kubectl auth whoami`, `kubectl auth can-i` and `kubectl auth can-i --list` ask through
//! SelfSubjectReview, SelfSubjectAccessReview and SelfSubjectRulesReview; [`review`] answers
//! them from the same rules that [`authorize`] enforces.

use http::{HeaderMap, Method};
use serde_json::{Value, json};
use shoal_api::ApiError;

use crate::request::Target;

tokio::task_local! {
    /// The identity the current API request acts as (set around each request's handling), for
    /// checks deep in a write: RBAC's escalation rule.
    pub static REQUESTER: Identity;
}

/// Who sent a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// The admin token: everything is allowed.
    Admin,
    /// The shared node token: [`NODE_RULES`], for any node.
    Nodes,
    /// A node's own credential: [`NODE_RULES`] for this node only.
    Node(String),
    /// A ServiceAccount (by its token) or an impersonated user: RBAC decides.
    User(crate::rbac::Subject),
}

impl Identity {
    /// The user name, as `kubectl auth whoami` prints it.
    pub fn username(&self) -> String {
        match self {
            Identity::Admin => "shoal-admin".into(),
            Identity::Nodes => "shoal-node".into(),
            Identity::Node(name) => format!("system:node:{name}"),
            Identity::User(subject) => subject.user.clone(),
        }
    }

    pub fn groups(&self) -> Vec<String> {
        match self {
            Identity::Admin => vec!["system:masters".into(), "system:authenticated".into()],
            Identity::Nodes | Identity::Node(_) => vec!["system:nodes".into(), "system:authenticated".into()],
            Identity::User(subject) => subject.groups.clone(),
        }
    }

    /// A ServiceAccount's identity, with the groups Kubernetes gives every account.
    pub fn service_account(namespace: &str, name: &str) -> Self {
        Identity::User(crate::rbac::Subject {
            user: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec!["system:serviceaccounts".into(), format!("system:serviceaccounts:{namespace}"), "system:authenticated".into()],
        })
    }
}

/// The identity behind the request's bearer token, if it carries a valid one.
pub fn identify(state: &crate::AppState, headers: &HeaderMap) -> Option<Identity> {
    identify_token(state, crate::handlers::bearer_token(headers)?)
}

/// The identity a token stands for: the one place the admin token, the shared node token and
/// nodes' own credentials are recognised (the API, `/internal/…` and the registry all ask here).
pub fn identify_token(state: &crate::AppState, token: &[u8]) -> Option<Identity> {
    if crate::handlers::constant_time_eq(state.credentials.admin_token.as_bytes(), token) {
        Some(Identity::Admin)
    } else if shoal_api::token::matches(&state.credentials.node_token, token) {
        Some(Identity::Nodes)
    } else if crate::serviceaccounts::looks_like_jwt(token) {
        let claims = state.token_signer.verify(std::str::from_utf8(token).ok()?)?;
        match crate::serviceaccounts::check_claims(&claims, jiff::Timestamp::now().as_second(), state) {
            Ok(account) => Some(Identity::service_account(&account.namespace, &account.name)),
            Err(reason) => {
                tracing::debug!(%reason, "a ServiceAccount token was refused");
                None
            }
        }
    } else {
        crate::tokens::verify_node_credential(state, token).map(Identity::Node)
    }
}

/// The identity a request acts as: its sender's, or, with `Impersonate-User` (`kubectl --as`)
/// and `Impersonate-Group` (`--as-group`), the user and groups it names.
///
/// Who may ask, as kube-apiserver's impersonation filter decides: the admin, and anyone granted
/// the `impersonate` verb on the user (`users`, cluster-scoped, by name) or, for
/// `system:serviceaccount:NS:NAME`, on that account (`serviceaccounts` NAME in namespace NS),
/// and on each group named (`groups`, by name). The bootstrap `edit` and `admin` ClusterRoles
/// grant it on ServiceAccounts, as Kubernetes' do.
///
/// `shoal-admin`, `shoal-node` and `system:node:NAME` are Shoal's own credentials;
/// `system:serviceaccount:NS:NAME` is that account, in its groups unless groups are named; any
/// other name is a user judged by RBAC, in the groups named and `system:authenticated`. Other
/// impersonation headers (uid, extra) are refused rather than ignored, so a request never runs
/// as someone it did not mean to be.
pub fn impersonate(identity: Identity, headers: &HeaderMap, lookup: &dyn Lookup) -> Result<Identity, ApiError> {
    let mut others = headers.keys().filter(|name| name.as_str().starts_with("impersonate-") && name.as_str() != "impersonate-user" && name.as_str() != "impersonate-group");
    if let Some(other) = others.next() {
        return Err(ApiError::forbidden(format!("{other} is not supported: impersonate a user (kubectl --as) and groups (--as-group)")));
    }
    let groups: Vec<String> = headers.get_all("impersonate-group").iter().map(|value| value.to_str().unwrap_or_default().to_owned()).collect();
    let Some(user) = headers.get("impersonate-user") else {
        if groups.is_empty() {
            return Ok(identity);
        }
        return Err(ApiError::bad_request("Impersonate-Group needs Impersonate-User (kubectl --as-group needs --as)"));
    };
    let user = user.to_str().unwrap_or_default();
    let own = match user {
        "shoal-admin" => Some(Identity::Admin),
        "shoal-node" => Some(Identity::Nodes),
        _ => match user.strip_prefix("system:node:") {
            Some(node) if shoal_api::validation::is_dns1123_subdomain(node) => Some(Identity::Node(node.to_owned())),
            Some(_) => return Err(ApiError::forbidden(format!("{user:?} names no valid node"))),
            None => None,
        },
    };
    if let Some(own) = own {
        if !groups.is_empty() {
            return Err(ApiError::forbidden(format!("{user} is one of Shoal's own credentials; its groups are fixed (drop --as-group)")));
        }
        may_impersonate(&identity, ("users", "", user), &[], lookup)?;
        return Ok(own);
    }
    if user.is_empty() {
        return Err(ApiError::bad_request("Impersonate-User is empty"));
    }
    let account = match user.strip_prefix("system:serviceaccount:").map(|rest| rest.split_once(':')) {
        Some(Some((namespace, name))) if !namespace.is_empty() && !name.is_empty() && !name.contains(':') => Some((namespace, name)),
        Some(_) => return Err(ApiError::forbidden(format!("{user:?} is not system:serviceaccount:NAMESPACE:NAME"))),
        None => None,
    };
    may_impersonate(&identity, account.map_or(("users", "", user), |(namespace, name)| ("serviceaccounts", namespace, name)), &groups, lookup)?;
    // An account's groups are fixed, so they are its groups unless others are named.
    if let Some((namespace, name)) = account
        && groups.is_empty()
    {
        return Ok(Identity::service_account(namespace, name));
    }
    let mut subject = crate::rbac::Subject { user: user.to_owned(), groups: Vec::new() };
    for group in groups.into_iter().chain(["system:authenticated".to_owned()]) {
        if !subject.groups.contains(&group) {
            subject.groups.push(group);
        }
    }
    Ok(Identity::User(subject))
}

/// Whether `identity` may act as `(resource, namespace, name)` (the user, or the
/// ServiceAccount) in `groups`: `Err` holds the 403 kube-apiserver answers (`users "jane" is
/// forbidden: User "…" cannot impersonate resource "users" in API group "" at the cluster
/// scope`).
fn may_impersonate(identity: &Identity, (resource, namespace, name): (&str, &str, &str), groups: &[String], lookup: &dyn Lookup) -> Result<(), ApiError> {
    if *identity == Identity::Admin {
        return Ok(());
    }
    let attributes = |resource: &str, namespace: &str, name: &str| Attributes {
        verb: "impersonate".into(),
        group: String::new(),
        resource: resource.into(),
        subresource: String::new(),
        namespace: namespace.into(),
        name: name.into(),
        field_selector: String::new(),
    };
    authorize(identity, &attributes(resource, namespace, name), lookup)?;
    for group in groups {
        authorize(identity, &attributes("groups", "", group), lookup)?;
    }
    Ok(())
}

/// What authorizing a node's own requests needs to know of the stored pods.
pub trait Lookup: crate::rbac::Policies {
    /// The node pod `namespace/name` is bound to (empty while unbound), `None` if there is no
    /// such pod.
    fn pod_node(&self, namespace: &str, name: &str) -> Option<String>;
    /// Whether a pod bound to `node` in `namespace` uses `resource` (`secrets` or `configmaps`)
    /// `name`.
    fn used_by_pod_on(&self, node: &str, namespace: &str, resource: &str, name: &str) -> bool;
}

impl Lookup for crate::AppState {
    fn pod_node(&self, namespace: &str, name: &str) -> Option<String> {
        let pod = self.store.get_shared(&shoal_store::ObjectKey::new("pods", namespace, name)).ok()??;
        Some(pod["spec"]["nodeName"].as_str().unwrap_or_default().to_owned())
    }

    fn used_by_pod_on(&self, node: &str, namespace: &str, resource: &str, name: &str) -> bool {
        let filter = |pod: &Value| pod["spec"]["nodeName"] == node && pod_uses(pod, resource, name);
        self.store.list("pods", Some(namespace), None, Some(1), &filter).is_ok_and(|listed| !listed.items.is_empty())
    }
}

/// Whether `pod` uses `resource` (`secrets` or `configmaps`) `name`: in a volume (projected
/// ones included), a container's environment, or (Secrets) its image pull secrets. For
/// `serviceaccounts`: whether the pod runs as that account.
pub fn pod_uses(pod: &Value, resource: &str, name: &str) -> bool {
    let spec = &pod["spec"];
    if resource == "serviceaccounts" {
        return spec["serviceAccountName"].as_str().unwrap_or("default") == name;
    }
    let items = |value: &Value| value.as_array().cloned().unwrap_or_default();
    let (volume_key, volume_name, projected_key, env_key, env_from_key) = match resource {
        "secrets" => ("secret", "secretName", "secret", "secretKeyRef", "secretRef"),
        "configmaps" => ("configMap", "name", "configMap", "configMapKeyRef", "configMapRef"),
        _ => return false,
    };
    let in_volumes = items(&spec["volumes"]).iter().any(|volume| {
        volume[volume_key][volume_name] == name || items(&volume["projected"]["sources"]).iter().any(|source| source[projected_key]["name"] == name)
    });
    let containers = ["initContainers", "containers", "ephemeralContainers"].into_iter().flat_map(|key| items(&spec[key]));
    let in_containers = containers.into_iter().any(|container| {
        items(&container["env"]).iter().any(|env| env["valueFrom"][env_key]["name"] == name) || items(&container["envFrom"]).iter().any(|source| source[env_from_key]["name"] == name)
    });
    let pulls = resource == "secrets" && items(&spec["imagePullSecrets"]).iter().any(|secret| secret["name"] == name);
    in_volumes || in_containers || pulls
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
    /// Empty for requests on a collection. (For a create, the handler fills in the new
    /// object's name.)
    pub name: String,
    /// The `fieldSelector` of a list or watch.
    pub field_selector: String,
}

/// The name a field selector requires (`metadata.name=NAME` or `==`, among other terms), if a
/// valid path segment.
pub fn selected_name(field_selector: &str) -> Option<String> {
    field_selector.split(',').find_map(|term| {
        let (field, value) = term.split_once("==").or_else(|| term.split_once('=')).filter(|(field, _)| !field.ends_with('!'))?;
        (field.trim() == "metadata.name").then(|| value.trim().to_owned())
    }).filter(|name| !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '%']))
}

impl Attributes {
    /// The attributes of a request on a resource path.
    pub fn of(method: &Method, target: &Target, watch: bool, field_selector: Option<&str>) -> Self {
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
            // As kube's RequestInfo: a list or watch of one object by `metadata.name` names it,
            // so RBAC's resourceNames and the node authorizer judge it as they judge a get.
            name: target.name.clone().or_else(|| field_selector.and_then(selected_name)).unwrap_or_default(),
            field_selector: field_selector.unwrap_or_default().to_owned(),
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
    // The tokens of the pods' projected ServiceAccount volumes (bound to the pod; see
    // `serviceaccounts::node_may_request`).
    Rule { verbs: &["create"], groups: &[""], resources: &["serviceaccounts/token"], namespace: None },
    Rule { verbs: &["create"], groups: &["authentication.k8s.io"], resources: &["selfsubjectreviews"], namespace: None },
    Rule { verbs: &["create"], groups: &["authorization.k8s.io"], resources: &["selfsubjectaccessreviews", "selfsubjectrulesreviews"], namespace: None },
];

/// The paths outside resources that every authenticated caller may read.
const DISCOVERY_PATHS: &[&str] = &["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/readyz", "/version", "/version/", "/openapi", "/openapi/*"];

/// Whether `identity` may make `request`: `Err` holds the 403 to answer.
pub fn authorize(identity: &Identity, request: &Attributes, lookup: &dyn Lookup) -> Result<(), ApiError> {
    match denial(identity, request, lookup) {
        None => Ok(()),
        Some(reason) => Err(forbidden(identity, request, &reason)),
    }
}

/// Why `identity` may not make `request`; `None` when it may.
fn denial(identity: &Identity, request: &Attributes, lookup: &dyn Lookup) -> Option<String> {
    match identity {
        Identity::Admin => None,
        Identity::User(subject) if subject.groups.iter().any(|g| g == "system:masters") => None,
        Identity::User(subject) => match crate::rbac::allowed_by(lookup, subject, request) {
            Some(_) => None,
            None => Some(String::new()),
        },
        _ if !NODE_RULES.iter().any(|rule| rule.allows(request)) => Some("node credentials open only what node agents do; use the admin kubeconfig".into()),
        Identity::Nodes => None,
        Identity::Node(node) => node_restriction(node, request, lookup).err(),
    }
}

/// What a node's own credential may not do beyond [`NODE_RULES`]: Kubernetes' Node authorizer
/// and NodeRestriction, as far as Shoal's node agent needs them.
fn node_restriction(node: &str, request: &Attributes, lookup: &dyn Lookup) -> Result<(), String> {
    let (namespace, name) = (request.namespace.as_str(), request.name.as_str());
    let own = |what: &str| if name == node { Ok(()) } else { Err(format!("node {node} may change only its own {what}")) };
    match (request.group.as_str(), request.resource.as_str(), request.subresource.as_str(), request.verb.as_str()) {
        ("", resource @ ("secrets" | "configmaps"), "", "get" | "list" | "watch") if !name.is_empty() => {
            if lookup.used_by_pod_on(node, namespace, resource, name) {
                Ok(())
            } else {
                Err(format!("no pod bound to node {node} uses it"))
            }
        }
        // The ingress router follows TLS Secrets for the Ingresses it serves.
        ("", "secrets", "", "list" | "watch") if request.field_selector.trim() == "type=kubernetes.io/tls" => Ok(()),
        ("", "secrets" | "configmaps", "", _) => Err(format!("node {node} reads only the ones its pods use, one at a time by name (and TLS Secrets, listed with fieldSelector=type=kubernetes.io/tls)")),
        ("", "serviceaccounts", "token", "create") => {
            if lookup.used_by_pod_on(node, namespace, "serviceaccounts", name) {
                Ok(())
            } else {
                Err(format!("no pod bound to node {node} runs as it"))
            }
        }
        ("", "nodes", _, "create" | "update" | "patch") => own("Node"),
        ("coordination.k8s.io", "leases", _, _) => own("Lease"),
        ("", "pods", "status", "update" | "patch") | ("", "pods", "", "delete") => match lookup.pod_node(namespace, name) {
            Some(bound) if bound != node => Err(format!("the pod is bound to {}, not to node {node}", if bound.is_empty() { "no node".to_owned() } else { format!("node {bound}") })),
            // A pod that is not there: the handler answers 404.
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

/// A 403 worded as kube-apiserver words it, with the reason.
fn forbidden(identity: &Identity, request: &Attributes, reason: &str) -> ApiError {
    let group_resource = if request.group.is_empty() { request.resource.clone() } else { format!("{}.{}", request.resource, request.group) };
    let subject = if request.name.is_empty() { group_resource } else { format!("{group_resource} \"{}\"", request.name) };
    let scope = if request.namespace.is_empty() { "at the cluster scope".to_owned() } else { format!("in the namespace \"{}\"", request.namespace) };
    let message = format!(
        "{subject} is forbidden: User \"{}\" cannot {} resource \"{}\" in API group \"{}\" {scope}{}",
        identity.username(),
        request.verb,
        request.resource_path(),
        request.group,
        if reason.is_empty() { String::new() } else { format!(": {reason}") },
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
pub fn review(identity: &Identity, kind: &(&str, &str, &str), method: &Method, mut object: Value, lookup: &dyn Lookup) -> Result<Value, ApiError> {
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
        "SelfSubjectAccessReview" => access_review(identity, &object["spec"], lookup)?,
        _ => rules_review(identity, object["spec"]["namespace"].as_str().unwrap_or_default(), lookup),
    };
    object["apiVersion"] = json!(api_version);
    object["kind"] = json!(kind);
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    object["status"] = status;
    Ok(object)
}

fn access_review(identity: &Identity, spec: &Value, lookup: &dyn Lookup) -> Result<Value, ApiError> {
    let text = |value: &Value, field: &str| value[field].as_str().unwrap_or_default().to_owned();
    let (allowed, reason) = if let Some(attributes) = spec.get("resourceAttributes").filter(|a| a.is_object()) {
        let request = Attributes {
            verb: text(attributes, "verb"),
            group: text(attributes, "group"),
            resource: text(attributes, "resource"),
            subresource: text(attributes, "subresource"),
            namespace: text(attributes, "namespace"),
            name: text(attributes, "name"),
            field_selector: attributes["fieldSelector"]["rawSelector"].as_str().unwrap_or_default().to_owned(),
        };
        if request.verb.is_empty() || request.resource.is_empty() {
            return Err(ApiError::bad_request("spec.resourceAttributes needs a verb and a resource"));
        }
        match identity {
            Identity::Admin => (true, "shoal-admin (system:masters) may do everything".to_owned()),
            Identity::User(subject) if subject.groups.iter().any(|g| g == "system:masters") => (true, "system:masters may do everything".to_owned()),
            Identity::User(subject) => match crate::rbac::allowed_by(lookup, subject, &request) {
                Some(why) => (true, why),
                None => (false, String::new()),
            },
            _ => match denial(identity, &request, lookup) {
                None => (true, format!("node agents may {} {}", request.verb, request.resource_path())),
                Some(reason) => (false, reason),
            },
        }
    } else if let Some(attributes) = spec.get("nonResourceAttributes").filter(|a| a.is_object()) {
        let (path, verb) = (text(attributes, "path"), text(attributes, "verb"));
        let discovery = verb == "get" && DISCOVERY_PATHS.iter().any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => path == *pattern,
        });
        match identity {
            Identity::Admin => (true, "shoal-admin (system:masters) may do everything".to_owned()),
            _ if discovery => (true, "every authenticated user may read discovery, version and health".to_owned()),
            Identity::User(subject) => match crate::rbac::rules_for(lookup, subject, "").into_iter().find(|(rule, _)| crate::rbac::non_resource_allows(rule, &verb, &path)) {
                Some((_, why)) => (true, why),
                None => (false, String::new()),
            },
            _ => (false, "node credentials open only what node agents do".to_owned()),
        }
    } else {
        return Err(ApiError::bad_request("spec needs resourceAttributes or nonResourceAttributes"));
    };
    Ok(json!({"allowed": allowed, "reason": reason}))
}

fn rules_review(identity: &Identity, namespace: &str, lookup: &dyn Lookup) -> Value {
    let (resource_rules, non_resource_rules): (Vec<Value>, Vec<Value>) = match identity {
        Identity::User(subject) => {
            // Every authenticated user may ask who they are and what they may do, and read
            // discovery (kube's system:basic-user and system:discovery).
            let mut resources = vec![
                json!({"verbs": ["create"], "apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"]}),
                json!({"verbs": ["create"], "apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"]}),
            ];
            let mut urls = vec![json!({"verbs": ["get"], "nonResourceURLs": DISCOVERY_PATHS})];
            for (rule, _) in crate::rbac::rules_for(lookup, subject, namespace) {
                if rule["nonResourceURLs"].as_array().is_some_and(|u| !u.is_empty()) {
                    urls.push(json!({"verbs": rule["verbs"], "nonResourceURLs": rule["nonResourceURLs"]}));
                } else {
                    let mut listed = json!({"verbs": rule["verbs"], "apiGroups": rule["apiGroups"], "resources": rule["resources"]});
                    if rule["resourceNames"].as_array().is_some_and(|n| !n.is_empty()) {
                        listed["resourceNames"] = rule["resourceNames"].clone();
                    }
                    resources.push(listed);
                }
            }
            (resources, urls)
        }
        Identity::Admin => (vec![json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]})], vec![json!({"verbs": ["*"], "nonResourceURLs": ["*"]})]),
        Identity::Nodes | Identity::Node(_) => (
            NODE_RULES
                .iter()
                .filter(|rule| rule.namespace.is_none_or(|only| only == namespace))
                .map(|rule| json!({"verbs": rule.verbs, "apiGroups": rule.groups, "resources": rule.resources}))
                .collect(),
            vec![json!({"verbs": ["get"], "nonResourceURLs": DISCOVERY_PATHS})],
        ),
    };
    // A node's own credential is narrowed further than rules can say (its own Node and Lease,
    // the pods bound to it, the Secrets and ConfigMaps they use): the list is a ceiling.
    match identity {
        Identity::Node(node) => json!({
            "resourceRules": resource_rules, "nonResourceRules": non_resource_rules, "incomplete": true,
            "evaluationError": format!("node {node} may further only change its own Node and Lease and the pods bound to it, read only the Secrets and ConfigMaps those pods use, and request tokens only for their ServiceAccounts, bound to them"),
        }),
        _ => json!({"resourceRules": resource_rules, "nonResourceRules": non_resource_rules, "incomplete": false}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(verb: &str, group: &str, resource: &str, subresource: &str, namespace: &str) -> Attributes {
        Attributes { verb: verb.into(), group: group.into(), resource: resource.into(), subresource: subresource.into(), namespace: namespace.into(), name: String::new(), field_selector: String::new() }
    }

    fn named(name: &str, request: Attributes) -> Attributes {
        Attributes { name: name.into(), ..request }
    }

    /// Stored pods, for the unit tests of the rules (the API server looks in the store).
    struct Pods(Vec<Value>);

    impl Lookup for Pods {
        fn pod_node(&self, namespace: &str, name: &str) -> Option<String> {
            let pod = self.0.iter().find(|pod| pod["metadata"]["namespace"] == namespace && pod["metadata"]["name"] == name)?;
            Some(pod["spec"]["nodeName"].as_str().unwrap_or_default().to_owned())
        }

        fn used_by_pod_on(&self, node: &str, namespace: &str, resource: &str, name: &str) -> bool {
            self.0.iter().any(|pod| pod["metadata"]["namespace"] == namespace && pod["spec"]["nodeName"] == node && pod_uses(pod, resource, name))
        }
    }

    /// No RBAC objects, except a Role letting ServiceAccount `team/bot` read pods in `team`, and a
    /// ClusterRole letting user `ops` impersonate user `alice`, group `devs` and any account.
    impl crate::rbac::Policies for Pods {
        fn cluster_role_bindings(&self) -> Vec<std::sync::Arc<Value>> {
            vec![std::sync::Arc::new(json!({"metadata": {"name": "ops"}, "roleRef": {"kind": "ClusterRole", "name": "impersonator"}, "subjects": [{"kind": "User", "name": "ops"}]}))]
        }
        fn role_bindings(&self, namespace: &str) -> Vec<std::sync::Arc<Value>> {
            if namespace != "team" {
                return Vec::new();
            }
            vec![std::sync::Arc::new(json!({"metadata": {"namespace": "team", "name": "bot"}, "roleRef": {"kind": "Role", "name": "reader"}, "subjects": [{"kind": "ServiceAccount", "name": "bot"}]}))]
        }
        fn cluster_roles(&self) -> Vec<std::sync::Arc<Value>> {
            vec![std::sync::Arc::new(json!({"metadata": {"name": "impersonator"}, "rules": [
                {"apiGroups": [""], "resources": ["users"], "resourceNames": ["alice"], "verbs": ["impersonate"]},
                {"apiGroups": [""], "resources": ["groups"], "resourceNames": ["devs"], "verbs": ["impersonate"]},
                {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["impersonate"]},
            ]}))]
        }
        fn role(&self, namespace: &str, name: &str) -> Option<std::sync::Arc<Value>> {
            (namespace == "team" && name == "reader").then(|| std::sync::Arc::new(json!({"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]})))
        }
    }

    fn no_pods() -> Pods {
        Pods(Vec::new())
    }

    fn pods() -> Pods {
        Pods(vec![
            json!({"metadata": {"namespace": "shop", "name": "web-a"}, "spec": {"nodeName": "a",
                "volumes": [{"name": "certs", "secret": {"secretName": "tls"}}, {"name": "all", "projected": {"sources": [{"configMap": {"name": "projected-cm"}}]}}],
                "imagePullSecrets": [{"name": "pull"}],
                "containers": [{"name": "c", "env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": "password", "key": "p"}}}], "envFrom": [{"configMapRef": {"name": "settings"}}]}]}}),
            json!({"metadata": {"namespace": "shop", "name": "web-b"}, "spec": {"nodeName": "b", "containers": [{"name": "c", "envFrom": [{"secretRef": {"name": "b-only"}}]}]}}),
            json!({"metadata": {"namespace": "shop", "name": "pending"}, "spec": {"containers": [{"name": "c"}]}}),
        ])
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
            assert!(authorize(&Identity::Nodes, &allowed, &no_pods()).is_ok(), "{allowed:?}");
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
            let error = authorize(&Identity::Nodes, &denied, &no_pods()).expect_err(&format!("{denied:?} is denied"));
            assert_eq!(error.code, 403);
        }
        for anything in [request("create", "apps", "deployments", "", "default"), request("delete", "", "nodes", "", "")] {
            assert!(authorize(&Identity::Admin, &anything, &no_pods()).is_ok());
        }
    }

    #[test]
    fn a_denial_says_who_what_and_where_as_kubernetes_does() {
        let mut denied = request("create", "apps", "deployments", "", "shop");
        let error = authorize(&Identity::Nodes, &denied, &no_pods()).expect_err("denied");
        assert!(error.message.starts_with(r#"deployments.apps is forbidden: User "shoal-node" cannot create resource "deployments" in API group "apps" in the namespace "shop""#), "{}", error.message);
        denied = Attributes { name: "p".into(), ..request("get", "", "pods", "log", "") };
        let error = authorize(&Identity::Nodes, &denied, &no_pods()).expect_err("denied");
        assert!(error.message.starts_with(r#"pods "p" is forbidden: User "shoal-node" cannot get resource "pods/log" in API group "" at the cluster scope"#), "{}", error.message);
    }

    #[test]
    fn a_node_reads_only_the_secrets_and_config_maps_its_pods_use() {
        let a = Identity::Node("a".into());
        let get = |resource: &str, name: &str| named(name, request("get", "", resource, "", "shop"));
        for (resource, name) in [("secrets", "tls"), ("secrets", "pull"), ("secrets", "password"), ("configmaps", "settings"), ("configmaps", "projected-cm")] {
            assert!(authorize(&a, &get(resource, name), &pods()).is_ok(), "{resource} {name}");
        }
        let refused = authorize(&a, &get("secrets", "b-only"), &pods()).expect_err("node b's pod uses it");
        assert!(refused.message.ends_with("no pod bound to node a uses it"), "{}", refused.message);
        assert!(authorize(&Identity::Node("b".into()), &get("secrets", "b-only"), &pods()).is_ok());
        assert!(authorize(&a, &get("secrets", "tls"), &Pods(Vec::new())).is_err(), "no pod, no secret");
        assert!(authorize(&a, &named("tls", request("get", "", "secrets", "", "other")), &pods()).is_err(), "same name, another namespace");
        // Listing: TLS Secrets only (the ingress router); ConfigMaps never.
        let tls = Attributes { field_selector: "type=kubernetes.io/tls".into(), ..request("watch", "", "secrets", "", "") };
        assert!(authorize(&a, &tls, &pods()).is_ok());
        assert!(authorize(&a, &request("list", "", "secrets", "", ""), &pods()).is_err());
        assert!(authorize(&a, &request("list", "", "configmaps", "", "shop"), &pods()).is_err());
        // One object followed by name (the kubelet's watch of a volume's source): as a get.
        for verb in ["list", "watch"] {
            assert!(authorize(&a, &named("settings", request(verb, "", "configmaps", "", "shop")), &pods()).is_ok(), "{verb}");
            assert!(authorize(&a, &named("b-only", request(verb, "", "secrets", "", "shop")), &pods()).is_err(), "{verb}");
        }
        // The shared node token reads them all.
        assert!(authorize(&Identity::Nodes, &request("list", "", "secrets", "", ""), &pods()).is_ok());
    }

    #[test]
    fn a_list_or_watch_by_metadata_name_names_its_object() {
        for (selector, name) in [
            ("metadata.name=settings", Some("settings")),
            ("metadata.name==settings", Some("settings")),
            ("type=Opaque,metadata.name=settings", Some("settings")),
            (" metadata.name = settings ", Some("settings")),
            ("metadata.name!=settings", None),
            ("metadata.name=", None),
            ("metadata.name=a/b", None),
            ("metadata.name=..", None),
            ("type=kubernetes.io/tls", None),
        ] {
            assert_eq!(super::selected_name(selector).as_deref(), name, "{selector:?}");
        }
    }

    #[test]
    fn a_node_requests_tokens_only_for_the_accounts_its_pods_run_as() {
        let token = |node: &str, account: &str| authorize(&Identity::Node(node.into()), &named(account, request("create", "", "serviceaccounts", "token", "shop")), &pods());
        // Pods that name no account run as `default`.
        assert!(token("a", "default").is_ok());
        assert!(token("a", "builder").expect_err("no pod of node a runs as it").message.ends_with("no pod bound to node a runs as it"));
        let elsewhere = authorize(&Identity::Node("c".into()), &named("default", request("create", "", "serviceaccounts", "token", "shop")), &pods());
        assert!(elsewhere.is_err(), "node c runs no pod");
        assert!(authorize(&Identity::Node("a".into()), &named("default", request("get", "", "serviceaccounts", "", "shop")), &pods()).is_err(), "reading accounts is not a node's");
    }

    #[test]
    fn a_node_changes_only_its_own_node_lease_and_pods() {
        let a = Identity::Node("a".into());
        assert!(authorize(&a, &named("a", request("create", "", "nodes", "", "")), &pods()).is_ok());
        assert!(authorize(&a, &named("a", request("update", "", "nodes", "status", "")), &pods()).is_ok());
        assert!(authorize(&a, &named("b", request("patch", "", "nodes", "status", "")), &pods()).is_err());
        assert!(authorize(&a, &named("b", request("create", "", "nodes", "", "")), &pods()).is_err());
        assert!(authorize(&a, &named("b", request("get", "", "nodes", "", "")), &pods()).is_ok(), "reading other nodes is allowed");
        assert!(authorize(&a, &named("a", request("update", "coordination.k8s.io", "leases", "", "kube-node-lease")), &pods()).is_ok());
        assert!(authorize(&a, &named("b", request("get", "coordination.k8s.io", "leases", "", "kube-node-lease")), &pods()).is_err());
        assert!(authorize(&a, &named("web-a", request("patch", "", "pods", "status", "shop")), &pods()).is_ok());
        assert!(authorize(&a, &named("web-a", request("delete", "", "pods", "", "shop")), &pods()).is_ok());
        let refused = authorize(&a, &named("web-b", request("patch", "", "pods", "status", "shop")), &pods()).expect_err("node b's pod");
        assert!(refused.message.contains(r#"User "system:node:a""#) && refused.message.ends_with("the pod is bound to node b, not to node a"), "{}", refused.message);
        assert!(authorize(&a, &named("pending", request("delete", "", "pods", "", "shop")), &pods()).is_err(), "an unbound pod");
        assert!(authorize(&a, &named("gone", request("delete", "", "pods", "", "shop")), &pods()).is_ok(), "the handler answers 404");
        assert!(authorize(&a, &named("x", request("create", "apps", "deployments", "", "shop")), &pods()).is_err());
    }

    #[test]
    fn the_admin_and_those_granted_impersonate_act_as_others() {
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, value.parse().expect("header value"));
            }
            map
        };
        assert_eq!(impersonate(Identity::Admin, &headers(&[]), &no_pods()).ok(), Some(Identity::Admin));
        assert_eq!(impersonate(Identity::Admin, &headers(&[("impersonate-user", "system:node:a")]), &no_pods()).ok(), Some(Identity::Node("a".into())));
        assert_eq!(impersonate(Identity::Admin, &headers(&[("impersonate-user", "shoal-node")]), &no_pods()).ok(), Some(Identity::Nodes));
        let alice = impersonate(Identity::Admin, &headers(&[("impersonate-user", "alice"), ("impersonate-group", "devs")]), &no_pods()).expect("any user");
        assert_eq!((alice.username(), alice.groups()), ("alice".to_owned(), vec!["devs".to_owned(), "system:authenticated".to_owned()]));
        let bot = impersonate(Identity::Admin, &headers(&[("impersonate-user", "system:serviceaccount:team:bot")]), &no_pods()).expect("an account");
        assert_eq!(bot, Identity::service_account("team", "bot"));
        assert!(bot.groups().contains(&"system:serviceaccounts:team".to_owned()));
        assert!(impersonate(Identity::Admin, &headers(&[("impersonate-user", "system:serviceaccount:team")]), &no_pods()).is_err());
        assert!(impersonate(Identity::Admin, &headers(&[("impersonate-group", "devs")]), &no_pods()).is_err(), "a group needs a user");
        assert!(impersonate(Identity::Admin, &headers(&[("impersonate-user", "system:node:Bad_Name")]), &no_pods()).is_err());
        assert!(impersonate(Identity::Admin, &headers(&[("impersonate-user", "shoal-node"), ("impersonate-group", "system:masters")]), &no_pods()).is_err());
        assert!(impersonate(Identity::Admin, &headers(&[("impersonate-user", "alice"), ("impersonate-uid", "1")]), &no_pods()).is_err());
        assert!(impersonate(Identity::Nodes, &headers(&[("impersonate-user", "shoal-admin")]), &no_pods()).is_err(), "a node cannot become the admin");
        assert!(impersonate(Identity::Node("a".into()), &headers(&[("impersonate-user", "system:node:b")]), &no_pods()).is_err());

        // Others impersonate whom RBAC's `impersonate` verb names: users, groups, accounts.
        let ops = Identity::User(crate::rbac::Subject { user: "ops".into(), groups: vec!["system:authenticated".into()] });
        let alice = impersonate(ops.clone(), &headers(&[("impersonate-user", "alice"), ("impersonate-group", "devs")]), &no_pods()).expect("granted");
        assert_eq!((alice.username(), alice.groups()), ("alice".to_owned(), vec!["devs".to_owned(), "system:authenticated".to_owned()]));
        let refused = impersonate(ops.clone(), &headers(&[("impersonate-user", "bob")]), &no_pods()).expect_err("not granted");
        assert_eq!(refused.message, r#"users "bob" is forbidden: User "ops" cannot impersonate resource "users" in API group "" at the cluster scope"#);
        let refused = impersonate(ops.clone(), &headers(&[("impersonate-user", "alice"), ("impersonate-group", "system:masters")]), &no_pods()).expect_err("not that group");
        assert_eq!(refused.message, r#"groups "system:masters" is forbidden: User "ops" cannot impersonate resource "groups" in API group "" at the cluster scope"#);
        let refused = impersonate(ops.clone(), &headers(&[("impersonate-user", "shoal-admin")]), &no_pods()).expect_err("not the admin");
        assert!(refused.message.starts_with(r#"users "shoal-admin" is forbidden: User "ops" cannot impersonate"#), "{}", refused.message);
        let bot = impersonate(ops.clone(), &headers(&[("impersonate-user", "system:serviceaccount:team:bot")]), &no_pods()).expect("any account");
        assert_eq!(bot, Identity::service_account("team", "bot"), "an account keeps its groups when none are named");
        let refused = impersonate(bot, &headers(&[("impersonate-user", "alice")]), &no_pods()).expect_err("the bot holds no such grant");
        assert!(refused.message.contains(r#"User "system:serviceaccount:team:bot" cannot impersonate resource "users""#), "{}", refused.message);
        // Groups named for an account replace its own, as in kube-apiserver.
        let named = impersonate(Identity::Admin, &headers(&[("impersonate-user", "system:serviceaccount:team:bot"), ("impersonate-group", "devs")]), &no_pods()).expect("admin");
        assert_eq!(named.groups(), vec!["devs".to_owned(), "system:authenticated".to_owned()]);
    }

    #[test]
    fn accounts_and_users_are_judged_by_rbac_and_masters_by_nothing() {
        let bot = Identity::service_account("team", "bot");
        assert!(authorize(&bot, &request("list", "", "pods", "", "team"), &no_pods()).is_ok());
        let refused = authorize(&bot, &request("list", "", "pods", "", "default"), &no_pods()).expect_err("not bound there");
        assert_eq!(refused.message, r#"pods is forbidden: User "system:serviceaccount:team:bot" cannot list resource "pods" in API group "" in the namespace "default""#);
        assert!(authorize(&bot, &request("create", "", "pods", "", "team"), &no_pods()).is_err());
        assert!(authorize(&Identity::service_account("team", "other"), &request("list", "", "pods", "", "team"), &no_pods()).is_err());
        let root = Identity::User(crate::rbac::Subject { user: "root".into(), groups: vec!["system:masters".into()] });
        assert!(authorize(&root, &request("delete", "", "nodes", "", ""), &no_pods()).is_ok());
        let kind = review_kind("/apis/authorization.k8s.io/v1/selfsubjectrulesreviews").expect("served");
        let rules = review(&bot, kind, &Method::POST, json!({"spec": {"namespace": "team"}}), &no_pods()).expect("answered");
        let listed = rules["status"]["resourceRules"].as_array().expect("rules");
        assert!(listed.iter().any(|rule| rule["resources"] == json!(["pods"]) && rule["verbs"] == json!(["get", "list"])), "{listed:?}");
    }

    #[test]
    fn the_verb_follows_the_method_and_the_target() {
        let pods = shoal_api::resources::by_name("pods").expect("pods");
        let target = |name: Option<&str>| Target { info: pods, namespace: Some("default".into()), name: name.map(Into::into), subresource: None };
        assert_eq!(Attributes::of(&Method::GET, &target(None), false, None).verb, "list");
        assert_eq!(Attributes::of(&Method::GET, &target(None), true, None).verb, "watch");
        assert_eq!(Attributes::of(&Method::GET, &target(Some("p")), false, None).verb, "get");
        assert_eq!(Attributes::of(&Method::DELETE, &target(None), false, None).verb, "deletecollection");
        assert_eq!(Attributes::of(&Method::DELETE, &target(Some("p")), false, None).verb, "delete");
        assert_eq!(Attributes::of(&Method::PATCH, &target(Some("p")), false, None).verb, "patch");
    }

    #[test]
    fn reviews_answer_from_the_same_rules() {
        let kind = review_kind("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews").expect("served");
        let ask = |identity: &Identity, verb: &str, group: &str, resource: &str| {
            let body = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": {"resourceAttributes": {"namespace": "default", "verb": verb, "group": group, "resource": resource}}});
            review(identity, kind, &Method::POST, body, &no_pods()).expect("answered")["status"]["allowed"].clone()
        };
        assert_eq!(ask(&Identity::Nodes, "watch", "", "pods"), json!(true));
        assert_eq!(ask(&Identity::Nodes, "create", "apps", "deployments"), json!(false));
        assert_eq!(ask(&Identity::Admin, "create", "apps", "deployments"), json!(true));
        let whoami = review(&Identity::Nodes, review_kind("/apis/authentication.k8s.io/v1/selfsubjectreviews").expect("served"), &Method::POST, json!({}), &no_pods()).expect("answered");
        assert_eq!(whoami["status"]["userInfo"]["username"], "shoal-node");
        assert_eq!(whoami["kind"], "SelfSubjectReview");
        let rules = review(&Identity::Nodes, review_kind("/apis/authorization.k8s.io/v1/selfsubjectrulesreviews").expect("served"), &Method::POST, json!({"spec": {"namespace": "default"}}), &no_pods()).expect("answered");
        let listed = rules["status"]["resourceRules"].as_array().expect("rules");
        assert!(listed.iter().all(|rule| rule["resources"] != json!(["leases"])), "the lease rule holds only in kube-node-lease");
        assert!(review(&Identity::Nodes, kind, &Method::GET, json!({}), &no_pods()).is_err());
        assert!(review(&Identity::Nodes, kind, &Method::POST, json!({"kind": "Pod"}), &no_pods()).is_err());
        assert!(review(&Identity::Nodes, kind, &Method::POST, json!({"spec": {}}), &no_pods()).is_err());
        assert!(review_kind("/apis/authorization.k8s.io/v1beta1/selfsubjectaccessreviews").is_none());
    }
}
