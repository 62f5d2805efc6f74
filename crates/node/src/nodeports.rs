//! Node ports: every node opens each NodePort (and LoadBalancer) Service's `nodePort` on its
//! address and proxies what arrives to the Service, as kube-proxy does. The listeners follow
//! the Service table: opened when a port appears, closed when it goes.
//!
//! Each connection picks an endpoint. One with an address of its own (a pod with an OCI
//! container) gets the connection as raw TCP ([`crate::tunnel`]): any protocol works. Wasm HTTP
//! components have no sockets, so for them the node port speaks HTTP/1.1 and HTTP/2 and balances
//! each request.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::proxy::text;
use crate::tunnel::Dispatch;

type Owner = (String, String, u16);

/// Keeps the node-port listeners in step with the Services until shutdown.
pub async fn run(shared: Arc<Shared>, bind_ip: IpAddr) {
    let mut changes = shared.services.changes.subscribe();
    let mut open: HashMap<u16, (Owner, CancellationToken)> = HashMap::new();
    let mut failed: HashMap<u16, Owner> = HashMap::new();
    loop {
        let mut desired: HashMap<u16, Owner> = HashMap::new();
        for service in shared.services.all() {
            if !matches!(service.service_type.as_str(), "NodePort" | "LoadBalancer") {
                continue;
            }
            for port in &service.ports {
                if let Some(node_port) = port.node_port {
                    desired.insert(node_port, (service.namespace.clone(), service.name.clone(), port.port));
                }
            }
        }
        open.retain(|port, (owner, stop)| {
            let keep = desired.get(port) == Some(owner);
            if !keep {
                stop.cancel();
            }
            keep
        });
        failed.retain(|port, owner| desired.get(port) == Some(owner));
        for (node_port, owner) in desired {
            if open.contains_key(&node_port) || failed.contains_key(&node_port) {
                continue;
            }
            let address = SocketAddr::new(bind_ip, node_port);
            match tokio::net::TcpListener::bind(address).await {
                Ok(listener) => {
                    let stop = shared.shutdown.child_token();
                    tracing::info!(%address, service = %format!("{}/{}", owner.0, owner.1), "node port open");
                    shared.tasks.spawn(accept(Arc::clone(&shared), listener, owner.clone(), stop.clone()));
                    open.insert(node_port, (owner, stop));
                }
                Err(error) => {
                    tracing::warn!(%address, %error, service = %format!("{}/{}", owner.0, owner.1), "cannot open the node port");
                    failed.insert(node_port, owner);
                }
            }
        }
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
    }
}

async fn accept(shared: Arc<Shared>, listener: tokio::net::TcpListener, owner: Owner, stop: CancellationToken) {
    let owner = Arc::new(owner);
    while let Some((stream, peer)) = crate::proxy::next_connection(&listener, &stop, "node port").await {
        let (connection_shared, owner) = (Arc::clone(&shared), Arc::clone(&owner));
        shared.reactors.serve(stream, &shared.tasks, move |stream| async move {
            let shared = connection_shared;
            let (namespace, name, port) = &*owner;
            let target = shared.services.get(namespace, name).and_then(|service| Some((service.port(Some(*port))?.clone(), service)));
            if let Some((service_port, service)) = target {
                match crate::tunnel::dispatch(&shared, &service, &service_port, Some(peer.ip())).await {
                    Dispatch::Tcp(pick, mut upstream) => {
                        crate::tunnel::relay(stream, &mut upstream, &shared.shutdown).await;
                        drop(pick);
                        return;
                    }
                    Dispatch::Refused => {
                        tracing::debug!(service = %format!("{namespace}/{name}"), %peer, "node port: every endpoint refused the connection");
                        return;
                    }
                    Dispatch::Http => {}
                }
            }
            let handler_shared = Arc::clone(&shared);
            crate::proxy::serve_http(&shared, TokioIo::new(stream), move |request| {
                let (shared, owner) = (Arc::clone(&handler_shared), Arc::clone(&owner));
                async move {
                    let (namespace, name, port) = &*owner;
                    let Some(service) = shared.services.get(namespace, name) else { return text(StatusCode::SERVICE_UNAVAILABLE, format!("service {namespace}/{name} is gone\n")) };
                    let Some(service_port) = service.port(Some(*port)).cloned() else { return text(StatusCode::SERVICE_UNAVAILABLE, format!("service {namespace}/{name} has no port {port}\n")) };
                    let request = request.map(|body| http_body_util::BodyExt::boxed_unsync(http_body_util::BodyExt::map_err(body, shoal_runtime_wasm::HttpError::from)));
                    crate::proxy::to_service(&shared, &service, &service_port, request, Some(peer.ip())).await
                }
            })
            .await;
        });
    }
}
