//! Artifact references: `[REGISTRY/]REPOSITORY[:TAG][@DIGEST]`, as Docker and Kubernetes read
//! them. `shoal.local/...` always means this cluster's built-in registry.

use crate::{BUILT_IN_REGISTRY, Digest, Error, Result};

/// A parsed reference. `tag` defaults to `latest` when neither tag nor digest is given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

fn valid_component(component: &str) -> bool {
    // Lowercase alphanumerics separated by one '.', one or two '_', or any number of '-'.
    !component.is_empty()
        && component.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_' || b == b'-')
        && component.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && component.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

impl Reference {
    pub fn parse(text: &str) -> Result<Self> {
        let invalid = |detail: &str| Error::Reference { reference: text.to_owned(), detail: detail.to_owned() };
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => (rest, Some(Digest::parse(digest).map_err(|_| invalid("the digest must be sha256: and 64 hex digits"))?)),
            None => (text, None),
        };
        // A tag is after the last ':' that follows the last '/' (a ':' before it is a port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(colon) => (&rest[..last_slash + colon], Some(rest[last_slash + colon + 1..].to_owned())),
            None => (rest, None),
        };
        if let Some(tag) = &tag {
            let valid = !tag.is_empty()
                && tag.len() <= 128
                && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
                && tag.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return Err(invalid("a tag is up to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, remainder)) if first.contains('.') || first.contains(':') || first == "localhost" => (first.to_owned(), remainder.to_owned()),
            _ => ("docker.io".to_owned(), if name.contains('/') { name.to_owned() } else { format!("library/{name}") }),
        };
        if repository.is_empty() || !repository.split('/').all(valid_component) {
            return Err(invalid("the repository must be lowercase path components of letters, digits, '.', '_' or '-'"));
        }
        let tag = if tag.is_none() && digest.is_none() { Some("latest".to_owned()) } else { tag };
        Ok(Self { registry, repository, tag, digest })
    }

    /// Whether this names the cluster's own registry.
    pub fn is_built_in(&self) -> bool {
        self.registry == BUILT_IN_REGISTRY
    }

    /// What to ask the registry's manifest endpoint for: the digest if pinned, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => "latest".into(),
        }
    }

    /// The same artifact pinned to `digest`.
    pub fn with_digest(&self, digest: Digest) -> Self {
        Self { digest: Some(digest), ..self.clone() }
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_like_docker() {
        let r = Reference::parse("shoal.local/samples/hello:1").expect("valid");
        assert_eq!((r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()), ("shoal.local", "samples/hello", Some("1")));
        assert!(r.is_built_in());
        let r = Reference::parse("localhost:5000/hello").expect("valid");
        assert_eq!((r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()), ("localhost:5000", "hello", Some("latest")));
        let r = Reference::parse("busybox").expect("valid");
        assert_eq!((r.registry.as_str(), r.repository.as_str()), ("docker.io", "library/busybox"));
        let digest = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        let r = Reference::parse(&format!("shoal.local/hello@{digest}")).expect("valid");
        assert_eq!((r.tag.clone(), r.manifest_reference()), (None, digest.to_owned()));
        assert_eq!(Reference::parse("127.0.0.1:5000/a/b:v1.2").expect("valid").to_string(), "127.0.0.1:5000/a/b:v1.2");
    }

    #[test]
    fn malformed_references_are_refused() {
        for bad in ["shoal.local/Hello:1", "shoal.local/hello:", "shoal.local/hello@sha256:abc", "shoal.local//x", "shoal.local/x:-bad"] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }
}
