//! The node's data-plane listener (`--data-addr`, plain HTTP/1.1 and h2c).
//!
//! - `/_pods/NAMESPACE/NAME/PATH…` reaches the pod's HTTP component (the first one, or the one
//!   declaring port P with `/_pods/NAMESPACE/NAME:P/PATH…`), with `/PATH…` as the request path.
//!   This is how the Service proxy will reach pods on other nodes.
//! - `/_logs/NAMESPACE/NAME?container=&follow=&tailLines=&timestamps=&sinceSeconds=&limitBytes=`
//!   serves a container's captured output. Logs may hold secrets, so this one needs the node
//!   token (the API server's `pods/log` proxies here with it).
//! - `/_tunnel/UID:PORT` with `Upgrade: shoal-tcp` turns the connection into a byte stream to
//!   that port of a pod with a network of its own on this node ([`crate::tunnel`]): node ports on
//!   other nodes reach container endpoints here this way.
//! - `/_metrics`: the node's and its running containers' CPU and memory usage
//!   ([`crate::metrics`]), for the API server's `metrics.k8s.io`. Also needs the node token.
//! - `/healthz`.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use shoal_runtime_wasm::{LogLine, ResponseBody};

use crate::Shared;
use crate::proxy::text;

pub(crate) async fn serve(shared: Arc<Shared>, listener: tokio::net::TcpListener) {
    while let Some((stream, _)) = crate::proxy::next_connection(&listener, &shared.shutdown, "data plane").await {
        let connection_shared = Arc::clone(&shared);
        shared.reactors.serve(stream, &shared.tasks, move |stream| async move {
            let shared = connection_shared;
            let route_shared = Arc::clone(&shared);
            crate::proxy::serve_http(&shared, TokioIo::new(stream), move |request| {
                let shared = Arc::clone(&route_shared);
                async move { route(&shared, request).await }
            })
            .await;
        });
    }
}

async fn route(shared: &Arc<Shared>, request: Request<Incoming>) -> Response<ResponseBody> {
    let path = request.uri().path().to_owned();
    if path == "/healthz" {
        return text(StatusCode::OK, "ok\n");
    }
    if path == "/_metrics" {
        if !from_api_server(shared, &request) {
            return text(StatusCode::UNAUTHORIZED, "metrics are served to the API servers (the shared node token)\n");
        }
        let mut response = Response::new(http_body_util::Full::new(Bytes::from(shared.metrics.summary().to_string())).map_err(|never| match never {}).boxed_unsync());
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
        return response;
    }
    if let Some(rest) = path.strip_prefix("/_logs/") {
        return logs(shared, rest, request).await;
    }
    if let Some(rest) = path.strip_prefix("/_pods/") {
        return to_pod(shared, rest, request).await;
    }
    if let Some(target) = path.strip_prefix("/_tunnel/") {
        return crate::tunnel::accept(shared, target, request).await;
    }
    text(StatusCode::NOT_FOUND, "unknown data-plane path; use /_pods/NAMESPACE/NAME/… or /_logs/NAMESPACE/NAME\n")
}

async fn to_pod(shared: &Arc<Shared>, rest: &str, request: Request<Incoming>) -> Response<ResponseBody> {
    let mut parts = rest.splitn(3, '/');
    let (Some(namespace), Some(target)) = (parts.next(), parts.next()) else {
        return text(StatusCode::NOT_FOUND, "use /_pods/NAMESPACE/NAME/PATH\n");
    };
    let tail = parts.next().unwrap_or_default();
    let (name, port) = match target.split_once(':') {
        Some((name, port)) => (name, port.parse::<u16>().ok()),
        None => (target, None),
    };
    let Some(route) = crate::proxy::local_route(shared, namespace, name, port) else {
        // Nothing was read: a Service proxy may send this request to another endpoint.
        return crate::proxy::gone(StatusCode::SERVICE_UNAVAILABLE, format!("pod {namespace}/{name} has no ready HTTP component on this node\n"));
    };
    let query = request.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
    let (mut parts, body) = request.into_parts();
    parts.uri = match format!("/{tail}{query}").parse() {
        Ok(uri) => uri,
        Err(_) => return text(StatusCode::BAD_REQUEST, "invalid path\n"),
    };
    route.handle(shared, Request::from_parts(parts, body), port).await
}

fn format_line(line: &LogLine, timestamps: bool) -> String {
    if timestamps {
        format!("{} {}\n", line.timestamp.strftime("%Y-%m-%dT%H:%M:%S%.9fZ"), line.text)
    } else {
        format!("{}\n", line.text)
    }
}

/// Whether the request carries the token the API servers use here (the shared node token).
fn from_api_server(shared: &Shared, request: &Request<Incoming>) -> bool {
    let token = request.headers().get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or_default();
    shoal_api::token::matches_sha256(&shared.config.server_token_sha256, token.as_bytes())
}

