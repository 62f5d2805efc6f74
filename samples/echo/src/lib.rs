//! echo: a wasi:http component that answers with JSON describing the request (method, path,
//! query, headers, body). `GET /fetch?url=U` makes an outgoing wasi:http request to U and answers
//! with its status and body. `POST /write?path=P` writes the request body to the file P (in a
//! directory the pod mounted for it) and answers with the number of bytes written.
//! `GET /read?path=P` answers with the file P's content, `GET /env?name=N` with the variable
//! N. `GET /kube?path=/api/…[&host=H]` is an in-cluster client: it calls the Kubernetes API at
//! `https://kubernetes.default.svc` (or H) with the pod's ServiceAccount token (read from its
//! mounted volume) and answers with the API's status and body.

use std::io::{Read as _, Write as _};

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam, Scheme,
};

wasip2::http::proxy::export!(Echo);

struct Echo;

/// Escapes a string as a JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn method_name(method: &Method) -> String {
    match method {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(other) => other.clone(),
    }
}

fn query_parameter(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'%' if index + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[index + 1..index + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        index += 3;
                    }
                    None => {
                        out.push(b'%');
                        index += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                index += 1;
            }
            byte => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn respond(response_out: ResponseOutparam, status: u16, content_type: &str, body: &[u8]) {
    let headers = Fields::new();
    let _ = headers.append("content-type", content_type.as_bytes());
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let Ok(outgoing) = response.body() else { return };
    ResponseOutparam::set(response_out, Ok(response));
    if let Ok(mut stream) = outgoing.write() {
        // The blocking stream writes in chunks the host accepts.
        for chunk in body.chunks(4096) {
            if stream.write_all(chunk).is_err() {
                break;
            }
        }
        let _ = stream.flush();
    }
    let _ = OutgoingBody::finish(outgoing, None);
}

/// Where the pod's ServiceAccount token is mounted.
const TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// Makes a GET request to `url` with `headers` and returns (status, body).
fn fetch(url: &str, headers: &[(&str, String)]) -> Result<(u16, Vec<u8>), String> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else {
        return Err(format!("unsupported URL {url:?}: use http:// or https://"));
    };
    let (authority, path) = match rest.find('/') {
        Some(position) => (&rest[..position], &rest[position..]),
        None => (rest, "/"),
    };
    let fields = Fields::new();
    for (name, value) in headers {
        fields.append(name, &value.as_bytes().to_vec()).map_err(|e| format!("header {name}: {e:?}"))?;
    }
    let request = OutgoingRequest::new(fields);
    request.set_scheme(Some(&scheme)).map_err(|()| "invalid scheme".to_owned())?;
    request.set_authority(Some(authority)).map_err(|()| format!("invalid authority {authority:?}"))?;
    request.set_path_with_query(Some(path)).map_err(|()| format!("invalid path {path:?}"))?;
    let body = request.body().map_err(|()| "no request body".to_owned())?;
    OutgoingBody::finish(body, None).map_err(|e| format!("finishing the request body: {e:?}"))?;
    let future = outgoing_handler::handle(request, None).map_err(|e| format!("sending the request: {e:?}"))?;
    future.subscribe().block();
    let response = future
        .get()
        .ok_or("no response")?
        .map_err(|()| "the response was already taken".to_owned())?
        .map_err(|e| format!("the request failed: {e:?}"))?;
    let status = response.status();
    let incoming = response.consume().map_err(|()| "no response body".to_owned())?;
    let mut bytes = Vec::new();
    if let Ok(mut stream) = incoming.stream() {
        let _ = stream.read_to_end(&mut bytes);
    }
    Ok((status, bytes))
}

