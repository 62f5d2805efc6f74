//! Integration tests of the API server: a real server (redb, a single-member Raft group, a TLS
//! listener on a loopback port) in this process.

use futures::StreamExt;
use serde_json::json;
use shoal_apiserver::{ApiServer, ApiServerConfig, HistoryLimits};
use shoal_client::{Client, Error, ListOptions};
use tokio_util::sync::CancellationToken;

async fn start(dir: &std::path::Path, shutdown: &CancellationToken) -> ApiServer {
    let config = ApiServerConfig {
        data_dir: dir.to_owned(),
        api_addr: "127.0.0.1:0".into(),
        watch_history: HistoryLimits::default(),
        registry_max_artifact_bytes: 64 << 20,
        service_cidr: shoal_apiserver::services::Cidr::parse("10.43.0.0/16").expect("cidr"),
        advertise_host: None,
        join: None,
        presets: Default::default(),
        snapshot_every: None,
        entries_kept_after_snapshot: None,
    };
    shoal_apiserver::start(config, shutdown.clone()).await.expect("the API server starts")
}

/// Requests from this process's own clients are calls into the router, not HTTPS: they get the
/// same answers, streams and checks as a remote client's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_requests_are_served_and_checked_like_remote_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shutdown = CancellationToken::new();
    let server = start(dir.path(), &shutdown).await;
    let (ca, admin) = (server.credentials.ca_pem.clone(), server.credentials.admin_token.clone());
    let url = server.loopback_url();
    let in_process = shoal_client::InProcess::new(&server.loopback_url(), server.call());
    let local = Client::new(&url, Some(&ca), Some(admin.clone())).expect("client").with_in_process(in_process.clone());
    let remote = Client::new(&url, Some(&ca), Some(admin)).expect("client");
    let configmaps = shoal_api::resources::by_name("configmaps").expect("configmaps are served");

    // A watch through the call streams like one over HTTPS.
    let listed = local.list(configmaps, Some("default"), &ListOptions::default()).await.expect("list");
    let options = ListOptions { resource_version: listed["metadata"]["resourceVersion"].as_str().map(str::to_owned), ..ListOptions::default() };
    let mut events = Box::pin(local.watch(configmaps, Some("default"), &options).await.expect("watch"));
    let mut remote_events = Box::pin(remote.watch(configmaps, Some("default"), &options).await.expect("watch over HTTPS"));
    // Watches that select by label see an object leave their selection as a DELETED.
    let selected = ListOptions { label_selector: Some("tier=web".into()), ..options.clone() };
    let mut selected_events = Box::pin(local.watch(configmaps, Some("default"), &selected).await.expect("watch"));
    let mut remote_selected_events = Box::pin(remote.watch(configmaps, Some("default"), &selected).await.expect("watch over HTTPS"));
    async fn next(events: &mut shoal_client::Events) -> shoal_client::WatchEvent {
        tokio::time::timeout(std::time::Duration::from_secs(10), events.next()).await.expect("an event in time").expect("open").expect("decoded")
    }

    let object = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "labels": {"tier": "web"}}, "data": {"k": "v"}});
    let created = local.create(configmaps, Some("default"), &object, "in-process-test").await.expect("create in-process");
    assert_eq!(created["metadata"]["namespace"], "default", "{created}");
    let event = next(&mut events).await;
    assert_eq!((event.event_type.as_str(), &event.object["metadata"]["name"]), ("ADDED", &json!("a")));
    // In-process, the event is the stored object itself (shared with the store, not decoded
    // from JSON), and it is what a watch over HTTPS gets.
    assert!(std::sync::Arc::strong_count(&event.object) > 1, "the event shares the stored object");
    let over_https = next(&mut remote_events).await;
    assert_eq!((event.event_type.as_str(), &*event.object), (over_https.event_type.as_str(), &*over_https.object));
    assert_eq!((&event.object["kind"], &event.object["apiVersion"]), (&json!("ConfigMap"), &json!("v1")));
    assert_eq!(event.object["metadata"]["resourceVersion"], created["metadata"]["resourceVersion"]);
    for events in [&mut selected_events, &mut remote_selected_events] {
        assert_eq!(next(events).await.event_type, "ADDED");
    }
    let mut unlabelled = created.clone();
    unlabelled["metadata"]["labels"] = json!({});
    let updated = local.replace(configmaps, Some("default"), "a", &unlabelled).await.expect("update");
    let (left, left_over_https) = (next(&mut selected_events).await, next(&mut remote_selected_events).await);
    assert_eq!((left.event_type.as_str(), &*left.object), (left_over_https.event_type.as_str(), &*left_over_https.object));
    assert_eq!(left.event_type, "DELETED");
    assert_eq!(left.object["metadata"]["resourceVersion"], updated["metadata"]["resourceVersion"], "DELETED carries the revision it happened at");
    assert_eq!(left.object["metadata"]["labels"], json!({"tier": "web"}), "DELETED carries the object as the watch last saw it");
    let (modified, modified_over_https) = (next(&mut events).await, next(&mut remote_events).await);
    assert_eq!((modified.event_type.as_str(), &*modified.object), (modified_over_https.event_type.as_str(), &*modified_over_https.object));
    assert_eq!(modified.event_type, "MODIFIED");

    // Both ways read the same object.
    let before = in_process.requests();
    let through_https = remote.get(configmaps, Some("default"), "a").await.expect("get over HTTPS");
    assert_eq!(in_process.requests(), before, "a client without the call uses HTTPS");
    assert_eq!(through_https, local.get(configmaps, Some("default"), "a").await.expect("get in-process"));
    assert_eq!(in_process.requests(), before + 1, "the in-process client made a call, not an HTTPS request");

    // The server's checks apply: a Status error comes back as one, with its code.
    match local.create(configmaps, Some("default"), &object, "in-process-test").await {
        Err(Error::Api(status)) => assert_eq!((status.code, status.reason), (409, "AlreadyExists"), "{status:?}"),
        other => panic!("a duplicate create must be refused: {other:?}"),
    }
    // Query parameters arrive encoded: a label selector with a comma and a space.
    let selected = local
        .list(configmaps, Some("default"), &ListOptions { label_selector: Some("app in (x, y)".into()), ..ListOptions::default() })
        .await
        .expect("list with a selector");
    assert_eq!(selected["items"], json!([]), "{selected}");

    // The token is still checked: a call with a wrong one is refused.
    let stranger = Client::new(&url, Some(&ca), Some("not-a-token".into())).expect("client").with_in_process(shoal_client::InProcess::new(&server.loopback_url(), server.call()));
    match stranger.get(configmaps, Some("default"), "a").await {
        Err(Error::Api(status)) => assert_eq!(status.code, 401, "{status:?}"),
        other => panic!("a wrong token must be refused in-process too: {other:?}"),
    }
    // So is a watch, with the answer's Status read from the body as over HTTPS.
    for client in [&stranger, &Client::new(&url, Some(&ca), Some("not-a-token".into())).expect("client")] {
        match client.watch(configmaps, Some("default"), &ListOptions::default()).await.map(|_| ()) {
            Err(Error::Api(status)) => assert_eq!(status.code, 401, "{status:?}"),
            other => panic!("a watch with a wrong token must be refused: {other:?}"),
        }
    }
    // A client whose server is another one (after a failover) uses HTTPS to it, not the call.
    let elsewhere = Client::new(&server.url.replace("127.0.0.1", "localhost"), Some(&ca), Some(server.credentials.admin_token.clone()))
        .expect("client")
        .with_in_process(in_process.clone());
    let before = in_process.requests();
    elsewhere.get(configmaps, Some("default"), "a").await.expect("get over HTTPS by another name");
    assert_eq!(in_process.requests(), before, "only requests to the server the call stands for use it");
    shutdown.cancel();
    server.wait().await;
}

