//! Validation: every field error in an object at once, with Kubernetes' field paths and
//! messages.

use std::collections::HashSet;

use serde_json::Value;

use crate::error::FieldError;
use crate::selector::LabelSelector;
use crate::ResourceInfo;

const DNS1123_LABEL_MESSAGE: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MESSAGE: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1035_LABEL_MESSAGE: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

pub fn is_dns1123_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

pub fn is_dns1123_subdomain(text: &str) -> bool {
    !text.is_empty() && text.len() <= 253 && text.split('.').all(is_dns1123_label)
}

pub fn is_dns1035_label(text: &str) -> bool {
    is_dns1123_label(text) && text.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
}

/// A label or annotation key: an optional DNS subdomain prefix and `/`, then a name of at most
/// 63 alphanumerics, `-`, `_` or `.` that starts and ends alphanumeric.
pub fn is_qualified_name(text: &str) -> bool {
    let (prefix, name) = match text.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, text),
    };
    if prefix.is_some_and(|p| !is_dns1123_subdomain(p)) {
        return false;
    }
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

pub fn is_label_value(text: &str) -> bool {
    text.is_empty()
        || (text.len() <= 63
            && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && text.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && text.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric()))
}

/// A ConfigMap or Secret key.
pub fn is_config_key(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && text != "."
        && text != ".."
}

/// An IANA service name (a named port).
fn is_port_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 15
        && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && text.bytes().any(|b| b.is_ascii_lowercase())
        && !text.starts_with('-')
        && !text.ends_with('-')
        && !text.contains("--")
}

/// A name that is one URL path segment (kube's `ValidatePathSegmentName`, which RBAC's kinds
/// use: `system:aggregate-to-view`, `system:metrics-server`).
fn is_path_segment_name(text: &str) -> bool {
    text != "." && text != ".." && !text.contains(['/', '%'])
}

const PATH_SEGMENT_MESSAGE: &str = "may not be '.' or '..' and may not contain '/' or '%'";

/// How a kind's names are checked.
fn name_rule(info: &ResourceInfo) -> (fn(&str) -> bool, &'static str) {
    match info.kind {
        "Namespace" => (is_dns1123_label, DNS1123_LABEL_MESSAGE),
        "Service" => (is_dns1035_label, DNS1035_LABEL_MESSAGE),
        "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding" => (is_path_segment_name, PATH_SEGMENT_MESSAGE),
        _ => (is_dns1123_subdomain, DNS1123_SUBDOMAIN_MESSAGE),
    }
}

/// Collects field errors in one place.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, error: FieldError) {
        self.0.push(error);
    }
}

fn quoted(value: &str) -> String {
    format!("\"{value}\"")
}

/// Validates `object` as a `info` kind. Returns every problem found.
pub fn validate(info: &ResourceInfo, object: &Value) -> Vec<FieldError> {
    let mut errors = Errors::default();
    metadata(info, &object["metadata"], &mut errors);
    match (info.group, info.kind) {
        ("", "Pod") => pod_spec(&object["spec"], "spec", &mut errors),
        ("", "Service") => service(&object["spec"], &mut errors),
        ("", "ConfigMap") => config_data(object, &["data", "binaryData"], &mut errors),
        ("", "Secret") => {
            config_data(object, &["data", "stringData"], &mut errors);
            secret_type(object, &mut errors);
        }
        ("apps", "Deployment") => {
            workload(&object["spec"], true, &mut errors);
            deployment_strategy(&object["spec"], &mut errors);
        }
        ("apps", "ReplicaSet") => workload(&object["spec"], true, &mut errors),
        ("apps", "DaemonSet") => workload(&object["spec"], false, &mut errors),
        ("batch", "Job") => job_spec(&object["spec"], "spec", &mut errors),
        ("batch", "CronJob") => cron_job(&object["spec"], &mut errors),
        ("networking.k8s.io", "Ingress") => ingress(&object["spec"], &mut errors),
        ("autoscaling", "HorizontalPodAutoscaler") => hpa(&object["spec"], &mut errors),
        ("rbac.authorization.k8s.io", "Role") => policy_rules(&object["rules"], true, &mut errors),
        ("rbac.authorization.k8s.io", "ClusterRole") => policy_rules(&object["rules"], false, &mut errors),
        ("rbac.authorization.k8s.io", "RoleBinding") => role_binding(object, true, &mut errors),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => role_binding(object, false, &mut errors),
        _ => {}
    }
    errors.0
}

/// The API group of RBAC's kinds, which bindings' role references and user and group subjects
/// name.
pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

fn strings(value: &Value) -> Vec<&str> {
    value.as_array().into_iter().flatten().filter_map(Value::as_str).collect()
}

/// A Role's or ClusterRole's rules, as kube-apiserver's `ValidatePolicyRule` checks them.
fn policy_rules(rules: &Value, namespaced: bool, errors: &mut Errors) {
    for (index, rule) in rules.as_array().into_iter().flatten().enumerate() {
        let path = format!("rules[{index}]");
        if strings(&rule["verbs"]).is_empty() {
            errors.push(FieldError { message: "Required value: verbs must contain at least one value".into(), ..FieldError::required(format!("{path}.verbs")) });
        }
        let urls = strings(&rule["nonResourceURLs"]);
        if !urls.is_empty() {
            if namespaced {
                errors.push(FieldError::invalid(format!("{path}.nonResourceURLs"), urls.join(","), "namespaced rules cannot apply to non-resource URLs"));
            }
            if !strings(&rule["apiGroups"]).is_empty() || !strings(&rule["resources"]).is_empty() || !strings(&rule["resourceNames"]).is_empty() {
                errors.push(FieldError::invalid(format!("{path}.nonResourceURLs"), urls.join(","), "rules cannot apply to both regular resources and non-resource URLs"));
            }
            continue;
        }
        if rule["apiGroups"].as_array().is_none_or(Vec::is_empty) {
            errors.push(FieldError { message: "Required value: resource rules must supply at least one api group".into(), ..FieldError::required(format!("{path}.apiGroups")) });
        }
        if strings(&rule["resources"]).is_empty() {
            errors.push(FieldError { message: "Required value: resource rules must supply at least one resource".into(), ..FieldError::required(format!("{path}.resources")) });
        }
    }
}

