//! Create throughput and latency through the API: `CONCURRENCY` clients each POST ConfigMaps as
//! fast as the server acknowledges them, for `SECONDS`, against a running `shoal server`.
//!
//! Usage: api_create KUBECONFIG_DIR CONCURRENCY SECONDS

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_benches::{Summary, micros};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let data_dir = args.next().ok_or_else(|| anyhow::anyhow!("usage: api_create DATA_DIR CONCURRENCY SECONDS"))?;
    let concurrency: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(1);
    let seconds: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(10);
    let data_dir = std::path::PathBuf::from(data_dir);
    let kubeconfig = std::fs::read_to_string(data_dir.join("admin.kubeconfig"))?;
    let url = kubeconfig.lines().find_map(|l| l.trim().strip_prefix("server: ")).ok_or_else(|| anyhow::anyhow!("no server in kubeconfig"))?.to_owned();
    let token = std::fs::read_to_string(data_dir.join("admin-token"))?.trim().to_owned();
    let ca = std::fs::read(data_dir.join("pki/ca.crt"))?;
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
        .build()?;
    let collection = format!("{url}/api/v1/namespaces/default/configmaps");
    let run = format!("{}", std::process::id());
    // Warm up connections and the server.
    for index in 0..concurrency.max(8) {
        let body = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("warm-{run}-{concurrency}-{index}")}, "data": {"k": "v"}});
        client.post(&collection).bearer_auth(&token).json(&body).send().await?.error_for_status()?;
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    let failures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for worker in 0..concurrency {
        let client = client.clone();
        let collection = collection.clone();
        let token = token.clone();
        let run = run.clone();
        let failures = Arc::clone(&failures);
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut index = 0u64;
            while Instant::now() < deadline {
                let body = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("b-{run}-{concurrency}-{worker}-{index}")}, "data": {"k": "v"}});
                index += 1;
                let start = Instant::now();
                match client.post(&collection).bearer_auth(&token).json(&body).send().await {
                    Ok(response) if response.status().as_u16() == 201 => {
                        let _ = response.bytes().await;
                        samples.push(start.elapsed());
                    }
                    _ => {
                        failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await?);
    }
    let elapsed = started.elapsed();
    let summary = Summary::of(samples);
    println!(
        "creates, {concurrency} client(s), {seconds} s: {:.0}/s, p50 {}, p99 {}, max {}, {} ok, {} failed",
        summary.count as f64 / elapsed.as_secs_f64(),
        micros(summary.p50),
        micros(summary.p99),
        micros(summary.max),
        summary.count,
        failures.load(std::sync::atomic::Ordering::Relaxed)
    );
    Ok(())
}
