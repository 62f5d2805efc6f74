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
        let name = format!("cm-{index:02}");
        store
            .write(Command::Create { key: ObjectKey::new("configmaps", "default", &name), object: config_map(&name, "v") })
            .await
            .expect("raft")
            .expect("created");
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
            let name = format!("cm-{index:03}");
            store
                .write(Command::Create { key: ObjectKey::new("configmaps", "default", &name), object: config_map(&name, "v") })
                .await
                .expect("raft")
                .expect("created");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_outgrows_its_byte_budget_is_compacted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.snapshot_every = 1_000_000;
    config.snapshot_log_bytes = 16 * 1024;
    config.entries_kept_after_snapshot = 0;
    let store = Store::open(config).await.expect("open");
    for index in 0..100 {
        let name = format!("big-{index:03}");
        let object = config_map(&name, &"x".repeat(1024));
        store.write(Command::Create { key: ObjectKey::new("configmaps", "default", &name), object }).await.expect("raft").expect("created");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while store.raft_metrics().purged.is_none() {
        assert!(std::time::Instant::now() < deadline, "100 KiB of log over a 16 KiB budget was never compacted");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    store.shutdown().await;
}
