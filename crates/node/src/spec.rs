//! Resolving a container of a pod spec into the sandbox the runtime enforces: environment
//! (values, ConfigMap and Secret keys, pod fields, envFrom), HOSTNAME, volumes as preopens,
//! memory limit and time budget. Nothing the spec does not grant is granted.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use serde_json::Value;
use shoal_api::resources;
use shoal_client::Client;
use shoal_runtime_wasm::{LogSink, Preopen, SandboxSpec};

/// The annotation that sets a pod's per-request (or per-run) time budget, in seconds.
pub const TIME_BUDGET_ANNOTATION: &str = "shoal.dev/time-budget-seconds";
/// The annotation by which a pod opts in to reusing an instance for up to N sequential requests
/// (trading isolation between its own requests for throughput). Default 1: a fresh instance per
/// request.
pub const REUSE_ANNOTATION: &str = "shoal.dev/instance-reuse";
/// The annotation that caps concurrent requests to a pod's HTTP components.
pub const CONCURRENCY_ANNOTATION: &str = "shoal.dev/max-concurrency";
const DEFAULT_TIME_BUDGET: Duration = Duration::from_secs(30);

/// Parses a Kubernetes quantity of bytes (`128Mi`, `1G`, `1000000`).
pub fn parse_bytes(quantity: &str) -> Option<u64> {
    shoal_api::quantity::parse_units(quantity).and_then(|b| u64::try_from(b).ok())
}

async fn config_value(client: &Client, kind: &str, namespace: &str, name: &str, key: &str) -> Result<String, String> {
    let info = resources::by_name(kind).ok_or_else(|| format!("unknown kind {kind}"))?;
    let object = client.get(info, Some(namespace), name).await.map_err(|e| format!("{kind} {namespace}/{name}: {e}"))?;
    if kind == "secret" {
        let encoded = object["data"][key].as_str().ok_or_else(|| format!("secret {name} has no key {key}"))?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).map_err(|e| format!("secret {name}/{key}: {e}"))?;
        return String::from_utf8(bytes).map_err(|_| format!("secret {name}/{key} is not UTF-8"));
    }
    object["data"][key].as_str().map(str::to_owned).ok_or_else(|| format!("configmap {name} has no key {key}"))
}

