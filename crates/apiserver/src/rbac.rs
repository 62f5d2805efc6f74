//! Role-based access control (`rbac.authorization.k8s.io/v1`), as kube-apiserver's RBAC
//! authorizer decides: a user may make a request when a rule of a role bound to them allows it.
//!
//! - ClusterRoleBindings grant their ClusterRole everywhere; RoleBindings grant their Role (of
//!   their own namespace) or ClusterRole in their namespace only.
//! - Subjects match by user name (`User`), by any of the user's groups (`Group`), or as
//!   `system:serviceaccount:NS:NAME` (`ServiceAccount`; a RoleBinding's subject without a
//!   namespace means its own).
//! - A rule allows a request when its verbs, API groups and resources (`*`, `pods`,
//!   `pods/log`, `*/scale`) match, and its `resourceNames`, if any, name the object. A
//!   ClusterRole's `nonResourceURLs` rules (`/healthz`, `/apis/*`) cover paths outside
//!   resources.
//! - A ClusterRole with an `aggregationRule` also holds the rules of every ClusterRole its
//!   selectors match, read when a request is judged (so a grant holds at once); the
//!   clusterrole-aggregation controller also writes them into the role, as Kubernetes' does.
//! - No escalation: writing a Role or ClusterRole needs every permission it grants (or the
//!   `escalate` verb on it), and binding one needs every permission of the role (or the `bind`
//!   verb on it), as kube-apiserver's RBAC storage checks ([`escalation`]).
//!
//! The bootstrap ClusterRoles `cluster-admin`, `admin`, `edit` and `view` (and the
//! `system:aggregate-to-*` roles the last three aggregate) are created with every cluster, and
//! again at a server's start when missing ([`bootstrap_objects`]).

use std::sync::Arc;

use serde_json::{Value, json};

use crate::authz::Attributes;
use shoal_api::selector::LabelSelector;

/// The bound roles a subject's requests are judged by, shared with the store rather than
/// copied (every request by a ServiceAccount or impersonated user reads them).
pub trait Policies {
    fn cluster_role_bindings(&self) -> Vec<Arc<Value>>;
    fn role_bindings(&self, namespace: &str) -> Vec<Arc<Value>>;
    fn cluster_roles(&self) -> Vec<Arc<Value>>;
    fn role(&self, namespace: &str, name: &str) -> Option<Arc<Value>>;
}

const RBAC: &str = "rbac.authorization.k8s.io";

impl Policies for crate::AppState {
    fn cluster_role_bindings(&self) -> Vec<Arc<Value>> {
        self.store.list_shared(&format!("clusterrolebindings.{RBAC}"), None)
    }

    fn role_bindings(&self, namespace: &str) -> Vec<Arc<Value>> {
        self.store.list_shared(&format!("rolebindings.{RBAC}"), Some(namespace))
    }

    fn cluster_roles(&self) -> Vec<Arc<Value>> {
        self.store.list_shared(&format!("clusterroles.{RBAC}"), None)
    }

    fn role(&self, namespace: &str, name: &str) -> Option<Arc<Value>> {
        self.store.get_shared(&shoal_store::ObjectKey::new(format!("roles.{RBAC}"), namespace, name)).ok()?
    }
}

/// A user as RBAC sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    pub user: String,
    pub groups: Vec<String>,
}

fn strings(value: &Value) -> impl Iterator<Item = &str> {
    value.as_array().into_iter().flatten().filter_map(Value::as_str)
}

/// Whether a binding's subject (in a binding of `namespace`, empty for a ClusterRoleBinding)
/// is `subject`.
fn applies(entry: &Value, subject: &Subject, namespace: &str) -> bool {
    let name = entry["name"].as_str().unwrap_or_default();
    match entry["kind"].as_str().unwrap_or_default() {
        "User" => subject.user == name,
        "Group" => subject.groups.iter().any(|group| group == name),
        "ServiceAccount" => {
            let account_namespace = entry["namespace"].as_str().filter(|n| !n.is_empty()).unwrap_or(namespace);
            !account_namespace.is_empty() && subject.user == format!("system:serviceaccount:{account_namespace}:{name}")
        }
        _ => false,
    }
}

