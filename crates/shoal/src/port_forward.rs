//! `shoal port-forward pod/NAME LOCALPORT[:PODPORT]`: serves a pod's HTTP port on a local port,
//! through its node's data plane, until interrupted.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use shoal_api::resources;
use shoal_client::Client;

#[derive(Args)]
pub struct PortForwardArgs {
    /// `pod/NAME` or `NAME`.
    pod: String,
    /// `LOCALPORT[:PODPORT]`; the pod port defaults to its first declared port.
    ports: String,
    #[arg(short, long)]
    namespace: Option<String>,
    /// Local address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    address: String,
}

pub async fn port_forward(client: &Client, args: PortForwardArgs) -> anyhow::Result<ExitCode> {
    let name = args.pod.strip_prefix("pod/").or_else(|| args.pod.strip_prefix("pods/")).unwrap_or(&args.pod).to_owned();
    let namespace = args.namespace.clone().unwrap_or_else(|| client.default_namespace.clone());
    let pods = resources::by_name("pods").expect("pods are served");
    let nodes = resources::by_name("nodes").expect("nodes are served");
    let pod = client.get(pods, Some(&namespace), &name).await?;
    let (local, pod_port) = match args.ports.split_once(':') {
        Some((local, remote)) => (local.parse::<u16>().context("LOCALPORT")?, Some(remote.parse::<u16>().context("PODPORT")?)),
        None => (args.ports.parse::<u16>().context("LOCALPORT")?, None),
    };
    let pod_port = pod_port.or_else(|| {
        pod["spec"]["containers"].as_array().into_iter().flatten().flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default()).find_map(|p| p["containerPort"].as_u64().map(|p| p as u16))
    });
    let node_name = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()).context("the pod is not running on a node yet")?;
    let node = client.get(nodes, None, node_name).await?;
    let Some(data_addr) = node["metadata"]["annotations"]["shoal.dev/data-addr"].as_str() else { bail!("node {node_name} has not published its data-plane address") };
    let target = match pod_port {
        Some(port) => format!("http://{data_addr}/_pods/{namespace}/{name}:{port}"),
        None => format!("http://{data_addr}/_pods/{namespace}/{name}"),
    };
    let listener = tokio::net::TcpListener::bind((args.address.as_str(), local)).await.with_context(|| format!("listening on {}:{local}", args.address))?;
    println!("Forwarding from {} -> {}", listener.local_addr()?, pod_port.map_or("its HTTP component".to_owned(), |p| p.to_string()));
    let http = reqwest::Client::new();
    loop {
        let (stream, _) = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            accepted = listener.accept() => accepted?,
        };
        let http = http.clone();
        let target = target.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let http = http.clone();
                let target = target.clone();
                async move {
                    let path = request.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into());
                    let (parts, body) = request.into_parts();
                    let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                    let mut forwarded = http.request(parts.method, format!("{target}{path}")).body(body);
                    for (name, value) in &parts.headers {
                        if name != hyper::header::HOST {
                            forwarded = forwarded.header(name, value);
                        }
                    }
                    let response = match forwarded.send().await {
                        Ok(response) => response,
                        Err(error) => {
                            let mut reply = hyper::Response::new(http_body_util::Full::new(bytes_of(format!("port-forward: {error}\n"))));
                            *reply.status_mut() = hyper::StatusCode::BAD_GATEWAY;
                            return Ok::<_, std::convert::Infallible>(reply);
                        }
                    };
                    let mut reply = hyper::Response::builder().status(response.status().as_u16());
                    for (name, value) in response.headers() {
                        reply = reply.header(name, value);
                    }
                    let bytes = response.bytes().await.unwrap_or_default();
                    Ok(reply.body(http_body_util::Full::new(bytes)).unwrap_or_default())
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn bytes_of(text: String) -> bytes::Bytes {
    bytes::Bytes::from(text)
}