/// A graceful deletion (here: of objects with a finalizer) writes the object it read. Racing
/// with another writer of the same object, it is tried again on the newer object, as
/// kube-apiserver does, instead of answering the client's delete with a 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_delete_racing_other_writes_succeeds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shutdown = CancellationToken::new();
    let server = start(dir.path(), &shutdown).await;
    let client = Client::new(&server.loopback_url(), Some(&server.credentials.ca_pem), Some(server.credentials.admin_token.clone()))
        .expect("client")
        .with_in_process(shoal_client::InProcess::new(&server.loopback_url(), server.call()));
    let configmaps = shoal_api::resources::by_name("configmaps").expect("configmaps are served");
    for round in 0..40 {
        let name = format!("raced-{round}");
        let object = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "finalizers": ["example.com/hold"]}, "data": {"n": "0"}});
        client.create(configmaps, Some("default"), &object, "test").await.expect("create");
        // Another writer keeps changing the object while it is deleted, as a busy controller or
        // node might: a write in flight half the time. (A writer with a write always in flight
        // would win every race: each attempt reads the object before that write applies.)
        let stop = CancellationToken::new();
        let writer = {
            let (client, name, stop) = (client.clone(), name.clone(), stop.clone());
            tokio::spawn(async move {
                let mut writes = 0u64;
                while !stop.is_cancelled() {
                    let patch = json!({"data": {"n": writes.to_string()}});
                    let started = std::time::Instant::now();
                    if client.patch(configmaps, Some("default"), &name, &patch, true, "writer").await.is_ok() {
                        writes += 1;
                    }
                    tokio::time::sleep(started.elapsed() + std::time::Duration::from_millis(1)).await;
                }
                writes
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let deleted = client.delete(configmaps, Some("default"), &name, &json!({})).await;
        stop.cancel();
        let writes = writer.await.expect("join");
        let deleted = deleted.unwrap_or_else(|error| panic!("round {round}: the delete must win its race with {writes} writes: {error:?}"));
        assert!(!deleted["metadata"]["deletionTimestamp"].is_null(), "marked for deletion: {deleted}");
        // A precondition the client set still fails when it does not hold.
        let stale = json!({"preconditions": {"resourceVersion": "1"}});
        match client.delete(configmaps, Some("default"), &name, &stale).await {
            Err(Error::Api(status)) => assert_eq!(status.code, 409, "{status:?}"),
            other => panic!("a stale precondition must be refused: {other:?}"),
        }
    }
    shutdown.cancel();
    server.wait().await;
}
