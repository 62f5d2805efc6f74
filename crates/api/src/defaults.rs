//! Defaulting, as kube-apiserver applies it on create and update.

use serde_json::{Map, Value, json};

use crate::ResourceInfo;

/// Fills in every default the kind has. `uid` is the object's (already assigned) uid, which Job
/// defaulting needs for its generated selector.
pub fn apply(info: &ResourceInfo, object: &mut Value) {
    let uid = object["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
    let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    match (info.group, info.kind) {
        ("", "Namespace") => namespace(object, &name),
        ("", "Pod") => {
            if let Some(spec) = object.get_mut("spec") {
                pod_spec(spec);
                default_tolerations(spec);
                // The ServiceAccount admission plugin's default: the namespace's `default`
                // account (and the deprecated `serviceAccount` field mirrors it).
                if let Some(spec) = spec.as_object_mut() {
                    let account = spec.get("serviceAccountName").and_then(Value::as_str).filter(|name| !name.is_empty())
                        .or_else(|| spec.get("serviceAccount").and_then(Value::as_str).filter(|name| !name.is_empty()))
                        .unwrap_or("default").to_owned();
                    spec.insert("serviceAccountName".into(), json!(account));
                    spec.insert("serviceAccount".into(), json!(account));
                }
            }
        }
        ("", "Service") => service(object),
        ("", "Secret") => {
            set(root(object), "type", json!("Opaque"));
            merge_string_data(object);
        }
        ("", "Endpoints") => endpoints(object),
        ("apps", "Deployment") => deployment(object),
        ("apps", "ReplicaSet") => {
            let spec = child(root(object), "spec");
            set(spec, "replicas", json!(1));
            set(spec, "minReadySeconds", json!(0));
            template(spec);
        }
        ("apps", "DaemonSet") => daemon_set(object),
        ("batch", "Job") => {
            let spec = child(root(object), "spec");
            job_spec(spec, &uid, &name);
        }
        ("batch", "CronJob") => cron_job(object),
        ("discovery.k8s.io", "EndpointSlice") => {
            if let Some(ports) = object.get_mut("ports").and_then(Value::as_array_mut) {
                for port in ports.iter_mut().filter_map(Value::as_object_mut) {
                    set(port, "protocol", json!("TCP"));
                }
            }
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            let group = crate::validation::RBAC_GROUP;
            // An empty group counts as unset, as Go's zero value does.
            let unset = |map: &Map<String, Value>| map.get("apiGroup").and_then(Value::as_str).is_none_or(str::is_empty);
            let role = child(root(object), "roleRef");
            if unset(role) {
                role.insert("apiGroup".into(), json!(group));
            }
            if let Some(subjects) = object.get_mut("subjects").and_then(Value::as_array_mut) {
                for subject in subjects.iter_mut().filter_map(Value::as_object_mut) {
                    if matches!(subject.get("kind").and_then(Value::as_str), Some("User" | "Group")) && unset(subject) {
                        subject.insert("apiGroup".into(), json!(group));
                    }
                }
            }
        }
        ("autoscaling", "HorizontalPodAutoscaler") => {
            let spec = child(root(object), "spec");
            set(spec, "minReplicas", json!(1));
            // autoscaling/v2: no metrics means cpu at 80% of the pods' requests.
            if spec.get("metrics").and_then(Value::as_array).is_none_or(Vec::is_empty) {
                spec.insert("metrics".into(), json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]));
            }
        }
        _ => {}
    }
}

/// A Secret's `stringData` is write-only, as in Kubernetes: each key goes into `data`, base64
/// encoded (over a `data` key of the same name), and `stringData` is dropped.
fn merge_string_data(object: &mut Value) {
    use base64::Engine;
    let Some(Value::Object(strings)) = root(object).remove("stringData") else { return };
    let data = child(root(object), "data");
    for (key, value) in strings {
        let encoded = match value {
            Value::String(text) => Value::String(base64::engine::general_purpose::STANDARD.encode(text)),
            // Not a string: left for validation to name.
            other => other,
        };
        data.insert(key, encoded);
    }
}

