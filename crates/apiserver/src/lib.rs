//! shoal-apiserver: the control plane's Kubernetes-shaped API over HTTPS.
//!
//! [`start`] opens the store (a Raft group over redb), creates or loads the cluster's
//! credentials, writes the admin kubeconfig, and serves the API until the shutdown token fires.

pub mod error;
mod handlers;
pub mod objects;
pub mod pki;
pub mod registry;
pub mod request;
pub mod services;

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
}

/// Shared by every request.
pub struct AppState {
    pub store: Store,
    pub credentials: Credentials,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    pub(crate) namespace_teardowns: Mutex<HashSet<String>>,
    pub(crate) registry: registry::Registry,
    /// For proxying to nodes' data planes (pod logs).
    pub(crate) http: reqwest::Client,
    pub(crate) service_cidr: services::Cidr,
}

/// A running API server.
pub struct ApiServer {
    pub local_addr: SocketAddr,
    pub credentials: Credentials,
    pub url: String,
    state: Arc<AppState>,
}

impl ApiServer {
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
    let credentials = pki::ensure(&config.data_dir, std::slice::from_ref(&host))?;
    let url_host = match host.as_str() {
        "" | "0.0.0.0" => "127.0.0.1".to_owned(),
        "::" => "[::1]".to_owned(),
        other if other.contains(':') => format!("[{other}]"),
        other => other.to_owned(),
    };
    let url = format!("https://{url_host}:{}", local_addr.port());

    let mut store_config = StoreConfig::new(config.data_dir.join("store"), 1, url.clone());
    store_config.history = config.watch_history.clone();
    let store = Store::open(store_config).await?;
    let state = Arc::new(AppState {
        store,
        credentials: credentials.clone(),
        shutdown: shutdown.clone(),
        tasks: TaskTracker::new(),
        namespace_teardowns: Mutex::new(HashSet::new()),
        service_cidr: config.service_cidr,
        http: reqwest::Client::builder().build().map_err(|e| Error::Tls(e.to_string()))?,
        registry: registry::Registry::new(&config.data_dir, config.registry_max_artifact_bytes)
            .map_err(|source| Error::Io { path: config.data_dir.join("registry-uploads"), source })?,
    });
    let api_host = match url_host.trim_matches(['[', ']']) {
        "localhost" => "127.0.0.1".to_owned(),
        other => other.to_owned(),
    };
    objects::bootstrap(&state, &api_host, local_addr.port()).await.map_err(|e| Error::Tls(format!("bootstrapping the cluster's objects: {e}")))?;
    pki::write_kubeconfig(&credentials, &url)?;

    let router = Router::new()
        .route("/healthz", get(handlers::health))
        .route("/readyz", get(handlers::health))
        .route("/livez", get(handlers::health))
        .route("/version", get(handlers::version))
        .route("/openapi/v3", get(handlers::openapi_index))
        .route("/openapi/v3/{*group_version}", get(handlers::openapi_document))
        .fallback(handlers::api)
        .with_state(Arc::clone(&state));
    let acceptor = TlsAcceptor::from(Arc::new(tls_config(&credentials)?));
    let tasks = state.tasks.clone();
    tasks.spawn(serve(listener, acceptor, router, shutdown, state.tasks.clone()));
    tracing::info!(%url, "API server listening");
    Ok(ApiServer { local_addr, credentials, url, state })
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
