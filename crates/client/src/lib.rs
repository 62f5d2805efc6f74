//! shoal-client: talks to a Shoal (or any Kubernetes) API server as the kubeconfig says.
//!
//! Objects are `serde_json::Value`s addressed by [`ResourceInfo`]; errors from the server come
//! back as the `Status` they were sent as ([`Error::Api`]).

pub mod in_process;
pub mod informer;
mod kubeconfig;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http_body_util::BodyExt;
use serde_json::Value;
use shoal_api::{ApiError, ResourceInfo};

pub use in_process::InProcess;
pub use kubeconfig::Kubeconfig;
pub use reqwest::Method;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with a `Status` error.
    #[error("{}", .0.message)]
    Api(ApiError),
    #[error("cannot reach the API server at {url}: {detail}")]
    Transport { url: String, detail: String },
    #[error("kubeconfig {path}: {detail}")]
    Config { path: PathBuf, detail: String },
    #[error("the server sent something that is not a Kubernetes response: {0}")]
    Decode(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether an answer says to try another server: 503 from a server cut off from its group, 429
/// from one shutting down.
fn elsewhere(status: reqwest::StatusCode) -> bool {
    status == reqwest::StatusCode::SERVICE_UNAVAILABLE || status == reqwest::StatusCode::TOO_MANY_REQUESTS
}

/// A response body as a stream of chunks (a watch's lines arrive through it).
type Chunks = std::pin::Pin<Box<dyn Stream<Item = std::result::Result<Bytes, String>> + Send>>;

/// The events of a watch, in order; the stream ends when the server ends the watch.
pub type Events = std::pin::Pin<Box<dyn Stream<Item = Result<WatchEvent>> + Send>>;

/// One watch event.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub event_type: String,
    /// Shared with the server's store when the server runs in this process.
    pub object: Arc<Value>,
}

/// Options for listing and watching.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    pub limit: Option<u64>,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub timeout_seconds: Option<u64>,
}

impl ListOptions {
    fn query(&self, watch: bool) -> Vec<(&'static str, String)> {
        let mut query = Vec::new();
        if let Some(s) = &self.label_selector {
            query.push(("labelSelector", s.clone()));
        }
        if let Some(s) = &self.field_selector {
            query.push(("fieldSelector", s.clone()));
        }
        if let Some(limit) = self.limit {
            query.push(("limit", limit.to_string()));
        }
        if let Some(token) = &self.continue_token {
            query.push(("continue", token.clone()));
        }
        if let Some(rv) = &self.resource_version {
            query.push(("resourceVersion", rv.clone()));
        }
        if let Some(timeout) = self.timeout_seconds {
            query.push(("timeoutSeconds", timeout.to_string()));
        }
        if watch {
            query.push(("watch", "true".into()));
        }
        query
    }
}

/// A client for the API, through one server or any of several (the servers of a
/// highly-available control plane): it moves to the next server when its current one cannot be
/// connected to, or answers a read with 503 (a server cut off from its group).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    servers: Arc<std::sync::RwLock<Vec<String>>>,
    current: Arc<std::sync::atomic::AtomicUsize>,
    token: Option<String>,
    /// The API server of this process, when it is one of `servers`.
    in_process: Option<InProcess>,
    /// The kubeconfig context's namespace (default `default`).
    pub default_namespace: String,
}

/// HTTP/2 pings on every connection: a server that vanished without a reset (a dead machine, a
/// partition) is noticed within seconds, and its watches and requests fail over, instead of
/// waiting out TCP's retransmission backoff.
fn keep_alive(builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
    builder
        .http2_keep_alive_interval(std::time::Duration::from_secs(5))
        .http2_keep_alive_timeout(std::time::Duration::from_secs(5))
        .http2_keep_alive_while_idle(true)
        .tcp_keepalive(std::time::Duration::from_secs(15))
}

/// What the client calls itself: the API server names the field manager of a write after it
/// (`shoal`) when the write names none, as kube-apiserver does with client-go's binary names.
pub const USER_AGENT: &str = concat!("shoal/", env!("CARGO_PKG_VERSION"));

