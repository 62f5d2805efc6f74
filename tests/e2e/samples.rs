//! The sample guests, as samples/build.sh leaves them: components exporting the interfaces their
//! workloads need, and the preview 1 worker as a core module with `_start`. A missing build is a
//! failure (run samples/build.sh), never a skip.

use shoal_oci::wasm::{WasmInfo, inspect};

use crate::harness::repository;

fn shape(relative: &str) -> WasmInfo {
    let path = repository().join(relative);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{} is missing ({e}); run samples/build.sh", path.display()));
    inspect(&bytes).unwrap_or_else(|e| panic!("{relative} is not valid Wasm: {e}"))
}

fn exports_interface(shape: &WasmInfo, interface: &str) -> bool {
    shape.exports.iter().any(|name| name.starts_with(&format!("{interface}@0.2.")))
}

#[test]
fn http_samples_are_components_exporting_the_incoming_handler() {
    for sample in ["hello/hello.wasm", "echo/echo.wasm", "misbehave/misbehave.wasm"] {
        let shape = shape(&format!("samples/{sample}"));
        assert!(shape.is_component, "{sample} is a component");
        assert!(exports_interface(&shape, "wasi:http/incoming-handler"), "{sample} exports wasi:http/incoming-handler: {:?}", shape.exports);
    }
}

#[test]
fn the_worker_is_a_command_component_and_a_preview1_module() {
    let component = shape("samples/worker/worker.wasm");
    assert!(component.is_component);
    assert!(exports_interface(&component, "wasi:cli/run"), "{:?}", component.exports);
    let module = shape("samples/worker/worker-p1.wasm");
    assert!(!module.is_component, "worker-p1 is a core module");
    assert!(module.exports.iter().any(|e| e == "_start"), "{:?}", module.exports);
}
