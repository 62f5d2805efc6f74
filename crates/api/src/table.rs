//! Table rows: the columns `kubectl get` shows for each kind, rendered from objects. Used by
//! `shoal get` and, with the kubectl work, by server-side `as=Table` responses.

use serde_json::Value;

use crate::ResourceInfo;
use crate::meta::{human_duration, parse_time};

/// One column: its header and whether it shows only with `-o wide` (priority 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub priority: u8,
}

const fn col(name: &'static str) -> Column {
    Column { name, priority: 0 }
}

const fn wide(name: &'static str) -> Column {
    Column { name, priority: 1 }
}

pub fn columns(info: &ResourceInfo) -> Vec<Column> {
    match info.kind {
        "Pod" => vec![col("NAME"), col("READY"), col("STATUS"), col("RESTARTS"), col("AGE"), wide("IP"), wide("NODE")],
        "Deployment" => vec![col("NAME"), col("READY"), col("UP-TO-DATE"), col("AVAILABLE"), col("AGE"), wide("CONTAINERS"), wide("IMAGES"), wide("SELECTOR")],
        "ReplicaSet" => vec![col("NAME"), col("DESIRED"), col("CURRENT"), col("READY"), col("AGE"), wide("CONTAINERS"), wide("IMAGES"), wide("SELECTOR")],
        "DaemonSet" => vec![col("NAME"), col("DESIRED"), col("CURRENT"), col("READY"), col("UP-TO-DATE"), col("AVAILABLE"), col("NODE SELECTOR"), col("AGE"), wide("CONTAINERS"), wide("IMAGES"), wide("SELECTOR")],
        "Service" => vec![col("NAME"), col("TYPE"), col("CLUSTER-IP"), col("EXTERNAL-IP"), col("PORT(S)"), col("AGE"), wide("SELECTOR")],
        "Job" => vec![col("NAME"), col("STATUS"), col("COMPLETIONS"), col("DURATION"), col("AGE"), wide("CONTAINERS"), wide("IMAGES"), wide("SELECTOR")],
        "CronJob" => vec![col("NAME"), col("SCHEDULE"), col("TIMEZONE"), col("SUSPEND"), col("ACTIVE"), col("LAST SCHEDULE"), col("AGE"), wide("CONTAINERS"), wide("IMAGES"), wide("SELECTOR")],
        "Namespace" => vec![col("NAME"), col("STATUS"), col("AGE")],
        "Node" => vec![col("NAME"), col("STATUS"), col("ROLES"), col("AGE"), col("VERSION"), wide("INTERNAL-IP"), wide("OS-IMAGE"), wide("KERNEL-VERSION"), wide("CONTAINER-RUNTIME")],
        "ConfigMap" => vec![col("NAME"), col("DATA"), col("AGE")],
        "Secret" => vec![col("NAME"), col("TYPE"), col("DATA"), col("AGE")],
        "Ingress" => vec![col("NAME"), col("CLASS"), col("HOSTS"), col("ADDRESS"), col("PORTS"), col("AGE")],
        "IngressClass" => vec![col("NAME"), col("CONTROLLER"), col("PARAMETERS"), col("AGE")],
        "Endpoints" => vec![col("NAME"), col("ENDPOINTS"), col("AGE")],
        "EndpointSlice" => vec![col("NAME"), col("ADDRESSTYPE"), col("PORTS"), col("ENDPOINTS"), col("AGE")],
        "Event" => vec![col("LAST SEEN"), col("TYPE"), col("REASON"), col("OBJECT"), col("MESSAGE")],
        "Lease" => vec![col("NAME"), col("HOLDER"), col("AGE")],
        "ServiceAccount" => vec![col("NAME"), col("SECRETS"), col("AGE")],
        "Role" | "ClusterRole" => vec![col("NAME"), col("CREATED AT")],
        "RoleBinding" | "ClusterRoleBinding" => vec![col("NAME"), col("ROLE"), col("AGE"), wide("USERS"), wide("GROUPS"), wide("SERVICEACCOUNTS")],
        "HorizontalPodAutoscaler" => vec![col("NAME"), col("REFERENCE"), col("TARGETS"), col("MINPODS"), col("MAXPODS"), col("REPLICAS"), col("AGE")],
        _ => vec![col("NAME"), col("AGE")],
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn int(value: &Value) -> i64 {
    value.as_i64().unwrap_or(0)
}

fn or_none(text: String) -> String {
    if text.is_empty() { "<none>".into() } else { text }
}

/// Age of a timestamp field relative to `now`.
pub fn age(timestamp: &Value, now: jiff::Timestamp) -> String {
    match timestamp.as_str().and_then(parse_time) {
        Some(time) => human_duration(now.as_second() - time.as_second()),
        None => "<unknown>".into(),
    }
}

fn containers_images(template_spec: &Value) -> (String, String) {
    let containers = template_spec["containers"].as_array().cloned().unwrap_or_default();
    let names: Vec<String> = containers.iter().map(|c| text(&c["name"])).collect();
    let images: Vec<String> = containers.iter().map(|c| text(&c["image"])).collect();
    (names.join(","), images.join(","))
}

fn selector_text(selector: &Value) -> String {
    match crate::selector::LabelSelector::from_object(selector) {
        Ok(selector) => or_none(selector.to_string()),
        Err(_) => "<invalid>".into(),
    }
}

fn map_selector(selector: &Value) -> String {
    let pairs: Vec<String> = selector.as_object().into_iter().flatten().map(|(k, v)| format!("{k}={}", text(v))).collect();
    or_none(pairs.join(","))
}

/// Pod STATUS as kubectl derives it (reason, waiting/terminated container reasons, deletion).
pub fn pod_status(pod: &Value) -> String {
    let mut reason = text(&pod["status"]["phase"]);
    if let Some(r) = pod["status"]["reason"].as_str() {
        reason = r.to_owned();
    }
    for status in pod["status"]["containerStatuses"].as_array().into_iter().flatten() {
        if let Some(waiting) = status["state"]["waiting"]["reason"].as_str() {
            reason = waiting.to_owned();
        } else if let Some(terminated) = status["state"]["terminated"]["reason"].as_str() {
            reason = terminated.to_owned();
        }
    }
    if !pod["metadata"]["deletionTimestamp"].is_null() {
        reason = "Terminating".into();
    }
    if reason.is_empty() { "Pending".into() } else { reason }
}

/// Renders one object's cells, one per column of [`columns`].
pub fn row(info: &ResourceInfo, object: &Value, now: jiff::Timestamp) -> Vec<String> {
    let name = text(&object["metadata"]["name"]);
    let created = age(&object["metadata"]["creationTimestamp"], now);
    let spec = &object["spec"];
    let status = &object["status"];
    match info.kind {
        "Pod" => {
            let statuses = status["containerStatuses"].as_array().cloned().unwrap_or_default();
            let total = spec["containers"].as_array().map_or(0, Vec::len);
            let ready = statuses.iter().filter(|s| s["ready"].as_bool() == Some(true)).count();
            let restarts: i64 = statuses.iter().map(|s| int(&s["restartCount"])).sum();
            vec![name, format!("{ready}/{total}"), pod_status(object), restarts.to_string(), created, or_none(text(&status["podIP"])), or_none(text(&spec["nodeName"]))]
        }
        "Deployment" => {
            let (containers, images) = containers_images(&spec["template"]["spec"]);
            vec![
                name,
                format!("{}/{}", int(&status["readyReplicas"]), int(&spec["replicas"])),
                int(&status["updatedReplicas"]).to_string(),
                int(&status["availableReplicas"]).to_string(),
                created,
                containers,
                images,
                selector_text(&spec["selector"]),
            ]
        }
        "ReplicaSet" => {
            let (containers, images) = containers_images(&spec["template"]["spec"]);
            vec![name, int(&spec["replicas"]).to_string(), int(&status["replicas"]).to_string(), int(&status["readyReplicas"]).to_string(), created, containers, images, selector_text(&spec["selector"])]
        }
        "DaemonSet" => {
            let (containers, images) = containers_images(&spec["template"]["spec"]);
            vec![
                name,
                int(&status["desiredNumberScheduled"]).to_string(),
                int(&status["currentNumberScheduled"]).to_string(),
                int(&status["numberReady"]).to_string(),
                int(&status["updatedNumberScheduled"]).to_string(),
                int(&status["numberAvailable"]).to_string(),
                or_none(map_selector(&spec["template"]["spec"]["nodeSelector"]).replace("<none>", "")),
                created,
                containers,
                images,
                selector_text(&spec["selector"]),
            ]
        }
        "Service" => {
            let ports: Vec<String> = spec["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| match p["nodePort"].as_i64() {
                    Some(node_port) => format!("{}:{}/{}", int(&p["port"]), node_port, text(&p["protocol"])),
                    None => format!("{}/{}", int(&p["port"]), text(&p["protocol"])),
                })
                .collect();
            // kubectl's EXTERNAL-IP: the external name, or the balancer's addresses (`<pending>`
            // until it has one) and any `externalIPs`.
            let listed = |value: &Value| -> Vec<String> { value.as_array().into_iter().flatten().map(text).filter(|t| !t.is_empty()).collect() };
            let external = match spec["type"].as_str() {
                Some("ExternalName") => text(&spec["externalName"]),
                Some("LoadBalancer") => {
                    let mut addresses: Vec<String> = status["loadBalancer"]["ingress"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|i| if i["ip"].is_string() { text(&i["ip"]) } else { text(&i["hostname"]) })
                        .filter(|t| !t.is_empty())
                        .collect();
                    addresses.extend(listed(&spec["externalIPs"]));
                    if addresses.is_empty() { "<pending>".to_owned() } else { addresses.join(",") }
                }
                _ => listed(&spec["externalIPs"]).join(","),
            };
            vec![
                name,
                text(&spec["type"]),
                or_none(text(&spec["clusterIP"])),
                or_none(external),
                or_none(ports.join(",")),
                created,
                map_selector(&spec["selector"]),
            ]
        }
        "Job" => {
            let (containers, images) = containers_images(&spec["template"]["spec"]);
            let conditions = status["conditions"].as_array().cloned().unwrap_or_default();
            let has = |t: &str| conditions.iter().any(|c| c["type"] == t && c["status"] == "True");
            let state = if has("Complete") { "Complete" } else if has("Failed") { "Failed" } else if spec["suspend"] == true { "Suspended" } else { "Running" };
            let duration = match (status["startTime"].as_str().and_then(parse_time), status["completionTime"].as_str().and_then(parse_time)) {
                (Some(start), Some(end)) => human_duration(end.as_second() - start.as_second()),
                (Some(start), None) => human_duration(now.as_second() - start.as_second()),
                _ => String::new(),
            };
            vec![name, state.into(), format!("{}/{}", int(&status["succeeded"]), int(&spec["completions"])), duration, created, containers, images, selector_text(&spec["selector"])]
        }
        "CronJob" => {
            let (containers, images) = containers_images(&spec["jobTemplate"]["spec"]["template"]["spec"]);
            let last = if status["lastScheduleTime"].is_null() { "<none>".into() } else { age(&status["lastScheduleTime"], now) };
            vec![
                name,
                text(&spec["schedule"]),
                or_none(text(&spec["timeZone"])),
                if spec["suspend"] == true { "True".into() } else { "False".into() },
                status["active"].as_array().map_or(0, Vec::len).to_string(),
                last,
                created,
                containers,
                images,
                selector_text(&spec["jobTemplate"]["spec"]["selector"]),
            ]
        }
        "Namespace" => vec![name, text(&status["phase"]), created],
        "Node" => {
            let ready = status["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "Ready");
            let mut state = match ready.map(|c| text(&c["status"])) {
                Some(s) if s == "True" => "Ready".to_owned(),
                _ => "NotReady".to_owned(),
            };
            if spec["unschedulable"] == true {
                state.push_str(",SchedulingDisabled");
            }
            let roles: Vec<String> = object["metadata"]["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/").map(str::to_owned))
                .collect();
            let internal_ip = crate::meta::internal_ip(object).map(str::to_owned);
            let info_field = |key: &str| text(&status["nodeInfo"][key]);
            vec![name, state, or_none(roles.join(",")), created, info_field("kubeletVersion"), or_none(internal_ip.unwrap_or_default()), or_none(info_field("osImage")), or_none(info_field("kernelVersion")), or_none(info_field("containerRuntimeVersion"))]
        }
        "ConfigMap" => {
            let count = object["data"].as_object().map_or(0, |m| m.len()) + object["binaryData"].as_object().map_or(0, |m| m.len());
            vec![name, count.to_string(), created]
        }
        "Secret" => vec![name, text(&object["type"]), object["data"].as_object().map_or(0, |m| m.len()).to_string(), created],
        "Ingress" => {
            let hosts: Vec<String> = spec["rules"].as_array().into_iter().flatten().map(|r| r["host"].as_str().unwrap_or("*").to_owned()).collect();
            let address: Vec<String> = status["loadBalancer"]["ingress"].as_array().into_iter().flatten().map(|i| text(&i["ip"])).collect();
            let ports = if spec["tls"].as_array().is_some_and(|t| !t.is_empty()) { "80, 443" } else { "80" };
            vec![name, or_none(text(&spec["ingressClassName"])), if hosts.is_empty() { "*".into() } else { hosts.join(",") }, address.join(","), ports.into(), created]
        }
        "IngressClass" => vec![name, text(&spec["controller"]), or_none(text(&spec["parameters"]["name"])), created],
        "Endpoints" => {
            let mut endpoints = Vec::new();
            for subset in object["subsets"].as_array().into_iter().flatten() {
                for address in subset["addresses"].as_array().into_iter().flatten() {
                    for port in subset["ports"].as_array().into_iter().flatten() {
                        endpoints.push(format!("{}:{}", text(&address["ip"]), int(&port["port"])));
                    }
                }
            }
            vec![name, or_none(endpoints.join(",")), created]
        }
        "EndpointSlice" => {
            let ports: Vec<String> = object["ports"].as_array().into_iter().flatten().map(|p| int(&p["port"]).to_string()).collect();
            let addresses: Vec<String> = object["endpoints"].as_array().into_iter().flatten().flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default()).map(|a| text(&a)).collect();
            vec![name, text(&object["addressType"]), or_none(ports.join(",")), or_none(addresses.join(",")), created]
        }
        "Event" => {
            let last = [&object["lastTimestamp"], &object["eventTime"], &object["metadata"]["creationTimestamp"]]
                .into_iter()
                .find(|t| !t.is_null())
                .map(|t| age(t, now))
                .unwrap_or_default();
            let involved = &object["involvedObject"];
            vec![last, text(&object["type"]), text(&object["reason"]), format!("{}/{}", text(&involved["kind"]).to_lowercase(), text(&involved["name"])), text(&object["message"])]
        }
        "Lease" => vec![name, or_none(text(&spec["holderIdentity"])), created],
        "ServiceAccount" => vec![name, object["secrets"].as_array().map_or(0, Vec::len).to_string(), created],
        "Role" | "ClusterRole" => vec![name, text(&object["metadata"]["creationTimestamp"])],
        "RoleBinding" | "ClusterRoleBinding" => {
            let named = |kind: &str| {
                let names: Vec<String> = object["subjects"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|s| s["kind"] == kind)
                    .map(|s| if kind == "ServiceAccount" { format!("{}/{}", text(&s["namespace"]), text(&s["name"])) } else { text(&s["name"]) })
                    .collect();
                names.join(", ")
            };
            vec![name, format!("{}/{}", text(&object["roleRef"]["kind"]), text(&object["roleRef"]["name"])), created, named("User"), named("Group"), named("ServiceAccount")]
        }
        "HorizontalPodAutoscaler" => {
            let target = &spec["scaleTargetRef"];
            vec![name, format!("{}/{}", text(&target["kind"]), text(&target["name"])), hpa_targets(spec, status), int(&spec["minReplicas"]).to_string(), int(&spec["maxReplicas"]).to_string(), int(&status["currentReplicas"]).to_string(), created]
        }
        _ => vec![name, created],
    }
}

