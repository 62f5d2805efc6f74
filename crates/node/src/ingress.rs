//! The ingress router: one HTTP and one HTTPS listener per node (`--ingress-addr`,
//! `--ingress-tls-addr`) serving `networking.k8s.io/v1` Ingresses of the `shoal` class (the
//! default class; Ingresses naming another class are left to its controller).
//!
//! - Hosts: exact hosts first, then wildcards (`*.example.com` matches one label), then rules
//!   without a host; then a `defaultBackend`; otherwise 404.
//! - Paths, across every Ingress of the chosen host: the longest match wins and, at equal length,
//!   `Exact` beats `Prefix`. `Prefix` matches whole path elements (`/foo` matches `/foo/bar`, not
//!   `/foobar`). `ImplementationSpecific` is treated as `Prefix`. Where two Ingresses declare the
//!   same host, path and type, the older one wins.
//! - TLS: certificates come from `kubernetes.io/tls` Secrets named in `spec.tls`, chosen by SNI,
//!   and are swapped in when the Secret changes, without a restart.
//! - Annotations: `shoal.dev/proxy-body-size` (a quantity of bytes, default `64Mi`; larger bodies
//!   get 413) and `shoal.dev/proxy-timeout-seconds` (default 60; a slower answer gets 504).
//! - Requests carry `X-Forwarded-For`, `-Proto` and `-Host`. A backend Service with no ready
//!   endpoint answers 503 with `Retry-After`.
//!
//! The route table is rebuilt from the informers on every change and swapped in whole, so
//! changes apply at once and open connections carry on.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use shoal_api::meta;
use shoal_client::informer::Informer;
use shoal_runtime_wasm::HttpError;

use crate::Shared;
use crate::proxy::{ProxyBody, text};

pub const BODY_SIZE_ANNOTATION: &str = "shoal.dev/proxy-body-size";
pub const TIMEOUT_ANNOTATION: &str = "shoal.dev/proxy-timeout-seconds";
const DEFAULT_BODY_LIMIT: u64 = 64 * 1024 * 1024;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathType {
    Exact,
    Prefix,
}

/// Where a matched request goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    pub namespace: String,
    pub service: String,
    /// The Service port, by number or by name.
    pub port: PortRef,
    pub body_limit: u64,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

#[derive(Debug, Clone)]
struct PathRule {
    path: String,
    kind: PathType,
    backend: Backend,
}

#[derive(Debug, Default)]
struct HostRules {
    paths: Vec<PathRule>,
    default: Option<Backend>,
}

/// The routes of every Ingress of this class, by host.
#[derive(Debug, Default)]
pub struct Routes {
    exact: HashMap<String, HostRules>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, HostRules>,
    any_host: HostRules,
    default: Option<Backend>,
}

fn backend_of(ingress: &Value, backend: &Value) -> Option<Backend> {
    let service = &backend["service"];
    let name = service["name"].as_str()?;
    let port = match (service["port"]["number"].as_u64(), service["port"]["name"].as_str()) {
        (Some(number), _) => PortRef::Number(u16::try_from(number).ok()?),
        (None, Some(name)) => PortRef::Name(name.to_owned()),
        _ => return None,
    };
    let annotations = &ingress["metadata"]["annotations"];
    let body_limit = annotations[BODY_SIZE_ANNOTATION].as_str().and_then(shoal_api::quantity::parse).map(|b| b.max(0.0) as u64).unwrap_or(DEFAULT_BODY_LIMIT);
    let timeout = annotations[TIMEOUT_ANNOTATION].as_str().and_then(|t| t.parse::<u64>().ok()).map(Duration::from_secs).unwrap_or(DEFAULT_TIMEOUT);
    Some(Backend { namespace: meta::namespace(ingress).to_owned(), service: name.to_owned(), port, body_limit, timeout })
}

fn normalized(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() { "/".into() } else { trimmed.to_owned() }
}

