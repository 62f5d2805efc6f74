//! Controllers and the scheduler, end to end: a real server (with its node `node-1`) and a
//! second real node agent (`node-2`), Deployments, ReplicaSets, Jobs, CronJobs and DaemonSets
//! of the sample components, garbage collection, and a node that dies.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Agent, Server, push, wait_until};


async fn two_nodes(extra_args: &[&str]) -> (Server, Agent) {
    let server = Server::start_with(extra_args).await;
    let agent = Agent::start(&server, "node-2");
    wait_until(&server, "/api/v1/nodes", 60, "both nodes registering ready", |list| {
        list["items"].as_array().is_some_and(|nodes| {
            nodes.len() == 2 && nodes.iter().all(|n| n["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        })
    })
    .await;
    (server, agent)
}

fn hello_deployment(name: &str, replicas: i64, greeting: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{
                "name": "hello", "image": "shoal.local/samples/hello:latest",
                "env": [{"name": "GREETING", "value": greeting}],
                "ports": [{"containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}}]}}}
    })
}

async fn pods_of(server: &Server, selector: &str) -> Vec<Value> {
    let (_, list) = server.get(&format!("/api/v1/namespaces/default/pods?labelSelector={selector}")).await;
    list["items"].as_array().cloned().unwrap_or_default()
}

fn is_ready(pod: &Value) -> bool {
    pod["metadata"]["deletionTimestamp"].is_null() && pod["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn running_on(pods: &[Value]) -> BTreeMap<String, usize> {
    let mut nodes = BTreeMap::new();
    for pod in pods.iter().filter(|p| p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()) {
        *nodes.entry(pod["spec"]["nodeName"].as_str().unwrap_or_default().to_owned()).or_insert(0) += 1;
    }
    nodes
}

async fn wait_running(server: &Server, selector: &str, count: usize, seconds: u64) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let pods = pods_of(server, selector).await;
        let active: Vec<Value> = pods.iter().filter(|p| p["metadata"]["deletionTimestamp"].is_null()).cloned().collect();
        let running = active.iter().filter(|p| p["status"]["phase"] == "Running").count();
        if running == count && active.len() == count {
            return active;
        }
        assert!(Instant::now() < deadline, "expected {count} running pods for {selector} within {seconds} s; have {} active, {running} running", active.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn scale(server: &Server, name: &str, replicas: i64) {
    let body = serde_json::to_vec(&json!({"spec": {"replicas": replicas}})).expect("json");
    let (code, scale) = server.request(reqwest::Method::PATCH, &format!("/apis/apps/v1/namespaces/default/deployments/{name}/scale"), Some(("application/merge-patch+json", body))).await;
    assert_eq!(code, 200, "{scale}");
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], replicas);
}

#[tokio::test]
async fn deployments_scale_heal_and_spread_over_two_nodes() {
    let (server, _agent) = two_nodes(&[]).await;
    push(&server, "hello/hello.wasm", "shoal.local/samples/hello:latest");
    let (code, body) = server.post("/apis/apps/v1/namespaces/default/deployments", &hello_deployment("web", 1, "hi")).await;
    assert_eq!(code, 201, "{body}");
    wait_running(&server, "app=web", 1, 60).await;

    scale(&server, "web", 20).await;
    let pods = wait_running(&server, "app=web", 20, 90).await;
    let spread = running_on(&pods);
    assert_eq!(spread.len(), 2, "20 replicas use both nodes: {spread:?}");
    assert!(spread.values().all(|n| *n >= 5), "the scheduler spreads one owner's pods: {spread:?}");
    // Pods are named after their ReplicaSet, which is named after the template hash.
    let (_, replica_sets) = server.get("/apis/apps/v1/namespaces/default/replicasets?labelSelector=app=web").await;
    let rs_name = replica_sets["items"][0]["metadata"]["name"].as_str().expect("a replica set").to_owned();
    let hash = replica_sets["items"][0]["metadata"]["labels"]["pod-template-hash"].as_str().expect("hash label").to_owned();
    assert_eq!(rs_name, format!("web-{hash}"));
    assert!(pods.iter().all(|p| p["metadata"]["name"].as_str().unwrap_or_default().starts_with(&format!("{rs_name}-"))));
    let events = server.get("/api/v1/namespaces/default/events").await.1;
    assert!(events["items"].as_array().into_iter().flatten().any(|e| e["reason"] == "Scheduled"), "scheduling is reported as events");

    scale(&server, "web", 3).await;
    let pods = wait_running(&server, "app=web", 3, 60).await;

    // A deleted pod is replaced.
    let victim = pods[0]["metadata"]["name"].as_str().expect("name").to_owned();
    let (code, _) = server.request(reqwest::Method::DELETE, &format!("/api/v1/namespaces/default/pods/{victim}"), None).await;
    assert_eq!(code, 200);
    let pods = wait_running(&server, "app=web", 3, 60).await;
    assert!(pods.iter().all(|p| p["metadata"]["name"] != victim.as_str()));

    let deployment = wait_until(&server, "/apis/apps/v1/namespaces/default/deployments/web", 30, "the deployment reporting 3 available", |d| {
        d["status"]["availableReplicas"] == 3 && d["status"]["updatedReplicas"] == 3 && d["status"]["replicas"] == 3
    })
    .await;
    assert_eq!(deployment["status"]["observedGeneration"], deployment["metadata"]["generation"]);
    let conditions = deployment["status"]["conditions"].as_array().expect("conditions");
    assert!(conditions.iter().any(|c| c["type"] == "Available" && c["status"] == "True"));

    // `shoal scale` and `shoal rollout status` through the CLI.
    let (code, stdout, stderr) = server.cli(&["scale", "deployment/web", "--replicas", "2"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("scaled"));
    wait_running(&server, "app=web", 2, 60).await;
    let (code, stdout, stderr) = server.cli(&["rollout", "status", "deployment/web", "--timeout", "60"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("successfully rolled out"), "{stdout}");
}

#[tokio::test]
async fn a_rolling_update_keeps_every_replica_ready_and_undo_reuses_the_old_replica_set() {
    let server = Server::start().await;
    push(&server, "hello/hello.wasm", "shoal.local/samples/hello:latest");
    let (code, body) = server.post("/apis/apps/v1/namespaces/default/deployments", &hello_deployment("roll", 3, "v1")).await;
    assert_eq!(code, 201, "{body}");
    wait_until(&server, "/apis/apps/v1/namespaces/default/deployments/roll", 60, "the first rollout", |d| d["status"]["availableReplicas"] == 3).await;
    let (_, before) = server.get("/apis/apps/v1/namespaces/default/replicasets?labelSelector=app=roll").await;
    let first_rs = before["items"][0]["metadata"]["name"].as_str().expect("rs").to_owned();

    // The new template, through `shoal set image`-style JSON patch of the env.
    let patch = json!([{"op": "replace", "path": "/spec/template/spec/containers/0/env/0/value", "value": "v2"}]);
    let (code, body) = server.request(reqwest::Method::PATCH, "/apis/apps/v1/namespaces/default/deployments/roll", Some(("application/json-patch+json", serde_json::to_vec(&patch).expect("json")))).await;
    assert_eq!(code, 200, "{body}");
    let mut fewest_ready = usize::MAX;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let pods = pods_of(&server, "app=roll").await;
        fewest_ready = fewest_ready.min(pods.iter().filter(|p| is_ready(p)).count());
        let (_, deployment) = server.get("/apis/apps/v1/namespaces/default/deployments/roll").await;
        let status = &deployment["status"];
        if status["observedGeneration"] == deployment["metadata"]["generation"] && status["updatedReplicas"] == 3 && status["replicas"] == 3 && status["availableReplicas"] == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "the rolling update did not finish: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(fewest_ready >= 3, "maxUnavailable 0: never fewer than 3 ready pods, saw {fewest_ready}");
    let (_, deployment) = server.get("/apis/apps/v1/namespaces/default/deployments/roll").await;
    assert_eq!(deployment["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "2");

    let (code, stdout, stderr) = server.cli(&["rollout", "history", "deployment/roll"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("1 ") && stdout.contains("2 "), "{stdout}");
    let (code, _, stderr) = server.cli(&["rollout", "undo", "deployment/roll"]);
    assert_eq!(code, 0, "{stderr}");
    // The status must be of the rolled-back generation: the revision annotation moves to 3 as the
    // rollback starts, while the status still counts the previous generation's pods.
    let deployment = wait_until(&server, "/apis/apps/v1/namespaces/default/deployments/roll", 90, "the rollback", |d| {
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"
            && d["status"]["observedGeneration"] == d["metadata"]["generation"]
            && d["status"]["updatedReplicas"] == 3
            && d["status"]["replicas"] == 3
            && d["status"]["availableReplicas"] == 3
    })
    .await;
    assert_eq!(deployment["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"], "v1");
    let (_, after) = server.get(&format!("/apis/apps/v1/namespaces/default/replicasets/{first_rs}")).await;
    assert_eq!(after["spec"]["replicas"], 3, "undo scaled the first ReplicaSet back up instead of making a new one");
    assert_eq!(after["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "3");
    let (_, all) = server.get("/apis/apps/v1/namespaces/default/replicasets?labelSelector=app=roll").await;
    assert_eq!(all["items"].as_array().map(Vec::len), Some(2));

    // Deleting the Deployment removes its ReplicaSets and pods (background propagation).
    let (code, _) = server.request(reqwest::Method::DELETE, "/apis/apps/v1/namespaces/default/deployments/roll", None).await;
    assert_eq!(code, 200);
    wait_until(&server, "/apis/apps/v1/namespaces/default/replicasets?labelSelector=app=roll", 30, "the ReplicaSets being collected", |l| l["items"].as_array().is_some_and(Vec::is_empty)).await;
    wait_until(&server, "/api/v1/namespaces/default/pods?labelSelector=app=roll", 60, "the pods being collected", |l| l["items"].as_array().is_some_and(Vec::is_empty)).await;
}

#[tokio::test]
async fn garbage_collection_honours_orphan_and_foreground_propagation() {
    let server = Server::start().await;
    push(&server, "hello/hello.wasm", "shoal.local/samples/hello:latest");
    for name in ["keep", "fore"] {
        let (code, body) = server.post("/apis/apps/v1/namespaces/default/deployments", &hello_deployment(name, 1, "x")).await;
        assert_eq!(code, 201, "{body}");
        wait_running(&server, &format!("app={name}"), 1, 60).await;
    }
    // Orphan: the ReplicaSet and pod stay, without the owner reference.
    let body = serde_json::to_vec(&json!({"propagationPolicy": "Orphan"})).expect("json");
    let (code, _) = server.request(reqwest::Method::DELETE, "/apis/apps/v1/namespaces/default/deployments/keep", Some(("application/json", body))).await;
    assert_eq!(code, 200);
    wait_until(&server, "/apis/apps/v1/namespaces/default/deployments/keep", 30, "the orphaning deletion finishing", |d| d["code"] == 404).await;
    let replica_sets = wait_until(&server, "/apis/apps/v1/namespaces/default/replicasets?labelSelector=app=keep", 30, "the ReplicaSet losing its owner", |l| {
        l["items"].as_array().is_some_and(|items| items.len() == 1 && items[0]["metadata"]["ownerReferences"].as_array().is_none_or(Vec::is_empty))
    })
    .await;
    assert!(replica_sets["items"][0]["metadata"]["deletionTimestamp"].is_null());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pods_of(&server, "app=keep").await.len(), 1, "orphaned pods keep running");

    // Foreground: the owner stays (with its finalizer) until its dependents are gone.
    let body = serde_json::to_vec(&json!({"propagationPolicy": "Foreground"})).expect("json");
    let (code, deleting) = server.request(reqwest::Method::DELETE, "/apis/apps/v1/namespaces/default/deployments/fore", Some(("application/json", body))).await;
    assert_eq!(code, 200);
    assert!(deleting["metadata"]["finalizers"].as_array().into_iter().flatten().any(|f| f == "foregroundDeletion"), "{deleting}");
    wait_until(&server, "/apis/apps/v1/namespaces/default/deployments/fore", 60, "the foreground deletion finishing", |d| d["code"] == 404).await;
    assert!(pods_of(&server, "app=fore").await.is_empty(), "the owner went only after its pods");
}

#[tokio::test]
async fn jobs_retry_to_their_backoff_limit_and_indexed_jobs_complete() {
    let server = Server::start_with(&["--job-backoff-seconds", "1"]).await;
    push(&server, "worker/worker.wasm", "shoal.local/samples/worker:latest");
    let failing = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "fails"},
        "spec": {"backoffLimit": 2, "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "worker", "image": "shoal.local/samples/worker:latest",
            "env": [{"name": "STEPS", "value": "1"}, {"name": "EXIT_CODE", "value": "1"}]}]}}}});
    let (code, body) = server.post("/apis/batch/v1/namespaces/default/jobs", &failing).await;
    assert_eq!(code, 201, "{body}");
    let indexed = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "indexed"},
        "spec": {"completions": 3, "parallelism": 2, "completionMode": "Indexed", "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "worker", "image": "shoal.local/samples/worker:latest", "env": [{"name": "STEPS", "value": "1"}]}]}}}});
    let (code, body) = server.post("/apis/batch/v1/namespaces/default/jobs", &indexed).await;
    assert_eq!(code, 201, "{body}");

    let job = wait_until(&server, "/apis/batch/v1/namespaces/default/jobs/fails", 90, "the failing job to fail", |j| {
        j["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Failed" && c["status"] == "True")
    })
    .await;
    assert_eq!(job["status"]["failed"], 3, "backoffLimit 2: three attempts, then Failed: {}", job["status"]);
    let failed = job["status"]["conditions"].as_array().expect("conditions").iter().find(|c| c["type"] == "Failed").cloned().expect("Failed");
    assert_eq!(failed["reason"], "BackoffLimitExceeded");
    let pods = pods_of(&server, "job-name=fails").await;
    assert_eq!(pods.len(), 3);
    assert!(pods.iter().all(|p| p["status"]["phase"] == "Failed"));

    let job = wait_until(&server, "/apis/batch/v1/namespaces/default/jobs/indexed", 90, "the indexed job to complete", |j| {
        j["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Complete" && c["status"] == "True")
    })
    .await;
    assert_eq!(job["status"]["succeeded"], 3);
    assert_eq!(job["status"]["completedIndexes"], "0-2");
    let pods = pods_of(&server, "job-name=indexed").await;
    let mut indexes: Vec<String> = pods.iter().map(|p| p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"].as_str().unwrap_or_default().to_owned()).collect();
    indexes.sort();
    assert_eq!(indexes, ["0", "1", "2"]);
    for pod in &pods {
        let env = pod["spec"]["containers"][0]["env"].as_array().expect("env");
        assert!(env.iter().any(|e| e["name"] == "JOB_COMPLETION_INDEX" && e["value"] == pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]));
    }
}

#[tokio::test]
async fn a_cron_job_on_every_minute_creates_its_job() {
    let server = Server::start().await;
    push(&server, "worker/worker.wasm", "shoal.local/samples/worker:latest");
    let cron_job = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "tick"},
        "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "worker", "image": "shoal.local/samples/worker:latest", "env": [{"name": "STEPS", "value": "1"}]}]}}}}}});
    let (code, body) = server.post("/apis/batch/v1/namespaces/default/cronjobs", &cron_job).await;
    assert_eq!(code, 201, "{body}");
    let jobs = wait_until(&server, "/apis/batch/v1/namespaces/default/jobs", 75, "the cron job creating a job", |l| {
        l["items"].as_array().into_iter().flatten().any(|j| j["metadata"]["ownerReferences"][0]["name"] == "tick")
    })
    .await;
    let job = jobs["items"].as_array().into_iter().flatten().find(|j| j["metadata"]["ownerReferences"][0]["name"] == "tick").expect("job");
    assert!(job["metadata"]["name"].as_str().unwrap_or_default().starts_with("tick-"));
    assert!(job["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"].is_string());
    wait_until(&server, "/apis/batch/v1/namespaces/default/cronjobs/tick", 30, "lastScheduleTime", |c| c["status"]["lastScheduleTime"].is_string()).await;
}

#[tokio::test]
async fn a_daemon_set_follows_nodes_joining_and_leaving() {
    let server = Server::start().await;
    push(&server, "hello/hello.wasm", "shoal.local/samples/hello:latest");
    let daemon_set = json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [{"name": "hello", "image": "shoal.local/samples/hello:latest"}]}}}});
    let (code, body) = server.post("/apis/apps/v1/namespaces/default/daemonsets", &daemon_set).await;
    assert_eq!(code, 201, "{body}");
    let pods = wait_running(&server, "app=agent", 1, 60).await;
    assert_eq!(pods[0]["spec"]["nodeName"], "node-1");

    let mut agent = Agent::start(&server, "node-2");
    let pods = wait_running(&server, "app=agent", 2, 60).await;
    assert_eq!(running_on(&pods).keys().cloned().collect::<Vec<_>>(), ["node-1", "node-2"]);
    wait_until(&server, "/apis/apps/v1/namespaces/default/daemonsets/agent", 30, "the daemon set status", |d| d["status"]["desiredNumberScheduled"] == 2 && d["status"]["numberReady"] == 2).await;

    // The node leaves: its agent stops and its Node is deleted.
    agent.kill();
    let (code, _) = server.request(reqwest::Method::DELETE, "/api/v1/nodes/node-2", None).await;
    assert_eq!(code, 200);
    wait_until(&server, "/api/v1/namespaces/default/pods?labelSelector=app=agent", 30, "the daemon pod of the departed node going", |l| {
        l["items"].as_array().is_some_and(|items| items.len() == 1 && items[0]["spec"]["nodeName"] == "node-1")
    })
    .await;
    wait_until(&server, "/apis/apps/v1/namespaces/default/daemonsets/agent", 30, "the daemon set status", |d| d["status"]["desiredNumberScheduled"] == 1).await;
}

