//! The built-in OCI registry and `shoal push`/`pull`/`artifact`, against real servers: Shoal's,
//! and Debian's `docker-registry` on loopback for the external path.


use reqwest::Method;
use serde_json::{Value, json};
use shoal_oci::Digest;

use crate::harness::{DockerRegistry, Server, repository};

fn sample(name: &str) -> String {
    repository().join(format!("samples/{name}/{name}.wasm")).to_str().expect("utf-8").to_owned()
}

fn registry_error(body: &Value) -> (&str, &str) {
    (body["errors"][0]["code"].as_str().unwrap_or_default(), body["errors"][0]["message"].as_str().unwrap_or_default())
}

#[tokio::test]
async fn push_inspect_and_pull_round_trip_through_the_built_in_registry() {
    let server = Server::start().await;
    let (code, stdout, stderr) = server.cli(&["push", &sample("hello"), "shoal.local/hello:1"]);
    assert_eq!(code, 0, "{stderr}");
    let digest = stdout.lines().find_map(|l| l.strip_prefix("digest: ")).expect("a digest line").to_owned();
    assert!(Digest::parse(&digest).is_ok(), "{digest}");

    let (code, stdout, stderr) = server.cli(&["artifact", "inspect", "shoal.local/hello:1"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("World:         http"), "{stdout}");
    assert!(stdout.contains("Kind:          component"), "{stdout}");
    assert!(stdout.contains("application/vnd.wasm.config.v0+json"), "{stdout}");
    assert!(stdout.contains("wasi:http/incoming-handler@0.2"), "{stdout}");

    let out = tempfile::tempdir().expect("tempdir");
    let pulled = out.path().join("hello.wasm");
    let (code, _, stderr) = server.cli(&["pull", &format!("shoal.local/hello@{digest}"), "-o", pulled.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(std::fs::read(&pulled).expect("pulled"), std::fs::read(sample("hello")).expect("sample"), "pull by digest is byte-identical");

    let (code, stdout, _) = server.cli(&["push", &repository().join("samples/worker/worker-p1.wasm").to_string_lossy(), "shoal.local/samples/worker:p1"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("core module, command world"), "{stdout}");
    let (code, stdout, _) = server.cli(&["artifact", "ls"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("shoal.local/hello:1") && stdout.contains("shoal.local/samples/worker:p1"), "{stdout}");

    // The registry's content went through Raft: it survives a restart.
    let mut server = server;
    server.terminate();
    server.restart().await;
    let pulled_again = out.path().join("again.wasm");
    let (code, _, stderr) = server.cli(&["pull", "shoal.local/hello:1", "-o", pulled_again.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(std::fs::read(&pulled_again).expect("pulled"), std::fs::read(sample("hello")).expect("sample"));
}

#[tokio::test]
async fn non_wasm_is_refused_by_the_cli_and_by_the_registry() {
    let server = Server::start().await;
    let temp = tempfile::tempdir().expect("tempdir");
    let text = temp.path().join("notes.wasm");
    std::fs::write(&text, "just some text\n").expect("write");
    let (code, _, stderr) = server.cli(&["push", text.to_str().expect("utf-8"), "shoal.local/notes:1"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("not a valid WebAssembly binary") && stderr.contains("magic bytes"), "{stderr}");

    // Bypassing the CLI: a manifest that claims a text blob is Wasm is refused at PUT.
    let layer = b"just some text\n".to_vec();
    let config = b"{}".to_vec();
    for blob in [&layer, &config] {
        let digest = Digest::of(blob);
        let (code, _) = server.request(Method::POST, &format!("/v2/notes/blobs/uploads/?digest={digest}"), Some(("application/octet-stream", blob.clone()))).await;
        assert_eq!(code, 201);
    }
    let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.wasm.config.v0+json", "digest": Digest::of(&config).to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/wasm", "digest": Digest::of(&layer).to_string(), "size": layer.len()}]});
    let (code, body) = server.request(Method::PUT, "/v2/notes/manifests/1", Some(("application/vnd.oci.image.manifest.v1+json", serde_json::to_vec(&manifest).expect("json")))).await;
    assert_eq!(code, 400);
    let (error_code, message) = registry_error(&body);
    assert_eq!(error_code, "MANIFEST_INVALID");
    assert!(message.contains("is not valid Wasm"), "{message}");
}

#[tokio::test]
async fn pushes_need_the_admin_token_and_the_node_token_can_pull() {
    let server = Server::start().await;
    server.cli(&["push", &sample("hello"), "shoal.local/hello:1"]);
    let anonymous = server.http.post(format!("{}/v2/hello/blobs/uploads/", server.url)).send().await.expect("request");
    assert_eq!(anonymous.status().as_u16(), 401);
    assert!(anonymous.headers().contains_key("www-authenticate"));
    let node_token = std::fs::read_to_string(server.data_dir.join("node-token")).expect("node token").trim().to_owned();
    let as_node = server.http.post(format!("{}/v2/hello/blobs/uploads/", server.url)).bearer_auth(&node_token).send().await.expect("request");
    assert_eq!(as_node.status().as_u16(), 403);
    let body: Value = as_node.json().await.expect("json");
    assert_eq!(registry_error(&body).0, "DENIED");
    let pull = server
        .http
        .get(format!("{}/v2/hello/manifests/1", server.url))
        .basic_auth("node", Some(&node_token))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .expect("request");
    assert_eq!(pull.status().as_u16(), 200, "the node token pulls, with basic auth too");
}

#[tokio::test]
async fn corrupt_uploads_and_oversized_artifacts_are_refused() {
    let server = Server::start_with(&["--registry-max-artifact-bytes", "50000"]).await;
    let wrong = Digest::of(b"something else");
    let (code, body) = server.request(Method::POST, &format!("/v2/x/blobs/uploads/?digest={wrong}"), Some(("application/octet-stream", b"payload".to_vec()))).await;
    assert_eq!(code, 400);
    let (error_code, message) = registry_error(&body);
    assert_eq!(error_code, "DIGEST_INVALID");
    assert!(message.contains("digest mismatch"), "{message}");

    let (code, _, stderr) = server.cli(&["push", &sample("hello"), "shoal.local/hello:1"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("SIZE_INVALID") && stderr.contains("50000"), "{stderr}");
}

#[tokio::test]
async fn chunked_uploads_then_rm_and_gc_free_the_space() {
    let server = Server::start().await;
    let blob: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let digest = Digest::of(&blob);
    let start = server.http.post(format!("{}/v2/big/blobs/uploads/", server.url)).bearer_auth(&server.token).send().await.expect("start");
    assert_eq!(start.status().as_u16(), 202);
    let mut location = start.headers()["location"].to_str().expect("location").to_owned();
    for (index, chunk) in blob.chunks(1_100_000).enumerate() {
        let start_byte = index * 1_100_000;
        let response = server
            .http
            .patch(format!("{}{location}", server.url))
            .bearer_auth(&server.token)
            .header("Content-Range", format!("{start_byte}-{}", start_byte + chunk.len() - 1))
            .body(chunk.to_vec())
            .send()
            .await
            .expect("patch");
        assert_eq!(response.status().as_u16(), 202);
        location = response.headers()["location"].to_str().expect("location").to_owned();
        assert_eq!(response.headers()["range"].to_str().expect("range"), format!("0-{}", start_byte + chunk.len() - 1));
    }
    let finish = server.http.put(format!("{}{location}?digest={digest}", server.url)).bearer_auth(&server.token).send().await.expect("put");
    assert_eq!(finish.status().as_u16(), 201);
    let fetched = server.http.get(format!("{}/v2/big/blobs/{digest}", server.url)).bearer_auth(&server.token).send().await.expect("get");
    assert_eq!(fetched.bytes().await.expect("bytes").to_vec(), blob, "a chunked upload reads back whole");

    server.cli(&["push", &sample("hello"), "shoal.local/hello:1"]);
    let (code, stdout, _) = server.cli(&["artifact", "gc", "--grace-period", "0"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("1 unreferenced blob(s)"), "only the loose 3 MB blob goes: {stdout}");
    let (code, _, stderr) = server.cli(&["artifact", "rm", "shoal.local/hello:1"]);
    assert_eq!(code, 0, "{stderr}");
    let (_, stdout, _) = server.cli(&["artifact", "gc", "--grace-period", "0"]);
    assert!(stdout.contains("deleted 1 untagged manifest(s) and 2 unreferenced blob(s)"), "{stdout}");
    let (code, _) = server.get(&format!("/v2/big/blobs/{digest}")).await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn an_external_loopback_registry_takes_the_cncf_format_and_gives_it_back_byte_identical() {
    let server = Server::start().await;
    let registry = DockerRegistry::start().await;
    let reference = format!("{}/samples/hello:1", registry.host);
    let (code, stdout, stderr) = server.cli(&["push", &sample("hello"), &reference]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("digest: sha256:"), "{stdout}");
    let manifest: Value = reqwest::Client::new()
        .get(format!("http://{}/v2/samples/hello/manifests/1", registry.host))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .expect("manifest")
        .json()
        .await
        .expect("json");
    assert_eq!(manifest["config"]["mediaType"], "application/vnd.wasm.config.v0+json");
    assert_eq!(manifest["layers"][0]["mediaType"], "application/wasm");

    let out = tempfile::tempdir().expect("tempdir");
    let pulled = out.path().join("hello.wasm");
    let (code, _, stderr) = server.cli(&["pull", &reference, "-o", pulled.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(std::fs::read(&pulled).expect("pulled"), std::fs::read(sample("hello")).expect("sample"));
    let (code, stdout, _) = server.cli(&["artifact", "inspect", &reference]);
    assert_eq!(code, 0);
    assert!(stdout.contains("World:         http"), "{stdout}");
}

#[tokio::test]
async fn the_node_cache_downloads_once_and_evicts_unused_artifacts() {
    let server = Server::start().await;
    server.cli(&["push", &sample("hello"), "shoal.local/hello:1"]);
    server.cli(&["push", &sample("echo"), "shoal.local/echo:1"]);
    let node_token = std::fs::read_to_string(server.data_dir.join("node-token")).expect("node token").trim().to_owned();
    let ca = std::fs::read(server.data_dir.join("pki/ca.crt")).expect("ca");
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("pem"))
        .build()
        .expect("client");
    let client = shoal_oci::client::RegistryClient::new(http, server.url.clone(), "shoal.local", shoal_oci::client::Auth::Bearer(node_token));
    let dir = tempfile::tempdir().expect("tempdir");
    let hello_size = std::fs::metadata(sample("hello")).expect("size").len();
    // Room for one of the two components only.
    let cache = shoal_oci::cache::ArtifactCache::open(dir.path(), hello_size + 1024, shoal_oci::DEFAULT_MAX_ARTIFACT_BYTES).expect("cache");
    let hello = shoal_oci::Reference::parse("shoal.local/hello:1").expect("reference");
    let (first, second) = tokio::join!(cache.pull(&client, &hello), cache.pull(&client, &hello));
    let (first, second) = (first.expect("pull"), second.expect("pull"));
    assert_eq!(cache.downloads(), 1, "concurrent pulls of one digest share one download");
    assert_eq!(first.blobs[0].path, second.blobs[0].path);
    assert_eq!(std::fs::read(&first.blobs[0].path).expect("cached"), std::fs::read(sample("hello")).expect("sample"));
    let hello_digest = first.blobs[0].digest.clone();
    assert!(matches!(first.kind, shoal_oci::media::ArtifactKind::Wasm { .. }));

    let echo = shoal_oci::Reference::parse("shoal.local/echo:1").expect("reference");
    let echo_artifact = cache.pull(&client, &echo).await.expect("pull echo");
    assert!(cache.contains(&hello_digest), "a blob in use is never evicted, even over budget");
    drop((first, second));
    assert!(!cache.contains(&hello_digest), "once unused, the least recently used blob goes");
    assert!(cache.contains(&echo_artifact.blobs[0].digest));

    // Corruption on disk is caught on first use after a restart, and healed by a new download.
    let echo_path = echo_artifact.blobs[0].path.clone();
    drop(echo_artifact);
    drop(cache);
    std::fs::write(&echo_path, b"corrupted").expect("corrupt");
    let cache = shoal_oci::cache::ArtifactCache::open(dir.path(), 10 * 1024 * 1024, shoal_oci::DEFAULT_MAX_ARTIFACT_BYTES).expect("reopen");
    let healed = cache.pull(&client, &echo).await.expect("pull");
    assert_eq!(std::fs::read(&healed.blobs[0].path).expect("cached"), std::fs::read(sample("echo")).expect("sample"));
    assert_eq!(cache.downloads(), 1);
}
