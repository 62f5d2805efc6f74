//! The servers' internal API under `/internal/`, and how a new server joins a cluster.
//!
//! Peers call it with the server token (see [`crate::pki::Credentials::server_token`]): Raft's
//! RPCs, writes forwarded to the leader, read indexes, and membership changes. The admin token
//! may read the status and remove members (`shoal cluster status|remove`). The CA certificate
//! is public, so a joining server can fetch it and check it against the hash its token pins
//! before it trusts anything the cluster says.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use http_body_util::BodyExt;
use serde::Serialize;
use shoal_api::ApiError;
use shoal_store::network::{Rpc, paths};
use shoal_store::{Command, MemberRequest};

use crate::AppState;
use crate::error::{Error, Result};
use crate::handlers::{bearer_token, error_response};
use crate::pki::{self, SharedCredentials};

/// The largest internal request: an AppendEntries batch may carry many registry chunks.
const MAX_INTERNAL_BODY: usize = 512 * 1024 * 1024;

/// `GET /internal/cluster/ca`: the public CA certificate.
pub const CA_PATH: &str = "/internal/cluster/ca";
/// `POST /internal/cluster/join`: the shared credentials, for a server holding the server token
/// (or a server join token).
pub const JOIN_PATH: &str = "/internal/cluster/join";
/// `POST /internal/cluster/node-join`: the node token, for an agent holding a node join token.
pub const NODE_JOIN_PATH: &str = "/internal/cluster/node-join";
/// `/internal/tokens`: join tokens (admin).
pub const TOKENS_PATH: &str = "/internal/tokens";

fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => bytes_response(StatusCode::OK, body, "application/json"),
        Err(error) => error_response(&ApiError::internal(format!("encoding the answer: {error}"))),
    }
}