impl Client {
    /// Builds a client from a kubeconfig file, with an optional server URL override.
    pub fn from_kubeconfig(path: &Path, server_override: Option<&str>) -> Result<Self> {
        let config = Kubeconfig::load(path)?;
        let mut builder = keep_alive(reqwest::Client::builder()).use_rustls_tls().tls_built_in_root_certs(false).user_agent(USER_AGENT);
        if let Some(ca) = &config.certificate_authority_pem {
            let certificate = reqwest::Certificate::from_pem(ca.as_bytes())
                .map_err(|e| Error::Config { path: path.to_owned(), detail: format!("certificate authority: {e}") })?;
            builder = builder.add_root_certificate(certificate);
        }
        if config.insecure_skip_tls_verify {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let http = builder.build().map_err(|e| Error::Config { path: path.to_owned(), detail: e.to_string() })?;
        let server = server_override.unwrap_or(&config.server).trim_end_matches('/').to_owned();
        let mut servers = vec![server];
        for other in config.other_servers {
            if !servers.contains(&other) {
                servers.push(other);
            }
        }
        Ok(Self::assemble(http, servers, config.token, config.namespace))
    }

    /// A client for `server` trusting `ca_pem` (or the system roots when `None`), sending
    /// `token` as a bearer token.
    pub fn new(server: &str, ca_pem: Option<&str>, token: Option<String>) -> Result<Self> {
        let mut builder = keep_alive(reqwest::Client::builder()).use_rustls_tls().user_agent(USER_AGENT);
        if let Some(ca) = ca_pem {
            let certificate = reqwest::Certificate::from_pem(ca.as_bytes())
                .map_err(|e| Error::Config { path: PathBuf::from("(certificate authority)"), detail: e.to_string() })?;
            builder = builder.tls_built_in_root_certs(false).add_root_certificate(certificate);
        }
        let http = builder.build().map_err(|e| Error::Config { path: PathBuf::from("(client)"), detail: e.to_string() })?;
        let servers = server.split(',').map(|s| s.trim().trim_end_matches('/').to_owned()).filter(|s| !s.is_empty()).collect();
        Ok(Self::assemble(http, servers, token, "default".into()))
    }

    fn assemble(http: reqwest::Client, servers: Vec<String>, token: Option<String>, default_namespace: String) -> Self {
        Self {
            http,
            servers: Arc::new(std::sync::RwLock::new(servers)),
            current: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            token,
            in_process: None,
            default_namespace,
        }
    }

    /// Sends requests meant for the server this process runs through `in_process`, as a call
    /// rather than over HTTPS (see [`InProcess`]).
    pub fn with_in_process(mut self, in_process: InProcess) -> Self {
        self.in_process = Some(in_process);
        self
    }

    /// The in-process server, if `server` is it.
    fn in_process_for(&self, server: &str) -> Option<&InProcess> {
        self.in_process.as_ref().filter(|local| local.serves(server))
    }

    fn server_list(&self) -> Vec<String> {
        self.servers.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Moves to the server after `failed` (unless another request already moved on): for
    /// callers that reach the server by other means (the built-in registry) and found it gone.
    pub fn move_on(&self, failed: &str) {
        let servers = self.server_list();
        let current = self.current.load(std::sync::atomic::Ordering::Relaxed);
        if servers.get(current % servers.len().max(1)).is_some_and(|s| s == failed) {
            let moved = self.current.compare_exchange(current, current + 1, std::sync::atomic::Ordering::Relaxed, std::sync::atomic::Ordering::Relaxed).is_ok();
            // With one server known there is nowhere to move: the caller's own error says why.
            if moved && servers.len() > 1 {
                tracing::info!(failed, to = %servers[(current + 1) % servers.len()], "moving to another API server");
            }
        }
    }

    /// Learns the control plane's members from the server (`/internal/cluster/status`) and
    /// uses all of them from now on, keeping the current server first. Returns how many
    /// servers the client knows.
    pub async fn discover_servers(&self) -> Result<usize> {
        let status = self.request(reqwest::Method::GET, "/internal/cluster/status", &[], None).await?;
        let current = self.server();
        let mut servers = vec![current.clone()];
        for member in status["members"].as_array().into_iter().flatten() {
            if let Some(addr) = member["addr"].as_str().map(|a| a.trim_end_matches('/').to_owned())
                && !servers.contains(&addr)
            {
                servers.push(addr);
            }
        }
        let count = servers.len();
        *self.servers.write().unwrap_or_else(|p| p.into_inner()) = servers;
        self.current.store(0, std::sync::atomic::Ordering::Relaxed);
        Ok(count)
    }

    /// The underlying HTTP client and token, for streaming requests this client does not wrap.
    pub fn raw_get(&self, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.get(self.url(path));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// The server requests go to now.
    pub fn server(&self) -> String {
        let servers = self.servers.read().unwrap_or_else(|p| p.into_inner());
        let current = self.current.load(std::sync::atomic::Ordering::Relaxed);
        servers.get(current % servers.len().max(1)).cloned().unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server())
    }

    fn transport(&self, error: reqwest::Error) -> Error {
        let mut detail = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            detail = format!("{detail}: {cause}");
            source = cause.source();
        }
        Error::Transport { url: self.server(), detail }
    }

    /// Sends `request` (a path and query, its own headers and credentials: this client's token
    /// is not added) to the API, moving to another server when the current one cannot be
    /// connected to, and streams the answer back as it comes (a watch included). For proxies
    /// that pass other clients' requests on: a guest's call to the `kubernetes` Service.
    pub async fn forward(&self, request: http::Request<Bytes>) -> Result<http::Response<in_process::Body>> {
        let attempts = self.servers.read().unwrap_or_else(|p| p.into_inner()).len().max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let server = self.server();
            if let Some(local) = self.in_process_for(&server) {
                return Ok(local.forward(request).await);
            }
            let path = request.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let mut outgoing = self.http.request(request.method().clone(), format!("{server}{path}")).body(request.body().clone());
            for (name, value) in request.headers() {
                outgoing = outgoing.header(name, value);
            }
            match outgoing.send().await {
                Err(error) if error.is_connect() && attempt < attempts => self.move_on(&server),
                Err(error) => return Err(self.transport(error)),
                Ok(response) => {
                    let mut answer = http::Response::builder().status(response.status());
                    for (name, value) in response.headers() {
                        answer = answer.header(name, value);
                    }
                    let frames = futures::StreamExt::map(response.bytes_stream(), |chunk| chunk.map(http_body::Frame::data).map_err(|e| Box::new(e) as in_process::BoxError));
                    let body = http_body_util::BodyExt::boxed_unsync(http_body_util::StreamBody::new(frames));
                    return answer.body(body).map_err(|e| Error::Transport { url: server, detail: e.to_string() });
                }
            }
        }
    }

