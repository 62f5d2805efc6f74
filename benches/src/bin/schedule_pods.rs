//! Scheduling throughput: creates `PODS` pods at once (64 requests in flight) against a running
//! `shoal server` whose nodes are hollow (`shoal agent --hollow-nodes`), and watches them to
//! report pods/s to bound and to Running, and the create → Running latency per pod.
//!
//! With `--backlog` the scheduler is held while the pods are created, and then let go, so what
//! is measured is how fast it places a backlog (placements/s), not how fast the API takes
//! creates. It is held the way a standby server is: the benchmark takes the controllers' leader
//! Lease (`kube-system/shoal-controller-manager`) under its own identity, the server stops its
//! controllers and scheduler at its next renewal, and releasing the Lease lets the server take it
//! back, start them again, and find every pod pending, as after a failover.
//!
//! Usage: schedule_pods DATA_DIR PODS [--backlog]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use shoal_benches::Summary;

fn millis(duration: Duration) -> String {
    format!("{:.0} ms", duration.as_secs_f64() * 1e3)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let data_dir = std::path::PathBuf::from(args.next().ok_or_else(|| anyhow::anyhow!("usage: schedule_pods DATA_DIR PODS"))?);
    let count: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(10_000);
    let backlog = match args.next().as_deref() {
        None => false,
        Some("--backlog") => true,
        Some(other) => anyhow::bail!("unknown argument {other:?}; usage: schedule_pods DATA_DIR PODS [--backlog]"),
    };
    let kubeconfig = std::fs::read_to_string(data_dir.join("admin.kubeconfig"))?;
    let url = kubeconfig.lines().find_map(|l| l.trim().strip_prefix("server: ")).ok_or_else(|| anyhow::anyhow!("no server in kubeconfig"))?.to_owned();
    let token = std::fs::read_to_string(data_dir.join("admin-token"))?.trim().to_owned();
    let ca = std::fs::read(data_dir.join("pki/ca.crt"))?;
    let client = reqwest::Client::builder().use_rustls_tls().tls_built_in_root_certs(false).add_root_certificate(reqwest::Certificate::from_pem(&ca)?).build()?;
    let run = std::process::id();
    let prefix = format!("sched-{run}-");
    // The Lease the server's controllers and scheduler run under, as the server names it.
    let held = shoal_controllers::leader::LeaseConfig::new(HOLDER);
    let lease = Lease { client: client.clone(), url: format!("{url}/apis/coordination.k8s.io/v1/namespaces/{}/leases/{}", held.namespace, held.name), token: token.clone() };
    if backlog {
        lease.set_holder(HOLDER, 3600).await?;
        // The server learns at its next renewal that it lost the Lease, and stops.
        tokio::time::sleep(held.renew_every + Duration::from_secs(1)).await;
        println!("scheduler held (the benchmark holds the controllers' Lease)");
    }

    // Watch first, from the current revision, so no transition is missed.
    let list: serde_json::Value = client.get(format!("{url}/api/v1/namespaces/default/pods?limit=1")).bearer_auth(&token).send().await?.json().await?;
    let revision = list["metadata"]["resourceVersion"].as_str().unwrap_or("0").to_owned();
    let created_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let (target_sender, target_receiver) = tokio::sync::watch::channel(count);
    let observer = {
        let created_at = Arc::clone(&created_at);
        let prefix = prefix.clone();
        let (client, url, token) = (client.clone(), url.clone(), token.clone());
        tokio::spawn(async move {
            let mut bound_at: HashMap<String, Instant> = HashMap::new();
            let mut running_at: HashMap<String, Instant> = HashMap::new();
            let mut latencies = Vec::new();
            let mut revision = revision;
            // A watch that breaks is resumed from the last revision seen.
            loop {
                let watch = match client.get(format!("{url}/api/v1/namespaces/default/pods?watch=true&resourceVersion={revision}")).bearer_auth(&token).send().await {
                    Ok(watch) => watch,
                    Err(error) => {
                        eprintln!("watch: {error}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let mut buffer = Vec::new();
                let mut stream = watch.bytes_stream();
                while let Some(chunk) = stream.next().await {
                    let chunk = match chunk {
                        Ok(chunk) => chunk,
                        Err(error) => {
                            eprintln!("watch broke (resuming): {error}");
                            break;
                        }
                    };
                    buffer.extend_from_slice(&chunk);
                    while let Some(position) = buffer.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buffer.drain(..=position).collect();
                        let Ok(event) = serde_json::from_slice::<serde_json::Value>(&line) else { continue };
                        let pod = &event["object"];
                        if let Some(rv) = pod["metadata"]["resourceVersion"].as_str() {
                            revision = rv.to_owned();
                        }
                        let name = pod["metadata"]["name"].as_str().unwrap_or_default().to_owned();
                        if !name.starts_with(&prefix) {
                            continue;
                        }
                        let now = Instant::now();
                        if pod["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty()) {
                            bound_at.entry(name.clone()).or_insert(now);
                        }
                        if pod["status"]["phase"] == "Running" && !running_at.contains_key(&name) {
                            running_at.insert(name.clone(), now);
                            if let Some(created) = created_at.lock().map(|m| m.get(&name).copied()).ok().flatten() {
                                latencies.push(now - created);
                            }
                        }
                        if running_at.len() >= *target_receiver.borrow() {
                            return (bound_at, running_at, latencies);
                        }
                    }
                }
            }
        })
    };

    let started = Instant::now();
    let body = |index: usize| {
        serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("{prefix}{index}"), "labels": {"bench": "schedule"}},
            "spec": {"containers": [{"name": "app", "image": "shoal.local/samples/hello:latest", "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}})
    };
    let collection = format!("{url}/api/v1/namespaces/default/pods");
    let failures = futures::stream::iter(0..count)
        .map(|index| {
            let client = client.clone();
            let collection = collection.clone();
            let token = token.clone();
            let created_at = Arc::clone(&created_at);
            let name = format!("{prefix}{index}");
            let pod = body(index);
            async move {
                if let Ok(mut map) = created_at.lock() {
                    map.insert(name, Instant::now());
                }
                match client.post(&collection).bearer_auth(&token).json(&pod).send().await {
                    // The body is read to its end: dropping it would reset the HTTP/2 stream,
                    // and h2 closes a connection after 1,024 such local resets.
                    Ok(response) if response.status().is_success() => response.bytes().await.err().map(|e| e.to_string()),
                    Ok(response) => Some(format!("{}: {}", response.status(), response.text().await.unwrap_or_default())),
                    Err(error) => Some(format!("{error:?}")),
                }
            }
        })
        .buffer_unordered(64)
        .filter_map(futures::future::ready)
        .collect::<Vec<String>>()
        .await;
    if let Some(first) = failures.first() {
        eprintln!("create failures: {} (first: {first})", failures.len());
    }
    let failures = failures.len();
    let created = started.elapsed();
    let released = if backlog {
        lease.set_holder("", 15).await?;
        Some(Instant::now())
    } else {
        None
    };
    // Failed creates never run; wait for the others.
    target_sender.send(count - failures).ok();
    let (bound_at, running_at, latencies) = tokio::time::timeout(Duration::from_secs(600), observer).await??;
    let last = |times: &HashMap<String, Instant>| times.values().max().map(|t| *t - started).unwrap_or_default();
    let (bound_all, running_all) = (last(&bound_at), last(&running_at));
    let summary = Summary::of(latencies);
    println!("pods: {count} ({failures} create failures), created in {}", millis(created));
    println!(
        "bound: {} in {} = {:.0} pods/s; Running: {} in {} = {:.0} pods/s",
        bound_at.len(),
        millis(bound_all),
        bound_at.len() as f64 / bound_all.as_secs_f64().max(1e-9),
        running_at.len(),
        millis(running_all),
        running_at.len() as f64 / running_all.as_secs_f64().max(1e-9)
    );
    println!("create → Running: p50 {}, p99 {}, max {}", millis(summary.p50), millis(summary.p99), millis(summary.max));
    if let Some(released) = released {
        let early = bound_at.values().filter(|at| **at < released).count();
        anyhow::ensure!(early == 0, "{early} pods were bound while the scheduler was meant to be held: the server did not give up the Lease");
        // The drain: from the first binding seen to the last. The wait before the first one is
        // the server's next attempt at the Lease (every 2 s) and its informers' sync.
        let first = bound_at.values().min().copied().unwrap_or(released);
        let last = bound_at.values().max().copied().unwrap_or(released);
        let drain = last.saturating_duration_since(first);
        println!(
            "backlog: Lease released → first binding {}; {} placements in {} = {:.0} placements/s",
            millis(first.saturating_duration_since(released)),
            bound_at.len(),
            millis(drain),
            bound_at.len().saturating_sub(1) as f64 / drain.as_secs_f64().max(1e-9)
        );
    }
    Ok(())
}

/// The identity the benchmark holds the controllers' Lease under.
const HOLDER: &str = "schedule-pods-benchmark";

/// The controllers' leader Lease, read and replaced with a resourceVersion precondition.
struct Lease {
    client: reqwest::Client,
    url: String,
    token: String,
}

impl Lease {
    /// Makes `holder` (empty: nobody) the holder, renewed now, retrying when the server renewed
    /// it in between (409).
    async fn set_holder(&self, holder: &str, seconds: u64) -> anyhow::Result<()> {
        for _ in 0..50 {
            let mut lease: serde_json::Value = self.client.get(&self.url).bearer_auth(&self.token).send().await?.error_for_status()?.json().await?;
            let now = shoal_api::meta::format_micro_time(jiff::Timestamp::now());
            lease["spec"]["holderIdentity"] = serde_json::json!(holder);
            lease["spec"]["leaseDurationSeconds"] = serde_json::json!(seconds);
            lease["spec"]["renewTime"] = serde_json::json!(now);
            lease["spec"]["acquireTime"] = serde_json::json!(now);
            let response = self.client.put(&self.url).bearer_auth(&self.token).json(&lease).send().await?;
            match response.status() {
                status if status.is_success() => return Ok(()),
                reqwest::StatusCode::CONFLICT => tokio::time::sleep(Duration::from_millis(50)).await,
                status => anyhow::bail!("replacing the controllers' Lease: {status}: {}", response.text().await.unwrap_or_default()),
            }
        }
        anyhow::bail!("the controllers' Lease kept changing under the benchmark")
    }
}
