//! The highly-available control plane: several real `shoal server` processes in one Raft group
//! on loopback, joined with the server token, and the faults they must survive.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

use crate::harness::{Agent, Server, shoal_binary};
use crate::linearizable::{self, Kind, Operation};

/// Starts `count` servers without nodes: the first one starts the cluster, the others join it
/// through the first one with its server token. `extra` goes to every server.
async fn cluster(count: usize, extra: &[&str]) -> Vec<Server> {
    let mut first_args = vec!["--disable-node"];
    first_args.extend_from_slice(extra);
    let first = Server::start_with(&first_args).await;
    let token = std::fs::read_to_string(first.data_dir.join("server-token")).expect("server token").trim().to_owned();
    let url = first.url.clone();
    let mut servers = vec![first];
    for _ in 1..count {
        let mut args = vec!["--disable-node", "--join", &url, "--token", &token];
        args.extend_from_slice(extra);
        servers.push(Server::start_with(&args).await);
    }
    servers
}

async fn status(server: &Server) -> Value {
    let (code, status) = server.get("/internal/cluster/status").await;
    assert_eq!(code, 200, "cluster status: {status}");
    status
}

/// Waits until every live server names the same leader and sees `voters` voters; returns the
/// leader's index in `servers`.
async fn agreed_leader(servers: &[&Server], voters: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut leaders = Vec::new();
        let mut counts = Vec::new();
        for server in servers {
            let (code, local) = server.request(reqwest::Method::POST, "/internal/cluster/status", Some(("application/json", b"null".to_vec()))).await;
            if code == 200 {
                leaders.push(local["leader"].as_u64());
                counts.push(local["members"].as_array().map_or(0, |m| m.iter().filter(|m| m["role"] == "voter").count()));
            }
        }
        let first = leaders.first().copied().flatten();
        if let Some(leader) = first
            && leaders.len() == servers.len()
            && leaders.iter().all(|l| *l == first)
            && counts.iter().all(|c| *c == voters)
        {
            for (index, server) in servers.iter().enumerate() {
                if status_id(server).await == leader {
                    return index;
                }
            }
        }
        assert!(Instant::now() < deadline, "the servers did not agree on a leader with {voters} voters: leaders {leaders:?}, voters {counts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn status_id(server: &Server) -> u64 {
    let (_, local) = server.request(reqwest::Method::POST, "/internal/cluster/status", Some(("application/json", b"null".to_vec()))).await;
    local["id"].as_u64().expect("member id")
}

fn config_map(name: &str, value: &str, resource_version: Option<&str>) -> Value {
    let mut object = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}, "data": {"v": value}});
    if let Some(rv) = resource_version {
        object["metadata"]["resourceVersion"] = json!(rv);
    }
    object
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_join_one_group_where_any_server_serves_linearizable_reads_and_writes() {
    let servers = cluster(3, &["--disable-controllers"]).await;
    let all: Vec<&Server> = servers.iter().collect();
    agreed_leader(&all, 3).await;
    let status = status(&servers[2]).await;
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3), "{status}");
    assert!(status["members"].as_array().expect("members").iter().all(|m| m["lag"].is_number()), "the leader reports every member's lag: {status}");

    // The `kubernetes` Endpoints name every API server (on loopback each has its own port).
    let ports = |servers: &[&Server]| -> Vec<u64> {
        let mut ports: Vec<u64> = servers.iter().map(|s| s.url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port")).collect();
        ports.sort();
        ports
    };
    await_kubernetes_endpoints(&servers[1], &ports(&all)).await;

    // A write through any server is read back at once from every server.
    let (_, listed) = servers[0].get("/api/v1/namespaces/default/configmaps").await;
    let start = listed["metadata"]["resourceVersion"].as_str().expect("list revision").to_owned();
    for (index, writer) in servers.iter().enumerate() {
        let name = format!("via-{index}");
        let (code, created) = writer.post("/api/v1/namespaces/default/configmaps", &config_map(&name, "x", None)).await;
        assert_eq!(code, 201, "create through server {index}: {created}");
        for (reader_index, reader) in servers.iter().enumerate() {
            let (code, read) = reader.get(&format!("/api/v1/namespaces/default/configmaps/{name}")).await;
            assert_eq!(code, 200, "server {reader_index} reads {name}, written through server {index}, at once: {read}");
            assert_eq!(read["metadata"]["resourceVersion"], created["metadata"]["resourceVersion"]);
        }
    }

    // Every server's watch from the same revision tells the same story, with the same revisions.
    let mut stories = Vec::new();
    for server in &servers {
        let response = server
            .http
            .get(format!("{}/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={start}&timeoutSeconds=1", server.url))
            .bearer_auth(&server.token)
            .send()
            .await
            .expect("watch");
        let text = response.text().await.expect("watch body");
        let story: Vec<(String, String, String)> = text
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .map(|event| {
                let object = &event["object"];
                (event["type"].as_str().unwrap_or("").to_owned(), object["metadata"]["name"].as_str().unwrap_or("").to_owned(), object["metadata"]["resourceVersion"].as_str().unwrap_or("").to_owned())
            })
            .collect();
        stories.push(story);
    }
    assert_eq!(stories[0].len(), 3, "three creations since {start}: {:?}", stories[0]);
    assert!(stories.iter().all(|story| *story == stories[0]), "watches differ between servers: {stories:?}");

    // Writes arriving together at a follower go to the leader together: each keeps its own
    // answer (a name taken twice is refused once) and is read back at once from that follower.
    let leader = agreed_leader(&all, 3).await;
    let follower = &servers[(leader + 1) % 3];
    let names: Vec<String> = (0..48).map(|i| format!("together-{}", i % 32)).collect();
    let bodies: Vec<Value> = names.iter().map(|name| config_map(name, "x", None)).collect();
    let outcomes = futures::future::join_all(bodies.iter().map(|body| follower.post("/api/v1/namespaces/default/configmaps", body))).await;
    let created = outcomes.iter().filter(|(code, _)| *code == 201).count();
    let refused = outcomes.iter().filter(|(code, body)| *code == 409 && body["reason"] == "AlreadyExists").count();
    assert_eq!((created, refused), (32, 16), "{outcomes:?}");
    for i in 0..32 {
        let (code, read) = follower.get(&format!("/api/v1/namespaces/default/configmaps/together-{i}")).await;
        assert_eq!(code, 200, "{read}");
    }

    // A ServiceAccount token issued by one server is honoured by every server (they share the
    // signing key), and says who it is.
    let (code, created) = servers[0].post("/api/v1/namespaces/default/serviceaccounts", &serde_json::json!({"metadata": {"name": "bot"}})).await;
    assert_eq!(code, 201, "{created}");
    let (code, issued) = servers[0].post("/api/v1/namespaces/default/serviceaccounts/bot/token", &serde_json::json!({"spec": {}})).await;
    assert_eq!(code, 201, "{issued}");
    let token = issued["status"]["token"].as_str().expect("a token").to_owned();
    for (index, server) in servers.iter().enumerate() {
        let answer = server
            .http
            .post(format!("{}/apis/authentication.k8s.io/v1/selfsubjectreviews", server.url))
            .bearer_auth(&token)
            .json(&serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}))
            .send()
            .await
            .expect("whoami");
        assert_eq!(answer.status().as_u16(), 201, "server {index} honours the token");
        let review: Value = answer.json().await.expect("json");
        assert_eq!(review["status"]["userInfo"]["username"], "system:serviceaccount:default:bot", "server {index}: {review}");
    }

    // The first server's kubeconfig works against the others with --server.
    let output = std::process::Command::new(shoal_binary())
        .args(["--kubeconfig"])
        .arg(servers[0].kubeconfig())
        .args(["--server", &servers[2].url, "get", "configmaps"])
        .output()
        .expect("shoal get");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && stdout.contains("via-0") && stdout.contains("via-2"), "{stdout}{}", String::from_utf8_lossy(&output.stderr));

    // `shoal cluster status` names the leader and every member.
    let output = std::process::Command::new(shoal_binary()).args(["--kubeconfig"]).arg(servers[1].kubeconfig()).args(["cluster", "status"]).output().expect("shoal cluster status");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(stdout.lines().filter(|line| line.contains("voter")).count(), 3, "{stdout}");
    assert_eq!(stdout.lines().filter(|line| line.contains(" * ") || line.contains("   *   ")).count(), 1, "one leader is marked: {stdout}");

    // Removing a follower: the others carry on; the removed server refuses writes and says why.
    let leader = agreed_leader(&all, 3).await;
    let removed = (leader + 1) % 3;
    let removed_id = status_id(&servers[removed]).await;
    let output = std::process::Command::new(shoal_binary())
        .args(["--kubeconfig"])
        .arg(servers[0].kubeconfig())
        .args(["cluster", "remove", &removed_id.to_string()])
        .output()
        .expect("shoal cluster remove");
    assert!(output.status.success(), "{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let remaining: Vec<&Server> = servers.iter().enumerate().filter(|(i, _)| *i != removed).map(|(_, s)| s).collect();
    agreed_leader(&remaining, 2).await;
    let (code, created) = remaining[1].post("/api/v1/namespaces/default/configmaps", &config_map("after-removal", "x", None)).await;
    assert_eq!(code, 201, "{created}");
    let (code, refused) = servers[removed].post("/api/v1/namespaces/default/configmaps", &config_map("from-the-removed", "x", None)).await;
    assert_eq!(code, 503, "a removed server refuses writes: {refused}");
    assert!(refused["message"].as_str().unwrap_or("").contains("not a member"), "and says why: {refused}");
    await_kubernetes_endpoints(remaining[0], &ports(&remaining)).await;
}

