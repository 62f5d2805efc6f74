//! Raft transport between control-plane servers.
//!
//! A single-member group (the only shape `shoal server` creates today) never sends an RPC. The
//! authenticated HTTPS transport between servers belongs to the highly-available control plane
//! work; until then every peer is reported unreachable, so an attempt to replicate fails loudly
//! in the logs instead of silently.

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;

use crate::TypeConfig;

type NodeId = u64;

/// Creates connections to peers; see the module note.
#[derive(Clone, Default)]
pub struct NetworkFactory;

/// A connection to one peer.
pub struct PeerConnection {
    target: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> PeerConnection {
        PeerConnection { target }
    }
}

impl PeerConnection {
    fn unavailable<E: std::error::Error>(&self) -> RPCError<NodeId, BasicNode, E> {
        let error = std::io::Error::other(format!(
            "no transport to control-plane peer {}: multi-server groups are not supported by this build",
            self.target
        ));
        RPCError::Network(NetworkError::new(&error))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.unavailable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        Err(self.unavailable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.unavailable())
    }
}