fn binds(binding: &Value, subject: &Subject, namespace: &str) -> bool {
    strings_of(&binding["subjects"]).any(|entry| applies(entry, subject, namespace))
}

fn strings_of(value: &Value) -> impl Iterator<Item = &Value> {
    value.as_array().into_iter().flatten()
}

/// ClusterRole `name` and those it aggregates (and those they aggregate), as stored.
fn aggregated<'a>(roles: &'a [Arc<Value>], name: &str) -> Vec<&'a Value> {
    let mut found: Vec<&'a Value> = Vec::new();
    let mut pending = vec![name];
    let mut seen = vec![name];
    while let Some(next) = pending.pop() {
        let Some(role) = roles.iter().find(|role| role["metadata"]["name"] == next) else { continue };
        found.push(role);
        for selector in strings_of(&role["aggregationRule"]["clusterRoleSelectors"]) {
            let Ok(selector) = LabelSelector::from_object(selector) else { continue };
            for other in roles.iter().filter(|other| selector.matches(other["metadata"]["labels"].as_object())) {
                let other_name = other["metadata"]["name"].as_str().unwrap_or_default();
                if !seen.contains(&other_name) {
                    seen.push(other_name);
                    pending.push(other_name);
                }
            }
        }
    }
    found
}

/// The rules of ClusterRole `name`, with those it aggregates (and those they aggregate).
fn cluster_role_rules(roles: &[Arc<Value>], name: &str) -> Vec<Value> {
    aggregated(roles, name).into_iter().flat_map(|role| strings_of(&role["rules"]).cloned()).collect()
}

/// Shows `visit` each rule `subject` holds in `namespace` (empty: only the cluster-wide ones)
/// with a function that says where it comes from (for `kubectl auth can-i` reasons), until
/// `visit` returns true; returns whether it did. Nothing is copied.
fn visit_rules(policies: &dyn Policies, subject: &Subject, namespace: &str, visit: &mut dyn FnMut(&Value, &dyn Fn() -> String) -> bool) -> bool {
    // Read only when a binding names a ClusterRole (most requests by most accounts do not).
    let cluster_roles = std::cell::OnceCell::new();
    let roles = || cluster_roles.get_or_init(|| policies.cluster_roles());
    for binding in policies.cluster_role_bindings().iter().filter(|b| binds(b, subject, "")) {
        let role = binding["roleRef"]["name"].as_str().unwrap_or_default();
        let why = || format!("RBAC: allowed by ClusterRoleBinding \"{}\" of ClusterRole \"{role}\"", binding["metadata"]["name"].as_str().unwrap_or_default());
        for granted in aggregated(roles(), role) {
            if strings_of(&granted["rules"]).any(|rule| visit(rule, &why)) {
                return true;
            }
        }
    }
    if namespace.is_empty() {
        return false;
    }
    for binding in policies.role_bindings(namespace).iter().filter(|b| binds(b, subject, namespace)) {
        let (kind, role) = (binding["roleRef"]["kind"].as_str().unwrap_or_default(), binding["roleRef"]["name"].as_str().unwrap_or_default());
        let why = || format!("RBAC: allowed by RoleBinding \"{}/{namespace}\" of {kind} \"{role}\"", binding["metadata"]["name"].as_str().unwrap_or_default());
        let found = match kind {
            "ClusterRole" => aggregated(roles(), role).into_iter().any(|granted| strings_of(&granted["rules"]).any(|rule| visit(rule, &why))),
            _ => policies.role(namespace, role).is_some_and(|granted| strings_of(&granted["rules"]).any(|rule| visit(rule, &why))),
        };
        if found {
            return true;
        }
    }
    false
}

/// The rules `subject` holds in `namespace` (empty: only the cluster-wide ones), with where
/// each comes from (for `kubectl auth can-i` reasons).
pub fn rules_for(policies: &dyn Policies, subject: &Subject, namespace: &str) -> Vec<(Value, String)> {
    let mut rules = Vec::new();
    visit_rules(policies, subject, namespace, &mut |rule, why| {
        rules.push((rule.clone(), why()));
        false
    });
    rules
}