fn root(object: &mut Value) -> &mut Map<String, Value> {
    if !object.is_object() {
        *object = Value::Object(Map::new());
    }
    object.as_object_mut().expect("just made an object")
}

/// The child object `key`, created when missing or null.
fn child<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let value = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    value.as_object_mut().expect("just made an object")
}

/// Sets `key` when it is absent or null.
fn set(map: &mut Map<String, Value>, key: &str, value: Value) {
    match map.get(key) {
        None | Some(Value::Null) => {
            map.insert(key.to_owned(), value);
        }
        Some(_) => {}
    }
}

fn namespace(object: &mut Value, name: &str) {
    let root = root(object);
    let labels = child(child(root, "metadata"), "labels");
    labels.insert("kubernetes.io/metadata.name".into(), json!(name));
    set(child(root, "spec"), "finalizers", json!(["kubernetes"]));
    set(child(root, "status"), "phase", json!("Active"));
}

/// Pod spec defaults (also used inside every pod template).
pub fn pod_spec(spec: &mut Value) {
    let Some(spec) = spec.as_object_mut() else { return };
    set(spec, "restartPolicy", json!("Always"));
    set(spec, "terminationGracePeriodSeconds", json!(30));
    set(spec, "dnsPolicy", json!("ClusterFirst"));
    set(spec, "schedulerName", json!("default-scheduler"));
    set(spec, "securityContext", json!({}));
    set(spec, "enableServiceLinks", json!(true));
    if spec.contains_key("serviceAccountName") || spec.contains_key("serviceAccount") {
        let account = spec.get("serviceAccountName").or(spec.get("serviceAccount")).cloned().unwrap_or(Value::Null);
        set(spec, "serviceAccountName", account.clone());
        set(spec, "serviceAccount", account);
    }
    for list in ["containers", "initContainers"] {
        if let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for container in containers.iter_mut().filter_map(Value::as_object_mut) {
                container_defaults(container);
            }
        }
    }
}

/// How long a pod stays on a node that is not ready or unreachable before it is evicted, unless
/// it says otherwise (Kubernetes' DefaultTolerationSeconds admission uses 300 s; Shoal moves
/// pods off a dead node in seconds).
pub const DEFAULT_NODE_FAILURE_TOLERATION_SECONDS: i64 = 5;

/// Adds the not-ready and unreachable NoExecute tolerations a pod lacks, as the
/// DefaultTolerationSeconds admission plugin does.
fn default_tolerations(spec: &mut Value) {
    let Some(spec) = spec.as_object_mut() else { return };
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    let Some(list) = tolerations.as_array_mut() else { return };
    for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
        let covered = list.iter().any(|t| {
            let effect = t["effect"].as_str().unwrap_or_default();
            let effect_ok = effect.is_empty() || effect == "NoExecute";
            let key_ok = t["key"].as_str().is_none_or(|k| k.is_empty() && t["operator"] == "Exists") || t["key"] == key;
            effect_ok && key_ok
        });
        if !covered {
            list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": DEFAULT_NODE_FAILURE_TOLERATION_SECONDS}));
        }
    }
}

fn container_defaults(container: &mut Map<String, Value>) {
    set(container, "terminationMessagePath", json!("/dev/termination-log"));
    set(container, "terminationMessagePolicy", json!("File"));
    set(container, "resources", json!({}));
    let image = container.get("image").and_then(Value::as_str).unwrap_or_default();
    let pull_policy = if image_tag_is_latest(image) { "Always" } else { "IfNotPresent" };
    set(container, "imagePullPolicy", json!(pull_policy));
    if let Some(ports) = container.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            set(port, "protocol", json!("TCP"));
        }
    }
    if let Some(env) = container.get_mut("env").and_then(Value::as_array_mut) {
        for variable in env.iter_mut().filter_map(Value::as_object_mut) {
            if let Some(field_ref) = variable.get_mut("valueFrom").and_then(|v| v.get_mut("fieldRef")).and_then(Value::as_object_mut) {
                set(field_ref, "apiVersion", json!("v1"));
            }
        }
    }
}

