//! The HorizontalPodAutoscaler controller (`autoscaling/v2`): every sync period it reads the
//! target's pods' usage from `metrics.k8s.io` and sets the target's `scale` subresource, with
//! Kubernetes' arithmetic:
//!
//! - **Resource** and **ContainerResource** metrics (cpu, memory), as `Utilization` (percent of
//!   the pods' requests) or `AverageValue`. No metrics means one: cpu at 80%.
//! - The proposal is `ceil(ratio × ready pods)` unless the ratio is within the tolerance (0.1)
//!   of 1. Pods without metrics count as using the target on a scale-down and nothing on a
//!   scale-up; unready pods count as using nothing, and only on a scale-up (for cpu). If
//!   counting them flips or cancels the direction, nothing changes.
//! - Several metrics: the largest proposal; if some metric could not be read, never less than
//!   now.
//! - `behavior`: stabilization windows (scale-down 300 s and scale-up 0 s by default: the
//!   largest recent recommendation is kept when shrinking, the smallest when growing) and the
//!   rate policies (by default up to +100% or +4 pods per 15 s, whichever is more, and -100%
//!   per 15 s), `selectPolicy` Max, Min or Disabled.
//! - Then `minReplicas` (default 1) and `maxReplicas`. A target scaled to 0 by hand is left
//!   alone (`ScalingDisabled`).
//!
//! `Pods`, `Object` and `External` metrics need a custom or external metrics API, which Shoal
//! does not serve: such a metric is reported on the `ScalingActive` condition and in an event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shoal_api::meta;
use shoal_api::selector::LabelSelector;

use crate::events::ObjectReference;
use crate::harness::{self, Action, Reconciler, Result};
use crate::informer::split_key;
use crate::{Context, Registered, info_for_kind};

/// How far from 1 the usage ratio must be before the count changes (kube-controller-manager's
/// `--horizontal-pod-autoscaler-tolerance`).
pub const TOLERANCE: f64 = 0.1;
/// The target when an HPA names no metrics.
const DEFAULT_CPU_UTILIZATION: i64 = 80;

/// A pod as the replica arithmetic sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodSample {
    pub ready: bool,
    /// The pod's usage of the resource (cores or bytes), if it was measured.
    pub usage: Option<f64>,
    /// The sum of its containers' requests for the resource, if every container has one.
    pub request: Option<f64>,
}

/// What a metric aims at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    /// Percent of the pods' requests.
    Utilization(i64),
    /// Usage per pod (cores or bytes).
    AverageValue(f64),
}

/// A metric's proposal: the replica count, and the current value for the status (percent for
/// utilization, the average per pod otherwise).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Proposal {
    pub replicas: i64,
    pub utilization: Option<i64>,
    pub average: f64,
}

