//! The runtime against the real sample guests (built by samples/build.sh; missing ones fail).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use shoal_runtime_wasm::{CpuLimit, HttpHandler, LogSink, Preopen, Runtime, RuntimeConfig, SandboxSpec, Workload, run_command};

fn sample(relative: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../samples").join(relative);
    assert!(path.exists(), "{} is missing: run samples/build.sh", path.display());
    path
}

fn runtime(dir: &tempfile::TempDir) -> Arc<Runtime> {
    let mut config = RuntimeConfig::new(dir.path().join("compiled"));
    config.max_instances = 64;
    Runtime::new(config).expect("runtime")
}

async fn load(runtime: &Arc<Runtime>, relative: &str) -> Workload {
    let path = sample(relative);
    let digest = format!("sha256:{:0>64}", relative.len());
    let digest = format!("{digest}{}", relative.replace(['/', '.'], "-"));
    runtime.load(&digest, &path).await.expect("load")
}

fn request(path: &str) -> hyper::Request<Full<Bytes>> {
    hyper::Request::builder().uri(format!("http://pod.local{path}")).body(Full::new(Bytes::new())).expect("request")
}

async fn body_text(response: hyper::Response<shoal_runtime_wasm::ResponseBody>) -> String {
    let bytes = response.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_run_to_completion_with_their_output_and_exit_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = runtime(&dir);
    for artifact in ["worker/worker.wasm", "worker/worker-p1.wasm"] {
        let workload = load(&runtime, artifact).await;
        assert_eq!(workload.kind(), if artifact.ends_with("p1.wasm") { "preview1" } else { "command" });
        let logs = LogSink::new(100);
        let mut spec = SandboxSpec::new(logs.clone());
        spec.env = vec![("STEPS".into(), "2".into())];
        let outcome = run_command(&workload, &spec).await.expect("run");
        assert_eq!((outcome.exit_code, outcome.reason.as_str()), (0, "Completed"), "{artifact}");
        let lines: Vec<String> = logs.lines().into_iter().map(|l| l.text).collect();
        assert_eq!(lines, ["worker: step 1", "worker: step 2", "worker: done"], "{artifact}");

        let mut failing = SandboxSpec::new(LogSink::new(100));
        failing.env = vec![("EXIT_CODE".into(), "3".into()), ("STEPS".into(), "0".into())];
        let outcome = run_command(&workload, &failing).await.expect("run");
        assert_eq!((outcome.exit_code, outcome.reason.as_str()), (3, "Error"), "{artifact}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_component_answers_with_its_environment_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = runtime(&dir);
    let Workload::Http(prepared) = load(&runtime, "hello/hello.wasm").await else { panic!("hello is an HTTP component") };
    let mut spec = SandboxSpec::new(LogSink::new(10));
    spec.env = vec![("HOSTNAME".into(), "hello-abc".into()), ("GREETING".into(), "hi there".into())];
    let handler = HttpHandler::new(prepared, spec, 16);
    let (response, _) = handler.handle(request("/")).await;
    let (_, _) = handler.handle(request("/")).await;
    assert_eq!(handler.instantiations(), 2, "by default every request gets a fresh instance");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-shoal-pod"], "hello-abc");
    assert_eq!(body_text(response).await, "hi there\n");

    let Workload::Http(echo) = load(&runtime, "echo/echo.wasm").await else { panic!("echo is an HTTP component") };
    let echo = HttpHandler::new(echo, SandboxSpec::new(LogSink::new(10)), 16);
    let (response, _) = echo.handle(request("/some/path?x=1")).await;
    let text = body_text(response).await;
    assert!(text.contains("\"path\":\"/some/path\"") && text.contains("\"query\":\"x=1\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_component_sees_its_preopened_directories_live_from_every_instance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = runtime(&dir);
    let Workload::Http(echo) = load(&runtime, "echo/echo.wasm").await else { panic!("echo is an HTTP component") };
    let (volume, scratch) = (dir.path().join("volume"), dir.path().join("scratch"));
    let mut spec = SandboxSpec::new(LogSink::new(10));
    spec.preopens = vec![
        Preopen { host_path: volume.clone(), guest_path: "/config".into(), read_only: true },
        Preopen { host_path: scratch.clone(), guest_path: "/scratch".into(), read_only: false },
    ];
    let echo = Arc::new(HttpHandler::new(echo, spec, 16));
    let get = |path: &str| {
        let (echo, path) = (Arc::clone(&echo), path.to_owned());
        async move {
            let (response, _) = echo.handle(request(&path)).await;
            (response.status().as_u16(), body_text(response).await)
        }
    };

    // A directory that is not there fails the request, saying which; once it appears, it serves.
    let (status, text) = get("/read?path=/config/greeting").await;
    assert_eq!(status, 500, "{text}");
    assert!(text.contains("preopening") && text.contains(&volume.display().to_string()), "{text}");
    std::fs::create_dir(&volume).expect("mkdir");
    std::fs::create_dir(&scratch).expect("mkdir");
    std::fs::write(volume.join("greeting"), "one").expect("write");
    assert_eq!(get("/read?path=/config/greeting").await, (200, "one".to_owned()));

    // Every instance shares the directories and sees changes at once, on any thread.
    std::fs::write(volume.join("next"), "two").expect("write");
    std::fs::rename(volume.join("next"), volume.join("greeting")).expect("rename");
    let reads: Vec<_> = (0..16).map(|_| tokio::spawn(get("/read?path=/config/greeting"))).collect();
    for read in reads {
        assert_eq!(read.await.expect("join"), (200, "two".to_owned()));
    }
    assert_eq!(echo.instantiations(), 17, "the failed request made no instance; every other one made its own");

    // Each directory keeps its own permissions, and nothing outside them is reachable.
    let (status, text) = get("/write?path=/scratch/out").await;
    assert_eq!(status, 200, "{text}");
    assert!(scratch.join("out").exists());
    let (status, text) = get("/write?path=/config/out").await;
    assert_eq!(status, 500, "{text}");
    assert!(!volume.join("out").exists());
    let (status, text) = get("/read?path=/config/../scratch/out").await;
    assert_eq!(status, 404, "{text}");
    let (status, text) = get(&format!("/read?path={}", volume.join("greeting").display())).await;
    assert_eq!(status, 404, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_guests_are_contained_while_a_neighbour_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = runtime(&dir);
    let Workload::Http(misbehave) = load(&runtime, "misbehave/misbehave.wasm").await else { panic!("http") };
    let Workload::Http(hello) = load(&runtime, "hello/hello.wasm").await else { panic!("http") };
    let mut spec = SandboxSpec::new(LogSink::new(10));
    spec.time_budget = Duration::from_millis(300);
    spec.memory_limit_bytes = 32 * 1024 * 1024;
    let misbehave = Arc::new(HttpHandler::new(misbehave, spec, 16));
    let hello = Arc::new(HttpHandler::new(hello, SandboxSpec::new(LogSink::new(10)), 16));

    // A spinning guest runs while its neighbour keeps answering.
    let spinning = {
        let misbehave = Arc::clone(&misbehave);
        tokio::spawn(async move {
            let started = Instant::now();
            let (response, _) = misbehave.handle(request("/loop")).await;
            (response.status().as_u16(), body_text(response).await, started.elapsed())
        })
    };
    for _ in 0..50 {
        let (response, _) = hello.handle(request("/")).await;
        assert_eq!(response.status(), 200, "hello keeps serving while /loop spins");
    }
    let (status, text, elapsed) = spinning.await.expect("join");
    assert_eq!(status, 500);
    assert!(text.contains("time budget"), "{text}");
    assert!(elapsed < Duration::from_secs(5), "the loop was stopped, not left running ({elapsed:?})");

    let (response, _) = misbehave.handle(request("/alloc?mb=256")).await;
    let bomb_status = response.status().as_u16();
    assert!(bomb_status == 507 || bomb_status == 500, "growing past the 32 MiB limit fails in the guest (507) or traps (500), got {bomb_status}");
    let (response, _) = misbehave.handle(request("/alloc?mb=4")).await;
    assert_eq!(response.status(), 200, "within the limit it works: {}", body_text(response).await);

    let (response, _) = misbehave.handle(request("/recurse")).await;
    assert_eq!(response.status(), 500);
    assert!(body_text(response).await.contains("stack overflow"));

    let (response, _) = misbehave.handle(request("/sleep?ms=20")).await;
    assert_eq!(response.status(), 200);
    let (response, _) = misbehave.handle(request("/ok")).await;
    assert_eq!(body_text(response).await, "ok\n");
    let expected = 2 + u64::from(bomb_status == 500);
    assert_eq!(misbehave.failures(), expected, "the loop and the recursion (and the memory bomb if it trapped)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_epoch_clock_ticks_while_guests_run_and_sleeps_when_none_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = runtime(&dir);
    let Workload::Http(misbehave) = load(&runtime, "misbehave/misbehave.wasm").await else { panic!("http") };
    let mut spec = SandboxSpec::new(LogSink::new(10));
    spec.time_budget = Duration::from_millis(150);
    let misbehave = HttpHandler::new(misbehave, spec, 16);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(runtime.epoch_ticks(), 0, "no guest has run: the clock has not ticked");

    // A spinning guest is stopped at its budget: the clock woke and ticked for it.
    let (response, _) = misbehave.handle(request("/loop")).await;
    assert_eq!(response.status(), 500);
    assert!(body_text(response).await.contains("time budget"));
    let ticked = runtime.epoch_ticks();
    assert!(ticked >= 50, "the clock ticked while the guest spun ({ticked} ticks in a 150 ms budget)");

    // With nothing running, it stops again; and it wakes for the next guest.
    let deadline = Instant::now() + Duration::from_secs(5);
    let settled = loop {
        let before = runtime.epoch_ticks();
        tokio::time::sleep(Duration::from_millis(50)).await;
        if runtime.epoch_ticks() == before {
            break before;
        }
        assert!(Instant::now() < deadline, "the clock kept ticking with no guest running");
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(runtime.epoch_ticks(), settled, "an idle runtime's clock sleeps");
    let (response, _) = misbehave.handle(request("/sleep?ms=30")).await;
    assert_eq!(response.status(), 200);
    assert!(runtime.epoch_ticks() > settled, "the clock ticked for a guest that ran 30 ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_code_is_cached_and_bad_artifacts_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = runtime(&dir);
    let copy = dir.path().join("hello.wasm");
    std::fs::copy(sample("hello/hello.wasm"), &copy).expect("copy");
    let digest = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    assert_eq!(runtime.load(digest, &copy).await.expect("compile").kind(), "http");
    std::fs::remove_file(&copy).expect("remove the source");
    assert_eq!(runtime.load(digest, &copy).await.expect("from the cache").kind(), "http", "a second load never recompiles");
    drop(runtime);
    let restarted = self::runtime(&dir);
    assert_eq!(restarted.load(digest, &copy).await.expect("from the cache after a restart").kind(), "http");

    let text = dir.path().join("text.wasm");
    std::fs::write(&text, "not wasm").expect("write");
    let error = restarted.load("sha256:2222222222222222222222222222222222222222222222222222222222222222", &text).await.err().expect("refused");
    assert!(error.to_string().contains("cannot be compiled"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opted_in_pod_reuses_instances_and_a_trap_discards_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = runtime(&dir);
    let Workload::Http(prepared) = load(&runtime, "misbehave/misbehave.wasm").await else { panic!("http") };
    let mut spec = SandboxSpec::new(LogSink::new(10));
    spec.time_budget = Duration::from_millis(300);
    let handler = HttpHandler::with_reuse(prepared, spec, 4, 100);
    for _ in 0..20 {
        let (response, _) = handler.handle(request("/ok")).await;
        assert_eq!(body_text(response).await, "ok\n");
        // The guest's task hands its instance back just after the response: wait for it, so the
        // next request is truly sequential.
        let deadline = Instant::now() + Duration::from_secs(5);
        while handler.warm_instances() == 0 {
            assert!(Instant::now() < deadline, "the instance never returned to the pool");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    assert_eq!(handler.instantiations(), 1, "twenty sequential requests share one instance");
    // A trap poisons its instance: it is dropped, and the next request still works.
    let (response, _) = handler.handle(request("/recurse")).await;
    assert_eq!(response.status(), 500);
    let (response, _) = handler.handle(request("/ok")).await;
    assert_eq!(body_text(response).await, "ok\n");
    // A budget overrun is per request, also on a reused instance.
    let (response, _) = handler.handle(request("/loop")).await;
    assert_eq!(response.status(), 500);
    let (response, _) = handler.handle(request("/ok")).await;
    assert_eq!(response.status(), 200);
}

/// Reused instances are kept per thread; a thread with none takes another thread's idle one
/// rather than making a new instance.
#[test]
fn a_reused_instance_serves_requests_from_any_thread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let handler = runtime.block_on(async {
        let wasm = self::runtime(&dir);
        let Workload::Http(prepared) = load(&wasm, "misbehave/misbehave.wasm").await else { panic!("http") };
        Arc::new(HttpHandler::with_reuse(prepared, SandboxSpec::new(LogSink::new(10)), 4, 100))
    });
    for round in 0..6 {
        let handler = Arc::clone(&handler);
        // Each request on a new OS thread with a runtime of its own, one after the other.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async {
                let (response, _) = handler.handle(request("/ok")).await;
                assert_eq!(body_text(response).await, "ok\n", "round {round}");
                let deadline = Instant::now() + Duration::from_secs(5);
                while handler.warm_instances() == 0 {
                    assert!(Instant::now() < deadline, "the instance never returned to the pool");
                    tokio::task::yield_now().await;
                }
            });
        })
        .join()
        .expect("the request's thread");
    }
    assert_eq!(handler.instantiations(), 1, "six threads in turn share one instance");
    assert_eq!(handler.warm_instances(), 1);
}

/// `resources.limits.cpu`: a spinning guest limited to a tenth of a core runs for about a tenth
/// of its time and waits out the rest of each period; the same guest with a limit it cannot reach
/// runs all the time. (Run time is what the limit charged, not a wall-clock speed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_limit_throttles_a_spinning_guest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = runtime(&dir);
    let Workload::Http(misbehave) = load(&runtime, "misbehave/misbehave.wasm").await else { panic!("http") };
    let spin = |millicores: u64| {
        let misbehave = Arc::clone(&misbehave);
        async move {
            let mut spec = SandboxSpec::new(LogSink::new(10));
            spec.time_budget = Duration::from_millis(600);
            let limit = CpuLimit::new(millicores).expect("a limit");
            spec.cpu = Some(Arc::clone(&limit));
            let handler = HttpHandler::new(misbehave, spec, 4);
            let (response, _) = handler.handle(request("/loop")).await;
            assert_eq!(response.status(), 500, "the loop still ends at its time budget");
            limit.stats()
        }
    };
    let (limited, throttled) = spin(100).await;
    let (unlimited, never) = spin(64_000).await;
    assert!(throttled >= 3, "a tenth of a core spinning for 600 ms waits in most periods ({throttled})");
    assert_eq!(never, 0);
    // 100m of 600 ms is 60 ms; each period may overshoot by one check (at most 11 ticks).
    assert!(limited < Duration::from_millis(200), "a tenth of a core ran for {limited:?} of 600 ms");
    assert!(unlimited > limited * 2, "without a reachable limit the loop runs throughout ({unlimited:?} against {limited:?})");
}

/// Requests shorter than an epoch tick never meet an epoch check, so the limit is charged their
/// run time when each ends, and once the period's quota is spent the next request waits for the
/// next period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_limit_charges_and_throttles_short_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = runtime(&dir);
    let Workload::Http(misbehave) = load(&runtime, "misbehave/misbehave.wasm").await else { panic!("http") };
    let mut spec = SandboxSpec::new(LogSink::new(10));
    // A thousandth of a core: 100 µs per 100 ms period, less than a few requests' instantiation.
    let limit = CpuLimit::new(1).expect("a limit");
    spec.cpu = Some(Arc::clone(&limit));
    let usage = Arc::clone(&spec.usage);
    let handler = HttpHandler::new(misbehave, spec, 4);
    for _ in 0..8 {
        let (response, _) = handler.handle(request("/ok")).await;
        assert_eq!(response.status(), 200);
    }
    let (charged, throttled) = limit.stats();
    assert!(charged > Duration::ZERO, "short requests are charged to the limit");
    assert!(usage.cpu_time() > Duration::ZERO, "the guests' run time is counted too");
    assert!(throttled >= 1, "with the quota spent, a request waited for the next period ({throttled})");
}

/// On a thread that asked for it (the node's reactors), instances whose request finished wait
/// for the thread's idle moment, up to the thread's limit; past it they are dropped at once.
#[tokio::test]
async fn finished_instances_wait_for_the_threads_idle_moment_up_to_its_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = runtime(&dir);
    let Workload::Http(prepared) = load(&runtime, "hello/hello.wasm").await else { panic!("hello is an HTTP component") };
    let handler = HttpHandler::new(prepared, SandboxSpec::new(LogSink::new(10)), 16);
    async fn answer(handler: &HttpHandler) -> String {
        let (response, _) = handler.handle(request("/")).await;
        assert_eq!(response.status(), 200);
        body_text(response).await
    }
    assert_eq!(answer(&handler).await, "hello from shoal\n");
    assert_eq!(shoal_runtime_wasm::kept_instances(), 0, "a thread that did not ask keeps nothing");

    shoal_runtime_wasm::defer_instance_drops(2);
    answer(&handler).await;
    assert_eq!(shoal_runtime_wasm::kept_instances(), 1);
    for _ in 0..3 {
        answer(&handler).await;
    }
    assert_eq!(shoal_runtime_wasm::kept_instances(), 2, "past its limit the thread drops at once");
    shoal_runtime_wasm::drop_retired();
    assert_eq!(shoal_runtime_wasm::kept_instances(), 0);

    shoal_runtime_wasm::defer_instance_drops(100);
    for _ in 0..10 {
        answer(&handler).await;
    }
    assert_eq!(shoal_runtime_wasm::kept_instances(), shoal_runtime_wasm::MAX_KEPT_INSTANCES, "no thread keeps more than the cap");
    assert_eq!(handler.instantiations(), 15, "every request had an instance of its own");
    shoal_runtime_wasm::drop_retired();
}

/// Routes a guest's requests for `hello` to the hello component in-process (as the node's
/// Service proxy does for a local endpoint) and for `missing` to a routing error; records the
/// task each answer ran in, and with `wait`, makes the answer wait once before it runs.
struct ToHello {
    hello: Arc<HttpHandler>,
    wait: bool,
    ran_in: Arc<std::sync::Mutex<Vec<tokio::task::Id>>>,
}

impl shoal_runtime_wasm::OutboundHttp for ToHello {
    fn route(&self, request: hyper::Request<shoal_runtime_wasm::WasiBody>) -> Result<shoal_runtime_wasm::OutboundFuture, hyper::Request<shoal_runtime_wasm::WasiBody>> {
        match request.uri().host() {
            Some("missing") => Ok(Box::pin(async { Err(shoal_runtime_wasm::HttpError::DestinationNotFound) })),
            Some("hello") => {
                let (hello, wait, ran_in) = (Arc::clone(&self.hello), self.wait, Arc::clone(&self.ran_in));
                Ok(Box::pin(async move {
                    ran_in.lock().expect("lock").push(tokio::task::id());
                    if wait {
                        tokio::task::yield_now().await;
                        ran_in.lock().expect("lock").push(tokio::task::id());
                    }
                    let (mut parts, body) = request.into_parts();
                    parts.uri = hyper::Uri::from_static("/");
                    Ok(hello.handle(hyper::Request::from_parts(parts, body)).await.0)
                }))
            }
            _ => Err(request),
        }
    }
}

/// A guest's outgoing request that the host answers in-process is answered inside the guest's
/// own call when the answer is ready at once (no task of its own); one that must wait moves to
/// a task and still arrives; a routing error reaches the guest as its error code; a request the
/// host does not route goes to the network.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_outgoing_requests_are_answered_inline_when_ready_and_in_a_task_when_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = runtime(&dir);
    let Workload::Http(hello) = load(&runtime, "hello/hello.wasm").await else { panic!("hello is an HTTP component") };
    let hello = Arc::new(HttpHandler::new(hello, SandboxSpec::new(LogSink::new(10)), 16));
    // A port nothing listens on, for the unrouted request.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address");
    for wait in [false, true] {
        let ran_in = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut spec = SandboxSpec::new(LogSink::new(10));
        spec.outbound = Some(Arc::new(ToHello { hello: Arc::clone(&hello), wait, ran_in: Arc::clone(&ran_in) }));
        let Workload::Http(echo) = load(&runtime, "echo/echo.wasm").await else { panic!("echo is an HTTP component") };
        let echo = Arc::new(HttpHandler::new(echo, spec, 16));
        let fetch = |url: String| {
            let echo = Arc::clone(&echo);
            // The guest runs in the task that calls its handler: this one.
            tokio::spawn(async move {
                let (response, _) = echo.handle(request(&format!("/fetch?url={url}"))).await;
                (tokio::task::id(), response.status().as_u16(), body_text(response).await)
            })
        };

        let (caller, status, body) = fetch("http://hello/".into()).await.expect("task");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(r#""status":200"#) && body.contains("hello from shoal"), "{body}");
        let ran_in = std::mem::take(&mut *ran_in.lock().expect("lock"));
        if wait {
            assert_eq!(ran_in.len(), 2, "{ran_in:?}");
            assert_eq!(ran_in[0], caller, "the answer is first tried inside the guest's call");
            assert_ne!(ran_in[1], caller, "an answer that waits moves to a task of its own");
        } else {
            assert_eq!(ran_in, vec![caller], "a ready answer runs inside the guest's call");
        }

        let (_, status, body) = fetch("http://missing/".into()).await.expect("task");
        assert_eq!(status, 502, "{body}");
        assert!(body.contains("DestinationNotFound"), "{body}");

        let (_, status, body) = fetch(format!("http://{closed}/")).await.expect("task");
        assert_eq!(status, 502, "{body}");
        assert!(body.contains("ConnectionRefused"), "the unrouted request went to the network: {body}");
    }
}
