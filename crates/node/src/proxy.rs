//! The Service proxy: sends a request for a Service port to one of its endpoints. An endpoint on
//! this node is called in-process (the pod's `HttpHandler`, no socket); one on another node is
//! forwarded to that node's data plane (`/_pods/NS/POD:PORT/…`) over a pooled HTTP/1.1
//! connection. Guests reach Services by name through [`GuestOutbound`], the ingress router and
//! node ports through [`to_service`].
//!
//! Retries: an endpoint that turns out to be gone (its pod stopped routing, or its node refused
//! the connection) is skipped and another is tried, up to three times. A request is retried
//! when its body can be sent again: no body, or a body of known length up to [`REPLAY_LIMIT`],
//! which is read into memory first. A longer or chunked body streams through, once. A pod that
//! stops routing answers with [`GONE_HEADER`] before reading anything, so nothing has reached a
//! guest when that happens.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use shoal_runtime_wasm::{HttpError, OutboundFuture, OutboundHttp, ResponseBody};

use crate::services::{Pick, ServiceEntry, ServicePort, split_host_port};
use crate::{HttpRoute, Shared};

/// Every body the proxy carries (the guests' body type).
pub type ProxyBody = ResponseBody;

/// Set on a data-plane answer meaning "this pod takes no more requests here": the caller may
/// retry elsewhere, since nothing was delivered.
pub const GONE_HEADER: &str = "x-shoal-endpoint-gone";

/// How many endpoints one request (or one node-port connection) may try.
pub(crate) const ATTEMPTS: usize = 3;

/// The largest request body (by `Content-Length`) kept in memory so the request can be retried
/// on another endpoint.
pub const REPLAY_LIMIT: u64 = 64 * 1024;

pub fn text(status: StatusCode, body: impl Into<String>) -> Response<ProxyBody> {
    let body = http_body_util::Full::new(Bytes::from(body.into())).map_err(|never| match never {}).boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// The pooled client for other nodes' data planes.
pub fn forwarder() -> HttpClient<HttpConnector, ProxyBody> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(std::time::Duration::from_secs(2)));
    HttpClient::builder(TokioExecutor::new()).pool_idle_timeout(std::time::Duration::from_secs(60)).pool_max_idle_per_host(256).build(connector)
}

/// The pod's HTTP component for `port`: the one declaring it, else one declaring no port, else
/// the pod's only one. (A Wasm component answers on whatever port it is reached by.)
pub fn local_route(shared: &Shared, namespace: &str, name: &str, port: Option<u16>) -> Option<HttpRoute> {
    let routes = shared.routes.read().unwrap_or_else(|p| p.into_inner());
    let routes = routes.get(&(namespace.to_owned(), name.to_owned()))?;
    let Some(port) = port else { return routes.first().cloned() };
    routes
        .iter()
        .find(|r| r.ports.contains(&port))
        .or_else(|| routes.iter().find(|r| r.ports.is_empty()))
        .or_else(|| if routes.len() == 1 { routes.first() } else { None })
        .cloned()
}

