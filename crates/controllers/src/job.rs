//! The Job controller: runs pods to completion. NonIndexed and Indexed completion modes,
//! parallelism, backoffLimit with an exponential delay before a failed pod is replaced,
//! activeDeadlineSeconds, suspend, ttlSecondsAfterFinished, and the Complete/Failed conditions.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use shoal_api::meta;

use crate::events::ObjectReference;
use crate::harness::{self, Action, Reconciler, Result};
use crate::informer::{controller_of, split_key};
use crate::pods::{self, PodName};
use crate::{Context, Registered, info};

pub const COMPLETION_INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";
/// The longest delay before a failed pod is replaced.
const MAX_POD_BACKOFF: Duration = Duration::from_secs(360);
const MANAGER: &str = "shoal-job-controller";

/// `[0, 1, 2, 4]` → `"0-2,4"`, as `status.completedIndexes` writes them.
pub fn compress_indexes(indexes: &BTreeSet<i64>) -> String {
    let mut parts = Vec::new();
    let mut iter = indexes.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end = iter.next().unwrap_or(end);
        }
        parts.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
    }
    parts.join(",")
}

fn condition_true<'a>(job: &'a Value, kind: &str) -> Option<&'a Value> {
    job["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == kind && c["status"] == "True")
}

fn completion_index(pod: &Value) -> Option<i64> {
    pod["metadata"]["annotations"][COMPLETION_INDEX_ANNOTATION].as_str().and_then(|i| i.parse().ok())
}

/// When a pod finished: its containers' latest finishedAt, else its creation.
fn finished_at(pod: &Value) -> Option<jiff::Timestamp> {
    pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["state"]["terminated"]["finishedAt"].as_str().and_then(meta::parse_time))
        .max()
        .or_else(|| pod["metadata"]["creationTimestamp"].as_str().and_then(meta::parse_time))
}

/// The delay before the next pod after `failures` failures: base × 2^(failures−1), capped.
pub fn failure_backoff(base: Duration, failures: i64) -> Duration {
    if failures <= 0 {
        return Duration::ZERO;
    }
    base.saturating_mul(1u32 << (failures - 1).min(16) as u32).min(MAX_POD_BACKOFF)
}

pub struct JobController {
    context: Arc<Context>,
}

impl JobController {
    pub fn register(context: &Arc<Context>) -> Registered<Self> {
        let queue = Arc::new(crate::queue::WorkQueue::default());
        let jobs = Arc::clone(context.informers.get("Job"));
        harness::watch_into(&jobs, &queue, harness::own_keys);
        harness::watch_into(context.informers.get("Pod"), &queue, harness::owners_of_kind("Job"));
        Registered::new(Self { context: Arc::clone(context) }, queue, &jobs)
    }

    async fn delete_pods(&self, victims: Vec<Arc<Value>>) -> Result<()> {
        let pod_cache = self.context.informers.get("Pod");
        let client = &self.context.client;
        let results: Vec<_> = futures::stream::iter(victims).map(|pod| async move { pods::delete(client, pod_cache, &pod).await }).buffer_unordered(32).collect().await;
        for result in results {
            result?;
        }
        Ok(())
    }
}

