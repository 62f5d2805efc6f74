//! What a pod's images are, so that a pod with OCI containers goes only to nodes that run them
//! (`shoal.dev/containers=true`) without the user naming a runtimeClass. Each image reference
//! resolves once (cached) to Wasm or container by its manifest: from the built-in registry
//! through the API server, or from an external registry with the pod's pull secrets. Resolution
//! runs off the scheduling loop; a pod whose images are not known yet waits for them. An image
//! that cannot be resolved counts as Wasm (the node then reports why it cannot pull it).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_api::resources;
use shoal_client::Client;
use shoal_oci::Reference;
use shoal_oci::client::{Auth, RegistryClient};
use shoal_oci::media::{ArtifactKind, MANIFEST_ACCEPT, Manifest, classify};

/// How long a resolved kind is trusted (a tag can be pushed again as something else).
const KNOWN_FOR: Duration = Duration::from_secs(600);
/// How long a failed resolution stands before it is tried again.
const FAILED_FOR: Duration = Duration::from_secs(30);

/// Every image a pod runs (init containers included).
pub fn images_of(pod: &Value) -> Vec<String> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|list| pod["spec"][*list].as_array().into_iter().flatten())
        .filter_map(|c| c["image"].as_str().map(str::to_owned))
        .collect()
}

/// What the scheduler knows of image kinds.
#[derive(Default)]
pub struct ImageKinds {
    /// Reference → (is a container image, until when to trust it).
    known: HashMap<String, (bool, Instant)>,
    /// References being resolved → the pods waiting for them.
    waiting: HashMap<String, Vec<String>>,
}

/// The answer for one pod.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every image is known: whether any is a container image.
    Known { containers: bool },
    /// These references need resolving first (the pod waits).
    Unknown(Vec<String>),
}

impl ImageKinds {
    pub fn verdict(&self, images: &[String], now: Instant) -> Verdict {
        let mut containers = false;
        let mut unknown = Vec::new();
        for image in images {
            match self.known.get(image) {
                Some((is_container, until)) if *until > now => containers |= *is_container,
                _ => unknown.push(image.clone()),
            }
        }
        if unknown.is_empty() { Verdict::Known { containers } } else { Verdict::Unknown(unknown) }
    }

    /// Records that `pod` waits for `image`; true when nobody was resolving it yet (so the
    /// caller starts the resolution).
    pub fn wait_for(&mut self, image: &str, pod: &str) -> bool {
        let waiters = self.waiting.entry(image.to_owned()).or_default();
        let first = waiters.is_empty();
        if !waiters.iter().any(|p| p == pod) {
            waiters.push(pod.to_owned());
        }
        first
    }

    /// Records a resolution (None: it failed) and returns the pods that waited for it.
    pub fn resolved(&mut self, image: &str, container: Option<bool>, now: Instant) -> Vec<String> {
        let entry = match container {
            Some(is_container) => (is_container, now + KNOWN_FOR),
            None => (false, now + FAILED_FOR),
        };
        self.known.insert(image.to_owned(), entry);
        self.waiting.remove(image).unwrap_or_default()
    }
}

/// Whether `image` is a container image (None: it could not be resolved).
pub async fn resolve(client: &Client, pod: &Value, image: &str) -> Option<bool> {
    let reference = Reference::parse(image).ok()?;
    let bytes = if reference.is_built_in() {
        let path = format!("/v2/{}/manifests/{}", reference.repository, reference.manifest_reference());
        let response = client.raw_get(&path).header("accept", MANIFEST_ACCEPT).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.bytes().await.ok()?.to_vec()
    } else {
        let registry = RegistryClient::external(&reference.registry, &[], pull_auth(client, pod, &reference.registry).await).ok()?;
        registry.get_manifest(&reference.repository, &reference.manifest_reference()).await.ok()?.0
    };
    let manifest = Manifest::parse(&bytes).ok()?;
    if manifest.is_index() {
        // An index with a Wasm entry is a Wasm artifact; otherwise one of platforms' images.
        let wasm = manifest.manifests.iter().any(|m| m.platform.as_ref().is_some_and(|p| p["architecture"] == "wasm" || p["os"] == "wasip1" || p["os"] == "wasip2"));
        return Some(!wasm);
    }
    Some(matches!(classify(&manifest).ok()?, ArtifactKind::Container))
}

/// The credentials the pod's `imagePullSecrets` hold for `registry` (anonymous without any).
async fn pull_auth(client: &Client, pod: &Value, registry: &str) -> Auth {
    let secrets = resources::by_name("secrets").expect("secrets are served");
    let namespace = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    for secret in pod["spec"]["imagePullSecrets"].as_array().into_iter().flatten() {
        if let Ok(object) = client.get(secrets, Some(namespace), secret["name"].as_str().unwrap_or_default()).await
            && let Some(auth) = shoal_oci::client::auth_from_pull_secret(&object, registry)
        {
            return auth;
        }
    }
    Auth::Anonymous
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_wait_for_unknown_images_and_are_released_when_they_resolve() {
        let now = Instant::now();
        let mut kinds = ImageKinds::default();
        let images = vec!["reg/app:1".to_owned(), "reg/sidecar:1".to_owned()];
        assert_eq!(kinds.verdict(&images, now), Verdict::Unknown(images.clone()));
        assert!(kinds.wait_for("reg/app:1", "default/a"), "the first waiter starts the resolution");
        assert!(!kinds.wait_for("reg/app:1", "default/b"));
        assert_eq!(kinds.resolved("reg/app:1", Some(false), now), ["default/a", "default/b"]);
        assert_eq!(kinds.resolved("reg/sidecar:1", Some(true), now), Vec::<String>::new());
        assert_eq!(kinds.verdict(&images, now), Verdict::Known { containers: true });
        assert_eq!(kinds.verdict(&images[..1], now), Verdict::Known { containers: false });
        // Knowledge expires; a failure counts as Wasm, briefly.
        assert!(matches!(kinds.verdict(&images, now + KNOWN_FOR + Duration::from_secs(1)), Verdict::Unknown(_)));
        kinds.resolved("reg/broken:1", None, now);
        assert_eq!(kinds.verdict(&["reg/broken:1".to_owned()], now), Verdict::Known { containers: false });
        assert!(matches!(kinds.verdict(&["reg/broken:1".to_owned()], now + FAILED_FOR + Duration::from_secs(1)), Verdict::Unknown(_)));
    }

    #[test]
    fn every_container_image_counts() {
        let pod = serde_json::json!({"spec": {"initContainers": [{"image": "i"}], "containers": [{"image": "a"}, {"image": "b"}]}});
        assert_eq!(images_of(&pod), ["i", "a", "b"]);
    }
}
