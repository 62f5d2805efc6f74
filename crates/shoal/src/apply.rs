//! `shoal apply` and `shoal delete`: manifests in, objects out.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};
use shoal_api::{ResourceInfo, resources};
use shoal_client::Client;

use crate::output::kind_name;

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

#[derive(Args)]
pub struct ApplyArgs {
    /// A manifest file, a directory of them, or - for standard input.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// Namespace for objects that name none.
    #[arg(short, long)]
    namespace: Option<String>,
}

#[derive(Args)]
pub struct DeleteArgs {
    /// Kind and name (`deployment web`, or `deployment/web`).
    args: Vec<String>,
    /// Delete the objects in these manifests.
    #[arg(short = 'f', long = "filename")]
    files: Vec<PathBuf>,
    #[arg(short, long)]
    namespace: Option<String>,
    /// Exit 0 when the object does not exist.
    #[arg(long)]
    ignore_not_found: bool,
    /// Wait until the objects are gone.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    wait: bool,
}

/// Reads every YAML document of a file, a directory (its .yaml, .yml and .json files) or stdin.
pub fn read_manifests(path: &Path) -> anyhow::Result<Vec<Value>> {
    let mut texts = Vec::new();
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).context("reading standard input")?;
        texts.push(("-".to_owned(), text));
    } else if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml" || e == "json"))
            .collect();
        entries.sort();
        for entry in entries {
            texts.push((entry.display().to_string(), std::fs::read_to_string(&entry).with_context(|| format!("reading {}", entry.display()))?));
        }
    } else {
        texts.push((path.display().to_string(), std::fs::read_to_string(path).with_context(|| format!("the path \"{}\" does not exist or cannot be read", path.display()))?));
    }
    let mut documents = Vec::new();
    for (name, text) in texts {
        let parsed = shoal_api::yaml::documents(&text).map_err(|e| anyhow::anyhow!("error parsing {name}: {e}"))?;
        for document in parsed {
            // A List of objects is as good as the objects.
            if document["kind"].as_str().is_some_and(|k| k.ends_with("List")) && document["items"].is_array() {
                documents.extend(document["items"].as_array().cloned().unwrap_or_default());
            } else {
                documents.push(document);
            }
        }
    }
    Ok(documents)
}

fn resource_of(document: &Value) -> anyhow::Result<&'static ResourceInfo> {
    let api_version = document["apiVersion"].as_str().unwrap_or_default();
    let kind = document["kind"].as_str().unwrap_or_default();
    if api_version.is_empty() || kind.is_empty() {
        bail!("error validating data: apiVersion and kind must both be set in every document");
    }
    resources::by_kind(api_version, kind).ok_or_else(|| anyhow::anyhow!("resource mapping not found for name: {:?} namespace: \"\": no matches for kind \"{kind}\" in version \"{api_version}\"", document["metadata"]["name"].as_str().unwrap_or_default()))
}

fn namespace_of<'a>(info: &ResourceInfo, document: &'a Value, default: &'a str) -> Option<&'a str> {
    info.namespaced.then(|| document["metadata"]["namespace"].as_str().filter(|n| !n.is_empty()).unwrap_or(default))
}

