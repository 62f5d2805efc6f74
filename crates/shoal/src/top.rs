//! `shoal top pods|nodes`: CPU and memory from `metrics.k8s.io`, printed as `kubectl top` prints
//! them (millicores and MiB; for nodes, also the share of allocatable).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::Value;
use shoal_client::{Client, Method};

#[derive(Subcommand)]
pub enum TopCommand {
    /// CPU and memory of pods (`shoal top pods -A`, `-l app=web`, `--containers`).
    #[command(alias = "pod", alias = "po")]
    Pods(TopPodsArgs),
    /// CPU and memory of nodes, and their share of what each node can allocate.
    #[command(alias = "node", alias = "no")]
    Nodes(TopNodesArgs),
}

#[derive(Args)]
pub struct TopPodsArgs {
    /// Only this pod.
    name: Option<String>,
    #[arg(short, long)]
    namespace: Option<String>,
    /// Pods of every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// A label selector (`app=web`).
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// One row per container.
    #[arg(long)]
    containers: bool,
}

#[derive(Args)]
pub struct TopNodesArgs {
    /// Only this node.
    name: Option<String>,
    /// A label selector.
    #[arg(short = 'l', long)]
    selector: Option<String>,
}

const BASE: &str = "/apis/metrics.k8s.io/v1beta1";

pub async fn top(client: &Client, what: TopCommand) -> anyhow::Result<ExitCode> {
    match what {
        TopCommand::Pods(args) => pods(client, args).await,
        TopCommand::Nodes(args) => nodes(client, args).await,
    }
}

fn selector_query(selector: &Option<String>) -> Vec<(&'static str, String)> {
    selector.iter().map(|s| ("labelSelector", s.clone())).collect()
}

/// The items of a list, or the one object asked for by name.
async fn fetch(client: &Client, path: &str, named: bool, query: &[(&str, String)]) -> anyhow::Result<Vec<Value>> {
    let answer = client.request(Method::GET, path, query, None).await?;
    Ok(if named { vec![answer] } else { answer["items"].as_array().cloned().unwrap_or_default() })
}

/// Millicores of a cpu quantity and MiB of a memory quantity, as kubectl prints them.
fn millicores(quantity: &Value) -> i64 {
    quantity.as_str().and_then(shoal_api::quantity::parse).map_or(0, |cores| (cores * 1000.0).round() as i64)
}

fn mebibytes(quantity: &Value) -> i64 {
    quantity.as_str().and_then(shoal_api::quantity::parse).map_or(0, |bytes| (bytes / 1048576.0).round() as i64)
}