/// A RoleBinding's or ClusterRoleBinding's role reference and subjects.
fn role_binding(object: &Value, namespaced: bool, errors: &mut Errors) {
    let role = &object["roleRef"];
    let group = role["apiGroup"].as_str().unwrap_or_default();
    if group != RBAC_GROUP {
        errors.push(FieldError::not_supported("roleRef.apiGroup", group, &[RBAC_GROUP]));
    }
    let kinds: &[&str] = if namespaced { &["Role", "ClusterRole"] } else { &["ClusterRole"] };
    match role["kind"].as_str().unwrap_or_default() {
        "" => errors.push(FieldError::required("roleRef.kind")),
        kind if !kinds.contains(&kind) => errors.push(FieldError::not_supported("roleRef.kind", kind, kinds)),
        _ => {}
    }
    match role["name"].as_str().unwrap_or_default() {
        "" => errors.push(FieldError::required("roleRef.name")),
        name if name.contains('/') || name.contains('%') || name == "." || name == ".." => {
            errors.push(FieldError::invalid("roleRef.name", quoted(name), "may not contain '/' or '%', and may not be '.' or '..'"))
        }
        _ => {}
    }
    for (index, subject) in object["subjects"].as_array().into_iter().flatten().enumerate() {
        let path = format!("subjects[{index}]");
        let name = subject["name"].as_str().unwrap_or_default();
        if name.is_empty() {
            errors.push(FieldError::required(format!("{path}.name")));
        }
        let group = subject["apiGroup"].as_str().unwrap_or_default();
        match subject["kind"].as_str().unwrap_or_default() {
            "ServiceAccount" => {
                if !group.is_empty() {
                    errors.push(FieldError::not_supported(format!("{path}.apiGroup"), group, &[""]));
                }
                if !name.is_empty() && !is_dns1123_subdomain(name) {
                    errors.push(FieldError::invalid(format!("{path}.name"), quoted(name), DNS1123_SUBDOMAIN_MESSAGE));
                }
                if !namespaced && subject["namespace"].as_str().is_none_or(str::is_empty) {
                    errors.push(FieldError::required(format!("{path}.namespace")));
                }
            }
            "User" | "Group" => {
                if group != RBAC_GROUP {
                    errors.push(FieldError::not_supported(format!("{path}.apiGroup"), group, &[RBAC_GROUP]));
                }
            }
            kind => errors.push(FieldError::not_supported(format!("{path}.kind"), kind, &["ServiceAccount", "User", "Group"])),
        }
    }
}