/// The TARGETS column of an autoscaler, as kubectl's printer writes it: `cpu: 12%/50%` for each
/// metric (the current value from the status, `<unknown>` until measured), the first two and
/// `+ N more...`.
fn hpa_targets(spec: &Value, status: &Value) -> String {
    let quantity = |value: &Value| crate::quantity::of_json(value).unwrap_or_else(|| "<unknown>".into());
    let list: Vec<String> = spec["metrics"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(index, metric)| {
            let current = &status["currentMetrics"][index];
            let kind = metric["type"].as_str().unwrap_or_default();
            let field = crate::validation::metric_source_field(kind).unwrap_or("external");
            let (source, now) = (&metric[field], &current[field]["current"]);
            let target = &source["target"];
            let name = if matches!(kind, "Resource" | "ContainerResource") { format!("{}: ", text(&source["name"])) } else { String::new() };
            match target["type"].as_str() {
                Some("Utilization") => {
                    let now = now["averageUtilization"].as_i64().map_or("<unknown>".into(), |u| format!("{u}%"));
                    format!("{name}{now}/{}%", int(&target["averageUtilization"]))
                }
                Some("Value") => format!("{name}{}/{}", quantity(&now["value"]), quantity(&target["value"])),
                // kubectl marks averages of custom metrics only.
                _ if !name.is_empty() => format!("{name}{}/{}", quantity(&now["averageValue"]), quantity(&target["averageValue"])),
                _ => format!("{}/{} (avg)", quantity(&now["averageValue"]), quantity(&target["averageValue"])),
            }
        })
        .collect();
    match list.len() {
        0 => "<none>".into(),
        1 | 2 => list.join(", "),
        more => format!("{} + {} more...", list[..2].join(", "), more - 2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::by_name;
    use serde_json::json;

    #[test]
    fn autoscaler_targets_read_like_kubectl() {
        let cpu = json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}});
        let memory = json!({"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}});
        let pods = json!({"type": "Pods", "pods": {"metric": {"name": "qps"}, "target": {"type": "AverageValue", "averageValue": "10"}}});
        let spec = json!({"metrics": [cpu, memory, pods]});
        assert_eq!(hpa_targets(&spec, &json!({})), "cpu: <unknown>/50%, memory: <unknown>/100Mi + 1 more...");
        let status = json!({"currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 12, "averageValue": "12m"}}}]});
        assert_eq!(hpa_targets(&json!({"metrics": [spec["metrics"][0]]}), &status), "cpu: 12%/50%");
        assert_eq!(hpa_targets(&json!({"metrics": [spec["metrics"][2]]}), &json!({})), "<unknown>/10 (avg)");
        assert_eq!(hpa_targets(&json!({}), &json!({})), "<none>");
    }

    #[test]
    fn rbac_rows_read_like_kubectl() {
        let now: jiff::Timestamp = "2026-01-01T00:05:00Z".parse().expect("time");
        let binding = json!({"metadata": {"name": "b", "namespace": "team", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "roleRef": {"kind": "ClusterRole", "name": "edit"},
            "subjects": [{"kind": "User", "name": "jane"}, {"kind": "User", "name": "joe"}, {"kind": "ServiceAccount", "name": "bot", "namespace": "team"}]});
        let info = by_name("rolebindings").expect("served");
        assert_eq!(row(info, &binding, now), vec!["b", "ClusterRole/edit", "5m", "jane, joe", "", "team/bot"]);
        assert_eq!(columns(info).len(), 6);
        let role = json!({"metadata": {"name": "r", "creationTimestamp": "2026-01-01T00:00:00Z"}, "rules": []});
        assert_eq!(row(by_name("clusterroles").expect("served"), &role, now), vec!["r", "2026-01-01T00:00:00Z"]);
        let account = json!({"metadata": {"name": "default", "creationTimestamp": "2026-01-01T00:00:00Z"}});
        assert_eq!(row(by_name("sa").expect("served"), &account, now), vec!["default", "0", "5m"]);
    }

    #[test]
    fn deployment_row() {
        let now: jiff::Timestamp = "2026-01-01T00:05:00Z".parse().expect("time");
        let object = json!({"metadata": {"name": "web", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": {"spec": {"containers": [{"name": "app", "image": "img:1"}]}}},
            "status": {"readyReplicas": 1, "updatedReplicas": 2, "availableReplicas": 1}});
        let info = by_name("deploy").expect("served");
        assert_eq!(row(info, &object, now), vec!["web", "1/2", "2", "1", "5m", "app", "img:1", "app=web"]);
        assert_eq!(columns(info).len(), row(info, &object, now).len());
    }

    #[test]
    fn service_external_ip_column_follows_the_type() {
        let now = jiff::Timestamp::now();
        let info = by_name("svc").expect("served");
        let external = |spec: serde_json::Value, status: serde_json::Value| row(info, &json!({"metadata": {"name": "s"}, "spec": spec, "status": status}), now)[3].clone();
        assert_eq!(external(json!({"type": "ExternalName", "externalName": "db.example.com"}), json!({})), "db.example.com");
        assert_eq!(external(json!({"type": "LoadBalancer"}), json!({})), "<pending>");
        assert_eq!(
            external(json!({"type": "LoadBalancer", "externalIPs": ["192.0.2.9"]}), json!({"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}, {"hostname": "lb.example"}]}})),
            "10.0.0.1,lb.example,192.0.2.9"
        );
        assert_eq!(external(json!({"type": "ClusterIP", "externalIPs": ["192.0.2.1", "192.0.2.2"]}), json!({})), "192.0.2.1,192.0.2.2");
        assert_eq!(external(json!({"type": "NodePort"}), json!({})), "<none>");
    }

    #[test]
    fn every_kind_renders_as_many_cells_as_columns() {
        let now = jiff::Timestamp::now();
        for info in crate::RESOURCES {
            assert_eq!(columns(info).len(), row(info, &json!({}), now).len(), "{}", info.kind);
        }
    }
}
