//! Raft transport between control-plane servers, and the other server-to-server calls of the
//! store (forwarded writes, read indexes, membership changes).
//!
//! Every call is an HTTPS `POST` of a JSON body to the peer's API listener under
//! `/internal/…`, authenticated with the cluster's server token and verified against the
//! cluster CA, which all servers share. The answer is JSON too: `Result<response, error>` for the
//! Raft RPCs, so a peer's Raft error reaches openraft as a remote error and a transport failure as
//! a network error (or `Unreachable` when the peer cannot be connected to, which makes openraft
//! back off before retrying).
//!
//! Connections are pooled per peer by reqwest. The Raft RPCs go over HTTP/1.1, a connection per
//! concurrent call, kept open for the next one; the store's other calls share one HTTP/2
//! connection per peer, kept honest by pings. HTTP/2 cost the Raft RPCs more per call: in
//! session 18's measurement a 3-member group's single-client write took 1.48 ms at p50 with
//! the Raft RPCs over HTTP/1.1 and 1.70 ms over HTTP/2 (medians of 4 alternating rounds; 64
//! clients wrote as fast either way; `benches/RESULTS.md`). openraft sends one AppendEntries at a
//! time to each follower; the store's group commit above Raft makes each entry a batch.
//!
//! Two rules here keep Raft's promises while the log acknowledges appends before their fsync
//! (`log_store`'s module documentation): a follower answers an AppendEntries only once what it
//! vouches for is on its disk ([`serve`]), and a leader tells followers a committed index no
//! further than its own log is on disk ([`capped_commit`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{BasicNode, LogId};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::TypeConfig;
use crate::log_store::Durability;

type NodeId = u64;

/// The paths of the internal API, served by the API server.
pub mod paths {
    pub const APPEND: &str = "/internal/raft/append";
    pub const VOTE: &str = "/internal/raft/vote";
    pub const SNAPSHOT: &str = "/internal/raft/snapshot";
    pub const WRITE: &str = "/internal/store/write";
    /// Several forwarded writes in one call (`Vec<Command>` in, `Vec<WriteAnswer>` out).
    pub const WRITE_BATCH: &str = "/internal/store/write-batch";
    pub const READ_INDEX: &str = "/internal/store/read-index";
    pub const MEMBERS: &str = "/internal/cluster/members";
    pub const STATUS: &str = "/internal/cluster/status";
    pub const BLOB_CHUNK: &str = "/internal/store/blob-chunk";
}

/// How the servers reach one another: an HTTPS client that trusts only the cluster CA, and the
/// server token it presents.
#[derive(Clone)]
pub struct Transport {
    /// HTTP/2, for the store's calls (forwarded writes, read indexes, membership, chunks).
    http: reqwest::Client,
    /// HTTP/1.1, for the Raft RPCs (see the module documentation).
    raft: reqwest::Client,
    token: Arc<str>,
    /// The calling server's member id, sent as [`MEMBER_HEADER`] (0 before it has one).
    member: u64,
}

/// The header naming the calling server's member id, so that the leader can refuse to act for a
/// server that is no longer in the group.
pub const MEMBER_HEADER: &str = "x-shoal-member";

/// Why a call to a peer failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CallError {
    /// The peer could not be connected to: the request was certainly not delivered.
    #[error("cannot connect to {url}: {detail}")]
    Unreachable { url: String, detail: String },
    /// The request may or may not have been delivered and acted on.
    #[error("calling {url}: {detail}")]
    Failed { url: String, detail: String },
    /// The peer does not serve this path (404: a server of an older version): nothing was done.
    #[error("{url} is not served by this peer")]
    NotServed { url: String },
}

