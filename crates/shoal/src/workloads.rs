//! `shoal scale`, `shoal rollout status|history|undo`, `shoal set image`, and
//! `shoal cordon|uncordon|drain`: the workload verbs, doing what kubectl does for each.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use shoal_api::{ResourceInfo, meta, resources};
use shoal_client::{Client, ListOptions};

const MANAGER: &str = "shoal";
const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";

/// `deployment/NAME` (or `deploy/NAME`, `rs/NAME`...) into its kind and name.
fn workload(reference: &str) -> anyhow::Result<(&'static ResourceInfo, String)> {
    let (kind, name) = reference.split_once('/').with_context(|| format!("{reference:?}: name the object as KIND/NAME, e.g. deployment/hello"))?;
    let info = resources::by_name(kind).with_context(|| format!("unknown kind {kind:?}"))?;
    Ok((info, name.to_owned()))
}

#[derive(Args)]
pub struct ScaleArgs {
    /// `deployment/NAME` or `replicaset/NAME`.
    target: String,
    #[arg(long)]
    replicas: i64,
    #[arg(short, long)]
    namespace: Option<String>,
}

pub async fn scale(client: &Client, args: ScaleArgs) -> anyhow::Result<ExitCode> {
    let (info, name) = workload(&args.target)?;
    if !info.has_scale {
        bail!("{} has no scale subresource", info.plural);
    }
    let namespace = args.namespace.unwrap_or_else(|| client.default_namespace.clone());
    client.merge_patch_subresource(info, Some(&namespace), &name, "scale", &json!({"spec": {"replicas": args.replicas}})).await?;
    println!("{}.{}/{name} scaled", info.singular, info.group);
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand)]
pub enum RolloutCommand {
    /// Wait for a Deployment's rollout to finish, printing its progress.
    Status {
        target: String,
        #[arg(short, long)]
        namespace: Option<String>,
        /// Give up after this many seconds (0: wait forever).
        #[arg(long, default_value_t = 0)]
        timeout: u64,
    },
    /// List a Deployment's revisions.
    History {
        target: String,
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Roll a Deployment back to its previous revision (or --to-revision).
    Undo {
        target: String,
        #[arg(short, long)]
        namespace: Option<String>,
        #[arg(long, default_value_t = 0)]
        to_revision: i64,
    },
}

/// The ReplicaSets a Deployment owns, with their revisions, oldest revision first.
async fn revisions(client: &Client, namespace: &str, deployment: &Value) -> anyhow::Result<Vec<(i64, Value)>> {
    let replica_sets = resources::by_name("replicasets").expect("replicasets are served");
    let (items, _) = client.list_all(replica_sets, Some(namespace), &ListOptions::default()).await?;
    let mut owned: Vec<(i64, Value)> = items
        .into_iter()
        .filter(|rs| rs["metadata"]["ownerReferences"].as_array().into_iter().flatten().any(|r| r["uid"] == meta::uid(deployment) && r["controller"] == true))
        .map(|rs| (rs["metadata"]["annotations"][REVISION_ANNOTATION].as_str().and_then(|r| r.parse().ok()).unwrap_or(0), rs))
        .collect();
    owned.sort_by_key(|(revision, _)| *revision);
    Ok(owned)
}

/// kubectl's rollout status message for a Deployment, and whether the rollout is done.
pub fn rollout_message(deployment: &Value) -> Result<(String, bool), String> {
    let name = meta::name(deployment);
    let generation = deployment["metadata"]["generation"].as_i64().unwrap_or(0);
    let status = &deployment["status"];
    if status["observedGeneration"].as_i64().unwrap_or(0) < generation {
        return Ok(("Waiting for deployment spec update to be observed...".into(), false));
    }
    if let Some(progressing) = status["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "Progressing")
        && progressing["reason"] == "ProgressDeadlineExceeded"
    {
        return Err(format!("deployment {name:?} exceeded its progress deadline"));
    }
    let replicas = deployment["spec"]["replicas"].as_i64().unwrap_or(1);
    let updated = status["updatedReplicas"].as_i64().unwrap_or(0);
    let total = status["replicas"].as_i64().unwrap_or(0);
    let available = status["availableReplicas"].as_i64().unwrap_or(0);
    if updated < replicas {
        return Ok((format!("Waiting for deployment {name:?} rollout to finish: {updated} out of {replicas} new replicas have been updated..."), false));
    }
    if total > updated {
        return Ok((format!("Waiting for deployment {name:?} rollout to finish: {} old replicas are pending termination...", total - updated), false));
    }
    if available < updated {
        return Ok((format!("Waiting for deployment {name:?} rollout to finish: {available} of {updated} updated replicas are available..."), false));
    }
    Ok((format!("deployment {name:?} successfully rolled out"), true))
}

pub async fn rollout(client: &Client, command: RolloutCommand) -> anyhow::Result<ExitCode> {
    let deployments = resources::by_name("deployments").expect("deployments are served");
    match command {
        RolloutCommand::Status { target, namespace, timeout } => {
            let (_, name) = workload(&target)?;
            let namespace = namespace.unwrap_or_else(|| client.default_namespace.clone());
            let started = std::time::Instant::now();
            let mut last = String::new();
            loop {
                let deployment = client.get(deployments, Some(&namespace), &name).await?;
                let (message, done) = rollout_message(&deployment).map_err(anyhow::Error::msg)?;
                if message != last {
                    println!("{message}");
                    last = message;
                }
                if done {
                    return Ok(ExitCode::SUCCESS);
                }
                if timeout > 0 && started.elapsed() > Duration::from_secs(timeout) {
                    bail!("timed out waiting for the rollout of deployment {name:?}");
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        RolloutCommand::History { target, namespace } => {
            let (_, name) = workload(&target)?;
            let namespace = namespace.unwrap_or_else(|| client.default_namespace.clone());
            let deployment = client.get(deployments, Some(&namespace), &name).await?;
            println!("deployment.apps/{name}");
            println!("{:<10}CHANGE-CAUSE", "REVISION");
            for (revision, rs) in revisions(client, &namespace, &deployment).await? {
                let cause = rs["metadata"]["annotations"]["kubernetes.io/change-cause"].as_str().unwrap_or("<none>");
                println!("{revision:<10}{cause}");
            }
            Ok(ExitCode::SUCCESS)
        }
        RolloutCommand::Undo { target, namespace, to_revision } => {
            let (_, name) = workload(&target)?;
            let namespace = namespace.unwrap_or_else(|| client.default_namespace.clone());
            let deployment = client.get(deployments, Some(&namespace), &name).await?;
            let history = revisions(client, &namespace, &deployment).await?;
            let current = deployment["metadata"]["annotations"][REVISION_ANNOTATION].as_str().and_then(|r| r.parse::<i64>().ok()).unwrap_or(0);
            let target_rs = if to_revision > 0 {
                history.iter().find(|(revision, _)| *revision == to_revision).with_context(|| format!("unable to find the specified revision {to_revision}"))?
            } else {
                history.iter().rev().find(|(revision, _)| *revision < current).context("no rollout history found: there is no previous revision to roll back to")?
            };
            let mut template = target_rs.1["spec"]["template"].clone();
            if let Some(labels) = template["metadata"]["labels"].as_object_mut() {
                labels.remove("pod-template-hash");
            }
            // As kubectl does: a JSON patch replacing the whole template.
            let patch = json!([{"op": "replace", "path": "/spec/template", "value": template}]);
            client.patch(deployments, Some(&namespace), &name, &patch, false, MANAGER).await?;
            println!("deployment.apps/{name} rolled back to revision {}", target_rs.0);
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[derive(Args)]
pub struct SetImageArgs {
    /// `deployment/NAME` (or replicaset, daemonset, job, pod).
    target: String,
    /// `CONTAINER=IMAGE` pairs (`*=IMAGE` sets every container).
    #[arg(required = true)]
    images: Vec<String>,
    #[arg(short, long)]
    namespace: Option<String>,
}

pub async fn set_image(client: &Client, args: SetImageArgs) -> anyhow::Result<ExitCode> {
    let (info, name) = workload(&args.target)?;
    let namespace = args.namespace.unwrap_or_else(|| client.default_namespace.clone());
    let object = client.get(info, Some(&namespace), &name).await?;
    let pod_spec_path = if info.kind == "Pod" { "/spec" } else if info.kind == "CronJob" { "/spec/jobTemplate/spec/template/spec" } else { "/spec/template/spec" };
    let pod_spec = object.pointer(pod_spec_path).cloned().unwrap_or(Value::Null);
    // Each change is guarded by a test of the container's name at its index, so a concurrent
    // reordering fails the patch, while status writes by controllers do not.
    let mut operations = Vec::new();
    for pair in &args.images {
        let (container, image) = pair.split_once('=').with_context(|| format!("{pair:?}: expected CONTAINER=IMAGE"))?;
        let mut found = false;
        for list in ["initContainers", "containers"] {
            for (index, existing) in pod_spec[list].as_array().into_iter().flatten().enumerate() {
                if container == "*" || existing["name"] == container {
                    operations.push(json!({"op": "test", "path": format!("{pod_spec_path}/{list}/{index}/name"), "value": existing["name"]}));
                    operations.push(json!({"op": "replace", "path": format!("{pod_spec_path}/{list}/{index}/image"), "value": image}));
                    found = true;
                }
            }
        }
        if !found {
            bail!("unable to find container named {container:?}");
        }
    }
    client.patch(info, Some(&namespace), &name, &Value::Array(operations), false, MANAGER).await?;
    println!("{}.{}/{name} image updated", info.singular, info.group);
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct NodeArgs {
    node: String,
}

#[derive(Args)]
pub struct DrainArgs {
    node: String,
    /// Give up after this many seconds waiting for pods to leave (0: wait forever).
    #[arg(long, default_value_t = 0)]
    timeout: u64,
    /// Go ahead even though DaemonSet-managed pods stay on the node (they are not evicted).
    #[arg(long)]
    ignore_daemonsets: bool,
}

async fn set_unschedulable(client: &Client, node: &str, unschedulable: bool) -> anyhow::Result<()> {
    let nodes = resources::by_name("nodes").expect("nodes are served");
    let patch = json!({"spec": {"unschedulable": if unschedulable { json!(true) } else { Value::Null }}});
    client.patch(nodes, None, node, &patch, true, MANAGER).await?;
    println!("node/{node} {}", if unschedulable { "cordoned" } else { "uncordoned" });
    Ok(())
}

pub async fn cordon(client: &Client, args: NodeArgs, unschedulable: bool) -> anyhow::Result<ExitCode> {
    set_unschedulable(client, &args.node, unschedulable).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn drain(client: &Client, args: DrainArgs) -> anyhow::Result<ExitCode> {
    let pods = resources::by_name("pods").expect("pods are served");
    set_unschedulable(client, &args.node, true).await?;
    let options = ListOptions { field_selector: Some(format!("spec.nodeName={}", args.node)), ..Default::default() };
    let (items, _) = client.list_all(pods, None, &options).await?;
    let is_daemon = |pod: &Value| pod["metadata"]["ownerReferences"].as_array().into_iter().flatten().any(|r| r["kind"] == "DaemonSet" && r["controller"] == true);
    let daemons: Vec<&Value> = items.iter().filter(|p| is_daemon(p)).collect();
    if !daemons.is_empty() && !args.ignore_daemonsets {
        let names: Vec<String> = daemons.iter().map(|p| format!("{}/{}", meta::namespace(p), meta::name(p))).collect();
        bail!("cannot delete DaemonSet-managed pods (use --ignore-daemonsets): {}", names.join(", "));
    }
    let evict: Vec<&Value> = items.iter().filter(|p| !is_daemon(p) && p["metadata"]["deletionTimestamp"].is_null()).collect();
    for pod in &evict {
        let options = json!({"preconditions": {"uid": meta::uid(pod)}});
        match client.delete(pods, Some(meta::namespace(pod)), meta::name(pod), &options).await {
            Ok(_) => println!("evicting pod {}/{}", meta::namespace(pod), meta::name(pod)),
            Err(shoal_client::Error::Api(error)) if error.code == 404 => {}
            Err(error) => return Err(error.into()),
        }
    }
    let started = std::time::Instant::now();
    for pod in &evict {
        loop {
            match client.get(pods, Some(meta::namespace(pod)), meta::name(pod)).await {
                Ok(current) if meta::uid(&current) == meta::uid(pod) => {}
                Ok(_) | Err(shoal_client::Error::Api(shoal_api::ApiError { code: 404, .. })) => {
                    println!("pod/{} evicted", meta::name(pod));
                    break;
                }
                Err(error) => return Err(error.into()),
            }
            if args.timeout > 0 && started.elapsed() > Duration::from_secs(args.timeout) {
                bail!("timed out waiting for pod {} to leave node {}", meta::name(pod), args.node);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    println!("node/{} drained", args.node);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollout_messages_match_kubectl() {
        let deployment = |generation: i64, observed: i64, updated: i64, total: i64, available: i64| {
            json!({"metadata": {"name": "web", "generation": generation}, "spec": {"replicas": 3},
                   "status": {"observedGeneration": observed, "updatedReplicas": updated, "replicas": total, "availableReplicas": available}})
        };
        assert_eq!(rollout_message(&deployment(2, 1, 3, 3, 3)), Ok(("Waiting for deployment spec update to be observed...".into(), false)));
        assert_eq!(rollout_message(&deployment(2, 2, 1, 4, 3)), Ok(("Waiting for deployment \"web\" rollout to finish: 1 out of 3 new replicas have been updated...".into(), false)));
        assert_eq!(rollout_message(&deployment(2, 2, 3, 4, 3)), Ok(("Waiting for deployment \"web\" rollout to finish: 1 old replicas are pending termination...".into(), false)));
        assert_eq!(rollout_message(&deployment(2, 2, 3, 3, 2)), Ok(("Waiting for deployment \"web\" rollout to finish: 2 of 3 updated replicas are available...".into(), false)));
        assert_eq!(rollout_message(&deployment(2, 2, 3, 3, 3)), Ok(("deployment \"web\" successfully rolled out".into(), true)));
        let mut stuck = deployment(2, 2, 1, 3, 2);
        stuck["status"]["conditions"] = json!([{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]);
        assert!(rollout_message(&stuck).is_err());
    }
}
