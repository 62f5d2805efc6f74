//! `subPath` and `subPathExpr` volume mounts: one file or directory of a volume mounted alone.
//!
//! - **Resolution stays inside the volume.** The path is walked one component at a time from
//!   the volume's directory; a symlink on the way is followed only when its target is still
//!   inside the volume (kube's CVE-2017-1002101 was a container planting a symlink in a shared
//!   `emptyDir` to mount the node's root). The mount then uses the resolved path, so the
//!   runtime follows no link the container controls. A container that swaps a checked directory
//!   for a link between the check and its runtime's mount is not guarded against.
//! - **Missing paths**: in volumes the pod writes (`emptyDir`, `hostPath`) a missing path is made
//!   as a directory, as the kubelet does; in volumes the node writes (configMap, secret,
//!   downwardAPI, projected) it is an error until the key exists.
//! - **Content is fixed at start**: a subPath mount of a ConfigMap key does not follow later
//!   changes of the key, as in kube (the `..data` swap happens beside it).
//! - **Wasm containers** see only directories (WASI preopens): files mounted by subPath are
//!   hard-linked into a directory of their own per target directory, preopened there
//!   ([`files_as_directories`]).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;
use shoal_runtime_wasm::Preopen;

/// The mount's subPath: `subPath`, or `subPathExpr` with `$(VAR)` taken from the container's
/// environment (`$$` escapes a `$`, unknown variables stay as written); None for the whole
/// volume.
pub fn of_mount(mount: &Value, env: &[(String, String)]) -> Result<Option<String>, String> {
    let path = match (mount["subPath"].as_str().filter(|p| !p.is_empty()), mount["subPathExpr"].as_str().filter(|p| !p.is_empty())) {
        (Some(_), Some(_)) => return Err("subPath and subPathExpr are mutually exclusive".into()),
        (Some(path), None) => path.to_owned(),
        (None, Some(expression)) => expand(expression, env),
        (None, None) => return Ok(None),
    };
    check(&path)?;
    Ok(Some(path))
}

