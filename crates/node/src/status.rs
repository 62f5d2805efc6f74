//! Pod status as Kubernetes reports it, computed from the node's view of each container. Pure:
//! no IO, tested on its own.

use serde_json::{Value, json};

/// What one container is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerState {
    Waiting { reason: String, message: Option<String> },
    Running { started_at: String },
    Terminated { exit_code: i32, reason: String, message: Option<String>, started_at: String, finished_at: String },
}

/// The node's record of one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRecord {
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub state: ContainerState,
    pub last_state: Option<ContainerState>,
    pub restart_count: u32,
    pub ready: bool,
    pub init: bool,
    /// A native sidecar: an init container with `restartPolicy: Always`, which starts before
    /// the main containers and runs beside them.
    pub sidecar: bool,
}

fn state_json(state: &ContainerState) -> Value {
    match state {
        ContainerState::Waiting { reason, message } => {
            let mut waiting = json!({"reason": reason});
            if let Some(message) = message {
                waiting["message"] = json!(message);
            }
            json!({"waiting": waiting})
        }
        ContainerState::Running { started_at } => json!({"running": {"startedAt": started_at}}),
        ContainerState::Terminated { exit_code, reason, message, started_at, finished_at } => {
            let mut terminated = json!({"exitCode": exit_code, "reason": reason, "startedAt": started_at, "finishedAt": finished_at});
            if let Some(message) = message {
                terminated["message"] = json!(message);
            }
            json!({"terminated": terminated})
        }
    }
}

fn container_json(record: &ContainerRecord) -> Value {
    let mut status = json!({
        "name": record.name,
        "image": record.image,
        "imageID": record.image_id,
        "state": state_json(&record.state),
        "lastState": record.last_state.as_ref().map(state_json).unwrap_or(json!({})),
        "restartCount": record.restart_count,
        "ready": record.ready,
        "started": matches!(record.state, ContainerState::Running { .. }),
    });
    if record.init {
        status.as_object_mut().map(|s| s.remove("started"));
    }
    status
}

/// The pod phase from its containers and restart policy, as kubelet computes it: a waiting
/// container that has run before (it has a terminated last state) counts as stopped.
pub fn phase(containers: &[ContainerRecord], restart_policy: &str) -> &'static str {
    let init_failed = containers.iter().any(|c| c.init && !c.sidecar && matches!(c.state, ContainerState::Terminated { exit_code, .. } if exit_code != 0));
    if init_failed && restart_policy == "Never" {
        return "Failed";
    }
    let main: Vec<&ContainerRecord> = containers.iter().filter(|c| !c.init).collect();
    let (mut waiting, mut running, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for container in &main {
        let effective = match (&container.state, &container.last_state) {
            (ContainerState::Waiting { .. }, Some(last @ ContainerState::Terminated { .. })) => last,
            (state, _) => state,
        };
        match effective {
            ContainerState::Waiting { .. } => waiting += 1,
            ContainerState::Running { .. } => running += 1,
            ContainerState::Terminated { exit_code, .. } => {
                stopped += 1;
                if *exit_code == 0 {
                    succeeded += 1;
                }
            }
        }
    }
    if main.is_empty() || waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else {
        match restart_policy {
            "Always" => "Running",
            "OnFailure" => {
                if succeeded == stopped { "Succeeded" } else { "Running" }
            }
            _ => {
                if succeeded < stopped { "Failed" } else { "Succeeded" }
            }
        }
    }
}

fn condition(kind: &str, true_: bool, now: &str, reason: Option<&str>) -> Value {
    let mut condition = json!({"type": kind, "status": if true_ { "True" } else { "False" }, "lastProbeTime": null, "lastTransitionTime": now});
    if let Some(reason) = reason {
        condition["reason"] = json!(reason);
    }
    condition
}

