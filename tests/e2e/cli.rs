//! The `shoal` CLI against a real server.

use crate::harness::{Server, repository};

#[tokio::test]
async fn apply_creates_then_is_unchanged_then_configures() {
    let server = Server::start().await;
    let manifest = repository().join("samples/hello/hello.yaml");
    let manifest = manifest.to_str().expect("utf-8 path");
    let (code, stdout, stderr) = server.cli(&["apply", "-f", manifest]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "deployment.apps/hello created\nservice/hello created\ningress.networking.k8s.io/hello created\n");
    let (code, stdout, stderr) = server.cli(&["apply", "-f", manifest]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "deployment.apps/hello unchanged\nservice/hello unchanged\ningress.networking.k8s.io/hello unchanged\n");

    let changed = std::fs::read_to_string(manifest).expect("manifest").replace("replicas: 2", "replicas: 3");
    let temp = tempfile::tempdir().expect("tempdir");
    let changed_path = temp.path().join("hello.yaml");
    std::fs::write(&changed_path, changed).expect("write");
    let (code, stdout, stderr) = server.cli(&["apply", "-f", changed_path.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("deployment.apps/hello configured\nservice/hello unchanged\n"), "{stdout}");

    let (code, stdout, _) = server.cli(&["get", "deployments", "-o", "json"]);
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    let deployment = &list["items"][0];
    assert_eq!(deployment["spec"]["replicas"], 3);
    for field in ["uid", "creationTimestamp", "resourceVersion", "generation"] {
        assert!(!deployment["metadata"][field].is_null(), "server-set {field} is shown");
    }
    assert_eq!(deployment["metadata"]["generation"], 2);

    let (code, stdout, _) = server.cli(&["get", "deploy"]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("NAME    READY   UP-TO-DATE   AVAILABLE   AGE\nhello   0/3"), "{stdout}");
    let (code, stdout, _) = server.cli(&["get", "svc", "hello", "-o", "yaml"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("targetPort: 8080"), "{stdout}");
    // The Deployment controller's events show in describe.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (code, stdout, _) = server.cli(&["describe", "deployment", "hello"]);
        assert_eq!(code, 0);
        assert!(stdout.contains("Name:        hello"), "{stdout}");
        if stdout.contains("ScalingReplicaSet") && stdout.contains("Scaled up replica set hello-") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no ScalingReplicaSet event in describe: {stdout}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn errors_read_like_kubectl_and_exit_non_zero() {
    let server = Server::start().await;
    let (code, _, stderr) = server.cli(&["get", "deployment", "missing"]);
    assert_eq!(code, 1);
    assert_eq!(stderr.trim(), "Error from server (NotFound): deployments.apps \"missing\" not found");
    let (code, _, stderr) = server.cli(&["get", "widgets"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("the server doesn't have a resource type \"widgets\""), "{stderr}");
    let (code, stdout, _) = server.cli(&["create", "namespace", "team-a"]);
    assert_eq!(code, 0);
    assert_eq!(stdout, "namespace/team-a created\n");
    let (code, _, stderr) = server.cli(&["create", "namespace", "team-a"]);
    assert_eq!(code, 1);
    assert_eq!(stderr.trim(), "Error from server (AlreadyExists): namespaces \"team-a\" already exists");
    let (code, stdout, stderr) = server.cli(&["delete", "namespace", "team-a"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "namespace \"team-a\" deleted\n");
    let temp = tempfile::tempdir().expect("tempdir");
    let bad = temp.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  bad: [unclosed\n").expect("write");
    let (code, _, stderr) = server.cli(&["apply", "-f", bad.to_str().expect("utf-8")]);
    assert_eq!(code, 1);
    assert!(stderr.contains("error parsing"), "{stderr}");
}

#[tokio::test]
async fn the_sample_job_manifest_applies_with_its_defaults() {
    let server = Server::start().await;
    let manifest = repository().join("samples/worker/job.yaml");
    let (code, stdout, stderr) = server.cli(&["apply", "-f", manifest.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "job.batch/worker created\n");
    let (code, stdout, _) = server.cli(&["get", "job", "worker", "-o", "json"]);
    assert_eq!(code, 0);
    let job: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    let uid = job["metadata"]["uid"].as_str().expect("uid");
    assert_eq!(job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"], uid);
    assert_eq!(job["spec"]["template"]["metadata"]["labels"]["job-name"], "worker");
    assert_eq!(job["spec"]["completions"], 1);
    let (_, stdout, _) = server.cli(&["apply", "-f", manifest.to_str().expect("utf-8")]);
    assert_eq!(stdout, "job.batch/worker unchanged\n", "the generated selector and labels are not a change");
}