fn has(list: &Value, wanted: &str) -> bool {
    strings(list).any(|item| item == "*" || item == wanted)
}

/// Whether a resource rule allows `request`.
pub fn rule_allows(rule: &Value, request: &Attributes) -> bool {
    if !has(&rule["verbs"], &request.verb) || !has(&rule["apiGroups"], &request.group) {
        return false;
    }
    let combined = if request.subresource.is_empty() { request.resource.clone() } else { format!("{}/{}", request.resource, request.subresource) };
    let resource = strings(&rule["resources"]).any(|item| {
        item == "*" || item == combined || (!request.subresource.is_empty() && item == format!("*/{}", request.subresource))
    });
    if !resource {
        return false;
    }
    let names: Vec<&str> = strings(&rule["resourceNames"]).collect();
    names.is_empty() || (!request.name.is_empty() && names.contains(&request.name.as_str()))
}

/// Whether a non-resource rule allows `verb` on `path`.
pub fn non_resource_allows(rule: &Value, verb: &str, path: &str) -> bool {
    has(&rule["verbs"], verb)
        && strings(&rule["nonResourceURLs"]).any(|url| url == "*" || url == path || url.strip_suffix('*').is_some_and(|prefix| path.starts_with(prefix)))
}

/// The reason RBAC allows `request` for `subject`, or `None`.
pub fn allowed_by(policies: &dyn Policies, subject: &Subject, request: &Attributes) -> Option<String> {
    let mut reason = None;
    visit_rules(policies, subject, &request.namespace, &mut |rule, why| {
        let allows = rule_allows(rule, request);
        if allows {
            reason = Some(why());
        }
        allows
    });
    reason
}

/// Whether `held` (rules a user has) cover every permission `rule` grants: each verb, group,
/// resource and name it lists must be allowed by some held rule. Wildcards in `rule` are
/// covered only by wildcards.
fn covers(held: &[Value], rule: &Value, namespace: &str) -> bool {
    let urls: Vec<&str> = strings(&rule["nonResourceURLs"]).collect();
    let verbs: Vec<&str> = strings(&rule["verbs"]).collect();
    if !urls.is_empty() {
        return urls.iter().all(|url| {
            verbs.iter().all(|verb| {
                held.iter().any(|h| {
                    has(&h["verbs"], verb) && strings(&h["nonResourceURLs"]).any(|u| u == "*" || u == *url || u.strip_suffix('*').is_some_and(|prefix| url.starts_with(prefix)))
                })
            })
        });
    }
    let names: Vec<&str> = strings(&rule["resourceNames"]).collect();
    for verb in &verbs {
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
                let request = |name: &str| Attributes {
                    verb: (*verb).to_owned(),
                    group: group.to_owned(),
                    resource: resource.to_owned(),
                    subresource: subresource.to_owned(),
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    field_selector: String::new(),
                };
                let allowed = if names.is_empty() {
                    held.iter().any(|h| strings(&h["resourceNames"]).next().is_none() && rule_allows(h, &request("")))
                } else {
                    names.iter().all(|name| held.iter().any(|h| rule_allows(h, &request(name))))
                };
                if !allowed {
                    return false;
                }
            }
        }
    }
    true
}

