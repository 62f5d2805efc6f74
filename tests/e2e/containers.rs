//! OCI containers through containerd (a private one the node starts), on this machine's real
//! containerd binaries, runc and kernel: a busybox image built here with `docker build` from
//! Debian's busybox-static and pushed to a loopback docker-registry runs `httpd` behind a Service
//! and an Ingress; exit codes, restarts and an OOM kill are reported as Kubernetes reports them;
//! an exec probe gates readiness; a mixed pod shares localhost and an emptyDir between a Wasm
//! component and a container; deleting pods leaves no containers, snapshots, network namespaces,
//! mounts or cgroups behind.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_oci::Digest;

use crate::harness::{Agent, DockerRegistry, Server, push, wait_until};

/// A pod range of its own for each test's node, so tests running side by side get a bridge and
/// addresses each.
fn pod_cidr() -> String {
    static NEXT: AtomicU8 = AtomicU8::new(0);
    let third = 100 + (std::process::id() % 50) as u8 + NEXT.fetch_add(1, Ordering::Relaxed) * 2;
    format!("10.89.{third}.0/24")
}

/// A loopback registry holding `busybox:1`: a `FROM scratch` image with Debian's busybox-static.
async fn busybox_registry() -> (DockerRegistry, String) {
    let registry = DockerRegistry::start().await;
    let context = tempfile::tempdir().expect("tempdir");
    let busybox = ["/bin/busybox", "/usr/bin/busybox"].into_iter().map(PathBuf::from).find(|p| p.exists()).expect("busybox-static must be installed (.ci/run installs it)");
    std::fs::copy(&busybox, context.path().join("busybox")).expect("copy busybox");
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nRUN [\"/bin/mkdir\", \"-p\", \"/tmp\", \"/www\"]\nCMD [\"/bin/sh\"]\n",
    )
    .expect("Dockerfile");
    let reference = format!("{}/busybox:1", registry.host);
    build_and_push(context.path(), &reference);
    (registry, reference)
}

/// `docker build` of the context `directory` as `reference`, and `docker push` of it.
fn build_and_push(directory: &std::path::Path, reference: &str) {
    let build = Command::new("docker").args(["build", "-q", "-t", reference]).arg(directory).output().expect("docker must be installed");
    assert!(build.status.success(), "docker build: {}", String::from_utf8_lossy(&build.stderr));
    let pushed = Command::new("docker").args(["push", reference]).output().expect("docker push");
    assert!(pushed.status.success(), "docker push: {}", String::from_utf8_lossy(&pushed.stderr));
}

async fn server() -> Server {
    Server::start_with(&["--pod-cidr", &pod_cidr()]).await
}

/// The registry with the busybox image, the image's reference, and a server with its node.
async fn setup() -> (DockerRegistry, String, Server) {
    let (registry, image) = busybox_registry().await;
    (registry, image, server().await)
}

fn apply(server: &Server, yaml: &str) {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), yaml).expect("manifest");
    let (code, _, stderr) = server.cli(&["apply", "-f", file.path().to_str().expect("utf-8")]);
    assert_eq!(code, 0, "apply: {stderr}");
}

async fn pod(server: &Server, name: &str) -> Value {
    server.get(&format!("/api/v1/namespaces/default/pods/{name}")).await.1
}

fn status_of<'a>(pod: &'a Value, container: &str) -> &'a Value {
    pod["status"]["containerStatuses"].as_array().and_then(|all| all.iter().find(|s| s["name"] == container)).unwrap_or(&Value::Null)
}

