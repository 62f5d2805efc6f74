//! Raw TCP to endpoints with an address of their own (pods with a network namespace: those with
//! an OCI container). A node port hands such a connection to the endpoint as a byte stream, as
//! kube-proxy does, so any TCP protocol works, server-speaks-first ones included.
//!
//! - On this node the endpoint is dialled directly at its pod address.
//! - On another node the connection goes through that node's data plane: an HTTP/1.1 request
//!   `GET /_tunnel/UID:PORT` with `Upgrade: shoal-tcp`, which the other node answers with 101
//!   once it has connected to its pod (only pods it runs, by uid), then bytes flow both ways.
//!
//! An endpoint that refuses the connection (or whose node does) is skipped and another tried, up
//! to three, before any byte has moved.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::Shared;
use crate::proxy::{ATTEMPTS, ProxyBody, gone, text};
use crate::services::{Pick, ServiceEntry, ServicePort};

/// The `Upgrade` token of a data-plane tunnel.
pub const PROTOCOL: &str = "shoal-tcp";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// What a new connection for a Service port should become.
pub enum Dispatch {
    /// A byte stream to an endpoint (held as busy while the connection lasts).
    Tcp(Pick, Box<dyn Stream>),
    /// The endpoint picked is an HTTP component (or none is ready): serve HTTP and balance per
    /// request.
    Http,
    /// Every endpoint with an address of its own refused the connection.
    Refused,
}

/// Chooses an endpoint for one connection and, when it has an address of its own, connects to
/// it (retrying other endpoints on refusal).
pub async fn dispatch(shared: &Arc<Shared>, service: &ServiceEntry, port: &ServicePort, client: Option<IpAddr>) -> Dispatch {
    let mut excluded = Vec::new();
    for _ in 0..ATTEMPTS {
        let Some(pick) = shared.services.pick(service, port, client, &excluded) else { break };
        // An HTTP component: the connection is served as HTTP, balanced per request.
        let Some(address) = shared.services.own_address(&pick.endpoint) else { return Dispatch::Http };
        let endpoint = &pick.endpoint;
        let connected: Result<Box<dyn Stream>, String> = if endpoint.node == shared.config.node_name {
            dial(SocketAddr::new(address, pick.port)).await.map(|s| Box::new(s) as Box<dyn Stream>)
        } else {
            match shared.services.node_address(&endpoint.node) {
                Some(node) => open(&node, &endpoint.uid, pick.port).await.map(|s| Box::new(s) as Box<dyn Stream>),
                None => Err(format!("node {} has no data-plane address", endpoint.node)),
            }
        };
        match connected {
            Ok(stream) => return Dispatch::Tcp(pick, stream),
            Err(error) => {
                tracing::debug!(%error, pod = %format!("{}/{}", endpoint.namespace, endpoint.pod), node = %endpoint.node, "a TCP endpoint refused; trying another");
                excluded.push(endpoint.uid.clone());
            }
        }
    }
    if excluded.is_empty() { Dispatch::Http } else { Dispatch::Refused }
}

async fn dial(address: SocketAddr) -> Result<tokio::net::TcpStream, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(error)) => Err(format!("connecting to {address}: {error}")),
        Err(_) => Err(format!("connecting to {address}: timed out")),
    }
}

/// Opens a tunnel through the data plane at `node` to port `port` of the pod `uid` there.
pub async fn open(node: &str, uid: &str, port: u16) -> Result<TokioIo<hyper::upgrade::Upgraded>, String> {
    let address: SocketAddr = tokio::net::lookup_host(node).await.map_err(|e| format!("resolving {node}: {e}"))?.next().ok_or_else(|| format!("{node} resolves to nothing"))?;
    let stream = dial(address).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("data plane {node}: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    let request = Request::get(format!("/_tunnel/{uid}:{port}"))
        .header(hyper::header::HOST, node)
        .header(hyper::header::CONNECTION, "upgrade")
        .header(hyper::header::UPGRADE, PROTOCOL)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender.send_request(request).await.map_err(|e| format!("data plane {node}: {e}"))?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = response.status();
        let body = response.into_body().collect().await.map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_owned()).unwrap_or_default();
        return Err(format!("data plane {node} answered {status}: {body}"));
    }
    let upgraded = hyper::upgrade::on(response).await.map_err(|e| format!("data plane {node}: {e}"))?;
    Ok(TokioIo::new(upgraded))
}

/// The data plane's side of a tunnel: `target` is `UID:PORT` of a pod this node runs with a
/// network of its own. Connects first, so a refusal is an answer the caller can act on.
pub async fn accept<B>(shared: &Arc<Shared>, target: &str, request: Request<B>) -> Response<ProxyBody> {
    let upgrade_asked = request.headers().get(hyper::header::UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case(PROTOCOL));
    if !upgrade_asked {
        return text(StatusCode::BAD_REQUEST, format!("a tunnel needs `Upgrade: {PROTOCOL}`\n"));
    }
    let Some((uid, port)) = target.rsplit_once(':').and_then(|(uid, port)| Some((uid, port.parse::<u16>().ok()?))) else {
        return text(StatusCode::NOT_FOUND, "use /_tunnel/UID:PORT\n");
    };
    let address = shared.pod_networks.read().unwrap_or_else(|p| p.into_inner()).get(uid).map(|net| net.network.address);
    let Some(address) = address else { return gone(StatusCode::SERVICE_UNAVAILABLE, format!("no pod {uid} with a network on this node\n")) };
    let mut upstream = match dial(SocketAddr::new(address.into(), port)).await {
        Ok(stream) => stream,
        Err(error) => return gone(StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n")),
    };
    let shutdown = shared.shutdown.clone();
    let upgrade = hyper::upgrade::on(request);
    shared.tasks.spawn(async move {
        match upgrade.await {
            Ok(upgraded) => relay(TokioIo::new(upgraded), &mut upstream, &shutdown).await,
            Err(error) => tracing::debug!(%error, "a tunnel's upgrade failed"),
        }
    });
    let mut response = Response::new(http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    response.headers_mut().insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("upgrade"));
    response.headers_mut().insert(hyper::header::UPGRADE, hyper::header::HeaderValue::from_static(PROTOCOL));
    response
}

/// Copies bytes both ways until both sides are done, or the node shuts down.
pub async fn relay<A: AsyncRead + AsyncWrite + Unpin, B: AsyncRead + AsyncWrite + Unpin + ?Sized>(mut client: A, upstream: &mut B, shutdown: &tokio_util::sync::CancellationToken) {
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut client, upstream) => if let Err(error) = result {
            tracing::debug!(%error, "a TCP relay ended");
        },
        _ = shutdown.cancelled() => {}
    }
}
