//! The OCI distribution client: push and pull blobs and manifests, list tags and repositories.
//! The same client talks to the built-in registry (HTTPS with the cluster CA and a bearer token)
//! and to external registries (HTTPS with the system roots, or plain HTTP only for loopback or
//! explicitly insecure registries; anonymous, basic, or the Bearer token-service flow).

use std::net::IpAddr;
use std::sync::Mutex;

use base64::Engine;
use reqwest::{Method, StatusCode, header};

use crate::media::MANIFEST_ACCEPT;
use crate::{Digest, Error, Result};

/// Uploads larger than this go in chunks (PATCH), smaller ones in one PUT.
const CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// How to authenticate to a registry.
#[derive(Clone, Debug, Default)]
pub enum Auth {
    #[default]
    Anonymous,
    Bearer(String),
    Basic { username: String, password: String },
}

/// Whether plain HTTP may be used for `host` (loopback only, unless listed as insecure).
pub fn plain_http_allowed(host: &str, insecure: &[String]) -> bool {
    if insecure.iter().any(|h| h == host) {
        return true;
    }
    let bare = host.rsplit_once(':').map_or(host, |(h, port)| if port.bytes().all(|b| b.is_ascii_digit()) { h } else { host });
    let bare = bare.trim_matches(['[', ']']);
    bare == "localhost" || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A client for one registry.
pub struct RegistryClient {
    http: reqwest::Client,
    base: String,
    registry: String,
    auth: Auth,
    /// A token obtained through the registry's token service.
    service_token: Mutex<Option<String>>,
}

impl RegistryClient {
    /// A client for `base` (`https://host:port`), shown in errors as `registry`.
    pub fn new(http: reqwest::Client, base: impl Into<String>, registry: impl Into<String>, auth: Auth) -> Self {
        Self { http, base: base.into().trim_end_matches('/').to_owned(), registry: registry.into(), auth, service_token: Mutex::new(None) }
    }

    /// A client for an external registry host: HTTPS with the system's roots, or plain HTTP when
    /// the host is loopback or listed in `insecure`.
    pub fn external(host: &str, insecure: &[String], auth: Auth) -> Result<Self> {
        let scheme = if plain_http_allowed(host, insecure) { "http" } else { "https" };
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .build()
            .map_err(|e| Error::Transport { registry: host.to_owned(), detail: e.to_string() })?;
        Ok(Self::new(http, format!("{scheme}://{host}"), host, auth))
    }

    pub fn registry(&self) -> &str {
        &self.registry
    }

    fn transport(&self, error: reqwest::Error) -> Error {
        let mut detail = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            detail = format!("{detail}: {cause}");
            source = cause.source();
        }
        Error::Transport { registry: self.registry.clone(), detail }
    }

    fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") { path_or_url.to_owned() } else { format!("{}{path_or_url}", self.base) }
    }

    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if let Some(token) = self.service_token.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return request.bearer_auth(token);
        }
        match &self.auth {
            Auth::Anonymous => request,
            Auth::Bearer(token) => request.bearer_auth(token),
            Auth::Basic { username, password } => request.basic_auth(username, Some(password)),
        }
    }

    /// Sends a request built by `build`, following one Bearer challenge through the token
    /// service if the registry asks for it.
    async fn send(&self, build: &(dyn Fn() -> reqwest::RequestBuilder + Sync)) -> Result<reqwest::Response> {
        let response = self.authorize(build()).send().await.map_err(|e| self.transport(e))?;
        if response.status() != StatusCode::UNAUTHORIZED || matches!(self.auth, Auth::Bearer(_)) {
            return Ok(response);
        }
        let challenge = response.headers().get(header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let Some(parameters) = challenge.strip_prefix("Bearer ") else { return Ok(response) };
        let field = |name: &str| {
            parameters.split(',').find_map(|part| part.trim().strip_prefix(&format!("{name}=")).map(|v| v.trim_matches('"').to_owned()))
        };
        let Some(realm) = field("realm") else { return Ok(response) };
        let mut token_request = self.http.get(&realm);
        let mut query = Vec::new();
        if let Some(service) = field("service") {
            query.push(("service", service));
        }
        if let Some(scope) = field("scope") {
            query.push(("scope", scope));
        }
        token_request = token_request.query(&query);
        if let Auth::Basic { username, password } = &self.auth {
            token_request = token_request.basic_auth(username, Some(password));
        }
        let token_response = token_request.send().await.map_err(|e| self.transport(e))?;
        let body: serde_json::Value = token_response.json().await.map_err(|e| self.transport(e))?;
        let token = body["token"].as_str().or(body["access_token"].as_str()).map(str::to_owned);
        *self.service_token.lock().unwrap_or_else(|p| p.into_inner()) = token;
        self.authorize(build()).send().await.map_err(|e| self.transport(e))
    }

    /// Turns an unsuccessful response into the registry's own error (`errors[0]`).
    async fn fail(&self, response: reqwest::Response) -> Error {
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
        let first = &body["errors"][0];
        Error::Registry {
            registry: self.registry.clone(),
            status,
            code: first["code"].as_str().unwrap_or("UNKNOWN").to_owned(),
            message: first["message"].as_str().unwrap_or("no message").to_owned(),
        }
    }

    pub async fn blob_exists(&self, repository: &str, digest: &Digest) -> Result<bool> {
        let url = self.url(&format!("/v2/{repository}/blobs/{digest}"));
        let response = self.send(&|| self.http.head(&url)).await?;
        match response.status() {
            status if status.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.fail(response).await),
        }
    }

    /// Uploads `bytes` unless the registry has them; `progress(sent, total)` is called as chunks
    /// go. Returns the digest.
    pub async fn push_blob(&self, repository: &str, bytes: &[u8], progress: &(dyn Fn(u64, u64) + Sync)) -> Result<Digest> {
        let digest = Digest::of(bytes);
        let total = bytes.len() as u64;
        if self.blob_exists(repository, &digest).await? {
            progress(total, total);
            return Ok(digest);
        }
        let start = self.url(&format!("/v2/{repository}/blobs/uploads/"));
        let response = self.send(&|| self.http.post(&start).header(header::CONTENT_LENGTH, 0)).await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(self.fail(response).await);
        }
        let mut location = location(&response).ok_or_else(|| Error::Registry {
            registry: self.registry.clone(),
            status: 202,
            code: "NO_LOCATION".into(),
            message: "the upload was started without a Location".into(),
        })?;
        let mut sent = 0usize;
        if bytes.len() > CHUNK_BYTES {
            while sent < bytes.len() {
                let end = (sent + CHUNK_BYTES).min(bytes.len());
                let chunk = bytes[sent..end].to_vec();
                let url = self.url(&location);
                let range = format!("{sent}-{}", end - 1);
                let response = self
                    .send(&|| {
                        self.http
                            .request(Method::PATCH, &url)
                            .header(header::CONTENT_TYPE, "application/octet-stream")
                            .header(header::CONTENT_RANGE, range.clone())
                            .body(chunk.clone())
                    })
                    .await?;
                if response.status() != StatusCode::ACCEPTED {
                    return Err(self.fail(response).await);
                }
                location = self::location(&response).unwrap_or(location);
                sent = end;
                progress(sent as u64, total);
            }
        }
        let rest = bytes[sent..].to_vec();
        let url = self.url(&location);
        let separator = if url.contains('?') { '&' } else { '?' };
        let url = format!("{url}{separator}digest={digest}");
        let response = self
            .send(&|| self.http.put(&url).header(header::CONTENT_TYPE, "application/octet-stream").body(rest.clone()))
            .await?;
        if response.status() != StatusCode::CREATED {
            return Err(self.fail(response).await);
        }
        progress(total, total);
        Ok(digest)
    }

    /// Uploads a manifest under `reference` (a tag or its digest). Returns its digest.
    pub async fn push_manifest(&self, repository: &str, reference: &str, bytes: &[u8], media_type: &str) -> Result<Digest> {
        let url = self.url(&format!("/v2/{repository}/manifests/{reference}"));
        let body = bytes.to_vec();
        let response = self.send(&|| self.http.put(&url).header(header::CONTENT_TYPE, media_type).body(body.clone())).await?;
        if response.status() != StatusCode::CREATED {
            return Err(self.fail(response).await);
        }
        Ok(Digest::of(bytes))
    }

    /// Fetches a manifest by tag or digest: (bytes, media type, digest), verified when pinned.
    pub async fn get_manifest(&self, repository: &str, reference: &str) -> Result<(Vec<u8>, String, Digest)> {
        let url = self.url(&format!("/v2/{repository}/manifests/{reference}"));
        let response = self.send(&|| self.http.get(&url).header(header::ACCEPT, MANIFEST_ACCEPT)).await?;
        if !response.status().is_success() {
            return Err(self.fail(response).await);
        }
        let media_type = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let bytes = response.bytes().await.map_err(|e| self.transport(e))?.to_vec();
        let digest = Digest::of(&bytes);
        if let Ok(pinned) = Digest::parse(reference) {
            pinned.verify(&bytes)?;
        }
        Ok((bytes, media_type, digest))
    }

    /// Fetches a blob, refusing more than `max_bytes` and verifying its digest.
    pub async fn get_blob(&self, repository: &str, digest: &Digest, max_bytes: u64) -> Result<Vec<u8>> {
        use futures::StreamExt;
        let url = self.url(&format!("/v2/{repository}/blobs/{digest}"));
        let response = self.send(&|| self.http.get(&url)).await?;
        if !response.status().is_success() {
            return Err(self.fail(response).await);
        }
        if let Some(length) = response.content_length()
            && length > max_bytes
        {
            return Err(Error::TooLarge(length, max_bytes));
        }
        let mut stream = response.bytes_stream();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.transport(e))?;
            if (bytes.len() + chunk.len()) as u64 > max_bytes {
                return Err(Error::TooLarge((bytes.len() + chunk.len()) as u64, max_bytes));
            }
            bytes.extend_from_slice(&chunk);
        }
        digest.verify(&bytes)?;
        Ok(bytes)
    }

    pub async fn tags(&self, repository: &str) -> Result<Vec<String>> {
        let url = self.url(&format!("/v2/{repository}/tags/list"));
        let response = self.send(&|| self.http.get(&url)).await?;
        if !response.status().is_success() {
            return Err(self.fail(response).await);
        }
        let body: serde_json::Value = response.json().await.map_err(|e| self.transport(e))?;
        Ok(body["tags"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(str::to_owned)).collect())
    }

    pub async fn catalog(&self) -> Result<Vec<String>> {
        let url = self.url("/v2/_catalog");
        let response = self.send(&|| self.http.get(&url)).await?;
        if !response.status().is_success() {
            return Err(self.fail(response).await);
        }
        let body: serde_json::Value = response.json().await.map_err(|e| self.transport(e))?;
        Ok(body["repositories"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(str::to_owned)).collect())
    }

    /// Deletes a manifest (by digest) or a tag (by name, where the registry allows it).
    pub async fn delete_manifest(&self, repository: &str, reference: &str) -> Result<()> {
        let url = self.url(&format!("/v2/{repository}/manifests/{reference}"));
        let response = self.send(&|| self.http.delete(&url)).await?;
        if !response.status().is_success() {
            return Err(self.fail(response).await);
        }
        Ok(())
    }

    /// A POST to a Shoal-specific registry endpoint (garbage collection); answers its JSON.
    pub async fn post_json(&self, path: &str) -> Result<serde_json::Value> {
        let url = self.url(path);
        let response = self.send(&|| self.http.post(&url).header(header::CONTENT_LENGTH, 0)).await?;
        if !response.status().is_success() {
            return Err(self.fail(response).await);
        }
        response.json().await.map_err(|e| self.transport(e))
    }
}