async fn logs(shared: &Arc<Shared>, rest: &str, request: Request<Incoming>) -> Response<ResponseBody> {
    if !from_api_server(shared, &request) {
        return text(StatusCode::UNAUTHORIZED, "logs are served to the API servers (the shared node token)\n");
    }
    let Some((namespace, name)) = rest.split_once('/') else { return text(StatusCode::NOT_FOUND, "use /_logs/NAMESPACE/NAME\n") };
    let query: HashMap<String, String> = form_urlencoded(request.uri().query().unwrap_or_default());
    let sinks: Vec<(String, shoal_runtime_wasm::LogSink)> = shared
        .logs
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|((ns, pod, _), _)| ns == namespace && pod == name)
        .map(|((_, _, container), sink)| (container.clone(), sink.clone()))
        .collect();
    // A pod this node no longer runs (finished before a restart) still has its files.
    let sinks = if sinks.is_empty() { sinks_on_disk(shared, namespace, name) } else { sinks };
    let sink = match query.get("container") {
        Some(container) => sinks.iter().find(|(c, _)| c == container).map(|(_, s)| s.clone()),
        None if sinks.len() == 1 => Some(sinks[0].1.clone()),
        None if sinks.is_empty() => None,
        None => {
            let names: Vec<&str> = sinks.iter().map(|(c, _)| c.as_str()).collect();
            return text(StatusCode::BAD_REQUEST, format!("a container name must be specified for pod {name}, choose one of: {names:?}\n"));
        }
    };
    let Some(sink) = sink else {
        return text(StatusCode::NOT_FOUND, format!("no logs for pod {namespace}/{name} (container {:?}) on this node yet\n", query.get("container")));
    };
    let previous = query.get("previous").is_some_and(|p| p == "true");
    let timestamps = query.get("timestamps").is_some_and(|t| t == "true");
    let since = query.get("sinceSeconds").and_then(|s| s.parse::<i64>().ok()).map(|s| jiff::Timestamp::now().as_second() - s);
    let source = if previous { sink.previous_lines() } else { sink.lines() };
    if previous && source.is_empty() {
        return text(StatusCode::BAD_REQUEST, format!("previous terminated container in pod \"{name}\" not found\n"));
    }
    let mut lines: Vec<LogLine> = source.into_iter().filter(|l| since.is_none_or(|s| l.timestamp.as_second() >= s)).collect();
    if let Some(tail) = query.get("tailLines").and_then(|t| t.parse::<usize>().ok()) {
        let skip = lines.len().saturating_sub(tail);
        lines.drain(..skip);
    }
    let mut limit = query.get("limitBytes").and_then(|l| l.parse::<usize>().ok()).unwrap_or(usize::MAX);
    let mut initial = String::new();
    for line in &lines {
        let formatted = format_line(line, timestamps);
        if formatted.len() > limit {
            initial.push_str(&formatted[..limit]);
            limit = 0;
            break;
        }
        limit -= formatted.len();
        initial.push_str(&formatted);
    }
    let follow = query.get("follow").is_some_and(|f| f == "true") && limit > 0 && !previous;
    if !follow {
        return text(StatusCode::OK, initial);
    }
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, shoal_runtime_wasm::BodyError>>(64);
    let shutdown = shared.shutdown.clone();
    shared.tasks.spawn(async move {
        if sender.send(Ok(Frame::data(Bytes::from(initial)))).await.is_err() {
            return;
        }
        let mut seen = sink.written();
        let mut updates = sink.subscribe();
        loop {
            if sink.is_finished() && sink.written() == seen {
                // The container has ended and every line is out: end the stream, as kubectl expects.
                return;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = sender.closed() => return,
                changed = updates.changed() => if changed.is_err() { return },
            }
            let written = sink.written();
            let all = sink.lines();
            let fresh = (written - seen) as usize;
            seen = written;
            let start = all.len().saturating_sub(fresh);
            let chunk: String = all[start..].iter().map(|l| format_line(l, timestamps)).collect();
            if sender.send(Ok(Frame::data(Bytes::from(chunk)))).await.is_err() {
                return;
            }
        }
    });
    let stream = futures::stream::unfold(receiver, |mut receiver| async move { receiver.recv().await.map(|item| (item, receiver)) });
    let mut response = Response::new(StreamBody::new(stream).boxed_unsync());
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// Log sinks read back from a pod's log files (`logs/NS_NAME_UID/CONTAINER.log`).
fn sinks_on_disk(shared: &Shared, namespace: &str, name: &str) -> Vec<(String, shoal_runtime_wasm::LogSink)> {
    let prefix = format!("{namespace}_{name}_");
    let Ok(entries) = std::fs::read_dir(shared.config.data_dir.join("logs")) else { return Vec::new() };
    let mut sinks = Vec::new();
    for directory in entries.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(&prefix)) {
        for file in std::fs::read_dir(directory.path()).into_iter().flatten().flatten() {
            let file_name = file.file_name().to_string_lossy().into_owned();
            if let Some(container) = file_name.strip_suffix(".log")
                && let Ok(sink) = shoal_runtime_wasm::LogSink::with_file(10_000, &file.path(), u64::MAX)
            {
                sink.set_finished(true);
                sinks.push((container.to_owned(), sink));
            }
        }
    }
    sinks
}

fn form_urlencoded(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key.to_owned(), value.replace("%2F", "/").replace("%3D", "="))
        })
        .collect()
}

