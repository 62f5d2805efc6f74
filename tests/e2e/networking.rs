//! Services, the Service proxy, node ports and the ingress router, end to end: a real server
//! (`node-1` on 127.0.0.1) and a real agent (`node-2` on 127.0.0.2), the sample components, real
//! HTTP through each node's ingress, curl for TLS, and wrk for load during a rollout.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Agent, Server, ingress_of, push, repository, wait_until};


async fn two_nodes() -> (Server, Agent) {
    // The server's node serves its connections on reactor threads (node-2 on the shared runtime),
    // so both shapes carry Services, the ingress, node ports and the zero-failure rollout.
    let server = Server::start_with(&["--data-plane-threads", "2"]).await;
    let agent = Agent::start_at(&server, "node-2", "127.0.0.2");
    wait_until(&server, "/api/v1/nodes", 60, "both nodes registering ready", |list| {
        list["items"].as_array().is_some_and(|nodes| {
            nodes.len() == 2 && nodes.iter().all(|n| n["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        })
    })
    .await;
    (server, agent)
}

fn deployment(name: &str, labels: Value, replicas: i64, image: &str, greeting: &str, readiness: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"deployment": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 3}},
            "template": {"metadata": {"labels": merge(json!({"deployment": name}), labels)}, "spec": {
                "terminationGracePeriodSeconds": 5,
                "containers": [{
                "name": "app", "image": image,
                "env": [{"name": "GREETING", "value": greeting}],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": readiness}]}}}
    })
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Some(b)) = (a.as_object_mut(), b.as_object()) {
        for (k, v) in b {
            a.insert(k.clone(), v.clone());
        }
    }
    a
}

fn http_ready() -> Value {
    json!({"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1})
}

fn service(name: &str, selector: Value, service_type: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
        "spec": {"type": service_type, "selector": selector, "ports": [{"name": "web", "port": 80, "targetPort": "http"}]}})
}

fn ingress(name: &str, host: &str, paths: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": name},
        "spec": {"rules": [{"host": host, "http": {"paths": paths}}]}})
}

fn backend(path: &str, path_type: &str, service: &str) -> Value {
    json!({"path": path, "pathType": path_type, "backend": {"service": {"name": service, "port": {"number": 80}}}})
}

async fn create(server: &Server, path: &str, object: &Value) {
    let (code, body) = server.post(path, object).await;
    assert_eq!(code, 201, "creating {}: {body}", object["metadata"]["name"]);
}

/// Waits until a Service's slices list `ready` ready endpoints (and `total` in all).
async fn wait_endpoints(server: &Server, service: &str, ready: usize, total: usize) -> Vec<Value> {
    let path = format!("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io/service-name={service}");
    let list = wait_until(server, &path, 90, &format!("{ready} ready of {total} endpoints for {service}"), |list| {
        let endpoints: Vec<&Value> = list["items"].as_array().into_iter().flatten().flat_map(|s| s["endpoints"].as_array().into_iter().flatten()).collect();
        endpoints.len() == total && endpoints.iter().filter(|e| e["conditions"]["ready"] == true).count() == ready
    })
    .await;
    list["items"].as_array().into_iter().flatten().flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default()).collect()
}

struct Answer {
    status: u16,
    pod: String,
    body: String,
    headers: reqwest::header::HeaderMap,
}

