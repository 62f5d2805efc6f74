//! misbehave: a wasi:http component for limit tests. `/ok` answers 200 `ok`; `/loop` spins
//! forever; `/alloc?mb=N` grows its memory by N MiB and answers 200 if it could; `/recurse`
//! recurses without bound; `/spin?ms=N` keeps a core busy for N ms, then answers; `/sleep?ms=N`
//! answers after N ms.

use std::io::Write as _;

use wasip2::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

wasip2::http::proxy::export!(Misbehave);

struct Misbehave;

fn respond(response_out: ResponseOutparam, status: u16, body: &str) {
    let headers = Fields::new();
    let _ = headers.append("content-type", b"text/plain");
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let Ok(outgoing) = response.body() else { return };
    ResponseOutparam::set(response_out, Ok(response));
    if let Ok(mut stream) = outgoing.write() {
        let _ = stream.write_all(body.as_bytes());
        let _ = stream.flush();
    }
    let _ = OutgoingBody::finish(outgoing, None);
}

fn parameter(query: &str, key: &str) -> Option<u64> {
    query.split('&').find_map(|pair| pair.split_once('=').filter(|(k, _)| *k == key).and_then(|(_, v)| v.parse().ok()))
}

// Unbounded on purpose: this is the deep-recursion guest.
#[allow(unconditional_recursion)]
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    // black_box keeps the compiler from turning the recursion into a loop.
    let next = std::hint::black_box(depth + 1);
    recurse(next) + std::hint::black_box(1)
}

impl wasip2::exports::http::incoming_handler::Guest for Misbehave {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_else(|| "/".to_owned());
        let (path, query) = path_with_query.split_once('?').unwrap_or((path_with_query.as_str(), ""));
        match path {
            "/ok" => respond(response_out, 200, "ok\n"),
            "/loop" => {
                let mut counter: u64 = 0;
                loop {
                    counter = std::hint::black_box(counter.wrapping_add(1));
                }
            }
            "/alloc" => {
                let megabytes = parameter(query, "mb").unwrap_or(1);
                let bytes = (megabytes as usize).saturating_mul(1024 * 1024);
                let mut memory: Vec<u8> = Vec::new();
                match memory.try_reserve_exact(bytes) {
                    Ok(()) => {
                        // Touch every page so the memory is really used.
                        memory.resize(bytes, 1);
                        let sum: u64 = memory.iter().step_by(65536).map(|b| *b as u64).sum();
                        respond(response_out, 200, &format!("allocated {megabytes} MiB ({sum} pages touched)\n"));
                    }
                    Err(_) => respond(response_out, 507, &format!("could not allocate {megabytes} MiB\n")),
                }
            }
            "/recurse" => {
                let depth = recurse(0);
                respond(response_out, 200, &format!("{depth}\n"));
            }
            "/spin" => {
                // Busy for ms milliseconds of wall time: CPU load for autoscaling and `top`.
                let milliseconds = parameter(query, "ms").unwrap_or(100);
                let deadline = wasip2::clocks::monotonic_clock::now().saturating_add(milliseconds.saturating_mul(1_000_000));
                let mut counter: u64 = 0;
                while wasip2::clocks::monotonic_clock::now() < deadline {
                    for _ in 0..1000 {
                        counter = std::hint::black_box(counter.wrapping_add(1));
                    }
                }
                respond(response_out, 200, &format!("spun {milliseconds} ms\n"));
            }
            "/sleep" => {
                let milliseconds = parameter(query, "ms").unwrap_or(100);
                wasip2::clocks::monotonic_clock::subscribe_duration(milliseconds.saturating_mul(1_000_000)).block();
                respond(response_out, 200, &format!("slept {milliseconds} ms\n"));
            }
            _ => respond(response_out, 404, "not found; try /ok, /loop, /alloc?mb=N, /recurse, /spin?ms=N, /sleep?ms=N\n"),
        }
    }
}
