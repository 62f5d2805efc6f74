//! Validating and describing Wasm binaries with wasmparser: component or core module, the world
//! it serves (an HTTP handler or a command), and its imports and exports.

use crate::{Error, Result};

/// The largest Wasm binary accepted at push (the artifact cap applies on top).
pub const MAX_WASM_BYTES: usize = 64 * 1024 * 1024;

/// What a workload built from this binary is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum World {
    /// Exports `wasi:http/incoming-handler`: served per request.
    Http,
    /// Exports `wasi:cli/run`, or is a core module with `_start`: runs as a process.
    Command,
    /// Neither: a library component or reactor module, not runnable on its own.
    Library,
}

impl World {
    pub fn as_str(self) -> &'static str {
        match self {
            World::Http => "http",
            World::Command => "command",
            World::Library => "library",
        }
    }
}

/// A validated Wasm binary's shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WasmInfo {
    pub is_component: bool,
    pub world: World,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

/// Validates `bytes` as a Wasm component or core module and describes it.
pub fn inspect(bytes: &[u8]) -> Result<WasmInfo> {
    if bytes.len() > MAX_WASM_BYTES {
        return Err(Error::TooLarge(bytes.len() as u64, MAX_WASM_BYTES as u64));
    }
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        let shown: String = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ");
        return Err(Error::InvalidWasm(format!("the file does not start with the Wasm magic bytes 00 61 73 6d (it starts with {shown})")));
    }
    let mut validator = wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all());
    validator.validate_all(bytes).map_err(|e| Error::InvalidWasm(e.to_string()))?;
    let mut info = WasmInfo { is_component: false, world: World::Library, imports: Vec::new(), exports: Vec::new() };
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| Error::InvalidWasm(e.to_string()))?;
        match payload {
            wasmparser::Payload::Version { encoding, .. } => {
                if depth == 0 {
                    info.is_component = encoding == wasmparser::Encoding::Component;
                }
                depth += 1;
            }
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    info.imports.push(import.map_err(|e| Error::InvalidWasm(e.to_string()))?.name.0.to_owned());
                }
            }
            wasmparser::Payload::ComponentExportSection(reader) if depth == 1 => {
                for export in reader {
                    info.exports.push(export.map_err(|e| Error::InvalidWasm(e.to_string()))?.name.0.to_owned());
                }
            }
            wasmparser::Payload::ImportSection(reader) if depth == 1 => {
                for import in reader {
                    let import = import.map_err(|e| Error::InvalidWasm(e.to_string()))?;
                    info.imports.push(format!("{}/{}", import.module, import.name));
                }
            }
            wasmparser::Payload::ExportSection(reader) if depth == 1 => {
                for export in reader {
                    info.exports.push(export.map_err(|e| Error::InvalidWasm(e.to_string()))?.name.to_owned());
                }
            }
            _ => {}
        }
    }
    let exports_interface = |interface: &str| info.exports.iter().any(|e| e.starts_with(&format!("{interface}@")) || e == interface);
    info.world = if info.is_component {
        if exports_interface("wasi:http/incoming-handler") {
            World::Http
        } else if exports_interface("wasi:cli/run") {
            World::Command
        } else {
            World::Library
        }
    } else if info.exports.iter().any(|e| e == "_start") {
        World::Command
    } else {
        World::Library
    };
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_wasm_is_refused_with_a_reason() {
        let error = inspect(b"hello, world\n").expect_err("text is not wasm");
        assert!(error.to_string().contains("magic bytes"), "{error}");
        let truncated = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0xff];
        assert!(matches!(inspect(&truncated), Err(Error::InvalidWasm(_))));
    }

    #[test]
    fn a_core_module_with_start_is_a_command() {
        // (module (func (export "_start")))
        let module = [
            0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x04, 0x01, 0x60, 0x00, 0x00, 0x03, 0x02, 0x01, 0x00, 0x07, 0x0a, 0x01, 0x06, b'_', b's',
            b't', b'a', b'r', b't', 0x00, 0x00, 0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b,
        ];
        let info = inspect(&module).expect("valid module");
        assert!(!info.is_component);
        assert_eq!(info.world, World::Command);
        assert_eq!(info.exports, vec!["_start"]);
    }
}
