//! The sample guests, as samples/build.sh leaves them: components exporting the interfaces their
//! workloads need, and the preview 1 worker as a core module with `_start`. A missing build is a
//! failure (run samples/build.sh), never a skip.

use crate::harness::repository;

struct Shape {
    is_component: bool,
    component_exports: Vec<String>,
    module_exports: Vec<String>,
}

fn shape(relative: &str) -> Shape {
    let path = repository().join(relative);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{} is missing ({e}); run samples/build.sh", path.display()));
    let mut shape = Shape { is_component: false, component_exports: Vec::new(), module_exports: Vec::new() };
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(&bytes) {
        match payload.unwrap_or_else(|e| panic!("{relative} is not valid Wasm: {e}")) {
            wasmparser::Payload::Version { encoding, .. } => {
                if depth == 0 {
                    shape.is_component = encoding == wasmparser::Encoding::Component;
                }
                depth += 1;
            }
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::ComponentExportSection(reader) if depth == 1 => {
                for export in reader {
                    shape.component_exports.push(export.expect("export").name.0.to_owned());
                }
            }
            wasmparser::Payload::ExportSection(reader) if depth == 1 => {
                for export in reader {
                    shape.module_exports.push(export.expect("export").name.to_owned());
                }
            }
            _ => {}
        }
    }
    shape
}

fn exports_interface(shape: &Shape, interface: &str) -> bool {
    shape.component_exports.iter().any(|name| name.starts_with(&format!("{interface}@0.2.")))
}

#[test]
fn http_samples_are_components_exporting_the_incoming_handler() {
    for sample in ["hello/hello.wasm", "echo/echo.wasm", "misbehave/misbehave.wasm"] {
        let shape = shape(&format!("samples/{sample}"));
        assert!(shape.is_component, "{sample} is a component");
        assert!(exports_interface(&shape, "wasi:http/incoming-handler"), "{sample} exports wasi:http/incoming-handler: {:?}", shape.component_exports);
    }
}

#[test]
fn the_worker_is_a_command_component_and_a_preview1_module() {
    let component = shape("samples/worker/worker.wasm");
    assert!(component.is_component);
    assert!(exports_interface(&component, "wasi:cli/run"), "{:?}", component.component_exports);
    let module = shape("samples/worker/worker-p1.wasm");
    assert!(!module.is_component, "worker-p1 is a core module");
    assert!(module.module_exports.iter().any(|e| e == "_start"), "{:?}", module.module_exports);
}
