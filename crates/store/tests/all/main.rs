//! Integration tests of the store: real redb files, a real single-member Raft group.

use serde_json::json;
use shoal_store::command::Precondition;
use shoal_store::history::HistoryLimits;
use shoal_store::{Command, ObjectKey, Store, StoreConfig, WriteError};

fn config(dir: &std::path::Path) -> StoreConfig {
    StoreConfig { history: HistoryLimits::default(), ..StoreConfig::new(dir.to_owned(), 1, "127.0.0.1:0".into()) }
}

fn config_map(name: &str, value: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}, "data": {"k": value}})
}

/// Creates the ConfigMap `name` in `default` with `value`, expecting it to be stored.
async fn create_config_map(store: &Store, name: &str, value: &str) {
    store
        .write(Command::Create { key: ObjectKey::new("configmaps", "default", name), object: config_map(name, value) })
        .await
        .expect("raft")
        .expect("created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_revisioned_checked_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = ObjectKey::new("configmaps", "default", "a");
    {
        let store = Store::open(config(dir.path())).await.expect("open");
        let (first, stored) = store
            .write(Command::Create { key: key.clone(), object: config_map("a", "1") })
            .await
            .expect("raft")
            .expect("created");
        assert_eq!(stored["metadata"]["resourceVersion"], json!(first.to_string()));
        let again = store.write(Command::Create { key: key.clone(), object: config_map("a", "1") }).await.expect("raft");
        assert_eq!(again.err(), Some(WriteError::AlreadyExists));

        let mut watcher = store.watch(first).expect("watch from the create");
        let (second, _) = store
            .write(Command::Update {
                key: key.clone(),
                object: config_map("a", "2"),
                precondition: Precondition { resource_version: Some(first), uid: None },
            })
            .await
            .expect("raft")
            .expect("updated");
        assert!(second > first);
        let stale = store
            .write(Command::Update {
                key: key.clone(),
                object: config_map("a", "3"),
                precondition: Precondition { resource_version: Some(first), uid: None },
            })
            .await
            .expect("raft");
        assert_eq!(stale.err(), Some(WriteError::ResourceVersionConflict { current: second, expected: first }));
        let events = watcher.next_batch().await.expect("events");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].revision, second);
        store.shutdown().await;
    }
    let store = Store::open(config(dir.path())).await.expect("reopen");
    let object = store.get(&key).expect("read").expect("present after restart");
    assert_eq!(object["data"]["k"], json!("2"));
    let listed = store.list("configmaps", Some("default"), None, None, &|_| true).expect("list");
    assert_eq!(listed.items.len(), 1);
    assert!(listed.revision >= 2);
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_and_snapshots_keep_every_object() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(config(dir.path())).await.expect("open");
    for index in 0..25 {
        create_config_map(&store, &format!("cm-{index:02}"), "v").await;
    }
    let mut names = Vec::new();
    let mut start_after = None;
    loop {
        let page = store.list("configmaps", None, start_after.as_deref(), Some(10), &|_| true).expect("list");
        names.extend(page.items.iter().map(|o| o["metadata"]["name"].as_str().unwrap_or_default().to_owned()));
        match page.continue_after {
            Some(next) => start_after = Some(next),
            None => break,
        }
    }
    assert_eq!(names.len(), 25);
    assert_eq!(names.first().map(String::as_str), Some("cm-00"));
    assert_eq!(names.last().map(String::as_str), Some("cm-24"));
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_compact_the_log_and_restarts_keep_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.snapshot_every = 20;
    config.entries_kept_after_snapshot = 2;
    {
        let store = Store::open(config.clone()).await.expect("open");
        for index in 0..150 {
            create_config_map(&store, &format!("cm-{index:03}"), "v").await;
        }
        store
            .write(Command::Delete { key: ObjectKey::new("configmaps", "default", "cm-000"), precondition: Precondition::default() })
            .await
            .expect("raft")
            .expect("deleted");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let metrics = store.raft_metrics();
            if metrics.purged.is_some_and(|purged| purged.index > 100) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the log was not compacted: {metrics:?}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        store.shutdown().await;
    }
    let store = Store::open(config).await.expect("reopen");
    let listed = store.list("configmaps", Some("default"), None, None, &|_| true).expect("list");
    assert_eq!(listed.items.len(), 149, "every object survives compaction and restart");
    assert!(store.get(&ObjectKey::new("configmaps", "default", "cm-000")).expect("read").is_none());
    assert_eq!(listed.revision, 151);
    store.shutdown().await;
}

