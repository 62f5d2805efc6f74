//! Media types and manifests: the three Wasm artifact families Shoal pulls, the CNCF format it
//! pushes, and plain container images, which go to a container runtime instead.

use serde::{Deserialize, Serialize};

use crate::{Digest, Error, Result};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// CNCF Wasm artifact (wkg, wash, runwasi): what `shoal push` writes.
pub const WASM_CONFIG_V0: &str = "application/vnd.wasm.config.v0+json";
pub const WASM_LAYER: &str = "application/wasm";
/// Spin applications.
pub const SPIN_CONFIG: &str = "application/vnd.fermyon.spin.application.v1+config";
/// Older tools (wasm-to-oci) and Spin's component layers.
pub const WASM_CONFIG_V1: &str = "application/vnd.wasm.config.v1+json";
pub const WASM_CONTENT_LAYER: &str = "application/vnd.wasm.content.layer.v1+wasm";

/// The Accept header for manifest requests.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// A content descriptor.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

/// An image manifest (OCI or Docker schema 2), or an index of them.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<Descriptor>,
    /// Only in indexes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Manifest {
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| Error::UnsupportedManifest(format!("not a manifest: {e}")))?;
        if manifest.schema_version != 2 {
            return Err(Error::UnsupportedManifest(format!("schemaVersion {} (only 2 is supported)", manifest.schema_version)));
        }
        Ok(manifest)
    }

    pub fn is_index(&self) -> bool {
        matches!(self.media_type.as_deref(), Some(OCI_INDEX) | Some(DOCKER_MANIFEST_LIST)) || (!self.manifests.is_empty() && self.config.is_none())
    }

    /// Every blob the manifest references (config first).
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.config.iter().chain(self.layers.iter())
    }
}

