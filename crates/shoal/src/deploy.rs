//! `shoal deploy FILE.wasm --name NAME`: from a compiled component to a URL in one command.
//! It pushes the artifact to the built-in registry, applies a Deployment (pinned to the pushed
//! digest, so a changed file always rolls out), a Service and an Ingress, follows the rollout,
//! and prints the URL the ingress serves it on.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};
use shoal_api::resources;
use shoal_client::Client;

#[derive(Args)]
pub struct DeployArgs {
    /// The .wasm file: a wasi:http component.
    file: PathBuf,
    /// The name of the Deployment, Service and Ingress (and the artifact's repository).
    #[arg(long)]
    name: String,
    #[arg(long, default_value_t = 1)]
    replicas: u32,
    /// The host the Ingress routes (default: NAME.localhost, which resolves to this machine).
    #[arg(long)]
    host: Option<String>,
    /// Environment variables for the component, `KEY=VALUE` (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    #[arg(short, long)]
    namespace: Option<String>,
    /// Seconds to wait for the rollout (0: no limit).
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

const MANAGED_BY: &str = "shoal-deploy";

/// The Deployment, Service and Ingress of a deployed component.
pub fn manifests(name: &str, image: &str, replicas: u32, host: &str, env: &[(String, String)]) -> Vec<Value> {
    let labels = json!({"app": name, "app.kubernetes.io/managed-by": MANAGED_BY});
    let env: Vec<Value> = env.iter().map(|(k, v)| json!({"name": k, "value": v})).collect();
    vec![
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": name, "image": image, "env": env, "ports": [{"name": "http", "containerPort": 8080}]}]}},
            },
        }),
        json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        }),
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": name, "labels": labels},
            "spec": {"rules": [{"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": name, "port": {"name": "http"}}}}]}}]},
        }),
    ]
}

fn parse_env(pairs: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    pairs
        .iter()
        .map(|pair| {
            let (key, value) = pair.split_once('=').with_context(|| format!("--env {pair:?}: expected KEY=VALUE"))?;
            if key.is_empty() {
                bail!("--env {pair:?}: the name is empty");
            }
            Ok((key.to_owned(), value.to_owned()))
        })
        .collect()
}

pub async fn deploy(kubeconfig: &Path, server: Option<&str>, args: DeployArgs) -> anyhow::Result<ExitCode> {
    let client = Client::from_kubeconfig(kubeconfig, server)?;
    if !shoal_api::validation::is_dns1035_label(&args.name) {
        bail!("--name {:?}: must be a lowercase RFC 1035 label (letters, digits and '-', starting with a letter, at most 63 characters)", args.name);
    }
    let env = parse_env(&args.env)?;
    let namespace = args.namespace.clone().unwrap_or_else(|| client.default_namespace.clone());
    let host = args.host.clone().unwrap_or_else(|| format!("{}.localhost", args.name));
    let bytes = std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let info = shoal_oci::wasm::inspect(&bytes).with_context(|| format!("{} is not valid Wasm", args.file.display()))?;
    if info.world != shoal_oci::wasm::World::Http {
        bail!("{} is not a wasi:http component (its world is {}): deploy serves HTTP components; run commands with a Job manifest", args.file.display(), info.world.as_str());
    }
    let tag = format!("shoal.local/{}:latest", args.name);
    let pushed = crate::artifact::push_file(kubeconfig, server, &args.file, &tag, &Default::default()).await?;
    println!("pushed {} ({})", pushed.reference, pushed.digest);
    let image = format!("shoal.local/{}@{}", args.name, pushed.digest);
    for line in crate::apply::apply_documents(&client, &manifests(&args.name, &image, args.replicas, &host, &env), Some(&namespace)).await? {
        println!("{line}");
    }
    wait_for_rollout(&client, &namespace, &args.name, Duration::from_secs(args.timeout)).await?;
    println!("{}", url(&client, &host).await);
    Ok(ExitCode::SUCCESS)
}

/// Follows a Deployment's rollout, printing each new state as `kubectl rollout status` does.
pub async fn wait_for_rollout(client: &Client, namespace: &str, name: &str, timeout: Duration) -> anyhow::Result<()> {
    let deployments = resources::by_name("deployments").expect("deployments are served");
    let started = std::time::Instant::now();
    let mut last = String::new();
    loop {
        let deployment = client.get(deployments, Some(namespace), name).await?;
        let (message, done) = crate::workloads::rollout_message(&deployment).map_err(anyhow::Error::msg)?;
        if message != last {
            println!("{message}");
            last = message;
        }
        if done {
            return Ok(());
        }
        if !timeout.is_zero() && started.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for the rollout of deployment {name:?}; `shoal describe deployment {name}` and `shoal get pods -l app={name}` tell why");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The URL of `host` on the cluster's ingress: the port the first node with an ingress router
/// listens on (omitted when 80).
pub async fn url(client: &Client, host: &str) -> String {
    let nodes = resources::by_name("nodes").expect("nodes are served");
    let port = match client.list(nodes, None, &Default::default()).await {
        Ok(list) => list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|node| node["metadata"]["annotations"][shoal_node::INGRESS_ADDR_ANNOTATION].as_str().and_then(|a| a.rsplit_once(':')).and_then(|(_, p)| p.parse::<u16>().ok())),
        Err(_) => None,
    };
    match port {
        Some(80) | None => format!("http://{host}/"),
        Some(port) => format!("http://{host}:{port}/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_route_the_host_to_the_named_port() {
        let objects = manifests("shop", "shoal.local/shop@sha256:ab", 3, "shop.localhost", &[("K".into(), "V".into())]);
        assert_eq!(objects[0]["spec"]["replicas"], 3);
        assert_eq!(objects[0]["spec"]["template"]["spec"]["containers"][0]["env"], json!([{"name": "K", "value": "V"}]));
        assert_eq!(objects[1]["spec"]["ports"][0]["targetPort"], "http");
        assert_eq!(objects[2]["spec"]["rules"][0]["host"], "shop.localhost");
        assert!(parse_env(&["A=b=c".into()]).unwrap() == vec![("A".to_owned(), "b=c".to_owned())]);
        assert!(parse_env(&["novalue".into()]).is_err());
    }
}