    /// Sends one request and decodes the JSON answer, turning `Status` errors into [`Error::Api`].
    pub async fn request(&self, method: reqwest::Method, path: &str, query: &[(&str, String)], body: Option<(&str, Vec<u8>)>) -> Result<Value> {
        let attempts = self.servers.read().unwrap_or_else(|p| p.into_inner()).len().max(1);
        let mut attempt = 0;
        let (status, bytes) = loop {
            attempt += 1;
            let server = self.server();
            if let Some(local) = self.in_process_for(&server) {
                let response = local.send(&method, path, query, self.token.as_deref(), body.as_ref().map(|(t, b)| (*t, b.as_slice())), false).await?;
                let status = response.status();
                if elsewhere(status) && method == reqwest::Method::GET && attempt < attempts {
                    self.move_on(&server);
                    continue;
                }
                let bytes = response.into_body().collect().await.map_err(|e| Error::Transport { url: server, detail: e.to_string() })?.to_bytes();
                break (status, bytes);
            }
            let mut request = self.http.request(method.clone(), format!("{server}{path}")).query(query).header("Accept", "application/json");
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            if let Some((content_type, bytes)) = &body {
                request = request.header("Content-Type", *content_type).body(bytes.clone());
            }
            match request.send().await {
                // Never sent: safe to send to another server.
                Err(error) if error.is_connect() && attempt < attempts => self.move_on(&server),
                Err(error) => return Err(self.transport(error)),
                // A read refused by a server cut off from its group or shutting down: another
                // may serve it.
                Ok(response) if elsewhere(response.status()) && method == reqwest::Method::GET && attempt < attempts => {
                    self.move_on(&server)
                }
                Ok(response) => {
                    let status = response.status();
                    break (status, response.bytes().await.map_err(|e| self.transport(e))?);
                }
            }
        };
        let value: Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        if status.is_success() {
            Ok(value)
        } else {
            Err(Error::Api(ApiError::from_status(status.as_u16(), &value)))
        }
    }