async fn get(http: &reqwest::Client, address: &str, host: &str, path: &str) -> Answer {
    let response = http.get(format!("http://{address}{path}")).header("Host", host).send().await.expect("request through the ingress");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let pod = headers.get("x-shoal-pod").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let body = response.text().await.expect("body");
    Answer { status, pod, body, headers }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_balance_over_two_nodes_and_guests_call_them_by_name() {
    let (server, _agent) = two_nodes().await;
    push(&server, "hello/hello.wasm", "shoal.local/samples/hello:latest");
    push(&server, "echo/echo.wasm", "shoal.local/samples/echo:latest");
    let hello_image = "shoal.local/samples/hello:latest";
    let deployments = "/apis/apps/v1/namespaces/default/deployments";
    let services = "/api/v1/namespaces/default/services";
    let ingresses = "/apis/networking.k8s.io/v1/namespaces/default/ingresses";
    create(&server, deployments, &deployment("hello", json!({"app": "hello"}), 4, hello_image, "hello from shoal", http_ready())).await;
    create(&server, deployments, &deployment("echo", json!({"app": "echo"}), 1, "shoal.local/samples/echo:latest", "", json!(null))).await;
    // `mixed` selects a ready pod and a pod whose readiness probe never passes.
    create(&server, deployments, &deployment("ready-one", json!({"tier": "mixed"}), 1, hello_image, "ready", http_ready())).await;
    create(&server, deployments, &deployment("never-ready", json!({"tier": "mixed"}), 1, hello_image, "not ready", json!({"tcpSocket": {"port": 9}, "periodSeconds": 1}))).await;
    create(&server, services, &service("hello", json!({"app": "hello"}), "NodePort")).await;
    create(&server, services, &service("echo", json!({"app": "echo"}), "ClusterIP")).await;
    create(&server, services, &service("mixed", json!({"tier": "mixed"}), "ClusterIP")).await;
    create(&server, services, &service("empty", json!({"app": "nothing"}), "ClusterIP")).await;
    create(&server, ingresses, &ingress("hello", "hello.test", json!([backend("/", "Prefix", "hello"), backend("/echo", "Prefix", "echo"), backend("/exact", "Exact", "mixed")]))).await;
    create(&server, ingresses, &ingress("echo", "echo.test", json!([backend("/", "Prefix", "echo")]))).await;
    create(&server, ingresses, &ingress("mixed", "mixed.test", json!([backend("/", "Prefix", "mixed")]))).await;
    create(&server, ingresses, &ingress("empty", "empty.test", json!([backend("/", "Prefix", "empty")]))).await;

    // Ingresses without a class get the default one; Services get addresses from the service
    // CIDR and node ports from the range.
    let (_, stored) = server.get(&format!("{ingresses}/hello")).await;
    assert_eq!(stored["spec"]["ingressClassName"], "shoal", "{stored}");
    let (_, hello_service) = server.get(&format!("{services}/hello")).await;
    let cluster_ip = hello_service["spec"]["clusterIP"].as_str().expect("a cluster IP");
    assert!(cluster_ip.starts_with("10.43."), "{hello_service}");
    let node_port = hello_service["spec"]["ports"][0]["nodePort"].as_u64().expect("a node port");
    assert!((30000..=32767).contains(&node_port));

    let endpoints = wait_endpoints(&server, "hello", 4, 4).await;
    let node_of: BTreeMap<String, String> = endpoints.iter().map(|e| (e["targetRef"]["name"].as_str().unwrap_or_default().to_owned(), e["nodeName"].as_str().unwrap_or_default().to_owned())).collect();
    assert_eq!(node_of.values().collect::<BTreeSet<_>>().len(), 2, "the scheduler spreads hello over both nodes: {node_of:?}");
    // The legacy Endpoints object is written after the slices, in the same reconcile.
    wait_until(&server, "/api/v1/namespaces/default/endpoints/hello", 30, "4 ready addresses in the Endpoints", |e| {
        e["subsets"][0]["addresses"].as_array().map(Vec::len) == Some(4) && e["subsets"][0]["notReadyAddresses"].is_null()
    })
    .await;
    wait_endpoints(&server, "echo", 1, 1).await;
    wait_endpoints(&server, "mixed", 1, 2).await;

    let http = reqwest::Client::new();
    let (ingress_1, _) = ingress_of(&server, "node-1").await;
    let (ingress_2, _) = ingress_of(&server, "node-2").await;
    for entry in [&ingress_1, &ingress_2] {
        // The nodes learn of the slices through their own watches, a moment after the API.
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut seen = BTreeSet::new();
        while seen.len() < 2 {
            let answer = get(&http, entry, "hello.test", "/").await;
            if answer.status == 200 {
                seen.extend(node_of.get(&answer.pod).cloned());
            }
            assert!(Instant::now() < deadline, "the ingress at {entry} reached only {seen:?}; last: {} {}", answer.status, answer.body);
        }
        let mut answered_on = BTreeSet::new();
        for _ in 0..40 {
            let answer = get(&http, entry, "hello.test", "/").await;
            assert_eq!((answer.status, answer.body.as_str()), (200, "hello from shoal\n"));
            answered_on.insert(node_of.get(&answer.pod).cloned().unwrap_or_else(|| panic!("an unknown pod answered: {}", answer.pod)));
        }
        assert_eq!(answered_on.len(), 2, "requests entering at {entry} reach pods on both nodes");
    }

    // Host and path routing; forwarded headers.
    let echoed = get(&http, &ingress_1, "hello.test", "/echo/x?y=1").await;
    assert_eq!(echoed.status, 200, "{}", echoed.body);
    let echoed: Value = serde_json::from_str(&echoed.body).expect("echo answers JSON");
    assert_eq!(echoed["path"], "/echo/x");
    let header = |name: &str| echoed["headers"].as_array().into_iter().flatten().find(|h| h[0] == name).map(|h| h[1].as_str().unwrap_or_default().to_owned());
    assert_eq!(header("x-forwarded-host").as_deref(), Some("hello.test"), "{echoed}");
    assert_eq!(header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(get(&http, &ingress_1, "hello.test", "/exact").await.body, "ready\n", "Exact beats the / prefix");
    assert_eq!(get(&http, &ingress_1, "hello.test", "/exact/more").await.body, "hello from shoal\n");
    assert_eq!(get(&http, &ingress_1, "unknown.test", "/").await.status, 404);
    let empty = get(&http, &ingress_1, "empty.test", "/").await;
    assert_eq!(empty.status, 503, "{}", empty.body);
    assert!(empty.headers.contains_key("retry-after"));

    // A pod failing readiness gets no traffic.
    for _ in 0..20 {
        assert_eq!(get(&http, &ingress_2, "mixed.test", "/").await.body, "ready\n");
    }

    // Guests call Services by name, in-process or across nodes.
    for url in ["http://hello.default.svc.cluster.local/", "http://hello/", "http://hello.default:80/", &format!("http://{cluster_ip}/")] {
        let fetched = get(&http, &ingress_1, "echo.test", &format!("/fetch?url={url}")).await;
        assert_eq!(fetched.status, 200, "{url}: {}", fetched.body);
        assert!(fetched.body.contains("hello from shoal"), "{url}: {}", fetched.body);
    }

    // Node ports on both nodes.
    for address in ["127.0.0.1", "127.0.0.2"] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match http.get(format!("http://{address}:{node_port}/")).send().await {
                Ok(response) if response.status() == 200 => {
                    assert_eq!(response.text().await.expect("body"), "hello from shoal\n");
                    break;
                }
                other => assert!(Instant::now() < deadline, "node port {node_port} on {address}: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // The Ingress status lists the nodes running a router (kubectl's ADDRESS column).
    wait_until(&server, &format!("{ingresses}/hello"), 30, "the Ingress status", |i| {
        let ips: BTreeSet<&str> = i["status"]["loadBalancer"]["ingress"].as_array().into_iter().flatten().filter_map(|e| e["ip"].as_str()).collect();
        ips == BTreeSet::from(["127.0.0.1", "127.0.0.2"])
    })
    .await;

    // LoadBalancer: the status lists the nodes' addresses (every node serves the node port).
    let patch = serde_json::to_vec(&json!({"spec": {"type": "LoadBalancer"}})).expect("json");
    let (code, body) = server.request(reqwest::Method::PATCH, &format!("{services}/hello"), Some(("application/merge-patch+json", patch))).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["spec"]["ports"][0]["nodePort"], node_port, "the node port is kept");
    wait_until(&server, &format!("{services}/hello"), 30, "the LoadBalancer status", |s| {
        let ips: BTreeSet<&str> = s["status"]["loadBalancer"]["ingress"].as_array().into_iter().flatten().filter_map(|i| i["ip"].as_str()).collect();
        ips == BTreeSet::from(["127.0.0.1", "127.0.0.2"])
    })
    .await;
}

/// A self-signed certificate and key for `host`, as PEM.
fn certificate(host: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let certificate = rcgen::CertificateParams::new(vec![host.to_owned()]).expect("params").self_signed(&key).expect("certificate");
    (certificate.pem(), key.serialize_pem())
}

fn tls_secret(name: &str, (certificate, key): &(String, String)) -> Value {
    use base64::Engine;
    let encode = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "kubernetes.io/tls",
        "data": {"tls.crt": encode(certificate), "tls.key": encode(key)}})
}

/// `curl --resolve` over TLS trusting `ca`; returns (exit code, HTTP version, body).
fn curl_tls(port: &str, ca: &std::path::Path, extra: &[&str]) -> (i32, String, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--resolve", &format!("secure.test:{port}:127.0.0.1"), "--cacert"])
        .arg(ca)
        .args(extra)
        .args(["-w", "\n%{http_version}", &format!("https://secure.test:{port}/")])
        .output()
        .expect("curl is installed (.ci/run installs it)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, version) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (output.status.code().unwrap_or(-1), version.to_owned(), format!("{body}{}", String::from_utf8_lossy(&output.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingress_serves_tls_by_sni_and_picks_up_a_rotated_certificate() {
    let server = Server::start().await;
    push(&server, "hello/hello.wasm", "shoal.local/samples/hello:latest");
    create(&server, "/apis/apps/v1/namespaces/default/deployments", &deployment("hello", json!({"app": "hello"}), 1, "shoal.local/samples/hello:latest", "hello over tls", http_ready())).await;
    create(&server, "/api/v1/namespaces/default/services", &service("hello", json!({"app": "hello"}), "ClusterIP")).await;
    let first = certificate("secure.test");
    create(&server, "/api/v1/namespaces/default/secrets", &tls_secret("secure-tls", &first)).await;
    let mut object = ingress("secure", "secure.test", json!([backend("/", "Prefix", "hello")]));
    object["spec"]["tls"] = json!([{"hosts": ["secure.test"], "secretName": "secure-tls"}]);
    create(&server, "/apis/networking.k8s.io/v1/namespaces/default/ingresses", &object).await;
    wait_endpoints(&server, "hello", 1, 1).await;
    let (_, tls_address) = ingress_of(&server, "node-1").await;
    let port = tls_address.rsplit_once(':').expect("host:port").1.to_owned();
    let directory = tempfile::tempdir().expect("tempdir");
    let (first_ca, second_ca) = (directory.path().join("first.pem"), directory.path().join("second.pem"));
    std::fs::write(&first_ca, &first.0).expect("write");

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, version, body) = curl_tls(&port, &first_ca, &["--http2"]);
        if code == 0 {
            assert_eq!((version.as_str(), body.as_str()), ("2", "hello over tls\n"), "HTTP/2 over TLS (ALPN)");
            break;
        }
        assert!(Instant::now() < deadline, "curl over TLS kept failing: {code} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, version, body) = curl_tls(&port, &first_ca, &["--http1.1"]);
    assert_eq!((code, version.as_str(), body.as_str()), (0, "1.1", "hello over tls\n"));

    // Rotation: replace the Secret; new connections get the new certificate, no restart.
    let second = certificate("secure.test");
    std::fs::write(&second_ca, &second.0).expect("write");
    let (_, mut stored) = server.get("/api/v1/namespaces/default/secrets/secure-tls").await;
    stored["data"] = tls_secret("secure-tls", &second)["data"].clone();
    let (code, body) = server.put("/api/v1/namespaces/default/secrets/secure-tls", &stored).await;
    assert_eq!(code, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (code, _, body) = curl_tls(&port, &second_ca, &[]);
        if code == 0 {
            assert_eq!(body, "hello over tls\n");
            break;
        }
        assert!(Instant::now() < deadline, "the rotated certificate was not served within 5 s: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, _, _) = curl_tls(&port, &first_ca, &[]);
    assert_ne!(code, 0, "the old certificate is no longer served");
}

/// Parses wrk's summary: (requests, non-2xx/3xx responses, socket errors).
fn wrk_summary(output: &str) -> (u64, u64, u64) {
    let requests = output.lines().find_map(|l| l.trim().split_once(" requests in ").and_then(|(n, _)| n.trim().parse().ok())).unwrap_or(0);
    let non_2xx = output.lines().find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:").and_then(|n| n.trim().parse().ok())).unwrap_or(0);
    let socket_errors = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map(|rest| rest.split(',').filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    (requests, non_2xx, socket_errors)
}

#[test]
fn wrk_summaries_parse() {
    let output = "  2 threads and 8 connections\n  5000 requests in 10.00s, 1.2MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 7\n";
    assert_eq!(wrk_summary(output), (5000, 7, 3));
}

/// A wrk script's part that prints the first five failed responses (status, seconds into the
/// run, body) when wrk finishes; wrk counts a status above 399 as failed.
const WRK_FAILURES: &str = r#"
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) failed = 0; failures = ""; started = os.time() end
function response(status, headers, body)
  if status > 399 then
    failed = failed + 1
    if failed <= 5 then failures = failures .. "failed response: " .. status .. " at " .. (os.time() - started) .. " s: " .. body .. "\n" end
  end
end
function done(summary, latency, requests)
  for _, thread in ipairs(threads) do io.write(thread:get("failures")) end
end
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_of_ten_replicas_under_load_fails_no_request() {
    let (server, agent) = two_nodes().await;
    push(&server, "hello/hello.wasm", "shoal.local/samples/hello:latest");
    create(&server, "/apis/apps/v1/namespaces/default/deployments", &deployment("web", json!({"app": "web"}), 10, "shoal.local/samples/hello:latest", "v1", http_ready())).await;
    create(&server, "/api/v1/namespaces/default/services", &service("web", json!({"app": "web"}), "ClusterIP")).await;
    create(&server, "/apis/networking.k8s.io/v1/namespaces/default/ingresses", &ingress("web", "web.test", json!([backend("/", "Prefix", "web")]))).await;
    wait_endpoints(&server, "web", 10, 10).await;
    let (ingress_1, _) = ingress_of(&server, "node-1").await;

    // GETs, and POSTs with a 2 KiB body (which the proxy must replay to retry elsewhere). Both
    // scripts print the first failed responses, so a failure says which status and why.
    let get_script = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(get_script.path(), WRK_FAILURES).expect("write the wrk script");
    let post_script = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(post_script.path(), format!("wrk.method = \"POST\"\nwrk.body = string.rep(\"x\", 2048)\nwrk.headers[\"Content-Type\"] = \"text/plain\"\n{WRK_FAILURES}")).expect("write the wrk script");
    let load = |script: &Path| {
        Command::new("wrk")
            .args(["-t1", "-c8", "-d45s", "-H", "Host: web.test", "-s"])
            .arg(script)
            .arg(format!("http://{ingress_1}/"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("wrk is installed (.ci/run installs it)")
    };
    let gets = load(get_script.path());
    let posts = load(post_script.path());
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A merge patch replaces the containers list, so it carries the whole container.
    let container = deployment("web", json!({"app": "web"}), 10, "shoal.local/samples/hello:latest", "v2", http_ready())["spec"]["template"]["spec"]["containers"][0].clone();
    let patch = serde_json::to_vec(&json!({"spec": {"template": {"spec": {"containers": [container]}}}})).expect("json");
    let (code, body) = server.request(reqwest::Method::PATCH, "/apis/apps/v1/namespaces/default/deployments/web", Some(("application/merge-patch+json", patch))).await;
    assert_eq!(code, 200, "{body}");
    let started = Instant::now();
    wait_until(&server, "/apis/apps/v1/namespaces/default/deployments/web", 90, "the rollout to finish", |d| {
        let status = &d["status"];
        status["observedGeneration"] == d["metadata"]["generation"] && status["updatedReplicas"] == 10 && status["replicas"] == 10 && status["availableReplicas"] == 10
    })
    .await;
    let rollout = started.elapsed();
    assert!(rollout < Duration::from_secs(42), "the rollout ({rollout:?}) must finish while wrk is still running, or the test proves nothing");
    for (what, wrk) in [("GET", gets), ("POST", posts)] {
        let output = wrk.wait_with_output().expect("wrk ran");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "wrk {what}: {text}{}", String::from_utf8_lossy(&output.stderr));
        let (requests, non_2xx, socket_errors) = wrk_summary(&text);
        assert!(requests > 1000, "wrk sent too few {what} requests to mean anything: {text}");
        assert_eq!((non_2xx, socket_errors), (0, 0), "{what} requests failed during the rollout:\n{text}\n{}\n{}", server.log_problems(), agent.log_problems());
    }
    // Every old pod is gone and the new ones answer.
    let http = reqwest::Client::new();
    wait_endpoints(&server, "web", 10, 10).await;
    for _ in 0..10 {
        assert_eq!(get(&http, &ingress_1, "web.test", "/").await.body, "v2\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_the_sample_and_deploy_prints_a_url_that_serves() {
    let directory = tempfile::tempdir().expect("tempdir");
    let data_dir = directory.path().join("data");
    let mut up = Command::new(crate::harness::shoal_binary())
        .current_dir(repository())
        .arg("up")
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--api-addr", "127.0.0.1:0", "--data-addr", "127.0.0.1:0", "--ingress-addr", "127.0.0.1:0", "--ingress-tls-addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(directory.path().join("up.log")).expect("log"))
        .spawn()
        .expect("shoal up");
    let stdout = up.stdout.take().expect("stdout");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let url = loop {
        let line = receiver.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("`up` prints the sample's URL within 120 s");
        if let Some(url) = line.strip_prefix("the sample app is serving at ") {
            break url.to_owned();
        }
    };
    let rest = url.strip_prefix("http://hello.localhost:").expect("the sample's URL is http://hello.localhost:PORT/");
    let port = rest.trim_end_matches('/');
    let http = reqwest::Client::new();
    let answer = get(&http, &format!("127.0.0.1:{port}"), "hello.localhost", "/").await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "hello from shoal\n"));

    let echo = repository().join("samples/echo/echo.wasm");
    let output = Command::new(crate::harness::shoal_binary())
        .arg("--kubeconfig")
        .arg(data_dir.join("admin.kubeconfig"))
        .args(["deploy", echo.to_str().expect("utf-8"), "--name", "echoapp", "--replicas", "2", "--env", "MODE=test"])
        .output()
        .expect("shoal deploy");
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{printed}{}", String::from_utf8_lossy(&output.stderr));
    assert!(printed.contains("successfully rolled out"), "{printed}");
    let url = printed.lines().last().unwrap_or_default().to_owned();
    assert_eq!(url, format!("http://echoapp.localhost:{port}/"), "{printed}");
    let answer = get(&http, &format!("127.0.0.1:{port}"), "echoapp.localhost", "/hi").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body.contains("\"path\":\"/hi\""), "{}", answer.body);
    // A command component is refused before anything is pushed.
    let worker = repository().join("samples/worker/worker.wasm");
    let output = Command::new(crate::harness::shoal_binary())
        .arg("--kubeconfig")
        .arg(data_dir.join("admin.kubeconfig"))
        .args(["deploy", worker.to_str().expect("utf-8"), "--name", "worker"])
        .output()
        .expect("shoal deploy");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a wasi:http component"), "{}", String::from_utf8_lossy(&output.stderr));
    let _ = Command::new("kill").args(["-TERM", &up.id().to_string()]).status();
    let status = up.wait().expect("up exits");
    assert!(status.success(), "shoal up exited with {status} on SIGTERM");
}

/// An echo pod on `node` running as `account`, its Service and an Ingress host `NAME.api.test`.
async fn in_cluster_client(server: &Server, name: &str, node: &str, account: &str) {
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"client": name}},
        "spec": {"nodeName": node, "serviceAccountName": account, "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "app", "image": "shoal.local/samples/echo:latest", "ports": [{"name": "http", "containerPort": 8080}]}]}});
    create(server, "/api/v1/namespaces/default/pods", &pod).await;
    create(server, "/api/v1/namespaces/default/services", &service(name, json!({"client": name}), "ClusterIP")).await;
    create(server, "/apis/networking.k8s.io/v1/namespaces/default/ingresses", &ingress(name, &format!("{name}.api.test"), json!([backend("/", "Prefix", name)]))).await;
}

/// What `/kube?path=…` of the pod behind `host` got from the API: (status, body).
async fn guest_calls_api(http: &reqwest::Client, ingress: &str, host: &str, query: &str) -> (u64, Value) {
    let answer = get(http, ingress, host, &format!("/kube?{query}")).await;
    assert_eq!(answer.status, 200, "{host} /kube?{query}: {}", answer.body);
    let answer: Value = serde_json::from_str(&answer.body).expect("echo answers JSON");
    let body = serde_json::from_str(answer["body"].as_str().unwrap_or_default()).unwrap_or(Value::Null);
    (answer["status"].as_u64().unwrap_or_default(), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_reach_the_api_with_the_token_mounted_for_their_service_account() {
    let (server, _agent) = two_nodes().await;
    push(&server, "echo/echo.wasm", "shoal.local/samples/echo:latest");
    let account = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}});
    create(&server, "/api/v1/namespaces/default/serviceaccounts", &account).await;
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]});
    create(&server, "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles", &role).await;
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "reader-reads-pods"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": "default"}]});
    create(&server, "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings", &binding).await;
    // One reader on each node (node-2 requests its token with its own node credential), and a
    // pod running as the namespace's default account.
    in_cluster_client(&server, "reader-1", "node-1", "reader").await;
    in_cluster_client(&server, "reader-2", "node-2", "reader").await;
    in_cluster_client(&server, "plain", "node-2", "default").await;

    // The API gave each pod the projected volume, mounted where client libraries look.
    let (_, pod) = server.get("/api/v1/namespaces/default/pods/reader-2").await;
    let volume = pod["spec"]["volumes"].as_array().into_iter().flatten().find(|v| v["name"].as_str().is_some_and(|n| n.starts_with("kube-api-access-"))).cloned().expect("a kube-api-access volume");
    let sources: Vec<&str> = volume["projected"]["sources"].as_array().into_iter().flatten().filter_map(|s| s.as_object()?.keys().next().map(String::as_str)).collect();
    assert_eq!(sources, ["serviceAccountToken", "configMap", "downwardAPI"], "{volume}");
    assert_eq!(pod["spec"]["containers"][0]["volumeMounts"][0], json!({"name": volume["name"], "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}));
    // Asking for no token gets none.
    let mut unmounted = pod.clone();
    unmounted["metadata"] = json!({"name": "no-token"});
    unmounted["spec"]["automountServiceAccountToken"] = json!(false);
    unmounted["spec"]["volumes"] = json!([]);
    unmounted["spec"]["containers"][0]["volumeMounts"] = json!([]);
    let (code, created) = server.post("/api/v1/namespaces/default/pods?dryRun=All", &unmounted).await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["spec"]["volumes"], json!([]), "{created}");
    // A pod naming an account that does not exist is refused (kube's ServiceAccount admission),
    // dry run or not.
    let mut stranger = unmounted.clone();
    stranger["metadata"] = json!({"name": "stranger"});
    stranger["spec"]["serviceAccountName"] = json!("nobody");
    for path in ["/api/v1/namespaces/default/pods?dryRun=All", "/api/v1/namespaces/default/pods"] {
        let (code, refused) = server.post(path, &stranger).await;
        assert_eq!(code, 403, "{refused}");
        assert_eq!(refused["message"], r#"pods "stranger" is forbidden: error looking up service account default/nobody: serviceaccount "nobody" not found"#, "{refused}");
    }
    let (code, _) = server.get("/api/v1/namespaces/default/pods/stranger").await;
    assert_eq!(code, 404, "nothing was stored");

    let (ingress, _) = ingress_of(&server, "node-1").await;
    let http = reqwest::Client::new();
    for name in ["reader-1", "reader-2", "plain"] {
        wait_endpoints(&server, name, 1, 1).await;
    }
    let read = |host: &'static str, file: &'static str| {
        let (http, ingress) = (http.clone(), ingress.clone());
        async move { get(&http, &ingress, host, &format!("/read?path=/var/run/secrets/kubernetes.io/serviceaccount/{file}")).await }
    };
    let namespace = read("reader-2.api.test", "namespace").await;
    assert_eq!((namespace.status, namespace.body.as_str()), (200, "default"));
    let ca = read("reader-2.api.test", "ca.crt").await;
    assert_eq!(ca.body, std::fs::read_to_string(server.data_dir.join("pki/ca.crt")).expect("the cluster CA"), "the CA the API's certificate is signed by");
    let token = read("reader-1.api.test", "token").await;
    assert!(token.status == 200 && token.body.starts_with("eyJ") && token.body.split('.').count() == 3, "a JWT: {}", token.body);

    // Each reader lists pods through `https://kubernetes.default.svc` as its account.
    for host in ["reader-1.api.test", "reader-2.api.test"] {
        let (status, list) = guest_calls_api(&http, &ingress, host, "path=/api/v1/namespaces/default/pods").await;
        assert_eq!(status, 200, "{host}: {list}");
        let names: Vec<&str> = list["items"].as_array().into_iter().flatten().filter_map(|p| p["metadata"]["name"].as_str()).collect();
        assert!(names.contains(&"reader-1") && names.contains(&"plain"), "{names:?}");
        let (status, refused) = guest_calls_api(&http, &ingress, host, "path=/api/v1/namespaces/default/secrets").await;
        assert_eq!(status, 403, "{refused}");
        assert!(refused["message"].as_str().is_some_and(|m| m.contains(r#"User "system:serviceaccount:default:reader" cannot list resource "secrets""#)), "{refused}");
    }
    // By the cluster IP and port that KUBERNETES_SERVICE_HOST and _PORT give, too.
    let service_host = get(&http, &ingress, "reader-2.api.test", "/env?name=KUBERNETES_SERVICE_HOST").await.body;
    let service_port = get(&http, &ingress, "reader-2.api.test", "/env?name=KUBERNETES_SERVICE_PORT").await.body;
    let (_, kubernetes) = server.get("/api/v1/namespaces/default/services/kubernetes").await;
    assert_eq!((service_host.as_str(), service_port.as_str()), (kubernetes["spec"]["clusterIP"].as_str().unwrap_or("?"), "443"));
    let (status, _) = guest_calls_api(&http, &ingress, "reader-2.api.test", &format!("host={service_host}:{service_port}&path=/api/v1/namespaces/default/pods/reader-2")).await;
    assert_eq!(status, 200);
    // The default account is granted nothing.
    let (status, refused) = guest_calls_api(&http, &ingress, "plain.api.test", "path=/api/v1/namespaces/default/pods").await;
    assert_eq!(status, 403, "{refused}");
    assert!(refused["message"].as_str().is_some_and(|m| m.contains("system:serviceaccount:default:default")), "{refused}");

    // The token is bound to its pod: it opens the API from outside too, until the pod is gone.
    let outside = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.body.as_bytes()).expect("ca"))
        .build()
        .expect("client");
    let with_token = || outside.get(format!("{}/api/v1/namespaces/default/pods", server.url)).bearer_auth(&token.body).send();
    assert_eq!(with_token().await.expect("request").status(), 200);
    let (code, _) = server.request(reqwest::Method::DELETE, "/api/v1/namespaces/default/pods/reader-1", None).await;
    assert_eq!(code, 200);
    wait_until(&server, "/api/v1/namespaces/default/pods/reader-1", 60, "the pod being gone", |p| p["code"] == 404).await;
    assert_eq!(with_token().await.expect("request").status(), 401, "a token bound to a deleted pod");
}
