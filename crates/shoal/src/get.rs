//! `shoal get`: tables, wide tables, YAML, JSON, names, and watching.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use serde_json::{Value, json};
use shoal_api::{ResourceInfo, resources};
use shoal_client::{Client, ListOptions};

use crate::output::{kind_name, print_table, table_rows};

#[derive(Args)]
pub struct GetArgs {
    /// Kind (`pods`, `deploy`, `deployments.apps`, `all`) and optionally names; or `kind/name`.
    #[arg(required = true)]
    args: Vec<String>,
    #[arg(short, long)]
    namespace: Option<String>,
    /// List across all namespaces.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Label selector (`app=web,tier!=db`).
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Field selector (`status.phase=Running`).
    #[arg(long)]
    field_selector: Option<String>,
    /// Output format: wide, yaml, json or name.
    #[arg(short, long)]
    output: Option<String>,
    /// After listing, watch for changes.
    #[arg(short, long)]
    watch: bool,
}

/// The kinds `get all` lists, as kubectl's "all" category.
fn category_all() -> Vec<&'static ResourceInfo> {
    resources::RESOURCES.iter().filter(|r| r.categories.contains(&"all")).collect()
}

fn requests(args: &[String]) -> anyhow::Result<Vec<(&'static ResourceInfo, Vec<String>)>> {
    let unknown = |kind: &str| anyhow::anyhow!("the server doesn't have a resource type \"{kind}\"");
    if args.iter().all(|a| a.contains('/')) {
        let mut requests: Vec<(&'static ResourceInfo, Vec<String>)> = Vec::new();
        for arg in args {
            let (kind, name) = arg.split_once('/').unwrap_or_default();
            let info = resources::by_name(kind).ok_or_else(|| unknown(kind))?;
            match requests.iter_mut().find(|(i, _)| *i == info) {
                Some((_, names)) => names.push(name.to_owned()),
                None => requests.push((info, vec![name.to_owned()])),
            }
        }
        return Ok(requests);
    }
    let (kinds, names) = args.split_first().context("you must specify the type of resource to get")?;
    let mut requests = Vec::new();
    for kind in kinds.split(',') {
        if kind == "all" {
            requests.extend(category_all().into_iter().map(|info| (info, names.to_vec())));
        } else {
            requests.push((resources::by_name(kind).ok_or_else(|| unknown(kind))?, names.to_vec()));
        }
    }
    Ok(requests)
}

pub async fn get(client: &Client, args: GetArgs) -> anyhow::Result<ExitCode> {
    let requests = requests(&args.args)?;
    let namespace = args.namespace.clone().unwrap_or_else(|| client.default_namespace.clone());
    let output = args.output.as_deref().unwrap_or("");
    if !["", "wide", "yaml", "json", "name"].contains(&output) {
        anyhow::bail!("unable to match a printer suitable for the output format \"{output}\", allowed formats are: json,name,wide,yaml");
    }
    let multiple_kinds = requests.len() > 1;
    let mut printed_any = false;
    let mut failed = false;
    let mut everything = Vec::new();
    for (info, names) in &requests {
        let scope = if !info.namespaced || args.all_namespaces { None } else { Some(namespace.as_str()) };
        let mut objects = Vec::new();
        let mut revision = String::new();
        if names.is_empty() {
            let options = ListOptions { label_selector: args.selector.clone(), field_selector: args.field_selector.clone(), limit: Some(500), ..Default::default() };
            let (items, list_revision) = client.list_all(info, scope, &options).await?;
            objects = items;
            revision = list_revision;
        } else {
            for name in names {
                match client.get(info, scope, name).await {
                    Ok(object) => objects.push(object),
                    Err(shoal_client::Error::Api(status)) => {
                        eprintln!("Error from server ({}): {}", status.reason, status.message);
                        failed = true;
                    }
                    Err(other) => return Err(other.into()),
                }
            }
        }
        if objects.is_empty() {
            continue;
        }
        printed_any = true;
        match output {
            "json" | "yaml" => everything.extend(objects.iter().cloned()),
            "name" => {
                for object in &objects {
                    println!("{}/{}", kind_name(info), object["metadata"]["name"].as_str().unwrap_or_default());
                }
            }
            _ => {
                let (mut headers, mut rows) = table_rows(info, &objects, output == "wide", args.all_namespaces);
                if multiple_kinds {
                    let name_column = headers.iter().position(|h| h == "NAME").unwrap_or(0);
                    for row in &mut rows {
                        row[name_column] = format!("{}/{}", kind_name(info), row[name_column]);
                    }
                    headers[name_column] = "NAME".into();
                    if printed_any && !everything.is_empty() {
                        println!();
                    }
                }
                print_table(&headers, &rows);
                everything.push(Value::Null);
            }
        }
        if args.watch && !multiple_kinds {
            let options = ListOptions {
                label_selector: args.selector.clone(),
                field_selector: args.field_selector.clone(),
                resource_version: Some(if revision.is_empty() { "0".into() } else { revision }),
                ..Default::default()
            };
            return watch(client, info, scope, &options, output, args.all_namespaces).await;
        }
    }
    match output {
        "json" => {
            let single = requests.len() == 1 && requests[0].1.len() == 1 && everything.len() == 1;
            let document = if single { everything.remove(0) } else { json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": everything}) };
            println!("{}", serde_json::to_string_pretty(&document)?);
        }
        "yaml" => {
            let single = requests.len() == 1 && requests[0].1.len() == 1 && everything.len() == 1;
            let document = if single { everything.remove(0) } else { json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": everything}) };
            print!("{}", shoal_api::yaml::to_string(&document));
        }
        _ => {}
    }
    if !printed_any && !failed {
        if args.all_namespaces || requests.iter().all(|(i, _)| !i.namespaced) {
            eprintln!("No resources found");
        } else {
            eprintln!("No resources found in {namespace} namespace.");
        }
        if args.watch && requests.len() == 1 {
            let (info, _) = requests[0];
            let scope = if !info.namespaced || args.all_namespaces { None } else { Some(namespace.as_str()) };
            let options = ListOptions { label_selector: args.selector.clone(), field_selector: args.field_selector.clone(), ..Default::default() };
            return watch(client, info, scope, &options, output, args.all_namespaces).await;
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

async fn watch(client: &Client, info: &ResourceInfo, namespace: Option<&str>, options: &ListOptions, output: &str, all_namespaces: bool) -> anyhow::Result<ExitCode> {
    let mut stream = Box::pin(client.watch(info, namespace, options).await?);
    while let Some(event) = stream.next().await {
        let event = event?;
        if event.event_type == "ERROR" {
            anyhow::bail!("the watch ended: {}", event.object["message"].as_str().unwrap_or_default());
        }
        if event.event_type == "BOOKMARK" {
            continue;
        }
        match output {
            "json" => println!("{}", serde_json::to_string_pretty(&event.object)?),
            "yaml" => print!("---\n{}", shoal_api::yaml::to_string(&event.object)),
            "name" => println!("{}/{}", kind_name(info), event.object["metadata"]["name"].as_str().unwrap_or_default()),
            _ => {
                let (_, rows) = table_rows(info, std::slice::from_ref(&event.object), output == "wide", all_namespaces);
                for row in rows {
                    println!("{}", row.join("   "));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