/// The CNCF Wasm artifact config (`application/vnd.wasm.config.v0+json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WasmConfig {
    pub created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    pub architecture: String,
    pub os: String,
    pub layer_digests: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<ComponentInfo>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ComponentInfo {
    pub exports: Vec<String>,
    pub imports: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// Which family an artifact belongs to, and where its runnable content is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArtifactKind {
    /// One Wasm binary: the CNCF format or the older `vnd.wasm.content.layer` format.
    Wasm { layer: Descriptor, family: WasmFamily },
    /// A Spin application: one or more component layers.
    SpinApp { components: Vec<Descriptor> },
    /// A plain OCI or Docker image: for the container runtime.
    Container,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WasmFamily {
    Cncf,
    Legacy,
}

/// Classifies an image manifest (not an index) by its config and layer media types.
pub fn classify(manifest: &Manifest) -> Result<ArtifactKind> {
    let config_type = manifest.config.as_ref().map(|c| c.media_type.as_str()).unwrap_or_default();
    let layers_of = |media_type: &str| manifest.layers.iter().filter(|l| l.media_type == media_type).cloned().collect::<Vec<_>>();
    match config_type {
        WASM_CONFIG_V0 => {
            let mut layers = layers_of(WASM_LAYER);
            match layers.len() {
                1 => Ok(ArtifactKind::Wasm { layer: layers.remove(0), family: WasmFamily::Cncf }),
                count => Err(Error::UnsupportedManifest(format!("a {WASM_CONFIG_V0} artifact must have exactly one {WASM_LAYER} layer, this one has {count}"))),
            }
        }
        SPIN_CONFIG => {
            let components = layers_of(WASM_CONTENT_LAYER);
            if components.is_empty() {
                return Err(Error::UnsupportedManifest(format!("a Spin application without {WASM_CONTENT_LAYER} layers")));
            }
            Ok(ArtifactKind::SpinApp { components })
        }
        WASM_CONFIG_V1 => {
            let mut layers = layers_of(WASM_CONTENT_LAYER);
            if layers.is_empty() {
                layers = layers_of(WASM_LAYER);
            }
            match layers.len() {
                1 => Ok(ArtifactKind::Wasm { layer: layers.remove(0), family: WasmFamily::Legacy }),
                count => Err(Error::UnsupportedManifest(format!("a {WASM_CONFIG_V1} artifact must have one Wasm layer, this one has {count}"))),
            }
        }
        _ => {
            let image_layers = manifest.layers.iter().all(|l| {
                l.media_type.starts_with("application/vnd.oci.image.layer.") || l.media_type.starts_with("application/vnd.docker.image.rootfs.")
            });
            if image_layers {
                Ok(ArtifactKind::Container)
            } else {
                let types: Vec<&str> = manifest.layers.iter().map(|l| l.media_type.as_str()).collect();
                Err(Error::UnsupportedManifest(format!("config {config_type:?} with layers {types:?} is neither a Wasm artifact nor a container image")))
            }
        }
    }
}

/// Builds the CNCF manifest and config for one Wasm binary.
pub fn cncf_artifact(wasm: &[u8], info: &crate::wasm::WasmInfo) -> (Manifest, Vec<u8>) {
    let layer_digest = Digest::of(wasm);
    let config = WasmConfig {
        created: jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        author: None,
        architecture: "wasm".into(),
        os: if info.is_component { "wasip2".into() } else { "wasip1".into() },
        layer_digests: vec![layer_digest.to_string()],
        component: info.is_component.then(|| ComponentInfo { exports: info.exports.clone(), imports: info.imports.clone(), target: None }),
    };
    // Serialising a struct of strings cannot fail.
    let config_bytes = serde_json::to_vec(&config).unwrap_or_default();
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.into()),
        artifact_type: Some(if info.is_component { "application/vnd.wasm.component.v1+wasm".into() } else { "application/vnd.wasm.module.v1+wasm".into() }),
        config: Some(Descriptor { media_type: WASM_CONFIG_V0.into(), digest: Digest::of(&config_bytes).to_string(), size: config_bytes.len() as u64, annotations: None, platform: None }),
        layers: vec![Descriptor { media_type: WASM_LAYER.into(), digest: layer_digest.to_string(), size: wasm.len() as u64, annotations: None, platform: None }],
        manifests: Vec::new(),
        annotations: None,
    };
    (manifest, config_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(media_type: &str) -> Descriptor {
        Descriptor { media_type: media_type.into(), digest: Digest::of(media_type.as_bytes()).to_string(), size: 1, annotations: None, platform: None }
    }

    fn manifest(config: &str, layers: &[&str]) -> Manifest {
        Manifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST.into()),
            artifact_type: None,
            config: Some(descriptor(config)),
            layers: layers.iter().map(|l| descriptor(l)).collect(),
            manifests: Vec::new(),
            annotations: None,
        }
    }

    #[test]
    fn the_three_wasm_families_and_containers_are_told_apart() {
        assert!(matches!(classify(&manifest(WASM_CONFIG_V0, &[WASM_LAYER])), Ok(ArtifactKind::Wasm { family: WasmFamily::Cncf, .. })));
        assert!(matches!(classify(&manifest(WASM_CONFIG_V1, &[WASM_CONTENT_LAYER])), Ok(ArtifactKind::Wasm { family: WasmFamily::Legacy, .. })));
        let spin = classify(&manifest(SPIN_CONFIG, &[WASM_CONTENT_LAYER, WASM_CONTENT_LAYER, "application/vnd.wasm.content.layer.v1+data"]));
        assert!(matches!(spin, Ok(ArtifactKind::SpinApp { components }) if components.len() == 2));
        assert_eq!(classify(&manifest("application/vnd.oci.image.config.v1+json", &["application/vnd.oci.image.layer.v1.tar+gzip"])).ok(), Some(ArtifactKind::Container));
        assert_eq!(classify(&manifest("application/vnd.docker.container.image.v1+json", &["application/vnd.docker.image.rootfs.diff.tar.gzip"])).ok(), Some(ArtifactKind::Container));
        assert!(classify(&manifest(WASM_CONFIG_V0, &[WASM_LAYER, WASM_LAYER])).is_err());
        assert!(classify(&manifest("application/x-custom", &["text/plain"])).is_err());
    }
}
