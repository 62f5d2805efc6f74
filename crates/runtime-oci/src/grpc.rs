//! A small gRPC client over HTTP/2 on containerd's Unix socket: unary calls and the one
//! client-streaming call the runtime needs (content writes). gRPC framing is five bytes (a
//! compression flag and a big-endian length) before each protobuf message; the status comes in
//! the trailers, or in the headers of a trailers-only response.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use tokio::sync::Mutex;

use crate::{Error, Result};

/// gRPC status codes the runtime acts on.
pub const NOT_FOUND: u32 = 5;
pub const ALREADY_EXISTS: u32 = 6;

/// Largest message accepted from containerd (its own default send limit).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

type StreamedBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// One HTTP/2 connection to containerd, re-established when it breaks.
pub struct Channel {
    socket: PathBuf,
    namespace: String,
    sender: Mutex<Option<hyper::client::conn::http2::SendRequest<StreamedBody>>>,
}

impl Channel {
    pub fn new(socket: &Path, namespace: &str) -> Self {
        Channel { socket: socket.to_owned(), namespace: namespace.to_owned(), sender: Mutex::new(None) }
    }

    async fn sender(&self) -> Result<hyper::client::conn::http2::SendRequest<StreamedBody>> {
        let mut slot = self.sender.lock().await;
        if let Some(sender) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        let stream = tokio::net::UnixStream::connect(&self.socket).await.map_err(|source| Error::Connect { socket: self.socket.clone(), source })?;
        let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        builder.initial_stream_window_size(4 * 1024 * 1024).initial_connection_window_size(8 * 1024 * 1024).max_frame_size(1024 * 1024);
        builder.keep_alive_interval(Duration::from_secs(10)).timer(hyper_util::rt::TokioTimer::new());
        let (sender, connection) = builder
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Error::Connect { socket: self.socket.clone(), source: std::io::Error::other(e) })?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "containerd connection ended");
            }
        });
        *slot = Some(sender.clone());
        Ok(sender)
    }

    fn request(&self, method: &str, lease: Option<&str>, body: StreamedBody) -> http::Request<StreamedBody> {
        let mut builder = http::Request::post(format!("http://containerd{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("containerd-namespace", &self.namespace);
        if let Some(lease) = lease {
            builder = builder.header("containerd-lease", lease);
        }
        // The URI and headers are fixed strings and validated names: building cannot fail.
        builder.body(body).expect("a well-formed gRPC request")
    }

    /// One request, one response.
    pub async fn unary<Request: Message, Response: Message + Default>(&self, method: &str, request: &Request, lease: Option<&str>) -> Result<Response> {
        let body = Full::new(frame(request)).map_err(|never| match never {}).boxed();
        let mut messages = self.call(method, lease, body).await?;
        match messages.pop() {
            Some(bytes) => Response::decode(bytes).map_err(|e| Error::Decode { method: method.to_owned(), detail: e.to_string() }),
            None => Err(Error::Decode { method: method.to_owned(), detail: "no response message".into() }),
        }
    }

    /// A client stream of requests; returns the last response.
    pub async fn client_stream<Request: Message, Response: Message + Default>(&self, method: &str, requests: Vec<Request>, lease: Option<&str>) -> Result<Response> {
        let frames: Vec<Bytes> = requests.iter().map(frame).collect();
        let frames = frames.into_iter().map(|f| Ok::<_, std::convert::Infallible>(Frame::data(f)));
        let body = StreamBody::new(futures::stream::iter(frames)).boxed();
        let mut messages = self.call(method, lease, body).await?;
        match messages.pop() {
            Some(bytes) => Response::decode(bytes).map_err(|e| Error::Decode { method: method.to_owned(), detail: e.to_string() }),
            None => Err(Error::Decode { method: method.to_owned(), detail: "no response message".into() }),
        }
    }

    async fn call(&self, method: &str, lease: Option<&str>, body: StreamedBody) -> Result<Vec<Bytes>> {
        let mut sender = self.sender().await?;
        sender.ready().await.map_err(|e| self.broken(e))?;
        let response = sender.send_request(self.request(method, lease, body)).await.map_err(|e| self.broken(e))?;
        let (parts, body) = response.into_parts();
        if let Some(status) = status_of(&parts.headers, method) {
            return Err(status);
        }
        if parts.status != http::StatusCode::OK {
            return Err(Error::Grpc { method: method.to_owned(), code: 2, message: format!("HTTP {}", parts.status) });
        }
        let collected = body.collect().await.map_err(|e| self.broken(e))?;
        if let Some(trailers) = collected.trailers()
            && let Some(status) = status_of(trailers, method)
        {
            return Err(status);
        }
        unframe(collected.to_bytes(), method)
    }

    fn broken(&self, error: hyper::Error) -> Error {
        Error::Connect { socket: self.socket.clone(), source: std::io::Error::other(error) }
    }
}

fn frame<M: Message>(message: &M) -> Bytes {
    let length = message.encoded_len();
    let mut buffer = BytesMut::with_capacity(5 + length);
    buffer.put_u8(0);
    buffer.put_u32(length as u32);
    // Encoding into a buffer sized by `encoded_len` cannot run out of room.
    message.encode(&mut buffer).expect("the buffer holds the message");
    buffer.freeze()
}

fn unframe(mut bytes: Bytes, method: &str) -> Result<Vec<Bytes>> {
    let mut messages = Vec::new();
    while bytes.has_remaining() {
        if bytes.remaining() < 5 {
            return Err(Error::Decode { method: method.to_owned(), detail: "a truncated gRPC frame".into() });
        }
        let compressed = bytes.get_u8();
        let length = bytes.get_u32() as usize;
        if compressed != 0 || length > MAX_MESSAGE || length > bytes.remaining() {
            return Err(Error::Decode { method: method.to_owned(), detail: format!("a gRPC frame of {length} bytes (compressed: {compressed})") });
        }
        messages.push(bytes.split_to(length));
    }
    Ok(messages)
}

/// The error a `grpc-status` header or trailer reports, if not OK.
fn status_of(headers: &http::HeaderMap, method: &str) -> Option<Error> {
    let code: u32 = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    if code == 0 {
        return None;
    }
    let raw = headers.get("grpc-message").and_then(|m| m.to_str().ok()).unwrap_or_default();
    Some(Error::Grpc { method: method.to_owned(), code, message: percent_decode(raw) })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%'
            && let Some(hex) = bytes.get(index + 1..index + 3).and_then(|h| std::str::from_utf8(h).ok())
            && let Ok(value) = u8::from_str_radix(hex, 16)
        {
            out.push(value);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, PartialEq, prost::Message)]
    struct Sample {
        #[prost(string, tag = "1")]
        name: String,
    }

    #[test]
    fn frames_round_trip() {
        let mut joined = BytesMut::new();
        joined.extend_from_slice(&frame(&Sample { name: "a".into() }));
        joined.extend_from_slice(&frame(&Sample { name: "bc".into() }));
        let messages = unframe(joined.freeze(), "/x").expect("two frames");
        let names: Vec<String> = messages.into_iter().map(|m| Sample::decode(m).expect("decodes").name).collect();
        assert_eq!(names, ["a", "bc"]);
        assert!(unframe(Bytes::from_static(&[0, 0, 0, 0, 9, 1]), "/x").is_err());
    }

    #[test]
    fn status_messages_are_percent_decoded() {
        assert_eq!(percent_decode("not%20found%3A x"), "not found: x");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
