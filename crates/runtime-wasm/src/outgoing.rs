//! `wasi:http/outgoing-handler#handle`, Shoal's own.
//!
//! wasmtime-wasi-http's `handle` always moves the request into a task of its own and hands the
//! guest a pending future: the guest then blocks on its pollable until that task has run and
//! woken it. For a request the node answers in-process (a Service endpoint on this node, whose
//! handler runs in the caller's task) that task and its wake-up were most of the call's own
//! cost. Here the answer is polled once, inline, while the guest waits in `handle`: when it is
//! ready at once (a local component that answered without waiting for anything), the guest gets
//! a ready future and no task is spawned for the request. When it must wait (the callee reads a
//! request body the guest has not written yet, which it can only write once `handle` returns;
//! or the endpoint is on another node), the rest moves to a task of its own exactly as before.
//! Requests the node does not route go to the network through wasmtime-wasi-http's sender,
//! unchanged.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use bytes::Bytes;
use http_body_util::BodyExt;
use wasmtime::component::{Linker, Resource};
use wasmtime::StoreContextMut;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Method, Scheme};
use wasmtime_wasi_http::p2::types::{HostFutureIncomingResponse, HostOutgoingRequest};
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks};

use crate::sandbox::ComponentState;

/// The interface whose `handle` this module replaces, at the version wasmtime-wasi-http links
/// (guests importing any earlier 0.2 version resolve to it). A test checks that the replacement
/// is the one guests reach.
const OUTGOING_HANDLER: &str = "wasi:http/outgoing-handler@0.2.12";

/// Links `wasi:http` (types from wasmtime-wasi-http) with this module's `handle`.
pub(crate) fn add_to_linker(linker: &mut Linker<ComponentState>) -> wasmtime::Result<()> {
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    linker.allow_shadowing(true);
    let replaced = linker.instance(OUTGOING_HANDLER).and_then(|mut instance| instance.func_wrap_async("handle", handle));
    linker.allow_shadowing(false);
    replaced
}

type HandleResult = wasmtime::Result<(Result<Resource<HostFutureIncomingResponse>, ErrorCode>,)>;

fn handle(mut store: StoreContextMut<'_, ComponentState>, (request, options): (Resource<HostOutgoingRequest>, Option<Resource<RequestOptions>>)) -> Box<dyn Future<Output = HandleResult> + Send + '_> {
    Box::new(async move {
        let state = store.data_mut();
        // Both handles are owned by the call: the host drops them.
        let options = match options {
            Some(options) => Some(state.table.delete(options)?),
            None => None,
        };
        let outgoing = state.table.delete(request)?;
        let request = match to_http(outgoing, &mut state.hooks) {
            Ok(request) => request,
            Err(code) => return Ok((Err(code),)),
        };
        let routed = match state.hooks.outbound.as_ref() {
            Some(outbound) => outbound.route(request),
            None => Err(request),
        };
        let future = match routed {
            Ok(mut answer) => match std::future::poll_fn(|cx| Poll::Ready(answer.as_mut().poll(cx))).await {
                Poll::Ready(answer) => HostFutureIncomingResponse::Ready(answer.map(|response| (response, finished_worker()))),
                Poll::Pending => HostFutureIncomingResponse::Pending(wasmtime_wasi::runtime::spawn(async move { Ok((answer.await?, finished_worker())) })),
            },
            Err(request) => {
                let mut network: [(); 0] = [];
                let sent = WasiHttpHooks::send_request(&mut network, request, options, Box::new(async { Ok(()) }));
                HostFutureIncomingResponse::Pending(wasmtime_wasi::runtime::spawn(async move {
                    let (response, io) = Pin::from(sent).await?;
                    let io = wasmtime_wasi::runtime::spawn(async move {
                        if let Err(error) = Pin::from(io).await {
                            tracing::debug!(%error, "an outgoing request's connection failed after its response");
                        }
                    });
                    Ok((response, io))
                }))
            }
        };
        Ok((Ok(store.data_mut().table.push(future)?),))
    })
}

/// The worker handle a response's body keeps: in-process answers need none, so it is a task
/// that has nothing to do.
fn finished_worker() -> wasmtime_wasi::runtime::AbortOnDropJoinHandle<()> {
    wasmtime_wasi::runtime::spawn(async {})
}

/// The guest's request as an `http::Request`, or the error code the guest gets for it.
fn to_http(request: HostOutgoingRequest, hooks: &mut dyn WasiHttpHooks) -> Result<http::Request<WasiBody>, ErrorCode> {
    let mut headers: http::HeaderMap = request.headers.into();
    // A body's framing follows Content-Length: one decimal value, and none but 0 without a body.
    let mut lengths = headers.get_all(http::header::CONTENT_LENGTH).iter();
    let length = match (lengths.next(), lengths.next()) {
        (None, _) => None,
        (Some(value), None) => match value.to_str().ok().filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())).and_then(|v| v.parse::<u64>().ok()) {
            Some(length) => Some(length),
            None => return Err(ErrorCode::InternalError(Some("invalid content-length header".into()))),
        },
        (Some(_), Some(_)) => return Err(ErrorCode::InternalError(Some("more than one content-length header".into()))),
    };
    if request.body.is_none() && length.is_some_and(|length| length != 0) {
        return Err(ErrorCode::HttpRequestBodySize(Some(0)));
    }
    let method = match request.method {
        Method::Get => http::Method::GET,
        Method::Head => http::Method::HEAD,
        Method::Post => http::Method::POST,
        Method::Put => http::Method::PUT,
        Method::Delete => http::Method::DELETE,
        Method::Connect => http::Method::CONNECT,
        Method::Options => http::Method::OPTIONS,
        Method::Trace => http::Method::TRACE,
        Method::Patch => http::Method::PATCH,
        Method::Other(other) => http::Method::from_bytes(other.as_bytes()).map_err(|_| ErrorCode::HttpRequestMethodInvalid)?,
    };
    let scheme = match request.scheme {
        Some(Scheme::Http) => http::uri::Scheme::HTTP,
        Some(Scheme::Https) => http::uri::Scheme::HTTPS,
        Some(Scheme::Other(other)) => other.parse().map_err(|_| ErrorCode::HttpProtocolError)?,
        None => hooks.default_scheme().ok_or(ErrorCode::HttpProtocolError)?,
    };
    if !hooks.is_supported_scheme(&scheme) {
        return Err(ErrorCode::HttpProtocolError);
    }
    let authority = request.authority.unwrap_or_default();
    let mut uri = http::Uri::builder().scheme(scheme).authority(authority.as_str());
    if let Some(path) = request.path_with_query {
        uri = uri.path_and_query(path);
    }
    let uri = uri.build().map_err(|_| ErrorCode::HttpRequestUriInvalid)?;
    if hooks.set_host_header() {
        let host = http::HeaderValue::from_str(&authority).map_err(|_| ErrorCode::HttpRequestUriInvalid)?;
        headers.insert(http::header::HOST, host);
    }
    let body = request.body.unwrap_or_else(|| http_body_util::Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync());
    let mut built = http::Request::new(body);
    *built.method_mut() = method;
    *built.uri_mut() = uri;
    *built.headers_mut() = headers;
    Ok(built)
}