/// Kubernetes' replica calculation for one resource metric over `pods` (pods being deleted or
/// finished already left out). `unready_counts` is true for cpu: an unready pod's usage is not
/// trusted. Errors say why no proposal could be made.
pub fn resource_replicas(current: i64, pods: &[PodSample], goal: Goal, unready_counts: bool) -> Result<Proposal, String> {
    // Ready pods with usage; the rest are missing (no usage) or unready.
    let (mut measured, mut missing, mut unready) = (Vec::new(), Vec::new(), Vec::new());
    for pod in pods {
        match pod.usage {
            None => missing.push(pod),
            Some(_) if unready_counts && !pod.ready => unready.push(pod),
            Some(usage) => measured.push((usage, pod.request)),
        }
    }
    if measured.is_empty() && unready.is_empty() {
        return Err("did not receive metrics for any ready pods".into());
    }
    let ratio_of = |samples: &[(f64, Option<f64>)]| -> Result<(f64, Option<i64>, f64), String> {
        let usage: f64 = samples.iter().map(|(u, _)| u).sum();
        let count = samples.len().max(1) as f64;
        match goal {
            Goal::Utilization(target) => {
                let requests: Option<f64> = samples.iter().map(|(_, r)| *r).sum();
                let requests = requests.filter(|r| *r > 0.0).ok_or("missing request for the resource in some container")?;
                let utilization = usage * 100.0 / requests;
                Ok((utilization / target.max(1) as f64, Some(utilization.round() as i64), usage / count))
            }
            Goal::AverageValue(target) => Ok(((usage / count) / target.max(f64::MIN_POSITIVE), None, usage / count)),
        }
    };
    if measured.is_empty() {
        // Only unready pods reported: nothing trustworthy to scale on.
        return Err("did not receive metrics for any ready pods (pods might be unready)".into());
    }
    let (ratio, utilization, average) = ratio_of(&measured)?;
    let proposal = |replicas: i64| Proposal { replicas, utilization, average };
    let scale_up_with_unready = !unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && missing.is_empty() {
        if (1.0 - ratio).abs() <= TOLERANCE {
            return Ok(proposal(current));
        }
        return Ok(proposal((ratio * measured.len() as f64).ceil() as i64));
    }
    // Count the missing and (on a scale-up) the unready pods, and see whether the answer holds.
    let mut counted = measured.clone();
    for pod in &missing {
        let usage = if ratio < 1.0 {
            match goal {
                Goal::Utilization(target) => pod.request.unwrap_or(0.0) * target.max(100) as f64 / 100.0,
                Goal::AverageValue(target) => target,
            }
        } else {
            0.0
        };
        counted.push((usage, pod.request));
    }
    if scale_up_with_unready {
        counted.extend(unready.iter().map(|pod| (0.0, pod.request)));
    }
    let (new_ratio, _, _) = ratio_of(&counted)?;
    if (1.0 - new_ratio).abs() <= TOLERANCE || (ratio < 1.0 && new_ratio > 1.0) || (ratio > 1.0 && new_ratio < 1.0) {
        return Ok(proposal(current));
    }
    let replicas = (new_ratio * counted.len() as f64).ceil() as i64;
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return Ok(proposal(current));
    }
    Ok(proposal(replicas))
}

/// One rate policy of `behavior`.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub pods: bool,
    pub value: i64,
    pub period: Duration,
}

/// One direction's rules of `behavior`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    pub window: Duration,
    /// `Max` (the policy allowing the largest change), `Min`, or `Disabled`.
    pub select: String,
    pub policies: Vec<Policy>,
}

