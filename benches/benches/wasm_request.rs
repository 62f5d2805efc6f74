//! In-process cost of one HTTP request to a Wasm component: a fresh instance from the pooling
//! allocator, the guest's handler, and dropping the store. The hello sample must be built
//! (samples/build.sh).

use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Full};
use shoal_runtime_wasm::{HttpHandler, LogSink, Runtime, RuntimeConfig, SandboxSpec, Workload};

fn per_request(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../samples/hello/hello.wasm");
    let runtime = Runtime::new(RuntimeConfig::new(dir.path().join("compiled"))).expect("engine");
    let handler = tokio.block_on(async {
        let Workload::Http(prepared) = runtime.load("sha256:bench-hello", &wasm).await.expect("load hello (run samples/build.sh)") else {
            panic!("hello is an HTTP component")
        };
        Arc::new(HttpHandler::new(prepared, SandboxSpec::new(LogSink::new(16)), 1024))
    });
    c.bench_function("hello: instantiate + handle + drop", |b| {
        b.to_async(&tokio).iter(|| {
            let handler = Arc::clone(&handler);
            async move {
                let request = hyper::Request::builder().uri("http://bench/").body(Full::new(Bytes::new())).expect("request");
                let (response, _) = handler.handle(request).await;
                let body = response.into_body().collect().await.expect("body").to_bytes();
                assert_eq!(&body[..], b"hello from shoal\n");
            }
        })
    });
}

/// The tail criterion does not report: 50,000 sequential requests timed one by one, printed as
/// p50 / p99 / p99.9 of instantiate + handle + drop (the instantiate goal is p99 ≤ 20 µs, and this
/// span includes it).
fn tail(c: &mut Criterion) {
    let _ = c;
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../samples/hello/hello.wasm");
    let runtime = Runtime::new(RuntimeConfig::new(dir.path().join("compiled"))).expect("engine");
    let mut samples = tokio.block_on(async {
        let Workload::Http(prepared) = runtime.load("sha256:bench-hello-tail", &wasm).await.expect("load hello (run samples/build.sh)") else {
            panic!("hello is an HTTP component")
        };
        let handler = HttpHandler::new(prepared, SandboxSpec::new(LogSink::new(16)), 1024);
        let mut samples = Vec::with_capacity(50_000);
        for round in 0..55_000 {
            let started = std::time::Instant::now();
            let request = hyper::Request::builder().uri("http://bench/").body(Full::new(Bytes::new())).expect("request");
            let (response, _) = handler.handle(request).await;
            let body = response.into_body().collect().await.expect("body").to_bytes();
            let elapsed = started.elapsed();
            assert_eq!(&body[..], b"hello from shoal\n");
            // The first 5,000 warm the pool and the caches.
            if round >= 5_000 {
                samples.push(elapsed);
            }
        }
        let instantiate = |q: f64| handler.instantiate_latency(q).expect("instances were made");
        println!(
            "hello: instantiation alone (the handler's histogram, bucket upper bounds), all 55,000: p50 ≤ {:?}, p99 ≤ {:?}, p99.9 ≤ {:?}",
            instantiate(0.5),
            instantiate(0.99),
            instantiate(0.999)
        );
        samples
    });
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!("hello: instantiate + handle + drop, 50,000 sequential: p50 {:?}, p99 {:?}, p99.9 {:?}", at(0.50), at(0.99), at(0.999));
}

criterion_group!(benches, per_request, tail);
criterion_main!(benches);