fn bytes_response(code: StatusCode, body: Vec<u8>, content_type: &'static str) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = code;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[derive(PartialEq)]
enum Caller {
    Server,
    Admin,
    /// The shared node token: it may read the status, to learn the servers, and exchange
    /// itself for a node's own credential.
    Node,
    /// A node's own credential: it may read the status.
    OwnNode,
}

fn caller(state: &AppState, headers: &HeaderMap) -> Option<Caller> {
    let token = bearer_token(headers)?;
    if shoal_api::token::matches(&state.credentials.server_token, token) {
        return Some(Caller::Server);
    }
    Some(match crate::authz::identify_token(state, token)? {
        crate::authz::Identity::Admin => Caller::Admin,
        crate::authz::Identity::Nodes => Caller::Node,
        crate::authz::Identity::Node(_) => Caller::OwnNode,
        crate::authz::Identity::User(_) => return None,
    })
}

/// `POST /internal/cluster/node-join` `{"nodeName": NAME}`: issues node NAME its own credential and
/// tells it how to check the servers' calls to its data plane.
async fn node_join(state: &AppState, body: &[u8]) -> Response {
    let name = serde_json::from_slice::<serde_json::Value>(body).ok().and_then(|v| v["nodeName"].as_str().map(str::to_owned));
    let Some(name) = name else { return error_response(&ApiError::bad_request("give the joining node's name: {\"nodeName\": NAME}")) };
    match crate::tokens::issue_node_credential(state, &name).await {
        Ok(token) => json(&serde_json::json!({"nodeToken": token, "serverTokenSha256": shoal_api::token::secret_sha256(&state.credentials.node_token)})),
        Err(error) => error_response(&error),
    }
}

/// Every `/internal/…` request.
pub async fn internal(State(state): State<Arc<AppState>>, method: Method, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    let path = uri.path();
    if path == CA_PATH && method == Method::GET {
        return bytes_response(StatusCode::OK, state.credentials.ca_pem.clone().into_bytes(), "application/x-pem-file");
    }
    let presented = crate::handlers::bearer_token(&headers).unwrap_or_default().to_vec();
    // Join tokens (`shoal token create`) open the join calls and nothing else.
    let caller = caller(&state, &headers);
    if method == Method::POST && caller.is_none() && path == JOIN_PATH && crate::tokens::verify(&state, &presented, crate::tokens::Role::Server) {
        return shared_credentials(&state);
    }
    let joins_a_node = method == Method::POST && caller.is_none() && path == NODE_JOIN_PATH && crate::tokens::verify(&state, &presented, crate::tokens::Role::Node);
    if caller.is_none() && !joins_a_node {
        return error_response(&ApiError::unauthorized());
    }
    let body = match http_body_util::Limited::new(body, MAX_INTERNAL_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => return error_response(&ApiError::bad_request(format!("reading the request body: {error}"))),
    };
    let Some(caller) = caller else { return node_join(&state, &body).await };
    let store = &state.store;
    let server_only = || error_response(&ApiError::forbidden("this call is for control-plane servers (the server token)"));
    // Writes and read indexes are served only for current members: a removed server must not
    // keep writing through the leader as if it were still in the group.
    let calling_member = headers.get(shoal_store::network::MEMBER_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let not_a_member = |id: Option<u64>| {
        json(&std::result::Result::<(), shoal_store::WireError>::Err(shoal_store::WireError::Failed(format!(
            "server {} is not a member of the control-plane group (it was removed, or never joined); it cannot write or read through the group",
            id.map_or("(unnamed)".into(), |id| id.to_string())
        ))))
    };
    let decode_error = |error: serde_json::Error| error_response(&ApiError::bad_request(format!("decoding the request: {error}")));
    match (method.clone(), path) {
        (Method::POST, _) if let Some(rpc) = Rpc::from_path(path) => {
            if caller != Caller::Server {
                return server_only();
            }
            match shoal_store::network::serve(store.raft(), store.log_on_disk(), rpc, &body).await {
                Ok(answer) => bytes_response(StatusCode::OK, answer, "application/json"),
                Err(shoal_store::network::ServeError::BadRequest(message)) => error_response(&ApiError::bad_request(message)),
                Err(shoal_store::network::ServeError::Unavailable(message)) => error_response(&ApiError::unavailable(message)),
            }
        }
        (Method::POST, paths::WRITE) => {
            if caller != Caller::Server {
                return server_only();
            }
            if !calling_member.is_some_and(|id| store.is_member(id)) {
                return not_a_member(calling_member);
            }
            match serde_json::from_slice::<Command>(&body) {
                Ok(command) => json(&store.write_forwarded(command).await),
                Err(error) => decode_error(error),
            }
        }
        (Method::POST, paths::WRITE_BATCH) => {
            if caller != Caller::Server {
                return server_only();
            }
            if !calling_member.is_some_and(|id| store.is_member(id)) {
                return not_a_member(calling_member);
            }
            // Proposed together, so they share the proposer's next log entries; answered in order.
            match serde_json::from_slice::<Vec<Command>>(&body) {
                Ok(commands) => json(&futures::future::join_all(commands.into_iter().map(|command| store.write_forwarded(command))).await),
                Err(error) => decode_error(error),
            }
        }
        (Method::POST, paths::READ_INDEX) => {
            if caller != Caller::Server {
                return server_only();
            }
            if !calling_member.is_some_and(|id| store.is_member(id)) {
                return not_a_member(calling_member);
            }
            json(&store.read_index().await)
        }
        (Method::POST, paths::BLOB_CHUNK) => {
            if caller != Caller::Server {
                return server_only();
            }
            match serde_json::from_slice::<(String, u32)>(&body) {
                Ok((digest, index)) => match store.blob_chunk(&digest, index) {
                    Ok(chunk) => {
                        use base64::Engine;
                        json(&chunk.map(|bytes| base64::engine::general_purpose::STANDARD.encode(bytes)))
                    }
                    Err(error) => error_response(&ApiError::internal(error.to_string())),
                },
                Err(error) => decode_error(error),
            }
        }
        (Method::POST, paths::STATUS) => json(&store.status().await),
        (Method::GET, paths::STATUS) => json(&store.cluster_status().await),
        (Method::POST, paths::MEMBERS) => {
            if caller != Caller::Server {
                return server_only();
            }
            match serde_json::from_slice::<MemberRequest>(&body) {
                Ok(member) => json(&store.add_member(member).await),
                Err(error) => decode_error(error),
            }
        }
        (Method::POST, NODE_JOIN_PATH) if caller == Caller::Node => node_join(&state, &body).await,
        _ if matches!(caller, Caller::Node | Caller::OwnNode) => error_response(&ApiError::forbidden("nodes may only read the cluster status")),
        (Method::POST, _) if let Some(id) = path.strip_prefix(paths::MEMBERS).and_then(|rest| rest.strip_prefix('/')).and_then(|rest| rest.strip_suffix("/remove")) => {
            match id.parse::<u64>() {
                Ok(id) => json(&store.remove_member(id).await),
                Err(_) => error_response(&ApiError::bad_request(format!("{id:?} is not a member id"))),
            }
        }
        (Method::POST, JOIN_PATH) => {
            if caller != Caller::Server {
                return server_only();
            }
            shared_credentials(&state)
        }
        // Admin or server: a node's own credential when a name is given, else the shared token.
        (Method::POST, NODE_JOIN_PATH) if !body.is_empty() => node_join(&state, &body).await,
        (Method::POST, NODE_JOIN_PATH) => json(&serde_json::json!({"nodeToken": state.credentials.node_token})),
        (_, _) if path == TOKENS_PATH || path.starts_with("/internal/tokens/") => {
            if caller != Caller::Admin {
                return error_response(&ApiError::forbidden("join tokens are managed with the admin token"));
            }
            match tokens_call(&state, &method, path, &body).await {
                Ok(answer) => json(&answer),
                Err(error) => error_response(&error),
            }
        }
        _ => error_response(&ApiError::path_not_found()),
    }
}

fn shared_credentials(state: &AppState) -> Response {
    match pki::shared(&state.data_dir, &state.credentials) {
        Ok(shared) => json(&shared),
        Err(error) => error_response(&ApiError::internal(format!("reading the cluster credentials: {error}"))),
    }
}

/// `POST /internal/tokens` `{"role": "server"|"node", "ttlSeconds": N}` creates a join token;
/// `GET` lists them; `POST /internal/tokens/ID/delete` deletes one.
async fn tokens_call(state: &AppState, method: &Method, path: &str, body: &[u8]) -> std::result::Result<serde_json::Value, ApiError> {
    match (method, path.strip_prefix(TOKENS_PATH).unwrap_or_default()) {
        (&Method::GET, "" | "/") => Ok(serde_json::json!({"tokens": crate::tokens::list(state)?})),
        (&Method::POST, "" | "/") => {
            let request: serde_json::Value = serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("decoding the request: {e}")))?;
            let role = crate::tokens::Role::parse(request["role"].as_str().unwrap_or_default())?;
            let ttl = match &request["ttlSeconds"] {
                serde_json::Value::Null => None,
                value => Some(value.as_u64().filter(|s| *s > 0).ok_or_else(|| ApiError::bad_request("ttlSeconds must be a positive number"))?),
            };
            let (token, record) = crate::tokens::create(state, role, ttl).await?;
            Ok(serde_json::json!({"token": token, "record": record}))
        }
        (&Method::POST, rest) if let Some(id) = rest.strip_prefix('/').and_then(|r| r.strip_suffix("/delete")) => {
            crate::tokens::delete(state, id).await?;
            Ok(serde_json::json!({"deleted": id}))
        }
        _ => Err(ApiError::path_not_found()),
    }
}