    pub async fn get(&self, info: &ResourceInfo, namespace: Option<&str>, name: &str) -> Result<Value> {
        self.request(reqwest::Method::GET, &info.object_path(namespace, name), &[], None).await
    }

    /// Lists one page (use `options.continue_token` for the next).
    pub async fn list(&self, info: &ResourceInfo, namespace: Option<&str>, options: &ListOptions) -> Result<Value> {
        self.request(reqwest::Method::GET, &info.collection_path(namespace), &options.query(false), None).await
    }

    /// Lists every page and returns all items plus the last page's resourceVersion.
    pub async fn list_all(&self, info: &ResourceInfo, namespace: Option<&str>, options: &ListOptions) -> Result<(Vec<Value>, String)> {
        let mut options = options.clone();
        let mut items = Vec::new();
        loop {
            let page = self.list(info, namespace, &options).await?;
            items.extend(page["items"].as_array().cloned().unwrap_or_default());
            match page["metadata"]["continue"].as_str().filter(|c| !c.is_empty()) {
                Some(token) => options.continue_token = Some(token.to_owned()),
                None => return Ok((items, page["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_owned())),
            }
        }
    }

    pub async fn create(&self, info: &ResourceInfo, namespace: Option<&str>, object: &Value, field_manager: &str) -> Result<Value> {
        let body = serde_json::to_vec(object).map_err(|e| Error::Decode(e.to_string()))?;
        self.request(reqwest::Method::POST, &info.collection_path(namespace), &[("fieldManager", field_manager.to_owned())], Some(("application/json", body))).await
    }

    pub async fn replace(&self, info: &ResourceInfo, namespace: Option<&str>, name: &str, object: &Value) -> Result<Value> {
        let body = serde_json::to_vec(object).map_err(|e| Error::Decode(e.to_string()))?;
        self.request(reqwest::Method::PUT, &info.object_path(namespace, name), &[], Some(("application/json", body))).await
    }

    /// Replaces an object's status through its `status` subresource.
    pub async fn replace_status(&self, info: &ResourceInfo, namespace: Option<&str>, name: &str, object: &Value) -> Result<Value> {
        let body = serde_json::to_vec(object).map_err(|e| Error::Decode(e.to_string()))?;
        self.request(reqwest::Method::PUT, &format!("{}/status", info.object_path(namespace, name)), &[], Some(("application/json", body))).await
    }

    /// Sends a JSON merge patch (`merge = true`) or a JSON patch.
    pub async fn patch(&self, info: &ResourceInfo, namespace: Option<&str>, name: &str, patch: &Value, merge: bool, field_manager: &str) -> Result<Value> {
        let body = serde_json::to_vec(patch).map_err(|e| Error::Decode(e.to_string()))?;
        let content_type = if merge { "application/merge-patch+json" } else { "application/json-patch+json" };
        self.request(reqwest::Method::PATCH, &info.object_path(namespace, name), &[("fieldManager", field_manager.to_owned())], Some((content_type, body))).await
    }

    /// Sends a JSON merge patch to a subresource (`status`, `scale`) of an object.
    pub async fn merge_patch_subresource(&self, info: &ResourceInfo, namespace: Option<&str>, name: &str, subresource: &str, patch: &Value) -> Result<Value> {
        let body = serde_json::to_vec(patch).map_err(|e| Error::Decode(e.to_string()))?;
        let path = format!("{}/{subresource}", info.object_path(namespace, name));
        self.request(reqwest::Method::PATCH, &path, &[], Some(("application/merge-patch+json", body))).await
    }

    pub async fn delete(&self, info: &ResourceInfo, namespace: Option<&str>, name: &str, options: &Value) -> Result<Value> {
        let body = serde_json::to_vec(options).map_err(|e| Error::Decode(e.to_string()))?;
        self.request(reqwest::Method::DELETE, &info.object_path(namespace, name), &[], Some(("application/json", body))).await
    }

    /// Opens a watch. The stream ends when the server closes it.
    pub async fn watch(&self, info: &ResourceInfo, namespace: Option<&str>, options: &ListOptions) -> Result<Events> {
        let server = self.server();
        // The answer's status and its body as a stream of chunks, however it was sent.
        let (status, mut chunks): (reqwest::StatusCode, Chunks) =
            match self.in_process_for(&server) {
                Some(local) => {
                    let mut response = local.send(&reqwest::Method::GET, &info.collection_path(namespace), &options.query(true), self.token.as_deref(), None, true).await?;
                    // The server in this process hands its events over as objects.
                    if response.status().is_success()
                        && let Some(events) = response.extensions_mut().remove::<shoal_api::watch::ObjectEvents>().and_then(|events| events.take())
                    {
                        let events: Events = Box::pin(events.map(|event| Ok(WatchEvent { event_type: event.event_type.to_owned(), object: event.object })));
                        return Ok(events);
                    }
                    (response.status(), Box::pin(http_body_util::BodyDataStream::new(response.into_body()).map(|chunk| chunk.map_err(|e| e.to_string()))))
                }
                None => {
                    let mut request = self.http.get(format!("{server}{}", info.collection_path(namespace))).query(&options.query(true)).header("Accept", "application/json");
                    if let Some(token) = &self.token {
                        request = request.bearer_auth(token);
                    }
                    let response = match request.send().await {
                        Ok(response) => response,
                        Err(error) => {
                            // The caller (an informer) retries; the retry goes to the next server.
                            if error.is_connect() {
                                self.move_on(&server);
                            }
                            return Err(self.transport(error));
                        }
                    };
                    (response.status(), Box::pin(response.bytes_stream().map(|chunk| chunk.map_err(|e| e.to_string()))))
                }
            };
        if elsewhere(status) {
            self.move_on(&server);
        }
        if !status.is_success() {
            let mut bytes = Vec::new();
            while let Some(chunk) = chunks.next().await {
                bytes.extend_from_slice(&chunk.map_err(|detail| Error::Transport { url: server.clone(), detail })?);
            }
            let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Err(Error::Api(ApiError::from_status(status.as_u16(), &value)));
        }
        let lines = futures::stream::unfold((chunks, Vec::<u8>::new(), server), |(mut chunks, mut buffer, server)| async move {
            loop {
                if let Some(position) = buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=position).collect();
                    let parsed = serde_json::from_slice::<Value>(&line[..line.len() - 1])
                        .map_err(|e| Error::Decode(e.to_string()))
                        .map(|mut value| WatchEvent {
                            event_type: value["type"].as_str().unwrap_or_default().to_owned(),
                            object: Arc::new(value.get_mut("object").map(Value::take).unwrap_or_default()),
                        });
                    return Some((parsed, (chunks, buffer, server)));
                }
                match chunks.next().await {
                    Some(Ok(bytes)) => buffer.extend_from_slice(&bytes),
                    Some(Err(error)) => return Some((Err(Error::Transport { url: server.clone(), detail: error }), (chunks, Vec::new(), server))),
                    None => return None,
                }
            }
        });
        Ok(Box::pin(lines))
    }
}