async fn wait_ready(server: &Server, name: &str, seconds: u64) -> Value {
    wait_until(server, &format!("/api/v1/namespaces/default/pods/{name}"), seconds, &format!("pod {name} becoming Ready"), |p| {
        p["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
    })
    .await
}

/// What a deleted pod left on the node: containerd containers, tasks and snapshots named for
/// it, its network namespace, mounts and cgroups.
fn leftovers(server: &Server, uid: &str) -> Vec<String> {
    let socket = server.data_dir.join("node/containerd/containerd.sock");
    let compact: String = uid.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    let ctr = |args: &[&str]| {
        let output = Command::new("ctr").arg("--address").arg(&socket).args(["-n", "shoal"]).args(args).output().expect("ctr (containerd's CLI) must be installed");
        assert!(output.status.success(), "ctr {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let mut found = Vec::new();
    for (what, listing) in [("container", ctr(&["containers", "ls", "-q"])), ("task", ctr(&["tasks", "ls", "-q"])), ("snapshot", ctr(&["snapshots", "ls"]))] {
        found.extend(listing.lines().filter(|l| l.contains(&compact)).map(|l| format!("{what}: {l}")));
    }
    let namespace = format!("shoal-{}", &Digest::of(uid.as_bytes()).hex()[..10]);
    if std::path::Path::new("/run/netns").join(&namespace).exists() {
        found.push(format!("network namespace {namespace}"));
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    found.extend(mounts.lines().filter(|l| l.contains(&compact) || l.contains(&namespace)).map(|l| format!("mount: {l}")));
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
        let cgroup = hierarchy.path().join("shoal").join(uid);
        if cgroup.exists() {
            found.push(format!("cgroup {}", cgroup.display()));
        }
    }
    found
}

async fn delete_and_expect_nothing_left(server: &Server, name: &str) {
    let uid = pod(server, name).await["metadata"]["uid"].as_str().expect("a uid").to_owned();
    let (code, _, stderr) = server.cli(&["delete", "pod", name]);
    assert_eq!(code, 0, "delete: {stderr}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, _) = server.get(&format!("/api/v1/namespaces/default/pods/{name}")).await;
        let left = leftovers(server, &uid);
        if code == 404 && left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "pod {name} (code {code}) still has {left:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A busybox httpd pod serving `text` on 8080, with a Service (port 80) and an Ingress for
/// `NAME.localhost`, all named `name`.
fn httpd_app(name: &str, image: &str, text: &str, node: Option<&str>) -> String {
    let node = node.map(|n| format!("  nodeName: {n}\n")).unwrap_or_default();
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: {name}}}}}
spec:
{node}  terminationGracePeriodSeconds: 2
  containers:
  - name: httpd
    image: {image}
    command: ["sh", "-c", "echo {text} > /www/index.html && exec httpd -f -v -p 8080 -h /www"]
    ports: [{{containerPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  selector: {{app: {name}}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: {name}}}
spec:
  rules:
  - host: {name}.localhost
    http:
      paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: {name}, port: {{number: 80}}}}}}}}]
"#
    )
}

