//! The HTTP API against a real server: authentication, CRUD, conflicts, validation, limits,
//! patches, selectors, pagination and watches.

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Server, config_map, deployment};

const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/default/deployments";

/// A server without controllers: these tests are about the API's own semantics, and a
/// Deployment controller writing between a test's read and its write would change the outcome.
async fn api_server() -> Server {
    Server::start_with(&["--disable-controllers"]).await
}
const CONFIGMAPS: &str = "/api/v1/namespaces/default/configmaps";

#[tokio::test]
async fn requests_without_a_valid_token_get_401_but_health_is_open() {
    let server = api_server().await;
    let response = server.http.get(format!("{}/api/v1/namespaces/default/pods", server.url)).send().await.expect("request");
    assert_eq!(response.status().as_u16(), 401);
    let status: Value = response.json().await.expect("status body");
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "Unauthorized");
    let wrong = server.http.get(format!("{}/api/v1/pods", server.url)).bearer_auth("not-the-token").send().await.expect("request");
    assert_eq!(wrong.status().as_u16(), 401);
    for open in ["/healthz", "/readyz", "/livez", "/version"] {
        let response = server.http.get(format!("{}{open}", server.url)).send().await.expect("request");
        assert_eq!(response.status().as_u16(), 200, "{open}");
    }
    let (_, version) = server.get("/version").await;
    let git_version = version["gitVersion"].as_str().unwrap_or_default();
    assert!(git_version.starts_with("v1.") && git_version.contains("+shoal."), "{git_version}");
}