impl Transport {
    /// A transport trusting `ca_pem` (the cluster CA) and presenting `token`. Without a CA (a
    /// single server that never calls a peer) the client trusts nothing.
    pub fn new(ca_pem: Option<&str>, token: &str, member: u64) -> Result<Self, String> {
        let certificate = match ca_pem {
            Some(ca) => Some(reqwest::Certificate::from_pem(ca.as_bytes()).map_err(|e| format!("the cluster CA: {e}"))?),
            None => None,
        };
        let builder = || {
            let builder = reqwest::Client::builder()
                .use_rustls_tls()
                .tls_built_in_root_certs(false)
                .connect_timeout(Duration::from_secs(2))
                .pool_idle_timeout(Duration::from_secs(60))
                .tcp_nodelay(true)
                .tcp_keepalive(Duration::from_secs(10))
                .user_agent(concat!("shoal-server/", env!("CARGO_PKG_VERSION")));
            match &certificate {
                Some(certificate) => builder.add_root_certificate(certificate.clone()),
                None => builder,
            }
        };
        let http = builder()
            // A peer cut off without a reset (a partition, a dead machine) leaves a pooled
            // connection that swallows every request; TCP's retransmission backoff would keep it
            // dead for minutes after the network heals, and a call on it waits out its whole
            // timeout (10 s for a forwarded write). HTTP/2 pings find it within 2 s, failing
            // the calls on it, and the next call connects afresh.
            .http2_keep_alive_interval(Duration::from_secs(1))
            .http2_keep_alive_timeout(Duration::from_secs(1))
            .http2_keep_alive_while_idle(true)
            .build()
            .map_err(|e| format!("building the peer client: {e}"))?;
        // Raft RPCs time out within openraft's short per-call limits (a heartbeat interval or an
        // election timeout), and a call that times out drops its HTTP/1.1 connection, so the
        // next one connects afresh without pings.
        let raft = builder().http1_only().build().map_err(|e| format!("building the peer client: {e}"))?;
        Ok(Self { http, raft, token: Arc::from(token), member })
    }

    /// Whether the server at `base` answers at all (`GET /healthz`) within `timeout`.
    pub async fn reachable(&self, base: &str, timeout: Duration) -> bool {
        let url = format!("{}/healthz", base.trim_end_matches('/'));
        matches!(self.http.get(url).timeout(timeout).send().await, Ok(response) if response.status().is_success())
    }

    /// POSTs `body` as JSON to `base` + `path` and decodes the JSON answer.
    pub async fn call<Q: Serialize, A: DeserializeOwned>(&self, base: &str, path: &str, body: &Q, timeout: Duration) -> Result<A, CallError> {
        self.call_with(&self.http, base, path, body, timeout).await
    }

    /// [`Transport::call`] for a Raft RPC, over HTTP/1.1.
    async fn call_raft<Q: Serialize, A: DeserializeOwned>(&self, base: &str, path: &str, body: &Q, timeout: Duration) -> Result<A, CallError> {
        self.call_with(&self.raft, base, path, body, timeout).await
    }

    async fn call_with<Q: Serialize, A: DeserializeOwned>(
        &self,
        client: &reqwest::Client,
        base: &str,
        path: &str,
        body: &Q,
        timeout: Duration,
    ) -> Result<A, CallError> {
        let started = std::time::Instant::now();
        let url = format!("{}{path}", base.trim_end_matches('/'));
        let body = serde_json::to_vec(body).map_err(|e| CallError::Failed { url: url.clone(), detail: format!("encoding: {e}") })?;
        let response = client
            .post(&url)
            .bearer_auth(&*self.token)
            .header(MEMBER_HEADER, self.member)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    CallError::Unreachable { url: url.clone(), detail: error_chain(&e) }
                } else {
                    CallError::Failed { url: url.clone(), detail: error_chain(&e) }
                }
            })?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(CallError::NotServed { url });
        }
        let bytes = response.bytes().await.map_err(|e| CallError::Failed { url: url.clone(), detail: error_chain(&e) })?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned();
            return Err(CallError::Failed { url, detail: format!("HTTP {status}: {text}") });
        }
        let answer = serde_json::from_slice(&bytes).map_err(|e| CallError::Failed { url, detail: format!("decoding the answer: {e}") });
        tracing::debug!(path, micros = started.elapsed().as_micros() as u64, "peer call");
        answer
    }
}

/// An error with its sources, which reqwest keeps apart ("error sending request" alone says
/// nothing).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Creates connections to peers.
#[derive(Clone)]
pub struct NetworkFactory {
    transport: Transport,
    reachability: Arc<Reachability>,
    held_back: Arc<HeldBackCommit>,
}

impl NetworkFactory {
    /// Connections over `transport` for the member whose log is on disk as far as `log_on_disk`
    /// says. `heartbeats` is sent a unit when a committed index held back from the followers
    /// (see [`capped_commit`]) can be sent: its receiver should trigger a heartbeat.
    pub fn new(transport: Transport, log_on_disk: Durability, heartbeats: tokio::sync::mpsc::UnboundedSender<()>) -> Self {
        let held_back = HeldBackCommit { log_on_disk, waiting: AtomicBool::new(false), heartbeats };
        Self { transport, reachability: Arc::default(), held_back: Arc::new(held_back) }
    }
}