#[tokio::test]
async fn pods_of_a_killed_node_run_on_the_other_node_within_15_seconds() {
    let (server, mut agent) = two_nodes(&[]).await;
    push(&server, "hello/hello.wasm", "shoal.local/samples/hello:latest");
    // Everything on node-2 first: cordon node-1 while the pods are placed.
    let (code, _, stderr) = server.cli(&["cordon", "node-1"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, body) = server.post("/apis/apps/v1/namespaces/default/deployments", &hello_deployment("moving", 3, "hi")).await;
    assert_eq!(code, 201, "{body}");
    let pods = wait_running(&server, "app=moving", 3, 60).await;
    assert_eq!(running_on(&pods).keys().cloned().collect::<Vec<_>>(), ["node-2"]);
    let (code, _, stderr) = server.cli(&["uncordon", "node-1"]);
    assert_eq!(code, 0, "{stderr}");

    agent.kill();
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(15);
    loop {
        let pods = pods_of(&server, "app=moving").await;
        let on_node_1 = pods.iter().filter(|p| p["spec"]["nodeName"] == "node-1" && p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()).count();
        if on_node_1 == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "15 s after node-2 died only {on_node_1} of 3 pods run on node-1");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("pods moved off the dead node in {:?}", killed.elapsed());
    let (_, node) = server.get("/api/v1/nodes/node-2").await;
    assert!(node["spec"]["taints"].as_array().into_iter().flatten().any(|t| t["key"] == "node.kubernetes.io/unreachable" && t["effect"] == "NoExecute"), "{}", node["spec"]);
    let ready = node["status"]["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "Ready").cloned().expect("Ready");
    assert_eq!(ready["status"], "Unknown");
}

#[tokio::test]
async fn an_unschedulable_pod_says_why_and_is_placed_when_a_node_fits() {
    let server = Server::start().await;
    // The only reason given must be the selector: wait until the node is Ready first.
    wait_until(&server, "/api/v1/nodes/node-1", 60, "node-1 ready", |n| n["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True")).await;
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "picky"},
        "spec": {"nodeSelector": {"disk": "ssd"}, "containers": [{"name": "c", "image": "shoal.local/samples/hello:latest", "resources": {"requests": {"memory": "1Mi"}}}]}});
    let (code, body) = server.post("/api/v1/namespaces/default/pods", &pod).await;
    assert_eq!(code, 201, "{body}");
    let pending = wait_until(&server, "/api/v1/namespaces/default/pods/picky", 30, "PodScheduled=False", |p| {
        p["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "PodScheduled" && c["status"] == "False")
    })
    .await;
    let condition = pending["status"]["conditions"].as_array().expect("conditions").iter().find(|c| c["type"] == "PodScheduled").cloned().expect("condition");
    assert_eq!(condition["reason"], "Unschedulable");
    assert_eq!(condition["message"], "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.");
    let events = wait_until(&server, "/api/v1/namespaces/default/events", 30, "a FailedScheduling event", |l| l["items"].as_array().into_iter().flatten().any(|e| e["reason"] == "FailedScheduling")).await;
    assert!(events["items"].as_array().into_iter().flatten().any(|e| e["reason"] == "FailedScheduling" && e["involvedObject"]["name"] == "picky"));

    // Labelling the node makes the pod fit; it is retried on the node change.
    let patch = serde_json::to_vec(&json!({"metadata": {"labels": {"disk": "ssd"}}})).expect("json");
    let (code, _) = server.request(reqwest::Method::PATCH, "/api/v1/nodes/node-1", Some(("application/merge-patch+json", patch))).await;
    assert_eq!(code, 200);
    let bound = wait_until(&server, "/api/v1/namespaces/default/pods/picky", 30, "the pod being bound", |p| p["spec"]["nodeName"] == "node-1").await;
    assert!(bound["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "PodScheduled" && c["status"] == "True"));
    // A second binding is refused.
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "picky"}, "target": {"kind": "Node", "name": "node-1"}});
    let (code, _) = server.post("/api/v1/namespaces/default/pods/picky/binding", &binding).await;
    assert_eq!(code, 409);
}