impl Rules {
    /// The rules from a `behavior.scaleUp` or `.scaleDown` object, with Kubernetes' defaults.
    pub fn parse(value: &Value, up: bool) -> Self {
        let default_policies = if up {
            vec![Policy { pods: false, value: 100, period: Duration::from_secs(15) }, Policy { pods: true, value: 4, period: Duration::from_secs(15) }]
        } else {
            vec![Policy { pods: false, value: 100, period: Duration::from_secs(15) }]
        };
        let policies: Vec<Policy> = value["policies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some(Policy { pods: p["type"] == "Pods", value: p["value"].as_i64()?, period: Duration::from_secs(p["periodSeconds"].as_u64()?) }))
            .collect();
        Self {
            window: Duration::from_secs(value["stabilizationWindowSeconds"].as_u64().unwrap_or(if up { 0 } else { 300 })),
            select: value["selectPolicy"].as_str().unwrap_or("Max").to_owned(),
            policies: if value["policies"].is_array() { policies } else { default_policies },
        }
    }
}

/// What an autoscaler remembers between syncs: its recent recommendations and scale changes.
#[derive(Debug, Default, Clone)]
pub struct History {
    /// When it last synced, and the generation it saw: a status write (its own included) does
    /// not bring the next sync forward; a spec change does.
    pub synced: Option<(Instant, i64)>,
    pub recommendations: Vec<(Instant, i64)>,
    /// (when, replicas added: negative for removed).
    pub changes: Vec<(Instant, i64)>,
}

/// Applies the stabilization windows and the rate policies to `proposed` (Kubernetes'
/// `normalizeDesiredReplicasWithBehaviors`), then `range` (`minReplicas..=maxReplicas`). Returns the count and the
/// limit that bound it, if any (`ScalingLimited`'s reason).
pub fn normalize(history: &mut History, now: Instant, current: i64, proposed: i64, up: &Rules, down: &Rules, range: std::ops::RangeInclusive<i64>) -> (i64, Option<&'static str>) {
    let (min, max) = (*range.start(), *range.end());
    let keep = up.window.max(down.window);
    history.recommendations.retain(|(at, _)| now.duration_since(*at) <= keep);
    let (mut up_recommendation, mut down_recommendation) = (proposed, proposed);
    for (at, replicas) in &history.recommendations {
        // Strictly inside the window, as Kubernetes counts it: a window of 0 holds nothing.
        if now.duration_since(*at) < up.window {
            up_recommendation = up_recommendation.min(*replicas);
        }
        if now.duration_since(*at) < down.window {
            down_recommendation = down_recommendation.max(*replicas);
        }
    }
    history.recommendations.push((now, proposed));
    let mut stabilized = current;
    if stabilized < up_recommendation {
        stabilized = up_recommendation;
    }
    if stabilized > down_recommendation {
        stabilized = down_recommendation;
    }
    let longest = up.policies.iter().chain(&down.policies).map(|p| p.period).max().unwrap_or_default();
    history.changes.retain(|(at, _)| now.duration_since(*at) <= longest);
    let changed_within = |period: Duration, growth: bool| -> i64 {
        history.changes.iter().filter(|(at, change)| now.duration_since(*at) <= period && (*change > 0) == growth).map(|(_, change)| change.abs()).sum()
    };
    let mut limited = None;
    let mut desired = stabilized;
    if desired > current {
        let limit = match up.select.as_str() {
            "Disabled" => current,
            select => {
                let limits = up.policies.iter().map(|policy| {
                    let start = current - changed_within(policy.period, true);
                    if policy.pods { start + policy.value } else { (start as f64 * (1.0 + policy.value as f64 / 100.0)).ceil() as i64 }
                });
                let limit = if select == "Min" { limits.min() } else { limits.max() };
                limit.unwrap_or(i64::MAX)
            }
        };
        if desired > limit {
            desired = limit.max(current);
            limited = Some("ScaleUpLimit");
        }
    } else if desired < current {
        let limit = match down.select.as_str() {
            "Disabled" => current,
            select => {
                let limits = down.policies.iter().map(|policy| {
                    let start = current + changed_within(policy.period, false);
                    if policy.pods { start - policy.value } else { (start as f64 * (1.0 - policy.value as f64 / 100.0)).floor() as i64 }
                });
                // Max selects the policy allowing the biggest change: the lowest count.
                let limit = if select == "Min" { limits.max() } else { limits.min() };
                limit.unwrap_or(i64::MIN)
            }
        };
        if desired < limit {
            desired = limit.min(current);
            limited = Some("ScaleDownLimit");
        }
    }
    if desired > max {
        return (max, Some("TooManyReplicas"));
    }
    if desired < min {
        return (min, Some("TooFewReplicas"));
    }
    (desired, limited)
}

/// A metric of the spec, read for one sync.
struct Reading {
    /// `cpu resource utilization (percentage of request)` and the like, for events.
    description: String,
    proposal: std::result::Result<Proposal, (String, String)>,
    /// The `currentMetrics` entry.
    current: Value,
}

pub struct AutoscalerController {
    context: Arc<Context>,
    histories: Mutex<HashMap<String, History>>,
}

impl AutoscalerController {
    pub fn register(context: &Arc<Context>) -> Registered<Self> {
        let queue = Arc::new(crate::queue::WorkQueue::default());
        let autoscalers = Arc::clone(context.informers.get("HorizontalPodAutoscaler"));
        harness::watch_into(&autoscalers, &queue, harness::own_keys);
        Registered::new(Self { context: Arc::clone(context), histories: Mutex::new(HashMap::new()) }, queue, &autoscalers)
    }

    /// The usage of every measured pod the selector picks, by pod name: container → (cores, bytes).
    async fn pod_usage(&self, namespace: &str, selector: &str) -> std::result::Result<PodUsage, String> {
        let path = format!("/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods");
        let list = self.context.client.request(shoal_client::Method::GET, &path, &[("labelSelector", selector.to_owned())], None).await.map_err(|e| format!("unable to get metrics for resource: {e}"))?;
        let mut usage = HashMap::new();
        for item in list["items"].as_array().into_iter().flatten() {
            let containers = item["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    let read = |name: &str| c["usage"][name].as_str().and_then(shoal_api::quantity::parse).unwrap_or(0.0);
                    (c["name"].as_str().unwrap_or_default().to_owned(), (read("cpu"), read("memory")))
                })
                .collect();
            usage.insert(meta::name(item).to_owned(), containers);
        }
        Ok(usage)
    }
}

