//! The compiled-artifact cache: native code on disk, keyed by artifact digest and the engine's
//! compatibility hash, written only by this node.

use std::hash::{Hash, Hasher};
use std::path::Path;

use wasmtime::Module;
use wasmtime::component::Component;

use crate::{Error, Result, Runtime};

pub(crate) enum Compiled {
    Component(Component),
    Module(Module),
}

fn compatibility(runtime: &Runtime) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    runtime.engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.finish()
}

/// Loads a precompiled artifact written by this node.
#[allow(unsafe_code)]
fn deserialize(runtime: &Runtime, path: &Path, component: bool) -> Option<Compiled> {
    // SAFETY: wasmtime requires that deserialized code come from a trusted source. These files
    // are written only by `load_or_compile` below, by this node's engine, into its private data
    // dir, under a name carrying the engine's compatibility hash; nothing else writes there.
    let loaded = unsafe {
        if component {
            Component::deserialize_file(&runtime.engine, path).map(Compiled::Component)
        } else {
            Module::deserialize_file(&runtime.engine, path).map(Compiled::Module)
        }
    };
    match loaded {
        Ok(compiled) => Some(compiled),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "discarding an unusable compiled artifact");
            let _ = std::fs::remove_file(path);
            None
        }
    }
}

pub(crate) fn load_or_compile(runtime: &Runtime, digest: &str, wasm_path: &Path) -> Result<Compiled> {
    let key = format!("{}-{:016x}", digest.trim_start_matches("sha256:"), compatibility(runtime));
    let component_path = runtime.config.cache_dir.join(format!("{key}.cwasm"));
    let module_path = runtime.config.cache_dir.join(format!("{key}.cwasm-module"));
    if component_path.exists()
        && let Some(compiled) = deserialize(runtime, &component_path, true)
    {
        return Ok(compiled);
    }
    if module_path.exists()
        && let Some(compiled) = deserialize(runtime, &module_path, false)
    {
        return Ok(compiled);
    }
    let bytes = std::fs::read(wasm_path).map_err(|source| Error::Io { path: wasm_path.to_owned(), source })?;
    if bytes.len() > runtime.config.max_artifact_bytes {
        return Err(Error::TooLarge(bytes.len(), runtime.config.max_artifact_bytes));
    }
    let is_component = wasmparser::Parser::is_component(&bytes);
    let (code, path) = if is_component {
        (runtime.engine.precompile_component(&bytes), &component_path)
    } else {
        (runtime.engine.precompile_module(&bytes), &module_path)
    };
    let code = code.map_err(|e| Error::Compile(format!("{e:#}")))?;
    let partial = path.with_extension("partial");
    std::fs::write(&partial, &code).map_err(|source| Error::Io { path: partial.clone(), source })?;
    std::fs::rename(&partial, path).map_err(|source| Error::Io { path: path.clone(), source })?;
    deserialize(runtime, path, is_component).ok_or_else(|| Error::Compile("the freshly compiled artifact could not be loaded".into()))
}
