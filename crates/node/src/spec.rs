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
pub async fn sandbox(client: &Client, pod: &Value, container: &Value, volume_root: &Path, host_ip: &str, logs: LogSink) -> Result<SandboxSpec, String> {
    let namespace = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let mut spec = SandboxSpec::new(logs);
    let mut env: Vec<(String, String)> = vec![("HOSTNAME".into(), pod_name.to_owned())];
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
                match field {
                    "metadata.name" => pod_name.to_owned(),
                    "metadata.namespace" => namespace.to_owned(),
                    "metadata.uid" => pod["metadata"]["uid"].as_str().unwrap_or_default().to_owned(),
                    "spec.nodeName" => pod["spec"]["nodeName"].as_str().unwrap_or_default().to_owned(),
                    "status.podIP" | "status.hostIP" => host_ip.to_owned(),
                    other => return Err(format!("unsupported fieldRef {other}")),
                }
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
        let host_path = materialize(client, namespace, volume, &volume_root.join(volume_name)).await?;
        let read_only = mount["readOnly"] == true || volume.get("configMap").is_some() || volume.get("secret").is_some();
        spec.preopens.push(Preopen { host_path, guest_path: mount["mountPath"].as_str().unwrap_or("/").to_owned(), read_only });
    }
    Ok(spec)
}

/// Makes a volume's content exist on the node and returns its directory.
async fn materialize(client: &Client, namespace: &str, volume: &Value, directory: &Path) -> Result<std::path::PathBuf, String> {
    let io = |e: std::io::Error| format!("{}: {e}", directory.display());
    if let Some(path) = volume["hostPath"]["path"].as_str() {
        return Ok(std::path::PathBuf::from(path));
    }
    std::fs::create_dir_all(directory).map_err(io)?;
    let (kind, name_field, source) = if let Some(source) = volume.get("configMap") {
        ("configmap", "name", source)
    } else if let Some(source) = volume.get("secret") {
        ("secret", "secretName", source)
    } else {
        // emptyDir (and anything else backed by a plain directory).
        return Ok(directory.to_owned());
    };
    let info = resources::by_name(kind).ok_or("unknown kind")?;
    let name = source[name_field].as_str().unwrap_or_default();
    let object = client.get(info, Some(namespace), name).await.map_err(|e| format!("{kind} {name}: {e}"))?;
    let items: Vec<(String, String)> = match source["items"].as_array() {
        Some(items) => items.iter().map(|i| (i["key"].as_str().unwrap_or_default().to_owned(), i["path"].as_str().unwrap_or_default().to_owned())).collect(),
        None => object["data"].as_object().into_iter().flatten().map(|(k, _)| (k.clone(), k.clone())).collect(),
    };
    for (key, path) in items {
        if path.split('/').any(|p| p == "..") {
            return Err(format!("volume item path {path:?} escapes the volume"));
        }
        let raw = object["data"][&key].as_str().ok_or_else(|| format!("{kind} {name} has no key {key}"))?;
        let bytes = if kind == "secret" { base64::engine::general_purpose::STANDARD.decode(raw).map_err(|e| e.to_string())? } else { raw.as_bytes().to_vec() };
        let target = directory.join(&path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&target, bytes).map_err(io)?;
    }
    Ok(directory.to_owned())
}

/// A container's `resources.limits.cpu` in millicores (`"500m"`, `"2"`, `1.5`), if positive.
pub fn cpu_millicores(container: &Value) -> Option<u64> {
    shoal_api::quantity::of_json(&container["resources"]["limits"]["cpu"]).as_deref().and_then(shoal_api::quantity::parse_milli).filter(|m| *m > 0).map(|m| m as u64)
}

#[cfg(test)]
mod tests {
    use super::{cpu_millicores, parse_bytes};

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