/// A response body that keeps its endpoint counted as busy until the body ends.
struct Counted {
    inner: ProxyBody,
    _pick: Pick,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An answer marked with [`GONE_HEADER`]: nothing reached the pod, so the caller may try
/// another endpoint.
pub fn gone(status: StatusCode, body: impl Into<String>) -> Response<ProxyBody> {
    let mut response = text(status, body);
    response.headers_mut().insert(GONE_HEADER, hyper::header::HeaderValue::from_static("1"));
    response
}

fn counted(response: Response<ProxyBody>, pick: Pick) -> Response<ProxyBody> {
    response.map(|inner| Counted { inner, _pick: pick }.boxed_unsync())
}

fn empty() -> ProxyBody {
    http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Sends `request` (whose URI is the path and query to use) to an endpoint of `service` on
/// `port`. Never fails: no endpoint is a 503 with `Retry-After`, an unreachable node a 502.
pub async fn to_service(shared: &Arc<Shared>, service: &ServiceEntry, port: &ServicePort, request: Request<ProxyBody>, client: Option<IpAddr>) -> Response<ProxyBody> {
    let (parts, body) = request.into_parts();
    // A body that can be sent again, or the one stream to send once.
    let (replay, mut body) = if body.is_end_stream() {
        (Some(Bytes::new()), None)
    } else if body.size_hint().exact().is_some_and(|length| length <= REPLAY_LIMIT) {
        match body.collect().await {
            Ok(collected) => (Some(collected.to_bytes()), None),
            Err(error) => return text(StatusCode::BAD_REQUEST, format!("reading the request body failed: {error}\n")),
        }
    } else {
        (None, Some(body))
    };
    let replayable = replay.is_some();
    let path = parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into());
    let mut excluded = Vec::new();
    for _ in 0..ATTEMPTS {
        let Some(pick) = shared.services.pick(service, port, client, &excluded) else { break };
        let request_body = match &replay {
            Some(bytes) if bytes.is_empty() => empty(),
            Some(bytes) => http_body_util::Full::new(bytes.clone()).map_err(|never| match never {}).boxed_unsync(),
            None => body.take().unwrap_or_else(empty),
        };
        let mut builder = Request::builder().method(parts.method.clone()).version(hyper::Version::HTTP_11);
        for (name, value) in &parts.headers {
            builder = builder.header(name, value);
        }
        let endpoint = &pick.endpoint;
        if endpoint.node == shared.config.node_name {
            let Some(route) = local_route(shared, &endpoint.namespace, &endpoint.pod, Some(pick.port)) else {
                excluded.push(endpoint.uid.clone());
                continue;
            };
            let Ok(request) = builder.uri(path.as_str()).body(request_body) else { return text(StatusCode::BAD_REQUEST, "invalid request\n") };
            let response = route.handle(shared, request, Some(pick.port)).await;
            // A container that refused the connection got nothing: try another endpoint.
            if response.headers().contains_key(GONE_HEADER) && replayable {
                excluded.push(endpoint.uid.clone());
                continue;
            }
            return counted(response, pick);
        }
        let Some(address) = shared.services.node_address(&endpoint.node) else {
            excluded.push(endpoint.uid.clone());
            continue;
        };
        let uri = format!("http://{address}/_pods/{}/{}:{}{path}", endpoint.namespace, endpoint.pod, pick.port);
        let Ok(request) = builder.uri(uri).body(request_body) else { return text(StatusCode::BAD_REQUEST, "invalid request\n") };
        match shared.forwarder.request(request).await {
            Ok(response) if response.headers().contains_key(GONE_HEADER) && replayable => excluded.push(endpoint.uid.clone()),
            Ok(response) => return counted(response.map(|b| b.map_err(HttpError::from).boxed_unsync()), pick),
            Err(error) if replayable => {
                tracing::debug!(%error, node = %endpoint.node, "forwarding to another node failed; trying another endpoint");
                excluded.push(endpoint.uid.clone());
            }
            Err(error) => return text(StatusCode::BAD_GATEWAY, format!("node {} did not answer for pod {}/{}: {error}\n", endpoint.node, endpoint.namespace, endpoint.pod)),
        }
        if !replayable {
            break;
        }
    }
    let mut response = text(StatusCode::SERVICE_UNAVAILABLE, format!("service {}/{} has no ready endpoints for port {}\n", service.namespace, service.name, port.port));
    response.headers_mut().insert(hyper::header::RETRY_AFTER, hyper::header::HeaderValue::from_static("1"));
    response
}

/// Sends `request` (whose URI is the path and query) to an OCI container listening at `address`
/// on this node, over a pooled HTTP/1.1 connection. A refused connection is a 502 marked with
/// [`GONE_HEADER`] (nothing was delivered, so a Service proxy may try another endpoint).
pub async fn to_address<B>(shared: &Shared, address: std::net::SocketAddr, request: Request<B>) -> Response<ProxyBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<HttpError>,
{
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    parts.uri = match format!("http://{address}{path}").parse() {
        Ok(uri) => uri,
        Err(_) => return text(StatusCode::BAD_REQUEST, "invalid path\n"),
    };
    parts.version = hyper::Version::HTTP_11;
    let body = body.map_err(Into::into).boxed_unsync();
    match shared.forwarder.request(Request::from_parts(parts, body)).await {
        Ok(response) => response.map(|b| b.map_err(HttpError::from).boxed_unsync()),
        Err(error) if error.is_connect() => gone(StatusCode::BAD_GATEWAY, format!("the container at {address} did not answer: {error}\n")),
        Err(error) => text(StatusCode::BAD_GATEWAY, format!("the container at {address} did not answer: {error}\n")),
    }
}

/// The next connection on `listener` (with TCP_NODELAY), or `None` once `stop` is cancelled. An
/// accept error (out of file descriptors, say) is logged and retried after a pause rather than
/// in a hot loop.
pub async fn next_connection(listener: &tokio::net::TcpListener, stop: &tokio_util::sync::CancellationToken, what: &str) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    return Some((stream, peer));
                }
                Err(error) => {
                    tracing::warn!(%error, "{what}: accepting a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Serves one connection (HTTP/1.1 or HTTP/2, detected) with `handler` until it ends or the
/// node shuts down (then in-flight requests get up to 5 s).
pub async fn serve_http<I, F, Fut>(shared: &Shared, io: I, handler: F)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let handler = handler.clone();
        async move { Ok::<_, std::convert::Infallible>(handler(request).await) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // With upgrades: the data plane's `/_tunnel/` turns a connection into a byte stream.
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = shared.shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), connection).await;
        }
    }
}