async fn pods(client: &Client, args: TopPodsArgs) -> anyhow::Result<ExitCode> {
    let namespace = args.namespace.clone().unwrap_or_else(|| client.default_namespace.clone());
    let path = match (&args.name, args.all_namespaces) {
        (Some(name), _) => format!("{BASE}/namespaces/{namespace}/pods/{name}"),
        (None, true) => format!("{BASE}/pods"),
        (None, false) => format!("{BASE}/namespaces/{namespace}/pods"),
    };
    let mut items = fetch(client, &path, args.name.is_some(), &selector_query(&args.selector)).await?;
    items.sort_by(|a, b| (a["metadata"]["namespace"].as_str(), a["metadata"]["name"].as_str()).cmp(&(b["metadata"]["namespace"].as_str(), b["metadata"]["name"].as_str())));
    if items.is_empty() {
        eprintln!("No resources found{}", if args.all_namespaces { String::new() } else { format!(" in {namespace} namespace") });
        return Ok(ExitCode::SUCCESS);
    }
    let mut headers: Vec<String> = Vec::new();
    if args.all_namespaces {
        headers.push("NAMESPACE".into());
    }
    headers.extend(if args.containers { vec!["POD", "NAME"] } else { vec!["NAME"] }.into_iter().map(String::from));
    headers.extend(["CPU(cores)".to_owned(), "MEMORY(bytes)".to_owned()]);
    let mut rows = Vec::new();
    for pod in &items {
        let containers = pod["containers"].as_array().cloned().unwrap_or_default();
        let prefix = |row: &mut Vec<String>| {
            if args.all_namespaces {
                row.push(pod["metadata"]["namespace"].as_str().unwrap_or_default().to_owned());
            }
            row.push(pod["metadata"]["name"].as_str().unwrap_or_default().to_owned());
        };
        if args.containers {
            for container in &containers {
                let mut row = Vec::new();
                prefix(&mut row);
                row.push(container["name"].as_str().unwrap_or_default().to_owned());
                row.push(format!("{}m", millicores(&container["usage"]["cpu"])));
                row.push(format!("{}Mi", mebibytes(&container["usage"]["memory"])));
                rows.push(row);
            }
        } else {
            let mut row = Vec::new();
            prefix(&mut row);
            row.push(format!("{}m", containers.iter().map(|c| millicores(&c["usage"]["cpu"])).sum::<i64>()));
            // Summed in bytes, then rounded, as kubectl does.
            let bytes: f64 = containers.iter().filter_map(|c| c["usage"]["memory"].as_str().and_then(shoal_api::quantity::parse)).sum();
            row.push(format!("{}Mi", (bytes / 1048576.0).round() as i64));
            rows.push(row);
        }
    }
    crate::output::print_table(&headers, &rows);
    Ok(ExitCode::SUCCESS)
}

async fn nodes(client: &Client, args: TopNodesArgs) -> anyhow::Result<ExitCode> {
    let path = match &args.name {
        Some(name) => format!("{BASE}/nodes/{name}"),
        None => format!("{BASE}/nodes"),
    };
    let mut items = fetch(client, &path, args.name.is_some(), &selector_query(&args.selector)).await?;
    items.sort_by(|a, b| a["metadata"]["name"].as_str().cmp(&b["metadata"]["name"].as_str()));
    if items.is_empty() {
        eprintln!("No resources found");
        return Ok(ExitCode::SUCCESS);
    }
    let info = shoal_api::resources::by_name("nodes").expect("nodes are served");
    let nodes = client.list(info, None, &Default::default()).await?;
    let allocatable = |name: &str, resource: &str| -> Option<f64> {
        let node = nodes["items"].as_array()?.iter().find(|n| n["metadata"]["name"] == name)?;
        shoal_api::quantity::of_json(&node["status"]["allocatable"][resource]).as_deref().and_then(shoal_api::quantity::parse).filter(|v| *v > 0.0)
    };
    let percent = |used: f64, of: Option<f64>| of.map_or("<unknown>".to_owned(), |total| format!("{}%", (used * 100.0 / total).round() as i64));
    let headers: Vec<String> = ["NAME", "CPU(cores)", "CPU(%)", "MEMORY(bytes)", "MEMORY(%)"].into_iter().map(String::from).collect();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|node| {
            let name = node["metadata"]["name"].as_str().unwrap_or_default();
            let cpu = millicores(&node["usage"]["cpu"]);
            let memory = node["usage"]["memory"].as_str().and_then(shoal_api::quantity::parse).unwrap_or(0.0);
            vec![
                name.to_owned(),
                format!("{cpu}m"),
                percent(cpu as f64 / 1000.0, allocatable(name, "cpu")),
                format!("{}Mi", (memory / 1048576.0).round() as i64),
                percent(memory, allocatable(name, "memory")),
            ]
        })
        .collect();
    crate::output::print_table(&headers, &rows);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities_print_in_kubectl_units() {
        assert_eq!(millicores(&json!("1234567n")), 1);
        assert_eq!(millicores(&json!("250m")), 250);
        assert_eq!(millicores(&json!("2")), 2000);
        assert_eq!(mebibytes(&json!("1536Ki")), 2);
        assert_eq!(mebibytes(&json!("64Mi")), 64);
        assert_eq!(mebibytes(&json!("0")), 0);
    }
}