/// The whole `status` object.
pub fn pod_status(containers: &[ContainerRecord], restart_policy: &str, host_ip: &str, pod_ip: &str, start_time: &str, now: &str) -> Value {
    let phase = phase(containers, restart_policy);
    let initialized = containers.iter().filter(|c| c.init).all(|c| match c.sidecar {
        true => c.restart_count > 0 || matches!(c.state, ContainerState::Running { .. }),
        false => matches!(c.state, ContainerState::Terminated { exit_code: 0, .. }),
    });
    let main: Vec<&ContainerRecord> = containers.iter().filter(|c| !c.init).collect();
    let sidecars_ready = containers.iter().filter(|c| c.sidecar).all(|c| c.ready);
    let all_ready = !main.is_empty() && main.iter().all(|c| c.ready) && sidecars_ready;
    let completed = phase == "Succeeded" || phase == "Failed";
    let not_ready_reason = if completed { Some("PodCompleted") } else if all_ready { None } else { Some("ContainersNotReady") };
    json!({
        "phase": phase,
        "conditions": [
            condition("PodScheduled", true, now, None),
            condition("Initialized", initialized, now, if initialized { None } else { Some("ContainersNotInitialized") }),
            condition("ContainersReady", all_ready && !completed, now, not_ready_reason),
            condition("Ready", all_ready && !completed, now, not_ready_reason),
        ],
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": start_time,
        "qosClass": "BestEffort",
        "initContainerStatuses": containers.iter().filter(|c| c.init).map(container_json).collect::<Vec<_>>(),
        "containerStatuses": main.iter().map(|c| container_json(c)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, state: ContainerState, ready: bool) -> ContainerRecord {
        ContainerRecord { name: name.into(), image: "i".into(), image_id: "d".into(), state, last_state: None, restart_count: 0, ready, init: false, sidecar: false }
    }

    fn terminated(code: i32) -> ContainerState {
        ContainerState::Terminated { exit_code: code, reason: if code == 0 { "Completed".into() } else { "Error".into() }, message: None, started_at: "t".into(), finished_at: "t".into() }
    }

    #[test]
    fn phases_follow_kubernetes() {
        let running = ContainerState::Running { started_at: "t".into() };
        let waiting = ContainerState::Waiting { reason: "ContainerCreating".into(), message: None };
        let mut crash_looping = record("a", ContainerState::Waiting { reason: "CrashLoopBackOff".into(), message: None }, false);
        crash_looping.last_state = Some(terminated(3));
        crash_looping.restart_count = 1;
        let cases = [
            (vec![record("a", waiting.clone(), false)], "Always", "Pending"),
            (vec![record("a", running.clone(), true)], "Always", "Running"),
            (vec![record("a", terminated(0), false)], "Never", "Succeeded"),
            (vec![record("a", terminated(3), false)], "Never", "Failed"),
            (vec![record("a", terminated(3), false)], "OnFailure", "Running"),
            (vec![record("a", terminated(0), false)], "Always", "Running"),
            (vec![record("a", terminated(0), false), record("b", running, true)], "Never", "Running"),
            (vec![crash_looping.clone()], "OnFailure", "Running"),
            (vec![crash_looping], "Always", "Running"),
        ];
        for (containers, policy, expected) in cases {
            assert_eq!(phase(&containers, policy), expected, "{containers:?} {policy}");
        }
    }

    #[test]
    fn ready_needs_every_container_and_a_live_pod() {
        let running = ContainerState::Running { started_at: "t".into() };
        let status = pod_status(&[record("a", running.clone(), true), record("b", running, false)], "Always", "127.0.0.1", "10.88.0.2", "s", "n");
        assert_eq!(status["conditions"][3]["status"], "False");
        assert_eq!(status["conditions"][3]["reason"], "ContainersNotReady");
        assert_eq!(status["podIP"], "10.88.0.2");
        assert_eq!(status["hostIP"], "127.0.0.1");
        let done = pod_status(&[record("a", terminated(0), false)], "Never", "127.0.0.1", "127.0.0.1", "s", "n");
        assert_eq!(done["phase"], "Succeeded");
        assert_eq!(done["conditions"][3]["reason"], "PodCompleted");
        assert_eq!(done["containerStatuses"][0]["state"]["terminated"]["exitCode"], 0);
    }

    #[test]
    fn native_sidecars_initialise_when_started_and_gate_readiness() {
        let running = ContainerState::Running { started_at: "t".into() };
        let mut sidecar = record("proxy", running.clone(), false);
        sidecar.init = true;
        sidecar.sidecar = true;
        let status = pod_status(&[sidecar.clone(), record("app", running.clone(), true)], "Always", "h", "p", "s", "n");
        assert_eq!(status["conditions"][1]["status"], "True", "a started sidecar counts as initialised");
        assert_eq!(status["conditions"][3]["status"], "False", "an unready sidecar keeps the pod unready");
        sidecar.ready = true;
        let status = pod_status(&[sidecar.clone(), record("app", running, true)], "Always", "h", "p", "s", "n");
        assert_eq!(status["conditions"][3]["status"], "True");
        // A Job's pod succeeds when its main container does, whatever the sidecar is doing.
        let status = pod_status(&[sidecar, record("app", terminated(0), false)], "Never", "h", "p", "s", "n");
        assert_eq!(status["phase"], "Succeeded");
    }
}
