//! The node agent, end to end: a real `shoal server` with its local node (named `node-1`), pods
//! bound by `spec.nodeName` (the scheduler comes with the controllers), artifacts from the
//! built-in registry, requests through the node's data plane.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Server, push};


fn pod(name: &str, image: &str, restart_policy: &str, env: &[(&str, &str)]) -> Value {
    let env: Vec<Value> = env.iter().map(|(k, v)| json!({"name": k, "value": v})).collect();
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"nodeName": "node-1", "restartPolicy": restart_policy,
            "containers": [{"name": "main", "image": image, "env": env, "ports": [{"containerPort": 8080}]}]}})
}

async fn create(server: &Server, object: &Value) {
    let (code, body) = server.post("/api/v1/namespaces/default/pods", object).await;
    assert_eq!(code, 201, "{body}");
}

/// Polls the pod until `check` holds (or fails after 60 s with the last state).
async fn wait_for(server: &Server, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, pod) = server.get(&format!("/api/v1/namespaces/default/pods/{name}")).await;
        if check(&pod) {
            return pod;
        }
        assert!(Instant::now() < deadline, "pod {name} never became {what}: {}", pod["status"]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn data_plane(server: &Server) -> String {
    let (_, node) = server.get("/api/v1/nodes/node-1").await;
    let address = node["metadata"]["annotations"]["shoal.dev/data-addr"].as_str().expect("the node publishes its data-plane address");
    format!("http://{address}")
}

#[tokio::test]
async fn bare_worker_pods_run_to_completion_with_exit_codes_and_logs() {
    let server = Server::start().await;
    push(&server, "worker/worker.wasm", "shoal.local/samples/worker:latest");
    push(&server, "worker/worker-p1.wasm", "shoal.local/samples/worker-p1:latest");
    for (name, image) in [("w-component", "shoal.local/samples/worker:latest"), ("w-module", "shoal.local/samples/worker-p1:latest")] {
        create(&server, &pod(name, image, "Never", &[("STEPS", "2")])).await;
        create(&server, &pod(&format!("{name}-fails"), image, "Never", &[("EXIT_CODE", "3"), ("STEPS", "1")])).await;
    }
    for name in ["w-component", "w-module"] {
        let done = wait_for(&server, name, "Succeeded", |p| p["status"]["phase"] == "Succeeded").await;
        let container = &done["status"]["containerStatuses"][0];
        assert_eq!(container["state"]["terminated"]["exitCode"], 0);
        assert_eq!(container["state"]["terminated"]["reason"], "Completed");
        assert!(container["imageID"].as_str().unwrap_or_default().contains("@sha256:"), "{container}");
        assert_eq!(done["status"]["conditions"][0]["type"], "PodScheduled");
        let (code, logs, stderr) = server.cli(&["logs", name]);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(logs, "worker: step 1\nworker: step 2\nworker: done\n", "{name}");
        let (_, tail, _) = server.cli(&["logs", name, "--tail", "1"]);
        assert_eq!(tail, "worker: done\n");
        let (code, followed, _) = server.cli(&["logs", name, "-f"]);
        assert_eq!((code, followed.as_str()), (0, logs.as_str()), "follow ends once a finished container's lines are out");

        let failed = wait_for(&server, &format!("{name}-fails"), "Failed", |p| p["status"]["phase"] == "Failed").await;
        assert_eq!(failed["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"], 3, "{name}");
        assert_eq!(failed["status"]["containerStatuses"][0]["state"]["terminated"]["reason"], "Error");
    }
}

#[tokio::test]
async fn hello_pods_become_ready_and_answer_through_the_data_plane() {
    // Connections served on the process's shared runtime (reactors are the default, and every
    // other test here runs on them).
    let server = Server::start_with(&["--data-plane-threads", "0"]).await;
    push(&server, "hello/hello.wasm", "shoal.local/samples/hello:latest");
    create(&server, &pod("hello-a", "shoal.local/samples/hello:latest", "Always", &[])).await;
    create(&server, &pod("hello-b", "shoal.local/samples/hello:latest", "Always", &[("GREETING", "hi from b")])).await;
    for name in ["hello-a", "hello-b"] {
        let ready = wait_for(&server, name, "Ready", |p| p["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))).await;
        assert_eq!(ready["status"]["phase"], "Running");
        assert_eq!(ready["status"]["containerStatuses"][0]["ready"], true);
    }
    let base = data_plane(&server).await;
    let http = reqwest::Client::new();
    let response = http.get(format!("{base}/_pods/default/hello-a/")).send().await.expect("request");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["x-shoal-pod"], "hello-a");
    assert_eq!(response.text().await.expect("body"), "hello from shoal\n");
    let response = http.get(format!("{base}/_pods/default/hello-b:8080/any/path")).send().await.expect("request");
    assert_eq!(response.text().await.expect("body"), "hi from b\n");
    let missing = http.get(format!("{base}/_pods/default/nope/")).send().await.expect("request");
    assert_eq!(missing.status().as_u16(), 503);
    let logs = http.get(format!("{base}/_logs/default/hello-a")).send().await.expect("request");
    assert_eq!(logs.status().as_u16(), 401, "logs on the data plane need the node token");

    let (code, _) = server.request(reqwest::Method::DELETE, "/api/v1/namespaces/default/pods/hello-a", None).await;
    assert_eq!(code, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, _) = server.get("/api/v1/namespaces/default/pods/hello-a").await;
        if code == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "the node never completed the deletion");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone = http.get(format!("{base}/_pods/default/hello-a/")).send().await.expect("request");
    assert_eq!(gone.status().as_u16(), 503, "a deleted pod leaves routing");
}

#[tokio::test]
async fn hostile_guests_are_contained_while_hello_keeps_serving() {
    let server = Server::start().await;
    push(&server, "hello/hello.wasm", "shoal.local/samples/hello:latest");
    push(&server, "misbehave/misbehave.wasm", "shoal.local/samples/misbehave:latest");
    create(&server, &pod("hello", "shoal.local/samples/hello:latest", "Always", &[])).await;
    let mut hostile = pod("misbehave", "shoal.local/samples/misbehave:latest", "Always", &[]);
    hostile["metadata"]["annotations"] = json!({"shoal.dev/time-budget-seconds": "1"});
    hostile["spec"]["containers"][0]["resources"] = json!({"limits": {"memory": "32Mi"}});
    create(&server, &hostile).await;
    for name in ["hello", "misbehave"] {
        wait_for(&server, name, "Ready", |p| p["status"]["containerStatuses"][0]["ready"] == true).await;
    }
    let base = data_plane(&server).await;
    let http = reqwest::Client::new();
    let spin = {
        let (http, base) = (http.clone(), base.clone());
        tokio::spawn(async move { http.get(format!("{base}/_pods/default/misbehave/loop")).send().await.expect("request").status().as_u16() })
    };
    let recurse = {
        let (http, base) = (http.clone(), base.clone());
        tokio::spawn(async move { http.get(format!("{base}/_pods/default/misbehave/recurse")).send().await.expect("request").status().as_u16() })
    };
    for _ in 0..100 {
        let response = http.get(format!("{base}/_pods/default/hello/")).send().await.expect("request");
        assert_eq!(response.status().as_u16(), 200, "hello keeps answering every request");
    }
    assert_eq!(spin.await.expect("join"), 500, "the loop is stopped at its budget");
    assert_eq!(recurse.await.expect("join"), 500, "deep recursion traps");
    let bomb = http.get(format!("{base}/_pods/default/misbehave/alloc?mb=512")).send().await.expect("request").status().as_u16();
    assert!(bomb == 507 || bomb == 500, "a memory bomb past 32 Mi fails, got {bomb}");
    let ok = http.get(format!("{base}/_pods/default/misbehave/ok")).send().await.expect("request");
    assert_eq!(ok.text().await.expect("body"), "ok\n", "the hostile pod itself keeps serving too");
    let (_, pod) = server.get("/api/v1/namespaces/default/pods/misbehave").await;
    assert_eq!(pod["status"]["phase"], "Running");
}

#[tokio::test]
async fn an_unpullable_artifact_gets_a_waiting_reason_and_an_event() {
    let server = Server::start().await;
    create(&server, &pod("ghost", "shoal.local/samples/missing:1", "Always", &[])).await;
    let waiting = wait_for(&server, "ghost", "waiting on its image", |p| {
        let reason = p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"].as_str().unwrap_or_default();
        reason == "ErrImagePull" || reason == "ImagePullBackOff"
    })
    .await;
    assert_eq!(waiting["status"]["phase"], "Pending");
    let uid = waiting["metadata"]["uid"].as_str().expect("uid");
    // The event is written beside the status, not before it.
    crate::harness::wait_until(&server, &format!("/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Dghost%2CinvolvedObject.uid%3D{uid}"), 30, "a Failed to pull event", |events| {
        events["items"].as_array().into_iter().flatten().filter_map(|e| e["message"].as_str()).any(|m| m.contains("missing") && m.contains("Failed to pull"))
    })
    .await;
}

#[tokio::test]
async fn a_restarted_node_readopts_its_pods_without_duplicating_them() {
    let mut server = Server::start().await;
    push(&server, "hello/hello.wasm", "shoal.local/samples/hello:latest");
    push(&server, "worker/worker.wasm", "shoal.local/samples/worker:latest");
    create(&server, &pod("hello", "shoal.local/samples/hello:latest", "Always", &[])).await;
    create(&server, &pod("job", "shoal.local/samples/worker:latest", "Never", &[("STEPS", "1")])).await;
    let before = wait_for(&server, "hello", "Ready", |p| p["status"]["containerStatuses"][0]["ready"] == true).await;
    wait_for(&server, "job", "Succeeded", |p| p["status"]["phase"] == "Succeeded").await;
    server.terminate();
    // The files of a pod deleted while the node was down are removed when it comes back.
    let node_dir = server.data_dir.join("node");
    let stray = "0b5e2f7c-0000-4000-8000-00000000dead";
    let stray_pod = node_dir.join("pods").join(stray);
    let stray_logs = node_dir.join("logs").join(format!("default_gone_{stray}"));
    std::fs::create_dir_all(stray_pod.join("volumes/cache")).expect("a stray pod directory");
    std::fs::write(stray_pod.join("volumes/cache/data"), "left behind").expect("a stray file");
    std::fs::create_dir_all(&stray_logs).expect("stray logs");
    std::fs::write(stray_logs.join("app.log"), "left behind\n").expect("a stray log");
    server.restart().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Re-read the address each time: until the restarted node re-registers, the Node still
        // names the previous run's port.
        let base = data_plane(&server).await;
        if let Ok(response) = reqwest::get(format!("{base}/_pods/default/hello/")).await
            && response.status().as_u16() == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "the restarted node never served hello again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The node has re-registered (it serves hello), so logs are proxied to its new address.
    let (code, logs, stderr) = server.cli(&["logs", "job"]);
    assert_eq!((code, logs.as_str()), (0, "worker: step 1\nworker: done\n"), "a finished pod's logs outlive a node restart: {stderr}");
    let (_, list) = server.get("/api/v1/namespaces/default/pods").await;
    let items: Vec<&Value> = list["items"].as_array().expect("items").iter().filter(|p| p["metadata"]["name"] == "hello").collect();
    assert_eq!(items.len(), 1, "no duplicate pods");
    assert_eq!(items[0]["metadata"]["uid"], before["metadata"]["uid"]);
    assert!(!stray_pod.exists() && !stray_logs.exists(), "a gone pod's directory and logs are removed");
    let hello_dir = node_dir.join("pods").join(before["metadata"]["uid"].as_str().expect("uid"));
    assert!(hello_dir.exists(), "a live pod's directory stays");

    // A pod deleted by force (no grace, so the node does not complete the deletion) loses its
    // files once its worker has stopped.
    let (code, body) = server.request(reqwest::Method::DELETE, "/api/v1/namespaces/default/pods/hello?gracePeriodSeconds=0", None).await;
    assert_eq!(code, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while hello_dir.exists() {
        assert!(Instant::now() < deadline, "the force-deleted pod's directory was never removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn on_failure_pods_restart_with_crash_loop_back_off() {
    let server = Server::start().await;
    push(&server, "worker/worker.wasm", "shoal.local/samples/worker:latest");
    create(&server, &pod("flaky", "shoal.local/samples/worker:latest", "OnFailure", &[("EXIT_CODE", "3"), ("STEPS", "0")])).await;
    let backing_off = wait_for(&server, "flaky", "backing off", |p| {
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    })
    .await;
    let container = &backing_off["status"]["containerStatuses"][0];
    assert_eq!(container["restartCount"], 1);
    assert_eq!(container["lastState"]["terminated"]["exitCode"], 3);
    assert_eq!(backing_off["status"]["phase"], "Running", "OnFailure keeps the pod running while it retries");
    let restarted = wait_for(&server, "flaky", "restarted", |p| p["status"]["containerStatuses"][0]["restartCount"].as_u64() >= Some(2)).await;
    assert_ne!(restarted["status"]["phase"], "Failed");
    let (code, previous, stderr) = server.cli(&["logs", "flaky", "--previous"]);
    assert_eq!((code, previous.as_str()), (0, "worker: done\n"), "{stderr}");
}

#[tokio::test]
async fn port_forward_serves_a_pod_on_a_local_port() {
    use std::io::BufRead;
    let server = Server::start().await;
    push(&server, "hello/hello.wasm", "shoal.local/samples/hello:latest");
    create(&server, &pod("hello", "shoal.local/samples/hello:latest", "Always", &[])).await;
    wait_for(&server, "hello", "Ready", |p| p["status"]["containerStatuses"][0]["ready"] == true).await;
    let mut forward = std::process::Command::new(crate::harness::shoal_binary())
        .arg("--kubeconfig")
        .arg(server.kubeconfig())
        .args(["port-forward", "pod/hello", "0:8080"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("port-forward");
    let mut first_line = String::new();
    std::io::BufReader::new(forward.stdout.take().expect("stdout")).read_line(&mut first_line).expect("read");
    let local = first_line.split_whitespace().nth(2).expect("Forwarding from ADDR -> PORT").to_owned();
    let body = reqwest::get(format!("http://{local}/")).await.expect("request").text().await.expect("body");
    let _ = forward.kill();
    let _ = forward.wait();
    assert_eq!(body, "hello from shoal\n", "{first_line}");
}

#[tokio::test]
async fn probes_drive_readiness_and_restarts_and_exec_is_refused() {
    let server = Server::start().await;
    push(&server, "misbehave/misbehave.wasm", "shoal.local/samples/misbehave:latest");
    push(&server, "worker/worker.wasm", "shoal.local/samples/worker:latest");
    let probed = |name: &str, kind: &str, path: &str| {
        let mut object = pod(name, "shoal.local/samples/misbehave:latest", "Always", &[]);
        object["spec"]["containers"][0][format!("{kind}Probe")] = json!({"httpGet": {"path": path, "port": 8080}, "periodSeconds": 1, "failureThreshold": 1});
        object
    };
    create(&server, &probed("ready", "readiness", "/ok")).await;
    create(&server, &probed("unready", "readiness", "/nope")).await;
    create(&server, &probed("unlive", "liveness", "/nope")).await;
    let mut exec = pod("exec", "shoal.local/samples/worker:latest", "Always", &[]);
    exec["spec"]["containers"][0]["livenessProbe"] = json!({"exec": {"command": ["true"]}});
    create(&server, &exec).await;

    wait_for(&server, "ready", "Ready", |p| p["status"]["containerStatuses"][0]["ready"] == true).await;
    let unready = wait_for(&server, "unready", "running but not ready", |p| p["status"]["containerStatuses"][0]["state"]["running"].is_object()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, unready_now) = server.get("/api/v1/namespaces/default/pods/unready").await;
    assert_eq!(unready_now["status"]["containerStatuses"][0]["ready"], false, "{}", unready["status"]);
    let ready_condition = unready_now["status"]["conditions"].as_array().expect("conditions").iter().find(|c| c["type"] == "Ready").cloned().expect("Ready");
    assert_eq!(ready_condition["status"], "False");
    let restarted = wait_for(&server, "unlive", "restarted by its liveness probe", |p| p["status"]["containerStatuses"][0]["restartCount"].as_u64() >= Some(1)).await;
    assert_eq!(restarted["status"]["containerStatuses"][0]["lastState"]["terminated"]["message"], "liveness probe failed");
    let refused = wait_for(&server, "exec", "refused", |p| p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "CreateContainerConfigError").await;
    let message = refused["status"]["containerStatuses"][0]["state"]["waiting"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("exec probes are not supported for Wasm containers"), "{message}");
}

/// Reads a file inside pod `name` through echo's `/read`: (status, body).
async fn read_in_pod(http: &reqwest::Client, base: &str, name: &str, path: &str) -> (u16, String) {
    let response = http.get(format!("{base}/_pods/default/{name}/read?path={path}")).send().await.expect("request");
    (response.status().as_u16(), response.text().await.expect("body"))
}

/// Polls a file in a pod until `check` holds; returns how long that took.
async fn wait_for_file(http: &reqwest::Client, base: &str, name: &str, path: &str, what: &str, check: impl Fn(u16, &str) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        let (status, body) = read_in_pod(http, base, name, path).await;
        if check(status, &body) {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{path} in pod {name} never showed {what}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// subPath mounts: single ConfigMap keys as files in a directory of their own, fixed at start
/// while a whole-volume mount of the same ConfigMap follows it; a `subPathExpr` directory made in
/// an emptyDir from the pod's name; the API refuses `..`; the pod's directory goes with the pod.
#[tokio::test]
async fn sub_path_mounts_give_a_container_one_key_or_directory_of_a_volume() {
    let server = Server::start().await;
    push(&server, "echo/echo.wasm", "shoal.local/samples/echo:latest");
    let (code, body) = server.post("/api/v1/namespaces/default/configmaps", &json!({"metadata": {"name": "app"}, "data": {"app.conf": "one", "other.conf": "o", "left-out": "x"}})).await;
    assert_eq!(code, 201, "{body}");
    let mut sub = pod("sub", "shoal.local/samples/echo:latest", "Always", &[]);
    sub["spec"]["volumes"] = json!([{"name": "config", "configMap": {"name": "app"}}, {"name": "scratch", "emptyDir": {}}]);
    sub["spec"]["containers"][0]["env"] = json!([{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]);
    sub["spec"]["containers"][0]["volumeMounts"] = json!([
        {"name": "config", "mountPath": "/etc/app/app.conf", "subPath": "app.conf"},
        {"name": "config", "mountPath": "/etc/app/other.conf", "subPath": "other.conf"},
        {"name": "config", "mountPath": "/config"},
        {"name": "scratch", "mountPath": "/data", "subPathExpr": "$(POD_NAME)/cache"},
    ]);
    let mut escapes = sub.clone();
    escapes["metadata"]["name"] = json!("escapes");
    escapes["spec"]["containers"][0]["volumeMounts"][0]["subPath"] = json!("../../etc/passwd");
    let (code, refused) = server.post("/api/v1/namespaces/default/pods", &escapes).await;
    assert_eq!(code, 422, "{refused}");
    assert!(refused["message"].as_str().is_some_and(|m| m.contains(r#"spec.containers[0].volumeMounts[0].subPath: Invalid value: "../../etc/passwd": must not contain '..'"#)), "{refused}");
    create(&server, &sub).await;

    let ready = |p: &Value| p["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
    let running = wait_for(&server, "sub", "Ready", ready).await;
    let base = data_plane(&server).await;
    let http = reqwest::Client::new();
    assert_eq!(read_in_pod(&http, &base, "sub", "/etc/app/app.conf").await, (200, "one".to_owned()));
    assert_eq!(read_in_pod(&http, &base, "sub", "/etc/app/other.conf").await, (200, "o".to_owned()));
    assert_eq!(read_in_pod(&http, &base, "sub", "/etc/app/left-out").await.0, 404, "only the keys mounted are there");
    let pod_dir = server.data_dir.join("node/pods").join(running["metadata"]["uid"].as_str().expect("uid"));
    assert!(pod_dir.join("volumes/scratch/sub/cache").is_dir(), "the subPathExpr directory was made in the emptyDir: {:?}", listing(&pod_dir));

    // kube does not update subPath mounts: the whole-volume mount changes, the file stays.
    let patch = serde_json::to_vec(&json!({"data": {"app.conf": "two"}})).expect("json");
    let (code, body) = server.request(reqwest::Method::PATCH, "/api/v1/namespaces/default/configmaps/app", Some(("application/merge-patch+json", patch))).await;
    assert_eq!(code, 200, "{body}");
    wait_for_file(&http, &base, "sub", "/config/app.conf", "the new value", |status, body| status == 200 && body == "two").await;
    assert_eq!(read_in_pod(&http, &base, "sub", "/etc/app/app.conf").await, (200, "one".to_owned()));

    let (code, body) = server.request(reqwest::Method::DELETE, "/api/v1/namespaces/default/pods/sub", None).await;
    assert_eq!(code, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.get("/api/v1/namespaces/default/pods/sub").await.0 != 404 {
        assert!(Instant::now() < deadline, "the pod was never deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!pod_dir.exists(), "the pod's directory (its emptyDir) goes with it");
}

#[tokio::test]
async fn config_map_secret_and_downward_api_volumes_follow_their_sources_while_the_pod_runs() {
    let server = Server::start().await;
    push(&server, "echo/echo.wasm", "shoal.local/samples/echo:latest");
    let (code, body) = server.post("/api/v1/namespaces/default/configmaps", &json!({"metadata": {"name": "settings"}, "data": {"app.conf": "one", "extra": "x"}})).await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = server.post("/api/v1/namespaces/default/secrets", &json!({"metadata": {"name": "db"}, "data": {"password": "aHVudGVyMg=="}})).await;
    assert_eq!(code, 201, "{body}");
    let mut files = pod("files", "shoal.local/samples/echo:latest", "Always", &[]);
    files["metadata"]["labels"] = json!({"app": "files"});
    files["spec"]["volumes"] = json!([
        {"name": "config", "configMap": {"name": "settings"}},
        {"name": "creds", "secret": {"secretName": "db", "defaultMode": 0o400, "items": [{"key": "password", "path": "nested/pw"}]}},
        {"name": "meta", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
    ]);
    files["spec"]["containers"][0]["volumeMounts"] = json!([
        {"name": "config", "mountPath": "/config"}, {"name": "creds", "mountPath": "/creds"}, {"name": "meta", "mountPath": "/meta"},
    ]);
    create(&server, &files).await;
    // A pod whose ConfigMap does not exist yet waits with FailedMount events, then starts.
    let mut waits = pod("waits", "shoal.local/samples/echo:latest", "Always", &[]);
    waits["spec"]["volumes"] = json!([{"name": "late", "configMap": {"name": "later"}}]);
    waits["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "late", "mountPath": "/late"}]);
    create(&server, &waits).await;

    let ready = |p: &Value| p["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
    wait_for(&server, "files", "Ready", ready).await;
    let base = data_plane(&server).await;
    let http = reqwest::Client::new();
    assert_eq!(read_in_pod(&http, &base, "files", "/config/app.conf").await, (200, "one".to_owned()));
    assert_eq!(read_in_pod(&http, &base, "files", "/config/extra").await, (200, "x".to_owned()));
    assert_eq!(read_in_pod(&http, &base, "files", "/creds/nested/pw").await, (200, "hunter2".to_owned()));
    assert_eq!(read_in_pod(&http, &base, "files", "/meta/labels").await, (200, "app=\"files\"".to_owned()));
    // The kubelet's layout: `..data` points at the current content.
    let (status, _) = read_in_pod(&http, &base, "files", "/config/..data/app.conf").await;
    assert_eq!(status, 200, "the files are reached through ..data");

    // A changed value and a removed key reach the running pod; the changed Secret too.
    let merge = |patch: Value| Some(("application/merge-patch+json", serde_json::to_vec(&patch).expect("json")));
    let (code, body) = server.request(reqwest::Method::PATCH, "/api/v1/namespaces/default/configmaps/settings", merge(json!({"data": {"app.conf": "two", "extra": null}}))).await;
    assert_eq!(code, 200, "{body}");
    let took = wait_for_file(&http, &base, "files", "/config/app.conf", "the new value", |status, body| status == 200 && body == "two").await;
    eprintln!("a ConfigMap change reached the pod's volume in {took:?}");
    assert_eq!(read_in_pod(&http, &base, "files", "/config/extra").await.0, 404, "a removed key disappears");
    let (code, body) = server.request(reqwest::Method::PATCH, "/api/v1/namespaces/default/secrets/db", merge(json!({"stringData": {"password": "swordfish"}}))).await;
    assert_eq!(code, 200, "{body}");
    wait_for_file(&http, &base, "files", "/creds/nested/pw", "the new password", |status, body| status == 200 && body == "swordfish").await;
    // The pod's own labels (downward API) follow too.
    let (code, body) = server.request(reqwest::Method::PATCH, "/api/v1/namespaces/default/pods/files", merge(json!({"metadata": {"labels": {"tier": "web"}}}))).await;
    assert_eq!(code, 200, "{body}");
    wait_for_file(&http, &base, "files", "/meta/labels", "the new label", |status, body| status == 200 && body == "app=\"files\"\ntier=\"web\"").await;
    let (_, still) = server.get("/api/v1/namespaces/default/pods/files").await;
    assert_eq!(still["status"]["containerStatuses"][0]["restartCount"], 0, "volumes change under a running container");

    let (_, waiting) = server.get("/api/v1/namespaces/default/pods/waits").await;
    assert_eq!(waiting["status"]["containerStatuses"][0]["state"]["waiting"]["reason"], "ContainerCreating", "{}", waiting["status"]);
    let uid = waiting["metadata"]["uid"].as_str().expect("uid").to_owned();
    crate::harness::wait_until(&server, &format!("/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Dwaits%2CinvolvedObject.uid%3D{uid}"), 30, "a FailedMount event", |events| {
        events["items"].as_array().into_iter().flatten().any(|e| e["reason"] == "FailedMount" && e["message"].as_str().is_some_and(|m| m.contains("MountVolume.SetUp failed for volume \"late\"") && m.contains("configmap \"later\" not found")))
    })
    .await;
    let (code, body) = server.post("/api/v1/namespaces/default/configmaps", &json!({"metadata": {"name": "later"}, "data": {"k": "v"}})).await;
    assert_eq!(code, 201, "{body}");
    wait_for(&server, "waits", "Ready once its ConfigMap exists", ready).await;
    assert_eq!(read_in_pod(&http, &base, "waits", "/late/k").await, (200, "v".to_owned()));
}

/// Every path under `dir`, for a failure's message.
fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        out.push(entry.path().display().to_string());
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(listing(&entry.path()));
        }
    }
    out
}
