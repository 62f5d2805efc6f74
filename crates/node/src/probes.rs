//! Probes. For HTTP components they are answered in-process: `httpGet` calls the pod's handler
//! with a fresh instance like any request; `tcpSocket` succeeds when the component serves the
//! port; `exec` and `grpc` have no meaning for a Wasm component and are refused when the pod
//! starts. For OCI containers, `httpGet` and `tcpSocket` go to the pod's address and `exec`
//! runs the command in the container through containerd.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use serde_json::Value;
use shoal_runtime_wasm::HttpHandler;

/// One probe's settings, with Kubernetes' defaults.
#[derive(Clone, Debug)]
pub struct Probe {
    pub action: ProbeAction,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

#[derive(Clone, Debug)]
pub enum ProbeAction {
    /// `port` is None for a Wasm component (it answers on any port it is reached by).
    HttpGet { path: String, headers: Vec<(String, String)>, port: Option<u16> },
    TcpSocket { port: u16 },
    Exec { command: Vec<String> },
}

fn seconds(value: &Value, default: u64) -> Duration {
    Duration::from_secs(value.as_u64().unwrap_or(default))
}

/// Reads a probe; `Err` explains why it cannot run on a Wasm container.
pub fn parse(probe: &Value, kind: &str, is_http: bool) -> Result<Option<Probe>, String> {
    if probe.is_null() {
        return Ok(None);
    }
    if !probe["exec"].is_null() {
        return Err(format!("{kind} probe: exec probes are not supported for Wasm containers (there is no process to exec into); use httpGet"));
    }
    if !probe["grpc"].is_null() {
        return Err(format!("{kind} probe: grpc probes are not supported for Wasm containers; use httpGet"));
    }
    if !is_http {
        return Err(format!("{kind} probe: only HTTP components can be probed; this container is a command"));
    }
    let action = http_or_tcp(probe, kind, &[])?;
    Ok(Some(timing(probe, action)))
}

/// A probe's port: a number, or the name of one of the container's ports.
fn port_of(value: &Value, named: &[(String, u16)]) -> Option<u16> {
    match value {
        Value::Number(number) => number.as_u64().and_then(|p| u16::try_from(p).ok()),
        Value::String(name) => name.parse().ok().or_else(|| named.iter().find(|(n, _)| n == name).map(|(_, p)| *p)),
        _ => None,
    }
}

fn http_or_tcp(probe: &Value, kind: &str, named: &[(String, u16)]) -> Result<ProbeAction, String> {
    if let Some(get) = probe.get("httpGet").filter(|g| g.is_object()) {
        Ok(ProbeAction::HttpGet {
            port: port_of(&get["port"], named),
            path: get["path"].as_str().unwrap_or("/").to_owned(),
            headers: get["httpHeaders"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|h| (h["name"].as_str().unwrap_or_default().to_owned(), h["value"].as_str().unwrap_or_default().to_owned()))
                .collect(),
        })
    } else if let Some(port) = port_of(&probe["tcpSocket"]["port"], named) {
        Ok(ProbeAction::TcpSocket { port })
    } else {
        Err(format!("{kind} probe: it needs an httpGet or tcpSocket action"))
    }
}

/// Reads a probe of an OCI container: exec, httpGet or tcpSocket (ports by number or name).
pub fn parse_for_container(probe: &Value, kind: &str, named: &[(String, u16)]) -> Result<Option<Probe>, String> {
    if probe.is_null() {
        return Ok(None);
    }
    if !probe["grpc"].is_null() {
        return Err(format!("{kind} probe: grpc probes are not supported yet; use exec, httpGet or tcpSocket"));
    }
    let action = if let Some(command) = probe["exec"]["command"].as_array() {
        let command: Vec<String> = command.iter().filter_map(|c| c.as_str().map(str::to_owned)).collect();
        if command.is_empty() {
            return Err(format!("{kind} probe: exec needs a command"));
        }
        ProbeAction::Exec { command }
    } else {
        let action = http_or_tcp(probe, kind, named)?;
        if let ProbeAction::HttpGet { port: None, .. } = action {
            return Err(format!("{kind} probe: httpGet needs a port that is a number or one of the container's named ports"));
        }
        action
    };
    Ok(Some(timing(probe, action)))
}

fn timing(probe: &Value, action: ProbeAction) -> Probe {
    Probe {
        action,
        initial_delay: seconds(&probe["initialDelaySeconds"], 0),
        period: seconds(&probe["periodSeconds"], 10).max(Duration::from_secs(1)),
        timeout: seconds(&probe["timeoutSeconds"], 1).max(Duration::from_secs(1)),
        success_threshold: probe["successThreshold"].as_u64().unwrap_or(1).max(1) as u32,
        failure_threshold: probe["failureThreshold"].as_u64().unwrap_or(3).max(1) as u32,
    }
}

/// Runs the probe once: true on a 2xx or 3xx answer within the timeout.
pub async fn check(probe: &Probe, handler: &HttpHandler, ports: &[u16]) -> bool {
    match &probe.action {
        ProbeAction::TcpSocket { port } => ports.contains(port) || ports.is_empty(),
        // Not produced for components (parse refuses exec).
        ProbeAction::Exec { .. } => false,
        ProbeAction::HttpGet { path, headers, .. } => {
            let mut request = hyper::Request::builder().uri(format!("http://probe.local{path}")).header("user-agent", "shoal-probe/1.0");
            for (name, value) in headers {
                request = request.header(name.as_str(), value.as_str());
            }
            let Ok(request) = request.body(Full::new(Bytes::new())) else { return false };
            match tokio::time::timeout(probe.timeout, handler.handle(request)).await {
                Ok((response, _)) => (200..400).contains(&response.status().as_u16()),
                Err(_) => false,
            }
        }
    }
}