fn metadata(info: &ResourceInfo, metadata: &Value, errors: &mut Errors) {
    let (is_valid, message) = name_rule(info);
    match metadata["name"].as_str() {
        None | Some("") => errors.push(FieldError::required("metadata.name").with_detail("name or generateName is required")),
        Some(name) if !is_valid(name) => errors.push(FieldError::invalid("metadata.name", quoted(name), message)),
        Some(_) => {}
    }
    if !info.namespaced && metadata["namespace"].as_str().is_some_and(|ns| !ns.is_empty()) {
        errors.push(FieldError::forbidden("metadata.namespace", "not allowed on this type"));
    }
    labels(&metadata["labels"], "metadata.labels", errors);
    if let Some(annotations) = metadata["annotations"].as_object() {
        let mut total = 0;
        for (key, value) in annotations {
            if !is_qualified_name(key) {
                errors.push(FieldError::invalid("metadata.annotations", quoted(key), "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
            }
            total += key.len() + value.as_str().map_or(0, str::len);
        }
        if total > 256 * 1024 {
            errors.push(FieldError {
                reason: "FieldValueTooLong",
                field: "metadata.annotations".into(),
                message: format!("Too long: may not be more than 262144 bytes (got {total})"),
            });
        }
    }
}

fn labels(labels: &Value, path: &str, errors: &mut Errors) {
    let Some(labels) = labels.as_object() else { return };
    for (key, value) in labels {
        if !is_qualified_name(key) {
            errors.push(FieldError::invalid(path, quoted(key), "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
        }
        match value.as_str() {
            Some(text) if is_label_value(text) => {}
            Some(text) => errors.push(FieldError::invalid(path, quoted(text), "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character")),
            None => errors.push(FieldError::invalid(path, value, "label values must be strings")),
        }
    }
}

fn non_negative(value: &Value, path: &str, errors: &mut Errors) {
    if let Some(number) = value.as_i64()
        && number < 0
    {
        errors.push(FieldError::invalid(path, number, "must be greater than or equal to 0"));
    }
}

fn selector_and_template(spec: &Value, errors: &mut Errors, selector_required: bool) {
    let selector = &spec["selector"];
    let template_labels = spec["template"]["metadata"]["labels"].as_object();
    if selector.is_null() {
        if selector_required {
            errors.push(FieldError::required("spec.selector"));
        }
    } else {
        match LabelSelector::from_object(selector) {
            Ok(parsed) if parsed.is_empty() => errors.push(FieldError::invalid("spec.selector", "{}", "empty selector is invalid for deployment")),
            Ok(parsed) => {
                if !parsed.matches(template_labels) {
                    let shown = serde_json::to_string(&spec["template"]["metadata"]["labels"]).unwrap_or_default();
                    errors.push(FieldError::invalid("spec.template.metadata.labels", shown, "`selector` does not match template `labels`"));
                }
            }
            Err(detail) => errors.push(FieldError::invalid("spec.selector", selector, detail)),
        }
    }
    labels(&spec["template"]["metadata"]["labels"], "spec.template.metadata.labels", errors);
}

fn workload(spec: &Value, has_replicas: bool, errors: &mut Errors) {
    if spec.is_null() {
        errors.push(FieldError::required("spec"));
        return;
    }
    if has_replicas {
        non_negative(&spec["replicas"], "spec.replicas", errors);
    }
    non_negative(&spec["minReadySeconds"], "spec.minReadySeconds", errors);
    non_negative(&spec["revisionHistoryLimit"], "spec.revisionHistoryLimit", errors);
    selector_and_template(spec, errors, true);
    if spec["template"].is_null() {
        errors.push(FieldError::required("spec.template"));
    } else {
        pod_spec(&spec["template"]["spec"], "spec.template.spec", errors);
        if let Some(policy) = spec["template"]["spec"]["restartPolicy"].as_str()
            && policy != "Always"
        {
            errors.push(FieldError::not_supported("spec.template.spec.restartPolicy", policy, &["Always"]));
        }
    }
}

fn deployment_strategy(spec: &Value, errors: &mut Errors) {
    let strategy = &spec["strategy"];
    match strategy["type"].as_str() {
        Some("RollingUpdate") | None => {
            let rolling = &strategy["rollingUpdate"];
            let zero = |v: &Value| v.as_i64() == Some(0) || v.as_str() == Some("0%") || v.as_str() == Some("0");
            if zero(&rolling["maxUnavailable"]) && zero(&rolling["maxSurge"]) {
                errors.push(FieldError::invalid("spec.strategy.rollingUpdate.maxUnavailable", &rolling["maxUnavailable"], "may not be 0 when `maxSurge` is 0"));
            }
            for field in ["maxUnavailable", "maxSurge"] {
                int_or_percent(&rolling[field], &format!("spec.strategy.rollingUpdate.{field}"), errors);
            }
        }
        Some("Recreate") => {
            if !strategy["rollingUpdate"].is_null() {
                errors.push(FieldError::forbidden("spec.strategy.rollingUpdate", "may not be specified when strategy `type` is 'Recreate'"));
            }
        }
        Some(other) => errors.push(FieldError::not_supported("spec.strategy.type", other, &["Recreate", "RollingUpdate"])),
    }
}

fn int_or_percent(value: &Value, path: &str, errors: &mut Errors) {
    match value {
        Value::Null => {}
        Value::Number(n) if n.as_i64().is_some_and(|n| n >= 0) => {}
        Value::String(text) => {
            let valid = text.strip_suffix('%').and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| n <= 100);
            if !valid {
                errors.push(FieldError::invalid(path, quoted(text), "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')"));
            }
        }
        other => errors.push(FieldError::invalid(path, other, "must be greater than or equal to 0")),
    }
}

/// Validates a pod spec at `path`.
pub fn pod_spec(spec: &Value, path: &str, errors_out: &mut impl Extend<FieldError>) {
    let mut errors = Errors::default();
    pod_spec_into(spec, path, &mut errors);
    errors_out.extend(errors.0);
}

impl Extend<FieldError> for Errors {
    fn extend<T: IntoIterator<Item = FieldError>>(&mut self, iter: T) {
        self.0.extend(iter);
    }
}

fn pod_spec_into(spec: &Value, path: &str, errors: &mut Errors) {
    if spec.is_null() {
        errors.push(FieldError::required(path));
        return;
    }
    let mut names = HashSet::new();
    let declared: HashSet<&str> = spec["volumes"].as_array().into_iter().flatten().filter_map(|v| v["name"].as_str()).collect();
    let containers = spec["containers"].as_array();
    if containers.is_none_or(|c| c.is_empty()) {
        errors.push(FieldError::required(format!("{path}.containers")));
    }
    for list in ["initContainers", "containers"] {
        for (index, container) in spec[list].as_array().into_iter().flatten().enumerate() {
            let at = format!("{path}.{list}[{index}]");
            match container["name"].as_str() {
                None | Some("") => errors.push(FieldError::required(format!("{at}.name"))),
                Some(name) if !is_dns1123_label(name) => errors.push(FieldError::invalid(format!("{at}.name"), quoted(name), DNS1123_LABEL_MESSAGE)),
                Some(name) => {
                    if !names.insert(name.to_owned()) {
                        errors.push(FieldError::duplicate(format!("{at}.name"), quoted(name)));
                    }
                }
            }
            if container["image"].as_str().is_none_or(|image| image.trim().is_empty()) {
                errors.push(FieldError::required(format!("{at}.image")));
            }
            let mut port_names = HashSet::new();
            for (port_index, port) in container["ports"].as_array().into_iter().flatten().enumerate() {
                let port_path = format!("{at}.ports[{port_index}]");
                port_number(&port["containerPort"], &format!("{port_path}.containerPort"), true, errors);
                port_number(&port["hostPort"], &format!("{port_path}.hostPort"), false, errors);
                protocol(&port["protocol"], &format!("{port_path}.protocol"), errors);
                if let Some(name) = port["name"].as_str() {
                    if !is_port_name(name) {
                        errors.push(FieldError::invalid(format!("{port_path}.name"), quoted(name), "must be no more than 15 characters, contain only lowercase alphanumeric characters or '-', and contain at least one letter"));
                    } else if !port_names.insert(name.to_owned()) {
                        errors.push(FieldError::duplicate(format!("{port_path}.name"), quoted(name)));
                    }
                }
            }
            for (env_index, variable) in container["env"].as_array().into_iter().flatten().enumerate() {
                if variable["name"].as_str().is_none_or(str::is_empty) {
                    errors.push(FieldError::required(format!("{at}.env[{env_index}].name")));
                }
            }
            volume_mounts(container, &at, &declared, errors);
            if let Some(policy) = container["imagePullPolicy"].as_str()
                && !["Always", "IfNotPresent", "Never"].contains(&policy)
            {
                errors.push(FieldError::not_supported(format!("{at}.imagePullPolicy"), policy, &["Always", "IfNotPresent", "Never"]));
            }
        }
    }
    if let Some(policy) = spec["restartPolicy"].as_str()
        && !["Always", "OnFailure", "Never"].contains(&policy)
    {
        errors.push(FieldError::not_supported(format!("{path}.restartPolicy"), policy, &["Always", "OnFailure", "Never"]));
    }
    if let Some(policy) = spec["dnsPolicy"].as_str()
        && !["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"].contains(&policy)
    {
        errors.push(FieldError::not_supported(format!("{path}.dnsPolicy"), policy, &["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"]));
    }
    non_negative(&spec["terminationGracePeriodSeconds"], &format!("{path}.terminationGracePeriodSeconds"), errors);
    let mut volume_names = HashSet::new();
    for (index, volume) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        match volume["name"].as_str() {
            Some(name) if is_dns1123_label(name) => {
                if !volume_names.insert(name.to_owned()) {
                    errors.push(FieldError::duplicate(format!("{path}.volumes[{index}].name"), quoted(name)));
                }
            }
            Some(name) => errors.push(FieldError::invalid(format!("{path}.volumes[{index}].name"), quoted(name), DNS1123_LABEL_MESSAGE)),
            None => errors.push(FieldError::required(format!("{path}.volumes[{index}].name"))),
        }
    }
}

/// kube's rule for a path inside a volume (a mount's `subPath`): relative, and no `..` element.
pub fn local_descending_path(path: &str) -> Result<(), &'static str> {
    if path.starts_with('/') {
        return Err("must be a relative path");
    }
    if path.split('/').any(|element| element == "..") {
        return Err("must not contain '..'");
    }
    Ok(())
}

/// kube's checks of a container's `volumeMounts`: a declared volume, a unique mount path, and a
/// subPath that is relative and stays inside its volume.
fn volume_mounts(container: &Value, at: &str, declared: &HashSet<&str>, errors: &mut Errors) {
    let mut paths = HashSet::new();
    for (index, mount) in container["volumeMounts"].as_array().into_iter().flatten().enumerate() {
        let at = format!("{at}.volumeMounts[{index}]");
        match mount["name"].as_str() {
            None | Some("") => errors.push(FieldError::required(format!("{at}.name"))),
            Some(name) if !declared.contains(name) => errors.push(FieldError::not_found(format!("{at}.name"), quoted(name))),
            Some(_) => {}
        }
        match mount["mountPath"].as_str() {
            None | Some("") => errors.push(FieldError::required(format!("{at}.mountPath"))),
            Some(path) if !paths.insert(path.to_owned()) => errors.push(FieldError::invalid(format!("{at}.mountPath"), quoted(path), "must be unique")),
            Some(_) => {}
        }
        for field in ["subPath", "subPathExpr"] {
            if let Some(path) = mount[field].as_str()
                && let Err(problem) = local_descending_path(path)
            {
                errors.push(FieldError::invalid(format!("{at}.{field}"), quoted(path), problem));
            }
        }
        if mount["subPath"].as_str().is_some_and(|p| !p.is_empty()) && mount["subPathExpr"].as_str().is_some_and(|p| !p.is_empty()) {
            errors.push(FieldError::invalid(format!("{at}.subPathExpr"), quoted(mount["subPathExpr"].as_str().unwrap_or_default()), "subPathExpr and subPath are mutually exclusive"));
        }
    }
}

fn port_number(value: &Value, path: &str, required: bool, errors: &mut Errors) {
    match value.as_i64() {
        Some(port) if (1..=65535).contains(&port) => {}
        Some(0) if !required => {}
        Some(port) => errors.push(FieldError::invalid(path, port, "must be between 1 and 65535, inclusive")),
        None if required => errors.push(FieldError::required(path)),
        None => {}
    }
}

fn protocol(value: &Value, path: &str, errors: &mut Errors) {
    if let Some(protocol) = value.as_str()
        && !["TCP", "UDP", "SCTP"].contains(&protocol)
    {
        errors.push(FieldError::not_supported(path, protocol, &["SCTP", "TCP", "UDP"]));
    }
}

fn service(spec: &Value, errors: &mut Errors) {
    let service_type = spec["type"].as_str().unwrap_or("ClusterIP");
    if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&service_type) {
        errors.push(FieldError::not_supported("spec.type", service_type, &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"]));
    }
    if service_type == "ExternalName" {
        if spec["externalName"].as_str().is_none_or(str::is_empty) {
            errors.push(FieldError::required("spec.externalName"));
        }
        return;
    }
    let ports = spec["ports"].as_array();
    if ports.is_none_or(|p| p.is_empty()) && spec["clusterIP"].as_str() != Some("None") {
        errors.push(FieldError::required("spec.ports"));
    }
    let ports = ports.map(Vec::as_slice).unwrap_or_default();
    let mut names = HashSet::new();
    for (index, port) in ports.iter().enumerate() {
        let at = format!("spec.ports[{index}]");
        match port["name"].as_str() {
            Some(name) if !name.is_empty() => {
                if !is_dns1123_label(name) {
                    errors.push(FieldError::invalid(format!("{at}.name"), quoted(name), DNS1123_LABEL_MESSAGE));
                } else if !names.insert(name.to_owned()) {
                    errors.push(FieldError::duplicate(format!("{at}.name"), quoted(name)));
                }
            }
            _ if ports.len() > 1 => errors.push(FieldError::required(format!("{at}.name"))),
            _ => {}
        }
        port_number(&port["port"], &format!("{at}.port"), true, errors);
        protocol(&port["protocol"], &format!("{at}.protocol"), errors);
        match &port["targetPort"] {
            Value::Number(n) if n.as_i64().is_some_and(|p| (1..=65535).contains(&p)) => {}
            Value::String(name) if is_port_name(name) => {}
            Value::Null => {}
            other => errors.push(FieldError::invalid(format!("{at}.targetPort"), other, "must be between 1 and 65535, inclusive, or a valid port name")),
        }
        if let Some(node_port) = port["nodePort"].as_i64() {
            if service_type == "ClusterIP" {
                errors.push(FieldError::forbidden(format!("{at}.nodePort"), "may not be used when `type` is 'ClusterIP'"));
            } else if !(30000..=32767).contains(&node_port) {
                errors.push(FieldError::invalid(format!("{at}.nodePort"), node_port, "provided port is not in the valid range. The range of valid ports is 30000-32767"));
            }
        }
    }
    labels(&spec["selector"], "spec.selector", errors);
    if let Some(affinity) = spec["sessionAffinity"].as_str()
        && !["None", "ClientIP"].contains(&affinity)
    {
        errors.push(FieldError::not_supported("spec.sessionAffinity", affinity, &["ClientIP", "None"]));
    }
}

fn config_data(object: &Value, fields: &[&str], errors: &mut Errors) {
    let mut seen = HashSet::new();
    let mut total = 0usize;
    for field in fields {
        for (key, value) in object[*field].as_object().into_iter().flatten() {
            if !is_config_key(key) {
                errors.push(FieldError::invalid(*field, quoted(key), "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"));
            }
            if !seen.insert(key.clone()) && *field != "stringData" {
                errors.push(FieldError::duplicate(format!("{field}[{key}]"), "duplicate of key present in another data field"));
            }
            total += value.as_str().map_or(0, str::len);
        }
    }
    if total > 1024 * 1024 {
        errors.push(FieldError {
            reason: "FieldValueTooLong",
            field: fields[0].into(),
            message: format!("Too long: may not be more than 1048576 bytes (got {total})"),
        });
    }
}

/// The annotation a `kubernetes.io/service-account-token` Secret names its account with.
pub const SERVICE_ACCOUNT_NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";

/// What each built-in Secret type requires, as kube-apiserver's `ValidateSecret` checks it (on
/// `data`, where `stringData` has been merged by then).
fn secret_type(secret: &Value, errors: &mut Errors) {
    let data = &secret["data"];
    let has = |key: &str| data.get(key).is_some();
    let non_empty = |key: &str| data[key].as_str().is_some_and(|value| !value.is_empty());
    match secret["type"].as_str().unwrap_or("Opaque") {
        "kubernetes.io/service-account-token" => {
            if secret["metadata"]["annotations"][SERVICE_ACCOUNT_NAME_ANNOTATION].as_str().is_none_or(str::is_empty) {
                errors.push(FieldError::required(format!("metadata.annotations[{SERVICE_ACCOUNT_NAME_ANNOTATION}]")));
            }
        }
        kind @ ("kubernetes.io/dockercfg" | "kubernetes.io/dockerconfigjson") => {
            let key = if kind == "kubernetes.io/dockercfg" { ".dockercfg" } else { ".dockerconfigjson" };
            let Some(encoded) = data[key].as_str() else {
                errors.push(FieldError::required(format!("data[{key}]")));
                return;
            };
            use base64::Engine;
            let parsed = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| e.to_string())
                .and_then(|bytes| serde_json::from_slice::<serde_json::Map<String, Value>>(&bytes).map(|_| ()).map_err(|e| e.to_string()));
            if let Err(detail) = parsed {
                // The value is a credential: the message never repeats it.
                errors.push(FieldError::invalid(format!("data[{key}]"), "\"<secret contents redacted>\"", detail));
            }
        }
        "kubernetes.io/basic-auth" => {
            if !non_empty("username") && !non_empty("password") {
                errors.push(FieldError::required("data[username]"));
                errors.push(FieldError::required("data[password]"));
            }
        }
        "kubernetes.io/ssh-auth" => {
            if !has("ssh-privatekey") {
                errors.push(FieldError::required("data[ssh-privatekey]"));
            }
        }
        "kubernetes.io/tls" => {
            for key in ["tls.crt", "tls.key"] {
                if !has(key) {
                    errors.push(FieldError::required(format!("data[{key}]")));
                }
            }
        }
        _ => {}
    }
}

/// Why an update of a ConfigMap or Secret marked `immutable: true` is refused (kube's
/// `ValidateSecretUpdate` and `ValidateConfigMapUpdate`); nothing when it may go ahead.
pub fn immutable_data(kind: &str, current: &Value, desired: &Value) -> Vec<FieldError> {
    let fields: &[&str] = match kind {
        "Secret" => &["data"],
        "ConfigMap" => &["data", "binaryData"],
        _ => return Vec::new(),
    };
    if current["immutable"] != Value::Bool(true) {
        return Vec::new();
    }
    const DETAIL: &str = "field is immutable when `immutable` is set";
    let mut errors = Vec::new();
    if desired["immutable"] != Value::Bool(true) {
        errors.push(FieldError::forbidden("immutable", DETAIL));
    }
    // An absent map and an empty one are the same data.
    let empty = |value: &Value| value.is_null() || value.as_object().is_some_and(serde_json::Map::is_empty);
    for field in fields {
        let (before, after) = (&current[*field], &desired[*field]);
        if before != after && !(empty(before) && empty(after)) {
            errors.push(FieldError::forbidden(*field, DETAIL));
        }
    }
    errors
}

fn job_spec(spec: &Value, path: &str, errors: &mut Errors) {
    if spec.is_null() {
        errors.push(FieldError::required(path));
        return;
    }
    for field in ["parallelism", "completions", "backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"] {
        non_negative(&spec[field], &format!("{path}.{field}"), errors);
    }
    let template = &spec["template"];
    if template.is_null() {
        errors.push(FieldError::required(format!("{path}.template")));
        return;
    }
    if path == "spec"
        && let Ok(selector) = LabelSelector::from_object(&spec["selector"])
        && !spec["selector"].is_null()
        && !selector.matches(template["metadata"]["labels"].as_object())
    {
        let shown = serde_json::to_string(&template["metadata"]["labels"]).unwrap_or_default();
        errors.push(FieldError::invalid("spec.template.metadata.labels", shown, "`selector` does not match template `labels`"));
    }
    pod_spec_into(&template["spec"], &format!("{path}.template.spec"), errors);
    match template["spec"]["restartPolicy"].as_str() {
        Some("OnFailure") | Some("Never") => {}
        Some(other) => errors.push(FieldError::not_supported(format!("{path}.template.spec.restartPolicy"), other, &["OnFailure", "Never"])),
        None => errors.push(FieldError::required(format!("{path}.template.spec.restartPolicy"))),
    }
}

fn cron_job(spec: &Value, errors: &mut Errors) {
    match spec["schedule"].as_str() {
        None | Some("") => errors.push(FieldError::required("spec.schedule")),
        Some(schedule) => {
            if let Err(detail) = check_cron(schedule) {
                errors.push(FieldError::invalid("spec.schedule", quoted(schedule), detail));
            }
        }
    }
    if let Some(policy) = spec["concurrencyPolicy"].as_str()
        && !["Allow", "Forbid", "Replace"].contains(&policy)
    {
        errors.push(FieldError::not_supported("spec.concurrencyPolicy", policy, &["Allow", "Forbid", "Replace"]));
    }
    job_spec(&spec["jobTemplate"]["spec"], "spec.jobTemplate.spec", errors);
}

/// Checks a five-field cron expression (or one of the `@hourly`-style macros).
pub fn check_cron(schedule: &str) -> Result<(), String> {
    let schedule = schedule.trim();
    let schedule = schedule.strip_prefix("TZ=").map_or(schedule, |rest| rest.split_once(' ').map_or("", |(_, s)| s));
    if ["@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"].contains(&schedule) {
        return Ok(());
    }
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!("expected exactly 5 fields, found {}: {schedule}", fields.len()));
    }
    let ranges = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)];
    for (field, (low, high)) in fields.iter().zip(ranges) {
        for item in field.split(',') {
            let (range, step) = match item.split_once('/') {
                Some((range, step)) => (range, Some(step)),
                None => (item, None),
            };
            if let Some(step) = step
                && step.parse::<u32>().map_or(true, |s| s == 0)
            {
                return Err(format!("invalid step in \"{item}\""));
            }
            if range == "*" || range == "?" {
                continue;
            }
            let bounds: Vec<&str> = range.split('-').collect();
            for bound in &bounds {
                let named = matches!(bound.to_ascii_lowercase().as_str(), "jan" | "feb" | "mar" | "apr" | "may" | "jun" | "jul" | "aug" | "sep" | "oct" | "nov" | "dec" | "sun" | "mon" | "tue" | "wed" | "thu" | "fri" | "sat");
                if !named && bound.parse::<u32>().map_or(true, |n| n < low || n > high) {
                    return Err(format!("value \"{bound}\" out of range [{low}, {high}]"));
                }
            }
            if bounds.len() > 2 {
                return Err(format!("invalid range \"{range}\""));
            }
        }
    }
    Ok(())
}