#[tokio::test]
async fn create_get_update_conflict_and_delete() {
    let server = api_server().await;
    let (code, created) = server.post(DEPLOYMENTS, &deployment("web")).await;
    assert_eq!(code, 201, "{created}");
    let metadata = &created["metadata"];
    assert!(!metadata["uid"].as_str().unwrap_or_default().is_empty());
    assert!(metadata["creationTimestamp"].as_str().is_some());
    assert_eq!(metadata["generation"], 1);
    let first_rv: u64 = metadata["resourceVersion"].as_str().and_then(|rv| rv.parse().ok()).expect("numeric resourceVersion");
    assert_eq!(created["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%", "defaults applied");
    assert_eq!(created["spec"]["template"]["spec"]["restartPolicy"], "Always");

    let (code, duplicate) = server.post(DEPLOYMENTS, &deployment("web")).await;
    assert_eq!(code, 409);
    assert_eq!(duplicate["reason"], "AlreadyExists");
    assert_eq!(duplicate["message"], "deployments.apps \"web\" already exists");

    let mut changed = created.clone();
    changed["spec"]["replicas"] = json!(5);
    let (code, updated) = server.put(&format!("{DEPLOYMENTS}/web"), &changed).await;
    assert_eq!(code, 200, "{updated}");
    assert_eq!(updated["metadata"]["generation"], 2, "a spec change bumps generation");
    assert_eq!(updated["metadata"]["uid"], created["metadata"]["uid"]);
    let second_rv: u64 = updated["metadata"]["resourceVersion"].as_str().and_then(|rv| rv.parse().ok()).expect("rv");
    assert!(second_rv > first_rv);

    // The same body again, still carrying the first resourceVersion, is stale.
    changed["spec"]["replicas"] = json!(7);
    let (code, conflict) = server.put(&format!("{DEPLOYMENTS}/web"), &changed).await;
    assert_eq!(code, 409, "{conflict}");
    assert_eq!(conflict["reason"], "Conflict");
    assert!(conflict["message"].as_str().unwrap_or_default().contains("the object has been modified"));

    let (code, _) = server.request(Method::DELETE, &format!("{DEPLOYMENTS}/web"), Some(("application/json", br#"{"propagationPolicy":"Background"}"#.to_vec()))).await;
    assert_eq!(code, 200);
    let (code, missing) = server.get(&format!("{DEPLOYMENTS}/web")).await;
    assert_eq!(code, 404);
    assert_eq!(missing["message"], "deployments.apps \"web\" not found");
}

#[tokio::test]
async fn invalid_objects_get_422_with_every_field_cause() {
    let server = api_server().await;
    let mut broken = deployment("Bad_Name");
    broken["spec"]["replicas"] = json!(-1);
    broken["spec"]["template"]["metadata"]["labels"] = json!({"app": "other"});
    broken["spec"]["template"]["spec"]["containers"][0]["image"] = json!("");
    let (code, status) = server.post(DEPLOYMENTS, &broken).await;
    assert_eq!(code, 422, "{status}");
    assert_eq!(status["reason"], "Invalid");
    let fields: Vec<&str> = status["details"]["causes"].as_array().expect("causes").iter().filter_map(|c| c["field"].as_str()).collect();
    for expected in ["metadata.name", "spec.replicas", "spec.template.metadata.labels", "spec.template.spec.containers[0].image"] {
        assert!(fields.contains(&expected), "{expected} missing from {fields:?}");
    }

    let mut unknown = deployment("web");
    unknown["spec"]["replicaz"] = json!(3);
    let (code, status) = server.post(&format!("{DEPLOYMENTS}?fieldValidation=Strict"), &unknown).await;
    assert_eq!(code, 400);
    assert!(status["message"].as_str().unwrap_or_default().contains("unknown field \"spec.replicaz\""), "{status}");
    let (code, created) = server.post(&format!("{DEPLOYMENTS}?fieldValidation=Ignore"), &unknown).await;
    assert_eq!(code, 201);
    assert!(created["spec"].get("replicaz").is_none(), "ignored fields are dropped");
}

#[tokio::test]
async fn oversized_deep_and_malformed_bodies_are_refused_and_the_server_keeps_serving() {
    let server = api_server().await;
    let huge = config_map("huge", &"x".repeat(4 * 1024 * 1024));
    let (code, status) = server.post(CONFIGMAPS, &huge).await;
    assert_eq!(code, 413, "{status}");
    assert_eq!(status["reason"], "RequestEntityTooLarge");

    let deep = format!("{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"deep\"}},\"x\":{}1{}}}", "[".repeat(100), "]".repeat(100));
    let (code, status) = server.request(Method::POST, CONFIGMAPS, Some(("application/json", deep.into_bytes()))).await;
    assert_eq!(code, 400, "{status}");

    let (code, status) = server.request(Method::POST, CONFIGMAPS, Some(("application/json", b"{not json".to_vec()))).await;
    assert_eq!(code, 400, "{status}");
    assert_eq!(status["kind"], "Status");

    let yaml = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\ndata:\n  a: b\n".to_vec();
    let (code, created) = server.request(Method::POST, CONFIGMAPS, Some(("application/yaml", yaml))).await;
    assert_eq!(code, 201, "YAML bodies are accepted: {created}");

    // Protobuf: an envelope that names no kind is malformed; a kind without a protobuf table is
    // refused with the kubectl workaround.
    let (code, status) = server.request(Method::POST, "/api/v1/namespaces", Some(("application/vnd.kubernetes.protobuf", b"k8s\0".to_vec()))).await;
    assert_eq!(code, 400, "{status}");
    assert!(status["message"].as_str().unwrap_or_default().contains("names no kind"), "{status}");
    let stateful_set = b"k8s\0\x0a\x16\x0a\x07apps/v1\x12\x0bStatefulSet".to_vec();
    let (code, status) = server.request(Method::POST, "/api/v1/namespaces", Some(("application/vnd.kubernetes.protobuf", stateful_set))).await;
    assert_eq!(code, 415, "{status}");
    let message = status["message"].as_str().unwrap_or_default();
    assert!(message.contains("apps/v1/StatefulSet") && message.contains("--dry-run=client -o yaml | kubectl apply -f -"), "{status}");

    let (code, _) = server.post(CONFIGMAPS, &config_map("after", "still serving")).await;
    assert_eq!(code, 201);
}

#[tokio::test]
async fn namespaces_gate_creation_and_take_their_contents_with_them() {
    let server = api_server().await;
    let (code, status) = server.post("/api/v1/namespaces/nope/configmaps", &config_map("c", "v")).await;
    assert_eq!(code, 404);
    assert_eq!(status["message"], "namespaces \"nope\" not found");

    let (code, _) = server.post("/api/v1/namespaces", &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}})).await;
    assert_eq!(code, 201);
    for name in ["a", "b"] {
        let (code, _) = server.post("/api/v1/namespaces/team/configmaps", &config_map(name, "v")).await;
        assert_eq!(code, 201);
    }
    let (code, _) = server.request(Method::DELETE, "/api/v1/namespaces/team", None).await;
    assert_eq!(code, 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (code, _) = server.get("/api/v1/namespaces/team").await;
        if code == 404 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the namespace was not removed");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (_, list) = server.get("/api/v1/namespaces/team/configmaps").await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0));
    let (code, _) = server.request(Method::DELETE, "/api/v1/namespaces/default", None).await;
    assert_eq!(code, 403, "the default namespace cannot be deleted");
}

#[tokio::test]
async fn merge_and_json_patches() {
    let server = api_server().await;
    server.post(DEPLOYMENTS, &deployment("web")).await;
    let (code, patched) = server
        .request(Method::PATCH, &format!("{DEPLOYMENTS}/web"), Some(("application/merge-patch+json", br#"{"spec":{"replicas":4},"metadata":{"labels":{"tier":"front"}}}"#.to_vec())))
        .await;
    assert_eq!(code, 200, "{patched}");
    assert_eq!(patched["spec"]["replicas"], 4);
    assert_eq!(patched["metadata"]["labels"]["tier"], "front");
    let (code, patched) = server
        .request(Method::PATCH, &format!("{DEPLOYMENTS}/web"), Some(("application/json-patch+json", br#"[{"op":"replace","path":"/spec/replicas","value":1}]"#.to_vec())))
        .await;
    assert_eq!(code, 200, "{patched}");
    assert_eq!(patched["spec"]["replicas"], 1);
    let (code, status) = server
        .request(Method::PATCH, &format!("{DEPLOYMENTS}/web"), Some(("application/merge-patch+json", br#"{"metadata":{"resourceVersion":"1"},"spec":{"replicas":9}}"#.to_vec())))
        .await;
    assert_eq!(code, 409, "a stale resourceVersion inside a patch is a precondition: {status}");
    let (code, status) = server
        .request(Method::PATCH, &format!("{DEPLOYMENTS}/web"), Some(("application/json-patch+json", br#"[{"op":"test","path":"/spec/replicas","value":3}]"#.to_vec())))
        .await;
    assert_eq!(code, 422, "{status}");
}

#[tokio::test]
async fn status_subresource_is_separate_from_the_main_resource() {
    let server = api_server().await;
    let (_, created) = server.post(DEPLOYMENTS, &deployment("web")).await;
    let mut with_status = created.clone();
    with_status["status"] = json!({"replicas": 2, "readyReplicas": 2});
    // Everything but status is ignored on /status: a changed spec, a new label, an extra field.
    with_status["spec"]["replicas"] = json!(5);
    with_status["metadata"]["labels"] = json!({"sneaked": "in"});
    with_status["extra"] = json!(true);
    let (code, updated) = server.put(&format!("{DEPLOYMENTS}/web/status"), &with_status).await;
    assert_eq!(code, 200, "{updated}");
    assert_eq!(updated["status"]["readyReplicas"], 2);
    assert_eq!(updated["metadata"]["generation"], 1, "status writes do not bump generation");
    assert_eq!(updated["spec"], created["spec"], "the spec stays as stored: {updated}");
    assert_eq!(updated["metadata"]["labels"], created["metadata"]["labels"], "{updated}");
    assert!(updated.get("extra").is_none(), "{updated}");
    let mut main = updated.clone();
    main["status"] = json!({"replicas": 0});
    main["spec"]["replicas"] = json!(3);
    let (code, updated) = server.put(&format!("{DEPLOYMENTS}/web"), &main).await;
    assert_eq!(code, 200);
    assert_eq!(updated["status"]["readyReplicas"], 2, "the main resource ignores status");
    assert_eq!(updated["spec"]["replicas"], 3);
}

#[tokio::test]
async fn selectors_and_pagination() {
    let server = api_server().await;
    for (name, tier) in [("a", "front"), ("b", "back"), ("c", "front"), ("d", "db"), ("e", "front")] {
        let mut object = config_map(name, "v");
        object["metadata"]["labels"] = json!({"tier": tier});
        server.post(CONFIGMAPS, &object).await;
    }
    let names = |list: &Value| -> Vec<String> { list["items"].as_array().into_iter().flatten().filter_map(|i| i["metadata"]["name"].as_str().map(str::to_owned)).collect() };
    let (_, list) = server.get(&format!("{CONFIGMAPS}?labelSelector=tier%3Dfront")).await;
    assert_eq!(names(&list), ["a", "c", "e"]);
    let (_, list) = server.get(&format!("{CONFIGMAPS}?labelSelector=tier%20notin%20(front)")).await;
    assert_eq!(names(&list), ["b", "d"]);
    let (_, list) = server.get(&format!("{CONFIGMAPS}?fieldSelector=metadata.name%3Dd")).await;
    assert_eq!(names(&list), ["d"]);
    let (code, _) = server.get(&format!("{CONFIGMAPS}?fieldSelector=data.value%3Dv")).await;
    assert_eq!(code, 400, "unsupported field selectors are refused");

    let mut seen = Vec::new();
    let mut path = format!("{CONFIGMAPS}?limit=2");
    loop {
        let (_, page) = server.get(&path).await;
        let page_names = names(&page);
        assert!(page_names.len() <= 2);
        seen.extend(page_names);
        match page["metadata"]["continue"].as_str() {
            Some(token) => path = format!("{CONFIGMAPS}?limit=2&continue={token}"),
            None => break,
        }
    }
    assert_eq!(seen, ["a", "b", "c", "d", "e"]);
    let (_, all) = server.get("/api/v1/configmaps").await;
    assert_eq!(names(&all).len(), 5, "all-namespaces list");
}

/// Reads a watch stream to its end (the server closes it at timeoutSeconds).
async fn watch_events(server: &Server, path: &str) -> Vec<Value> {
    let response = server.http.get(format!("{}{path}", server.url)).bearer_auth(&server.token).send().await.expect("watch");
    assert_eq!(response.status().as_u16(), 200);
    let body = response.text().await.expect("stream");
    body.lines().filter(|l| !l.is_empty()).map(|l| serde_json::from_str(l).expect("one JSON event per line")).collect()
}

#[tokio::test]
async fn a_resumed_watch_receives_exactly_the_later_events() {
    let server = api_server().await;
    let (_, first) = server.post(CONFIGMAPS, &config_map("one", "1")).await;
    let resume_from = first["metadata"]["resourceVersion"].as_str().expect("rv").to_owned();
    server.post(CONFIGMAPS, &config_map("two", "2")).await;
    let mut changed = first.clone();
    changed["data"]["value"] = json!("1b");
    server.put(&format!("{CONFIGMAPS}/one"), &changed).await;
    server.request(Method::DELETE, &format!("{CONFIGMAPS}/two"), None).await;
    server.post("/api/v1/namespaces/kube-system/configmaps", &config_map("elsewhere", "x")).await;

    let events = watch_events(&server, &format!("{CONFIGMAPS}?watch=true&resourceVersion={resume_from}&timeoutSeconds=2")).await;
    let summary: Vec<(String, String)> = events.iter().map(|e| (e["type"].as_str().unwrap_or_default().to_owned(), e["object"]["metadata"]["name"].as_str().unwrap_or_default().to_owned())).collect();
    assert_eq!(summary, [("ADDED".to_owned(), "two".to_owned()), ("MODIFIED".into(), "one".into()), ("DELETED".into(), "two".into())]);
    let revisions: Vec<u64> = events.iter().filter_map(|e| e["object"]["metadata"]["resourceVersion"].as_str()?.parse().ok()).collect();
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "revisions increase: {revisions:?}");

    let initial = watch_events(&server, &format!("{CONFIGMAPS}?watch=true&resourceVersion=0&timeoutSeconds=1")).await;
    let names: Vec<&str> = initial.iter().filter(|e| e["type"] == "ADDED").filter_map(|e| e["object"]["metadata"]["name"].as_str()).collect();
    assert_eq!(names, ["one"], "resourceVersion=0 starts with the current state as ADDED");

    let named = watch_events(&server, "/api/v1/configmaps?watch=true&fieldSelector=metadata.name%3Delsewhere&timeoutSeconds=1").await;
    assert_eq!(named.len(), 1);
    assert_eq!(named[0]["object"]["metadata"]["namespace"], "kube-system");
}

/// A watch with a label selector sees an object leave its selection as DELETED (with the
/// object as it was, at the new revision) and come back as ADDED, as kube-apiserver's do.
#[tokio::test]
async fn a_selector_watch_sees_objects_leave_and_enter_the_selection() {
    let server = api_server().await;
    let mut labelled = config_map("moving", "1");
    labelled["metadata"]["labels"] = json!({"tier": "web"});
    let (_, created) = server.post(CONFIGMAPS, &labelled).await;
    let start = created["metadata"]["resourceVersion"].as_str().expect("rv").to_owned();
    let relabel = |tier: &str| serde_json::to_vec(&json!({"metadata": {"labels": {"tier": tier}}, "data": {"value": tier}})).expect("json");
    let path = format!("{CONFIGMAPS}/moving");
    for tier in ["web", "db", "db", "web"] {
        let (code, body) = server.request(Method::PATCH, &path, Some(("application/merge-patch+json", relabel(tier)))).await;
        assert_eq!(code, 200, "{body}");
    }
    server.request(Method::DELETE, &path, None).await;

    let events = watch_events(&server, &format!("{CONFIGMAPS}?watch=true&labelSelector=tier%3Dweb&resourceVersion={start}&timeoutSeconds=2")).await;
    let summary: Vec<(&str, &str, &str)> = events.iter().map(|e| (e["type"].as_str().unwrap_or_default(), e["object"]["data"]["value"].as_str().unwrap_or_default(), e["object"]["metadata"]["labels"]["tier"].as_str().unwrap_or_default())).collect();
    assert_eq!(
        summary,
        [("MODIFIED", "web", "web"), ("DELETED", "web", "web"), ("ADDED", "web", "web"), ("DELETED", "web", "web")],
        "leaving is DELETED with the last matching state, the second db write is not seen, coming back is ADDED: {events:?}"
    );
    let revisions: Vec<u64> = events.iter().filter_map(|e| e["object"]["metadata"]["resourceVersion"].as_str()?.parse().ok()).collect();
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "each event carries its own revision: {revisions:?}");
}

#[tokio::test]
async fn a_watch_from_an_evicted_revision_gets_410_expired() {
    let server = Server::start_with(&["--disable-controllers", "--watch-history-min-events", "5", "--watch-history-max-events", "5", "--watch-history-min-age-seconds", "0"]).await;
    let (_, first) = server.post(CONFIGMAPS, &config_map("c0", "v")).await;
    let old = first["metadata"]["resourceVersion"].as_str().expect("rv").to_owned();
    for index in 1..20 {
        server.post(CONFIGMAPS, &config_map(&format!("c{index}"), "v")).await;
    }
    let events = watch_events(&server, &format!("{CONFIGMAPS}?watch=true&resourceVersion={old}&timeoutSeconds=5")).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "ERROR");
    assert_eq!(events[0]["object"]["code"], 410);
    assert_eq!(events[0]["object"]["reason"], "Expired");
    let (_, list) = server.get(CONFIGMAPS).await;
    let current = list["metadata"]["resourceVersion"].as_str().expect("list rv").to_owned();
    let events = watch_events(&server, &format!("{CONFIGMAPS}?watch=true&resourceVersion={current}&timeoutSeconds=1")).await;
    assert!(events.is_empty(), "a watch from the current revision works and has nothing yet: {events:?}");
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    let server = api_server().await;
    let mut object = config_map("held", "v");
    object["metadata"]["finalizers"] = json!(["example.com/hold"]);
    server.post(CONFIGMAPS, &object).await;
    let (code, deleting) = server.request(Method::DELETE, &format!("{CONFIGMAPS}/held"), None).await;
    assert_eq!(code, 200);
    assert!(deleting["metadata"]["deletionTimestamp"].is_string());
    let (code, still) = server.get(&format!("{CONFIGMAPS}/held")).await;
    assert_eq!(code, 200, "an object with finalizers stays until they are removed");
    let mut released = still.clone();
    released["metadata"]["finalizers"] = json!([]);
    let (code, _) = server.put(&format!("{CONFIGMAPS}/held"), &released).await;
    assert_eq!(code, 200);
    let (code, _) = server.get(&format!("{CONFIGMAPS}/held")).await;
    assert_eq!(code, 404, "removing the last finalizer completes the deletion");
}
