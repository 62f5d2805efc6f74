//! The real kubectl against a real `shoal server`: the concrete binaries the Google Cloud SDK
//! installs beside its `kubectl` dispatcher (`kubectl.1.29`, `kubectl.1.32`, …), each run with
//! its own empty `HOME` (so no discovery cache carries over) and a time limit.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::harness::Server;

/// `kubectl.VERSION` from the directory the `kubectl` on `PATH` really lives in. Missing is a
/// failure, not a skip: `.ci/run` checks it is installed.
fn kubectl_binary(version: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dispatcher = std::env::split_paths(&path).map(|dir| dir.join("kubectl")).find(|candidate| candidate.is_file()).expect("kubectl is on PATH (the Google Cloud SDK's)");
    let real = std::fs::canonicalize(&dispatcher).expect("resolve kubectl");
    let binary = real.parent().expect("a directory").join(format!("kubectl.{version}"));
    assert!(binary.is_file(), "{} is missing: the Google Cloud SDK's kubectl component installs it", binary.display());
    binary
}

struct Kubectl {
    binary: PathBuf,
    home: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn new(server: &Server, version: &str) -> Self {
        Self { binary: kubectl_binary(version), home: tempfile::tempdir().expect("tempdir"), kubeconfig: server.kubeconfig() }
    }

    /// Starts kubectl with `args` under a `seconds` limit (coreutils' `timeout`), stdin piped
    /// when `stdin` is true, stdout and stderr piped.
    fn start(&self, seconds: u32, args: &[&str], stdin: bool) -> std::process::Child {
        Command::new("timeout")
            .arg(seconds.to_string())
            .arg(&self.binary)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env("HOME", self.home.path())
            .env_remove("KUBECONFIG")
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kubectl")
    }

    /// Runs kubectl with `stdin` (if any) under a 30-second limit; (exit code, stdout, stderr).
    fn run(&self, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
        let mut child = self.start(30, args, stdin.is_some());
        if let Some(input) = stdin {
            use std::io::Write;
            child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
        }
        let output = child.wait_with_output().expect("kubectl output");
        (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
    }

    /// Starts kubectl in the background under a `seconds` limit, with its output piped.
    fn spawn(&self, seconds: u32, args: &[&str]) -> std::process::Child {
        self.start(seconds, args, false)
    }

    /// Runs kubectl and expects success; returns stdout.
    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let (code, stdout, stderr) = self.run(args, stdin);
        assert_eq!(code, 0, "kubectl {args:?} failed: {stdout}{stderr}");
        stdout
    }
}

fn manifest(replicas: u32, env: &[(&str, &str)]) -> String {
    let env: Vec<String> = env.iter().map(|(name, value)| format!("        - {{name: {name}, value: \"{value}\"}}")).collect();
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  labels: {{app: web}}\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n      - name: app\n        image: shoal.local/samples/hello:latest\n        ports: [{{containerPort: 8080}}]\n        env:\n{}\n      - name: sidecar\n        image: shoal.local/samples/echo:latest\n",
        env.join("\n")
    )
}

fn containers(deployment: &Value) -> &Vec<Value> {
    deployment["spec"]["template"]["spec"]["containers"].as_array().expect("containers")
}

fn env_names(container: &Value) -> Vec<&str> {
    container["env"].as_array().into_iter().flatten().filter_map(|e| e["name"].as_str()).collect()
}