/// An HTTPS client that trusts only the cluster CA `ca_pem` (for calls to the servers).
pub fn client_trusting(ca_pem: &str) -> std::result::Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes())?)
        .build()
}

/// Fetches the cluster CA from the server at `url`. The connection is not trusted (the CA is
/// what would let it be): the CA is checked against the hash the token pins (`K1<hash>::…`). A
/// bare secret pins nothing; then the CA is trusted on first use, with a warning.
pub async fn fetch_ca(url: &str, token: &str) -> Result<String> {
    let join_error = |detail: String| Error::Join { url: url.to_owned(), detail };
    let base = url.trim_end_matches('/');
    let untrusted = reqwest::Client::builder()
        .use_rustls_tls()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| join_error(e.to_string()))?;
    let ca_pem = untrusted
        .get(format!("{base}{CA_PATH}"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| join_error(format!("fetching the CA: {e}")))?
        .text()
        .await
        .map_err(|e| join_error(format!("fetching the CA: {e}")))?;
    match shoal_api::token::ca_hash(token) {
        Some(pinned) if pki::ca_hash(&ca_pem) != pinned => {
            Err(join_error("the server's CA does not match the hash in the token: refusing to trust it".into()))
        }
        Some(_) => Ok(ca_pem),
        None => {
            tracing::warn!(%url, "the token pins no CA (it is a bare secret, not K1<CA hash>::<secret>): trusting the server's CA on first use");
            Ok(ca_pem)
        }
    }
}

/// Fetches the cluster's shared credentials from the member at `url` with the server token
/// (its CA checked by [`fetch_ca`]; from then on the CA is the only root trusted).
pub async fn fetch_shared(url: &str, token: &str) -> Result<SharedCredentials> {
    let join_error = |detail: String| Error::Join { url: url.to_owned(), detail };
    let base = url.trim_end_matches('/');
    let ca_pem = fetch_ca(url, token).await?;
    let trusted = client_trusting(&ca_pem).map_err(|e| join_error(format!("the CA: {e}")))?;
    let response = trusted
        .post(format!("{base}{JOIN_PATH}"))
        .timeout(Duration::from_secs(10))
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| join_error(format!("asking to join: {e}")))?;
    if !response.status().is_success() {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        return Err(join_error(format!("asking to join: HTTP {status}: {}", text.chars().take(300).collect::<String>())));
    }
    response.json::<SharedCredentials>().await.map_err(|e| join_error(format!("decoding the credentials: {e}")))
}

/// Asks the group (through the member at `url`) to add this server, and waits until it has: the
/// leader adds it as a learner, streams it the log (or a snapshot), then makes it a voter.
/// Retries while the group is electing a leader.
pub async fn request_membership(url: &str, ca_pem: &str, server_token: &str, member: &MemberRequest) -> Result<()> {
    let transport = shoal_store::network::Transport::new(Some(ca_pem), server_token, member.id).map_err(|detail| Error::Join { url: url.to_owned(), detail })?;
    let until = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let answer = transport
            .call::<_, std::result::Result<(), shoal_store::WireError>>(url, paths::MEMBERS, member, Duration::from_secs(300))
            .await;
        let problem = match answer {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(shoal_store::WireError::NotLeader(message) | shoal_store::WireError::Busy(message))) => message,
            Ok(Err(shoal_store::WireError::Failed(message))) => return Err(Error::Join { url: url.to_owned(), detail: message }),
            Err(error) => error.to_string(),
        };
        if tokio::time::Instant::now() >= until {
            return Err(Error::Join { url: url.to_owned(), detail: format!("the group did not add this server within 120 s: {problem}") });
        }
        tracing::info!(%problem, "waiting to be added to the control-plane group");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