/// Builds the sandbox of `container` in `pod`. Errors name what is missing (they become the
/// container's `CreateContainerConfigError`).
/// `api_service` is the `default/kubernetes` Service's cluster IP and port, when the node knows
/// it: every container gets kube's `KUBERNETES_SERVICE_HOST` variables, which in-cluster
/// clients read.
pub async fn sandbox(client: &Client, pod: &Value, container: &Value, volume_root: &Path, host_ip: &str, api_service: Option<(std::net::Ipv4Addr, u16)>, logs: LogSink) -> Result<SandboxSpec, String> {
    let namespace = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let mut spec = SandboxSpec::new(logs);
    let mut env: Vec<(String, String)> = vec![("HOSTNAME".into(), pod_name.to_owned())];
    if let Some((ip, port)) = api_service {
        env.extend(api_service_env(ip, port));
    }
    for source in container["envFrom"].as_array().into_iter().flatten() {
        let prefix = source["prefix"].as_str().unwrap_or_default();
        let (kind, reference) = if source["configMapRef"].is_object() { ("configmap", &source["configMapRef"]) } else { ("secret", &source["secretRef"]) };
        let name = reference["name"].as_str().unwrap_or_default();
        let info = resources::by_name(kind).ok_or("unknown kind")?;
        match client.get(info, Some(namespace), name).await {
            Ok(object) => {
                for (key, value) in object["data"].as_object().into_iter().flatten() {
                    let value = if kind == "secret" {
                        base64::engine::general_purpose::STANDARD.decode(value.as_str().unwrap_or_default()).ok().and_then(|b| String::from_utf8(b).ok()).unwrap_or_default()
                    } else {
                        value.as_str().unwrap_or_default().to_owned()
                    };
                    env.push((format!("{prefix}{key}"), value));
                }
            }
            Err(_) if reference["optional"] == true => {}
            Err(error) => return Err(format!("{kind} {name}: {error}")),
        }
    }
    for variable in container["env"].as_array().into_iter().flatten() {
        let name = variable["name"].as_str().unwrap_or_default().to_owned();
        let value = if let Some(value) = variable["value"].as_str() {
            value.to_owned()
        } else if let Some(from) = variable.get("valueFrom") {
            if let Some(reference) = from.get("configMapKeyRef") {
                match config_value(client, "configmap", namespace, reference["name"].as_str().unwrap_or_default(), reference["key"].as_str().unwrap_or_default()).await {
                    Ok(value) => value,
                    Err(_) if reference["optional"] == true => continue,
                    Err(error) => return Err(error),
                }
            } else if let Some(reference) = from.get("secretKeyRef") {
                match config_value(client, "secret", namespace, reference["name"].as_str().unwrap_or_default(), reference["key"].as_str().unwrap_or_default()).await {
                    Ok(value) => value,
                    Err(_) if reference["optional"] == true => continue,
                    Err(error) => return Err(error),
                }
            } else if let Some(field) = from["fieldRef"]["fieldPath"].as_str() {
                if matches!(field, "metadata.labels" | "metadata.annotations") {
                    return Err(format!("env {name}: fieldRef {field} is only supported in downwardAPI volumes"));
                }
                field_value(pod, field, host_ip)?
            } else if from["resourceFieldRef"].is_object() {
                resource_value(pod, container, &from["resourceFieldRef"])?
            } else {
                return Err(format!("env {name}: unsupported valueFrom"));
            }
        } else {
            String::new()
        };
        env.retain(|(existing, _)| *existing != name);
        env.push((name, value));
    }
    spec.env = env;
    spec.args = std::iter::once(container["name"].as_str().unwrap_or("main").to_owned())
        .chain(container["command"].as_array().into_iter().flatten().skip(1).chain(container["args"].as_array().into_iter().flatten()).filter_map(|a| a.as_str().map(str::to_owned)))
        .collect();
    if let Some(memory) = shoal_api::quantity::of_json(&container["resources"]["limits"]["memory"]).as_deref().and_then(parse_bytes) {
        spec.memory_limit_bytes = memory as usize;
    }
    // The CPU limit is the container's, shared by every instance of it.
    spec.cpu = cpu_millicores(container).and_then(shoal_runtime_wasm::CpuLimit::new);
    spec.time_budget = pod["metadata"]["annotations"][TIME_BUDGET_ANNOTATION]
        .as_str()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(DEFAULT_TIME_BUDGET);
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let volume_name = mount["name"].as_str().unwrap_or_default();
        let volume = pod["spec"]["volumes"].as_array().into_iter().flatten().find(|v| v["name"] == volume_name).ok_or_else(|| format!("volume {volume_name} is not declared"))?;
        // The pod's volumes are written (`crate::volumes`) before any container starts.
        let whole = match volume["hostPath"]["path"].as_str() {
            Some(path) => std::path::PathBuf::from(path),
            None => volume_root.join(volume_name),
        };
        let written_by_node = crate::volumes::written_by_node(volume);
        let host_path = match crate::subpath::of_mount(mount, &spec.env).map_err(|e| format!("volume mount {volume_name}: {e}"))? {
            Some(sub_path) => crate::subpath::resolve(&whole, &sub_path, !written_by_node).map_err(|e| format!("volume {volume_name}: {e}"))?,
            None => whole,
        };
        let read_only = mount["readOnly"] == true || written_by_node;
        spec.preopens.push(Preopen { host_path, guest_path: mount["mountPath"].as_str().unwrap_or("/").to_owned(), read_only });
    }
    Ok(spec)
}

/// kube's variables for the API's Service (`KUBERNETES_SERVICE_HOST`, `…_PORT`, and the
/// Docker-link style `KUBERNETES_PORT_443_TCP…`).
pub fn api_service_env(ip: std::net::Ipv4Addr, port: u16) -> Vec<(String, String)> {
    let url = format!("tcp://{ip}:{port}");
    vec![
        ("KUBERNETES_SERVICE_HOST".into(), ip.to_string()),
        ("KUBERNETES_SERVICE_PORT".into(), port.to_string()),
        ("KUBERNETES_SERVICE_PORT_HTTPS".into(), port.to_string()),
        ("KUBERNETES_PORT".into(), url.clone()),
        (format!("KUBERNETES_PORT_{port}_TCP"), url),
        (format!("KUBERNETES_PORT_{port}_TCP_PROTO"), "tcp".into()),
        (format!("KUBERNETES_PORT_{port}_TCP_PORT"), port.to_string()),
        (format!("KUBERNETES_PORT_{port}_TCP_ADDR"), ip.to_string()),
    ]
}

