//! Starting and stopping real `shoal server` processes, and talking to them over HTTPS.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running `shoal server` on a temporary data dir and a free loopback port.
pub struct Server {
    pub child: Option<Child>,
    pub data_dir: PathBuf,
    pub url: String,
    pub token: String,
    pub http: reqwest::Client,
    extra_args: Vec<String>,
    /// A command the server runs under (`ip netns exec NS`), if any.
    prefix: Vec<String>,
    _temp: Option<tempfile::TempDir>,
}

pub fn shoal_binary() -> &'static str {
    env!("CARGO_BIN_EXE_shoal")
}

impl Server {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    pub async fn start_with(extra_args: &[&str]) -> Self {
        Self::start_under(&[], extra_args).await
    }

    /// Starts a server under `prefix` (for example `ip netns exec NS`, to run it in a network
    /// namespace), with `extra_args`.
    pub async fn start_under(prefix: &[&str], extra_args: &[&str]) -> Self {
        let temp = tempfile::tempdir().expect("tempdir");
        let data_dir = temp.path().join("data");
        let prefix = prefix.iter().map(|s| s.to_string()).collect();
        let mut server = Self::launch(prefix, data_dir, extra_args.iter().map(|s| s.to_string()).collect()).await;
        server._temp = Some(temp);
        server
    }