#[tokio::test]
async fn recreate_replaces_every_pod_at_once_after_set_image_and_a_stuck_rollout_times_out() {
    let server = Server::start().await;
    push(&server, "hello/hello.wasm", "shoal.local/samples/hello:latest");
    push(&server, "hello/hello.wasm", "shoal.local/samples/hello:2");
    let mut deployment = hello_deployment("recreate", 2, "hi");
    deployment["spec"]["strategy"] = json!({"type": "Recreate"});
    let (code, body) = server.post("/apis/apps/v1/namespaces/default/deployments", &deployment).await;
    assert_eq!(code, 201, "{body}");
    let old = wait_running(&server, "app=recreate", 2, 60).await;
    let old_names: Vec<String> = old.iter().map(|p| p["metadata"]["name"].as_str().unwrap_or_default().to_owned()).collect();

    let (code, _, stderr) = server.cli(&["set", "image", "deployment/recreate", "hello=shoal.local/samples/hello:2"]);
    assert_eq!(code, 0, "{stderr}");
    // Recreate: no new pod runs while an old one still does.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let pods = pods_of(&server, "app=recreate").await;
        let running = |old: bool| pods.iter().filter(|p| p["status"]["phase"] == "Running" && old_names.iter().any(|n| p["metadata"]["name"] == n.as_str()) == old).count();
        assert!(running(true) == 0 || running(false) == 0, "old and new pods ran together: {:?}", pods.iter().map(|p| (&p["metadata"]["name"], &p["status"]["phase"])).collect::<Vec<_>>());
        let fresh: Vec<&Value> = pods.iter().filter(|p| !old_names.iter().any(|n| p["metadata"]["name"] == n.as_str())).collect();
        if fresh.len() == 2 && fresh.iter().all(|p| p["status"]["phase"] == "Running") && pods.len() == 2 {
            assert!(fresh.iter().all(|p| p["spec"]["containers"][0]["image"] == "shoal.local/samples/hello:2"));
            break;
        }
        assert!(Instant::now() < deadline, "the Recreate rollout did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A rollout that cannot progress hits its deadline, and `rollout status` says so.
    let patch = json!({"spec": {"progressDeadlineSeconds": 3, "template": {"spec": {"containers": [{"name": "hello", "image": "shoal.local/samples/missing:1", "ports": [{"containerPort": 8080}]}]}}}});
    let (code, body) = server.request(reqwest::Method::PATCH, "/apis/apps/v1/namespaces/default/deployments/recreate", Some(("application/merge-patch+json", serde_json::to_vec(&patch).expect("json")))).await;
    assert_eq!(code, 200, "{body}");
    let stuck = wait_until(&server, "/apis/apps/v1/namespaces/default/deployments/recreate", 60, "ProgressDeadlineExceeded", |d| {
        d["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Progressing" && c["reason"] == "ProgressDeadlineExceeded" && c["status"] == "False")
    })
    .await;
    assert_eq!(stuck["status"]["observedGeneration"], stuck["metadata"]["generation"]);
    let (code, _, stderr) = server.cli(&["rollout", "status", "deployment/recreate", "--timeout", "30"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("exceeded its progress deadline"), "{stderr}");
}

#[tokio::test]
async fn drain_moves_pods_to_the_other_node_and_paused_deployments_wait() {
    let (server, _agent) = two_nodes(&[]).await;
    push(&server, "hello/hello.wasm", "shoal.local/samples/hello:latest");
    let (code, body) = server.post("/apis/apps/v1/namespaces/default/deployments", &hello_deployment("drained", 4, "hi")).await;
    assert_eq!(code, 201, "{body}");
    wait_running(&server, "app=drained", 4, 60).await;
    let (code, stdout, stderr) = server.cli(&["drain", "node-2", "--timeout", "60"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("node/node-2 drained"), "{stdout}");
    let pods = wait_running(&server, "app=drained", 4, 60).await;
    assert_eq!(running_on(&pods).keys().cloned().collect::<Vec<_>>(), ["node-1"]);
    let (_, node) = server.get("/api/v1/nodes/node-2").await;
    assert_eq!(node["spec"]["unschedulable"], true);

    // Paused: a template change makes no new ReplicaSet until resumed.
    let pause = json!({"spec": {"paused": true}});
    let (code, _) = server.request(reqwest::Method::PATCH, "/apis/apps/v1/namespaces/default/deployments/drained", Some(("application/merge-patch+json", serde_json::to_vec(&pause).expect("json")))).await;
    assert_eq!(code, 200);
    let patch = json!([{"op": "replace", "path": "/spec/template/spec/containers/0/env/0/value", "value": "paused"}]);
    let (code, _) = server.request(reqwest::Method::PATCH, "/apis/apps/v1/namespaces/default/deployments/drained", Some(("application/json-patch+json", serde_json::to_vec(&patch).expect("json")))).await;
    assert_eq!(code, 200);
    wait_until(&server, "/apis/apps/v1/namespaces/default/deployments/drained", 30, "the Progressing condition saying paused", |d| {
        d["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Progressing" && c["reason"] == "DeploymentPaused")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, sets) = server.get("/apis/apps/v1/namespaces/default/replicasets?labelSelector=app=drained").await;
    assert_eq!(sets["items"].as_array().map(Vec::len), Some(1), "a paused deployment does not roll out");
    let resume = json!({"spec": {"paused": false}});
    let (code, _) = server.request(reqwest::Method::PATCH, "/apis/apps/v1/namespaces/default/deployments/drained", Some(("application/merge-patch+json", serde_json::to_vec(&resume).expect("json")))).await;
    assert_eq!(code, 200);
    wait_until(&server, "/apis/apps/v1/namespaces/default/deployments/drained", 90, "the resumed rollout", |d| {
        d["status"]["observedGeneration"] == d["metadata"]["generation"]
            && d["status"]["updatedReplicas"] == 4
            && d["status"]["replicas"] == 4
            && d["status"]["availableReplicas"] == 4
            && d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
    })
    .await;
}

/// An agent's own credential reads the Secrets and ConfigMaps its pods use, and no others: a pod
/// on the agent's node takes its greeting from a Secret and its settings from a ConfigMap, while
/// the same credential is refused a Secret no pod of that node uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_reads_the_secrets_its_pods_use_and_no_others() {
    let (server, agent) = two_nodes(&[]).await;
    push(&server, "hello/hello.wasm", "shoal.local/samples/hello:latest");
    for (path, object) in [
        ("/api/v1/namespaces/default/secrets", json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "greeting"}, "stringData": {"text": "hello from a secret"}})),
        ("/api/v1/namespaces/default/secrets", json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "unused"}, "stringData": {"text": "not yours"}})),
        ("/api/v1/namespaces/default/configmaps", json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"MODE": "strict"}})),
        ("/api/v1/namespaces/default/pods", json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "greeter"}, "spec": {"nodeName": "node-2", "containers": [{
            "name": "hello", "image": "shoal.local/samples/hello:latest",
            "env": [{"name": "GREETING", "valueFrom": {"secretKeyRef": {"name": "greeting", "key": "text"}}}],
            "envFrom": [{"configMapRef": {"name": "settings"}}]}]}})),
    ] {
        let (code, body) = server.post(path, &object).await;
        assert_eq!(code, 201, "{body}");
    }
    wait_until(&server, "/api/v1/namespaces/default/pods/greeter", 60, "the pod on node-2 running", |pod| pod["status"]["phase"] == "Running").await;
    let (_, node) = server.get("/api/v1/nodes/node-2").await;
    let address = node["metadata"]["annotations"]["shoal.dev/data-addr"].as_str().expect("node-2 publishes its data-plane address");
    let greeting = reqwest::get(format!("http://{address}/_pods/default/greeter/")).await.expect("request").text().await.expect("body");
    assert_eq!(greeting, "hello from a secret\n", "the node read the Secret its pod uses");

    let credential = std::fs::read_to_string(agent.data_dir().join("node-token")).expect("the agent keeps its credential");
    assert!(credential.contains("::node:node-2:"), "{credential}");
    let get = |path: &str| server.http.get(format!("{}{path}", server.url)).bearer_auth(credential.trim()).send();
    assert_eq!(get("/api/v1/namespaces/default/secrets/greeting").await.expect("request").status().as_u16(), 200);
    assert_eq!(get("/api/v1/namespaces/default/configmaps/settings").await.expect("request").status().as_u16(), 200);
    let refused = get("/api/v1/namespaces/default/secrets/unused").await.expect("request");
    assert_eq!(refused.status().as_u16(), 403);
    let status: Value = refused.json().await.expect("a Status");
    assert_eq!(status["reason"], "Forbidden", "{status}");
    assert_eq!(get("/api/v1/secrets").await.expect("request").status().as_u16(), 403, "listing every Secret");
    assert_eq!(get("/api/v1/secrets?fieldSelector=type%3Dkubernetes.io%2Ftls").await.expect("request").status().as_u16(), 200, "the ingress router's TLS Secrets");
}