/// The committed index a leader may send a follower: `leader_commit`, but no further than the
/// leader's own log is on disk. openraft counts the leader towards a quorum once its append is
/// acknowledged, which is before the fsync (`log_store`); a follower that applied an entry the
/// leader then lost in a crash would have shown a write no majority holds.
pub fn capped_commit(leader_commit: Option<LogId<NodeId>>, on_disk: Option<LogId<NodeId>>) -> Option<LogId<NodeId>> {
    match (leader_commit, on_disk) {
        (Some(commit), Some(on_disk)) if on_disk.index < commit.index => Some(on_disk),
        (Some(_), None) => None,
        (commit, _) => commit,
    }
}

/// Sends a committed index that [`capped_commit`] held back once the leader's log reaches it.
/// openraft sends a committed index only when it changes, so a held-back one would otherwise
/// wait for the next write or heartbeat (100 ms).
struct HeldBackCommit {
    log_on_disk: Durability,
    /// Whether a wait is under way (one at a time; the heartbeat it ends with carries the newest
    /// committed index, and is held back again if it must be).
    waiting: AtomicBool,
    heartbeats: tokio::sync::mpsc::UnboundedSender<()>,
}

impl HeldBackCommit {
    fn send_when_on_disk(self: &Arc<Self>, index: u64) {
        if self.waiting.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let reached = this.log_on_disk.wait_for(index).await.is_ok();
            this.waiting.store(false, Ordering::Release);
            if reached {
                let _ = this.heartbeats.send(());
            }
        });
    }
}

/// Which peers the last Raft RPC failed to reach, and since when. openraft retries a peer it
/// cannot reach every 500 ms (or at every heartbeat when calls time out) and logs each failure;
/// the server shows those at most once a minute (`shoal` binary's log filter), and says here,
/// once per change, that a member went away and when it came back.
#[derive(Default)]
struct Reachability {
    down_since: std::sync::Mutex<std::collections::HashMap<NodeId, std::time::Instant>>,
}

impl Reachability {
    fn failed(&self, target: NodeId, error: &CallError) {
        let mut down = self.down_since.lock().unwrap_or_else(|p| p.into_inner());
        if let std::collections::hash_map::Entry::Vacant(entry) = down.entry(target) {
            entry.insert(std::time::Instant::now());
            tracing::warn!(member = target, %error, "a member of the Raft group does not answer; retrying (repeats of openraft's own messages about it are logged at most once a minute)");
        }
    }

    fn answered(&self, target: NodeId, url: &str) {
        let mut down = self.down_since.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(since) = down.remove(&target) {
            tracing::info!(member = target, url, after_ms = since.elapsed().as_millis() as u64, "a member of the Raft group answers again");
        }
    }
}

/// A connection to one peer: its id and the base URL of its API.
pub struct PeerConnection {
    transport: Transport,
    reachability: Arc<Reachability>,
    held_back: Arc<HeldBackCommit>,
    target: NodeId,
    url: String,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerConnection {
        PeerConnection {
            transport: self.transport.clone(),
            reachability: Arc::clone(&self.reachability),
            held_back: Arc::clone(&self.held_back),
            target,
            url: node.addr.clone(),
        }
    }
}

