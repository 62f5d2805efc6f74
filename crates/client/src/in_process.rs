//! Reaching the API server that runs in the same process without a socket.
//!
//! `shoal server` and `shoal up` run their controllers, scheduler and local node agent beside
//! the API server. Over loopback HTTPS each of their requests pays for TLS records, HTTP/2
//! framing and header compression on both ends, and two trips through the kernel. An
//! [`InProcess`] hands the request to the server's router as a function call instead. The
//! request is the same one the client would send (method, path, query, bearer token, user
//! agent, body), so it passes every check a remote request passes: authentication, admission,
//! forwarding to the leader of a larger group.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use reqwest::Method;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, USER_AGENT};

use crate::{Error, Result};

/// An error from a response body produced in-process.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of a response produced in-process (a watch streams through it).
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

type Call = dyn Fn(http::Request<Bytes>) -> BoxFuture<'static, http::Response<Body>> + Send + Sync;

/// The API server of this process, called directly. It stands for the server at `url`: the
/// client uses it while that is the server it talks to, and HTTPS for any other (after a
/// failover to another member of the group).
#[derive(Clone)]
pub struct InProcess {
    url: String,
    call: Arc<Call>,
    requests: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for InProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcess").field("url", &self.url).finish_non_exhaustive()
    }
}

impl InProcess {
    /// `call` serves one request, as the server at `url` would.
    pub fn new(url: &str, call: impl Fn(http::Request<Bytes>) -> BoxFuture<'static, http::Response<Body>> + Send + Sync + 'static) -> Self {
        Self { url: url.trim_end_matches('/').to_owned(), call: Arc::new(call), requests: Arc::default() }
    }

    /// Requests sent through this (and its clones) so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether requests to `server` go through this.
    pub(crate) fn serves(&self, server: &str) -> bool {
        self.url == server
    }

    /// Sends a request as it is (its own headers and credentials).
    pub(crate) async fn forward(&self, request: http::Request<Bytes>) -> http::Response<Body> {
        self.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (self.call)(request).await
    }

    /// Sends one request: the same method, path, query and headers the HTTPS path sends. With
    /// `want_objects`, a watch answers with its events as shared objects
    /// (`shoal_api::watch::ObjectEvents`) instead of JSON lines.
    pub(crate) async fn send(&self, method: &Method, path: &str, query: &[(&str, String)], token: Option<&str>, body: Option<(&str, &[u8])>, want_objects: bool) -> Result<http::Response<Body>> {
        let mut target = path.to_owned();
        if !query.is_empty() {
            let mut encoded = form_urlencoded::Serializer::new(String::new());
            encoded.extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
            target.push('?');
            target.push_str(&encoded.finish());
        }
        let invalid = |detail: String| Error::Transport { url: self.url.clone(), detail };
        let mut request = http::Request::builder().method(method.clone()).uri(&target).header(ACCEPT, "application/json").header(USER_AGENT, crate::USER_AGENT);
        if let Some(token) = token {
            let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| invalid("the token is not a valid header value".into()))?;
            request = request.header(AUTHORIZATION, value);
        }
        let content = match body {
            Some((content_type, bytes)) => {
                request = request.header(CONTENT_TYPE, content_type);
                Bytes::copy_from_slice(bytes)
            }
            None => Bytes::new(),
        };
        let mut request = request.body(content).map_err(|e| invalid(format!("{target}: {e}")))?;
        if want_objects {
            request.extensions_mut().insert(shoal_api::watch::WantObjects);
        }
        self.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok((self.call)(request).await)
    }
}
