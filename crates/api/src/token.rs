//! The cluster's bearer tokens: `K1<sha256 of the CA certificate, hex>::<secret>`, as k3s's
//! secure tokens are. The prefix lets a server or agent that has only the token check the CA it
//! fetches from the cluster before trusting it; only the secret authenticates, so a bare secret
//! (without the prefix) is accepted wherever the full token is.

/// The secret part of a token (all of it when it has no `K1<hash>::` prefix).
pub fn secret(token: &str) -> &str {
    match token.strip_prefix("K1").and_then(|rest| rest.split_once("::")) {
        Some((_, secret)) => secret,
        None => token,
    }
}

/// The CA hash a token pins, if it has the `K1<hash>::<secret>` form.
pub fn ca_hash(token: &str) -> Option<&str> {
    let (head, secret) = token.strip_prefix("K1")?.split_once("::")?;
    (head.len() == 64 && head.bytes().all(|b| b.is_ascii_hexdigit()) && !secret.is_empty()).then_some(head)
}

/// Whether `presented` carries the same secret as `known`, compared in constant time.
pub fn matches(known: &str, presented: &[u8]) -> bool {
    let known = secret(known).as_bytes();
    let presented = std::str::from_utf8(presented).map(|p| secret(p).as_bytes()).unwrap_or(presented);
    !known.is_empty() && constant_time_eq(known, presented)
}

/// Whether `a` and `b` are equal, in a time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The SHA-256 of `text`, in hex.
pub fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 (hex) of a token's secret part: what a node keeps to check the token servers
/// present to its data plane, without holding the token itself.
pub fn secret_sha256(token: &str) -> String {
    sha256_hex(secret(token))
}

/// Whether `presented` is a token whose secret hashes to `sha256` (hex), compared in constant
/// time.
pub fn matches_sha256(sha256: &str, presented: &[u8]) -> bool {
    let Ok(presented) = std::str::from_utf8(presented) else { return false };
    !sha256.is_empty() && constant_time_eq(sha256.as_bytes(), secret_sha256(presented).as_bytes())
}

/// A full token for `secret` under the CA whose hash is `ca_hash`.
pub fn compose(ca_hash: &str, secret: &str) -> String {
    format!("K1{ca_hash}::{secret}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "092ac08659f8dd42fc092ac08659f8dd42fc092ac08659f8dd42fc092ac08659";

    #[test]
    fn a_secret_is_checked_against_its_hash_with_or_without_the_prefix() {
        let token = compose(HASH, "s3cret");
        let hash = secret_sha256(&token);
        assert_eq!(hash, secret_sha256("s3cret"));
        assert!(matches_sha256(&hash, token.as_bytes()));
        assert!(matches_sha256(&hash, b"s3cret"));
        assert!(!matches_sha256(&hash, b"other"));
        assert!(!matches_sha256("", b""));
    }

    #[test]
    fn a_token_splits_into_its_ca_hash_and_secret() {
        let token = compose(&HASH[..64], "s3cret");
        assert_eq!(ca_hash(&token), Some(&HASH[..64]));
        assert_eq!(secret(&token), "s3cret");
        assert_eq!(secret("plain"), "plain");
        assert_eq!(ca_hash("plain"), None);
        assert_eq!(ca_hash("K1abc::x"), None, "a hash must be 64 hex digits");
    }

    #[test]
    fn the_full_token_and_its_bare_secret_both_match_but_nothing_else_does() {
        let known = compose(&HASH[..64], "s3cret");
        assert!(matches(&known, known.as_bytes()));
        assert!(matches(&known, b"s3cret"));
        assert!(matches("s3cret", known.as_bytes()));
        assert!(!matches(&known, b"s3cre"));
        assert!(!matches(&known, b"other"));
        assert!(!matches(&known, b""));
        assert!(!matches("", b""), "an empty secret never authenticates");
    }
}
