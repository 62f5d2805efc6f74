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

criterion_group!(benches, per_request);
criterion_main!(benches);