/// The sum of the containers' requests for `resource` (only `container`'s if given): `None`
/// when no container is picked, or the name of the first picked container without a request.
fn pod_request<'a>(pod: &'a Value, resource: &str, container: Option<&str>) -> Result<Option<f64>, &'a str> {
    let mut total = None;
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        if container.is_some_and(|name| c["name"] != name) {
            continue;
        }
        let request = shoal_api::quantity::of_json(&c["resources"]["requests"][resource]).as_deref().and_then(shoal_api::quantity::parse);
        let Some(request) = request else { return Err(c["name"].as_str().unwrap_or_default()) };
        total = Some(total.unwrap_or(0.0) + request);
    }
    Ok(total)
}

fn condition(previous: &Value, kind: &str, status: bool, reason: &str, message: String, now: &str) -> Value {
    let status = if status { "True" } else { "False" };
    let old = previous["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == kind);
    let since = old.filter(|c| c["status"] == status).and_then(|c| c["lastTransitionTime"].as_str()).unwrap_or(now);
    json!({"type": kind, "status": status, "lastTransitionTime": since, "reason": reason, "message": message})
}

impl Reconciler for AutoscalerController {
    fn name(&self) -> &'static str {
        "horizontalpodautoscaler"
    }

    async fn reconcile(&self, key: &str) -> Result<Action> {
        let context = &self.context;
        let sync = Action::RequeueAfter(context.settings.autoscaler_sync_period);
        let autoscalers = context.informers.get("HorizontalPodAutoscaler");
        let Some(hpa) = autoscalers.get(key) else {
            self.histories.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
            return Ok(Action::Done);
        };
        if !hpa["metadata"]["deletionTimestamp"].is_null() {
            return Ok(Action::Done);
        }
        let generation = hpa["metadata"]["generation"].as_i64().unwrap_or(0);
        {
            let mut histories = self.histories.lock().unwrap_or_else(|p| p.into_inner());
            let history = histories.entry(key.to_owned()).or_default();
            let period = context.settings.autoscaler_sync_period;
            if let Some((at, seen)) = history.synced
                && seen == generation
                && at.elapsed() < period
            {
                return Ok(Action::RequeueAfter(period - at.elapsed()));
            }
            history.synced = Some((Instant::now(), generation));
        }
        let (namespace, _) = split_key(key);
        let spec = &hpa["spec"];
        let reference = ObjectReference::of("autoscaling/v2", "HorizontalPodAutoscaler", &hpa);
        let now_text = meta::format_time(jiff::Timestamp::now());
        let previous = &hpa["status"];
        let target_kind = spec["scaleTargetRef"]["kind"].as_str().unwrap_or_default();
        let target_name = spec["scaleTargetRef"]["name"].as_str().unwrap_or_default();
        let min = spec["minReplicas"].as_i64().unwrap_or(1);
        let max = spec["maxReplicas"].as_i64().unwrap_or(min);
        let mut status = json!({
            "observedGeneration": hpa["metadata"]["generation"],
            "currentReplicas": previous["currentReplicas"].as_i64().unwrap_or(0),
            "desiredReplicas": previous["desiredReplicas"].as_i64().unwrap_or(0),
        });
        if let Some(last) = previous["lastScaleTime"].as_str() {
            status["lastScaleTime"] = json!(last);
        }
        // The target, through the kinds that have a scale subresource.
        let target_info = info_for_kind(target_kind).filter(|i| i.has_scale && i.namespaced);
        let target = target_info.and_then(|i| context.informers.get(i.kind).get_named(namespace, target_name));
        let (Some(target_info), Some(target)) = (target_info, target) else {
            let message = match target_info {
                None => format!("the HPA controller was unable to get the target's current scale: {target_kind} has no scale subresource here (use a Deployment or ReplicaSet)"),
                Some(info) => format!("the HPA controller was unable to get the target's current scale: {} \"{target_name}\" not found", info.group_resource()),
            };
            context.recorder.warning(reference, "FailedGetScale", message.clone());
            status["conditions"] = json!([condition(previous, "AbleToScale", false, "FailedGetScale", message, &now_text)]);
            return Ok(harness::write_status(&context.client, "HorizontalPodAutoscaler", autoscalers, &hpa, status).await?.unwrap_or(sync));
        };
        let current = target["spec"]["replicas"].as_i64().unwrap_or(1);
        status["currentReplicas"] = json!(target["status"]["replicas"].as_i64().unwrap_or(current));
        let able = condition(previous, "AbleToScale", true, "SucceededGetScale", "the HPA controller was able to get the target's current scale".into(), &now_text);
        if current == 0 && min != 0 {
            status["desiredReplicas"] = json!(0);
            status["conditions"] = json!([able, condition(previous, "ScalingActive", false, "ScalingDisabled", "scaling is disabled since the replica count of the target is zero".into(), &now_text)]);
            return Ok(harness::write_status(&context.client, "HorizontalPodAutoscaler", autoscalers, &hpa, status).await?.unwrap_or(sync));
        }
        let selector = LabelSelector::from_object(&target["spec"]["selector"]).map_err(harness::Error::Other)?;
        let pods: Vec<Arc<Value>> = context
            .informers
            .get("Pod")
            .list_namespace(namespace)
            .into_iter()
            .filter(|p| selector.matches(meta::labels(p)))
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null() && !matches!(p["status"]["phase"].as_str(), Some("Failed" | "Succeeded")))
            .collect();
        let metrics: Vec<Value> = match spec["metrics"].as_array().filter(|m| !m.is_empty()) {
            Some(metrics) => metrics.clone(),
            None => vec![json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": DEFAULT_CPU_UTILIZATION}}})],
        };
        let usage = if pods.is_empty() { Ok(HashMap::new()) } else { self.pod_usage(namespace, &selector_query(&target["spec"]["selector"])).await };
        let mut readings = Vec::new();
        for metric in &metrics {
            readings.push(read_metric(metric, current, &pods, &usage));
        }
        let valid: Vec<&Proposal> = readings.iter().filter_map(|r| r.proposal.as_ref().ok()).collect();
        let failed: Vec<&(String, String)> = readings.iter().filter_map(|r| r.proposal.as_ref().err()).collect();
        status["currentMetrics"] = Value::Array(readings.iter().map(|r| r.current.clone()).collect());
        let mut conditions = vec![able];
        if valid.is_empty() {
            let (reason, message) = failed.first().map(|(r, m)| (r.clone(), m.clone())).unwrap_or_else(|| ("FailedGetResourceMetric".into(), "no metrics".into()));
            context.recorder.warning(reference.clone(), &reason, message.clone());
            conditions.push(condition(previous, "ScalingActive", false, &reason, message, &now_text));
            status["desiredReplicas"] = json!(current);
            status["conditions"] = Value::Array(conditions);
            return Ok(harness::write_status(&context.client, "HorizontalPodAutoscaler", autoscalers, &hpa, status).await?.unwrap_or(sync));
        }
        for (reason, message) in &failed {
            context.recorder.warning(reference.clone(), reason, message.clone());
        }
        let (best, best_reading) = readings.iter().filter_map(|r| r.proposal.as_ref().ok().map(|p| (p.replicas, r))).max_by_key(|(replicas, _)| *replicas).expect("one valid metric");
        let proposed = if failed.is_empty() { best } else { best.max(current) };
        let behavior = &spec["behavior"];
        let (up, down) = (Rules::parse(&behavior["scaleUp"], true), Rules::parse(&behavior["scaleDown"], false));
        let now = Instant::now();
        let (desired, limit) = {
            let mut histories = self.histories.lock().unwrap_or_else(|p| p.into_inner());
            let history = histories.entry(key.to_owned()).or_default();
            normalize(history, now, current, proposed, &up, &down, min..=max)
        };
        conditions.push(condition(previous, "ScalingActive", true, "ValidMetricFound", format!("the HPA was able to successfully calculate a replica count from {}", best_reading.description), &now_text));
        conditions.push(match limit {
            Some(reason @ ("TooManyReplicas" | "TooFewReplicas")) => condition(previous, "ScalingLimited", true, reason, format!("the desired replica count is {} than the {} replica count", if reason == "TooManyReplicas" { "more" } else { "less" }, if reason == "TooManyReplicas" { "maximum" } else { "minimum" }), &now_text),
            Some(reason) => condition(previous, "ScalingLimited", true, reason, format!("the desired replica count is limited by the {} rules of behavior", if reason == "ScaleUpLimit" { "scale-up" } else { "scale-down" }), &now_text),
            None => condition(previous, "ScalingLimited", false, "DesiredWithinRange", "the desired count is within the acceptable range".into(), &now_text),
        });
        status["desiredReplicas"] = json!(desired);
        if desired != current {
            let patch = json!({"spec": {"replicas": desired}});
            match context.client.merge_patch_subresource(target_info, Some(namespace), target_name, "scale", &patch).await {
                Ok(_) => {
                    let reason = if desired > current { format!("{} above target", best_reading.description) } else { "All metrics below target".to_owned() };
                    context.recorder.normal(reference.clone(), "SuccessfulRescale", format!("New size: {desired}; reason: {reason}"));
                    self.histories.lock().unwrap_or_else(|p| p.into_inner()).entry(key.to_owned()).or_default().changes.push((now, desired - current));
                    status["lastScaleTime"] = json!(now_text);
                }
                Err(error) => {
                    let message = format!("New size: {desired}; error: {error}");
                    context.recorder.warning(reference.clone(), "FailedRescale", message.clone());
                    conditions[0] = condition(previous, "AbleToScale", false, "FailedUpdateScale", format!("the HPA controller was unable to update the target scale: {error}"), &now_text);
                }
            }
        }
        status["conditions"] = Value::Array(conditions);
        Ok(harness::write_status(&context.client, "HorizontalPodAutoscaler", autoscalers, &hpa, status).await?.unwrap_or(sync))
    }
}