fn location(response: &reqwest::Response) -> Option<String> {
    response.headers().get(header::LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// The credentials a `kubernetes.io/dockerconfigjson` Secret object (as the API serves it, data
/// in base64) holds for `host`.
pub fn auth_from_pull_secret(secret: &serde_json::Value, host: &str) -> Option<Auth> {
    use base64::Engine;
    let config = base64::engine::general_purpose::STANDARD.decode(secret["data"][".dockerconfigjson"].as_str()?).ok()?;
    auth_from_docker_config(&config, host)
}

/// `user:password` of a `kubernetes.io/dockerconfigjson` secret's entry for `host`.
pub fn auth_from_docker_config(config_json: &[u8], host: &str) -> Option<Auth> {
    let config: serde_json::Value = serde_json::from_slice(config_json).ok()?;
    let entry = config["auths"].as_object()?.iter().find(|(key, _)| {
        let key = key.trim_start_matches("https://").trim_start_matches("http://");
        key.split('/').next() == Some(host)
    })?;
    let entry = entry.1;
    if let (Some(username), Some(password)) = (entry["username"].as_str(), entry["password"].as_str()) {
        return Some(Auth::Basic { username: username.to_owned(), password: password.to_owned() });
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(entry["auth"].as_str()?).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (username, password) = text.split_once(':')?;
    Some(Auth::Basic { username: username.to_owned(), password: password.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback_or_listed_registries() {
        assert!(plain_http_allowed("127.0.0.1:5000", &[]));
        assert!(plain_http_allowed("localhost:5000", &[]));
        assert!(plain_http_allowed("[::1]:5000", &[]));
        assert!(!plain_http_allowed("registry.example.com", &[]));
        assert!(!plain_http_allowed("10.0.0.5:5000", &[]));
        assert!(plain_http_allowed("10.0.0.5:5000", &["10.0.0.5:5000".to_owned()]));
    }

    #[test]
    fn pull_secrets_are_read_for_their_host() {
        let auth = base64::engine::general_purpose::STANDARD.encode("me:s3cret");
        let config = format!(r#"{{"auths":{{"https://registry.example.com":{{"auth":"{auth}"}},"other.io":{{"username":"u","password":"p"}}}}}}"#);
        assert!(matches!(auth_from_docker_config(config.as_bytes(), "registry.example.com"), Some(Auth::Basic { username, password }) if username == "me" && password == "s3cret"));
        assert!(matches!(auth_from_docker_config(config.as_bytes(), "other.io"), Some(Auth::Basic { username, .. }) if username == "u"));
        assert!(auth_from_docker_config(config.as_bytes(), "missing.io").is_none());
        let secret = serde_json::json!({"data": {".dockerconfigjson": base64::engine::general_purpose::STANDARD.encode(&config)}});
        assert!(matches!(auth_from_pull_secret(&secret, "other.io"), Some(Auth::Basic { username, .. }) if username == "u"));
        assert!(auth_from_pull_secret(&serde_json::json!({"data": {}}), "other.io").is_none());
    }
}