impl Reconciler for JobController {
    fn name(&self) -> &'static str {
        "job"
    }

    async fn reconcile(&self, key: &str) -> Result<Action> {
        let context = &self.context;
        let jobs = context.informers.get("Job");
        let pod_cache = context.informers.get("Pod");
        let Some(job) = jobs.get(key) else { return Ok(Action::Done) };
        if !job["metadata"]["deletionTimestamp"].is_null() {
            return Ok(Action::Done);
        }
        let (namespace, name) = split_key(key);
        let uid = meta::uid(&job);
        let now = jiff::Timestamp::now();
        let stamp = meta::format_time(now);
        let reference = ObjectReference::of("batch/v1", "Job", &job);
        let spec = &job["spec"];
        let owned: Vec<Arc<Value>> = pod_cache.owned_by(uid).into_iter().filter(|p| controller_of(p).is_some_and(|o| o["uid"] == uid)).collect();
        let active: Vec<Arc<Value>> = owned.iter().filter(|p| pods::is_active(p)).cloned().collect();

        // Finished: clean up, then wait for the TTL.
        let finished = condition_true(&job, "Complete").or_else(|| condition_true(&job, "Failed"));
        if let Some(finished) = finished {
            if !active.is_empty() {
                self.delete_pods(active).await?;
            }
            if let Some(ttl) = spec["ttlSecondsAfterFinished"].as_i64() {
                let since = job["status"]["completionTime"].as_str().or(finished["lastTransitionTime"].as_str()).and_then(meta::parse_time).unwrap_or(now);
                let left = ttl - now.duration_since(since).as_secs();
                if left > 0 {
                    return Ok(Action::RequeueAfter(Duration::from_secs(left as u64)));
                }
                let options = json!({"propagationPolicy": "Background", "preconditions": {"uid": uid}});
                match context.client.delete(info("Job"), Some(namespace), name, &options).await {
                    Ok(_) | Err(shoal_client::Error::Api(shoal_api::ApiError { code: 404 | 409, .. })) => {}
                    Err(error) => return Err(error.into()),
                }
            }
            return Ok(Action::Done);
        }

        let indexed = spec["completionMode"] == "Indexed";
        let completions = spec["completions"].as_i64();
        let parallelism = spec["parallelism"].as_i64().unwrap_or(1).max(0);
        let backoff_limit = spec["backoffLimit"].as_i64().unwrap_or(6);
        let on_failure = spec["template"]["spec"]["restartPolicy"] == "OnFailure";
        let succeeded_pods: Vec<&Arc<Value>> = owned.iter().filter(|p| p["status"]["phase"] == "Succeeded").collect();
        let failed_pods: Vec<&Arc<Value>> = owned.iter().filter(|p| p["status"]["phase"] == "Failed").collect();
        let restarts: i64 = if on_failure {
            active.iter().flat_map(|p| p["status"]["containerStatuses"].as_array().cloned().unwrap_or_default()).map(|s| s["restartCount"].as_i64().unwrap_or(0)).sum()
        } else {
            0
        };
        let succeeded = (succeeded_pods.len() as i64).max(job["status"]["succeeded"].as_i64().unwrap_or(0));
        let failed = (failed_pods.len() as i64 + restarts).max(job["status"]["failed"].as_i64().unwrap_or(0));
        let completed_indexes: BTreeSet<i64> = succeeded_pods.iter().filter_map(|p| completion_index(p)).filter(|i| completions.is_none_or(|c| *i < c)).collect();
        let start_time = job["status"]["startTime"].as_str().and_then(meta::parse_time);
        let suspended = spec["suspend"] == true;

        let mut status = job["status"].clone();
        if !status.is_object() {
            status = json!({});
        }
        let mut conditions: Vec<Value> = status["conditions"].as_array().cloned().unwrap_or_default();
        let mut requeue: Option<Duration> = None;
        let mut outcome: Option<(&str, &str, String)> = None;

        if suspended {
            if !active.is_empty() {
                self.delete_pods(active.clone()).await?;
            }
            if !conditions.iter().any(|c| c["type"] == "Suspended" && c["status"] == "True") {
                conditions.retain(|c| c["type"] != "Suspended");
                conditions.push(json!({"type": "Suspended", "status": "True", "reason": "JobSuspended", "message": "Job suspended", "lastProbeTime": stamp, "lastTransitionTime": stamp}));
                context.recorder.normal(reference.clone(), "Suspended", "Job suspended");
            }
        } else {
            if let Some(position) = conditions.iter().position(|c| c["type"] == "Suspended" && c["status"] == "True") {
                conditions[position] = json!({"type": "Suspended", "status": "False", "reason": "JobResumed", "message": "Job resumed", "lastProbeTime": stamp, "lastTransitionTime": stamp});
                // activeDeadlineSeconds counts from the resume.
                status["startTime"] = json!(stamp);
            }
            if status["startTime"].is_null() {
                status["startTime"] = json!(stamp);
            }
            let started = status["startTime"].as_str().and_then(meta::parse_time).or(start_time).unwrap_or(now);
            let complete = if indexed {
                completions.is_some_and(|c| completed_indexes.len() as i64 >= c)
            } else {
                match completions {
                    Some(c) => succeeded >= c,
                    None => succeeded >= 1 && active.is_empty(),
                }
            };
            if complete {
                outcome = Some(("Complete", "CompletionsReached", "Reached expected number of succeeded pods".into()));
            } else if failed > backoff_limit {
                outcome = Some(("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit".into()));
            } else if let Some(deadline) = spec["activeDeadlineSeconds"].as_i64() {
                let left = deadline - now.duration_since(started).as_secs();
                if left <= 0 {
                    outcome = Some(("Failed", "DeadlineExceeded", "Job was active longer than specified deadline".into()));
                } else {
                    requeue = Some(Duration::from_secs(left as u64));
                }
            }
            match &outcome {
                Some((kind, reason, message)) => {
                    if !active.is_empty() {
                        self.delete_pods(active.clone()).await?;
                    }
                    let criteria = if *kind == "Complete" { "SuccessCriteriaMet" } else { "FailureTarget" };
                    for condition_type in [criteria, kind] {
                        conditions.retain(|c| c["type"] != condition_type);
                        conditions.push(json!({"type": condition_type, "status": "True", "reason": reason, "message": message, "lastProbeTime": stamp, "lastTransitionTime": stamp}));
                    }
                    if *kind == "Complete" {
                        status["completionTime"] = json!(stamp);
                        context.recorder.normal(reference.clone(), "Completed", "Job completed");
                    } else {
                        context.recorder.warning(reference.clone(), reason, message.clone());
                    }
                    if let Some(ttl) = spec["ttlSecondsAfterFinished"].as_i64() {
                        requeue = Some(Duration::from_secs(ttl.max(0) as u64));
                    }
                }
                None => {
                    // Replace failed pods only after the backoff since the latest failure.
                    let last_failure = failed_pods.iter().filter_map(|p| finished_at(p)).max();
                    let delay = failure_backoff(context.settings.job_backoff_base, failed_pods.len() as i64);
                    let wait = last_failure.map(|at| delay.as_secs() as i64 - now.duration_since(at).as_secs()).filter(|w| *w > 0);
                    let mut to_create: Vec<Option<i64>> = Vec::new();
                    if indexed {
                        let busy: BTreeSet<i64> = active.iter().filter_map(|p| completion_index(p)).collect();
                        let room = (parallelism - active.len() as i64).max(0) as usize;
                        to_create = (0..completions.unwrap_or(0)).filter(|i| !completed_indexes.contains(i) && !busy.contains(i)).take(room).map(Some).collect();
                    } else {
                        let wanted = match completions {
                            Some(c) => parallelism.min(c - succeeded),
                            None if succeeded > 0 => 0,
                            None => parallelism,
                        };
                        let missing = (wanted - active.len() as i64).max(0);
                        to_create.extend((0..missing).map(|_| None));
                    }
                    if !to_create.is_empty() {
                        if let Some(wait) = wait.filter(|_| !failed_pods.is_empty()) {
                            requeue = Some(Duration::from_secs(wait as u64).min(requeue.unwrap_or(Duration::MAX)));
                        } else {
                            let owner = pods::controller_reference("batch/v1", "Job", &job);
                            for index in to_create {
                                let mut template = spec["template"].clone();
                                let prefix = match index {
                                    Some(index) => {
                                        template["metadata"]["annotations"][COMPLETION_INDEX_ANNOTATION] = json!(index.to_string());
                                        template["metadata"]["labels"][COMPLETION_INDEX_ANNOTATION] = json!(index.to_string());
                                        template["spec"]["hostname"] = json!(format!("{name}-{index}"));
                                        for container in template["spec"]["containers"].as_array_mut().into_iter().flatten() {
                                            let mut env = container["env"].as_array().cloned().unwrap_or_default();
                                            env.retain(|e| e["name"] != "JOB_COMPLETION_INDEX");
                                            env.push(json!({"name": "JOB_COMPLETION_INDEX", "value": index.to_string()}));
                                            container["env"] = Value::Array(env);
                                        }
                                        format!("{name}-{index}-")
                                    }
                                    None => format!("{name}-"),
                                };
                                let pod = pods::pod_from_template(&template, namespace, owner.clone(), PodName::Generate(&prefix));
                                match pods::create(&context.client, pod_cache, &pod, MANAGER).await {
                                    Ok(created) => context.recorder.normal(reference.clone(), "SuccessfulCreate", format!("Created pod: {}", meta::name(&created))),
                                    Err(error) => {
                                        context.recorder.warning(reference.clone(), "FailedCreate", format!("Error creating: {error}"));
                                        return Err(error.into());
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }

        let now_active: Vec<Arc<Value>> = pod_cache.owned_by(uid).into_iter().filter(|p| controller_of(p).is_some_and(|o| o["uid"] == uid) && pods::is_active(p)).collect();
        status["active"] = json!(now_active.len());
        status["ready"] = json!(now_active.iter().filter(|p| pods::is_ready(p)).count());
        status["succeeded"] = json!(succeeded);
        status["failed"] = json!(failed);
        status["terminating"] = json!(owned.iter().filter(|p| pods::is_terminating(p)).count());
        if indexed {
            status["completedIndexes"] = json!(compress_indexes(&completed_indexes));
        }
        status["conditions"] = Value::Array(conditions);
        if let Some(map) = status.as_object_mut() {
            map.retain(|k, v| !(k == "conditions" && v.as_array().is_some_and(Vec::is_empty)));
        }
        if let Some(action) = harness::write_status(&context.client, "Job", jobs, &job, status).await? {
            return Ok(action);
        }
        Ok(requeue.map_or(Action::Done, Action::RequeueAfter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_compress_into_ranges() {
        assert_eq!(compress_indexes(&[0, 1, 2, 4, 6, 7].into_iter().collect()), "0-2,4,6-7");
        assert_eq!(compress_indexes(&BTreeSet::new()), "");
        assert_eq!(compress_indexes(&[3].into_iter().collect()), "3");
    }

    #[test]
    fn failure_backoff_doubles_and_caps() {
        let base = Duration::from_secs(10);
        assert_eq!(failure_backoff(base, 0), Duration::ZERO);
        assert_eq!(failure_backoff(base, 1), Duration::from_secs(10));
        assert_eq!(failure_backoff(base, 3), Duration::from_secs(40));
        assert_eq!(failure_backoff(base, 12), MAX_POD_BACKOFF);
    }
}
