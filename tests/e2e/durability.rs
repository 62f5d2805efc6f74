//! Persistence: objects survive a clean restart, and every acknowledged write survives kill -9.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::json;
use tokio::sync::Mutex;

use crate::harness::{Server, config_map};

const CONFIGMAPS: &str = "/api/v1/namespaces/default/configmaps";

#[tokio::test]
async fn objects_survive_a_clean_restart() {
    let mut server = Server::start().await;
    let (code, created) = server.post(CONFIGMAPS, &config_map("kept", "v1")).await;
    assert_eq!(code, 201);
    server.terminate();
    server.restart().await;
    let (code, found) = server.get(&format!("{CONFIGMAPS}/kept")).await;
    assert_eq!(code, 200);
    assert_eq!(found["metadata"]["uid"], created["metadata"]["uid"]);
    assert_eq!(found["metadata"]["resourceVersion"], created["metadata"]["resourceVersion"]);
    let (code, next) = server.post(CONFIGMAPS, &config_map("after", "v")).await;
    assert_eq!(code, 201);
    let before: u64 = created["metadata"]["resourceVersion"].as_str().and_then(|v| v.parse().ok()).expect("rv");
    let after: u64 = next["metadata"]["resourceVersion"].as_str().and_then(|v| v.parse().ok()).expect("rv");
    assert!(after > before, "revisions keep increasing across restarts");
}

#[tokio::test]
async fn every_acknowledged_write_survives_kill_dash_nine() {
    let mut server = Server::start().await;
    let acknowledged = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..8 {
        let http = server.http.clone();
        let url = format!("{}{CONFIGMAPS}", server.url);
        let token = server.token.clone();
        let acknowledged = Arc::clone(&acknowledged);
        let stop = Arc::clone(&stop);
        writers.push(tokio::spawn(async move {
            let mut index = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("w{writer}-{index}");
                index += 1;
                let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"n": index.to_string()}});
                match http.post(&url).bearer_auth(&token).json(&body).send().await {
                    Ok(response) if response.status().as_u16() == 201 => {
                        let created: serde_json::Value = match response.json().await {
                            Ok(value) => value,
                            Err(_) => continue,
                        };
                        let uid = created["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
                        acknowledged.lock().await.push((name, uid));
                    }
                    // The server is gone: the write is unknown, never counted.
                    _ => {}
                }
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    server.kill();
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        let _ = writer.await;
    }
    let acknowledged = acknowledged.lock().await.clone();
    assert!(acknowledged.len() > 20, "the writers got going ({} acknowledged)", acknowledged.len());
    server.restart().await;
    let (_, list) = server.get(CONFIGMAPS).await;
    let stored: std::collections::HashMap<String, String> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|item| (item["metadata"]["name"].as_str().unwrap_or_default().to_owned(), item["metadata"]["uid"].as_str().unwrap_or_default().to_owned()))
        .collect();
    for (name, uid) in &acknowledged {
        assert_eq!(stored.get(name), Some(uid), "acknowledged write {name} was lost after kill -9");
    }
}