/// The largest request body a guest may send to the API (more than the API itself accepts, so
/// the API's own 413 is what a guest sees first).
const API_BODY_LIMIT: usize = 4 * 1024 * 1024;

/// Headers that belong to one connection, not to the request a proxy passes on.
const HOP_BY_HOP: &[&str] = &["host", "connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade", "content-length"];

/// A guest's request to the `kubernetes` Service (`https://kubernetes.default.svc/…`, or its
/// cluster IP): the node passes it to the API over its own verified HTTPS connection (or, on a
/// server, in-process), with the guest's own headers and credentials (its ServiceAccount token)
/// and none of the node's. The guest does not need the CA: the node checks the server.
async fn to_api(shared: &Shared, request: Request<ProxyBody>) -> Response<ProxyBody> {
    let (parts, body) = request.into_parts();
    let body = match http_body_util::Limited::new(body, API_BODY_LIMIT).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => return text(StatusCode::PAYLOAD_TOO_LARGE, format!("the request to the API was not read: {error}\n")),
    };
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut builder = http::Request::builder().method(parts.method.clone()).uri(path);
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            builder = builder.header(name, value);
        }
    }
    let Ok(forwarded) = builder.body(body) else { return text(StatusCode::BAD_REQUEST, "invalid request\n") };
    match shared.client.forward(forwarded).await {
        Ok(response) => response.map(|b| b.map_err(|e| HttpError::InternalError(Some(format!("the API's answer: {e}")))).boxed_unsync()),
        Err(error) => text(StatusCode::BAD_GATEWAY, format!("the API did not answer: {error}\n")),
    }
}

/// Routes a guest's outgoing requests for Service names into the proxy.
pub struct GuestOutbound {
    pub shared: Weak<Shared>,
    /// The calling pod's namespace (a bare `NAME` means a Service there).
    pub namespace: String,
    /// The calling node's address, the "client IP" for session affinity.
    pub client: Option<IpAddr>,
    /// The pod's own address when it has a network namespace: `localhost:PORT` reaches the
    /// pod's containers there.
    pub pod_address: Option<std::net::Ipv4Addr>,
}

impl OutboundHttp for GuestOutbound {
    fn route(&self, request: Request<ProxyBody>) -> Result<OutboundFuture, Request<ProxyBody>> {
        let Some(shared) = self.shared.upgrade() else { return Err(request) };
        let Some(authority) = request.uri().authority().map(|a| a.as_str().to_owned()) else { return Err(request) };
        let (host, port) = split_host_port(&authority);
        if let Some(pod_address) = self.pod_address
            && matches!(host, "localhost" | "127.0.0.1" | "[::1]")
        {
            let address = std::net::SocketAddr::new(pod_address.into(), port.unwrap_or(80));
            return Ok(Box::pin(async move {
                let (mut parts, body) = request.into_parts();
                parts.uri = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").parse().map_err(|_| HttpError::HttpRequestUriInvalid)?;
                Ok(to_address(&shared, address, Request::from_parts(parts, body)).await)
            }));
        }
        let Some(service) = shared.services.resolve(host, &self.namespace) else { return Err(request) };
        if service.namespace == "default" && service.name == "kubernetes" {
            return Ok(Box::pin(async move { Ok(to_api(&shared, request).await) }));
        }
        let client = self.client;
        Ok(Box::pin(async move {
            let Some(service_port) = service.port(port).cloned() else { return Err(HttpError::DestinationNotFound) };
            let (mut parts, body) = request.into_parts();
            parts.uri = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").parse().map_err(|_| HttpError::HttpRequestUriInvalid)?;
            Ok(to_service(&shared, &service, &service_port, Request::from_parts(parts, body), client).await)
        }))
    }
}