/// The body `host` answers with through the ingress, once it answers 200.
async fn through_ingress(http: &reqwest::Client, ingress: &str, host: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = http.get(format!("http://{ingress}/")).header("host", host).send().await;
        if let Ok(response) = answer
            && response.status() == 200
        {
            return response.text().await.expect("a body");
        }
        assert!(Instant::now() < deadline, "the Ingress never reached the container behind {host}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The PID of a pod's container's task, as containerd reports it.
fn task_pid(server: &Server, uid: &str, container: &str) -> Option<String> {
    let socket = server.data_dir.join("node/containerd/containerd.sock");
    let id = format!("{}-{container}", uid.replace('-', ""));
    let output = Command::new("ctr").arg("--address").arg(&socket).args(["-n", "shoal", "tasks", "ls"]).output().ok()?;
    String::from_utf8_lossy(&output.stdout).lines().find(|l| l.starts_with(&id)).and_then(|l| l.split_whitespace().nth(1)).map(str::to_owned)
}

async fn node_annotation(server: &Server, key: &str) -> String {
    let node = wait_until(server, "/api/v1/nodes/node-1", 30, "the node registering", |n| !n["metadata"]["annotations"][key].is_null()).await;
    node["metadata"]["annotations"][key].as_str().expect("an annotation").to_owned()
}

#[tokio::test]
async fn a_container_image_serves_behind_a_service_and_an_ingress_and_reaches_services_by_name() {
    let (_registry, image) = busybox_registry().await;
    let mut server = server().await;
    let node = wait_until(&server, "/api/v1/nodes/node-1", 30, "the node registering", |n| !n["metadata"]["name"].is_null()).await;
    assert_eq!(node["metadata"]["labels"]["shoal.dev/containers"], "true", "{node}");
    apply(
        &server,
        &format!(
            r#"{app}---
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: wget
    image: {image}
    command: ["sh", "-c", "while true; do wget -qO- http://web/ && wget -qO- http://web.default.svc.cluster.local/; sleep 1; done"]
"#,
            app = httpd_app("web", &image, "hello-from-busybox", None),
        ),
    );
    let web = wait_ready(&server, "web", 90).await;
    let pod_ip = web["status"]["podIP"].as_str().expect("a pod IP");
    assert!(pod_ip.starts_with("10.89."), "the pod's own address, from the node's range: {web}");
    assert_ne!(web["status"]["podIP"], web["status"]["hostIP"]);
    assert!(status_of(&web, "httpd")["imageID"].as_str().is_some_and(|id| id.contains("@sha256:")), "{web}");
    let ingress = node_annotation(&server, "shoal.dev/ingress-addr").await;
    let http = reqwest::Client::new();
    assert_eq!(through_ingress(&http, &ingress, "web.localhost").await, "hello-from-busybox\n");
    // A restarted node adopts the running container rather than starting it again.
    let uid = web["metadata"]["uid"].as_str().expect("uid").to_owned();
    let before = task_pid(&server, &uid, "httpd");
    assert!(before.is_some(), "the container's task runs");
    server.terminate();
    server.restart().await;
    let web = wait_ready(&server, "web", 60).await;
    assert_eq!(task_pid(&server, &uid, "httpd"), before, "the same process serves after the restart");
    assert_eq!(status_of(&web, "httpd")["restartCount"], 0, "{web}");
    let ingress = node_annotation(&server, "shoal.dev/ingress-addr").await;
    assert_eq!(through_ingress(&http, &ingress, "web.localhost").await, "hello-from-busybox\n");
    // A container reaches the Service by its short and its full name.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, logs, _) = server.cli(&["logs", "client"]);
        if logs.matches("hello-from-busybox").count() >= 2 {
            break;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(server.data_dir.parent().expect("parent").join("server.log")).unwrap_or_default();
            panic!("the client container never reached the Service by name; its logs: {logs}\nserver log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The container's own output is in the pod's logs (httpd -v logs each request).
    let (_, logs, _) = server.cli(&["logs", "web"]);
    assert!(logs.contains("response:200"), "{logs}");
    delete_and_expect_nothing_left(&server, "client").await;
    delete_and_expect_nothing_left(&server, "web").await;
}

#[tokio::test]
async fn exit_codes_restarts_oom_kills_and_security_contexts_are_reported() {
    let (_registry, image, mut server) = setup().await;
    apply(
        &server,
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: oom}}
spec:
  restartPolicy: Never
  containers:
  - name: bomb
    image: {image}
    command: ["sh", "-c", "echo allocating; a=$(yes | head -c 400000000); echo survived"]
    resources: {{limits: {{memory: 32Mi}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: exits}}
spec:
  restartPolicy: OnFailure
  containers:
  - name: fail
    image: {image}
    command: ["sh", "-c", "echo run; exit 7"]
---
apiVersion: v1
kind: Pod
metadata: {{name: done}}
spec:
  restartPolicy: Never
  securityContext: {{runAsUser: 1234}}
  containers:
  - name: once
    image: {image}
    command: ["sh", "-c", "echo uid=$(id -u) gid=$(id -g); touch /written && echo wrote || echo read-only"]
    securityContext: {{readOnlyRootFilesystem: true, runAsGroup: 99}}
---
apiVersion: v1
kind: Pod
metadata: {{name: privileged}}
spec:
  containers:
  - name: root
    image: {image}
    command: ["sleep", "3600"]
    securityContext: {{privileged: true}}
"#
        ),
    );
    let oom = wait_until(&server, "/api/v1/namespaces/default/pods/oom", 90, "the memory bomb being OOM-killed", |p| p["status"]["phase"] == "Failed").await;
    let terminated = &status_of(&oom, "bomb")["state"]["terminated"];
    assert_eq!(terminated["reason"], "OOMKilled", "{oom}");
    assert_eq!(terminated["exitCode"], 137, "{oom}");

    let exits = wait_until(&server, "/api/v1/namespaces/default/pods/exits", 90, "a failing container restarting", |p| status_of(p, "fail")["restartCount"].as_u64().is_some_and(|c| c >= 1)).await;
    let last = &status_of(&exits, "fail")["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 7, "{exits}");
    assert_eq!(last["reason"], "Error", "{exits}");
    assert_eq!(exits["status"]["phase"], "Running", "OnFailure keeps restarting: {exits}");
    // A restarted node goes on counting from the restarts the status reports.
    let restarts = status_of(&exits, "fail")["restartCount"].as_u64().unwrap_or_default();
    server.terminate();
    server.restart().await;
    wait_until(&server, "/api/v1/namespaces/default/pods/exits", 90, "the restart count going on after the node restarts", |p| status_of(p, "fail")["restartCount"].as_u64().is_some_and(|c| c > restarts)).await;

    let done = wait_until(&server, "/api/v1/namespaces/default/pods/done", 90, "a container running to completion", |p| p["status"]["phase"] == "Succeeded").await;
    assert_eq!(status_of(&done, "once")["state"]["terminated"]["exitCode"], 0, "{done}");
    let (_, logs, _) = server.cli(&["logs", "done"]);
    assert!(logs.contains("uid=1234 gid=99"), "runAsUser and runAsGroup: {logs}");
    assert!(logs.contains("read-only"), "readOnlyRootFilesystem: {logs}");

    let refused = wait_until(&server, "/api/v1/namespaces/default/pods/privileged", 60, "a privileged container being refused", |p| status_of(p, "root")["state"]["waiting"]["reason"] == "CreateContainerConfigError").await;
    assert!(status_of(&refused, "root")["state"]["waiting"]["message"].as_str().is_some_and(|m| m.contains("privileged")), "{refused}");

    for name in ["oom", "exits", "done", "privileged"] {
        delete_and_expect_nothing_left(&server, name).await;
    }
}

#[tokio::test]
async fn an_exec_probe_gates_readiness_and_a_failing_liveness_probe_restarts() {
    let (_registry, image, server) = setup().await;
    apply(
        &server,
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: probed}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: {image}
    command: ["sh", "-c", "sleep 4; touch /tmp/ready; exec sleep 3600"]
    readinessProbe: {{exec: {{command: ["cat", "/tmp/ready"]}}, periodSeconds: 1}}
    livenessProbe: {{exec: {{command: ["sh", "-c", "test ! -e /tmp/sick"]}}, periodSeconds: 1, failureThreshold: 2}}
"#
        ),
    );
    let running = wait_until(&server, "/api/v1/namespaces/default/pods/probed", 60, "the container running", |p| status_of(p, "app")["state"]["running"].is_object()).await;
    assert_eq!(status_of(&running, "app")["ready"], false, "not ready before the probe passes: {running}");
    let ready = wait_ready(&server, "probed", 30).await;
    assert_eq!(status_of(&ready, "app")["restartCount"], 0);
    // Make the liveness probe fail: the container is killed and started again.
    let socket = server.data_dir.join("node/containerd/containerd.sock");
    let id = format!("{}-app", ready["metadata"]["uid"].as_str().expect("uid").replace('-', ""));
    let exec = Command::new("ctr").arg("--address").arg(&socket).args(["-n", "shoal", "tasks", "exec", "--exec-id", "sicken", &id, "touch", "/tmp/sick"]).output().expect("ctr");
    assert!(exec.status.success(), "ctr exec: {}", String::from_utf8_lossy(&exec.stderr));
    wait_until(&server, "/api/v1/namespaces/default/pods/probed", 60, "the failed liveness probe restarting the container", |p| status_of(p, "app")["restartCount"].as_u64().is_some_and(|c| c >= 1)).await;
    delete_and_expect_nothing_left(&server, "probed").await;
}

#[tokio::test]
async fn a_mixed_pod_shares_localhost_and_an_empty_dir_between_a_component_and_a_container() {
    let (_registry, image, server) = setup().await;
    push(&server, "echo/echo.wasm", "shoal.local/samples/echo:1");
    apply(
        &server,
        &format!(
            r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: mixed-config}}
data: {{app.conf: "from-the-config-map", other.conf: "not-mounted"}}
---
apiVersion: v1
kind: Pod
metadata: {{name: mixed}}
spec:
  terminationGracePeriodSeconds: 1
  volumes: [{{name: shared, emptyDir: {{}}}}, {{name: config, configMap: {{name: mixed-config}}}}]
  initContainers:
  - name: native
    image: {image}
    restartPolicy: Always
    command: ["sleep", "3600"]
  - name: prepare
    image: {image}
    command: ["sh", "-c", "echo prepared > /shared/prepared; cat /etc/app.conf > /made/copied; ls /etc/app.conf /etc > /made/listing"]
    volumeMounts:
    - {{name: shared, mountPath: /shared}}
    - {{name: shared, mountPath: /made, subPath: made/here}}
    - {{name: config, mountPath: /etc/app.conf, subPath: app.conf, readOnly: true}}
  containers:
  - name: echo
    image: shoal.local/samples/echo:1
    ports: [{{containerPort: 8080}}]
    volumeMounts: [{{name: shared, mountPath: /shared}}]
  - name: sidecar
    image: {image}
    command: ["sh", "-c", "httpd -p 9090 -h /shared; while true; do wget -qO- http://localhost:8080/from-sidecar && echo; sleep 1; done"]
    ports: [{{containerPort: 9090}}]
    volumeMounts: [{{name: shared, mountPath: /shared}}]
"#
        ),
    );
    let ready = wait_ready(&server, "mixed", 90).await;
    for container in ["echo", "sidecar"] {
        assert!(status_of(&ready, container)["state"]["running"].is_object(), "{container} runs: {ready}");
        assert_eq!(status_of(&ready, container)["ready"], true, "{container} is ready: {ready}");
    }
    // The native sidecar started first and runs beside the main containers.
    let native = ready["status"]["initContainerStatuses"].as_array().and_then(|all| all.iter().find(|s| s["name"] == "native")).cloned().unwrap_or_default();
    assert!(native["state"]["running"].is_object(), "{ready}");
    let (code, describe, _) = server.cli(&["describe", "pod", "mixed"]);
    assert_eq!(code, 0);
    assert!(describe.contains("name: echo") && describe.contains("name: sidecar"), "{describe}");
    let data_plane = node_annotation(&server, "shoal.dev/data-addr").await;
    let http = reqwest::Client::new();
    // The component writes a file into the shared emptyDir…
    let wrote = http.post(format!("http://{data_plane}/_pods/default/mixed:8080/write?path=/shared/index.html")).body("written-by-wasm").send().await.expect("write");
    assert_eq!(wrote.status(), 200, "{:?}", wrote.text().await);
    // …and fetches it from the busybox sidecar at localhost:9090, which serves that directory.
    let fetched: Value = http.get(format!("http://{data_plane}/_pods/default/mixed:8080/fetch?url=http://localhost:9090/index.html")).send().await.expect("fetch").json().await.expect("json");
    assert_eq!(fetched["status"], 200, "{fetched}");
    assert_eq!(fetched["body"], "written-by-wasm", "{fetched}");
    // The init container ran first and its file is there too.
    let prepared: Value = http.get(format!("http://{data_plane}/_pods/default/mixed:8080/fetch?url=http://localhost:9090/prepared")).send().await.expect("fetch").json().await.expect("json");
    assert_eq!(prepared["body"], "prepared\n", "{prepared}");
    // Its subPath mounts in an OCI container: one key of the ConfigMap as a file, and a
    // directory of the emptyDir made for it, where it copied that file.
    let copied: Value = http.get(format!("http://{data_plane}/_pods/default/mixed:8080/fetch?url=http://localhost:9090/made/here/copied")).send().await.expect("fetch").json().await.expect("json");
    assert_eq!(copied["body"], "from-the-config-map", "{copied}");
    let listing: Value = http.get(format!("http://{data_plane}/_pods/default/mixed:8080/fetch?url=http://localhost:9090/made/here/listing")).send().await.expect("fetch").json().await.expect("json");
    let listing = listing["body"].as_str().unwrap_or_default();
    assert!(listing.contains("/etc/app.conf") && !listing.contains("other.conf"), "only the key is mounted, as a file: {listing}");
    // The sidecar reaches the component at localhost:8080.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, logs, _) = server.cli(&["logs", "mixed", "-c", "sidecar"]);
        if logs.contains("\"path\":\"/from-sidecar\"") {
            break;
        }
        assert!(Instant::now() < deadline, "the sidecar never reached the component at localhost:8080; its logs: {logs}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    delete_and_expect_nothing_left(&server, "mixed").await;
}

