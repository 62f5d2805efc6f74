//! Join tokens (`shoal token create --role server|node [--ttl D]`): secrets stored, hashed, in
//! the replicated state, so every server honours a token any server issued.
//!
//! A join token reads `K1<CA hash>::<id>.<secret>`. It only joins: a server presents it to
//! receive the cluster's shared credentials, an agent to receive the node token, which it keeps
//! and uses from then on. A token past its expiry joins nothing; nodes and servers that joined
//! with it keep working.

use serde_json::{Value, json};
use shoal_api::ApiError;
use shoal_store::{Command, ObjectKey};

use crate::AppState;
use crate::pki::{random_hex, sha256_hex};

/// The internal resource holding join tokens (never served by the Kubernetes API).
pub const RESOURCE: &str = "internal.jointokens";

/// What a join token lets its holder join as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Server,
    Node,
}

impl Role {
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        match text {
            "server" => Ok(Self::Server),
            "node" | "agent" => Ok(Self::Node),
            other => Err(ApiError::bad_request(format!("unknown token role {other:?}: use server or node"))),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Node => "node",
        }
    }
}

/// Creates a join token for `role`, valid for `ttl_seconds` (forever when `None`). Returns the
/// token (shown once: only its hash is stored) and its record.
pub async fn create(state: &AppState, role: Role, ttl_seconds: Option<u64>) -> Result<(String, Value), ApiError> {
    let id = random_hex(6);
    let secret = random_hex(24);
    let created = jiff::Timestamp::now();
    let expires = match ttl_seconds {
        Some(seconds) => {
            let seconds = i64::try_from(seconds).map_err(|_| ApiError::bad_request("the TTL is too long"))?;
            let expiry = created.checked_add(jiff::SignedDuration::from_secs(seconds)).map_err(|_| ApiError::bad_request("the TTL is too long"))?;
            Value::String(expiry.to_string())
        }
        None => Value::Null,
    };
    let record = json!({"id": id, "role": role.as_str(), "secretSha256": sha256_hex(&secret), "created": created.to_string(), "expires": expires});
    let key = ObjectKey::new(RESOURCE, "", &id);
    match state.store.write(Command::Create { key, object: record.clone() }).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => return Err(ApiError::internal(format!("storing the token: {error}"))),
        Err(error) => return Err(crate::objects::store_error(error)),
    }
    let token = shoal_api::token::compose(&crate::pki::ca_hash(&state.credentials.ca_pem), &format!("{id}.{secret}"));
    Ok((token, public(&record)))
}

/// A record without its hash.
fn public(record: &Value) -> Value {
    json!({"id": record["id"], "role": record["role"], "created": record["created"], "expires": record["expires"]})
}

/// Every join token's record (without hashes).
pub fn list(state: &AppState) -> Result<Vec<Value>, ApiError> {
    let listed = state.store.list(RESOURCE, None, None, None, &|_| true).map_err(crate::objects::store_error)?;
    Ok(listed.items.iter().map(public).collect())
}

/// Deletes join token `id`.
pub async fn delete(state: &AppState, id: &str) -> Result<(), ApiError> {
    let key = ObjectKey::new(RESOURCE, "", id);
    match state.store.write(Command::Delete { key, precondition: Default::default() }).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(shoal_store::WriteError::NotFound)) => Err(ApiError::new(404, "NotFound", format!("join token {id} not found"))),
        Ok(Err(error)) => Err(ApiError::internal(error.to_string())),
        Err(error) => Err(crate::objects::store_error(error)),
    }
}