fn ingress(spec: &Value, errors: &mut Errors) {
    if spec.is_null() {
        errors.push(FieldError::required("spec"));
        return;
    }
    let backend = |backend: &Value, path: &str, errors: &mut Errors| {
        let service = &backend["service"];
        if service.is_null() && backend["resource"].is_null() {
            errors.push(FieldError::required(format!("{path}.service")));
            return;
        }
        if !service.is_null() {
            if service["name"].as_str().is_none_or(str::is_empty) {
                errors.push(FieldError::required(format!("{path}.service.name")));
            }
            let port = &service["port"];
            if port["number"].is_null() && port["name"].is_null() {
                errors.push(FieldError::required(format!("{path}.service.port")));
            }
            if let Some(number) = port["number"].as_i64()
                && !(1..=65535).contains(&number)
            {
                errors.push(FieldError::invalid(format!("{path}.service.port.number"), number, "must be between 1 and 65535, inclusive"));
            }
        }
    };
    if !spec["defaultBackend"].is_null() {
        backend(&spec["defaultBackend"], "spec.defaultBackend", errors);
    }
    for (index, rule) in spec["rules"].as_array().into_iter().flatten().enumerate() {
        let at = format!("spec.rules[{index}]");
        if let Some(host) = rule["host"].as_str() {
            let bare = host.strip_prefix("*.").unwrap_or(host);
            if !is_dns1123_subdomain(bare) || host.contains(':') {
                errors.push(FieldError::invalid(format!("{at}.host"), quoted(host), DNS1123_SUBDOMAIN_MESSAGE));
            }
        }
        let paths = rule["http"]["paths"].as_array();
        if !rule["http"].is_null() && paths.is_none_or(|p| p.is_empty()) {
            errors.push(FieldError::required(format!("{at}.http.paths")));
        }
        for (path_index, path) in paths.into_iter().flatten().enumerate() {
            let path_at = format!("{at}.http.paths[{path_index}]");
            let path_type = path["pathType"].as_str();
            match path_type {
                None => errors.push(FieldError::required(format!("{path_at}.pathType")).with_detail("pathType must be specified")),
                Some("Exact") | Some("Prefix") | Some("ImplementationSpecific") => {}
                Some(other) => errors.push(FieldError::not_supported(format!("{path_at}.pathType"), other, &["Exact", "ImplementationSpecific", "Prefix"])),
            }
            if let Some(text) = path["path"].as_str() {
                if !text.starts_with('/') && path_type != Some("ImplementationSpecific") {
                    errors.push(FieldError::invalid(format!("{path_at}.path"), quoted(text), "must be an absolute path"));
                }
            } else if path_type != Some("ImplementationSpecific") {
                errors.push(FieldError::required(format!("{path_at}.path")));
            }
            backend(&path["backend"], &format!("{path_at}.backend"), errors);
        }
    }
    for (index, tls) in spec["tls"].as_array().into_iter().flatten().enumerate() {
        for (host_index, host) in tls["hosts"].as_array().into_iter().flatten().enumerate() {
            let host = host.as_str().unwrap_or_default();
            if !is_dns1123_subdomain(host.strip_prefix("*.").unwrap_or(host)) {
                errors.push(FieldError::invalid(format!("spec.tls[{index}].hosts[{host_index}]"), quoted(host), DNS1123_SUBDOMAIN_MESSAGE));
            }
        }
    }
}