impl PeerConnection {
    async fn rpc<Q, A, E>(&self, path: &str, request: &Q, option: &RPCOption) -> Result<A, RPCError<NodeId, BasicNode, E>>
    where
        Q: Serialize,
        A: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let answer: Result<A, E> = match self.transport.call_raft(&self.url, path, request, option.hard_ttl()).await {
            Ok(answer) => {
                self.reachability.answered(self.target, &self.url);
                answer
            }
            Err(error) => {
                self.reachability.failed(self.target, &error);
                return Err(match error {
                    CallError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&error)),
                    CallError::Failed { .. } | CallError::NotServed { .. } => RPCError::Network(NetworkError::new(&error)),
                });
            }
        };
        answer.map_err(|remote| RPCError::RemoteError(RemoteError::new(self.target, remote)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let wanted = rpc.leader_commit;
        let on_disk = &self.held_back.log_on_disk;
        let mut commit = capped_commit(wanted, on_disk.last_on_disk());
        if commit != wanted
            && rpc.entries.is_empty()
            && let Some(wanted) = wanted
        {
            // A message that only tells the committed index: the leader's fsync is under way, so
            // wait for it a little rather than send this one short and another after it.
            let _ = tokio::time::timeout(option.soft_ttl() / 2, on_disk.wait_for(wanted.index)).await;
            commit = capped_commit(Some(wanted), on_disk.last_on_disk());
        }
        if commit != wanted
            && let Some(wanted) = wanted
        {
            self.held_back.send_when_on_disk(wanted.index);
        }
        rpc.leader_commit = commit;
        self.rpc(paths::APPEND, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.rpc(paths::SNAPSHOT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.rpc(paths::VOTE, &rpc, &option).await
    }
}

/// Which Raft RPC a peer called.
#[derive(Clone, Copy, Debug)]
pub enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl Rpc {
    /// The RPC served at `path`, if any.
    pub fn from_path(path: &str) -> Option<Self> {
        match path {
            paths::APPEND => Some(Self::Append),
            paths::VOTE => Some(Self::Vote),
            paths::SNAPSHOT => Some(Self::Snapshot),
            _ => None,
        }
    }
}

/// Why a peer's Raft RPC got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The request does not decode: the caller's error (answered with 400).
    #[error("{0}")]
    BadRequest(String),
    /// This member cannot vouch for the entries yet (answered with 503; the leader retries).
    #[error("{0}")]
    Unavailable(String),
}

/// How long a follower waits for its log to reach the disk before it answers an AppendEntries
/// with an error instead (the leader gives up on the call after a heartbeat interval anyway).
const ON_DISK_WAIT: Duration = Duration::from_secs(1);

/// Serves a peer's Raft RPC: decodes the JSON request, hands it to this member's Raft and
/// encodes `Result<response, RaftError>` for the caller. An AppendEntries is answered only once
/// every entry the answer vouches for (those it carried, and the one it matched) is on this
/// member's disk, `log_on_disk`.
pub async fn serve(raft: &crate::Raft, log_on_disk: &Durability, rpc: Rpc, body: &[u8]) -> Result<Vec<u8>, ServeError> {
    fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, ServeError> {
        serde_json::to_vec(value).map_err(|e| ServeError::BadRequest(format!("encoding the answer: {e}")))
    }
    fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ServeError> {
        serde_json::from_slice(body).map_err(|e| ServeError::BadRequest(format!("decoding the request: {e}")))
    }
    let started = std::time::Instant::now();
    let answer = match rpc {
        Rpc::Append => {
            let request = decode::<AppendEntriesRequest<TypeConfig>>(body)?;
            let carried = request.entries.last().map(|entry| entry.log_id).or(request.prev_log_id);
            let answer = raft.append_entries(request).await;
            let vouched = match &answer {
                Ok(AppendEntriesResponse::Success) => carried,
                Ok(AppendEntriesResponse::PartialSuccess(matching)) => *matching,
                _ => None,
            };
            if let Some(vouched) = vouched {
                match tokio::time::timeout(ON_DISK_WAIT, log_on_disk.wait_for(vouched.index)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(message)) => return Err(ServeError::Unavailable(message)),
                    Err(_) => {
                        return Err(ServeError::Unavailable(format!(
                            "log entry {vouched} is not on this member's disk after {} ms",
                            ON_DISK_WAIT.as_millis()
                        )));
                    }
                }
            }
            encode(&answer)
        }
        Rpc::Vote => encode(&raft.vote(decode::<VoteRequest<NodeId>>(body)?).await),
        Rpc::Snapshot => encode(&raft.install_snapshot(decode::<InstallSnapshotRequest<TypeConfig>>(body)?).await),
    };
    tracing::debug!(?rpc, bytes = body.len(), micros = started.elapsed().as_micros() as u64, "served a peer's RPC");
    answer
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    #[test]
    fn a_leader_tells_a_committed_index_no_further_than_its_own_log_is_on_disk() {
        let id = |term, index| Some(LogId::new(CommittedLeaderId::new(term, 1), index));
        assert_eq!(capped_commit(id(2, 9), id(2, 7)), id(2, 7), "held back to what is on disk");
        assert_eq!(capped_commit(id(2, 9), id(1, 5)), id(1, 5), "an earlier term's entry is still the leader's log");
        assert_eq!(capped_commit(id(2, 7), id(2, 9)), id(2, 7));
        assert_eq!(capped_commit(id(2, 7), id(2, 7)), id(2, 7));
        assert_eq!(capped_commit(id(2, 7), None), None, "nothing on disk, nothing told");
        assert_eq!(capped_commit(None, id(2, 7)), None);
    }
}