impl Routes {
    pub fn build(ingresses: &[Arc<Value>], classes: &[Arc<Value>]) -> Self {
        let mut ordered: Vec<&Arc<Value>> = ingresses.iter().filter(|i| shoal_api::ingress::served_by_shoal(i, classes) && i["metadata"]["deletionTimestamp"].is_null()).collect();
        ordered.sort_by(|a, b| (a["metadata"]["creationTimestamp"].as_str(), meta::name(a)).cmp(&(b["metadata"]["creationTimestamp"].as_str(), meta::name(b))));
        let mut routes = Self::default();
        for ingress in ordered {
            let ingress_default = backend_of(ingress, &ingress["spec"]["defaultBackend"]);
            if routes.default.is_none() {
                routes.default = ingress_default.clone();
            }
            for rule in ingress["spec"]["rules"].as_array().into_iter().flatten() {
                let host = rule["host"].as_str().unwrap_or_default().to_ascii_lowercase();
                let rules = if host.is_empty() {
                    &mut routes.any_host
                } else if let Some(suffix) = host.strip_prefix("*.") {
                    routes.wildcard.entry(suffix.to_owned()).or_default()
                } else {
                    routes.exact.entry(host).or_default()
                };
                if rules.default.is_none() {
                    rules.default = ingress_default.clone();
                }
                for path in rule["http"]["paths"].as_array().into_iter().flatten() {
                    let Some(backend) = backend_of(ingress, &path["backend"]) else { continue };
                    let kind = if path["pathType"] == "Exact" { PathType::Exact } else { PathType::Prefix };
                    let path = path["path"].as_str().filter(|p| !p.is_empty()).unwrap_or("/");
                    let path = if kind == PathType::Prefix { normalized(path) } else { path.to_owned() };
                    if !rules.paths.iter().any(|p| p.path == path && p.kind == kind) {
                        rules.paths.push(PathRule { path, kind, backend });
                    }
                }
            }
        }
        routes
    }

    /// The backend for `host` (without port) and `path`.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&Backend> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let wildcard = host.split_once('.').and_then(|(_, suffix)| self.wildcard.get(suffix));
        let candidates = [self.exact.get(&host), wildcard, Some(&self.any_host)];
        let mut host_default = None;
        for rules in candidates.into_iter().flatten() {
            if let Some(backend) = best_path(&rules.paths, path) {
                return Some(backend);
            }
            host_default = host_default.or(rules.default.as_ref());
        }
        host_default.or(self.default.as_ref())
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    let path = path.trim_end_matches('/');
    path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
}

fn best_path<'a>(paths: &'a [PathRule], path: &str) -> Option<&'a Backend> {
    paths
        .iter()
        .filter(|rule| match rule.kind {
            PathType::Exact => rule.path == path,
            PathType::Prefix => prefix_matches(&rule.path, path),
        })
        .max_by_key(|rule| (rule.path.len(), rule.kind == PathType::Exact))
        .map(|rule| &rule.backend)
}

/// Certificates by host from the Ingresses' `spec.tls` and their Secrets, chosen by SNI.
#[derive(Debug, Default)]
pub struct Certificates {
    by_host: RwLock<HashMap<String, Arc<rustls::sign::CertifiedKey>>>,
}

impl rustls::server::ResolvesServerCert for Certificates {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let name = hello.server_name()?.to_ascii_lowercase();
        let by_host = self.by_host.read().unwrap_or_else(|p| p.into_inner());
        by_host.get(&name).or_else(|| name.split_once('.').and_then(|(_, suffix)| by_host.get(&format!("*.{suffix}")))).cloned()
    }
}

fn certified_key(secret: &Value) -> Result<rustls::sign::CertifiedKey, String> {
    use base64::Engine;
    use rustls_pki_types::pem::PemObject;
    if secret["type"] != "kubernetes.io/tls" {
        return Err(format!("type is {}, not kubernetes.io/tls", secret["type"]));
    }
    let field = |name: &str| -> Result<Vec<u8>, String> {
        let encoded = secret["data"][name].as_str().ok_or_else(|| format!("{name} is missing"))?;
        base64::engine::general_purpose::STANDARD.decode(encoded).map_err(|_| format!("{name} is not base64"))
    };
    let chain: Vec<rustls_pki_types::CertificateDer<'static>> =
        rustls_pki_types::CertificateDer::pem_slice_iter(&field("tls.crt")?).collect::<Result<_, _>>().map_err(|_| "tls.crt is not PEM".to_owned())?;
    if chain.is_empty() {
        return Err("tls.crt holds no certificate".into());
    }
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(&field("tls.key")?).map_err(|_| "tls.key is not a PEM private key".to_owned())?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| format!("tls.key: {e}"))?;
    Ok(rustls::sign::CertifiedKey::new(chain, signer))
}

/// The ingress router's state, rebuilt from informers.
pub struct Router {
    routes: RwLock<Arc<Routes>>,
    pub certificates: Arc<Certificates>,
}