/// Refuses a Role, ClusterRole or binding that `subject` may not write without escalating
/// (`None` when they may): see the module notes.
pub fn escalation(policies: &dyn Policies, subject: &Subject, kind: &str, object: &Value) -> Option<String> {
    let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let held: Vec<Value> = rules_for(policies, subject, namespace).into_iter().map(|(rule, _)| rule).collect();
    let may = |verb: &str, resource: &str, name: &str| {
        let request = Attributes { verb: verb.into(), group: RBAC.into(), resource: resource.into(), subresource: String::new(), namespace: namespace.into(), name: name.into(), field_selector: String::new() };
        held.iter().any(|rule| rule_allows(rule, &request))
    };
    let (granted, exempt) = match kind {
        "Role" | "ClusterRole" => {
            let (plural, granted) = if kind == "Role" {
                ("roles", strings_of(&object["rules"]).cloned().collect())
            } else {
                // An aggregating ClusterRole grants what it selects: judge it as stored would be.
                let mut with_it: Vec<Arc<Value>> = policies.cluster_roles().into_iter().filter(|other| other["metadata"]["name"] != name).collect();
                with_it.push(Arc::new(object.clone()));
                ("clusterroles", cluster_role_rules(&with_it, name))
            };
            (granted, may("escalate", plural, name))
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let (role_kind, role) = (object["roleRef"]["kind"].as_str().unwrap_or_default(), object["roleRef"]["name"].as_str().unwrap_or_default());
            let granted = match role_kind {
                "ClusterRole" => cluster_role_rules(&policies.cluster_roles(), role),
                _ => policies.role(namespace, role).map(|r| strings_of(&r["rules"]).cloned().collect()).unwrap_or_default(),
            };
            let plural = if role_kind == "Role" { "roles" } else { "clusterroles" };
            (granted, may("bind", plural, role))
        }
        _ => return None,
    };
    if exempt {
        return None;
    }
    let missing: Vec<String> = granted.iter().filter(|rule| !covers(&held, rule, namespace)).map(describe).collect();
    if missing.is_empty() {
        return None;
    }
    let action = if kind.ends_with("Binding") { "bind a role that grants" } else { "grant" };
    Some(format!("user \"{}\" (groups={:?}) is attempting to {action} RBAC permissions not currently held:\n{}", subject.user, subject.groups, missing.join("\n")))
}

fn describe(rule: &Value) -> String {
    let list = |key: &str| strings(&rule[key]).map(|s| format!("{s:?}")).collect::<Vec<_>>().join(" ");
    if rule["nonResourceURLs"].as_array().is_some_and(|u| !u.is_empty()) {
        format!("{{NonResourceURLs:[{}], Verbs:[{}]}}", list("nonResourceURLs"), list("verbs"))
    } else {
        format!("{{APIGroups:[{}], Resources:[{}], ResourceNames:[{}], Verbs:[{}]}}", list("apiGroups"), list("resources"), list("resourceNames"), list("verbs"))
    }
}

const READ: [&str; 3] = ["get", "list", "watch"];
const WRITE: [&str; 5] = ["create", "delete", "deletecollection", "patch", "update"];