/// `matchLabels` and `matchExpressions` as a `labelSelector` query.
fn selector_query(selector: &Value) -> String {
    let mut parts: Vec<String> = selector["matchLabels"].as_object().into_iter().flatten().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect();
    for expression in selector["matchExpressions"].as_array().into_iter().flatten() {
        let key = expression["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = expression["values"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        parts.push(match expression["operator"].as_str().unwrap_or_default() {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_owned(),
            _ => format!("!{key}"),
        });
    }
    parts.join(",")
}

/// Measured pods by name: their containers' (cores, bytes) by container name.
type PodUsage = HashMap<String, HashMap<String, (f64, f64)>>;

/// One metric of the spec over the target's pods.
fn read_metric(metric: &Value, current: i64, pods: &[Arc<Value>], usage: &std::result::Result<PodUsage, String>) -> Reading {
    let kind = metric["type"].as_str().unwrap_or_default();
    let failed = |reason: &str, message: String, current: Value| Reading { description: kind.to_owned(), proposal: Err((reason.to_owned(), message)), current };
    let (source, container) = match kind {
        "Resource" => (&metric["resource"], None),
        "ContainerResource" => (&metric["containerResource"], metric["containerResource"]["container"].as_str()),
        "Pods" | "Object" | "External" => {
            let reason = format!("FailedGet{kind}Metric");
            let api = if kind == "External" { "external.metrics.k8s.io" } else { "custom.metrics.k8s.io" };
            return failed(&reason, format!("the HPA was unable to compute the replica count: {kind} metrics need the {api} API, which Shoal does not serve"), json!({"type": kind}));
        }
        other => return failed("InvalidMetricSourceType", format!("the HPA was unable to compute the replica count: unknown metric source type {other:?}"), json!({"type": other})),
    };
    let resource = source["name"].as_str().unwrap_or_default();
    let field = if kind == "Resource" { "resource" } else { "containerResource" };
    let mut current_entry = json!({"type": kind, field: {"name": resource, "current": {}}});
    if let Some(container) = container {
        current_entry[field]["container"] = json!(container);
    }
    let reason = if kind == "Resource" { "FailedGetResourceMetric" } else { "FailedGetContainerResourceMetric" };
    if resource != "cpu" && resource != "memory" {
        return failed(reason, format!("the HPA was unable to compute the replica count: no metrics for resource {resource:?} (cpu and memory are measured)"), current_entry);
    }
    let goal = match source["target"]["type"].as_str() {
        Some("Utilization") => Goal::Utilization(source["target"]["averageUtilization"].as_i64().unwrap_or(DEFAULT_CPU_UTILIZATION)),
        Some("AverageValue") => match shoal_api::quantity::of_json(&source["target"]["averageValue"]).as_deref().and_then(shoal_api::quantity::parse) {
            Some(value) if value > 0.0 => Goal::AverageValue(value),
            _ => return failed(reason, "the HPA was unable to compute the replica count: target.averageValue is not a positive quantity".into(), current_entry),
        },
        other => return failed(reason, format!("the HPA was unable to compute the replica count: target type {other:?} is not supported for {kind} metrics (use Utilization or AverageValue)"), current_entry),
    };
    let usage = match usage {
        Ok(usage) => usage,
        Err(message) => return failed(reason, format!("the HPA was unable to compute the replica count: {message}"), current_entry),
    };
    let mut samples = Vec::with_capacity(pods.len());
    for pod in pods {
        let request = match pod_request(pod, resource, container) {
            Ok(request) => request,
            // Utilization needs every request: name the first container without one, as
            // Kubernetes does.
            Err(missing) if matches!(goal, Goal::Utilization(_)) => {
                let message = format!("the HPA was unable to compute the replica count: failed to get {resource} utilization: missing request for {resource} in container {missing} of Pod {}", meta::name(pod));
                return failed(reason, message, current_entry);
            }
            Err(_) => None,
        };
        let measured = usage.get(meta::name(pod)).map(|containers| {
            containers.iter().filter(|(name, _)| container.is_none_or(|c| c == name.as_str())).map(|(_, (cpu, memory))| if resource == "cpu" { *cpu } else { *memory }).sum::<f64>()
        });
        samples.push(PodSample { ready: crate::pods::is_ready(pod), usage: measured, request });
    }
    let description = match goal {
        Goal::Utilization(_) => format!("{resource} {} utilization (percentage of request)", if container.is_some() { "container resource" } else { "resource" }),
        Goal::AverageValue(_) => format!("{resource} {}", if container.is_some() { "container resource" } else { "resource" }),
    };
    match resource_replicas(current, &samples, goal, resource == "cpu") {
        Ok(proposal) => {
            let average = if resource == "cpu" { format!("{}m", (proposal.average * 1000.0).round() as i64) } else { format!("{}", proposal.average.round() as i64) };
            current_entry[field]["current"] = match proposal.utilization {
                Some(utilization) => json!({"averageUtilization": utilization, "averageValue": average}),
                None => json!({"averageValue": average}),
            };
            Reading { description, proposal: Ok(proposal), current: current_entry }
        }
        Err(message) => failed(reason, format!("the HPA was unable to compute the replica count: {message}"), current_entry),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ready: bool, usage: Option<f64>, request: f64) -> PodSample {
        PodSample { ready, usage, request: Some(request) }
    }

    #[test]
    fn replicas_follow_the_usage_ratio_outside_the_tolerance() {
        // 3 pods at 0.09 of 0.1 cores: 90% against 50% → ceil(1.8 × 3) = 6.
        let pods = vec![pod(true, Some(0.09), 0.1); 3];
        let proposal = resource_replicas(3, &pods, Goal::Utilization(50), true).expect("proposal");
        assert_eq!((proposal.replicas, proposal.utilization), (6, Some(90)));
        assert!((proposal.average - 0.09).abs() < 1e-9);
        // 53% against 50% is within 10%: no change.
        let pods = vec![pod(true, Some(0.053), 0.1); 3];
        assert_eq!(resource_replicas(3, &pods, Goal::Utilization(50), true).expect("proposal").replicas, 3);
        // 10% against 50%: ceil(0.2 × 4) = 1.
        let pods = vec![pod(true, Some(0.01), 0.1); 4];
        assert_eq!(resource_replicas(4, &pods, Goal::Utilization(50), true).expect("proposal").replicas, 1);
        // Average value: 300 MiB per pod against 100 MiB → 3× the pods.
        let pods = vec![pod(true, Some(300.0), 0.0); 2];
        assert_eq!(resource_replicas(2, &pods, Goal::AverageValue(100.0), false).expect("proposal").replicas, 6);
    }

    #[test]
    fn missing_and_unready_pods_only_damp_a_change() {
        // Scale-up: the missing pod counts as 0. 2 pods at 100% of 50% target plus one missing:
        // ratio (0.2 / 0.3) / 0.5 = 1.33 → ceil(1.33 × 3) = 4.
        let pods = vec![pod(true, Some(0.1), 0.1), pod(true, Some(0.1), 0.1), pod(true, None, 0.1)];
        assert_eq!(resource_replicas(3, &pods, Goal::Utilization(50), true).expect("proposal").replicas, 4);
        // Scale-down: the missing pod counts as at the target (100% of its request here).
        // 2 pods at 10%, 1 missing at 100%: ratio (0.01+0.01+0.1)/0.3/0.5 = 0.8 → ceil(2.4) = 3:
        // no change.
        let pods = vec![pod(true, Some(0.01), 0.1), pod(true, Some(0.01), 0.1), pod(true, None, 0.1)];
        assert_eq!(resource_replicas(3, &pods, Goal::Utilization(50), true).expect("proposal").replicas, 3);
        // An unready pod (cpu) counts as 0 on a scale-up: 1 ready pod at 60% with 3 unready ones
        // → 0.06/0.4/0.5 = 0.3: the direction flips, so no change.
        let mut pods = vec![pod(true, Some(0.06), 0.1)];
        pods.extend(vec![pod(false, Some(0.5), 0.1); 3]);
        assert_eq!(resource_replicas(4, &pods, Goal::Utilization(50), true).expect("proposal").replicas, 4);
        // For memory, readiness does not matter.
        // (0.06 + 1.5) / 0.4 = 390% against 50% → ceil(7.8 × 4) = 32.
        assert_eq!(resource_replicas(4, &pods, Goal::Utilization(50), false).expect("proposal").replicas, 32);
    }

    #[test]
    fn a_proposal_needs_metrics_and_requests() {
        assert!(resource_replicas(2, &[pod(true, None, 0.1)], Goal::Utilization(50), true).unwrap_err().contains("did not receive metrics"));
        let no_request = PodSample { ready: true, usage: Some(0.1), request: None };
        assert!(resource_replicas(1, &[no_request], Goal::Utilization(50), true).unwrap_err().contains("missing request"));
    }

    fn rules(up: bool) -> Rules {
        Rules::parse(&Value::Null, up)
    }

    #[test]
    fn default_behavior_limits_growth_and_holds_shrinking_for_five_minutes() {
        let start = Instant::now();
        let mut history = History::default();
        // From 1, the default scale-up allows max(+100%, +4) = 5 within 15 s.
        assert_eq!(normalize(&mut history, start, 1, 10, &rules(true), &rules(false), 1..=20), (5, Some("ScaleUpLimit")));
        history.changes.push((start, 4));
        // 5 s later, from 5: the period started at 1, so the limit is still 5.
        assert_eq!(normalize(&mut history, start + Duration::from_secs(5), 5, 10, &rules(true), &rules(false), 1..=20).0, 5);
        // After the period: 5 → max(10, 9) = 10.
        assert_eq!(normalize(&mut history, start + Duration::from_secs(20), 5, 10, &rules(true), &rules(false), 1..=20), (10, None));
        // A lower proposal within the 300 s window keeps the highest recent recommendation.
        assert_eq!(normalize(&mut history, start + Duration::from_secs(30), 10, 2, &rules(true), &rules(false), 1..=20), (10, None));
        // Past the window it may shrink.
        assert_eq!(normalize(&mut history, start + Duration::from_secs(400), 10, 2, &rules(true), &rules(false), 1..=20), (2, None));
        // Bounds come last.
        let mut fresh = History::default();
        assert_eq!(normalize(&mut fresh, start, 3, 3, &rules(true), &rules(false), 4..=20), (4, Some("TooFewReplicas")));
        assert_eq!(normalize(&mut fresh, start, 3, 30, &rules(true), &rules(false), 1..=6), (6, Some("TooManyReplicas")));
    }

    #[test]
    fn behavior_policies_are_read_from_the_spec() {
        let down = Rules::parse(&json!({"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]}), false);
        assert_eq!(down.window, Duration::ZERO);
        let mut history = History::default();
        let now = Instant::now();
        assert_eq!(normalize(&mut history, now, 5, 1, &rules(true), &down, 1..=10), (4, Some("ScaleDownLimit")));
        let disabled = Rules::parse(&json!({"selectPolicy": "Disabled"}), true);
        assert_eq!(normalize(&mut History::default(), now, 2, 8, &disabled, &down, 1..=10), (2, Some("ScaleUpLimit")));
    }

    #[test]
    fn selectors_become_queries() {
        let selector = json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}, {"key": "x", "operator": "DoesNotExist"}]});
        assert_eq!(selector_query(&selector), "app=web,tier in (a,b),!x");
    }
}