impl Router {
    pub fn new() -> Arc<Self> {
        Arc::new(Self { routes: RwLock::new(Arc::new(Routes::default())), certificates: Arc::new(Certificates::default()) })
    }

    pub fn routes(&self) -> Arc<Routes> {
        Arc::clone(&self.routes.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Follows Ingresses, IngressClasses and TLS Secrets (registered before they start).
    pub fn follow(self: &Arc<Self>, ingresses: &Arc<Informer>, classes: &Arc<Informer>, secrets: &Arc<Informer>) {
        let rebuild = {
            let (router, ingresses, classes, secrets) = (Arc::clone(self), Arc::clone(ingresses), Arc::clone(classes), Arc::clone(secrets));
            Arc::new(move || router.rebuild(&ingresses, &classes, &secrets))
        };
        for informer in [ingresses, classes] {
            let rebuild = Arc::clone(&rebuild);
            informer.on_change(Box::new(move |_, _| rebuild()));
        }
        secrets.on_change(Box::new(move |old, new| {
            if [old, new].into_iter().flatten().any(|s| s["type"] == "kubernetes.io/tls") {
                rebuild();
            }
        }));
    }

    fn rebuild(&self, ingresses: &Informer, classes: &Informer, secrets: &Informer) {
        let ingresses = ingresses.list();
        let classes = classes.list();
        let routes = Routes::build(&ingresses, &classes);
        let mut certificates = HashMap::new();
        for ingress in ingresses.iter().filter(|i| shoal_api::ingress::served_by_shoal(i, &classes)) {
            for tls in ingress["spec"]["tls"].as_array().into_iter().flatten() {
                let Some(secret_name) = tls["secretName"].as_str() else { continue };
                let Some(secret) = secrets.get_named(meta::namespace(ingress), secret_name) else { continue };
                match certified_key(&secret) {
                    Ok(key) => {
                        let key = Arc::new(key);
                        for host in tls["hosts"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                            certificates.entry(host.to_ascii_lowercase()).or_insert_with(|| Arc::clone(&key));
                        }
                    }
                    // The message names fields only, never their contents.
                    Err(problem) => tracing::warn!(ingress = meta::name(ingress), secret = secret_name, %problem, "skipping an unusable TLS Secret"),
                }
            }
        }
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(routes);
        *self.certificates.by_host.write().unwrap_or_else(|p| p.into_inner()) = certificates;
    }
}

/// Serves ingress traffic on `listener` until shutdown; with `tls`, over TLS (ALPN h2 and
/// http/1.1) with certificates chosen by SNI.
pub async fn serve(shared: Arc<Shared>, listener: tokio::net::TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) {
    while let Some((stream, peer)) = crate::proxy::next_connection(&listener, &shared.shutdown, "ingress").await {
        let connection_shared = Arc::clone(&shared);
        let tls = tls.clone();
        shared.reactors.serve(stream, &shared.tasks, move |stream| async move {
            let shared = connection_shared;
            match tls {
                Some(acceptor) => match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => serve_connection(shared, TokioIo::new(stream), peer, "https").await,
                    Ok(Err(error)) => tracing::debug!(%error, %peer, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                },
                None => serve_connection(shared, TokioIo::new(stream), peer, "http").await,
            }
        });
    }
}

/// Serves one ingress connection.
async fn serve_connection<I>(shared: Arc<Shared>, io: I, peer: SocketAddr, scheme: &'static str)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let router_shared = Arc::clone(&shared);
    crate::proxy::serve_http(&shared, io, move |request| {
        let shared = Arc::clone(&router_shared);
        async move { route(&shared, request, peer, scheme).await }
    })
    .await;
}

/// The request's host without port: the URI's authority (HTTP/2) or the Host header.
fn request_host(request: &Request<Incoming>) -> Option<String> {
    let authority = request.uri().authority().map(|a| a.as_str().to_owned()).or_else(|| request.headers().get(hyper::header::HOST)?.to_str().ok().map(str::to_owned))?;
    Some(crate::services::split_host_port(&authority).0.to_owned())
}

/// Bounds a streaming body: it fails once more than `limit` bytes have passed.
fn limited(body: ProxyBody, limit: u64) -> ProxyBody {
    let mut seen = 0u64;
    let limited = futures::StreamExt::map(http_body_util::BodyStream::new(body), move |frame| {
        let frame = frame?;
        if let Some(data) = frame.data_ref() {
            seen += data.len() as u64;
            if seen > limit {
                return Err(HttpError::HttpRequestBodySize(Some(seen)));
            }
        }
        Ok(frame)
    });
    http_body_util::StreamBody::new(limited).boxed_unsync()
}

async fn route(shared: &Arc<Shared>, request: Request<Incoming>, peer: SocketAddr, scheme: &'static str) -> Response<ProxyBody> {
    let Some(host) = request_host(&request) else { return text(StatusCode::BAD_REQUEST, "the request names no host\n") };
    let routes = shared.router.routes();
    let Some(backend) = routes.lookup(&host, request.uri().path()).cloned() else {
        return text(StatusCode::NOT_FOUND, format!("no Ingress rule for host {host:?} and path {:?}\n", request.uri().path()));
    };
    let declared = request.headers().get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > backend.body_limit) {
        return text(StatusCode::PAYLOAD_TOO_LARGE, format!("the request body is larger than this Ingress allows ({} bytes; annotation {BODY_SIZE_ANNOTATION})\n", backend.body_limit));
    }
    let Some(service) = shared.services.get(&backend.namespace, &backend.service) else {
        let mut response = text(StatusCode::SERVICE_UNAVAILABLE, format!("service {}/{} does not exist\n", backend.namespace, backend.service));
        response.headers_mut().insert(hyper::header::RETRY_AFTER, hyper::header::HeaderValue::from_static("5"));
        return response;
    };
    let port = match &backend.port {
        PortRef::Number(number) => service.ports.iter().find(|p| p.port == *number),
        PortRef::Name(name) => service.ports.iter().find(|p| &p.name == name),
    };
    let Some(port) = port.cloned() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, format!("service {}/{} has no port {:?}\n", backend.namespace, backend.service, backend.port));
    };
    let (mut parts, body) = request.into_parts();
    let client_ip: IpAddr = peer.ip();
    let forwarded_for = match parts.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(previous) => format!("{previous}, {client_ip}"),
        None => client_ip.to_string(),
    };
    let headers = &mut parts.headers;
    if let Ok(value) = forwarded_for.parse() {
        headers.insert("x-forwarded-for", value);
    }
    headers.insert("x-forwarded-proto", hyper::header::HeaderValue::from_static(scheme));
    if let Ok(value) = host.parse() {
        headers.insert("x-forwarded-host", value);
    }
    if !headers.contains_key(hyper::header::HOST)
        && let Ok(value) = host.parse()
    {
        headers.insert(hyper::header::HOST, value);
    }
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    parts.uri = path.parse().unwrap_or_else(|_| hyper::Uri::from_static("/"));
    // A declared length was checked above and hyper holds the body to it; only a chunked body
    // needs counting. (Keeping the exact size lets the proxy replay a small body on a retry.)
    let body = if hyper::body::Body::is_end_stream(&body) {
        http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync()
    } else if hyper::body::Body::size_hint(&body).exact().is_some() {
        body.map_err(HttpError::from).boxed_unsync()
    } else {
        limited(body.map_err(HttpError::from).boxed_unsync(), backend.body_limit)
    };
    let request = Request::from_parts(parts, body);
    match tokio::time::timeout(backend.timeout, crate::proxy::to_service(shared, &service, &port, request, Some(client_ip))).await {
        Ok(response) => response,
        Err(_) => text(StatusCode::GATEWAY_TIMEOUT, format!("the backend did not answer within {:?} (annotation {TIMEOUT_ANNOTATION})\n", backend.timeout)),
    }
}