/// kube's `$(VAR)` expansion.
fn expand(expression: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(expression.len());
    let mut rest = expression;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(name) = rest.strip_prefix("$(").and_then(|r| r.split_once(')')).map(|(name, _)| name)
            && let Some((_, value)) = env.iter().rev().find(|(key, _)| key == name)
        {
            out.push_str(value);
            rest = &rest[name.len() + 3..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}

/// kube's rule for a subPath (the API's own check; an expanded `subPathExpr` meets it here first).
pub fn check(path: &str) -> Result<(), String> {
    shoal_api::validation::local_descending_path(path).map_err(|problem| format!("subPath {path:?} {problem}"))
}

/// The host path of `sub_path` inside the volume directory `base`, every symlink on the way
/// checked to stay inside it; with `create`, missing elements are made as directories.
pub fn resolve(base: &Path, sub_path: &str, create: bool) -> Result<PathBuf, String> {
    check(sub_path)?;
    let root = std::fs::canonicalize(base).map_err(|e| format!("volume directory {}: {e}", base.display()))?;
    let mut current = root.clone();
    for component in Path::new(sub_path).components() {
        let element = match component {
            Component::Normal(element) => element,
            Component::CurDir => continue,
            _ => return Err(format!("subPath {sub_path:?} must be a relative path inside the volume")),
        };
        let next = current.join(element);
        match std::fs::symlink_metadata(&next) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = std::fs::canonicalize(&next).map_err(|e| format!("subPath {sub_path:?}: {}: {e}", next.display()))?;
                if !target.starts_with(&root) {
                    return Err(format!("subPath {sub_path:?} leads outside its volume"));
                }
                current = target;
            }
            Ok(_) => current = next,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && create => {
                std::fs::create_dir(&next).map_err(|e| format!("subPath {sub_path:?}: making {}: {e}", next.display()))?;
                current = next;
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Err(format!("subPath {sub_path:?} does not exist in the volume")),
            Err(error) => return Err(format!("subPath {sub_path:?}: {}: {error}", next.display())),
        }
    }
    Ok(current)
}

/// Rewrites `preopens` for a Wasm container, which can only be given directories: the files
/// among them (subPath mounts of one file) are hard-linked under `scratch`, one directory per
/// target directory, each preopened at that directory (read-only when any of its files is).
/// `scratch` is the container's own and is emptied first. A file whose target directory is also
/// a directory mount is refused: the guest could not see both.
pub fn files_as_directories(preopens: Vec<Preopen>, scratch: &Path) -> Result<Vec<Preopen>, String> {
    let (files, mut kept): (Vec<Preopen>, Vec<Preopen>) = preopens.into_iter().partition(|p| p.host_path.is_file());
    if files.is_empty() {
        return Ok(kept);
    }
    match std::fs::remove_dir_all(scratch) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(format!("{}: {error}", scratch.display())),
    }
    // Target directory -> (file name -> host file), read-only.
    let mut directories: BTreeMap<String, (BTreeMap<String, PathBuf>, bool)> = BTreeMap::new();
    for file in files {
        let target = Path::new(&file.guest_path);
        let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
            return Err(format!("a file cannot be mounted at {:?}", file.guest_path));
        };
        let parent = parent.to_string_lossy().into_owned();
        let entry = directories.entry(parent).or_insert_with(|| (BTreeMap::new(), false));
        entry.0.insert(name.to_string_lossy().into_owned(), file.host_path);
        entry.1 |= file.read_only;
    }
    for (index, (guest_directory, (files, read_only))) in directories.into_iter().enumerate() {
        if let Some(mounted) = kept.iter().find(|p| Path::new(&p.guest_path) == Path::new(&guest_directory)) {
            return Err(format!("a Wasm container cannot have files mounted into {guest_directory}, which is itself the mount of {}", mounted.host_path.display()));
        }
        let directory = scratch.join(index.to_string());
        std::fs::create_dir_all(&directory).map_err(|e| format!("{}: {e}", directory.display()))?;
        for (name, host_file) in files {
            let link = directory.join(&name);
            std::fs::hard_link(&host_file, &link).map_err(|e| format!("mounting {} as {guest_directory}/{name} (a Wasm container's file mounts are hard links, on the node's data filesystem): {e}", host_file.display()))?;
        }
        kept.push(Preopen { host_path: directory, guest_path: guest_directory, read_only });
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn env() -> Vec<(String, String)> {
        vec![("POD".into(), "web-1".into()), ("NS".into(), "shop".into())]
    }

    #[test]
    fn sub_paths_come_from_the_mount_or_its_expression() {
        assert_eq!(of_mount(&json!({"mountPath": "/a"}), &env()), Ok(None));
        assert_eq!(of_mount(&json!({"subPath": "conf/app.conf"}), &env()), Ok(Some("conf/app.conf".into())));
        assert_eq!(of_mount(&json!({"subPathExpr": "$(NS)/$(POD)/logs"}), &env()), Ok(Some("shop/web-1/logs".into())));
        assert_eq!(of_mount(&json!({"subPathExpr": "$$(POD)-$(MISSING)-$"}), &env()), Ok(Some("$(POD)-$(MISSING)-$".into())));
        assert!(of_mount(&json!({"subPath": "a", "subPathExpr": "b"}), &env()).is_err_and(|e| e.contains("mutually exclusive")));
        assert!(of_mount(&json!({"subPath": "../etc"}), &env()).is_err_and(|e| e.contains("must not contain '..'")));
        assert!(of_mount(&json!({"subPath": "/etc"}), &env()).is_err_and(|e| e.contains("must be a relative path")));
        let hostile = vec![("X".into(), "../../etc".into())];
        assert!(of_mount(&json!({"subPathExpr": "$(X)"}), &hostile).is_err(), "an expanded expression is checked too");
    }

    #[test]
    fn resolution_stays_inside_the_volume() {
        let dir = tempfile::tempdir().expect("tempdir");
        let volume = dir.path().join("volume");
        std::fs::create_dir_all(volume.join("..2026_01_01/conf")).expect("mkdir");
        std::fs::write(volume.join("..2026_01_01/conf/app.conf"), "one").expect("write");
        std::os::unix::fs::symlink("..2026_01_01", volume.join("..data")).expect("link");
        std::os::unix::fs::symlink("..data/conf", volume.join("conf")).expect("link");
        std::os::unix::fs::symlink("/etc", volume.join("escape")).expect("link");
        std::os::unix::fs::symlink("../../", volume.join("up")).expect("link");
        let root = std::fs::canonicalize(&volume).expect("canonical");

        // Links inside the volume are followed (the kubelet's ..data layout).
        assert_eq!(resolve(&volume, "conf/app.conf", false).expect("resolved"), root.join("..2026_01_01/conf/app.conf"));
        assert_eq!(resolve(&volume, "conf", false).expect("resolved"), root.join("..2026_01_01/conf"));
        // Links that leave it are refused, at any depth.
        for path in ["escape", "escape/passwd", "up", "up/etc"] {
            assert!(resolve(&volume, path, true).is_err_and(|e| e.contains("leads outside its volume")), "{path}");
        }
        assert!(!dir.path().join("etc").exists(), "nothing was made outside the volume");
        // Missing paths are made as directories only when the volume is the pod's to write.
        assert!(resolve(&volume, "logs/web-1", false).is_err_and(|e| e.contains("does not exist")));
        let made = resolve(&volume, "logs/web-1", true).expect("made");
        assert!(made.is_dir() && made.starts_with(&root));
        assert!(resolve(&volume, "conf/app.conf/deeper", true).is_err(), "a file has no children");
    }

    #[test]
    fn a_wasm_containers_file_mounts_become_linked_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b, whole) = (dir.path().join("a.conf"), dir.path().join("b.conf"), dir.path().join("whole"));
        std::fs::write(&a, "A").expect("write");
        std::fs::write(&b, "B").expect("write");
        std::fs::create_dir(&whole).expect("mkdir");
        let scratch = dir.path().join("scratch");
        let preopen = |host: &Path, guest: &str, read_only: bool| Preopen { host_path: host.to_owned(), guest_path: guest.into(), read_only };

        let rewritten = files_as_directories(vec![preopen(&whole, "/data", false), preopen(&a, "/etc/app/a.conf", true), preopen(&b, "/etc/app/b.conf", false)], &scratch).expect("rewritten");
        assert_eq!(rewritten.len(), 2, "the two files share one directory");
        assert_eq!((rewritten[0].guest_path.as_str(), rewritten[0].read_only), ("/data", false));
        let linked = &rewritten[1];
        assert_eq!((linked.guest_path.as_str(), linked.read_only), ("/etc/app", true), "read-only when any file is");
        assert!(linked.host_path.starts_with(&scratch));
        assert_eq!(std::fs::read_to_string(linked.host_path.join("a.conf")).expect("a"), "A");
        assert_eq!(std::fs::read_to_string(linked.host_path.join("b.conf")).expect("b"), "B");
        // A hard link: the same file, not a copy.
        std::fs::write(&b, "B2").expect("write");
        assert_eq!(std::fs::read_to_string(linked.host_path.join("b.conf")).expect("b"), "B2");
        // Made again from scratch on the container's next start.
        let again = files_as_directories(vec![preopen(&a, "/etc/app/a.conf", true)], &scratch).expect("again");
        assert!(!again[0].host_path.join("b.conf").exists());

        let clash = files_as_directories(vec![preopen(&whole, "/etc/app", false), preopen(&a, "/etc/app/a.conf", true)], &scratch);
        assert!(clash.is_err_and(|e| e.contains("itself the mount")));
        let untouched = vec![preopen(&whole, "/data", false)];
        assert_eq!(files_as_directories(untouched, &scratch).expect("unchanged")[0].host_path, whole);
    }
}
