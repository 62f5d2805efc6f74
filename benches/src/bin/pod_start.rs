//! Create → Running for single pods, one at a time: POSTs a pod and times until a watch shows its
//! container running, then deletes it and waits for it to be gone before the next. Prints the
//! median, minimum and maximum.
//!
//! Usage: `pod_start DATA_DIR IMAGE RUNS [COMMAND…]` (the command is the container's, for an OCI
//! image; a Wasm HTTP component takes none). With `AUTOMOUNT=false` in the environment the pods
//! set `automountServiceAccountToken: false`, so no ServiceAccount token is requested for them.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = || anyhow::anyhow!("usage: pod_start DATA_DIR IMAGE RUNS [COMMAND…]");
    let data_dir = std::path::PathBuf::from(args.next().ok_or_else(usage)?);
    let image = args.next().ok_or_else(usage)?;
    let runs: usize = args.next().and_then(|n| n.parse().ok()).ok_or_else(usage)?;
    let command: Vec<String> = args.collect();
    let kubeconfig = std::fs::read_to_string(data_dir.join("admin.kubeconfig"))?;
    let url = kubeconfig.lines().find_map(|l| l.trim().strip_prefix("server: ")).ok_or_else(|| anyhow::anyhow!("no server in kubeconfig"))?.to_owned();
    let token = std::fs::read_to_string(data_dir.join("admin-token"))?.trim().to_owned();
    let ca = std::fs::read(data_dir.join("pki/ca.crt"))?;
    let client = reqwest::Client::builder().use_rustls_tls().tls_built_in_root_certs(false).add_root_certificate(reqwest::Certificate::from_pem(&ca)?).build()?;
    let pods = format!("{url}/api/v1/namespaces/default/pods");
    let mut latencies = Vec::new();
    for run in 0..runs {
        let name = format!("start-{}-{run}", std::process::id());
        let list: Value = client.get(format!("{pods}?limit=1")).bearer_auth(&token).send().await?.json().await?;
        let revision = list["metadata"]["resourceVersion"].as_str().unwrap_or("0").to_owned();
        let watch = client
            .get(format!("{pods}?watch=true&resourceVersion={revision}&fieldSelector=metadata.name={name}"))
            .bearer_auth(&token)
            .send()
            .await?;
        let mut container = json!({"name": "main", "image": image, "imagePullPolicy": "IfNotPresent"});
        if !command.is_empty() {
            container["command"] = json!(command);
        }
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"terminationGracePeriodSeconds": 0, "containers": [container]}});
        if std::env::var("AUTOMOUNT").is_ok_and(|v| v == "false") {
            pod["spec"]["automountServiceAccountToken"] = json!(false);
        }
        let started = Instant::now();
        let created = client.post(&pods).bearer_auth(&token).json(&pod).send().await?;
        anyhow::ensure!(created.status().is_success(), "creating {name}: {}", created.text().await?);
        let mut stream = watch.bytes_stream();
        let mut buffer = Vec::new();
        let running = 'watch: loop {
            let chunk = tokio::time::timeout(Duration::from_secs(60), stream.next()).await.map_err(|_| anyhow::anyhow!("{name} was not running within 60 s"))?;
            let Some(chunk) = chunk else { anyhow::bail!("the watch ended") };
            buffer.extend_from_slice(&chunk?);
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let event: Value = serde_json::from_slice(&line)?;
                if event["object"]["status"]["containerStatuses"][0]["state"]["running"].is_object() {
                    break 'watch started.elapsed();
                }
            }
        };
        latencies.push(running);
        client.delete(format!("{pods}/{name}")).bearer_auth(&token).send().await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while client.get(format!("{pods}/{name}")).bearer_auth(&token).send().await?.status() != 404 {
            anyhow::ensure!(Instant::now() < deadline, "{name} was not gone within 60 s of its deletion");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{image}: create → Running over {runs} pods: median {:.1} ms, min {:.1} ms, max {:.1} ms",
        ms(latencies[latencies.len() / 2]),
        ms(latencies[0]),
        ms(latencies[latencies.len() - 1])
    );
    Ok(())
}