/// Waits (up to 10 s) until the `default/kubernetes` Endpoints and EndpointSlices name exactly
/// the API servers on `ports` (all at 127.0.0.1).
async fn await_kubernetes_endpoints(server: &Server, ports: &[u64]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, endpoints) = server.get("/api/v1/namespaces/default/endpoints/kubernetes").await;
        let mut named: Vec<u64> = endpoints["subsets"].as_array().into_iter().flatten().filter(|s| s["addresses"] == json!([{"ip": "127.0.0.1"}])).filter_map(|s| s["ports"][0]["port"].as_u64()).collect();
        named.sort();
        let (_, slices) = server.get("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dkubernetes").await;
        let mut sliced: Vec<u64> = slices["items"].as_array().into_iter().flatten().filter_map(|s| s["ports"][0]["port"].as_u64()).collect();
        sliced.sort();
        if named == ports && sliced == ports {
            return;
        }
        assert!(Instant::now() < deadline, "the kubernetes Endpoints name ports {named:?} and its slices {sliced:?}, not the API servers' {ports:?}: {endpoints}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One recorded operation of the fault workload.
struct Record {
    key: usize,
    operation: Operation,
    /// The revision an acknowledged write produced.
    revision: Option<u64>,
}

enum Outcome {
    /// The server answered; its status and body.
    Answered(u16, Value),
    /// The request never reached a server (connection refused): it had no effect.
    NotSent,
    /// It may or may not have taken effect (timeout, connection lost mid-request).
    Unknown,
}

async fn call(http: &reqwest::Client, token: &str, method: reqwest::Method, url: String, body: Option<&Value>) -> Outcome {
    let mut request = http.request(method, url).bearer_auth(token).timeout(Duration::from_secs(20));
    if let Some(body) = body {
        request = request.json(body);
    }
    match request.send().await {
        Ok(response) => {
            let code = response.status().as_u16();
            match response.bytes().await {
                Ok(bytes) => Outcome::Answered(code, serde_json::from_slice(&bytes).unwrap_or(Value::Null)),
                Err(_) => Outcome::Unknown,
            }
        }
        Err(error) if error.is_connect() => Outcome::NotSent,
        Err(_) => Outcome::Unknown,
    }
}

const KEYS: usize = 3;
const WORKERS: usize = 6;

/// A client of the fault test: random reads, writes and compare-and-swaps on a few keys,
/// through whichever server it last reached, moving to the next one when a server fails it.
async fn worker(id: usize, urls: Arc<Vec<String>>, http: reqwest::Client, token: String, epoch: Instant, stop: Arc<AtomicBool>, records: Arc<Mutex<Vec<Record>>>) {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (id as u64 + 1);
    let mut random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut server = id % urls.len();
    let mut counter = 0u64;
    let now = |epoch: Instant| epoch.elapsed().as_micros() as u64;
    while !stop.load(Ordering::Relaxed) {
        let key = (random() % KEYS as u64) as usize;
        let path = format!("/api/v1/namespaces/default/configmaps/lin-{key}");
        let choice = random() % 10;
        // Every operation starts with a read (a compare-and-swap needs the current revision).
        let invoked = now(epoch);
        let outcome = call(&http, &token, reqwest::Method::GET, format!("{}{path}", urls[server]), None).await;
        let returned = now(epoch);
        let current = match outcome {
            Outcome::Answered(200, object) => {
                let value = object["data"]["v"].as_str().map(str::to_owned);
                let revision = object["metadata"]["resourceVersion"].as_str().map(str::to_owned);
                records.lock().expect("records").push(Record { key, operation: Operation { invoked, returned: Some(returned), kind: Kind::Read(value.clone()) }, revision: None });
                value.zip(revision)
            }
            _ => {
                server = (server + 1) % urls.len();
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        if choice < 4 {
            continue;
        }
        counter += 1;
        let new = format!("w{id}-{counter}");
        let (kind, body) = match (&current, choice < 7) {
            (_, true) => (Kind::Write(new.clone()), config_map(&format!("lin-{key}"), &new, None)),
            (Some((value, revision)), false) => (
                Kind::Cas { expected: value.clone(), new: new.clone(), swapped: true },
                config_map(&format!("lin-{key}"), &new, Some(revision)),
            ),
            (None, false) => continue,
        };
        let invoked = now(epoch);
        let outcome = call(&http, &token, reqwest::Method::PUT, format!("{}{path}", urls[server]), Some(&body)).await;
        let returned = now(epoch);
        let record = match outcome {
            Outcome::Answered(200, object) => Some(Record {
                key,
                operation: Operation { invoked, returned: Some(returned), kind },
                revision: object["metadata"]["resourceVersion"].as_str().and_then(|rv| rv.parse().ok()),
            }),
            Outcome::Answered(409, _) => match kind {
                Kind::Cas { expected, new, .. } => {
                    Some(Record { key, operation: Operation { invoked, returned: Some(returned), kind: Kind::Cas { expected, new, swapped: false } }, revision: None })
                }
                other => panic!("an unconditional write got a conflict: {other:?}"),
            },
            Outcome::NotSent => None,
            // A 5xx or a lost connection: the write may still take effect.
            Outcome::Answered(..) | Outcome::Unknown => Some(Record { key, operation: Operation { invoked, returned: None, kind }, revision: None }),
        };
        if let Some(record) = record {
            let failed = record.operation.returned.is_none();
            records.lock().expect("records").push(record);
            if failed {
                server = (server + 1) % urls.len();
            }
        } else {
            server = (server + 1) % urls.len();
        }
    }
}

/// A watch of the test's ConfigMaps that follows every change from `from`, moving to another
/// server (from the last revision it saw) when its server fails it, as informers do. It stops
/// once it has seen revision `until` (when that is set, non-zero), or 30 s after it was set.
async fn follow(first: usize, urls: Arc<Vec<String>>, http: reqwest::Client, token: String, from: u64, until: Arc<AtomicU64>) -> Vec<(u64, String, String)> {
    let mut seen: Vec<(u64, String, String)> = Vec::new();
    let mut server = first;
    let mut last = from;
    let mut give_up: Option<Instant> = None;
    let stop = |last: u64, give_up: &mut Option<Instant>| {
        let target = until.load(Ordering::Relaxed);
        if target == 0 {
            return false;
        }
        let deadline = *give_up.get_or_insert_with(|| Instant::now() + Duration::from_secs(30));
        last >= target || Instant::now() >= deadline
    };
    while !stop(last, &mut give_up) {
        let url = format!("{}/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={last}&timeoutSeconds=5", urls[server]);
        let response = match http.get(url).bearer_auth(&token).send().await {
            Ok(response) if response.status().is_success() => response,
            Ok(response) => {
                let code = response.status();
                assert_ne!(code.as_u16(), 410, "a watch from revision {last} expired: events were lost");
                server = (server + 1) % urls.len();
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(_) => {
                server = (server + 1) % urls.len();
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let mut stream = response.bytes_stream();
        let mut buffer = Vec::new();
        loop {
            let chunk = tokio::select! {
                chunk = stream.next() => chunk,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if stop(last, &mut give_up) { break } else { continue }
                }
            };
            let Some(Ok(chunk)) = chunk else {
                // The stream ended (timeout) or broke (the server died): carry on elsewhere if
                // it broke, here if it merely timed out.
                if chunk.is_some() {
                    server = (server + 1) % urls.len();
                }
                break;
            };
            buffer.extend_from_slice(&chunk);
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let Ok(event) = serde_json::from_slice::<Value>(&line) else { continue };
                assert_ne!(event["type"], "ERROR", "the watch failed: {event}");
                let object = &event["object"];
                let revision: u64 = object["metadata"]["resourceVersion"].as_str().and_then(|rv| rv.parse().ok()).expect("event revision");
                let name = object["metadata"]["name"].as_str().unwrap_or("").to_owned();
                let value = object["data"]["v"].as_str().unwrap_or("").to_owned();
                seen.push((revision, name, value));
                last = revision;
            }
        }
    }
    seen
}

/// The concurrent client workload of a fault test: workers doing reads, writes and
/// compare-and-swaps on a few keys, and one watch per server, all recorded.
struct Workload {
    epoch: Instant,
    initial: Option<String>,
    stop_workers: Arc<AtomicBool>,
    /// The revision every watch must reach before it stops (0: not yet known).
    watch_until: Arc<AtomicU64>,
    records: Arc<Mutex<Vec<Record>>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    watches: Vec<tokio::task::JoinHandle<Vec<(u64, String, String)>>>,
}

/// What a finished workload saw.
struct Summary {
    records: Vec<Record>,
}

impl Summary {
    /// When the first write invoked after `at` (µs since the epoch) and acknowledged returned.
    fn first_write_after(&self, at: u64) -> Duration {
        let first = self
            .records
            .iter()
            .filter(|r| r.revision.is_some() && r.operation.invoked > at)
            .filter_map(|r| r.operation.returned)
            .min()
            .expect("writes were acknowledged after the fault");
        Duration::from_micros(first - at)
    }
}

impl Workload {
    /// Creates the keys through `servers[0]` and starts the clients against every server.
    async fn start(servers: &[Server]) -> Self {
        for key in 0..KEYS {
            let (code, created) = servers[0].post("/api/v1/namespaces/default/configmaps", &config_map(&format!("lin-{key}"), "initial", None)).await;
            assert_eq!(code, 201, "{created}");
        }
        let (_, listed) = servers[0].get("/api/v1/namespaces/default/configmaps").await;
        let from: u64 = listed["metadata"]["resourceVersion"].as_str().and_then(|rv| rv.parse().ok()).expect("list revision");
        let urls = Arc::new(servers.iter().map(|s| s.url.clone()).collect::<Vec<_>>());
        let (http, token) = (servers[0].http.clone(), servers[0].token.clone());
        let epoch = Instant::now();
        let stop_workers = Arc::new(AtomicBool::new(false));
        let watch_until = Arc::new(AtomicU64::new(0));
        let records = Arc::new(Mutex::new(Vec::new()));
        let watches = (0..servers.len())
            .map(|first| tokio::spawn(follow(first, Arc::clone(&urls), http.clone(), token.clone(), from, Arc::clone(&watch_until))))
            .collect();
        let workers = (0..WORKERS)
            .map(|id| tokio::spawn(worker(id, Arc::clone(&urls), http.clone(), token.clone(), epoch, Arc::clone(&stop_workers), Arc::clone(&records))))
            .collect();
        Self { epoch, initial: Some("initial".into()), stop_workers, watch_until, records, workers, watches }
    }

    /// Microseconds since the workload started (the history's clock).
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Stops the clients, reads every key from each of `readers` to close the history, and
    /// checks it: every key's history is linearizable (so no acknowledged write was lost: the
    /// final reads would contradict it), and every watch saw revisions only go forward, saw
    /// every acknowledged write, and agreed with the others on what each revision was.
    async fn finish(self, readers: &[&Server]) -> Summary {
        self.stop_workers.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.await.expect("worker");
        }
        let mut records = std::mem::take(&mut *self.records.lock().expect("records"));
        for server in readers {
            for key in 0..KEYS {
                let invoked = self.epoch.elapsed().as_micros() as u64;
                let (code, object) = server.get(&format!("/api/v1/namespaces/default/configmaps/lin-{key}")).await;
                assert_eq!(code, 200, "{object}");
                let returned = self.epoch.elapsed().as_micros() as u64;
                let value = object["data"]["v"].as_str().map(str::to_owned);
                records.push(Record { key, operation: Operation { invoked, returned: Some(returned), kind: Kind::Read(value) }, revision: None });
            }
        }
        let last_acknowledged = records.iter().filter_map(|r| r.revision).max().unwrap_or(1);
        self.watch_until.store(last_acknowledged, Ordering::Relaxed);
        let mut stories = Vec::new();
        for watch in self.watches {
            stories.push(watch.await.expect("watch"));
        }

        let acknowledged = records.iter().filter(|r| r.revision.is_some()).count();
        let unknown = records.iter().filter(|r| r.operation.returned.is_none()).count();
        assert!(acknowledged > 50, "the workload made progress: {acknowledged} acknowledged writes");
        eprintln!("fault history: {} operations, {acknowledged} acknowledged writes, {unknown} with unknown outcome", records.len());
        for key in 0..KEYS {
            let history: Vec<Operation> = records.iter().filter(|r| r.key == key).map(|r| r.operation.clone()).collect();
            if let Err(error) = linearizable::check(&history, self.initial.clone()) {
                panic!("key lin-{key} ({} operations, {unknown} of all with unknown outcome): {error}", history.len());
            }
        }
        let mut by_revision: BTreeMap<u64, (String, String)> = BTreeMap::new();
        for (index, story) in stories.iter().enumerate() {
            assert!(story.windows(2).all(|pair| pair[0].0 < pair[1].0), "watch {index} went backwards or repeated: {story:?}");
            for (revision, name, value) in story {
                let entry = by_revision.entry(*revision).or_insert_with(|| (name.clone(), value.clone()));
                assert_eq!(entry, &(name.clone(), value.clone()), "watches disagree about revision {revision}");
            }
        }
        for record in records.iter().filter(|r| r.revision.is_some()) {
            let revision = record.revision.expect("filtered");
            for (index, story) in stories.iter().enumerate() {
                assert!(story.iter().any(|(r, _, _)| *r == revision), "watch {index} missed the acknowledged write at revision {revision}");
            }
        }
        Summary { records }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_under_load_loses_no_acknowledged_write_and_the_history_stays_linearizable() {
    let mut servers = cluster(3, &["--disable-controllers"]).await;
    let all: Vec<&Server> = servers.iter().collect();
    let leader = agreed_leader(&all, 3).await;
    let workload = Workload::start(&servers).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let killed_at = workload.now();
    servers[leader].kill();
    tokio::time::sleep(Duration::from_secs(6)).await;

    // The old leader comes back as a follower and catches up with the same history.
    let address = servers[leader].url.trim_start_matches("https://").to_owned();
    servers[leader].restart_on_the_same_port(&["--disable-node", "--disable-controllers"]).await;
    assert_eq!(servers[leader].url.trim_start_matches("https://"), address);
    let all: Vec<&Server> = servers.iter().collect();
    let new_leader = agreed_leader(&all, 3).await;
    assert_ne!(new_leader, leader, "another server leads after the kill");
    let summary = workload.finish(&all).await;
    let failover = summary.first_write_after(killed_at);
    eprintln!("first write acknowledged {failover:?} after killing the leader");
    assert!(failover <= Duration::from_secs(3), "the first write after killing the leader was acknowledged {failover:?} later");
}

/// A private network of network namespaces on a bridge, one per server, so that a server can be
/// cut off from its peers (iptables in its namespace) while the test, in the root namespace,
/// still reaches every server.
struct Network {
    bridge: String,
    namespaces: Vec<String>,
    subnet: u8,
}

fn sh(command: &str) {
    let status = std::process::Command::new("sh").args(["-c", command]).status().expect("sh");
    assert!(status.success(), "{command} failed with {status}");
}

impl Network {
    fn new(hosts: usize) -> Self {
        let id = std::process::id() % 10_000;
        let subnet = 100 + (id % 100) as u8;
        let bridge = format!("shb{id}");
        let _ = std::process::Command::new("ip").args(["link", "del", &bridge]).status();
        sh(&format!("ip link add {bridge} type bridge && ip addr add 10.{subnet}.0.1/24 dev {bridge} && ip link set {bridge} up"));
        // Docker's FORWARD policy drops bridged traffic (br_netfilter): let this bridge's through.
        sh(&format!("iptables -I FORWARD 1 -i {bridge} -o {bridge} -j ACCEPT"));
        let mut namespaces = Vec::new();
        for host in 0..hosts {
            let namespace = format!("shoal-{id}-{host}");
            let veth = format!("shv{id}x{host}");
            let _ = std::process::Command::new("ip").args(["netns", "del", &namespace]).status();
            sh(&format!(
                "ip netns add {namespace} && ip link add {veth} type veth peer name {veth}p && ip link set {veth} master {bridge} && ip link set {veth} up \
                 && ip link set {veth}p netns {namespace} && ip netns exec {namespace} ip addr add 10.{subnet}.0.{}/24 dev {veth}p \
                 && ip netns exec {namespace} ip link set {veth}p up && ip netns exec {namespace} ip link set lo up",
                10 + host
            ));
            namespaces.push(namespace);
        }
        Self { bridge, namespaces, subnet }
    }

    fn address(&self, host: usize) -> String {
        format!("10.{}.0.{}", self.subnet, 10 + host)
    }

    /// Cuts `host` off from every other host (both directions); the root namespace still
    /// reaches it.
    fn isolate(&self, host: usize) {
        for other in (0..self.namespaces.len()).filter(|o| *o != host) {
            let peer = self.address(other);
            sh(&format!(
                "ip netns exec {ns} iptables -A INPUT -s {peer} -j DROP && ip netns exec {ns} iptables -A OUTPUT -d {peer} -j DROP",
                ns = self.namespaces[host]
            ));
        }
    }

    fn heal(&self, host: usize) {
        sh(&format!("ip netns exec {} iptables -F", self.namespaces[host]));
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for namespace in &self.namespaces {
            let _ = std::process::Command::new("ip").args(["netns", "del", namespace]).status();
        }
        let _ = std::process::Command::new("iptables").args(["-D", "FORWARD", "-i", &self.bridge, "-o", &self.bridge, "-j", "ACCEPT"]).status();
        let _ = std::process::Command::new("ip").args(["link", "del", &self.bridge]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_partitioned_into_a_minority_stops_writing_and_rejoins_with_the_majoritys_log() {
    let network = Network::new(3);
    let mut servers: Vec<Server> = Vec::new();
    for host in 0..3 {
        let prefix = ["ip", "netns", "exec", network.namespaces[host].as_str()];
        let api_addr = format!("{}:6443", network.address(host));
        let mut args = vec!["--disable-node", "--disable-controllers", "--api-addr", api_addr.as_str()];
        let join;
        let token;
        if host > 0 {
            join = servers[0].url.clone();
            token = std::fs::read_to_string(servers[0].data_dir.join("server-token")).expect("server token").trim().to_owned();
            args.extend(["--join", join.as_str(), "--token", token.as_str()]);
        }
        servers.push(Server::start_under(&prefix, &args).await);
    }
    // Servers' processes must stop before the network goes away.
    let all: Vec<&Server> = servers.iter().collect();
    let leader = agreed_leader(&all, 3).await;
    let workload = Workload::start(&servers).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cut_at = workload.now();
    network.isolate(leader);

    // The majority elects a new leader and goes on accepting writes.
    let majority: Vec<&Server> = servers.iter().enumerate().filter(|(i, _)| *i != leader).map(|(_, s)| s).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, local) = majority[0].request(reqwest::Method::POST, "/internal/cluster/status", Some(("application/json", b"null".to_vec()))).await;
        let old_leader_id = status_id(&servers[leader]).await;
        if code == 200 && local["leader"].as_u64().is_some_and(|l| l != old_leader_id) {
            break;
        }
        assert!(Instant::now() < deadline, "the majority did not elect a new leader: {local}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, written) = majority[1].post("/api/v1/namespaces/default/configmaps", &config_map("by-the-majority", "x", None)).await;
    assert_eq!(code, 201, "{written}");

    // The old leader refuses writes and linearizable reads, and says why.
    let (code, refused) = servers[leader].post("/api/v1/namespaces/default/configmaps", &config_map("by-the-minority", "x", None)).await;
    assert_eq!(code, 503, "a minority leader refuses writes: {refused}");
    assert!(refused["message"].as_str().unwrap_or("").contains("majority"), "and says why: {refused}");
    let (code, refused) = servers[leader].get("/api/v1/namespaces/default/configmaps/by-the-majority").await;
    assert_eq!(code, 503, "a minority leader serves no stale reads: {refused}");
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Healed, it follows the new leader and ends with the same log.
    network.heal(leader);
    let new_leader = agreed_leader(&all, 3).await;
    assert_ne!(new_leader, leader);
    let summary = workload.finish(&all).await;
    eprintln!("first write acknowledged {:?} after the partition", summary.first_write_after(cut_at));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut positions = Vec::new();
        for server in &servers {
            let (_, local) = server.request(reqwest::Method::POST, "/internal/cluster/status", Some(("application/json", b"null".to_vec()))).await;
            positions.push((local["last_log_index"].clone(), local["applied_index"].clone(), local["revision"].clone()));
        }
        if positions.iter().all(|p| *p == positions[0]) {
            break;
        }
        assert!(Instant::now() < deadline, "the servers' logs did not converge: {positions:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut listings = Vec::new();
    for server in &servers {
        let (_, listed) = server.get("/api/v1/namespaces/default/configmaps").await;
        let mut names: Vec<(String, String)> = listed["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|cm| (cm["metadata"]["name"].as_str().unwrap_or("").to_owned(), cm["metadata"]["resourceVersion"].as_str().unwrap_or("").to_owned()))
            .collect();
        names.sort();
        listings.push(names);
    }
    assert!(listings.iter().all(|l| *l == listings[0]), "the servers hold different objects: {listings:?}");
    for server in &mut servers {
        server.kill();
    }
    drop(network);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adding_and_removing_members_under_load_keeps_the_history_linearizable() {
    let servers = cluster(3, &["--disable-controllers"]).await;
    let all: Vec<&Server> = servers.iter().collect();
    agreed_leader(&all, 3).await;
    let workload = Workload::start(&servers).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A fourth server joins under load (learner, catch-up, voter)...
    let token = std::fs::read_to_string(servers[0].data_dir.join("server-token")).expect("server token").trim().to_owned();
    let fourth = Server::start_with(&["--disable-node", "--disable-controllers", "--join", &servers[1].url, "--token", &token]).await;
    let four: Vec<&Server> = servers.iter().chain(std::iter::once(&fourth)).collect();
    let leader = agreed_leader(&four, 4).await;
    // ...then a member other than the leader (and other than the new one) is removed.
    let removed = (0..3).find(|i| *i != leader).expect("a follower");
    let removed_id = status_id(&servers[removed]).await;
    let (code, answer) = servers[leader].request(reqwest::Method::POST, &format!("/internal/cluster/members/{removed_id}/remove"), Some(("application/json", b"null".to_vec()))).await;
    assert_eq!((code, answer.get("Err")), (200, None), "removing member {removed_id}: {answer}");
    let remaining: Vec<&Server> = four.iter().enumerate().filter(|(i, _)| *i != removed).map(|(_, s)| *s).collect();
    agreed_leader(&remaining, 3).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    workload.finish(&remaining).await;
    let (code, read) = fourth.get("/api/v1/namespaces/default/configmaps/lin-0").await;
    assert_eq!(code, 200, "the new member serves reads: {read}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_that_was_down_catches_up_through_a_snapshot() {
    let extra = ["--disable-controllers", "--raft-snapshot-entries", "100", "--raft-kept-entries", "10"];
    let mut servers = cluster(3, &extra).await;
    let all: Vec<&Server> = servers.iter().collect();
    let leader = agreed_leader(&all, 3).await;
    let workload = Workload::start(&servers).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let follower = (leader + 1) % 3;
    servers[follower].kill();
    // An artifact pushed while the follower is down: its chunks travel in log entries that the
    // leader compacts away, and snapshots carry no chunks.
    crate::harness::push(&servers[leader], "hello/hello.wasm", "shoal.local/samples/hello:latest");
    // One write per log entry (sequential), enough for the leader to snapshot and purge its log
    // past what the follower has.
    for index in 0..250 {
        let (code, created) = servers[leader].post("/api/v1/namespaces/default/configmaps", &config_map(&format!("while-down-{index}"), "x", None)).await;
        assert_eq!(code, 201, "{created}");
    }
    let leader_status = status(&servers[leader]).await;
    let leader_snapshot = leader_status["snapshot_index"].as_u64().expect("the leader has snapshotted");
    let mut args = vec!["--disable-node"];
    args.extend_from_slice(&extra);
    servers[follower].restart_on_the_same_port(&args).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, local) = servers[follower].request(reqwest::Method::POST, "/internal/cluster/status", Some(("application/json", b"null".to_vec()))).await;
        if local["snapshot_index"].as_u64().is_some_and(|index| index >= leader_snapshot) && local["applied_index"].as_u64() >= leader_status["last_log_index"].as_u64() {
            break;
        }
        assert!(Instant::now() < deadline, "the follower did not install the leader's snapshot (index {leader_snapshot}): {local}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for index in [0, 124, 249] {
        let (code, read) = servers[follower].get(&format!("/api/v1/namespaces/default/configmaps/while-down-{index}")).await;
        assert_eq!(code, 200, "{read}");
    }
    let (_, listed) = servers[follower].get("/api/v1/namespaces/default/configmaps").await;
    let (_, on_leader) = servers[leader].get("/api/v1/namespaces/default/configmaps").await;
    assert_eq!(listed["items"].as_array().map(Vec::len), on_leader["items"].as_array().map(Vec::len));
    // The follower serves the artifact, reading the chunks it never received from a peer.
    let pulled = servers[follower].data_dir.join("pulled.wasm");
    let (code, _, stderr) = servers[follower].cli(&["--server", &servers[follower].url, "pull", "shoal.local/samples/hello:latest", "-o", pulled.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "pull through the caught-up follower: {stderr}");
    let original = std::fs::read(crate::harness::repository().join("samples/hello/hello.wasm")).expect("hello.wasm");
    assert_eq!(std::fs::read(&pulled).expect("pulled"), original, "the same bytes");
    let all: Vec<&Server> = servers.iter().collect();
    workload.finish(&all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controllers_move_to_another_server_when_theirs_dies() {
    let mut servers = cluster(3, &[]).await;
    let all: Vec<&Server> = servers.iter().collect();
    agreed_leader(&all, 3).await;
    let lease_path = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/shoal-controller-manager";
    let holder_of = |lease: &Value| lease["spec"]["holderIdentity"].as_str().unwrap_or("").to_owned();
    let identities: Vec<String> =
        servers.iter().map(|s| std::fs::read_to_string(s.data_dir.join("controller-identity")).expect("controller identity").trim().to_owned()).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let holder = loop {
        let (code, lease) = servers[0].get(lease_path).await;
        if code == 200
            && let Some(index) = identities.iter().position(|id| *id == holder_of(&lease))
        {
            break index;
        }
        assert!(Instant::now() < deadline, "no server took the controller Lease: {lease}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    servers[holder].kill();
    let survivor = (holder + 1) % 3;
    let killed_at = Instant::now();
    let deadline = killed_at + Duration::from_secs(40);
    loop {
        let (code, lease) = servers[survivor].get(lease_path).await;
        if code == 200 && identities.iter().position(|id| *id == holder_of(&lease)).is_some_and(|index| index != holder) {
            break;
        }
        assert!(Instant::now() < deadline, "the controller Lease did not move off the dead server: {lease}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The controllers now run elsewhere: a Deployment gets its ReplicaSet.
    let (code, created) = servers[survivor].post("/apis/apps/v1/namespaces/default/deployments", &crate::harness::deployment("after-failover")).await;
    assert_eq!(code, 201, "{created}");
    crate::harness::wait_until(&servers[survivor], "/apis/apps/v1/namespaces/default/replicasets", 30, "a ReplicaSet from the new controller manager", |list| {
        list["items"].as_array().is_some_and(|items| items.iter().any(|rs| rs["metadata"]["ownerReferences"][0]["name"] == "after-failover"))
    })
    .await;
}

/// Fetches `http://hello.localhost/` through a node's ingress listener.
async fn hello_through(ingress: &str) -> Option<String> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
    let response = client.get(format!("http://{ingress}/")).header("Host", "hello.localhost").send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.text().await.ok()
}

/// The README's multi-process recipe: three servers, two agents, the sample app. Killing the
/// leader (the server the agents were given) stops neither `shoal apply` for more than 3 s nor
/// the app; the agents move to the surviving servers and run the new pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_and_two_agents_serve_the_sample_through_the_death_of_the_leader() {
    let mut servers = cluster(3, &[]).await;
    let all: Vec<&Server> = servers.iter().collect();
    let leader = agreed_leader(&all, 3).await;
    // The agents are given only the leader; they learn the other servers from it.
    let agents = [
        Agent::start_through(&servers[leader].url, &servers[0], "agent-a", "127.0.0.2"),
        Agent::start_through(&servers[leader].url, &servers[0], "agent-b", "127.0.0.3"),
    ];
    let other = (leader + 1) % 3;
    crate::harness::push(&servers[other], "hello/hello.wasm", "shoal.local/samples/hello:latest");
    let manifest = crate::harness::repository().join("samples/hello/hello.yaml");
    let (code, _, stderr) = servers[other].cli(&["apply", "-f", manifest.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{stderr}");
    crate::harness::wait_until(&servers[other], "/apis/apps/v1/namespaces/default/deployments/hello", 90, "the sample's rollout", |d| d["status"]["readyReplicas"] == 2).await;
    let (ingress_a, _) = crate::harness::ingress_of(&servers[other], "agent-a").await;
    let (ingress_b, _) = crate::harness::ingress_of(&servers[other], "agent-b").await;
    for ingress in [&ingress_a, &ingress_b] {
        let body = hello_through(ingress).await;
        assert!(body.as_deref().is_some_and(|b| b.contains("hello from shoal")), "the sample answers through {ingress}: {body:?}");
    }
    // Let the agents learn the servers (they ask at start), and the leader's kubeconfig list them.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !std::fs::read_to_string(servers[leader].kubeconfig()).is_ok_and(|k| servers.iter().all(|s| k.contains(&s.url)) && k.contains("shoal.dev/servers")) {
        assert!(Instant::now() < deadline, "the leader's kubeconfig does not list every server");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    servers[leader].kill();
    let killed = Instant::now();
    let scaled = std::fs::read_to_string(&manifest).expect("manifest").replace("replicas: 2", "replicas: 4");
    let scaled_path = servers[other].data_dir.join("hello-4.yaml");
    std::fs::write(&scaled_path, scaled).expect("write manifest");
    // Through the dead leader's own kubeconfig: the client moves to the servers it lists.
    let (code, stdout, stderr) = servers[leader].cli(&["apply", "-f", scaled_path.to_str().expect("utf-8")]);
    let applied_after = killed.elapsed();
    assert_eq!(code, 0, "shoal apply right after the leader died: {stdout}{stderr}");
    eprintln!("shoal apply finished {applied_after:?} after the leader was killed");
    assert!(applied_after <= Duration::from_secs(3), "shoal apply took {applied_after:?} after the leader died");

    // The agents run the new pods through the surviving servers, and stay Ready.
    crate::harness::wait_until(&servers[other], "/apis/apps/v1/namespaces/default/deployments/hello", 90, "four ready replicas after the failover", |d| d["status"]["readyReplicas"] == 4).await;
    let (_, pods) = servers[other].get("/api/v1/namespaces/default/pods?labelSelector=app%3Dhello").await;
    let nodes: std::collections::BTreeSet<&str> = pods["items"].as_array().expect("pods").iter().filter_map(|p| p["spec"]["nodeName"].as_str()).collect();
    assert_eq!(nodes.len(), 2, "both agents run the sample's pods: {nodes:?}");
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (_, listed) = servers[other].get("/api/v1/nodes").await;
    for node in listed["items"].as_array().expect("nodes") {
        let ready = node["status"]["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "Ready").map(|c| c["status"].clone());
        assert_eq!(ready, Some(json!("True")), "node {} stays Ready through the failover: {node}", node["metadata"]["name"]);
    }
    for ingress in [&ingress_a, &ingress_b] {
        let body = hello_through(ingress).await;
        assert!(body.as_deref().is_some_and(|b| b.contains("hello from shoal")), "the sample still answers through {ingress}: {body:?}");
    }
    drop(agents);
}

/// Starts `shoal agent` with only a server URL and a token (no CA file).
fn agent_with_token(url: &str, token: &str, name: &str, directory: &std::path::Path) -> std::process::Child {
    let log = std::fs::File::create(directory.join(format!("{name}.log"))).expect("log file");
    std::process::Command::new(shoal_binary())
        .args(["agent", "--server", url, "--token", token, "--data-dir"])
        .arg(directory.join(name))
        .args(["--node-name", name, "--data-addr", "127.0.0.1:0", "--disable-ingress"])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start shoal agent")
}

/// A fixed deployment's secrets (`--token`, `--agent-token` on the first server) and join tokens
/// (`shoal token create`): servers and agents join with either, agents fetch the CA themselves,
/// and an expired token joins nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_and_agents_join_with_preset_secrets_and_join_tokens_until_they_expire() {
    let first = Server::start_with(&["--disable-node", "--disable-controllers", "--token", "preset-server-secret", "--agent-token", "preset-agent-secret"]).await;
    let server_token = std::fs::read_to_string(first.data_dir.join("server-token")).expect("server token");
    assert!(server_token.trim().ends_with("::preset-server-secret"), "the preset secret, under the CA's hash: {server_token}");
    // A bare secret joins (trusting the CA on first use)...
    let second = Server::start_with(&["--disable-node", "--disable-controllers", "--join", &first.url, "--token", "preset-server-secret"]).await;
    // ...and so does a join token made for servers.
    let (code, created, stderr) = first.cli(&["token", "create", "--role", "server", "--ttl", "1h"]);
    assert_eq!(code, 0, "{stderr}");
    let join_token = created.trim().to_owned();
    assert!(join_token.starts_with("K1") && join_token.contains("::"), "{join_token}");
    let third = Server::start_with(&["--disable-node", "--disable-controllers", "--join", &second.url, "--token", &join_token]).await;
    agreed_leader(&[&first, &second, &third], 3).await;

    // Agents: one with the bare agent secret, one with a node join token; neither has a CA file.
    let (code, node_join, stderr) = first.cli(&["token", "create", "--role", "node"]);
    assert_eq!(code, 0, "{stderr}");
    let directory = tempfile::tempdir().expect("tempdir");
    let mut agents = vec![
        agent_with_token(&third.url, "preset-agent-secret", "by-secret", directory.path()),
        agent_with_token(&second.url, node_join.trim(), "by-join-token", directory.path()),
    ];
    for name in ["by-secret", "by-join-token"] {
        crate::harness::wait_until(&first, &format!("/api/v1/nodes/{name}"), 60, &format!("node {name} registers and is Ready"), |node| {
            node["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .await;
    }
    // Each agent exchanged its token for a credential of its own node, kept in its data dir,
    // which opens only what that node's agent does (as Kubernetes' Node authorizer).
    let kept = std::fs::read_to_string(directory.path().join("by-join-token/node-token")).expect("the exchanged credential is kept");
    assert!(kept.trim().contains("::node:by-join-token:"), "the join token was exchanged for the node's own credential: {kept}");
    let by_secret = std::fs::read_to_string(directory.path().join("by-secret/node-token")).expect("the exchanged credential is kept");
    assert!(by_secret.trim().contains("::node:by-secret:"), "the shared secret was exchanged for the node's own credential: {by_secret}");
    let (code, _) = first.post("/api/v1/namespaces/default/secrets", &serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "nobodys"}, "stringData": {"k": "v"}})).await;
    assert_eq!(code, 201);
    let as_node = |method: reqwest::Method, path: &str| first.http.request(method, format!("{}{path}", first.url)).bearer_auth(kept.trim());
    let answer = as_node(reqwest::Method::GET, "/api/v1/namespaces/default/secrets/nobodys").send().await.expect("request");
    assert_eq!(answer.status().as_u16(), 403);
    let status: serde_json::Value = answer.json().await.expect("a Status");
    assert!(status["message"].as_str().is_some_and(|m| m.contains(r#"User "system:node:by-join-token""#) && m.ends_with("no pod bound to node by-join-token uses it")), "{status}");
    let answer = as_node(reqwest::Method::PATCH, "/api/v1/nodes/by-secret/status")
        .header("Content-Type", "application/merge-patch+json")
        .body(r#"{"metadata":{"labels":{"taken":"over"}}}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(answer.status().as_u16(), 403, "a node changes only its own Node");
    let answer = as_node(reqwest::Method::GET, "/api/v1/nodes/by-secret").send().await.expect("request");
    assert_eq!(answer.status().as_u16(), 200, "it reads other nodes");
    let answer = as_node(reqwest::Method::POST, "/internal/cluster/node-join").json(&serde_json::json!({"nodeName": "by-secret"})).send().await.expect("request");
    assert_eq!(answer.status().as_u16(), 403, "a node's credential mints no other node's");

    // An expired join token joins nothing, and says so.
    let (code, short, stderr) = first.cli(&["token", "create", "--role", "server", "--ttl", "1s"]);
    assert_eq!(code, 0, "{stderr}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let refused_dir = tempfile::tempdir().expect("tempdir");
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(shoal_binary())
            .args(["server", "--data-dir"])
            .arg(refused_dir.path().join("data"))
            .args(["--api-addr", "127.0.0.1:0", "--disable-node", "--join", &first.url, "--token", short.trim()])
            .output(),
    )
    .await
    .expect("the refused server exits")
    .expect("run shoal server");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("401"), "an expired token is refused: {stderr}");

    let (code, listed, stderr) = first.cli(&["token", "list"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(listed.lines().filter(|line| line.contains("server") || line.contains("node")).count(), 3, "{listed}");
    assert!(!listed.contains(join_token.split("::").nth(1).unwrap_or("-").split('.').nth(1).unwrap_or("-")), "secrets are never listed: {listed}");
    for agent in &mut agents {
        let _ = agent.kill();
        let _ = agent.wait();
    }
}