/// A busybox `nc` server on port 7000 that speaks first (a line of banner), then echoes, behind
/// a NodePort Service: a protocol an HTTP proxy could not carry.
fn banner_app(image: &str, node: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: banner, labels: {{app: banner}}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: nc
    image: {image}
    command: ["nc", "-ll", "-p", "7000", "-e", "sh", "-c", "echo banner from $(hostname); exec cat"]
    ports: [{{containerPort: 7000}}]
---
apiVersion: v1
kind: Service
metadata: {{name: banner}}
spec:
  type: NodePort
  selector: {{app: banner}}
  ports: [{{port: 7000, targetPort: 7000}}]
"#
    )
}

/// Connects to `address`, reads the line the server sends unasked, sends a line and reads its
/// echo.
async fn banner_and_echo(address: &str) -> Result<(String, String), String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(address).await.map_err(|e| e.to_string())?;
        let mut stream = tokio::io::BufReader::new(stream);
        let mut banner = String::new();
        stream.read_line(&mut banner).await.map_err(|e| e.to_string())?;
        stream.get_mut().write_all(b"ping over tcp\n").await.map_err(|e| e.to_string())?;
        let mut echo = String::new();
        stream.read_line(&mut echo).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((banner, echo))
    };
    tokio::time::timeout(Duration::from_secs(3), exchange).await.map_err(|_| "no answer within 3 s".to_owned())?
}

