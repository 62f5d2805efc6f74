//! hello: a wasi:http component. Every request gets 200, `x-shoal-pod: $HOSTNAME`, and the body
//! `$GREETING` (default `hello from shoal`) plus a newline.

use std::io::Write as _;

use wasip2::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

wasip2::http::proxy::export!(Hello);

struct Hello;

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
        let greeting = std::env::var("GREETING").unwrap_or_else(|_| "hello from shoal".to_owned());
        let pod = std::env::var("HOSTNAME").unwrap_or_default();
        let headers = Fields::new();
        let _ = headers.append("content-type", b"text/plain; charset=utf-8");
        let _ = headers.append("x-shoal-pod", pod.as_bytes());
        let response = OutgoingResponse::new(headers);
        let Ok(body) = response.body() else { return };
        ResponseOutparam::set(response_out, Ok(response));
        if let Ok(mut stream) = body.write() {
            let _ = stream.write_all(format!("{greeting}\n").as_bytes());
            let _ = stream.flush();
        }
        let _ = OutgoingBody::finish(body, None);
    }
}
