//! The in-process part of a guest's call to a Service on the same node, split into its pieces:
//! echo's plain answer, hello's own request, and echo's `/fetch?url=http://hello/` whose
//! outgoing `wasi:http` request the host answers by calling hello's handler in-process (as the
//! node's Service proxy does for a local endpoint, minus the name lookup and endpoint pick).
//! The call's cost is the third minus the first; the second is the callee's share of it. Runs on
//! a current-thread runtime, as the node's reactors serve connections, and on a two-worker
//! multi-threaded runtime for comparison. The samples must be built (samples/build.sh).
//!
//! Both guests get a read-only directory holding a token, as every pod gets its ServiceAccount
//! token: until session 29 each instance opened its directories afresh, a per-request cost this
//! bench could not show while its guests had none.

use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Full};
use shoal_runtime_wasm::{HttpError, HttpHandler, LogSink, OutboundFuture, OutboundHttp, Preopen, Runtime, RuntimeConfig, SandboxSpec, Workload};

/// Answers every request for the host `hello` with the hello component, in-process.
struct ToHello(Arc<HttpHandler>);

impl OutboundHttp for ToHello {
    fn route(&self, request: hyper::Request<shoal_runtime_wasm::WasiBody>) -> Result<OutboundFuture, hyper::Request<shoal_runtime_wasm::WasiBody>> {
        if request.uri().host() != Some("hello") {
            return Err(request);
        }
        let hello = Arc::clone(&self.0);
        Ok(Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            parts.uri = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").parse().map_err(|_| HttpError::HttpRequestUriInvalid)?;
            Ok(hello.handle(hyper::Request::from_parts(parts, body)).await.0)
        }))
    }
}

async fn serve(runtime: &Arc<Runtime>, sample: &str, spec: SandboxSpec) -> Arc<HttpHandler> {
    let wasm = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../samples/{sample}/{sample}.wasm"));
    match runtime.load(&format!("sha256:bench-call-{sample}"), &wasm).await.expect("load the sample (run samples/build.sh)") {
        Workload::Http(prepared) => Arc::new(HttpHandler::new(prepared, spec, 1024)),
        _ => panic!("{sample} is an HTTP component"),
    }
}

async fn call(handler: &HttpHandler, uri: &str) -> Bytes {
    let request = hyper::Request::builder().uri(uri).body(Full::new(Bytes::new())).expect("request");
    let (response, _) = handler.handle(request).await;
    response.into_body().collect().await.expect("body").to_bytes()
}

fn service_call(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = Runtime::new(RuntimeConfig::new(dir.path().join("compiled"))).expect("engine");
    let token = dir.path().join("serviceaccount");
    std::fs::create_dir_all(&token).expect("token directory");
    std::fs::write(token.join("token"), "a-bench-token").expect("token");
    let pod_spec = || {
        let mut spec = SandboxSpec::new(LogSink::new(16));
        spec.preopens.push(Preopen { host_path: token.clone(), guest_path: "/var/run/secrets/kubernetes.io/serviceaccount".into(), read_only: true });
        spec
    };
    let (hello, echo) = tokio.block_on(async {
        let hello = serve(&runtime, "hello", pod_spec()).await;
        let mut spec = pod_spec();
        spec.outbound = Some(Arc::new(ToHello(Arc::clone(&hello))));
        let echo = serve(&runtime, "echo", spec).await;
        let fetched = call(&echo, "http://bench/fetch?url=http://hello/").await;
        assert!(String::from_utf8_lossy(&fetched).contains("hello from shoal"), "{fetched:?}");
        (hello, echo)
    });
    // The node serves connections on reactors (a current-thread runtime per thread); the
    // two-worker runtime is how it served them before, kept for the comparison.
    let reactor = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let cases = [("echo, plain answer", &echo, "http://bench/"), ("hello alone", &hello, "http://bench/"), ("echo -> http://hello/", &echo, "http://bench/fetch?url=http://hello/")];
    for (runtime_name, runtime) in [("reactor", &reactor), ("two-worker runtime", &tokio)] {
        let mut group = c.benchmark_group(format!("same-node service call, {runtime_name}"));
        for &(name, handler, uri) in &cases {
            // The loop runs in a task of the runtime, as a node's connection task does
            // (criterion's own future runs on the bench's main thread, outside a multi-threaded
            // runtime's workers).
            group.bench_function(name, |b| {
                b.to_async(runtime).iter_custom(|iterations| {
                    let handler = Arc::clone(handler);
                    async move {
                        tokio::spawn(async move {
                            let started = std::time::Instant::now();
                            for _ in 0..iterations {
                                std::hint::black_box(call(&handler, uri).await);
                            }
                            started.elapsed()
                        })
                        .await
                        .expect("the bench task")
                    }
                })
            });
        }
        group.finish();
    }
    // The same calls, each after the thread slept (as a reactor does between one-at-a-time
    // requests): only the call is timed. Against the hot loop above, this is what an idle
    // thread's cold caches cost (`SHOAL_BENCH_IDLE_US`, default 200 µs of sleep). With
    // `SHOAL_BENCH_IDLE_SPIN=1` the thread spins for that time instead of sleeping: the gap then
    // separates what time alone costs from what giving up the CPU costs.
    let idle = std::time::Duration::from_micros(std::env::var("SHOAL_BENCH_IDLE_US").ok().and_then(|v| v.parse().ok()).unwrap_or(200));
    let spin = std::env::var("SHOAL_BENCH_IDLE_SPIN").is_ok_and(|v| v == "1");
    let wait = move || {
        if spin {
            let until = std::time::Instant::now() + idle;
            while std::time::Instant::now() < until {
                std::hint::spin_loop();
            }
        } else {
            std::thread::sleep(idle);
        }
    };
    let mut group = c.benchmark_group(format!("same-node service call, reactor, after {idle:?} {}", if spin { "spinning" } else { "idle" }));
    for &(name, handler, uri) in &cases {
        group.bench_function(name, |b| {
            b.to_async(&reactor).iter_custom(|iterations| {
                let handler = Arc::clone(handler);
                async move {
                    let mut spent = std::time::Duration::ZERO;
                    for _ in 0..iterations {
                        wait();
                        let started = std::time::Instant::now();
                        std::hint::black_box(call(&handler, uri).await);
                        spent += started.elapsed();
                    }
                    spent
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, service_call);
criterion_main!(benches);