/// Kubernetes pulls always when the tag is `latest` or absent (and no digest is given).
fn image_tag_is_latest(image: &str) -> bool {
    if image.contains('@') {
        return false;
    }
    let last_segment = image.rsplit('/').next().unwrap_or(image);
    match last_segment.rsplit_once(':') {
        Some((_, tag)) => tag == "latest",
        None => true,
    }
}

fn template(spec: &mut Map<String, Value>) {
    if let Some(spec) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
        pod_spec(spec);
    }
}

fn deployment(object: &mut Value) {
    let spec = child(root(object), "spec");
    set(spec, "replicas", json!(1));
    set(spec, "revisionHistoryLimit", json!(10));
    set(spec, "progressDeadlineSeconds", json!(600));
    set(spec, "minReadySeconds", json!(0));
    let strategy = child(spec, "strategy");
    set(strategy, "type", json!("RollingUpdate"));
    if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
        let rolling = child(strategy, "rollingUpdate");
        set(rolling, "maxUnavailable", json!("25%"));
        set(rolling, "maxSurge", json!("25%"));
    }
    template(spec);
}

fn daemon_set(object: &mut Value) {
    let spec = child(root(object), "spec");
    set(spec, "revisionHistoryLimit", json!(10));
    set(spec, "minReadySeconds", json!(0));
    let strategy = child(spec, "updateStrategy");
    set(strategy, "type", json!("RollingUpdate"));
    if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
        let rolling = child(strategy, "rollingUpdate");
        set(rolling, "maxUnavailable", json!(1));
        set(rolling, "maxSurge", json!(0));
    }
    template(spec);
}

fn job_spec(spec: &mut Map<String, Value>, uid: &str, name: &str) {
    let completions_set = spec.get("completions").is_some_and(|v| !v.is_null());
    let parallelism_set = spec.get("parallelism").is_some_and(|v| !v.is_null());
    if !completions_set && !parallelism_set {
        spec.insert("completions".into(), json!(1));
    }
    set(spec, "parallelism", json!(1));
    set(spec, "backoffLimit", json!(6));
    set(spec, "completionMode", json!("NonIndexed"));
    set(spec, "suspend", json!(false));
    set(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    let manual = spec.get("manualSelector").and_then(Value::as_bool).unwrap_or(false);
    if !manual && !uid.is_empty() && spec.get("selector").is_none_or(Value::is_null) {
        // As the Job create strategy does: a selector on the controller uid, and the matching
        // labels on the pod template.
        spec.insert("selector".into(), json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}));
        let labels = child(child(child(spec, "template"), "metadata"), "labels");
        for (key, value) in [
            ("batch.kubernetes.io/controller-uid", uid),
            ("controller-uid", uid),
            ("batch.kubernetes.io/job-name", name),
            ("job-name", name),
        ] {
            labels.insert(key.into(), json!(value));
        }
    }
    template(spec);
}

fn cron_job(object: &mut Value) {
    let spec = child(root(object), "spec");
    set(spec, "concurrencyPolicy", json!("Allow"));
    set(spec, "suspend", json!(false));
    set(spec, "successfulJobsHistoryLimit", json!(3));
    set(spec, "failedJobsHistoryLimit", json!(1));
    let job_template_spec = child(child(spec, "jobTemplate"), "spec");
    // The uid-based selector is the Job's business when the CronJob creates it.
    job_spec(job_template_spec, "", "");
}