/// The TLS acceptor of the HTTPS listener.
pub fn tls_acceptor(certificates: Arc<Certificates>) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports rustls's default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(certificates);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ingress(name: &str, created: &str, spec: Value) -> Arc<Value> {
        Arc::new(json!({"metadata": {"name": name, "namespace": "default", "creationTimestamp": created}, "spec": spec}))
    }

    fn path(path: &str, kind: &str, service: &str) -> Value {
        json!({"path": path, "pathType": kind, "backend": {"service": {"name": service, "port": {"number": 80}}}})
    }

    fn service_for<'a>(routes: &'a Routes, host: &str, request_path: &str) -> Option<&'a str> {
        routes.lookup(host, request_path).map(|b| b.service.as_str())
    }

    #[test]
    fn path_precedence_follows_kubernetes() {
        let routes = Routes::build(
            &[ingress("a", "2026-01-01T00:00:00Z", json!({"rules": [{"host": "shop.example.com", "http": {"paths": [
                path("/", "Prefix", "root"), path("/api", "Prefix", "api"), path("/api/v2", "Prefix", "v2"), path("/api", "Exact", "exact"), path("/foo/", "Prefix", "foo"), path("/x", "ImplementationSpecific", "impl"),
            ]}}]}))],
            &[],
        );
        assert_eq!(service_for(&routes, "shop.example.com", "/api"), Some("exact"));
        assert_eq!(service_for(&routes, "shop.example.com", "/api/"), Some("api"));
        assert_eq!(service_for(&routes, "shop.example.com", "/api/users"), Some("api"));
        assert_eq!(service_for(&routes, "shop.example.com", "/api/v2/x"), Some("v2"));
        assert_eq!(service_for(&routes, "shop.example.com", "/apix"), Some("root"), "prefixes match whole elements");
        assert_eq!(service_for(&routes, "shop.example.com", "/foo"), Some("foo"), "a trailing slash in the rule is ignored");
        assert_eq!(service_for(&routes, "shop.example.com", "/x/y"), Some("impl"));
        assert_eq!(service_for(&routes, "SHOP.example.com.", "/"), Some("root"));
        assert_eq!(service_for(&routes, "other.example.com", "/"), None);
    }

    #[test]
    fn hosts_wildcards_defaults_and_classes() {
        let routes = Routes::build(
            &[
                ingress("exact", "2026-01-01T00:00:00Z", json!({"rules": [{"host": "a.example.com", "http": {"paths": [path("/only", "Exact", "exact")]}}]})),
                ingress("wild", "2026-01-02T00:00:00Z", json!({"rules": [{"host": "*.example.com", "http": {"paths": [path("/", "Prefix", "wild")]}}]})),
                ingress("fallback", "2026-01-03T00:00:00Z", json!({"defaultBackend": {"service": {"name": "fallback", "port": {"number": 80}}}})),
                ingress("newer", "2026-01-04T00:00:00Z", json!({"rules": [{"host": "a.example.com", "http": {"paths": [path("/only", "Exact", "newer")]}}]})),
                ingress("other-class", "2026-01-05T00:00:00Z", json!({"ingressClassName": "nginx", "rules": [{"host": "n.other.org", "http": {"paths": [path("/", "Prefix", "nginx")]}}]})),
            ],
            &[],
        );
        assert_eq!(service_for(&routes, "a.example.com", "/only"), Some("exact"), "the older Ingress wins a conflict");
        assert_eq!(service_for(&routes, "a.example.com", "/elsewhere"), Some("wild"), "an exact host without a matching path falls to the wildcard");
        assert_eq!(service_for(&routes, "b.example.com", "/x"), Some("wild"));
        assert_eq!(service_for(&routes, "deep.b.example.com", "/x"), Some("fallback"), "a wildcard covers one label");
        assert_eq!(service_for(&routes, "n.other.org", "/"), Some("fallback"), "other classes are not served");
        let ours = [Arc::new(json!({"metadata": {"name": "edge"}, "spec": {"controller": shoal_api::ingress::CONTROLLER}}))];
        let routes = Routes::build(&[ingress("e", "2026-01-01T00:00:00Z", json!({"ingressClassName": "edge", "rules": [{"http": {"paths": [path("/", "Prefix", "edge")]}}]}))], &ours);
        assert_eq!(service_for(&routes, "anything", "/"), Some("edge"));
    }

    #[test]
    fn annotations_set_limits() {
        let mut object = json!({"metadata": {"name": "i", "namespace": "default", "annotations": {BODY_SIZE_ANNOTATION: "1Ki", TIMEOUT_ANNOTATION: "3"}}, "spec": {}});
        let backend = backend_of(&object, &json!({"service": {"name": "s", "port": {"name": "http"}}})).unwrap();
        assert_eq!((backend.body_limit, backend.timeout, backend.port), (1024, Duration::from_secs(3), PortRef::Name("http".into())));
        object["metadata"]["annotations"] = json!({});
        let backend = backend_of(&object, &json!({"service": {"name": "s", "port": {"number": 80}}})).unwrap();
        assert_eq!((backend.body_limit, backend.timeout), (DEFAULT_BODY_LIMIT, DEFAULT_TIMEOUT));
    }
}
