//! shoal-apiserver: the control plane's Kubernetes-shaped API over HTTPS.
//!
//! [`start`] opens the store (a Raft group over redb), creates or loads the cluster's
//! credentials, writes the admin kubeconfig, and serves the API until the shutdown token fires.

pub mod authz;
pub mod rbac;
pub mod serviceaccounts;
pub mod cluster;
pub mod error;
mod handlers;
pub mod metrics;
pub mod objects;
pub mod pki;
pub mod registry;
pub mod request;
pub mod services;
pub mod tokens;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
pub use shoal_store::history::HistoryLimits;
use shoal_store::{Store, StoreConfig};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use error::{Error, Result};
pub use pki::Credentials;

/// How to run the API server.
#[derive(Clone, Debug)]
pub struct ApiServerConfig {
    pub data_dir: PathBuf,
    /// `HOST:PORT` to listen on; port 0 picks a free port (the kubeconfig names the real one).
    pub api_addr: String,
    /// How much watch history to keep.
    pub watch_history: HistoryLimits,
    /// The built-in registry's limit on one artifact (all its blobs).
    pub registry_max_artifact_bytes: u64,
    /// The range Services' cluster IPs come from.
    pub service_cidr: services::Cidr,
    /// The host peers and clients reach this server at (default: the listen address, or
    /// 127.0.0.1 when that is unspecified). It is recorded in the group's membership.
    pub advertise_host: Option<String>,
    /// Join an existing cluster through this member instead of starting a new one.
    pub join: Option<JoinConfig>,
    /// For a new cluster: the server and node token secrets to use instead of random ones.
    pub presets: pki::Presets,
    /// Snapshot (and compact the Raft log) every this many entries (default 100,000).
    pub snapshot_every: Option<u64>,
    /// Log entries kept behind a snapshot for lagging peers (default 1,000).
    pub entries_kept_after_snapshot: Option<u64>,
}

/// Where and how a new server joins a cluster.
#[derive(Clone)]
pub struct JoinConfig {
    /// A member's API URL (`https://HOST:PORT`).
    pub url: String,
    /// The cluster's server token (`DATA_DIR/server-token` on a member).
    pub token: String,
}

impl std::fmt::Debug for JoinConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinConfig").field("url", &self.url).finish_non_exhaustive()
    }
}

/// Shared by every request.
pub struct AppState {
    pub store: Store,
    pub(crate) data_dir: PathBuf,
    pub credentials: Credentials,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    pub(crate) namespace_teardowns: Mutex<HashSet<String>>,
    pub(crate) registry: registry::Registry,
    /// For proxying to nodes' data planes (pod logs).
    pub(crate) http: reqwest::Client,
    /// For forwarding requests to another server (trusting only the cluster CA).
    pub(crate) peer_http: reqwest::Client,
    pub(crate) service_cidr: services::Cidr,
    /// Signs and checks ServiceAccount tokens.
    pub(crate) token_signer: serviceaccounts::Signer,
}

/// The body of an answer to [`ApiServer::call`] (a watch streams through it): the same type as
/// `shoal_client::in_process::Body`, spelled out because this crate does not depend on the client.
pub type CallBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A running API server.
pub struct ApiServer {
    pub local_addr: SocketAddr,
    pub credentials: Credentials,
    pub url: String,
    state: Arc<AppState>,
    router: Router,
}

impl ApiServer {
    /// The URL this process's own clients name the server by (loopback, whatever the listen
    /// address): their [`ApiServer::call`] stands for it.
    pub fn loopback_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.local_addr.port())
    }

    /// This server as a function call, for the clients in this process (controllers, the
    /// scheduler, the local node; `shoal_client::InProcess` wraps it): no TLS, no HTTP/2
    /// framing, no socket. Requests still carry their token and go through the same router as
    /// a remote client's.
    pub fn call(&self) -> impl Fn(http::Request<bytes::Bytes>) -> futures::future::BoxFuture<'static, http::Response<CallBody>> + Send + Sync + 'static {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let router = self.router.clone();
        move |request| {
            let router = router.clone();
            Box::pin(async move {
                let response = match router.oneshot(request.map(axum::body::Body::from)).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                response.map(|body| body.map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>).boxed_unsync())
            })
        }
    }

    /// Waits until every connection and background task has finished after shutdown, then
    /// closes the store.
    pub async fn wait(self) {
        self.state.shutdown.cancelled().await;
        self.state.tasks.close();
        self.state.tasks.wait().await;
        self.state.store.shutdown().await;
    }

    pub fn store(&self) -> &Store {
        &self.state.store
    }
}