#[tokio::test]
async fn a_container_on_another_node_is_reached_through_that_nodes_data_plane() {
    let (_registry, image, server) = setup().await;
    let _agent = Agent::start_at_with(&server, "node-2", "127.0.0.2", &["--pod-cidr", &pod_cidr()]);
    wait_until(&server, "/api/v1/nodes/node-2", 60, "node-2 registering", |n| n["metadata"]["labels"]["shoal.dev/containers"] == "true").await;
    apply(&server, &httpd_app("remote", &image, "served-on-node-2", Some("node-2")));
    apply(&server, &banner_app(&image, "node-2"));
    wait_ready(&server, "remote", 90).await;
    // node-1's ingress forwards to node-2's data plane, which forwards to the container.
    let ingress = node_annotation(&server, "shoal.dev/ingress-addr").await;
    assert_eq!(through_ingress(&reqwest::Client::new(), &ingress, "remote.localhost").await, "served-on-node-2\n");

    // A NodePort to a container is raw TCP on every node: node-2 dials its pod, node-1 tunnels
    // through node-2's data plane. The server speaks first, which no HTTP proxy would carry.
    wait_ready(&server, "banner", 90).await;
    let (_, service) = server.get("/api/v1/namespaces/default/services/banner").await;
    let node_port = service["spec"]["ports"][0]["nodePort"].as_u64().expect("a node port");
    for node_ip in ["127.0.0.2", "127.0.0.1"] {
        let address = format!("{node_ip}:{node_port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match banner_and_echo(&address).await {
                Ok((banner, echo)) if !banner.is_empty() => {
                    assert_eq!((banner.as_str(), echo.as_str()), ("banner from banner\n", "ping over tcp\n"), "through {address}");
                    break;
                }
                other => assert!(Instant::now() < deadline, "node port {address} never carried TCP to the container: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    // Eight connections open at once, each its own stream. They are opened one after another:
    // busybox `nc -ll` listens with a backlog of 2, so a burst of connects would wait out SYN
    // retries in the kernel, which says nothing about the node.
    {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let within = |what: String| move |_| format!("{what}: no answer within 10 s");
        let mut streams = Vec::new();
        for i in 0..8 {
            let stream = tokio::net::TcpStream::connect(format!("127.0.0.1:{node_port}")).await.expect("connect to node-1's node port");
            let mut stream = tokio::io::BufReader::new(stream);
            let mut banner = String::new();
            tokio::time::timeout(Duration::from_secs(10), stream.read_line(&mut banner)).await.map_err(within(format!("banner {i}"))).unwrap().expect("read");
            assert_eq!(banner, "banner from banner\n");
            streams.push(stream);
        }
        for (i, stream) in streams.iter_mut().enumerate().rev() {
            stream.get_mut().write_all(format!("ping {i}\n").as_bytes()).await.expect("write");
        }
        for (i, stream) in streams.iter_mut().enumerate() {
            let mut echo = String::new();
            tokio::time::timeout(Duration::from_secs(10), stream.read_line(&mut echo)).await.map_err(within(format!("echo {i}"))).unwrap().expect("read");
            assert_eq!(echo, format!("ping {i}\n"), "each connection is its own stream");
        }
    }

    for pod in ["remote", "banner"] {
        let (code, _, stderr) = server.cli(&["delete", "pod", pod]);
        assert_eq!(code, 0, "{stderr}");
        wait_until(&server, &format!("/api/v1/namespaces/default/pods/{pod}"), 60, "the pod being deleted", |p| p["code"] == 404).await;
    }
}

#[tokio::test]
async fn the_scheduler_sends_container_pods_only_to_nodes_that_run_containers() {
    let (_registry, image, server) = setup().await;
    push(&server, "hello/hello.wasm", "shoal.local/samples/hello:1");
    let _agent = Agent::start_with(&server, "node-2", &["--disable-containers"]);
    // Ready as well as labelled: the Node is created first and its Ready status follows, and a
    // scheduler that saw it not ready yet would rightly place every pod on node-1.
    let node = wait_until(&server, "/api/v1/nodes/node-2", 60, "node-2 registering ready", |n| {
        n["metadata"]["labels"]["shoal.dev/containers"] == "false"
            && n["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
    .await;
    assert_eq!(node["metadata"]["labels"]["shoal.dev/wasm"], "true", "{node}");
    // No runtimeClassName: the scheduler learns from the images which pods hold containers.
    let pods: String = (0..4)
        .map(|i| {
            format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: box-{i}}}\nspec:\n  terminationGracePeriodSeconds: 0\n  containers: [{{name: main, image: {image}, command: [sleep, '3600']}}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: wasm-{i}}}\nspec:\n  containers: [{{name: main, image: shoal.local/samples/hello:1}}]\n"
            )
        })
        .collect();
    apply(&server, &pods);
    let mut wasm_nodes = std::collections::BTreeSet::new();
    for i in 0..4 {
        let placed = wait_until(&server, &format!("/api/v1/namespaces/default/pods/box-{i}"), 60, "a container pod being placed", |p| p["spec"]["nodeName"].is_string()).await;
        assert_eq!(placed["spec"]["nodeName"], "node-1", "container pods go to the node with containerd: {placed}");
        let wasm = wait_until(&server, &format!("/api/v1/namespaces/default/pods/wasm-{i}"), 60, "a Wasm pod being placed", |p| p["spec"]["nodeName"].is_string()).await;
        wasm_nodes.insert(wasm["spec"]["nodeName"].as_str().unwrap_or_default().to_owned());
    }
    assert!(wasm_nodes.contains("node-2"), "Wasm pods may use either node: {wasm_nodes:?}");
    for i in 0..4 {
        wait_ready(&server, &format!("box-{i}"), 90).await;
    }
    for i in 0..4 {
        delete_and_expect_nothing_left(&server, &format!("box-{i}")).await;
    }
}

/// Pushes `curl:1` to `registry`: busybox plus Debian's curl and the libraries `ldd` names, at
/// their paths, so a container has a TLS client that verifies certificates.
fn push_curl_image(registry: &DockerRegistry) -> String {
    let context = tempfile::tempdir().expect("tempdir");
    let root = context.path().join("root");
    let place = |from: &std::path::Path| {
        let to = root.join(from.strip_prefix("/").expect("absolute"));
        std::fs::create_dir_all(to.parent().expect("parent")).expect("directory");
        std::fs::copy(std::fs::canonicalize(from).expect("resolved"), &to).unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
    };
    let busybox = ["/bin/busybox", "/usr/bin/busybox"].into_iter().map(PathBuf::from).find(|p| p.exists()).expect("busybox-static must be installed (.ci/run installs it)");
    std::fs::create_dir_all(root.join("bin")).expect("bin");
    std::fs::copy(&busybox, root.join("bin/busybox")).expect("copy busybox");
    let curl = PathBuf::from("/usr/bin/curl");
    assert!(curl.exists(), "curl must be installed (.ci/run installs it)");
    place(&curl);
    let ldd = Command::new("ldd").arg(&curl).output().expect("ldd");
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = line.split("=>").last().and_then(|rest| rest.split_whitespace().next()).filter(|p| p.starts_with('/'));
        if let Some(path) = path {
            place(std::path::Path::new(path));
        }
    }
    std::fs::create_dir_all(root.join("etc")).expect("etc");
    std::fs::write(root.join("etc/nsswitch.conf"), "hosts: files dns\n").expect("nsswitch");
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM scratch\nCOPY root/ /\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nCMD [\"/bin/sh\"]\n",
    )
    .expect("Dockerfile");
    let reference = format!("{}/curl:1", registry.host);
    build_and_push(context.path(), &reference);
    reference
}

#[tokio::test]
async fn a_container_calls_the_api_with_its_mounted_token_by_cluster_ip_and_by_name() {
    let (registry, _) = busybox_registry().await;
    let image = push_curl_image(&registry);
    let server = server().await;
    // curl checks the API's certificate against the mounted CA, for the cluster IP and for the
    // Service's name.
    let script = r#"D=/var/run/secrets/kubernetes.io/serviceaccount; T=$(cat $D/token); echo ns=$(cat $D/namespace); head -1 $D/ca.crt; curl -sS --fail-with-body --cacert $D/ca.crt -H "Authorization: Bearer $T" https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/api/v1/namespaces/default/pods/incluster && echo && curl -sS --fail-with-body --cacert $D/ca.crt -H "Authorization: Bearer $T" https://kubernetes.default.svc/api/v1/namespaces/default/pods && echo && curl -sS -o /dev/null -w "secrets=%{http_code}\n" --cacert $D/ca.crt -H "Authorization: Bearer $T" https://kubernetes.default.svc.cluster.local/api/v1/namespaces/default/secrets"#;
    apply(
        &server,
        &format!(
            r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: pod-reader}}
rules: [{{apiGroups: [""], resources: [pods], verbs: [get, list]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: default-reads-pods}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}}
subjects: [{{kind: ServiceAccount, name: default, namespace: default}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: incluster}}
spec:
  restartPolicy: Never
  containers:
  - name: client
    image: {image}
    command: ["sh", "-c", {script}]
"#,
            script = serde_json::to_string(script).expect("a YAML double-quoted string"),
        ),
    );
    let done = wait_until(&server, "/api/v1/namespaces/default/pods/incluster", 90, "the in-cluster client finishing", |p| matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))).await;
    let (_, logs, _) = server.cli(&["logs", "incluster"]);
    assert_eq!(done["status"]["phase"], "Succeeded", "{logs}");
    assert!(logs.contains("ns=default") && logs.contains("-----BEGIN CERTIFICATE-----"), "the namespace and the CA are mounted: {logs}");
    assert!(logs.contains(r#""kind":"Pod""#) && logs.contains(r#""name":"incluster""#), "the pod read itself by the cluster IP: {logs}");
    assert!(logs.contains(r#""kind":"PodList""#), "and listed pods by the Service's name: {logs}");
    assert!(logs.contains("secrets=403"), "Secrets are not granted: {logs}");
    delete_and_expect_nothing_left(&server, "incluster").await;
}
