//! Content digests (`sha256:` plus 64 hex digits): parsing, computing, verifying.

use sha2::Digest as _;

use crate::{Error, Result};

/// A sha256 content digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    pub fn parse(text: &str) -> Result<Self> {
        let hex = text.strip_prefix("sha256:").ok_or_else(|| Error::Digest(text.to_owned()))?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(Error::Digest(text.to_owned()));
        }
        Ok(Self(text.to_owned()))
    }

    pub fn of(bytes: &[u8]) -> Self {
        Self(format!("sha256:{:x}", sha2::Sha256::digest(bytes)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hex part, safe to use as a file name.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// Checks that `bytes` hash to this digest.
    pub fn verify(&self, bytes: &[u8]) -> Result<()> {
        let actual = Self::of(bytes);
        if actual == *self { Ok(()) } else { Err(Error::DigestMismatch { expected: self.0.clone(), actual: actual.0 }) }
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Incremental hashing for streams.
#[derive(Default)]
pub struct Hasher(sha2::Sha256);

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(self) -> Digest {
        Digest(format!("sha256:{:x}", self.0.finalize()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_parse_compute_and_verify() {
        let digest = Digest::of(b"hello");
        assert_eq!(digest.as_str(), "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert!(Digest::parse(digest.as_str()).is_ok());
        assert!(digest.verify(b"hello").is_ok());
        assert!(matches!(digest.verify(b"hellO"), Err(Error::DigestMismatch { .. })));
        for bad in ["sha256:abc", "md5:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824", "sha256:2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824"] {
            assert!(Digest::parse(bad).is_err(), "{bad}");
        }
        let mut hasher = Hasher::default();
        hasher.update(b"hel");
        hasher.update(b"lo");
        assert_eq!(hasher.finish(), digest);
    }
}
