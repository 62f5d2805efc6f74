//! shoal-client: talks to a Shoal (or any Kubernetes) API server as the kubeconfig says.
//!
//! Objects are `serde_json::Value`s addressed by [`ResourceInfo`]; errors from the server come
//! back as the `Status` they were sent as ([`Error::Api`]).

pub mod informer;
mod kubeconfig;

use std::path::{Path, PathBuf};

use futures::{Stream, StreamExt};
use serde_json::Value;
use shoal_api::{ApiError, ResourceInfo};

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

/// One watch event.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub event_type: String,
    pub object: Value,
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

/// A client for one API server.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    server: String,
    token: Option<String>,
    /// The kubeconfig context's namespace (default `default`).
    pub default_namespace: String,
}

/// What the client calls itself: the API server names the field manager of a write after it
/// (`shoal`) when the write names none, as kube-apiserver does with client-go's binary names.
pub const USER_AGENT: &str = concat!("shoal/", env!("CARGO_PKG_VERSION"));

impl Client {
    /// Builds a client from a kubeconfig file, with an optional server URL override.
    pub fn from_kubeconfig(path: &Path, server_override: Option<&str>) -> Result<Self> {
        let config = Kubeconfig::load(path)?;
        let mut builder = reqwest::Client::builder().use_rustls_tls().tls_built_in_root_certs(false).user_agent(USER_AGENT);
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
        Ok(Self { http, server, token: config.token, default_namespace: config.namespace })
    }

    /// A client for `server` trusting `ca_pem` (or the system roots when `None`), sending
    /// `token` as a bearer token.
    pub fn new(server: &str, ca_pem: Option<&str>, token: Option<String>) -> Result<Self> {
        let mut builder = reqwest::Client::builder().use_rustls_tls().user_agent(USER_AGENT);
        if let Some(ca) = ca_pem {
            let certificate = reqwest::Certificate::from_pem(ca.as_bytes())
                .map_err(|e| Error::Config { path: PathBuf::from("(certificate authority)"), detail: e.to_string() })?;
            builder = builder.tls_built_in_root_certs(false).add_root_certificate(certificate);
        }
        let http = builder.build().map_err(|e| Error::Config { path: PathBuf::from("(client)"), detail: e.to_string() })?;
        Ok(Self { http, server: server.trim_end_matches('/').to_owned(), token, default_namespace: "default".into() })
    }

    /// The underlying HTTP client and token, for streaming requests this client does not wrap.
    pub fn raw_get(&self, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.get(self.url(path));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server)
    }

    fn transport(&self, error: reqwest::Error) -> Error {
        let mut detail = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            detail = format!("{detail}: {cause}");
            source = cause.source();
        }
        Error::Transport { url: self.server.clone(), detail }
    }

    /// Sends one request and decodes the JSON answer, turning `Status` errors into [`Error::Api`].
    pub async fn request(&self, method: reqwest::Method, path: &str, query: &[(&str, String)], body: Option<(&str, Vec<u8>)>) -> Result<Value> {
        let mut request = self.http.request(method, self.url(path)).query(query).header("Accept", "application/json");
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some((content_type, bytes)) = body {
            request = request.header("Content-Type", content_type).body(bytes);
        }
        let response = request.send().await.map_err(|e| self.transport(e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| self.transport(e))?;
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
    pub async fn watch(&self, info: &ResourceInfo, namespace: Option<&str>, options: &ListOptions) -> Result<impl Stream<Item = Result<WatchEvent>> + use<>> {
        let mut request = self.http.get(self.url(&info.collection_path(namespace))).query(&options.query(true)).header("Accept", "application/json");
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| self.transport(e))?;
        let status = response.status();
        if !status.is_success() {
            let bytes = response.bytes().await.map_err(|e| self.transport(e))?;
            let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Err(Error::Api(ApiError::from_status(status.as_u16(), &value)));
        }
        let server = self.server.clone();
        let chunks = response.bytes_stream();
        let lines = futures::stream::unfold((chunks, Vec::<u8>::new(), server), |(mut chunks, mut buffer, server)| async move {
            loop {
                if let Some(position) = buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=position).collect();
                    let parsed = serde_json::from_slice::<Value>(&line[..line.len() - 1])
                        .map_err(|e| Error::Decode(e.to_string()))
                        .map(|value| WatchEvent { event_type: value["type"].as_str().unwrap_or_default().to_owned(), object: value["object"].clone() });
                    return Some((parsed, (chunks, buffer, server)));
                }
                match chunks.next().await {
                    Some(Ok(bytes)) => buffer.extend_from_slice(&bytes),
                    Some(Err(error)) => return Some((Err(Error::Transport { url: server.clone(), detail: error.to_string() }), (chunks, Vec::new(), server))),
                    None => return None,
                }
            }
        });
        Ok(lines)
    }
}