/// The field of an autoscaler's metric that holds its source, by the metric's `type`
/// (`Resource` → `resource`), or `None` for a type autoscaling/v2 does not have.
pub fn metric_source_field(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "Resource" => "resource",
        "ContainerResource" => "containerResource",
        "Pods" => "pods",
        "Object" => "object",
        "External" => "external",
        _ => return None,
    })
}

fn hpa(spec: &Value, errors: &mut Errors) {
    let target = &spec["scaleTargetRef"];
    if target["kind"].as_str().is_none_or(str::is_empty) {
        errors.push(FieldError::required("spec.scaleTargetRef.kind"));
    }
    if target["name"].as_str().is_none_or(str::is_empty) {
        errors.push(FieldError::required("spec.scaleTargetRef.name"));
    }
    let min = spec["minReplicas"].as_i64().unwrap_or(1);
    match spec["maxReplicas"].as_i64() {
        None => errors.push(FieldError::required("spec.maxReplicas")),
        Some(max) if max < 1 => errors.push(FieldError::invalid("spec.maxReplicas", max, "must be greater than or equal to 1")),
        Some(max) if max < min => errors.push(FieldError::invalid("spec.maxReplicas", max, "must be greater than or equal to `minReplicas`")),
        Some(_) => {}
    }
    if min < 0 {
        errors.push(FieldError::invalid("spec.minReplicas", min, "must be greater than or equal to 0"));
    }
    for (index, metric) in spec["metrics"].as_array().into_iter().flatten().enumerate() {
        let path = format!("spec.metrics[{index}]");
        let kind = metric["type"].as_str().unwrap_or_default();
        let field = match metric_source_field(kind) {
            Some(field) => field,
            None if kind.is_empty() => {
                errors.push(FieldError::required(format!("{path}.type")));
                continue;
            }
            None => {
                errors.push(FieldError::not_supported(format!("{path}.type"), kind, &["ContainerResource", "External", "Object", "Pods", "Resource"]));
                continue;
            }
        };
        let source = &metric[field];
        if !source.is_object() {
            errors.push(FieldError::required(format!("{path}.{field}")).with_detail(&format!("must populate information for the given metric source (type {kind})")));
            continue;
        }
        if matches!(kind, "Resource" | "ContainerResource") {
            if source["name"].as_str().is_none_or(str::is_empty) {
                errors.push(FieldError::required(format!("{path}.{field}.name")));
            }
            if kind == "ContainerResource" && source["container"].as_str().is_none_or(str::is_empty) {
                errors.push(FieldError::required(format!("{path}.{field}.container")));
            }
        }
        let target = &source["target"];
        let target_path = format!("{path}.{field}.target");
        match target["type"].as_str() {
            Some("Utilization") => match target["averageUtilization"].as_i64() {
                Some(utilization) if utilization > 0 => {}
                Some(utilization) => errors.push(FieldError::invalid(format!("{target_path}.averageUtilization"), utilization, "must be greater than 0")),
                None => errors.push(FieldError::required(format!("{target_path}.averageUtilization")).with_detail("must set averageUtilization when type is Utilization")),
            },
            Some("AverageValue") if target["averageValue"].is_null() => errors.push(FieldError::required(format!("{target_path}.averageValue")).with_detail("must set averageValue when type is AverageValue")),
            Some("Value") if target["value"].is_null() => errors.push(FieldError::required(format!("{target_path}.value")).with_detail("must set value when type is Value")),
            Some("Value") if matches!(kind, "Resource" | "ContainerResource") => errors.push(FieldError::not_supported(format!("{target_path}.type"), "Value", &["AverageValue", "Utilization"])),
            Some("AverageValue" | "Value") => {}
            Some(other) => errors.push(FieldError::not_supported(format!("{target_path}.type"), other, &["AverageValue", "Utilization", "Value"])),
            None => errors.push(FieldError::required(format!("{target_path}.type"))),
        }
    }
}

