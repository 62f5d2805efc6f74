//! Leader election on a `coordination.k8s.io/v1` Lease: controllers and the scheduler run only
//! in the process holding it, so several servers run them exactly once. Acquiring and renewing
//! are compare-and-swap updates (resourceVersion preconditions) through the API.

use std::time::Duration;

use serde_json::{Value, json};
use shoal_api::{meta, resources};
use shoal_client::{Client, Error as ClientError};
use tokio_util::sync::CancellationToken;

/// How the lease is held.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This process's identity; a restarted process with the same identity takes over at once.
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
}

impl LeaseConfig {
    pub fn new(identity: impl Into<String>) -> Self {
        Self {
            namespace: "kube-system".into(),
            name: "shoal-controller-manager".into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(2),
        }
    }
}

/// Whether a lease held by `holder` and last renewed at `renew_time` may be taken by `identity`.
pub fn can_take(spec: &Value, identity: &str, now: jiff::Timestamp) -> bool {
    let holder = spec["holderIdentity"].as_str().unwrap_or_default();
    if holder.is_empty() || holder == identity {
        return true;
    }
    let duration = spec["leaseDurationSeconds"].as_i64().unwrap_or(15);
    match spec["renewTime"].as_str().and_then(meta::parse_time) {
        Some(renewed) => renewed.checked_add(jiff::SignedDuration::from_secs(duration)).is_ok_and(|expiry| expiry < now),
        None => true,
    }
}

/// One acquire-or-renew attempt: `Ok(true)` when this process holds the lease afterwards.
pub async fn try_acquire_or_renew(client: &Client, config: &LeaseConfig) -> Result<bool, ClientError> {
    let leases = resources::by_name("leases").expect("leases are served");
    let now = jiff::Timestamp::now();
    let stamp = meta::format_micro_time(now);
    match client.get(leases, Some(&config.namespace), &config.name).await {
        Ok(mut current) => {
            if !can_take(&current["spec"], &config.identity, now) {
                return Ok(false);
            }
            let holder = current["spec"]["holderIdentity"].as_str().unwrap_or_default().to_owned();
            let spec = &mut current["spec"];
            if holder != config.identity {
                spec["acquireTime"] = json!(stamp);
                spec["leaseTransitions"] = json!(spec["leaseTransitions"].as_i64().unwrap_or(0) + 1);
            }
            spec["holderIdentity"] = json!(config.identity);
            spec["leaseDurationSeconds"] = json!(config.lease_duration.as_secs());
            spec["renewTime"] = json!(stamp);
            match client.replace(leases, Some(&config.namespace), &config.name, &current).await {
                Ok(_) => Ok(true),
                Err(ClientError::Api(error)) if error.code == 409 => Ok(false),
                Err(other) => Err(other),
            }
        }
        Err(ClientError::Api(error)) if error.code == 404 => {
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": config.name, "namespace": config.namespace},
                "spec": {"holderIdentity": config.identity, "leaseDurationSeconds": config.lease_duration.as_secs(),
                         "acquireTime": stamp, "renewTime": stamp, "leaseTransitions": 0},
            });
            match client.create(leases, Some(&config.namespace), &lease, "shoal-controller-manager").await {
                Ok(_) => Ok(true),
                Err(ClientError::Api(error)) if error.code == 409 => Ok(false),
                Err(other) => Err(other),
            }
        }
        Err(other) => Err(other),
    }
}

/// Runs `lead` whenever this process holds the lease, cancelling the token it gets when the
/// lease is lost (not renewed within its duration), until `shutdown`.
pub async fn run<F, Fut>(client: Client, config: LeaseConfig, shutdown: CancellationToken, lead: F)
where
    F: Fn(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        // Acquire.
        loop {
            let attempt = tokio::select! {
                attempt = try_acquire_or_renew(&client, &config) => attempt,
                _ = shutdown.cancelled() => return,
            };
            match attempt {
                Ok(true) => break,
                Ok(false) => {}
                Err(error) => tracing::debug!(%error, "leader election: cannot reach the API"),
            }
            tokio::select! {
                _ = tokio::time::sleep(config.renew_every) => {}
                _ = shutdown.cancelled() => return,
            }
        }
        tracing::info!(identity = config.identity, lease = config.name, "became the leader");
        let leading = shutdown.child_token();
        let led = tokio::spawn(lead(leading.clone()));
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(config.renew_every) => {}
                _ = shutdown.cancelled() => {
                    leading.cancel();
                    let _ = led.await;
                    return;
                }
            }
            let attempt = tokio::select! {
                attempt = try_acquire_or_renew(&client, &config) => attempt,
                _ = shutdown.cancelled() => {
                    leading.cancel();
                    let _ = led.await;
                    return;
                }
            };
            match attempt {
                Ok(true) => last_renewed = tokio::time::Instant::now(),
                Ok(false) => break,
                Err(error) => {
                    tracing::debug!(%error, "leader election: renewing failed");
                    // Stop before another process may take over.
                    if last_renewed.elapsed() + config.renew_every >= config.lease_duration {
                        break;
                    }
                }
            }
        }
        tracing::warn!(identity = config.identity, "lost the leader lease; stopping controllers");
        leading.cancel();
        let _ = led.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_taken_only_when_free_ours_or_expired() {
        let now: jiff::Timestamp = "2026-01-01T00:01:00Z".parse().expect("time");
        assert!(can_take(&json!({}), "a", now));
        assert!(can_take(&json!({"holderIdentity": "a", "renewTime": "2026-01-01T00:00:59.000000Z", "leaseDurationSeconds": 15}), "a", now));
        assert!(!can_take(&json!({"holderIdentity": "b", "renewTime": "2026-01-01T00:00:59.000000Z", "leaseDurationSeconds": 15}), "a", now));
        assert!(can_take(&json!({"holderIdentity": "b", "renewTime": "2026-01-01T00:00:30.000000Z", "leaseDurationSeconds": 15}), "a", now));
    }
}
