//! `shoal describe`: an object's fields and its events.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde_json::Value;
use shoal_api::resources;
use shoal_client::{Client, ListOptions};

#[derive(Args)]
pub struct DescribeArgs {
    /// Kind and name (`deployment web` or `deployment/web`).
    #[arg(required = true)]
    args: Vec<String>,
    #[arg(short, long)]
    namespace: Option<String>,
}

fn indent(text: &str, by: usize) -> String {
    text.lines().map(|line| format!("{}{line}\n", " ".repeat(by))).collect()
}

fn map_lines(value: &Value) -> String {
    match value.as_object() {
        Some(map) if !map.is_empty() => map
            .iter()
            .enumerate()
            .map(|(index, (k, v))| {
                let pad = if index == 0 { "" } else { "             " };
                format!("{pad}{k}={}\n", v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()))
            })
            .collect(),
        _ => "<none>\n".into(),
    }
}

pub async fn describe(client: &Client, args: DescribeArgs) -> anyhow::Result<ExitCode> {
    let (kind, name) = match args.args.as_slice() {
        [single] if single.contains('/') => single.split_once('/').map(|(k, n)| (k.to_owned(), n.to_owned())).unwrap_or_default(),
        [kind, name] => (kind.clone(), name.clone()),
        _ => anyhow::bail!("usage: shoal describe KIND NAME"),
    };
    let info = resources::by_name(&kind).with_context(|| format!("the server doesn't have a resource type \"{kind}\""))?;
    let namespace = args.namespace.clone().unwrap_or_else(|| client.default_namespace.clone());
    let scope = info.namespaced.then_some(namespace.as_str());
    let object = client.get(info, scope, &name).await?;
    let metadata = &object["metadata"];
    let mut text = String::new();
    text.push_str(&format!("Name:        {}\n", metadata["name"].as_str().unwrap_or_default()));
    if info.namespaced {
        text.push_str(&format!("Namespace:   {}\n", metadata["namespace"].as_str().unwrap_or_default()));
    }
    text.push_str(&format!("Kind:        {}\n", info.kind));
    text.push_str(&format!("Labels:      {}", map_lines(&metadata["labels"])));
    let mut annotations = metadata["annotations"].clone();
    if let Some(map) = annotations.as_object_mut() {
        map.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    text.push_str(&format!("Annotations: {}", map_lines(&annotations)));
    text.push_str(&format!("UID:         {}\n", metadata["uid"].as_str().unwrap_or_default()));
    text.push_str(&format!("Created:     {}\n", metadata["creationTimestamp"].as_str().unwrap_or_default()));
    if let Some(deleting) = metadata["deletionTimestamp"].as_str() {
        text.push_str(&format!("Deleting:    {deleting}\n"));
    }
    for (title, field) in [("Spec", "spec"), ("Status", "status"), ("Data", "data")] {
        let value = &object[field];
        if value.is_null() {
            continue;
        }
        let shown = if info.kind == "Secret" && field == "data" {
            // Like kubectl: sizes, never values.
            let sizes: serde_json::Map<String, Value> = value
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), Value::String(format!("{} bytes", v.as_str().map_or(0, |s| s.len() * 3 / 4)))))
                .collect();
            Value::Object(sizes)
        } else {
            value.clone()
        };
        text.push_str(&format!("{title}:\n{}", indent(&shoal_api::yaml::to_string(&shown), 2)));
    }
    let events = resources::by_name("events").expect("events are served");
    let mut selector = format!("involvedObject.name={name},involvedObject.uid={}", metadata["uid"].as_str().unwrap_or_default());
    if info.namespaced {
        selector.push_str(&format!(",involvedObject.namespace={namespace}"));
    }
    let options = ListOptions { field_selector: Some(selector), ..Default::default() };
    let (items, _) = client.list_all(events, if info.namespaced { Some(namespace.as_str()) } else { None }, &options).await?;
    if items.is_empty() {
        text.push_str("Events:      <none>\n");
    } else {
        text.push_str("Events:\n");
        let (headers, rows) = crate::output::table_rows(events, &items, false, false);
        let mut table = vec![headers];
        table.extend(rows);
        for row in table {
            text.push_str(&format!("  {}\n", row.join("   ")));
        }
    }
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}