/// Applies documents in order; returns kubectl-style lines (`deployment.apps/web created`).
pub async fn apply_documents(client: &Client, documents: &[Value], namespace: Option<&str>) -> anyhow::Result<Vec<String>> {
    let default_namespace = namespace.unwrap_or(&client.default_namespace).to_owned();
    let mut lines = Vec::new();
    for document in documents {
        let info = resource_of(document)?;
        let name = document["metadata"]["name"].as_str().filter(|n| !n.is_empty()).context("every applied object needs metadata.name")?;
        let namespace = namespace_of(info, document, &default_namespace);
        let mut desired = document.clone();
        if let Some(ns) = namespace {
            desired["metadata"]["namespace"] = json!(ns);
        }
        if let Some(annotations) = desired["metadata"]["annotations"].as_object_mut() {
            annotations.remove(LAST_APPLIED);
        }
        let last_applied = serde_json::to_string(&desired)?;
        desired["metadata"]["annotations"][LAST_APPLIED] = json!(last_applied);
        let label = format!("{}/{name}", kind_name(info));
        match client.get(info, namespace, name).await {
            Err(shoal_client::Error::Api(status)) if status.code == 404 => {
                client.create(info, namespace, &desired, "shoal-client-side-apply").await?;
                lines.push(format!("{label} created"));
            }
            Err(other) => return Err(other.into()),
            Ok(live) => {
                let previous: Option<Value> = live["metadata"]["annotations"][LAST_APPLIED].as_str().and_then(|text| serde_json::from_str(text).ok());
                // Compare against the manifest as the server would store it, so server-side
                // defaults do not look like changes.
                let mut defaulted = desired.clone();
                defaulted["metadata"]["uid"] = live["metadata"]["uid"].clone();
                defaulted["metadata"]["name"] = json!(name);
                shoal_api::defaults::apply(info, &mut defaulted);
                if let Some(metadata) = defaulted["metadata"].as_object_mut() {
                    metadata.remove("uid");
                }
                match shoal_api::patch::three_way_merge_patch(previous.as_ref(), &defaulted, &live) {
                    None => lines.push(format!("{label} unchanged")),
                    Some(patch) => {
                        client.patch(info, namespace, name, &patch, true, "shoal-client-side-apply").await?;
                        lines.push(format!("{label} configured"));
                    }
                }
            }
        }
    }
    Ok(lines)
}

pub async fn apply(client: &Client, args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let mut documents = Vec::new();
    for file in &args.files {
        documents.extend(read_manifests(file)?);
    }
    if documents.is_empty() {
        bail!("no objects passed to apply");
    }
    for line in apply_documents(client, &documents, args.namespace.as_deref()).await? {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn delete(client: &Client, args: DeleteArgs) -> anyhow::Result<ExitCode> {
    let default_namespace = args.namespace.clone().unwrap_or_else(|| client.default_namespace.clone());
    let mut targets: Vec<(&'static ResourceInfo, Option<String>, String)> = Vec::new();
    for file in &args.files {
        for document in read_manifests(file)? {
            let info = resource_of(&document)?;
            let name = document["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            targets.push((info, namespace_of(info, &document, &default_namespace).map(str::to_owned), name));
        }
    }
    match args.args.as_slice() {
        [] => {}
        [single] if single.contains('/') => {
            let (kind, name) = single.split_once('/').unwrap_or_default();
            let info = resources::by_name(kind).with_context(|| format!("the server doesn't have a resource type \"{kind}\""))?;
            targets.push((info, info.namespaced.then(|| default_namespace.clone()), name.to_owned()));
        }
        [kind, names @ ..] if !names.is_empty() => {
            let info = resources::by_name(kind).with_context(|| format!("the server doesn't have a resource type \"{kind}\""))?;
            for name in names {
                targets.push((info, info.namespaced.then(|| default_namespace.clone()), name.clone()));
            }
        }
        _ => bail!("you must specify the kind and name of the object to delete, or -f FILE"),
    }
    let mut failed = false;
    for (info, namespace, name) in targets {
        let options = json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"});
        match client.delete(info, namespace.as_deref(), &name, &options).await {
            Ok(_) => {
                if args.wait {
                    wait_until_gone(client, info, namespace.as_deref(), &name).await?;
                }
                println!("{} \"{name}\" deleted", kind_name(info));
            }
            Err(shoal_client::Error::Api(status)) if status.code == 404 && args.ignore_not_found => {}
            Err(shoal_client::Error::Api(status)) => {
                eprintln!("Error from server ({}): {}", status.reason, status.message);
                failed = true;
            }
            Err(other) => return Err(other.into()),
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

async fn wait_until_gone(client: &Client, info: &ResourceInfo, namespace: Option<&str>, name: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        match client.get(info, namespace, name).await {
            Err(shoal_client::Error::Api(status)) if status.code == 404 => return Ok(()),
            Err(other) => return Err(other.into()),
            Ok(_) if tokio::time::Instant::now() > deadline => bail!("timed out waiting for {} \"{name}\" to be deleted", kind_name(info)),
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}