impl FieldError {
    /// Replaces the message of a `Required value` error with a fuller explanation.
    pub fn with_detail(mut self, detail: &str) -> Self {
        self.message = format!("{}: {detail}", self.message);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::by_name;
    use serde_json::json;

    fn fields(kind: &str, object: Value) -> Vec<String> {
        let info = by_name(kind).expect("served");
        let mut object = object;
        crate::defaults::apply(info, &mut object);
        validate(info, &object).into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn volume_mounts_name_declared_volumes_unique_paths_and_relative_sub_paths() {
        let errors = fields("pod", json!({"metadata": {"name": "p"}, "spec": {
            "volumes": [{"name": "conf", "configMap": {"name": "c"}}],
            "containers": [{"name": "c", "image": "i", "volumeMounts": [
                {"name": "conf", "mountPath": "/etc/app/app.conf", "subPath": "app.conf"},
                {"name": "conf", "mountPath": "/logs", "subPathExpr": "$(POD)"},
                {"name": "nope", "mountPath": "/x"},
                {"name": "conf", "mountPath": "/etc/app/app.conf"},
                {"name": "conf", "mountPath": "/a", "subPath": "../etc"},
                {"name": "conf", "mountPath": "/b", "subPath": "/etc"},
                {"name": "conf", "mountPath": "/c", "subPath": "a", "subPathExpr": "b"},
                {"name": "conf"},
            ]}]}}));
        assert_eq!(errors, [
            "spec.containers[0].volumeMounts[2].name",
            "spec.containers[0].volumeMounts[3].mountPath",
            "spec.containers[0].volumeMounts[4].subPath",
            "spec.containers[0].volumeMounts[5].subPath",
            "spec.containers[0].volumeMounts[6].subPathExpr",
            "spec.containers[0].volumeMounts[7].mountPath",
        ]);
        let info = by_name("pods").expect("served");
        let messages: Vec<String> = validate(info, &json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i", "volumeMounts": [{"name": "nope", "mountPath": "/x", "subPath": "../up"}]}]}}))
            .into_iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect();
        assert_eq!(messages, [
            r#"spec.containers[0].volumeMounts[0].name: Not found: "nope""#,
            r#"spec.containers[0].volumeMounts[0].subPath: Invalid value: "../up": must not contain '..'"#,
        ]);
    }

    #[test]
    fn rbac_rules_and_bindings_are_checked_as_kube_does() {
        let role = |rules: Value| json!({"metadata": {"name": "r", "namespace": "team"}, "rules": rules});
        assert!(fields("roles", role(json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]))).is_empty());
        assert_eq!(fields("roles", role(json!([{"apiGroups": [""], "resources": ["pods"]}, {"verbs": ["get"]}]))), vec!["rules[0].verbs", "rules[1].apiGroups", "rules[1].resources"]);
        assert_eq!(fields("roles", role(json!([{"nonResourceURLs": ["/healthz"], "verbs": ["get"]}]))), vec!["rules[0].nonResourceURLs"], "namespaced");
        let cluster_role = json!({"metadata": {"name": "r"}, "rules": [{"nonResourceURLs": ["/healthz"], "verbs": ["get"]}, {"nonResourceURLs": ["/x"], "resources": ["pods"], "verbs": ["get"]}]});
        assert_eq!(fields("clusterroles", cluster_role), vec!["rules[1].nonResourceURLs"]);
        let binding = |role_ref: Value, subjects: Value| json!({"metadata": {"name": "b", "namespace": "team"}, "roleRef": role_ref, "subjects": subjects});
        let good = binding(json!({"kind": "Role", "name": "r"}), json!([{"kind": "ServiceAccount", "name": "bot"}, {"kind": "User", "name": "jane"}, {"kind": "Group", "name": "devs"}]));
        assert!(fields("rolebindings", good.clone()).is_empty(), "apiGroups are defaulted");
        let mut defaulted = good;
        crate::defaults::apply(by_name("rolebindings").expect("served"), &mut defaulted);
        assert_eq!(defaulted["roleRef"]["apiGroup"], RBAC_GROUP);
        assert_eq!(defaulted["subjects"][1]["apiGroup"], RBAC_GROUP);
        assert!(defaulted["subjects"][0].get("apiGroup").is_none(), "a ServiceAccount's group is the core one");
        let bad = binding(json!({"kind": "Deployment", "name": ""}), json!([{"kind": "Robot", "name": "x"}, {"kind": "ServiceAccount", "name": "Bad_Name"}, {"kind": "User", "name": "u", "apiGroup": "apps"}]));
        assert_eq!(fields("rolebindings", bad), vec!["roleRef.kind", "roleRef.name", "subjects[0].kind", "subjects[1].name", "subjects[2].apiGroup"]);
        let cluster = json!({"metadata": {"name": "b"}, "roleRef": {"kind": "Role", "name": "r"}, "subjects": [{"kind": "ServiceAccount", "name": "bot"}]});
        assert_eq!(fields("clusterrolebindings", cluster), vec!["roleRef.kind", "subjects[0].namespace"]);
    }

    #[test]
    fn pods_run_as_the_default_service_account_unless_they_name_one() {
        let pod = |spec: Value| {
            let mut pod = json!({"metadata": {"name": "p", "namespace": "team"}, "spec": spec});
            crate::defaults::apply(by_name("pods").expect("served"), &mut pod);
            (pod["spec"]["serviceAccountName"].clone(), pod["spec"]["serviceAccount"].clone())
        };
        assert_eq!(pod(json!({"containers": [{"name": "c", "image": "i"}]})), (json!("default"), json!("default")));
        assert_eq!(pod(json!({"serviceAccountName": "bot", "containers": [{"name": "c", "image": "i"}]})), (json!("bot"), json!("bot")));
        assert_eq!(pod(json!({"serviceAccount": "old", "containers": [{"name": "c", "image": "i"}]})), (json!("old"), json!("old")));
    }

    #[test]
    fn autoscaler_metrics_are_checked_and_default_to_cpu() {
        let hpa = |metrics: Value| json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "a"}, "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 3, "metrics": metrics}});
        assert!(fields("horizontalpodautoscalers", hpa(json!([]))).is_empty());
        let mut defaulted = hpa(json!([]));
        crate::defaults::apply(by_name("horizontalpodautoscalers").expect("served"), &mut defaulted);
        assert_eq!(defaulted["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 80);
        let bad = json!([
            {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 0}}},
            {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Value", "value": "1"}}},
            {"type": "Pods"},
            {"type": "Bogus"},
            {"type": "ContainerResource", "containerResource": {"name": "memory", "target": {"type": "AverageValue"}}},
        ]);
        assert_eq!(
            fields("horizontalpodautoscalers", hpa(bad)),
            [
                "spec.metrics[0].resource.target.averageUtilization",
                "spec.metrics[1].resource.target.type",
                "spec.metrics[2].pods",
                "spec.metrics[3].type",
                "spec.metrics[4].containerResource.container",
                "spec.metrics[4].containerResource.target.averageValue",
            ]
        );
    }

    #[test]
    fn name_rules() {
        assert!(is_dns1123_subdomain("web.example-1"));
        assert!(!is_dns1123_subdomain("Web"));
        assert!(!is_dns1123_label("a.b"));
        assert!(!is_dns1035_label("1abc"));
        assert!(is_qualified_name("app.kubernetes.io/name"));
        assert!(!is_qualified_name("-x"));
        assert!(is_label_value(""));
        assert!(!is_label_value("a b"));
        assert!(is_path_segment_name("system:aggregate-to-view") && is_path_segment_name("Any Name"));
        assert!(!is_path_segment_name("..") && !is_path_segment_name("a/b") && !is_path_segment_name("50%"));
    }

    #[test]
    fn a_broken_deployment_reports_every_error_at_once() {
        let errors = fields("deployment", json!({
            "metadata": {"name": "Web_1", "labels": {"ok": "bad value"}},
            "spec": {"replicas": -1, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "other"}},
                    "spec": {"containers": [{"name": "app"}, {"name": "app", "image": "x", "ports": [{"containerPort": 70000}]}]}}}
        }));
        for expected in [
            "metadata.name",
            "metadata.labels",
            "spec.replicas",
            "spec.template.metadata.labels",
            "spec.template.spec.containers[0].image",
            "spec.template.spec.containers[1].name",
            "spec.template.spec.containers[1].ports[0].containerPort",
        ] {
            assert!(errors.contains(&expected.to_owned()), "missing {expected} in {errors:?}");
        }
    }

    #[test]
    fn a_valid_deployment_has_no_errors() {
        let errors = fields("deployment", json!({
            "metadata": {"name": "web"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "shoal.local/samples/hello:latest"}]}}}
        }));
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn service_ports_are_checked() {
        let errors = fields("service", json!({"metadata": {"name": "1svc"}, "spec": {"ports": [{"port": 0}, {"name": "b", "port": 80, "protocol": "HTTP", "nodePort": 31000}]}}));
        assert_eq!(errors, vec!["metadata.name", "spec.ports[0].name", "spec.ports[0].port", "spec.ports[0].targetPort", "spec.ports[1].protocol", "spec.ports[1].nodePort"]);
    }

    #[test]
    fn jobs_need_a_terminating_restart_policy() {
        let errors = fields("job", json!({"metadata": {"name": "j", "uid": "u"}, "spec": {"template": {"spec": {"containers": [{"name": "w", "image": "i"}]}}}}));
        assert_eq!(errors, vec!["spec.template.spec.restartPolicy"]);
    }

    #[test]
    fn cron_schedules() {
        assert!(check_cron("*/5 * * * *").is_ok());
        assert!(check_cron("0 9-17 * * mon-fri").is_ok());
        assert!(check_cron("@hourly").is_ok());
        assert!(check_cron("61 * * * *").is_err());
        assert!(check_cron("* * *").is_err());
    }

    #[test]
    fn ingress_paths_need_a_type_and_a_backend() {
        let errors = fields("ingress", json!({"metadata": {"name": "i"}, "spec": {"rules": [{"host": "hello.localhost", "http": {"paths": [{"path": "/", "backend": {"service": {"name": "hello"}}}]}}]}}));
        assert_eq!(errors, vec!["spec.rules[0].http.paths[0].pathType", "spec.rules[0].http.paths[0].backend.service.port"]);
    }

    #[test]
    fn built_in_secret_types_require_their_keys() {
        let secret = |kind: &str, extra: Value| {
            let mut object = json!({"metadata": {"name": "s"}, "type": kind});
            object.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
            fields("secret", object)
        };
        assert!(secret("Opaque", json!({})).is_empty());
        assert!(secret("example.com/custom", json!({})).is_empty());
        assert_eq!(secret("kubernetes.io/tls", json!({"data": {"tls.key": "a2V5"}})), vec!["data[tls.crt]"]);
        // `stringData` counts: it is merged into `data` before validation.
        assert!(secret("kubernetes.io/tls", json!({"stringData": {"tls.crt": "c", "tls.key": "k"}})).is_empty());
        assert_eq!(secret("kubernetes.io/service-account-token", json!({})), vec!["metadata.annotations[kubernetes.io/service-account.name]"]);
        assert!(fields("secret", json!({"metadata": {"name": "s", "annotations": {"kubernetes.io/service-account.name": "ci"}}, "type": "kubernetes.io/service-account-token"})).is_empty());
        assert_eq!(secret("kubernetes.io/basic-auth", json!({"data": {"username": ""}})), vec!["data[username]", "data[password]"]);
        assert!(secret("kubernetes.io/basic-auth", json!({"stringData": {"password": "p"}})).is_empty());
        assert_eq!(secret("kubernetes.io/ssh-auth", json!({})), vec!["data[ssh-privatekey]"]);
        assert_eq!(secret("kubernetes.io/dockerconfigjson", json!({})), vec!["data[.dockerconfigjson]"]);
        assert!(secret("kubernetes.io/dockerconfigjson", json!({"stringData": {".dockerconfigjson": "{\"auths\": {}}"}})).is_empty());
        let info = by_name("secret").expect("served");
        let mut bad = json!({"metadata": {"name": "s"}, "type": "kubernetes.io/dockercfg", "stringData": {".dockercfg": "hunter2-not-json"}});
        crate::defaults::apply(info, &mut bad);
        let errors = validate(info, &bad);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].message.starts_with("Invalid value: \"<secret contents redacted>\": "), "{}", errors[0].message);
        assert!(!errors[0].message.contains("hunter2"), "the credential is not repeated: {}", errors[0].message);
    }

    #[test]
    fn an_immutable_config_map_or_secret_keeps_its_data_and_the_flag() {
        let current = json!({"immutable": true, "data": {"k": "v"}});
        assert!(immutable_data("ConfigMap", &current, &json!({"immutable": true, "data": {"k": "v"}, "metadata": {"labels": {"a": "b"}}})).is_empty());
        let fields_of = |errors: Vec<FieldError>| errors.into_iter().map(|e| e.field).collect::<Vec<_>>();
        assert_eq!(fields_of(immutable_data("ConfigMap", &current, &json!({"immutable": true, "data": {"k": "w"}}))), vec!["data"]);
        assert_eq!(fields_of(immutable_data("ConfigMap", &current, &json!({"immutable": true, "data": {"k": "v"}, "binaryData": {"b": "AA=="}}))), vec!["binaryData"]);
        assert_eq!(fields_of(immutable_data("Secret", &current, &json!({"data": {"k": "v"}}))), vec!["immutable"]);
        let error = &immutable_data("Secret", &current, &json!({"immutable": false}))[0];
        assert_eq!((error.reason, error.message.as_str()), ("FieldValueForbidden", "Forbidden: field is immutable when `immutable` is set"));
        // Not immutable, or not one of these kinds: anything goes.
        assert!(immutable_data("Secret", &json!({"data": {"k": "v"}}), &json!({"immutable": true, "data": {}})).is_empty());
        assert!(immutable_data("Pod", &current, &json!({})).is_empty());
    }
}