/// The value of a pod field a `fieldRef` names, as the downward API gives it (labels and
/// annotations as `key="value"` lines, sorted).
pub fn field_value(pod: &Value, path: &str, host_ip: &str) -> Result<String, String> {
    let metadata = &pod["metadata"];
    let string = |value: &Value| value.as_str().unwrap_or_default().to_owned();
    let keyed = |map: &str, rest: &str| -> Option<String> {
        let key = rest.strip_prefix("['").and_then(|r| r.strip_suffix("']")).or_else(|| rest.strip_prefix("[\"").and_then(|r| r.strip_suffix("\"]")))?;
        Some(string(&metadata[map][key]))
    };
    Ok(match path {
        "metadata.name" => string(&metadata["name"]),
        "metadata.namespace" => string(&metadata["namespace"]),
        "metadata.uid" => string(&metadata["uid"]),
        "metadata.labels" | "metadata.annotations" => {
            let map = metadata[path.trim_start_matches("metadata.")].as_object().cloned().unwrap_or_default();
            let mut lines: Vec<String> = map.iter().map(|(k, v)| format!("{k}={}", serde_json::to_string(v.as_str().unwrap_or_default()).unwrap_or_default())).collect();
            lines.sort();
            lines.join("\n")
        }
        "spec.nodeName" => string(&pod["spec"]["nodeName"]),
        "spec.serviceAccountName" => string(&pod["spec"]["serviceAccountName"]),
        "status.podIP" | "status.hostIP" | "status.podIPs" | "status.hostIPs" => host_ip.to_owned(),
        other => {
            if let Some(rest) = other.strip_prefix("metadata.labels")
                && let Some(value) = keyed("labels", rest)
            {
                return Ok(value);
            }
            if let Some(rest) = other.strip_prefix("metadata.annotations")
                && let Some(value) = keyed("annotations", rest)
            {
                return Ok(value);
            }
            return Err(format!("unsupported fieldRef {other}"));
        }
    })
}

/// The value a `resourceFieldRef` names (`limits.cpu`, `requests.memory`, …) of `container`,
/// in units of its divisor (default 1), rounded up as kube rounds it. A limit not set is the
/// node's allocatable amount in kube; here it is reported as 0 for memory and 1 core for cpu
/// when neither a limit nor a request says otherwise.
pub fn resource_value(pod: &Value, container: &Value, reference: &Value) -> Result<String, String> {
    let name = reference["containerName"].as_str().unwrap_or_default();
    let container = if name.is_empty() {
        container
    } else {
        ["containers", "initContainers"]
            .iter()
            .flat_map(|key| pod["spec"][*key].as_array().into_iter().flatten())
            .find(|c| c["name"] == name)
            .ok_or_else(|| format!("resourceFieldRef names container {name:?}, which the pod does not have"))?
    };
    let resource = reference["resource"].as_str().unwrap_or_default();
    let (kind, what) = resource.split_once('.').ok_or_else(|| format!("unsupported resourceFieldRef {resource:?}"))?;
    if !matches!(kind, "limits" | "requests") || !matches!(what, "cpu" | "memory" | "ephemeral-storage") {
        return Err(format!("unsupported resourceFieldRef {resource:?}"));
    }
    let resources = &container["resources"];
    let quantity = shoal_api::quantity::of_json(&resources[kind][what]).or_else(|| if kind == "limits" { None } else { shoal_api::quantity::of_json(&resources["limits"][what]) });
    let divisor = shoal_api::quantity::of_json(&reference["divisor"]).unwrap_or_else(|| "1".into());
    let milli = |q: &str| shoal_api::quantity::parse_milli(q).ok_or_else(|| format!("resourceFieldRef {resource}: {q:?} is not a quantity"));
    let amount = match quantity {
        Some(q) => milli(&q)?,
        None if what == "cpu" => 1000,
        None => 0,
    };
    let divisor = milli(&divisor)?;
    if divisor <= 0 {
        return Err(format!("resourceFieldRef {resource}: the divisor must be positive"));
    }
    Ok(((amount + divisor - 1) / divisor).to_string())
}

/// A container's `resources.limits.cpu` in millicores (`"500m"`, `"2"`, `1.5`), if positive.
pub fn cpu_millicores(container: &Value) -> Option<u64> {
    shoal_api::quantity::of_json(&container["resources"]["limits"]["cpu"]).as_deref().and_then(shoal_api::quantity::parse_milli).filter(|m| *m > 0).map(|m| m as u64)
}