/// A lone server hands applied log entries over to its state machine instead of keeping a copy
/// in memory; a restart still replays and keeps everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_entries_leave_memory_and_a_restart_keeps_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(config(dir.path())).await.expect("open");
        for index in 0..50 {
            create_config_map(&store, &format!("cm-{index:03}"), "v").await;
        }
        let (in_memory, handed_over) = store.log_entries_in_memory();
        assert!(handed_over >= 45, "applied entries were handed over: {in_memory} in memory, {handed_over} handed over");
        assert!(in_memory <= 5, "applied entries were handed over: {in_memory} in memory, {handed_over} handed over");
        store.shutdown().await;
    }
    let store = Store::open(config(dir.path())).await.expect("reopen");
    let listed = store.list("configmaps", Some("default"), None, None, &|_| true).expect("list");
    assert_eq!(listed.items.len(), 50);
    let write = store.write(Command::Create { key: ObjectKey::new("configmaps", "default", "after"), object: config_map("after", "v") }).await.expect("raft");
    assert!(write.is_ok(), "writes go on after the restart: {write:?}");
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_outgrows_its_byte_budget_is_compacted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.snapshot_every = 1_000_000;
    config.snapshot_log_bytes = 16 * 1024;
    config.entries_kept_after_snapshot = 0;
    let store = Store::open(config).await.expect("open");
    for index in 0..100 {
        create_config_map(&store, &format!("big-{index:03}"), &"x".repeat(1024)).await;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while store.raft_metrics().purged.is_none() {
        assert!(std::time::Instant::now() < deadline, "100 KiB of log over a 16 KiB budget was never compacted");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    store.shutdown().await;
}

fn service(namespace: &str, name: &str, cluster_ip: &str, node_port: Option<u16>) -> serde_json::Value {
    let mut port = json!({"port": 80, "targetPort": 8080});
    if let Some(node_port) = node_port {
        port["nodePort"] = json!(node_port);
    }
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
        "spec": {"type": if node_port.is_some() { "NodePort" } else { "ClusterIP" }, "clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "ports": [port]}})
}

/// Two API servers (or one before and after a leader change) may allocate the same address from
/// a state that does not yet show the other's write; the state machine, which sees writes in
/// their final order, lets only the first one through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_addresses_are_unique_in_the_order_writes_are_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(config(dir.path())).await.expect("open");
    let key = |namespace: &str, name: &str| ObjectKey::new("services", namespace, name);
    store.write(Command::Create { key: key("default", "a"), object: service("default", "a", "10.43.0.10", Some(30080)) }).await.expect("raft").expect("a created");

    // The same cluster IP in another namespace, and the same node port under another IP.
    let same_ip = store.write(Command::Create { key: key("other", "b"), object: service("other", "b", "10.43.0.10", None) }).await.expect("raft");
    assert_eq!(
        same_ip.err(),
        Some(WriteError::AddressTaken { field: "spec.clusterIPs".into(), value: "10.43.0.10".into(), detail: "provided IP is already allocated".into() })
    );
    let same_port = store.write(Command::Create { key: key("default", "c"), object: service("default", "c", "10.43.0.11", Some(30080)) }).await.expect("raft");
    assert!(matches!(same_port, Err(WriteError::AddressTaken { ref value, .. }) if value == "30080"), "{same_port:?}");
    assert!(store.get(&key("other", "b")).expect("read").is_none() && store.get(&key("default", "c")).expect("read").is_none(), "a rejected write stores nothing");

    // In one batch (one log entry), the first claim wins and the second is refused.
    let batch = Command::Batch(vec![
        Command::Create { key: key("default", "d"), object: service("default", "d", "10.43.0.12", None) },
        Command::Create { key: key("default", "e"), object: service("default", "e", "10.43.0.12", None) },
    ]);
    let (response, _) = store.write_indexed(batch).await.expect("raft");
    let shoal_store::CommandResponse::Batch(answers) = response else { panic!("a batch answers with a batch: {response:?}") };
    assert!(matches!(answers[0], shoal_store::CommandResponse::Written { .. }), "{:?}", answers[0]);
    assert!(matches!(answers[1], shoal_store::CommandResponse::Rejected(WriteError::AddressTaken { .. })), "{:?}", answers[1]);

    // A Service rewriting itself keeps its own addresses; headless Services claim none.
    let current = store.get(&key("default", "a")).expect("read").expect("a");
    let mut updated = service("default", "a", "10.43.0.10", Some(30080));
    updated["metadata"]["labels"] = json!({"changed": "yes"});
    let precondition = Precondition { resource_version: None, uid: current["metadata"]["uid"].as_str().map(str::to_owned) };
    store.write(Command::Update { key: key("default", "a"), object: updated, precondition }).await.expect("raft").expect("a updated in place");
    for name in ["h1", "h2"] {
        store.write(Command::Create { key: key("default", name), object: service("default", name, "None", None) }).await.expect("raft").expect("headless");
    }

    // Deleting a Service frees its addresses.
    store.write(Command::Delete { key: key("default", "a"), precondition: Precondition::default() }).await.expect("raft").expect("a deleted");
    store.write(Command::Create { key: key("other", "b"), object: service("other", "b", "10.43.0.10", Some(30080)) }).await.expect("raft").expect("b takes a's addresses");
    store.shutdown().await;
}
