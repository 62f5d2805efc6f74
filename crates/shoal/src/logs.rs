//! `shoal logs`: a pod's container output through the API's `pods/log`.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use futures::StreamExt;
use shoal_client::Client;

#[derive(Args)]
pub struct LogsArgs {
    /// The pod (`NAME` or `pod/NAME`).
    pod: String,
    #[arg(short, long)]
    container: Option<String>,
    #[arg(short, long)]
    namespace: Option<String>,
    /// Keep streaming new lines.
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines.
    #[arg(long)]
    tail: Option<i64>,
    /// Prefix each line with its RFC 3339 timestamp.
    #[arg(long)]
    timestamps: bool,
    /// Only lines newer than this many seconds.
    #[arg(long)]
    since_seconds: Option<u64>,
    /// The logs of the container's previous run (after a restart).
    #[arg(short, long)]
    previous: bool,
}

pub async fn logs(client: &Client, args: LogsArgs) -> anyhow::Result<ExitCode> {
    let name = args.pod.strip_prefix("pod/").or_else(|| args.pod.strip_prefix("pods/")).unwrap_or(&args.pod);
    let namespace = args.namespace.clone().unwrap_or_else(|| client.default_namespace.clone());
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(container) = &args.container {
        query.push(("container", container.clone()));
    }
    if args.follow {
        query.push(("follow", "true".into()));
    }
    if let Some(tail) = args.tail.filter(|t| *t >= 0) {
        query.push(("tailLines", tail.to_string()));
    }
    if args.timestamps {
        query.push(("timestamps", "true".into()));
    }
    if args.previous {
        query.push(("previous", "true".into()));
    }
    if let Some(since) = args.since_seconds {
        query.push(("sinceSeconds", since.to_string()));
    }
    let response = client
        .raw_get(&format!("/api/v1/namespaces/{namespace}/pods/{name}/log"))
        .query(&query)
        .send()
        .await
        .map_err(|e| shoal_client::Error::Transport { url: client.server().to_owned(), detail: e.to_string() })?;
    let status = response.status().as_u16();
    if status != 200 {
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        return Err(shoal_client::Error::Api(shoal_api::ApiError::from_status(status, &body)).into());
    }
    let mut stream = response.bytes_stream();
    let mut stdout = std::io::stdout();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        stdout.write_all(&chunk)?;
        stdout.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}