fn service(object: &mut Value) {
    let spec = child(root(object), "spec");
    set(spec, "type", json!("ClusterIP"));
    set(spec, "sessionAffinity", json!("None"));
    let service_type = spec.get("type").and_then(Value::as_str).unwrap_or_default().to_owned();
    if service_type != "ExternalName" {
        set(spec, "ipFamilyPolicy", json!("SingleStack"));
        set(spec, "ipFamilies", json!(["IPv4"]));
        set(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if service_type == "NodePort" || service_type == "LoadBalancer" {
        set(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            set(port, "protocol", json!("TCP"));
            if let Some(number) = port.get("port").cloned() {
                set(port, "targetPort", number);
            }
        }
    }
}

fn endpoints(object: &mut Value) {
    if let Some(subsets) = object.get_mut("subsets").and_then(Value::as_array_mut) {
        for subset in subsets {
            if let Some(ports) = subset.get_mut("ports").and_then(Value::as_array_mut) {
                for port in ports.iter_mut().filter_map(Value::as_object_mut) {
                    set(port, "protocol", json!("TCP"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secrets_string_data_goes_into_data_encoded() {
        let secrets = crate::resources::by_name("secrets").expect("secrets");
        let mut secret = json!({"metadata": {"name": "s"}, "data": {"kept": "YQ==", "both": "b2xk"}, "stringData": {"both": "new", "text": "hello"}});
        apply(secrets, &mut secret);
        assert_eq!(secret["data"], json!({"kept": "YQ==", "both": "bmV3", "text": "aGVsbG8="}));
        assert!(secret.get("stringData").is_none(), "stringData is write-only");
        assert_eq!(secret["type"], "Opaque");
        let mut only_strings = json!({"metadata": {"name": "s"}, "stringData": {"k": ""}});
        apply(secrets, &mut only_strings);
        assert_eq!(only_strings["data"], json!({"k": ""}));
    }

    use crate::resources::by_name;

    fn defaulted(kind: &str, mut object: Value) -> Value {
        apply(by_name(kind).expect("served"), &mut object);
        object
    }

    #[test]
    fn deployment_defaults_match_kube_apiserver() {
        let object = defaulted("deployment", json!({
            "metadata": {"name": "web"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "shoal.local/hello:1", "ports": [{"containerPort": 8080}]}]}}}
        }));
        let spec = &object["spec"];
        assert_eq!(spec["replicas"], 1);
        assert_eq!(spec["revisionHistoryLimit"], 10);
        assert_eq!(spec["progressDeadlineSeconds"], 600);
        assert_eq!(spec["strategy"], json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}));
        let pod = &spec["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Always");
        assert_eq!(pod["terminationGracePeriodSeconds"], 30);
        assert_eq!(pod["dnsPolicy"], "ClusterFirst");
        assert_eq!(pod["containers"][0]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(pod["containers"][0]["ports"][0]["protocol"], "TCP");
    }

    #[test]
    fn user_values_win_over_defaults() {
        let object = defaulted("deployment", json!({"spec": {"replicas": 0, "strategy": {"type": "Recreate"}}}));
        assert_eq!(object["spec"]["replicas"], 0);
        assert_eq!(object["spec"]["strategy"], json!({"type": "Recreate"}));
    }

    #[test]
    fn latest_or_untagged_images_pull_always() {
        assert!(image_tag_is_latest("busybox"));
        assert!(image_tag_is_latest("shoal.local/samples/hello:latest"));
        assert!(!image_tag_is_latest("localhost:5000/hello:1"));
        assert!(image_tag_is_latest("localhost:5000/hello"));
        assert!(!image_tag_is_latest("hello@sha256:abc"));
    }

    #[test]
    fn service_ports_default_protocol_and_target_port() {
        let object = defaulted("svc", json!({"spec": {"ports": [{"port": 80}, {"port": 443, "targetPort": "https"}]}}));
        assert_eq!(object["spec"]["type"], "ClusterIP");
        assert_eq!(object["spec"]["ports"][0], json!({"port": 80, "protocol": "TCP", "targetPort": 80}));
        assert_eq!(object["spec"]["ports"][1]["targetPort"], "https");
    }

    #[test]
    fn job_gets_a_uid_selector_and_template_labels() {
        let object = defaulted("job", json!({"metadata": {"name": "once", "uid": "u-1"}, "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": []}}}}));
        assert_eq!(object["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"], "u-1");
        assert_eq!(object["spec"]["template"]["metadata"]["labels"]["job-name"], "once");
        assert_eq!(object["spec"]["completions"], 1);
        assert_eq!(object["spec"]["backoffLimit"], 6);
    }

    #[test]
    fn namespace_gets_its_name_label_and_phase() {
        let object = defaulted("ns", json!({"metadata": {"name": "team-a"}}));
        assert_eq!(object["metadata"]["labels"]["kubernetes.io/metadata.name"], "team-a");
        assert_eq!(object["status"]["phase"], "Active");
    }
}