fn tls_config(credentials: &Credentials) -> Result<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(credentials.server_cert_pem.as_bytes())
        .chain(CertificateDer::pem_slice_iter(credentials.ca_pem.as_bytes()))
        .collect::<std::result::Result<_, _>>()
        .map_err(Error::tls)?;
    let key = PrivateKeyDer::from_pem_slice(credentials.server_key_pem.as_bytes()).map_err(Error::tls)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(Error::tls)?
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .map_err(Error::tls)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Starts the API server; it runs until `shutdown` is cancelled (then call [`ApiServer::wait`]).
pub async fn start(config: ApiServerConfig, shutdown: CancellationToken) -> Result<ApiServer> {
    let listener = TcpListener::bind(&config.api_addr).await.map_err(|source| Error::Bind { addr: config.api_addr.clone(), source })?;
    let local_addr = listener.local_addr().map_err(|source| Error::Bind { addr: config.api_addr.clone(), source })?;
    let host = config.api_addr.rsplit_once(':').map(|(host, _)| host.trim_matches(['[', ']']).to_owned()).unwrap_or_default();
    let host = config.advertise_host.clone().unwrap_or(host);
    // A joining server takes the cluster's CA and tokens first, so that its serving certificate
    // comes from the same CA and every kubeconfig works against every server.
    let joining = match &config.join {
        Some(join) if !config.data_dir.join("pki").join("ca.key").exists() => {
            let shared = cluster::fetch_shared(&join.url, &join.token).await?;
            pki::install_shared(&config.data_dir, &shared)?;
            true
        }
        Some(_) => !config.data_dir.join("store").join("raft-log.redb").exists(),
        None => false,
    };
    // The serving certificate also names the `kubernetes` Service's cluster IP, which
    // in-cluster clients connect to (`KUBERNETES_SERVICE_HOST`).
    let credentials = pki::ensure(&config.data_dir, &[host.clone(), config.service_cidr.first().to_string()], &config.presets)?;
    let url_host = match host.as_str() {
        "" | "0.0.0.0" => "127.0.0.1".to_owned(),
        "::" => "[::1]".to_owned(),
        other if other.contains(':') => format!("[{other}]"),
        other => other.to_owned(),
    };
    let url = format!("https://{url_host}:{}", local_addr.port());

    let member_id = member_id(&config.data_dir, config.join.is_some())?;
    let mut store_config = StoreConfig::new(config.data_dir.join("store"), member_id, url.clone());
    store_config.history = config.watch_history.clone();
    store_config.bootstrap = config.join.is_none();
    if let Some(every) = config.snapshot_every {
        store_config.snapshot_every = every.max(1);
    }
    if let Some(kept) = config.entries_kept_after_snapshot {
        store_config.entries_kept_after_snapshot = kept;
    }
    store_config.ca_pem = Some(credentials.ca_pem.clone());
    store_config.server_token = credentials.server_token.clone();
    let store = Store::open(store_config).await?;
    let state = Arc::new(AppState {
        store,
        data_dir: config.data_dir.clone(),
        credentials: credentials.clone(),
        shutdown: shutdown.clone(),
        tasks: TaskTracker::new(),
        namespace_teardowns: Mutex::new(HashSet::new()),
        service_cidr: config.service_cidr,
        token_signer: serviceaccounts::Signer::from_pem(&credentials.service_account_key_pem).map_err(Error::Tls)?,
        http: reqwest::Client::builder().build().map_err(|e| Error::Tls(e.to_string()))?,
        peer_http: cluster::client_trusting(&credentials.ca_pem).map_err(Error::tls)?,
        registry: registry::Registry::new(&config.data_dir, config.registry_max_artifact_bytes)
            .map_err(|source| Error::Io { path: config.data_dir.join("registry-uploads"), source })?,
    });
    let router = Router::new()
        .route("/healthz", get(handlers::health))
        .route("/readyz", get(handlers::health))
        .route("/livez", get(handlers::health))
        .route("/version", get(handlers::version))
        .route("/openapi/v3", get(handlers::openapi_index))
        .route("/openapi/v3/{*group_version}", get(handlers::openapi_document))
        .route("/internal/{*rest}", axum::routing::any(cluster::internal))
        .fallback(handlers::api)
        .with_state(Arc::clone(&state));
    let acceptor = TlsAcceptor::from(Arc::new(tls_config(&credentials)?));
    let tasks = state.tasks.clone();
    // Serve before joining and bootstrapping: the group reaches a joining server through it.
    tasks.spawn(serve(listener, acceptor, router.clone(), shutdown, state.tasks.clone()));
    if joining && let Some(join) = &config.join {
        tracing::info!(member = member_id, through = %join.url, "joining the control-plane group");
        let member = shoal_store::MemberRequest { id: member_id, addr: url.clone() };
        cluster::request_membership(&join.url, &credentials.ca_pem, &credentials.server_token, &member).await?;
        tracing::info!(member = member_id, "joined the control-plane group");
    }
    let api_host = match url_host.trim_matches(['[', ']']) {
        "localhost" => "127.0.0.1".to_owned(),
        other => other.to_owned(),
    };
    if state.store.is_alone() {
        objects::bootstrap(&state, &api_host, local_addr.port()).await.map_err(|e| Error::Tls(format!("bootstrapping the cluster's objects: {e}")))?;
    } else {
        let metrics = state.store.raft_metrics();
        tracing::info!(leader = ?metrics.current_leader, state = ?metrics.state, voters = ?metrics.membership_config.membership().voter_ids().collect::<Vec<_>>(), "creating the cluster's bootstrap objects in the background");
        // A member of a larger group may start before a majority is up (a whole cluster
        // restarting): serve at once and create the bootstrap objects once the group can write.
        let state = Arc::clone(&state);
        let port = local_addr.port();
        state.tasks.clone().spawn(async move {
            loop {
                let attempt = async {
                    state.store.read_barrier().await.map_err(|e| e.to_string())?;
                    objects::bootstrap(&state, &api_host, port).await.map_err(|e| e.to_string())
                };
                let outcome = tokio::select! {
                    outcome = attempt => outcome,
                    _ = state.shutdown.cancelled() => return,
                };
                match outcome {
                    Ok(()) => return,
                    Err(error) => tracing::info!(%error, "the cluster's bootstrap objects wait for a writable group"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    _ = state.shutdown.cancelled() => return,
                }
            }
        });
    }
    pki::write_kubeconfig(&credentials, &url, &member_urls(&state.store, &url))?;
    state.tasks.clone().spawn(objects::keep_kubernetes_endpoints(Arc::clone(&state)));
    {
        // Keep the kubeconfig's list of servers current as members come and go.
        let state = Arc::clone(&state);
        let (credentials, url) = (credentials.clone(), url.clone());
        state.tasks.clone().spawn(async move {
            let mut written = member_urls(&state.store, &url);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    _ = state.shutdown.cancelled() => return,
                }
                let now = member_urls(&state.store, &url);
                if now != written {
                    match pki::write_kubeconfig(&credentials, &url, &now) {
                        Ok(()) => written = now,
                        Err(error) => tracing::warn!(%error, "rewriting the kubeconfig with the current servers"),
                    }
                }
            }
        });
    }
    tracing::info!(%url, member = member_id, "API server listening");
    Ok(ApiServer { local_addr, credentials, url, state, router })
}

/// The URLs of the group's members, this server's first.
fn member_urls(store: &Store, own: &str) -> Vec<String> {
    let mut urls = vec![own.to_owned()];
    for (_, addr) in store.members() {
        if !urls.contains(&addr) {
            urls.push(addr);
        }
    }
    urls
}

/// This server's member id in the control-plane group, kept in the data dir: 1 for the server
/// that starts a cluster, a random one for a joining server.
fn member_id(data_dir: &std::path::Path, joining: bool) -> Result<u64> {
    let path = data_dir.join("member-id");
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map_err(|_| Error::Io { path: path.clone(), source: std::io::Error::other("not a member id") }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let id = if joining { rand::random_range(2..=u64::from(u32::MAX)) } else { 1 };
            pki::write_private(&path, &id.to_string())?;
            Ok(id)
        }
        Err(source) => Err(Error::Io { path, source }),
    }
}

async fn serve(listener: TcpListener, acceptor: TlsAcceptor, router: Router, shutdown: CancellationToken, tasks: TaskTracker) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let tls = match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(%error, %peer, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(tls), TowerToHyperService::new(router));
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), connection).await;
                }
            }
        });
    }
}
