//! Probes for HTTP components, answered in-process: `httpGet` calls the pod's handler with a
//! fresh instance like any request; `tcpSocket` succeeds when the component serves the port;
//! `exec` and `grpc` have no meaning for a Wasm component and are refused when the pod starts.

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
    HttpGet { path: String, headers: Vec<(String, String)> },
    TcpSocket { port: u16 },
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
    let action = if let Some(get) = probe.get("httpGet").filter(|g| g.is_object()) {
        ProbeAction::HttpGet {
            path: get["path"].as_str().unwrap_or("/").to_owned(),
            headers: get["httpHeaders"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|h| (h["name"].as_str().unwrap_or_default().to_owned(), h["value"].as_str().unwrap_or_default().to_owned()))
                .collect(),
        }
    } else if let Some(port) = probe["tcpSocket"]["port"].as_u64() {
        ProbeAction::TcpSocket { port: port as u16 }
    } else {
        return Err(format!("{kind} probe: it needs an httpGet or tcpSocket action"));
    };
    Ok(Some(Probe {
        action,
        initial_delay: seconds(&probe["initialDelaySeconds"], 0),
        period: seconds(&probe["periodSeconds"], 10).max(Duration::from_secs(1)),
        timeout: seconds(&probe["timeoutSeconds"], 1).max(Duration::from_secs(1)),
        success_threshold: probe["successThreshold"].as_u64().unwrap_or(1).max(1) as u32,
        failure_threshold: probe["failureThreshold"].as_u64().unwrap_or(3).max(1) as u32,
    }))
}

/// Runs the probe once: true on a 2xx or 3xx answer within the timeout.
pub async fn check(probe: &Probe, handler: &HttpHandler, ports: &[u16]) -> bool {
    match &probe.action {
        ProbeAction::TcpSocket { port } => ports.contains(port) || ports.is_empty(),
        ProbeAction::HttpGet { path, headers } => {
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