    async fn launch(prefix: Vec<String>, data_dir: PathBuf, extra_args: Vec<String>) -> Self {
        let kubeconfig = data_dir.join("admin.kubeconfig");
        let _ = std::fs::remove_file(&kubeconfig);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.parent().unwrap_or(Path::new("/tmp")).join("server.log"))
            .expect("log file");
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(shoal_binary());
                command
            }
            None => Command::new(shoal_binary()),
        };
        let child = command
            .args(["server", "--data-dir"])
            .arg(&data_dir)
            .args(if extra_args.iter().any(|a| a == "--api-addr") { &[][..] } else { &["--api-addr", "127.0.0.1:0"][..] })
            .args(["--data-addr", "127.0.0.1:0", "--node-name", "node-1"])
            .args(["--ingress-addr", "127.0.0.1:0", "--ingress-tls-addr", "127.0.0.1:0"])
            .args(&extra_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start shoal server");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !kubeconfig.exists() {
            assert!(Instant::now() < deadline, "the server did not write its kubeconfig within 60 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let text = std::fs::read_to_string(&kubeconfig).expect("kubeconfig");
        let url = text.lines().find_map(|l| l.trim().strip_prefix("server: ")).expect("server line").to_owned();
        let token = std::fs::read_to_string(data_dir.join("admin-token")).expect("admin token").trim().to_owned();
        let ca = std::fs::read(data_dir.join("pki/ca.crt")).expect("ca");
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("ca pem"))
            .build()
            .expect("client");
        let server = Self { child: Some(child), data_dir, url, token, http, extra_args, prefix, _temp: None };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = server.http.get(format!("{}/readyz", server.url)).send().await
                && response.status().is_success()
            {
                break;
            }
            assert!(Instant::now() < deadline, "the server did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    /// The server's warnings and errors, for a failing test's message.
    pub fn log_problems(&self) -> String {
        log_problems(&self.data_dir.parent().unwrap_or(Path::new("/tmp")).join("server.log"))
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir.join("admin.kubeconfig")
    }

    /// Stops the process with SIGKILL (no chance to flush anything).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            stop_private_containerd(&self.data_dir.join("node"));
        }
    }

    /// Stops the process with SIGTERM and waits for a clean exit.
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    assert!(status.success(), "shoal server exited with {status} on SIGTERM");
                    return;
                }
                assert!(Instant::now() < deadline, "shoal server did not stop within 30 s of SIGTERM");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Starts the server again on the same data dir (a new port).
    pub async fn restart(&mut self) {
        let temp = self._temp.take();
        let mut restarted = Self::launch(self.prefix.clone(), self.data_dir.clone(), self.extra_args.clone()).await;
        restarted._temp = temp;
        *self = restarted;
    }

    /// Stops the server (SIGTERM) and starts it again on the same data dir and the same API
    /// port, so clients holding the URL reconnect, with `extra_args` this time.
    pub async fn restart_on_the_same_port(&mut self, extra_args: &[&str]) {
        self.terminate();
        let address = self.url.trim_start_matches("https://").to_owned();
        let mut args: Vec<String> = vec!["--api-addr".into(), address];
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let temp = self._temp.take();
        let mut restarted = Self::launch(self.prefix.clone(), self.data_dir.clone(), args).await;
        restarted._temp = temp;
        *self = restarted;
    }

    pub async fn request(&self, method: reqwest::Method, path: &str, body: Option<(&str, Vec<u8>)>) -> (u16, Value) {
        let mut request = self.http.request(method.clone(), format!("{}{path}", self.url)).bearer_auth(&self.token);
        if let Some((content_type, bytes)) = body {
            request = request.header("Content-Type", content_type).body(bytes);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("body");
        if status >= 400 {
            // Shown with a failing test's output: many callers check only some answers.
            eprintln!("{method} {path} answered {status}: {}", String::from_utf8_lossy(&bytes));
        }
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.request(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.request(reqwest::Method::POST, path, Some(("application/json", serde_json::to_vec(body).expect("json")))).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.request(reqwest::Method::PUT, path, Some(("application/json", serde_json::to_vec(body).expect("json")))).await
    }

    /// Runs the `shoal` CLI against this server; returns (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let output = Command::new(shoal_binary())
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .output()
            .expect("run shoal");
        (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// A `shoal agent` joining a server as another node.
pub struct Agent {
    child: Option<Child>,
    temp: tempfile::TempDir,
}

impl Agent {
    /// The agent's data directory (its kept credentials, pods' files).
    pub fn data_dir(&self) -> PathBuf {
        self.temp.path().join("data")
    }

    /// The agent's warnings and errors, for a failing test's message.
    pub fn log_problems(&self) -> String {
        log_problems(&self.temp.path().join("agent.log"))
    }

    pub fn start(server: &Server, name: &str) -> Self {
        Self::start_at(server, name, "127.0.0.1")
    }

    /// An agent whose data plane, ingress and node ports listen on `ip` (another loopback
    /// address, so two nodes on one machine can both open the same node port).
    pub fn start_at(server: &Server, name: &str, ip: &str) -> Self {
        Self::start_through(&server.url, server, name, ip)
    }

    /// An agent given `urls` (one server, or several separated by commas), with the node token
    /// and CA of `credentials`.
    pub fn start_through(urls: &str, credentials: &Server, name: &str, ip: &str) -> Self {
        Self::launch(urls, credentials, name, ip, &[])
    }

    /// An agent on 127.0.0.1 with `extra_args` (`--pod-cidr …`, say).
    pub fn start_with(server: &Server, name: &str, extra_args: &[&str]) -> Self {
        Self::launch(&server.url, server, name, "127.0.0.1", extra_args)
    }

    /// An agent listening on `ip` with `extra_args`.
    pub fn start_at_with(server: &Server, name: &str, ip: &str, extra_args: &[&str]) -> Self {
        Self::launch(&server.url, server, name, ip, extra_args)
    }

    fn launch(urls: &str, credentials: &Server, name: &str, ip: &str, extra_args: &[&str]) -> Self {
        let server = credentials;
        let temp = tempfile::tempdir().expect("tempdir");
        let token = std::fs::read_to_string(server.data_dir.join("node-token")).expect("node token");
        let log = std::fs::File::create(temp.path().join("agent.log")).expect("log file");
        let child = Command::new(shoal_binary())
            .args(["agent", "--server", urls, "--token", token.trim(), "--ca-file"])
            .arg(server.data_dir.join("pki/ca.crt"))
            .arg("--data-dir")
            .arg(temp.path().join("data"))
            .args(["--node-name", name, "--data-addr", &format!("{ip}:0")])
            .args(["--ingress-addr", &format!("{ip}:0"), "--ingress-tls-addr", &format!("{ip}:0")])
            .args(extra_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start shoal agent");
        Self { child: Some(child), temp }
    }

    /// Stops the agent with SIGKILL, as a machine failure would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            stop_private_containerd(&self.temp.path().join("data"));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A node killed with SIGKILL leaves the private containerd it started running (as a machine's
/// containerd outlives its kubelet); a test's node takes it down with it.
fn stop_private_containerd(node_data_dir: &Path) {
    if let Some(pid) = std::fs::read_to_string(node_data_dir.join("containerd/containerd.pid")).ok().and_then(|p| p.trim().parse::<u32>().ok()) {
        let _ = Command::new("kill").arg(pid.to_string()).status();
    }
}

/// The ingress addresses (HTTP, HTTPS) a node published in its annotations.
pub async fn ingress_of(server: &Server, node: &str) -> (String, String) {
    let body = wait_until(server, &format!("/api/v1/nodes/{node}"), 60, "the node's ingress annotations", |n| !n["metadata"]["annotations"]["shoal.dev/ingress-addr"].is_null()).await;
    let annotations = &body["metadata"]["annotations"];
    (annotations["shoal.dev/ingress-addr"].as_str().unwrap_or_default().to_owned(), annotations["shoal.dev/ingress-tls-addr"].as_str().unwrap_or_default().to_owned())
}

/// The last 40 warning and error lines of the log at `path` (or why it could not be read).
fn log_problems(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(log) => {
            let lines: Vec<&str> = log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
            format!("{} ({} warnings and errors, the last 40):\n{}\n", path.display(), lines.len(), lines[lines.len().saturating_sub(40)..].join("\n"))
        }
        Err(error) => format!("{}: {error}\n", path.display()),
    }
}

/// Polls `path` until `check` holds, failing after `seconds` with the last answer.
pub async fn wait_until(server: &Server, path: &str, seconds: u64, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let (_, body) = server.get(path).await;
        if check(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what} did not happen within {seconds} s; last: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        // A failing test keeps the server's data dir and log for a look afterwards.
        if std::thread::panicking()
            && let Some(temp) = self._temp.take()
        {
            eprintln!("the failed test's server data and log are kept in {}", temp.keep().display());
        }
    }
}

pub fn config_map(name: &str, value: &str) -> Value {
    serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"value": value}})
}

pub fn deployment(name: &str) -> Value {
    serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "app", "image": "shoal.local/samples/hello:latest"}]}}}
    })
}

/// The repository root (for samples and manifests).
pub fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Pushes `samples/FILE` to the server's built-in registry as `reference`.
pub fn push(server: &Server, file: &str, reference: &str) {
    let path = repository().join("samples").join(file);
    let (code, _, stderr) = server.cli(&["push", path.to_str().expect("utf-8"), reference]);
    assert_eq!(code, 0, "push {file}: {stderr}");
}

/// Debian's docker-registry on a free loopback port, for as long as the value lives.
pub struct DockerRegistry {
    child: Child,
    pub host: String,
    _dir: tempfile::TempDir,
}

impl DockerRegistry {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n", dir.path().join("data").display()),
        )
        .expect("config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry must be installed (Debian package docker-registry; .ci/run installs it)");
        let host = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(response) = reqwest::get(format!("http://{host}/v2/")).await
                && response.status().is_success()
            {
                break;
            }
            assert!(Instant::now() < deadline, "docker-registry did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { child, host, _dir: dir }
    }
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