impl wasip2::exports::http::incoming_handler::Guest for Echo {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let method = method_name(&request.method());
        let path_with_query = request.path_with_query().unwrap_or_else(|| "/".to_owned());
        let (path, query) = match path_with_query.split_once('?') {
            Some((path, query)) => (path.to_owned(), query.to_owned()),
            None => (path_with_query.clone(), String::new()),
        };
        if path == "/fetch" {
            let Some(url) = query_parameter(&query, "url") else {
                respond(response_out, 400, "text/plain", b"missing ?url=\n");
                return;
            };
            match fetch(&url, &[]) {
                Ok((status, body)) => {
                    let text = String::from_utf8_lossy(&body);
                    let json = format!("{{\"url\":{},\"status\":{status},\"body\":{}}}\n", json_string(&url), json_string(&text));
                    respond(response_out, 200, "application/json", json.as_bytes());
                }
                Err(error) => {
                    let json = format!("{{\"url\":{},\"error\":{}}}\n", json_string(&url), json_string(&error));
                    respond(response_out, 502, "application/json", json.as_bytes());
                }
            }
            return;
        }
        if path == "/read" {
            let Some(file) = query_parameter(&query, "path") else {
                respond(response_out, 400, "text/plain", b"missing ?path=\n");
                return;
            };
            match std::fs::read(&file) {
                Ok(content) => respond(response_out, 200, "application/octet-stream", &content),
                Err(error) => respond(response_out, 404, "text/plain", format!("reading {file}: {error}\n").as_bytes()),
            }
            return;
        }
        if path == "/env" {
            let name = query_parameter(&query, "name").unwrap_or_default();
            match std::env::var(&name) {
                Ok(value) => respond(response_out, 200, "text/plain", value.as_bytes()),
                Err(_) => respond(response_out, 404, "text/plain", format!("{name} is not set\n").as_bytes()),
            }
            return;
        }
        if path == "/kube" {
            let api_path = query_parameter(&query, "path").unwrap_or_else(|| "/api".to_owned());
            let host = query_parameter(&query, "host").unwrap_or_else(|| "kubernetes.default.svc".to_owned());
            let token = match std::fs::read_to_string(TOKEN_PATH) {
                Ok(token) => token,
                Err(error) => {
                    respond(response_out, 500, "text/plain", format!("reading {TOKEN_PATH}: {error}\n").as_bytes());
                    return;
                }
            };
            let url = format!("https://{host}{api_path}");
            match fetch(&url, &[("authorization", format!("Bearer {}", token.trim())), ("accept", "application/json".to_owned())]) {
                Ok((status, body)) => {
                    let json = format!("{{\"status\":{status},\"body\":{}}}\n", json_string(&String::from_utf8_lossy(&body)));
                    respond(response_out, 200, "application/json", json.as_bytes());
                }
                Err(error) => respond(response_out, 502, "application/json", format!("{{\"error\":{}}}\n", json_string(&error)).as_bytes()),
            }
            return;
        }
        if path == "/write" {
            let Some(file) = query_parameter(&query, "path") else {
                respond(response_out, 400, "text/plain", b"missing ?path=\n");
                return;
            };
            let mut content = Vec::new();
            if let Ok(incoming) = request.consume()
                && let Ok(mut stream) = incoming.stream()
            {
                let _ = stream.read_to_end(&mut content);
            }
            match std::fs::write(&file, &content) {
                Ok(()) => respond(response_out, 200, "text/plain", format!("wrote {} bytes to {file}\n", content.len()).as_bytes()),
                Err(error) => respond(response_out, 500, "text/plain", format!("writing {file}: {error}\n").as_bytes()),
            }
            return;
        }
        let headers: Vec<String> = request
            .headers()
            .entries()
            .into_iter()
            .map(|(name, value)| format!("[{},{}]", json_string(&name), json_string(&String::from_utf8_lossy(&value))))
            .collect();
        let mut body = Vec::new();
        if let Ok(incoming) = request.consume()
            && let Ok(mut stream) = incoming.stream()
        {
            let _ = stream.read_to_end(&mut body);
        }
        let json = format!(
            "{{\"method\":{},\"path\":{},\"query\":{},\"headers\":[{}],\"body\":{}}}\n",
            json_string(&method),
            json_string(&path),
            json_string(&query),
            headers.join(","),
            json_string(&String::from_utf8_lossy(&body))
        );
        respond(response_out, 200, "application/json", json.as_bytes());
    }
}