/// `kubectl apply` (created, configured through a strategic merge patch, unchanged), `set
/// image`, `rollout restart` and `kubectl patch`'s default strategic type: lists merge by their
/// keys, so a change to one container or variable leaves the others as they were.
/// `validate`: kubectl's default validation (which reads `/openapi/v3` first), or
/// `--validate=false`.
async fn strategic_merge_patches_from(version: &str, validate: bool) {
    let server = Server::start_with(&["--disable-controllers"]).await;
    let kubectl = Kubectl::new(&server, version);
    let path = "/apis/apps/v1/namespaces/default/deployments/web";
    let apply: &[&str] = if validate { &["apply", "-f", "-"] } else { &["apply", "--validate=false", "-f", "-"] };

    let created = kubectl.ok(apply, Some(&manifest(1, &[("A", "1")])));
    assert!(created.contains("deployment.apps/web created"), "{created}");

    let set = kubectl.ok(&["set", "image", "deployment/web", "app=shoal.local/samples/hello:v2"], None);
    assert!(set.contains("image updated"), "{set}");
    let (_, live) = server.get(path).await;
    assert_eq!(live["metadata"]["generation"], 2, "a template change bumps the generation: {live}");
    assert_eq!(containers(&live)[0]["image"], "shoal.local/samples/hello:v2");
    assert_eq!(containers(&live)[1]["image"], "shoal.local/samples/echo:latest", "the other container is untouched");
    assert_eq!(env_names(&containers(&live)[0]), ["A"]);

    let configured = kubectl.ok(apply, Some(&manifest(3, &[("A", "1"), ("B", "2")])));
    assert!(configured.contains("deployment.apps/web configured"), "{configured}");
    let (_, live) = server.get(path).await;
    assert_eq!(live["spec"]["replicas"], 3);
    let names: Vec<&str> = containers(&live).iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["app", "sidecar"], "containers merged by name, in the manifest's order: {live}");
    assert_eq!(env_names(&containers(&live)[0]), ["A", "B"]);
    assert_eq!(containers(&live)[0]["ports"][0]["containerPort"], 8080);
    assert!(!live.to_string().contains("$setElementOrder"), "directives are not stored: {live}");

    let unchanged = kubectl.ok(apply, Some(&manifest(3, &[("A", "1"), ("B", "2")])));
    assert!(unchanged.contains("deployment.apps/web unchanged"), "{unchanged}");

    // A variable added by a strategic patch joins the list; `null` removes one.
    kubectl.ok(&["patch", "deployment", "web", "-p", r#"{"spec":{"template":{"spec":{"containers":[{"name":"app","env":[{"name":"C","value":"3"}]}]}}}}"#], None);
    kubectl.ok(&["patch", "deployment", "web", "-p", r#"{"spec":{"template":{"spec":{"containers":[{"name":"app","env":[{"name":"A","$patch":"delete"}]}]}}}}"#], None);
    let (_, live) = server.get(path).await;
    assert_eq!(env_names(&containers(&live)[0]), ["B", "C"], "{live}");
    assert_eq!(containers(&live).len(), 2);

    kubectl.ok(&["rollout", "restart", "deployment/web"], None);
    let (_, live) = server.get(path).await;
    assert!(live["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"].is_string(), "{live}");
    assert_eq!(live["spec"]["template"]["metadata"]["labels"]["app"], "web");

    // A malformed strategic patch is refused with the reason, and nothing changes.
    let (code, _, stderr) = kubectl.run(&["patch", "deployment", "web", "-p", r#"{"spec":{"template":{"spec":{"containers":[{"image":"x"}]}}}}"#], None);
    assert_ne!(code, 0);
    assert!(stderr.contains("merge key"), "{stderr}");
    let (_, after) = server.get(path).await;
    assert_eq!(after["metadata"]["resourceVersion"], live["metadata"]["resourceVersion"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_32_applies_with_default_validation_and_patches_with_strategic_merge() {
    strategic_merge_patches_from("1.32", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_29_applies_without_validation_and_patches_with_strategic_merge() {
    strategic_merge_patches_from("1.29", false).await;
}

/// `/openapi/v3` lets default validation hand checking to the server, and `kubectl explain`
/// read Kubernetes' own field documentation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_validates_through_the_server_and_explains_from_openapi_v3() {
    let server = Server::start_with(&["--disable-controllers"]).await;
    for version in ["1.32", "1.29"] {
        let kubectl = Kubectl::new(&server, version);
        let name = format!("cm-{}", version.replace('.', "-"));
        let created = kubectl.ok(&["create", "-f", "-"], Some(&format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata: {{a: b}}\n")));
        assert!(created.contains(&format!("configmap/{name} created")), "{created}");

        // An unknown field is refused by the server under fieldValidation=Strict.
        let (code, stdout, stderr) = kubectl.run(&["apply", "-f", "-"], Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: typo}\ndata: {a: b}\ndatta: {c: d}\n"));
        assert_ne!(code, 0, "{stdout}");
        assert!(stderr.contains("unknown field") && stderr.contains("datta"), "kubectl {version}: {stderr}");
        let (missing, _) = server.get("/api/v1/namespaces/default/configmaps/typo").await;
        assert_eq!(missing, 404, "nothing was created");

        let explained = kubectl.ok(&["explain", "deployment.spec"], None);
        assert!(explained.contains("KIND:") && explained.contains("Deployment"), "kubectl {version}: {explained}");
        assert!(explained.contains("replicas") && explained.contains("desired behavior of the Deployment"), "kubectl {version}: {explained}");
        let explained = kubectl.ok(&["explain", "pods.spec.containers.image"], None);
        assert!(explained.contains("Container image name"), "kubectl {version}: {explained}");
    }
}

/// Aggregated discovery: two requests (`/api`, `/apis`) tell kubectl every kind, negotiated as
/// v2 for kubectl ≥ 1.31 and v2beta1 for older ones; plain JSON still gets legacy discovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_discovers_every_kind_in_two_requests() {
    let server = Server::start_with(&["--disable-controllers"]).await;
    server.post("/api/v1/namespaces/default/configmaps", &crate::harness::config_map("found", "x")).await;
    for version in ["1.33", "1.32", "1.29", "1.27"] {
        let kubectl = Kubectl::new(&server, version);
        let (code, stdout, stderr) = kubectl.run(&["api-resources", "-v=6"], None);
        assert_eq!(code, 0, "kubectl {version}: {stderr}");
        assert!(!stderr.contains("/apis/apps/v1?"), "kubectl {version} fell back to legacy discovery:\n{stderr}");
        let row = |name: &str| stdout.lines().find(|l| l.split_whitespace().next() == Some(name)).map(|l| l.split_whitespace().collect::<Vec<_>>()).unwrap_or_default();
        assert_eq!(row("deployments"), ["deployments", "deploy", "apps/v1", "true", "Deployment"], "kubectl {version}:\n{stdout}");
        assert_eq!(row("pods"), ["pods", "po", "v1", "true", "Pod"]);
        assert_eq!(row("nodes"), ["nodes", "no", "v1", "false", "Node"]);
        assert_eq!(row("horizontalpodautoscalers"), ["horizontalpodautoscalers", "hpa", "autoscaling/v2", "true", "HorizontalPodAutoscaler"]);
        let listed = kubectl.ok(&["get", "cm"], None);
        assert!(listed.contains("found"), "kubectl {version}: {listed}");
        kubectl.ok(&["get", "all"], None);
    }

    let discovery = |accept: &'static str, path: &'static str| {
        let request = server.http.get(format!("{}{path}", server.url)).bearer_auth(&server.token).header("Accept", accept);
        async move {
            let response = request.send().await.expect("discovery");
            let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            (content_type, response.json::<Value>().await.expect("JSON"))
        }
    };
    let (content_type, body) = discovery("application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json", "/api").await;
    assert_eq!(content_type, "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList");
    assert_eq!(body["apiVersion"], "apidiscovery.k8s.io/v2beta1");
    assert_eq!(body["items"][0]["metadata"]["name"], "");
    let (content_type, body) = discovery("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json", "/apis").await;
    assert_eq!(content_type, "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList");
    let apps = body["items"].as_array().expect("items").iter().find(|g| g["metadata"]["name"] == "apps").expect("apps").clone();
    let deployments = apps["versions"][0]["resources"].as_array().expect("resources").iter().find(|r| r["resource"] == "deployments").expect("deployments").clone();
    assert_eq!(deployments["scope"], "Namespaced");
    assert!(deployments["subresources"].as_array().expect("subresources").iter().any(|s| s["subresource"] == "scale" && s["responseKind"]["kind"] == "Scale"));
    let (content_type, body) = discovery("application/json", "/api").await;
    assert_eq!(content_type, "application/json");
    assert_eq!(body["kind"], "APIVersions");
}

/// `kubectl apply --server-side`: create by apply, field ownership in `managedFields`, a
/// conflict with another manager's change (409 with the field), `--force-conflicts`, and
/// fields another manager applied surviving this one's apply.
async fn server_side_apply_from(version: &str) {
    let server = Server::start_with(&["--disable-controllers"]).await;
    let kubectl = Kubectl::new(&server, version);
    let path = "/apis/apps/v1/namespaces/default/deployments/web";
    let applied = kubectl.ok(&["apply", "--server-side", "-f", "-"], Some(&manifest(2, &[("A", "1")])));
    assert!(applied.contains("deployment.apps/web serverside-applied"), "{applied}");
    let (_, live) = server.get(path).await;
    let managers: Vec<(&str, &str)> = live["metadata"]["managedFields"].as_array().expect("managedFields").iter().map(|m| (m["manager"].as_str().unwrap_or_default(), m["operation"].as_str().unwrap_or_default())).collect();
    assert_eq!(managers, [("kubectl", "Apply")], "{live}");
    assert!(live["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"app\"}"]["f:image"].is_object(), "{live}");

    // Another manager changes replicas; applying a different count now conflicts.
    kubectl.ok(&["patch", "deployment", "web", "--type=merge", "-p", r#"{"spec":{"replicas":5}}"#], None);
    let (code, _, stderr) = kubectl.run(&["apply", "--server-side", "-f", "-"], Some(&manifest(3, &[("A", "1")])));
    assert_ne!(code, 0);
    assert!(stderr.contains("conflict with \"kubectl-patch\"") && stderr.contains(".spec.replicas"), "{stderr}");
    let (_, unchanged) = server.get(path).await;
    assert_eq!(unchanged["spec"]["replicas"], 5, "a refused apply changes nothing");
    kubectl.ok(&["apply", "--server-side", "--force-conflicts", "-f", "-"], Some(&manifest(3, &[("A", "1")])));
    let (_, forced) = server.get(path).await;
    assert_eq!(forced["spec"]["replicas"], 3);

    // A second applier's label survives the first applier's next apply, which drops env A.
    let labels = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  labels: {team: blue}\n";
    kubectl.ok(&["apply", "--server-side", "--field-manager=team", "-f", "-"], Some(labels));
    kubectl.ok(&["apply", "--server-side", "-f", "-"], Some(&manifest(3, &[("B", "2")])));
    let (_, live) = server.get(path).await;
    assert_eq!(live["metadata"]["labels"], serde_json::json!({"app": "web", "team": "blue"}), "{live}");
    assert_eq!(env_names(&containers(&live)[0]), ["B"], "the env var kubectl stopped applying is removed: {live}");

    // An object made by client-side apply moves to server-side apply: kubectl follows up with
    // an apply of the last-applied annotation as `kubectl-last-applied`.
    let other = manifest(1, &[("A", "1")]).replace("name: web\n", "name: moved\n");
    kubectl.ok(&["apply", "-f", "-"], Some(&other));
    let moved = kubectl.ok(&["apply", "--server-side", "-f", "-"], Some(&other.replace("replicas: 1", "replicas: 2")));
    assert!(moved.contains("deployment.apps/moved serverside-applied"), "{moved}");
    let (_, live) = server.get("/apis/apps/v1/namespaces/default/deployments/moved").await;
    assert_eq!(live["spec"]["replicas"], 2);
    let managers: Vec<&str> = live["metadata"]["managedFields"].as_array().expect("managedFields").iter().filter_map(|m| m["manager"].as_str()).collect();
    assert!(managers.contains(&"kubectl") && managers.contains(&"kubectl-last-applied"), "{managers:?}");

    // Shoal's own CLI writes as the manager `shoal` (its User-Agent): its change then conflicts.
    let (code, _, stderr) = server.cli(&["set", "image", "deployment/moved", "app=shoal.local/samples/hello:v9"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = kubectl.run(&["apply", "--server-side", "-f", "-"], Some(&other.replace("replicas: 1", "replicas: 2")));
    assert_ne!(code, 0);
    assert!(stderr.contains("conflict with \"shoal\"") && stderr.contains(".image"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_32_server_side_apply_tracks_owners_and_conflicts() {
    server_side_apply_from("1.32").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_29_server_side_apply_tracks_owners_and_conflicts() {
    server_side_apply_from("1.29").await;
}

// The rest of the checklist of `shared/reference/kubectl-wire.md` (A.10), one test each.

/// `kubectl version`: the server's Kubernetes-like version, and no skew warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_version_shows_the_server_without_a_skew_warning() {
    let server = Server::start_with(&["--disable-controllers"]).await;
    for version in ["1.32", "1.33"] {
        let (code, stdout, stderr) = Kubectl::new(&server, version).run(&["version"], None);
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.contains("Server Version: v1.33.0+shoal."), "{stdout}");
        assert!(!stderr.contains("WARNING"), "kubectl {version}: {stderr}");
    }
}

fn header_of(table: &str) -> Vec<&str> {
    table.lines().next().unwrap_or_default().split_whitespace().collect()
}

/// `kubectl get` prints the server's Tables: kubectl's columns, wide ones only with `-o wide`,
/// a NAMESPACE column with `-A`, and `get all`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_prints_server_side_tables() {
    let server = Server::start_with(&["--disable-controllers"]).await;
    let kubectl = Kubectl::new(&server, "1.32");
    kubectl.ok(&["apply", "-f", "-"], Some(&manifest(2, &[("A", "1")])));
    server.post("/api/v1/namespaces/kube-system/configmaps", &crate::harness::config_map("elsewhere", "x")).await;

    let plain = kubectl.ok(&["get", "deploy"], None);
    assert_eq!(header_of(&plain), ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"], "{plain}");
    assert!(plain.lines().nth(1).is_some_and(|row| row.starts_with("web ") && row.contains("0/2")), "{plain}");
    let wide = kubectl.ok(&["get", "deployments.apps", "-o", "wide"], None);
    assert_eq!(header_of(&wide), ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "CONTAINERS", "IMAGES", "SELECTOR"], "{wide}");
    assert!(wide.contains("app,sidecar") && wide.contains("app=web"), "{wide}");
    let (code, stdout, stderr) = kubectl.run(&["get", "po"], None);
    assert_eq!((code, stdout.as_str()), (0, ""), "{stderr}");
    assert!(stderr.contains("No resources found in default namespace."), "{stderr}");
    let all_namespaces = kubectl.ok(&["get", "cm", "-A", "--show-labels"], None);
    assert_eq!(header_of(&all_namespaces)[..2], ["NAMESPACE", "NAME"], "{all_namespaces}");
    assert!(all_namespaces.lines().any(|row| row.starts_with("kube-system") && row.contains("elsewhere")), "{all_namespaces}");
    let all = kubectl.ok(&["get", "all"], None);
    assert!(all.contains("deployment.apps/web"), "{all}");

    // `--sort-by` a field outside metadata: kubectl asks for whole objects in the rows
    // (`includeObject=Object`), as `kubectl get events --sort-by=.lastTimestamp` does.
    server.post("/api/v1/namespaces/default/configmaps", &crate::harness::config_map("a-second", "2")).await;
    server.post("/api/v1/namespaces/default/configmaps", &crate::harness::config_map("b-first", "1")).await;
    let sorted = kubectl.ok(&["get", "cm", "--sort-by=.data.value"], None);
    let names: Vec<&str> = sorted.lines().skip(1).filter_map(|row| row.split_whitespace().next()).filter(|name| name.contains('-')).collect();
    assert_eq!(names, ["b-first", "a-second"], "{sorted}");

    // Every cluster has the `kubernetes` Service, at the first address of the range.
    let services = kubectl.ok(&["get", "svc"], None);
    assert_eq!(header_of(&services), ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"], "{services}");
    let row: Vec<&str> = services.lines().nth(1).unwrap_or_default().split_whitespace().collect();
    assert_eq!(row[..5], ["kubernetes", "ClusterIP", "10.43.0.1", "<none>", "443/TCP"], "{services}");
    let api_port = server.url.rsplit(':').next().expect("a port");
    let endpoints = kubectl.ok(&["get", "endpoints", "kubernetes"], None);
    assert!(endpoints.contains(&format!("127.0.0.1:{api_port}")), "{endpoints}");
}

/// `kubectl create -f` twice: created, then AlreadyExists in kubectl's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_twice_reports_already_exists() {
    let server = Server::start_with(&["--disable-controllers"]).await;
    let kubectl = Kubectl::new(&server, "1.32");
    let config_map = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: twice}\ndata: {a: b}\n";
    assert!(kubectl.ok(&["create", "-f", "-"], Some(config_map)).contains("configmap/twice created"));
    let (code, _, stderr) = kubectl.run(&["create", "-f", "-"], Some(config_map));
    assert_ne!(code, 0);
    assert_eq!(stderr.trim(), "Error from server (AlreadyExists): error when creating \"STDIN\": configmaps \"twice\" already exists");
}

/// Imperative `kubectl create namespace|configmap|secret|service|deployment|cronjob|job|ingress`
/// sends protobuf from 1.32 on: decoded like JSON (kinds without a protobuf table are refused
/// with 415 naming the workaround, see the unit tests of `shoal_api::protobuf`). kubectl 1.29
/// sends JSON for the same commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_sends_protobuf_and_it_is_decoded() {
    let server = Server::start_with(&["--disable-controllers"]).await;
    for version in ["1.32", "1.33"] {
        let kubectl = Kubectl::new(&server, version);
        let team = format!("team-{}", version.replace('.', "-"));
        assert!(kubectl.ok(&["create", "namespace", &team], None).contains(&format!("namespace/{team} created")));
        let created = kubectl.ok(&["create", "configmap", "settings", "-n", &team, "--from-literal=a=b", "--from-literal=empty="], None);
        assert!(created.contains("configmap/settings created"), "{created}");
        let created = kubectl.ok(&["create", "secret", "generic", "password", "-n", &team, "--from-literal=p=s3cret"], None);
        assert!(created.contains("secret/password created"), "{created}");
        let created = kubectl.ok(&["create", "service", "nodeport", "web", "-n", &team, "--tcp=80:8080"], None);
        assert!(created.contains("service/web created"), "{created}");

        let (_, namespace) = server.get(&format!("/api/v1/namespaces/{team}")).await;
        assert_eq!(namespace["status"]["phase"], "Active", "{namespace}");
        let (_, config_map) = server.get(&format!("/api/v1/namespaces/{team}/configmaps/settings")).await;
        assert_eq!(config_map["data"], serde_json::json!({"a": "b", "empty": ""}), "{config_map}");
        let (_, secret) = server.get(&format!("/api/v1/namespaces/{team}/secrets/password")).await;
        assert_eq!(secret["data"]["p"], "czNjcmV0", "base64 of s3cret: {secret}");
        assert_eq!(secret["type"], "Opaque", "{secret}");
        let (_, service) = server.get(&format!("/api/v1/namespaces/{team}/services/web")).await;
        assert_eq!(service["spec"]["type"], "NodePort", "{service}");
        assert_eq!(service["spec"]["selector"]["app"], "web", "{service}");
        let port = &service["spec"]["ports"][0];
        assert_eq!((&port["port"], &port["targetPort"], &port["protocol"]), (&serde_json::json!(80), &serde_json::json!(8080), &serde_json::json!("TCP")), "{service}");
        let node_port = port["nodePort"].as_i64().unwrap_or_default();
        assert!((30000..=32767).contains(&node_port), "a node port was allocated: {service}");

        let created = kubectl.ok(&["create", "deployment", "web", "-n", &team, "--image=shoal.local/web:1", "--replicas=0", "--port=8080"], None);
        assert!(created.contains("deployment.apps/web created"), "{created}");
        let (_, deployment) = server.get(&format!("/apis/apps/v1/namespaces/{team}/deployments/web")).await;
        assert_eq!(deployment["spec"]["replicas"], 0, "an explicit zero is kept: {deployment}");
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        assert_eq!((&container["image"], &container["ports"][0]["containerPort"]), (&serde_json::json!("shoal.local/web:1"), &serde_json::json!(8080)), "{deployment}");
        kubectl.ok(&["create", "cronjob", "nightly", "-n", &team, "--image=shoal.local/job:1", "--schedule=0 3 * * *", "--", "run", "--all"], None);
        let created = kubectl.ok(&["create", "job", "now", "-n", &team, "--from=cronjob/nightly"], None);
        assert!(created.contains("job.batch/now created"), "{created}");
        let (_, job) = server.get(&format!("/apis/batch/v1/namespaces/{team}/jobs/now")).await;
        assert_eq!(job["spec"]["template"]["spec"]["containers"][0]["command"], serde_json::json!(["run", "--all"]), "{job}");
        assert_eq!(job["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"], "manual", "{job}");
        let created = kubectl.ok(&["create", "ingress", "site", "-n", &team, "--rule=shop.example/api*=web:http"], None);
        assert!(created.contains("ingress.networking.k8s.io/site created"), "{created}");
        let (_, ingress) = server.get(&format!("/apis/networking.k8s.io/v1/namespaces/{team}/ingresses/site")).await;
        let path = &ingress["spec"]["rules"][0]["http"]["paths"][0];
        assert_eq!(ingress["spec"]["rules"][0]["host"], "shop.example", "{ingress}");
        assert_eq!((&path["path"], &path["pathType"]), (&serde_json::json!("/api"), &serde_json::json!("Prefix")), "{ingress}");
        assert_eq!(path["backend"]["service"], serde_json::json!({"name": "web", "port": {"name": "http"}}), "a port by name has no number: {ingress}");
    }
    let created = Kubectl::new(&server, "1.29").ok(&["create", "namespace", "team-b"], None);
    assert!(created.contains("namespace/team-b created"), "{created}");
}

/// `kubectl auth whoami` and `kubectl auth can-i [--list]` answer for the admin kubeconfig and
/// for one holding the node token, and the node token is refused what node agents never do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_auth_answers_for_each_token_and_the_node_token_is_limited() {
    let server = Server::start_with(&["--disable-controllers"]).await;
    let node_token = std::fs::read_to_string(server.data_dir.join("node-token")).expect("node token").trim().to_owned();
    let admin_config = std::fs::read_to_string(server.kubeconfig()).expect("kubeconfig");
    let admin_line = admin_config.lines().find(|line| line.trim_start().starts_with("token:")).expect("a token line").to_owned();
    let node_config = admin_config.replace(&admin_line, &format!("    token: {node_token}"));
    let node_kubeconfig = server.data_dir.join("node.kubeconfig");
    std::fs::write(&node_kubeconfig, node_config).expect("write the node kubeconfig");
    // 1.29 sends JSON; 1.33 sends protobuf bodies.
    for version in ["1.29", "1.33"] {
        let admin = Kubectl::new(&server, version);
        let node = Kubectl { kubeconfig: node_kubeconfig.clone(), ..Kubectl::new(&server, version) };

        let whoami = admin.ok(&["auth", "whoami"], None);
        assert!(whoami.contains("shoal-admin") && whoami.contains("system:masters"), "kubectl {version}: {whoami}");
        let whoami = node.ok(&["auth", "whoami", "-o", "json"], None);
        let whoami: Value = serde_json::from_str(&whoami).expect("json");
        assert_eq!(whoami["status"]["userInfo"]["username"], "shoal-node", "kubectl {version}: {whoami}");
        assert_eq!(whoami["status"]["userInfo"]["groups"][0], "system:nodes", "kubectl {version}: {whoami}");

        for (who, args, answer) in [
            (&admin, &["create", "deployments"][..], "yes"),
            (&admin, &["delete", "nodes"][..], "yes"),
            (&node, &["watch", "pods", "-A"][..], "yes"),
            (&node, &["patch", "pods", "--subresource=status"][..], "yes"),
            // TYPE/NAME: the pod named "status", not the subresource.
            (&node, &["patch", "pods/status"][..], "no"),
            (&node, &["update", "leases", "-n", "kube-node-lease"][..], "yes"),
            (&node, &["update", "leases", "-n", "default"][..], "no"),
            (&node, &["create", "deployments"][..], "no"),
            (&node, &["create", "pods"][..], "no"),
            (&node, &["get", "pods", "--subresource=log"][..], "no"),
        ] {
            let mut full = vec!["auth", "can-i"];
            full.extend_from_slice(args);
            let (code, stdout, stderr) = who.run(&full, None);
            // `yes`, or `no` and the reason.
            assert_eq!(stdout.split_whitespace().next(), Some(answer), "kubectl {version} {full:?}: {stdout}{stderr}");
            assert_eq!(code, if answer == "yes" { 0 } else { 1 }, "kubectl {version} {full:?}: {stderr}");
        }
        let listed = node.ok(&["auth", "can-i", "--list"], None);
        assert!(listed.contains("pods/status") && listed.contains("selfsubjectaccessreviews.authorization.k8s.io"), "kubectl {version}: {listed}");
        assert!(!listed.contains("leases"), "the lease rule holds only in kube-node-lease: {listed}");
        assert!(admin.ok(&["auth", "can-i", "--list"], None).contains("*.*"), "kubectl {version}");

        // What node agents do works; anything else is refused with a Status that says why.
        node.ok(&["get", "secrets", "-A"], None);
        node.ok(&["get", "endpointslices", "-A"], None);
        let (code, _, stderr) = node.run(&["create", "deployment", &format!("web-{}", version.replace('.', "-")), "--image=shoal.local/web:1"], None);
        assert_ne!(code, 0);
        assert!(stderr.contains(r#"User "shoal-node" cannot create resource "deployments" in API group "apps" in the namespace "default""#), "kubectl {version}: {stderr}");
        let (code, _, stderr) = node.run(&["delete", "namespace", "default"], None);
        assert_ne!(code, 0);
        assert!(stderr.contains("forbidden"), "kubectl {version}: {stderr}");

        // `--as`: the admin acts as a node to check what it may do; nobody else impersonates.
        let whoami = admin.ok(&["--as=system:node:node-9", "auth", "whoami"], None);
        assert!(whoami.contains("system:node:node-9") && whoami.contains("system:nodes"), "kubectl {version}: {whoami}");
        let (code, stdout, _) = admin.run(&["--as=system:node:node-9", "auth", "can-i", "create", "deployments"], None);
        assert_eq!((code, stdout.split_whitespace().next()), (1, Some("no")), "kubectl {version}: {stdout}");
        let (code, _, stderr) = admin.run(&["--as=system:node:node-9", "get", "secret", "nobodys-secret"], None);
        assert_ne!(code, 0);
        assert!(stderr.contains(r#"User "system:node:node-9""#) && stderr.contains("no pod bound to node node-9 uses it"), "kubectl {version}: {stderr}");
        // Any other user is judged by RBAC: alice has no binding.
        let (code, _, stderr) = admin.run(&["--as=alice", "get", "pods"], None);
        assert_ne!(code, 0);
        assert!(stderr.contains(r#"pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the namespace "default""#), "kubectl {version}: {stderr}");
        let (code, _, stderr) = node.run(&["--as=shoal-admin", "get", "pods"], None);
        assert_ne!(code, 0);
        assert!(stderr.contains("cannot impersonate"), "kubectl {version}: {stderr}");
    }
    let (status, body) = server.get("/api/v1/namespaces/default").await;
    assert_eq!(status, 200, "the namespace the node token tried to delete is still there: {body}");
    assert!(body["metadata"]["deletionTimestamp"].is_null(), "{body}");
}

/// ServiceAccounts, their tokens and RBAC, all made with kubectl 1.33 (protobuf bodies): every
/// namespace gets a `default` account; `kubectl create token` issues a token that opens exactly
/// what the account's RoleBindings grant, in their namespaces; nobody grants what they do not
/// hold; the admin checks others' rights with `--as`/`--as-group`, and an account granted
/// `impersonate` acts as the users, groups and accounts it names and no others; and a deleted
/// account's token stops working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_service_account_tokens_open_what_rbac_grants() {
    let server = Server::start().await;
    let admin = Kubectl::new(&server, "1.33");
    admin.ok(&["create", "namespace", "team"], None);
    kubectl_until(&admin, &["get", "serviceaccounts", "-n", "team"], 30, "the default ServiceAccount", |out| out.contains("default")).await;
    admin.ok(&["create", "serviceaccount", "bot", "-n", "team"], None);
    admin.ok(&["create", "role", "pod-reader", "--verb=get,list,watch", "--resource=pods", "-n", "team"], None);
    admin.ok(&["create", "rolebinding", "bot-reads", "--role=pod-reader", "--serviceaccount=team:bot", "-n", "team"], None);
    let wide = admin.ok(&["get", "rolebinding", "bot-reads", "-n", "team", "-o", "wide"], None);
    assert!(wide.contains("Role/pod-reader") && wide.contains("team/bot"), "{wide}");
    let roles = admin.ok(&["get", "clusterroles"], None);
    for name in ["cluster-admin", "admin", "edit", "view"] {
        assert!(roles.lines().any(|line| line.split_whitespace().next() == Some(name)), "{name} in {roles}");
    }
    // Aggregated ClusterRoles are written back, as kube-controller-manager's controller writes
    // them: a role labelled aggregate-to-view shows in view, and through view in edit and admin.
    let widgets = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: widget-viewer\n  labels: {rbac.authorization.k8s.io/aggregate-to-view: \"true\"}\nrules:\n- {apiGroups: [example.com], resources: [widgets], verbs: [get, list]}\n";
    admin.ok(&["apply", "-f", "-"], Some(widgets));
    for role in ["view", "edit", "admin"] {
        kubectl_until(&admin, &["get", "clusterrole", role, "-o", "jsonpath={.rules[*].resources}"], 15, &format!("{role} to aggregate widgets"), |out| out.contains("widgets")).await;
    }
    let edit = admin.ok(&["get", "clusterrole", "edit", "-o", "jsonpath={.rules[*].resources}"], None);
    assert!(edit.contains("deployments") && edit.contains("pods/log"), "edit holds its own rules and view's: {edit}");
    // RBAC names are path segments: `system:…`, and a space kubectl escapes in the URL.
    admin.ok(&["get", "clusterrole", "system:aggregate-to-view"], None);
    admin.ok(&["create", "clusterrole", "team a:reader", "--verb=get", "--resource=pods"], None);
    assert!(admin.ok(&["get", "clusterrole", "team a:reader", "-o", "name"], None).contains("team a:reader"));
    admin.ok(&["delete", "clusterrole", "team a:reader"], None);

    let token = admin.ok(&["create", "token", "bot", "-n", "team", "--duration=20m"], None).trim().to_owned();
    assert!(token.starts_with("eyJ") && token.split('.').count() == 3, "a JWT: {token}");
    // Older kubectl (JSON bodies) uses the same token.
    let bot = Kubectl::new(&server, "1.29");
    let as_bot = |args: &[&str]| {
        let mut full = vec!["--token", token.as_str()];
        full.extend_from_slice(args);
        bot.run(&full, None)
    };
    let (code, stdout, stderr) = as_bot(&["auth", "whoami"]);
    assert!(code == 0 && stdout.contains("system:serviceaccount:team:bot") && stdout.contains("system:serviceaccounts:team"), "{stdout}{stderr}");
    let (code, _, stderr) = as_bot(&["get", "pods", "-n", "team"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = as_bot(&["get", "pods", "-n", "default"]);
    assert_ne!(code, 0);
    assert!(stderr.contains(r#"pods is forbidden: User "system:serviceaccount:team:bot" cannot list resource "pods" in API group "" in the namespace "default""#), "{stderr}");
    let (code, _, stderr) = as_bot(&["create", "configmap", "c", "-n", "team"]);
    assert!(code != 0 && stderr.contains("cannot create resource \"configmaps\""), "{stderr}");
    let (code, stdout, _) = as_bot(&["auth", "can-i", "watch", "pods", "-n", "team"]);
    assert_eq!((code, stdout.trim()), (0, "yes"));

    // No escalation: allowed to write Roles, the account may grant only what it holds.
    admin.ok(&["create", "role", "role-maker", "--verb=create", "--resource=roles", "-n", "team"], None);
    admin.ok(&["create", "rolebinding", "bot-makes-roles", "--role=role-maker", "--serviceaccount=team:bot", "-n", "team"], None);
    kubectl_until(&bot, &["--token", &token, "auth", "can-i", "create", "roles", "-n", "team"], 10, "the new binding to apply", |out| out.trim() == "yes").await;
    let (code, _, stderr) = as_bot(&["create", "role", "thief", "--verb=get", "--resource=secrets", "-n", "team"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("is attempting to grant RBAC permissions not currently held") && stderr.contains("secrets"), "{stderr}");
    let (code, _, stderr) = as_bot(&["create", "role", "narrower", "--verb=get", "--resource=pods", "-n", "team"]);
    assert_eq!(code, 0, "a subset of what it holds: {stderr}");

    // The admin checks a user's and a group's rights; the `edit` ClusterRole through a binding.
    admin.ok(&["create", "rolebinding", "devs-edit", "--clusterrole=edit", "--group=devs", "-n", "team"], None);
    for (args, answer) in [
        (&["--as=system:serviceaccount:team:bot", "auth", "can-i", "list", "pods", "-n", "team"][..], "yes"),
        (&["--as=system:serviceaccount:team:bot", "auth", "can-i", "delete", "pods", "-n", "team"][..], "no"),
        (&["--as=jane", "--as-group=devs", "auth", "can-i", "create", "deployments", "-n", "team"][..], "yes"),
        (&["--as=jane", "--as-group=devs", "auth", "can-i", "create", "deployments", "-n", "default"][..], "no"),
        (&["--as=jane", "--as-group=devs", "auth", "can-i", "create", "rolebindings", "-n", "team"][..], "no"),
        (&["--as=jane", "auth", "can-i", "get", "pods", "-n", "team"][..], "no"),
    ] {
        let (_, stdout, stderr) = admin.run(args, None);
        assert_eq!(stdout.split_whitespace().next(), Some(answer), "{args:?}: {stdout}{stderr}");
    }
    admin.ok(&["--as=jane", "--as-group=devs", "create", "deployment", "web", "--image=shoal.local/web:1", "-n", "team"], None);

    // Others impersonate as far as RBAC's `impersonate` verb reaches: `edit` grants it on the
    // namespace's accounts (as Kubernetes' does), a ClusterRole on user jane and group devs.
    admin.ok(&["create", "serviceaccount", "lead", "-n", "team"], None);
    admin.ok(&["create", "rolebinding", "lead-edits", "--clusterrole=edit", "--serviceaccount=team:lead", "-n", "team"], None);
    admin.ok(&["create", "clusterrole", "act-as-jane", "--verb=impersonate", "--resource=users,groups", "--resource-name=jane", "--resource-name=devs"], None);
    admin.ok(&["create", "clusterrolebinding", "lead-acts-as-jane", "--clusterrole=act-as-jane", "--serviceaccount=team:lead"], None);
    let lead_token = admin.ok(&["create", "token", "lead", "-n", "team"], None).trim().to_owned();
    let as_lead = |args: &[&str]| {
        let mut full = vec!["--token", lead_token.as_str()];
        full.extend_from_slice(args);
        admin.run(&full, None)
    };
    kubectl_until(&admin, &["--token", &lead_token, "auth", "can-i", "impersonate", "users/jane"], 10, "the new binding to apply", |out| out.trim() == "yes").await;
    let (code, stdout, stderr) = as_lead(&["--as=system:serviceaccount:team:bot", "get", "pods", "-n", "team"]);
    assert_eq!(code, 0, "lead acts as an account of its namespace: {stdout}{stderr}");
    let (code, stdout, stderr) = as_lead(&["--as=jane", "--as-group=devs", "auth", "whoami"]);
    assert!(code == 0 && stdout.contains("jane") && stdout.contains("devs"), "{stdout}{stderr}");
    let (code, _, stderr) = as_lead(&["--as=jane", "--as-group=devs", "create", "configmap", "from-jane", "-n", "team"]);
    assert_eq!(code, 0, "jane in devs edits team: {stderr}");
    let (code, _, stderr) = as_lead(&["--as=bob", "get", "pods", "-n", "team"]);
    assert_ne!(code, 0);
    assert!(stderr.contains(r#"users "bob" is forbidden: User "system:serviceaccount:team:lead" cannot impersonate resource "users" in API group "" at the cluster scope"#), "{stderr}");
    let (code, _, stderr) = as_lead(&["--as=jane", "--as-group=system:masters", "get", "secrets", "-n", "team"]);
    assert_ne!(code, 0);
    assert!(stderr.contains(r#"groups "system:masters" is forbidden: User "system:serviceaccount:team:lead" cannot impersonate resource "groups""#), "{stderr}");
    let (code, _, stderr) = as_lead(&["--as=system:serviceaccount:default:default", "get", "pods"]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains(r#"serviceaccounts "default" is forbidden: User "system:serviceaccount:team:lead" cannot impersonate resource "serviceaccounts" in API group "" in the namespace "default""#),
        "{stderr}"
    );
    let (code, _, stderr) = as_lead(&["--as=shoal-admin", "get", "secrets", "-A"]);
    assert!(code != 0 && stderr.contains(r#"users "shoal-admin" is forbidden"#), "{stderr}");

    // A deleted account's tokens open nothing.
    admin.ok(&["delete", "serviceaccount", "bot", "-n", "team"], None);
    let (code, _, stderr) = as_bot(&["get", "pods", "-n", "team"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("Unauthorized") || stderr.contains("provide credentials"), "{stderr}");
}

/// `kubectl scale` through the scale subresource; `--current-replicas` guards it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_scale_uses_the_scale_subresource() {
    let server = Server::start_with(&["--disable-controllers"]).await;
    let kubectl = Kubectl::new(&server, "1.32");
    kubectl.ok(&["apply", "-f", "-"], Some(&manifest(2, &[])));
    assert!(kubectl.ok(&["scale", "deployment/web", "--replicas=5"], None).contains("deployment.apps/web scaled"));
    let (_, live) = server.get("/apis/apps/v1/namespaces/default/deployments/web").await;
    assert_eq!(live["spec"]["replicas"], 5);
    let (code, _, stderr) = kubectl.run(&["scale", "deployment/web", "--current-replicas=2", "--replicas=3"], None);
    assert_ne!(code, 0, "the current count is 5, not 2");
    assert!(stderr.contains("Expected replicas to be 2, was 5"), "{stderr}");
    let (_, live) = server.get("/apis/apps/v1/namespaces/default/deployments/web").await;
    assert_eq!(live["spec"]["replicas"], 5);
}

fn hello_deployment(image: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  replicas: 2\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      containers: [{{name: app, image: \"{image}\"}}]\n"
    )
}

/// `kubectl rollout status`, `set image`, `rollout history` and `rollout undo` against real
/// pods on the server's node: undo goes back to the first revision's ReplicaSet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_rolls_out_lists_history_and_undoes() {
    let server = Server::start().await;
    crate::harness::push(&server, "hello/hello.wasm", "shoal.local/samples/hello:latest");
    crate::harness::push(&server, "hello/hello.wasm", "shoal.local/samples/hello:v2");
    let kubectl = Kubectl::new(&server, "1.32");
    kubectl.ok(&["apply", "-f", "-"], Some(&hello_deployment("shoal.local/samples/hello:latest")));
    let status = kubectl.ok(&["rollout", "status", "deployment/web", "--timeout=25s"], None);
    assert!(status.contains("successfully rolled out"), "{status}");
    kubectl.ok(&["set", "image", "deployment/web", "app=shoal.local/samples/hello:v2"], None);
    let status = kubectl.ok(&["rollout", "status", "deployment/web", "--timeout=25s"], None);
    assert!(status.contains("successfully rolled out"), "{status}");
    let history = kubectl.ok(&["rollout", "history", "deployment/web"], None);
    let revisions: Vec<&str> = history.lines().filter_map(|l| l.split_whitespace().next()).filter(|w| w.parse::<u32>().is_ok()).collect();
    assert_eq!(revisions, ["1", "2"], "{history}");
    assert!(kubectl.ok(&["rollout", "undo", "deployment/web"], None).contains("rolled back"));
    kubectl.ok(&["rollout", "status", "deployment/web", "--timeout=25s"], None);
    let (_, live) = server.get("/apis/apps/v1/namespaces/default/deployments/web").await;
    assert_eq!(live["spec"]["template"]["spec"]["containers"][0]["image"], "shoal.local/samples/hello:latest");
    let (_, sets) = server.get("/apis/apps/v1/namespaces/default/replicasets").await;
    assert_eq!(sets["items"].as_array().map(Vec::len), Some(2), "undo reuses the first ReplicaSet: {sets}");
    let history = kubectl.ok(&["rollout", "history", "deployment/web"], None);
    let revisions: Vec<&str> = history.lines().filter_map(|l| l.split_whitespace().next()).filter(|w| w.parse::<u32>().is_ok()).collect();
    assert_eq!(revisions, ["2", "3"], "the reused set takes the next revision: {history}");
}

/// `kubectl logs` of a pod, with `--tail`, `-f`, and through a Job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_reads_pods_and_jobs() {
    let server = Server::start().await;
    crate::harness::push(&server, "worker/worker.wasm", "shoal.local/samples/worker:latest");
    let kubectl = Kubectl::new(&server, "1.32");
    let job = "apiVersion: batch/v1\nkind: Job\nmetadata: {name: steps}\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{name: worker, image: \"shoal.local/samples/worker:latest\", env: [{name: STEPS, value: \"4\"}]}]\n";
    kubectl.ok(&["apply", "-f", "-"], Some(job));
    kubectl.ok(&["wait", "--for=condition=complete", "job/steps", "--timeout=25s"], None);
    let expected = "worker: step 1\nworker: step 2\nworker: step 3\nworker: step 4\nworker: done\n";
    assert_eq!(kubectl.ok(&["logs", "job/steps"], None), expected);
    let pod = kubectl.ok(&["get", "pods", "-l", "job-name=steps", "-o", "name"], None);
    let pod = pod.trim();
    assert!(pod.starts_with("pod/steps-"), "{pod}");
    assert_eq!(kubectl.ok(&["logs", pod, "--tail=2"], None), "worker: step 4\nworker: done\n");
    assert_eq!(kubectl.ok(&["logs", "-f", pod], None), expected, "follow ends with the finished container");
}

/// `kubectl get -w` streams Table rows as objects change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_watch_streams_rows() {
    let server = Server::start_with(&["--disable-controllers"]).await;
    let kubectl = Kubectl::new(&server, "1.32");
    let watcher = kubectl.spawn(6, &["get", "configmaps", "-w"]);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    server.post("/api/v1/namespaces/default/configmaps", &crate::harness::config_map("streamed", "1")).await;
    let output = watcher.wait_with_output().expect("kubectl ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.lines().any(|row| row.starts_with("streamed ")), "the new row arrived while watching: {stdout}{}", String::from_utf8_lossy(&output.stderr));
}

/// A server with its node, and the hello Deployment `web` (2 replicas) rolled out by kubectl.
async fn rolled_out_hello() -> (Server, Kubectl) {
    let server = Server::start().await;
    crate::harness::push(&server, "hello/hello.wasm", "shoal.local/samples/hello:latest");
    let kubectl = Kubectl::new(&server, "1.32");
    kubectl.ok(&["apply", "-f", "-"], Some(&hello_deployment("shoal.local/samples/hello:latest")));
    let status = kubectl.ok(&["rollout", "status", "deployment/web", "--timeout=25s"], None);
    assert!(status.contains("successfully rolled out"), "{status}");
    (server, kubectl)
}

/// `kubectl describe` shows the defaults kube-apiserver sets and the object's events, found by
/// `involvedObject` field selectors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_describe_shows_defaults_and_events() {
    let (_server, kubectl) = rolled_out_hello().await;
    let described = kubectl.ok(&["describe", "deployment", "web"], None);
    assert!(described.contains("StrategyType:") && described.contains("RollingUpdate"), "{described}");
    assert!(described.contains("ScalingReplicaSet"), "the Deployment's own events: {described}");
    let pod = kubectl.ok(&["get", "pods", "-l", "app=web", "-o", "name"], None);
    let pod = pod.lines().next().expect("a pod").trim_start_matches("pod/").to_owned();
    let described = kubectl.ok(&["describe", "pod", &pod], None);
    assert!(described.contains("Status:") && described.contains("Running"), "{described}");
    assert!(described.contains("Scheduled"), "{described}");
    assert!(!described.contains("ScalingReplicaSet"), "only this pod's events: {described}");
}

/// `kubectl delete` of a Deployment cascades to its ReplicaSets and pods; `delete -l` removes
/// each selected object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_delete_cascades_and_deletes_by_label() {
    let (server, kubectl) = rolled_out_hello().await;
    assert!(kubectl.ok(&["delete", "deployment", "web"], None).contains("deployment.apps \"web\" deleted"));
    crate::harness::wait_until(&server, "/apis/apps/v1/namespaces/default/replicasets", 30, "the ReplicaSet to go", |l| l["items"].as_array().is_some_and(Vec::is_empty)).await;
    crate::harness::wait_until(&server, "/api/v1/namespaces/default/pods", 30, "the pods to go", |l| l["items"].as_array().is_some_and(Vec::is_empty)).await;

    for name in ["one", "two"] {
        let mut labelled = crate::harness::config_map(name, "x");
        labelled["metadata"]["labels"] = serde_json::json!({"group": "g"});
        server.post("/api/v1/namespaces/default/configmaps", &labelled).await;
    }
    let deleted = kubectl.ok(&["delete", "configmaps", "-l", "group=g"], None);
    assert!(deleted.contains("configmap \"one\" deleted") && deleted.contains("configmap \"two\" deleted"), "{deleted}");
}

/// `kubectl rollout status` outlives its watch: the server stops mid-wait (the stream closes)
/// and comes back on the same port with a fresh watch history (the resumed watch gets 410
/// Expired and kubectl lists again), and the status still ends in success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_rollout_status_survives_a_closed_watch_and_410() {
    let mut server = Server::start_with(&["--disable-controllers"]).await;
    crate::harness::push(&server, "hello/hello.wasm", "shoal.local/samples/hello:latest");
    let kubectl = Kubectl::new(&server, "1.32");
    kubectl.ok(&["apply", "-f", "-"], Some(&hello_deployment("shoal.local/samples/hello:latest")));
    // No controllers yet: the status never arrives, so kubectl waits on its watch.
    let waiting = kubectl.spawn(90, &["rollout", "status", "deployment/web", "-v=4"]);
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    server.restart_on_the_same_port(&[]).await;
    let output = waiting.wait_with_output().expect("kubectl ran");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "rollout status failed: {stdout}{stderr}");
    assert!(stdout.contains("Waiting for deployment spec update to be observed") || stdout.contains("Waiting for deployment \"web\" rollout to finish"), "{stdout}");
    assert!(stdout.contains("successfully rolled out"), "{stdout}");
    // kubectl's reflector logs (-v=4) show both: the stream closing and the 410 on resuming.
    assert!(stderr.contains("Watch close") && stderr.contains("too old resource version"), "{stderr}");
}

/// Runs `kubectl args` until its output satisfies `check`, failing after `seconds` with the last
/// output.
async fn kubectl_until(kubectl: &Kubectl, args: &[&str], seconds: u64, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        let (code, stdout, stderr) = kubectl.run(args, None);
        if code == 0 && check(&stdout) {
            return stdout;
        }
        assert!(std::time::Instant::now() < deadline, "{what} did not happen within {seconds} s; kubectl {args:?} said: {stdout}{stderr}");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// A Secret of type `kubernetes.io/service-account-token` gets a long-lived token for the
/// account it names (kube's tokens controller), with the CA and the namespace; the token speaks
/// for the account until the Secret is deleted. A Secret written before its account waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_token_secret_gets_a_token_that_ends_with_the_secret() {
    use base64::Engine;
    let server = Server::start().await;
    let admin = Kubectl::new(&server, "1.33");
    let manifest = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: ci-token\n  annotations:\n    kubernetes.io/service-account.name: ci\ntype: kubernetes.io/service-account-token\n";
    admin.ok(&["apply", "-f", "-"], Some(manifest));
    // Until its account exists, the Secret says what it waits for.
    let reasons = kubectl_until(&admin, &["get", "events", "--field-selector", "involvedObject.name=ci-token", "-o", "jsonpath={.items[*].reason}: {.items[*].message}"], 30, "an event on the waiting Secret", |out| out.contains("ServiceAccountNotFound")).await;
    assert!(reasons.contains("waiting for ServiceAccount \"ci\" in namespace \"default\""), "{reasons}");
    admin.ok(&["create", "serviceaccount", "ci"], None);
    let encoded = kubectl_until(&admin, &["get", "secret", "ci-token", "-o", "jsonpath={.data.token}"], 30, "the token Secret to be filled", |out| !out.trim().is_empty()).await;
    let decode = |text: &str| String::from_utf8(base64::engine::general_purpose::STANDARD.decode(text.trim()).expect("base64")).expect("utf-8");
    let token = decode(&encoded);
    assert!(token.starts_with("eyJ") && token.split('.').count() == 3, "a JWT: {token}");
    let secret: Value = serde_json::from_str(&admin.ok(&["get", "secret", "ci-token", "-o", "json"], None)).expect("json");
    assert_eq!(decode(secret["data"]["namespace"].as_str().expect("namespace")), "default");
    let ca = decode(secret["data"]["ca.crt"].as_str().expect("ca.crt"));
    assert_eq!(ca.trim(), std::fs::read_to_string(server.data_dir.join("pki/ca.crt")).expect("the cluster CA").trim());
    let (_, account) = server.get("/api/v1/namespaces/default/serviceaccounts/ci").await;
    assert_eq!(secret["metadata"]["annotations"]["kubernetes.io/service-account.uid"], account["metadata"]["uid"]);

    let bot = Kubectl::new(&server, "1.29");
    let (code, stdout, stderr) = bot.run(&["--token", &token, "auth", "whoami"], None);
    assert!(code == 0 && stdout.contains("system:serviceaccount:default:ci"), "{stdout}{stderr}");
    admin.ok(&["delete", "secret", "ci-token"], None);
    let (code, stdout, stderr) = bot.run(&["--token", &token, "auth", "whoami"], None);
    assert!(code != 0 && stderr.contains("Unauthorized"), "the token ends with its Secret: {stdout}{stderr}");
}

/// `kubectl top` reads `metrics.k8s.io`, measured by the node from the guests' own CPU time; and
/// an autoscaler made by `kubectl autoscale` (a protobuf body from kubectl 1.33) grows a busy
/// Deployment to its maximum, then shrinks it when the load stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_top_and_autoscale_follow_the_guests_cpu() {
    let server = Server::start_with(&["--horizontal-pod-autoscaler-sync-period", "1"]).await;
    crate::harness::push(&server, "misbehave/misbehave.wasm", "shoal.local/samples/misbehave:latest");
    let kubectl = Kubectl::new(&server, "1.33");
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: busy}\nspec:\n  replicas: 1\n  selector: {matchLabels: {app: busy}}\n  template:\n    metadata: {labels: {app: busy}}\n    spec:\n      containers: [{name: app, image: \"shoal.local/samples/misbehave:latest\", resources: {requests: {cpu: 100m}}}]\n";
    kubectl.ok(&["apply", "-f", "-"], Some(deployment));
    kubectl.ok(&["rollout", "status", "deployment/busy", "--timeout=25s"], None);
    let pod = kubectl.ok(&["get", "pods", "-l", "app=busy", "-o", "jsonpath={.items[0].metadata.name}"], None);
    let node = kubectl.ok(&["get", "pods", &pod, "-o", "jsonpath={.spec.nodeName}"], None);
    let data = kubectl.ok(&["get", "node", &node, "-o", "jsonpath={.metadata.annotations.shoal\\.dev/data-addr}"], None);
    assert!(!data.is_empty(), "the node publishes its data plane");

    // One client keeps the first pod busy: about a core, ten times its request.
    let load = tokio_util::sync::CancellationToken::new();
    let loader = {
        let (load, url) = (load.clone(), format!("http://{data}/_pods/default/{pod}/spin?ms=50"));
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut answered = 0u32;
            while !load.is_cancelled() {
                if http.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
                    answered += 1;
                }
            }
            answered
        })
    };
    let top = kubectl_until(&kubectl, &["top", "pod", "-l", "app=busy", "--no-headers"], 30, "the busy pod's CPU in kubectl top", |out| {
        out.lines().any(|line| line.starts_with(&pod) && line.split_whitespace().nth(1).and_then(|cpu| cpu.strip_suffix('m')).and_then(|m| m.parse::<u32>().ok()).is_some_and(|m| m >= 300))
    })
    .await;
    assert!(top.contains("Mi"), "memory is shown too: {top}");
    let nodes = kubectl.ok(&["top", "node", "--no-headers"], None);
    assert!(nodes.lines().any(|line| line.starts_with(&node)), "{nodes}");
    // `shoal top` prints the same.
    let (code, shoal_top, stderr) = server.cli(&["top", "pods", "-l", "app=busy", "--containers"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(shoal_top.lines().next().is_some_and(|h| h.split_whitespace().collect::<Vec<_>>() == ["POD", "NAME", "CPU(cores)", "MEMORY(bytes)"]), "{shoal_top}");
    assert!(shoal_top.lines().any(|line| line.starts_with(&pod) && line.contains(" app ")), "{shoal_top}");
    let (code, shoal_nodes, stderr) = server.cli(&["top", "nodes"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(shoal_nodes.lines().any(|line| line.starts_with(&node) && line.contains('%')), "{shoal_nodes}");

    kubectl.ok(&["autoscale", "deployment", "busy", "--cpu-percent=50", "--min=1", "--max=3"], None);
    // Shrink as soon as the load is gone (the default waits five minutes).
    kubectl.ok(&["patch", "hpa", "busy", "--type=merge", "-p", r#"{"spec":{"behavior":{"scaleDown":{"stabilizationWindowSeconds":0}}}}"#], None);
    kubectl_until(&kubectl, &["get", "deployment", "busy", "-o", "jsonpath={.spec.replicas}"], 60, "the scale-up to the maximum", |out| out == "3").await;
    let row = kubectl.ok(&["get", "hpa", "busy", "--no-headers"], None);
    let targets = row.split_whitespace().nth(2).zip(row.split_whitespace().nth(3)).map(|(a, b)| format!("{a} {b}")).unwrap_or_default();
    assert!(targets.starts_with("cpu: ") && targets.ends_with("%/50%") && !targets.contains("unknown"), "measured utilization in TARGETS: {row}");
    let events = kubectl.ok(&["get", "events", "--field-selector", "involvedObject.kind=HorizontalPodAutoscaler,reason=SuccessfulRescale", "-o", "jsonpath={.items[*].message}"], None);
    assert!(events.contains("New size: 3") && events.contains("above target"), "{events}");

    load.cancel();
    let answered = loader.await.expect("the load ran");
    assert!(answered > 0, "the busy pod answered");
    kubectl_until(&kubectl, &["get", "deployment", "busy", "-o", "jsonpath={.spec.replicas}"], 60, "the scale-down once idle", |out| out == "1").await;
    let described = kubectl.ok(&["describe", "hpa", "busy"], None);
    assert!(described.contains("ValidMetricFound") && described.contains("All metrics below target"), "{described}");
}

/// Built-in Secret types need their keys, a Secret's type stays, and an `immutable: true`
/// ConfigMap or Secret keeps its data, each refused with kube-apiserver's field errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_secrets_and_immutable_data_are_refused_as_kubernetes_refuses_them() {
    let server = Server::start().await;
    let kubectl = Kubectl::new(&server, "1.33");
    let tls = "apiVersion: v1\nkind: Secret\nmetadata: {name: site}\ntype: kubernetes.io/tls\nstringData: {tls.crt: cert}\n";
    let (code, stdout, stderr) = kubectl.run(&["apply", "-f", "-"], Some(tls));
    assert!(code != 0 && stderr.contains("data[tls.key]: Required value"), "{stdout}{stderr}");
    let pull = "apiVersion: v1\nkind: Secret\nmetadata: {name: pull}\ntype: kubernetes.io/dockerconfigjson\nstringData: {.dockerconfigjson: 'password=hunter2'}\n";
    let (code, stdout, stderr) = kubectl.run(&["apply", "-f", "-"], Some(pull));
    assert!(code != 0 && stderr.contains("data[.dockerconfigjson]: Invalid value: \"<secret contents redacted>\""), "{stdout}{stderr}");
    assert!(!stderr.contains("hunter2"), "the refusal does not repeat the credential: {stderr}");

    kubectl.ok(&["create", "secret", "generic", "plain", "--from-literal=k=v"], None);
    let (code, stdout, stderr) = kubectl.run(&["patch", "secret", "plain", "--type=merge", "-p", "{\"type\": \"example.com/other\"}"], None);
    assert!(code != 0 && stderr.contains("type: Invalid value: \"example.com/other\": field is immutable"), "{stdout}{stderr}");
    // Both wrongs in one answer, as kube-apiserver gives them: the type may not change, and the
    // new type's keys are missing.
    let (code, stdout, stderr) = kubectl.run(&["patch", "secret", "plain", "--type=merge", "-p", "{\"type\": \"kubernetes.io/tls\"}"], None);
    assert!(code != 0 && stderr.contains("type: Invalid value: \"kubernetes.io/tls\": field is immutable") && stderr.contains("data[tls.key]: Required value"), "{stdout}{stderr}");

    let frozen = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: frozen}\nimmutable: true\ndata: {k: v}\n";
    kubectl.ok(&["apply", "-f", "-"], Some(frozen));
    let (code, stdout, stderr) = kubectl.run(&["apply", "-f", "-"], Some(&frozen.replace("{k: v}", "{k: w}")));
    assert!(code != 0 && stderr.contains("data: Forbidden: field is immutable when `immutable` is set"), "{stdout}{stderr}");
    let (code, stdout, stderr) = kubectl.run(&["patch", "configmap", "frozen", "--type=merge", "-p", "{\"immutable\": false}"], None);
    assert!(code != 0 && stderr.contains("immutable: Forbidden: field is immutable when `immutable` is set"), "{stdout}{stderr}");
    // Metadata still changes, and the data is what it was.
    kubectl.ok(&["label", "configmap", "frozen", "team=a"], None);
    assert_eq!(kubectl.ok(&["get", "configmap", "frozen", "-o", "jsonpath={.data.k} {.metadata.labels.team}"], None), "v a");
}
