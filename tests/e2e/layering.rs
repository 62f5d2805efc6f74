//! The workspace's dependency rules (ARCHITECTURE.md, "Invariants"), checked from the crates'
//! manifests: `api`, `store`, `oci` and `runtime-wasm` are leaves and `runtime-oci` knows only `oci` (runtimes know nothing of the API); the client knows only `api`; the API server
//! uses `api`, `store` and `oci` only; the node and the controllers talk to the control plane
//! only through `client`.

use std::collections::BTreeMap;

use crate::harness::repository;

/// The Shoal crates each crate depends on (normal dependencies only).
fn shoal_dependencies() -> BTreeMap<String, Vec<String>> {
    let mut graph = BTreeMap::new();
    let crates = repository().join("crates");
    for entry in std::fs::read_dir(&crates).expect("crates/") {
        let manifest = entry.expect("entry").path().join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).expect("manifest");
        let name = text
            .lines()
            .find_map(|l| l.strip_prefix("name = \""))
            .map(|n| n.trim_end_matches('"').to_owned())
            .expect("package name");
        let mut section = String::new();
        let mut dependencies = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                section = line.to_owned();
            } else if section == "[dependencies]"
                && let Some(dependency) = line.split(['.', ' ', '=']).next()
                && dependency.starts_with("shoal-")
            {
                dependencies.push(dependency.to_owned());
            }
        }
        graph.insert(name, dependencies);
    }
    graph
}

#[test]
fn crates_depend_only_in_the_documented_direction() {
    let graph = shoal_dependencies();
    let allowed: &[(&str, &[&str])] = &[
        ("shoal-api", &[]),
        ("shoal-store", &[]),
        ("shoal-oci", &[]),
        ("shoal-runtime-wasm", &[]),
        ("shoal-runtime-oci", &["shoal-oci"]),
        ("shoal-client", &["shoal-api"]),
        ("shoal-apiserver", &["shoal-api", "shoal-store", "shoal-oci"]),
        ("shoal-node", &["shoal-api", "shoal-client", "shoal-oci", "shoal-runtime-wasm", "shoal-runtime-oci"]),
        ("shoal-controllers", &["shoal-api", "shoal-client", "shoal-oci"]),
    ];
    for (krate, permitted) in allowed {
        let actual = graph.get(*krate).unwrap_or_else(|| panic!("{krate} is missing from crates/"));
        for dependency in actual {
            assert!(permitted.contains(&dependency.as_str()), "{krate} must not depend on {dependency}");
        }
    }
}
