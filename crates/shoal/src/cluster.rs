//! `shoal cluster status|remove`: the control-plane group as its leader sees it.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::Value;
use shoal_client::Client;

use crate::output::print_table;

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Show the control-plane members, their roles, the leader, the term, and each member's
    /// log position and lag.
    Status {
        /// Print the status as JSON.
        #[arg(short, long)]
        json: bool,
    },
    /// Remove a member (by id, as `shoal cluster status` lists it) from the group.
    Remove { member: u64 },
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

pub async fn cluster(client: &Client, command: ClusterCommand) -> anyhow::Result<ExitCode> {
    match command {
        ClusterCommand::Status { json } => {
            let status = client.request(reqwest::Method::GET, "/internal/cluster/status", &[], None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
                return Ok(ExitCode::SUCCESS);
            }
            let leader = status["leader"].as_u64();
            println!(
                "leader: {}   term: {}   revision: {}   (as member {} sees it, {})",
                leader.map_or("none".into(), |id| id.to_string()),
                text(&status["term"]),
                text(&status["revision"]),
                text(&status["id"]),
                text(&status["state"]),
            );
            let headers: Vec<String> = ["ID", "ADDRESS", "ROLE", "LEADER", "MATCHED", "LAG"].iter().map(|h| h.to_string()).collect();
            let rows: Vec<Vec<String>> = status["members"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|member| {
                    vec![
                        text(&member["id"]),
                        text(&member["addr"]),
                        text(&member["role"]),
                        if member["id"].as_u64() == leader { "*".into() } else { String::new() },
                        text(&member["matched_index"]),
                        text(&member["lag"]),
                    ]
                })
                .collect();
            print_table(&headers, &rows);
            println!(
                "last log index: {}   committed: {}   applied: {}   snapshot: {}",
                text(&status["last_log_index"]),
                text(&status["commit_index"]),
                text(&status["applied_index"]),
                text(&status["snapshot_index"])
            );
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::Remove { member } => {
            let answer = client.request(reqwest::Method::POST, &format!("/internal/cluster/members/{member}/remove"), &[], Some(("application/json", b"null".to_vec()))).await?;
            match answer.get("Err") {
                None => {
                    println!("member {member} removed");
                    Ok(ExitCode::SUCCESS)
                }
                Some(error) => {
                    let message = error.as_object().and_then(|e| e.values().next()).map(text).unwrap_or_else(|| error.to_string());
                    anyhow::bail!("removing member {member}: {message}")
                }
            }
        }
    }
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a join token and print it (only its hash is stored: it is shown once).
    Create {
        /// What the token joins: `server` (shoal server --join … --token) or `node` (shoal
        /// agent --token).
        #[arg(long)]
        role: String,
        /// How long the token may be used to join: `90s`, `15m`, `24h`, `7d` (default: forever).
        #[arg(long)]
        ttl: Option<String>,
    },
    /// List the join tokens (ids, roles, expiry; never the secrets).
    List,
    /// Delete a join token by id.
    Delete { id: String },
}

pub async fn token(client: &Client, command: TokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::Create { role, ttl } => {
            let ttl_seconds = match ttl.as_deref() {
                Some(text) => Some(shoal_apiserver::tokens::parse_duration(text).ok_or_else(|| anyhow::anyhow!("--ttl {text:?}: use a number with s, m, h or d"))?),
                None => None,
            };
            let body = serde_json::to_vec(&serde_json::json!({"role": role, "ttlSeconds": ttl_seconds}))?;
            let answer = client.request(reqwest::Method::POST, "/internal/tokens", &[], Some(("application/json", body))).await?;
            println!("{}", text(&answer["token"]));
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::List => {
            let answer = client.request(reqwest::Method::GET, "/internal/tokens", &[], None).await?;
            let headers: Vec<String> = ["ID", "ROLE", "CREATED", "EXPIRES"].iter().map(|h| h.to_string()).collect();
            let rows: Vec<Vec<String>> = answer["tokens"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| vec![text(&t["id"]), text(&t["role"]), text(&t["created"]), if t["expires"].is_null() { "never".into() } else { text(&t["expires"]) }])
                .collect();
            print_table(&headers, &rows);
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Delete { id } => {
            client.request(reqwest::Method::POST, &format!("/internal/tokens/{id}/delete"), &[], Some(("application/json", b"null".to_vec()))).await?;
            println!("token {id} deleted");
            Ok(ExitCode::SUCCESS)
        }
    }
}