/// The ClusterRoles and ClusterRoleBinding every cluster starts with, as kube-apiserver's
/// bootstrap policy names them (`rbac.authorization.kubernetes.io/autoupdate`), over the kinds
/// Shoal serves.
pub fn bootstrap_objects() -> Vec<(&'static str, Value)> {
    let readable = json!([
        {"apiGroups": [""], "resources": ["pods", "pods/log", "pods/status", "services", "services/status", "endpoints", "configmaps", "serviceaccounts", "events", "namespaces", "namespaces/status"], "verbs": READ},
        {"apiGroups": ["apps"], "resources": ["deployments", "deployments/scale", "deployments/status", "replicasets", "replicasets/scale", "replicasets/status", "daemonsets", "daemonsets/status"], "verbs": READ},
        {"apiGroups": ["batch"], "resources": ["jobs", "jobs/status", "cronjobs", "cronjobs/status"], "verbs": READ},
        {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers", "horizontalpodautoscalers/status"], "verbs": READ},
        {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses", "ingresses/status"], "verbs": READ},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": READ},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": READ},
        {"apiGroups": ["metrics.k8s.io"], "resources": ["pods"], "verbs": READ},
    ]);
    let writable = json!([
        {"apiGroups": [""], "resources": ["pods", "services", "endpoints", "configmaps", "secrets", "serviceaccounts"], "verbs": WRITE},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": READ},
        {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]},
        // Acting as an account is as much as holding its token (kube's `edit` grants both).
        {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["impersonate"]},
        {"apiGroups": ["apps"], "resources": ["deployments", "deployments/scale", "replicasets", "replicasets/scale", "daemonsets"], "verbs": WRITE},
        {"apiGroups": ["batch"], "resources": ["jobs", "cronjobs"], "verbs": WRITE},
        {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": WRITE},
        {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses"], "verbs": WRITE},
    ]);
    let administrable = json!([
        {"apiGroups": [RBAC], "resources": ["roles", "rolebindings"], "verbs": ["get", "list", "watch", "create", "delete", "deletecollection", "patch", "update"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "list", "watch", "create", "delete", "deletecollection", "patch", "update"]},
    ]);
    let metadata = |name: &str, aggregate_to: Option<&str>| {
        let mut labels = json!({"kubernetes.io/bootstrapping": "rbac-defaults"});
        if let Some(into) = aggregate_to {
            labels[format!("rbac.authorization.k8s.io/aggregate-to-{into}")] = json!("true");
        }
        json!({"name": name, "labels": labels, "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}})
    };
    // As in Kubernetes, `admin`, `edit` and `view` hold only what they aggregate: the roles
    // labelled `aggregate-to-<name>`. `system:aggregate-to-<name>` carry Shoal's rules, `view`
    // aggregates into `edit` and `edit` into `admin`, and a CRD's role can join any of them. The
    // clusterrole-aggregation controller (`shoal_controllers::clusterroles`) writes the rules
    // back; they are created already filled, in the order it writes them (selected roles by
    // name, each rule once).
    let part = |name: &str, rules: &Value| {
        json!({"apiVersion": format!("{RBAC}/v1"), "kind": "ClusterRole", "metadata": metadata(&format!("system:aggregate-to-{name}"), Some(name)), "rules": rules})
    };
    let union = |lists: &[&Value]| {
        let mut rules: Vec<Value> = Vec::new();
        for rule in lists.iter().flat_map(|list| strings_of(list)) {
            if !rules.contains(rule) {
                rules.push(rule.clone());
            }
        }
        Value::Array(rules)
    };
    let aggregating = |name: &str, into: Option<&str>, rules: Value| {
        json!({"apiVersion": format!("{RBAC}/v1"), "kind": "ClusterRole", "metadata": metadata(name, into),
            "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {format!("rbac.authorization.k8s.io/aggregate-to-{name}"): "true"}}]},
            "rules": rules})
    };
    // `edit` selects `system:aggregate-to-edit` and `view`; `admin` selects `edit` and
    // `system:aggregate-to-admin`.
    let edit = union(&[&writable, &readable]);
    let admin = union(&[&edit, &administrable]);
    vec![
        ("clusterroles", json!({"apiVersion": format!("{RBAC}/v1"), "kind": "ClusterRole", "metadata": metadata("cluster-admin", None),
            "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}, {"nonResourceURLs": ["*"], "verbs": ["*"]}]})),
        ("clusterroles", part("admin", &administrable)),
        ("clusterroles", part("edit", &writable)),
        ("clusterroles", part("view", &readable)),
        ("clusterroles", aggregating("admin", None, admin)),
        ("clusterroles", aggregating("edit", Some("admin"), edit)),
        ("clusterroles", aggregating("view", Some("edit"), readable)),
        ("clusterrolebindings", json!({"apiVersion": format!("{RBAC}/v1"), "kind": "ClusterRoleBinding", "metadata": metadata("cluster-admin", None),
            "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"apiGroup": RBAC, "kind": "Group", "name": "system:masters"}]})),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Stored {
        cluster_roles: Vec<Value>,
        roles: Vec<Value>,
        cluster_bindings: Vec<Value>,
        bindings: Vec<Value>,
    }

    impl Policies for Stored {
        fn cluster_role_bindings(&self) -> Vec<Arc<Value>> {
            self.cluster_bindings.iter().cloned().map(Arc::new).collect()
        }
        fn role_bindings(&self, namespace: &str) -> Vec<Arc<Value>> {
            self.bindings.iter().filter(|b| b["metadata"]["namespace"] == namespace).cloned().map(Arc::new).collect()
        }
        fn cluster_roles(&self) -> Vec<Arc<Value>> {
            self.cluster_roles.iter().cloned().map(Arc::new).collect()
        }
        fn role(&self, namespace: &str, name: &str) -> Option<Arc<Value>> {
            self.roles.iter().find(|r| r["metadata"]["namespace"] == namespace && r["metadata"]["name"] == name).cloned().map(Arc::new)
        }
    }

    fn account(namespace: &str, name: &str) -> Subject {
        Subject { user: format!("system:serviceaccount:{namespace}:{name}"), groups: vec!["system:serviceaccounts".into(), format!("system:serviceaccounts:{namespace}"), "system:authenticated".into()] }
    }

    fn ask(verb: &str, group: &str, resource: &str, namespace: &str, name: &str) -> Attributes {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        Attributes { verb: verb.into(), group: group.into(), resource: resource.into(), subresource: subresource.into(), namespace: namespace.into(), name: name.into(), field_selector: String::new() }
    }

    fn policies() -> Stored {
        let mut stored = Stored { cluster_roles: bootstrap_objects().into_iter().filter(|(r, _)| *r == "clusterroles").map(|(_, o)| o).collect(), ..Stored::default() };
        stored.cluster_roles.push(json!({"metadata": {"name": "crd-viewer", "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}}, "rules": [{"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get"]}]}));
        stored.roles.push(json!({"metadata": {"namespace": "team", "name": "pod-reader"}, "rules": [{"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list", "watch"]}, {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["settings"], "verbs": ["get"]}]}));
        stored.bindings.push(json!({"metadata": {"namespace": "team", "name": "bot-reads"}, "roleRef": {"kind": "Role", "name": "pod-reader"}, "subjects": [{"kind": "ServiceAccount", "name": "bot"}]}));
        stored.bindings.push(json!({"metadata": {"namespace": "team", "name": "devs-edit"}, "roleRef": {"kind": "ClusterRole", "name": "edit"}, "subjects": [{"kind": "Group", "name": "devs"}]}));
        stored.cluster_bindings.push(json!({"metadata": {"name": "auditors"}, "roleRef": {"kind": "ClusterRole", "name": "view"}, "subjects": [{"kind": "User", "name": "audrey"}, {"kind": "ServiceAccount", "name": "watcher", "namespace": "ops"}]}));
        stored
    }

    #[test]
    fn a_role_binding_grants_its_role_in_its_namespace_only() {
        let stored = policies();
        let bot = account("team", "bot");
        assert!(allowed_by(&stored, &bot, &ask("list", "", "pods", "team", "")).is_some());
        assert!(allowed_by(&stored, &bot, &ask("get", "", "pods/log", "team", "web")).is_some());
        assert!(allowed_by(&stored, &bot, &ask("list", "", "pods", "default", "")).is_none(), "another namespace");
        assert!(allowed_by(&stored, &bot, &ask("list", "", "pods", "", "")).is_none(), "all namespaces");
        assert!(allowed_by(&stored, &bot, &ask("delete", "", "pods", "team", "web")).is_none());
        assert!(allowed_by(&stored, &bot, &ask("get", "", "pods/exec", "team", "web")).is_none(), "a subresource not listed");
        assert!(allowed_by(&stored, &account("other", "bot"), &ask("list", "", "pods", "team", "")).is_none(), "same name, other namespace");
        // resourceNames: one object, never a list.
        assert!(allowed_by(&stored, &bot, &ask("get", "", "configmaps", "team", "settings")).is_some());
        assert!(allowed_by(&stored, &bot, &ask("get", "", "configmaps", "team", "other")).is_none());
        assert!(allowed_by(&stored, &bot, &ask("list", "", "configmaps", "team", "")).is_none());
        let why = allowed_by(&stored, &bot, &ask("list", "", "pods", "team", "")).expect("allowed");
        assert!(why.contains("RoleBinding \"bot-reads/team\" of Role \"pod-reader\""), "{why}");
    }

    #[test]
    fn groups_users_cluster_bindings_and_aggregation() {
        let stored = policies();
        let dev = Subject { user: "jane".into(), groups: vec!["devs".into()] };
        assert!(allowed_by(&stored, &dev, &ask("create", "apps", "deployments", "team", "")).is_some(), "edit in team");
        assert!(allowed_by(&stored, &dev, &ask("patch", "apps", "deployments/scale", "team", "web")).is_some());
        assert!(allowed_by(&stored, &dev, &ask("create", "rbac.authorization.k8s.io", "roles", "team", "")).is_none(), "edit has no RBAC");
        assert!(allowed_by(&stored, &dev, &ask("create", "apps", "deployments", "default", "")).is_none());
        let audrey = Subject { user: "audrey".into(), groups: vec![] };
        assert!(allowed_by(&stored, &audrey, &ask("list", "", "pods", "", "")).is_some(), "view everywhere");
        assert!(allowed_by(&stored, &audrey, &ask("get", "", "secrets", "team", "s")).is_none(), "view reads no secrets");
        assert!(allowed_by(&stored, &audrey, &ask("get", "example.com", "widgets", "x", "w")).is_some(), "aggregated into view");
        assert!(allowed_by(&stored, &account("ops", "watcher"), &ask("watch", "apps", "deployments", "", "")).is_some());
        assert!(allowed_by(&stored, &account("default", "watcher"), &ask("watch", "apps", "deployments", "", "")).is_none());
        let admin = Subject { user: "root".into(), groups: vec!["system:masters".into()] };
        assert!(allowed_by(&stored, &admin, &ask("list", "", "pods", "", "")).is_none(), "no binding stored in this test");
    }

    #[test]
    fn wildcards_and_non_resource_urls() {
        let rule = json!({"apiGroups": ["*"], "resources": ["*/scale"], "verbs": ["get"]});
        assert!(rule_allows(&rule, &ask("get", "apps", "deployments/scale", "a", "b")));
        assert!(!rule_allows(&rule, &ask("get", "apps", "deployments", "a", "b")));
        let urls = json!({"nonResourceURLs": ["/healthz", "/apis/*"], "verbs": ["get"]});
        assert!(non_resource_allows(&urls, "get", "/healthz"));
        assert!(non_resource_allows(&urls, "get", "/apis/apps/v1"));
        assert!(!non_resource_allows(&urls, "get", "/metrics"));
        assert!(!non_resource_allows(&urls, "post", "/healthz"));
    }

    #[test]
    fn no_one_grants_or_binds_more_than_they_hold() {
        let stored = policies();
        let dev = Subject { user: "jane".into(), groups: vec!["devs".into()] };
        let role = |rules: Value| json!({"metadata": {"namespace": "team", "name": "r"}, "rules": rules});
        assert!(escalation(&stored, &dev, "Role", &role(json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "delete"]}]))).is_none(), "held by edit");
        let refused = escalation(&stored, &dev, "Role", &role(json!([{"apiGroups": [""], "resources": ["nodes"], "verbs": ["delete"]}]))).expect("not held");
        assert!(refused.contains("is attempting to grant RBAC permissions not currently held") && refused.contains("\"nodes\""), "{refused}");
        assert!(escalation(&stored, &dev, "Role", &role(json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}]))).is_some(), "a wildcard needs a wildcard");
        let binding = |kind: &str, name: &str| json!({"metadata": {"namespace": "team", "name": "b"}, "roleRef": {"kind": kind, "name": name}, "subjects": [{"kind": "User", "name": "x"}]});
        assert!(escalation(&stored, &dev, "RoleBinding", &binding("ClusterRole", "view")).is_none(), "edit holds view's rules");
        assert!(escalation(&stored, &dev, "RoleBinding", &binding("ClusterRole", "cluster-admin")).is_some());
        assert!(escalation(&stored, &dev, "RoleBinding", &binding("ClusterRole", "admin")).is_some(), "admin adds RBAC");
        // The `bind` verb on a role lets its holder bind it without holding it.
        let mut stored = stored;
        stored.roles.push(json!({"metadata": {"namespace": "team", "name": "binder"}, "rules": [{"apiGroups": [RBAC], "resources": ["clusterroles"], "resourceNames": ["admin"], "verbs": ["bind"]}]}));
        stored.bindings.push(json!({"metadata": {"namespace": "team", "name": "jane-binds"}, "roleRef": {"kind": "Role", "name": "binder"}, "subjects": [{"kind": "User", "name": "jane"}]}));
        assert!(escalation(&stored, &dev, "RoleBinding", &binding("ClusterRole", "admin")).is_none());
        assert!(escalation(&stored, &dev, "RoleBinding", &binding("ClusterRole", "cluster-admin")).is_some());
    }
}