#[cfg(test)]
mod tests {
    use super::{api_service_env, cpu_millicores, field_value, parse_bytes, resource_value};
    use serde_json::json;

    #[test]
    fn the_downward_api_gives_pod_fields_labels_and_resources() {
        let pod = json!({
            "metadata": {"name": "web", "namespace": "team", "uid": "u1", "labels": {"tier": "front", "app": "web"}, "annotations": {"note": "say \"hi\""}},
            "spec": {"nodeName": "node-2", "serviceAccountName": "bot", "containers": [
                {"name": "app", "resources": {"limits": {"cpu": "1500m", "memory": "64Mi"}, "requests": {"cpu": "250m"}}},
                {"name": "side"},
            ]},
        });
        let field = |path: &str| field_value(&pod, path, "10.0.0.7");
        assert_eq!(field("metadata.namespace").as_deref(), Ok("team"));
        assert_eq!(field("spec.serviceAccountName").as_deref(), Ok("bot"));
        assert_eq!(field("status.podIP").as_deref(), Ok("10.0.0.7"));
        assert_eq!(field("metadata.labels").as_deref(), Ok("app=\"web\"\ntier=\"front\""));
        assert_eq!(field("metadata.annotations").as_deref(), Ok("note=\"say \\\"hi\\\"\""));
        assert_eq!(field("metadata.labels['tier']").as_deref(), Ok("front"));
        assert!(field("spec.hostname").is_err());
        let app = &pod["spec"]["containers"][0];
        let resource = |reference: serde_json::Value| resource_value(&pod, app, &reference);
        assert_eq!(resource(json!({"resource": "limits.cpu"})).as_deref(), Ok("2"), "rounded up to whole cores");
        assert_eq!(resource(json!({"resource": "limits.cpu", "divisor": "1m"})).as_deref(), Ok("1500"));
        assert_eq!(resource(json!({"resource": "requests.cpu", "divisor": "1m"})).as_deref(), Ok("250"));
        assert_eq!(resource(json!({"resource": "limits.memory", "divisor": "1Mi"})).as_deref(), Ok("64"));
        assert_eq!(resource(json!({"resource": "limits.memory", "containerName": "side"})).as_deref(), Ok("0"));
        assert!(resource(json!({"resource": "limits.cpu", "containerName": "nope"})).is_err());
        assert!(resource(json!({"resource": "limits.gpu"})).is_err());
        assert!(resource(json!({"resource": "limits.cpu", "divisor": "0"})).is_err());
    }

    #[test]
    fn containers_learn_the_api_service_as_kube_names_it() {
        let env = api_service_env("10.43.0.1".parse().expect("ip"), 443);
        let get = |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert_eq!(get("KUBERNETES_SERVICE_HOST"), Some("10.43.0.1"));
        assert_eq!(get("KUBERNETES_SERVICE_PORT"), Some("443"));
        assert_eq!(get("KUBERNETES_PORT_443_TCP_ADDR"), Some("10.43.0.1"));
        assert_eq!(get("KUBERNETES_PORT"), Some("tcp://10.43.0.1:443"));
    }

    #[test]
    fn cpu_limits_in_millicores() {
        let limit = |cpu: serde_json::Value| cpu_millicores(&serde_json::json!({"resources": {"limits": {"cpu": cpu}}}));
        assert_eq!(limit(serde_json::json!("500m")), Some(500));
        assert_eq!(limit(serde_json::json!("2")), Some(2000));
        assert_eq!(limit(serde_json::json!(1.5)), Some(1500));
        assert_eq!(limit(serde_json::json!("0")), None);
        assert_eq!(limit(serde_json::json!(null)), None);
        assert_eq!(limit(serde_json::json!("lots")), None);
    }

    #[test]
    fn memory_quantities() {
        assert_eq!(parse_bytes("128Mi"), Some(128 * 1024 * 1024));
        assert_eq!(parse_bytes("1G"), Some(1_000_000_000));
        assert_eq!(parse_bytes("1.5Gi"), Some(1024 * 1024 * 1024 * 3 / 2));
        assert_eq!(parse_bytes("4096"), Some(4096));
        assert_eq!(parse_bytes("12Q"), None);
    }
}