/// Whether `presented` is an unexpired join token for `role`.
pub fn verify(state: &AppState, presented: &[u8], role: Role) -> bool {
    let Ok(presented) = std::str::from_utf8(presented) else { return false };
    let Some((id, secret)) = shoal_api::token::secret(presented).split_once('.') else { return false };
    if id.is_empty() || id.contains('/') || secret.is_empty() {
        return false;
    }
    let Ok(Some(record)) = state.store.get(&ObjectKey::new(RESOURCE, "", id)) else { return false };
    if record["role"] != role.as_str() {
        return false;
    }
    if let Some(expires) = record["expires"].as_str() {
        match expires.parse::<jiff::Timestamp>() {
            Ok(expiry) if expiry > jiff::Timestamp::now() => {}
            _ => return false,
        }
    }
    let stored = record["secretSha256"].as_str().unwrap_or_default();
    crate::handlers::constant_time_eq(stored.as_bytes(), sha256_hex(secret).as_bytes())
}

/// The internal resource holding each node's own credential (never served by the Kubernetes
/// API): the record of node `NAME` is `internal.nodecredentials//NAME`.
pub const NODE_CREDENTIALS: &str = "internal.nodecredentials";

/// Issues node `name` a credential of its own, `K1<CA hash>::node:<name>:<secret>`, replacing
/// any it had (the node's earlier credential stops working). Only the secret's hash is stored.
pub async fn issue_node_credential(state: &AppState, name: &str) -> Result<String, ApiError> {
    if !shoal_api::validation::is_dns1123_subdomain(name) {
        return Err(ApiError::bad_request(format!("{name:?} is not a valid node name (a DNS subdomain)")));
    }
    let secret = random_hex(24);
    let record = json!({"node": name, "secretSha256": sha256_hex(&secret), "created": jiff::Timestamp::now().to_string()});
    let key = ObjectKey::new(NODE_CREDENTIALS, "", name);
    let written = match state.store.write(Command::Create { key: key.clone(), object: record.clone() }).await {
        Ok(Err(shoal_store::WriteError::AlreadyExists)) => state.store.write(Command::Update { key, object: record, precondition: Default::default() }).await,
        other => other,
    };
    match written {
        Ok(Ok(_)) => Ok(shoal_api::token::compose(&crate::pki::ca_hash(&state.credentials.ca_pem), &format!("node:{name}:{secret}"))),
        Ok(Err(error)) => Err(ApiError::internal(format!("storing the node credential: {error}"))),
        Err(error) => Err(crate::objects::store_error(error)),
    }
}

/// The node whose own credential `presented` is, if it is a current one.
pub fn verify_node_credential(state: &AppState, presented: &[u8]) -> Option<String> {
    let presented = std::str::from_utf8(presented).ok()?;
    let (name, secret) = shoal_api::token::secret(presented).strip_prefix("node:")?.split_once(':')?;
    if !shoal_api::validation::is_dns1123_subdomain(name) || secret.is_empty() {
        return None;
    }
    let record = state.store.get_shared(&ObjectKey::new(NODE_CREDENTIALS, "", name)).ok()??;
    let stored = record["secretSha256"].as_str().unwrap_or_default();
    crate::handlers::constant_time_eq(stored.as_bytes(), sha256_hex(secret).as_bytes()).then(|| name.to_owned())
}

/// Reads a duration such as `90s`, `15m`, `24h`, `7d` or a number of seconds.
pub fn parse_duration(text: &str) -> Option<u64> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, "s"),
    };
    let number: u64 = number.parse().ok()?;
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    number.checked_mul(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_with_their_units() {
        assert_eq!(parse_duration("90"), Some(90));
        assert_eq!(parse_duration("90s"), Some(90));
        assert_eq!(parse_duration("15m"), Some(900));
        assert_eq!(parse_duration("24h"), Some(86_400));
        assert_eq!(parse_duration("7d"), Some(604_800));
        assert_eq!(parse_duration("1w"), None);
        assert_eq!(parse_duration("h"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn roles_parse() {
        assert_eq!(Role::parse("server").ok(), Some(Role::Server));
        assert_eq!(Role::parse("node").ok(), Some(Role::Node));
        assert!(Role::parse("admin").is_err());
    }
}
