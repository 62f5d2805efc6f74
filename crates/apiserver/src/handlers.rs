//! The HTTP face of the API: authentication, routing, the REST verbs, watch streams, Tables
//! and discovery. Every failure leaves here as a Kubernetes `Status`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use shoal_api::admission::FieldValidation;
use shoal_api::resources::{self, RESOURCES, ResourceInfo};
use shoal_api::selector::{FieldSelector, LabelSelector};
use shoal_api::watch::{ObjectEvent, ObjectEvents, WantObjects};
use shoal_api::{ApiError, meta, table};
use shoal_store::{EventType, WatchError};

use crate::{AppState, authz, metrics};
use crate::objects::{self, DeleteOptions, PatchType, ScaleChange, UpdateScope, typed, with_type};
use crate::request::{self, MAX_BODY_BYTES, Query, Route, Target};

pub fn error_response(error: &ApiError) -> Response {
    let code = StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(code, &error.to_status())
}

/// The answer to a request that arrives while the server shuts down (on a connection opened
/// before): 429 with Retry-After, as kube-apiserver's `--shutdown-send-retry-after` answers.
/// Clients retry it; client-go resumes a watch from its resourceVersion, on the next server.
/// Serving it instead would start a watch that the shutdown ends at once, which client-go takes
/// for a broken watch and answers by listing everything again.
fn shutting_down() -> Response {
    let error = ApiError::new(429, "TooManyRequests", "the API server is shutting down, please try again later")
        .with_details(json!({"retryAfterSeconds": 1}));
    let mut response = error_response(&error);
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// One line of a watch stream.
#[derive(serde::Serialize)]
struct WatchLine<'a> {
    #[serde(rename = "type")]
    event_type: &'a str,
    object: objects::Typed<'a>,
}

/// A plain JSON watch line for `object` (with `apiVersion` and `kind` first, serialised from
/// the borrow), ending in a newline.
fn watch_line(event_type: &str, info: &ResourceInfo, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&WatchLine { event_type, object: typed(info, object) }).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// The answer to an applied write. The object's JSON is cut out of its watch event's shared
/// line (`{"type":"ADDED","object":` … `}` and a newline), so the answer and every plain JSON
/// watcher share one serialisation, whichever of them comes first.
fn written_response(code: StatusCode, info: &ResourceInfo, written: &objects::Written) -> Response {
    let Some((event_type, encoded)) = &written.encoded else { return json_response(code, &typed(info, &written.object)) };
    let line = encoded.get_or_init(|| watch_line(event_type, info, &written.object));
    let prefix = format!(r#"{{"type":"{event_type}","object":"#);
    let start = prefix.len();
    if line.len() < start + 2 || !line.starts_with(prefix.as_bytes()) || !line.ends_with(b"}\n") {
        return json_response(code, &typed(info, &written.object));
    }
    let mut response = Response::new(Body::from(line.slice(start..line.len() - 2)));
    *response.status_mut() = code;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn json_response(code: StatusCode, value: &impl serde::Serialize) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = code;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn with_warnings(mut response: Response, warnings: &[String]) -> Response {
    for warning in warnings {
        let text = format!("299 - \"{}\"", warning.replace('"', "'"));
        if let Ok(value) = HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    response
}

/// The request's bearer token, if it carries one.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&[u8]> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(|token| token.trim().as_bytes())
}

/// Whether the request carries a valid bearer token.
fn authenticated(state: &AppState, headers: &HeaderMap) -> bool {
    authz::identify(state, headers).is_some()
}

pub(crate) use shoal_api::token::constant_time_eq;

pub async fn version() -> Response {
    let (major, minor, _) = shoal_api::KUBERNETES_VERSION;
    json_response(
        StatusCode::OK,
        &json!({
            "major": major.to_string(),
            "minor": minor.to_string(),
            "gitVersion": git_version(),
            "gitCommit": "",
            "gitTreeState": "clean",
            "buildDate": "",
            "goVersion": "",
            "compiler": "rustc",
            "platform": format!("{}/{}", std::env::consts::OS, if std::env::consts::ARCH == "x86_64" { "amd64" } else { std::env::consts::ARCH }),
        }),
    )
}

/// The server's `gitVersion`, as `/version` reports it.
fn git_version() -> String {
    let (major, minor, patch) = shoal_api::KUBERNETES_VERSION;
    format!("v{major}.{minor}.{patch}+shoal.{}", env!("CARGO_PKG_VERSION"))
}

/// The OpenAPI v3 documents, generated once on first use (off the async workers) and served
/// from then on without copying.
async fn openapi_documents() -> Option<&'static shoal_api::openapi::OpenApi> {
    static DOCUMENTS: std::sync::OnceLock<shoal_api::openapi::OpenApi> = std::sync::OnceLock::new();
    if let Some(documents) = DOCUMENTS.get() {
        return Some(documents);
    }
    tokio::task::spawn_blocking(|| DOCUMENTS.get_or_init(|| shoal_api::openapi::generate(&git_version()))).await.ok()
}

/// `GET /openapi/v3`: the group versions and their documents' hashed URLs.
pub async fn openapi_index(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if !authenticated(&state, &headers) {
        return error_response(&ApiError::unauthorized());
    }
    let Some(documents) = openapi_documents().await else { return error_response(&ApiError::internal("generating the OpenAPI documents failed")) };
    let mut response = Response::new(Body::from(documents.index.as_slice()));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// `GET /openapi/v3/api/v1`, `/openapi/v3/apis/GROUP/VERSION`: one group version's document.
/// Asked for by its current `?hash=`, it may be cached for good, as kube-apiserver allows.
pub async fn openapi_document(State(state): State<Arc<AppState>>, uri: Uri, headers: HeaderMap) -> Response {
    if !authenticated(&state, &headers) {
        return error_response(&ApiError::unauthorized());
    }
    let path = uri.path().trim_start_matches("/openapi/v3/").trim_end_matches('/').to_owned();
    let requested_hash = uri.query().into_iter().flat_map(|q| q.split('&')).find_map(|pair| pair.strip_prefix("hash=")).map(str::to_owned);
    let Some(documents) = openapi_documents().await else { return error_response(&ApiError::internal("generating the OpenAPI documents failed")) };
    let Some(document) = documents.documents.get(&path) else { return error_response(&ApiError::path_not_found()) };
    let (body, hash) = (document.body.as_slice(), &document.hash);
    let etag = format!("\"{hash}\"");
    let cache = if requested_hash.as_deref() == Some(hash.as_str()) { "public, immutable, max-age=31536000" } else { "no-cache, private" };
    if headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        return response;
    }
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    response
}

pub async fn health() -> &'static str {
    "ok"
}

/// Everything under `/api` and `/apis`.
pub async fn api(State(state): State<Arc<AppState>>, method: Method, uri: Uri, headers: HeaderMap, wants_objects: Option<axum::Extension<WantObjects>>, body: Body) -> Response {
    let wants_objects = wants_objects.is_some();
    if uri.path() == "/v2" || uri.path().starts_with("/v2/") {
        return crate::registry::handle(state, method, uri, headers, body).await;
    }
    let Some(identity) = authz::identify(&state, &headers) else { return error_response(&ApiError::unauthorized()) };
    let identity = match authz::impersonate(identity, &headers, &*state) {
        Ok(identity) => identity,
        Err(denied) => return error_response(&denied),
    };
    // Writes of RBAC objects check the requester's own permissions (no escalation).
    authz::REQUESTER.scope(identity.clone(), serve_api(state, method, uri, headers, wants_objects, body, identity)).await
}

/// An authenticated request under `/api` and `/apis`, as `identity`.
async fn serve_api(state: Arc<AppState>, method: Method, uri: Uri, headers: HeaderMap, wants_objects: bool, body: Body, identity: authz::Identity) -> Response {
    if state.shutdown.is_cancelled() {
        return shutting_down();
    }
    let body = match http_body_util::Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            if error.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                return error_response(&ApiError::too_large(format!("the request body exceeds the limit of {MAX_BODY_BYTES} bytes")));
            }
            return error_response(&ApiError::bad_request(format!("reading the request body: {error}")));
        }
    };
    if let Some(kind) = authz::review_kind(uri.path()) {
        let answer = request::decode_body(&headers, &body).and_then(|object| authz::review(&identity, kind, &method, object, &*state));
        return match answer {
            Ok(answer) => json_response(StatusCode::CREATED, &answer),
            Err(error) => error_response(&error),
        };
    }
    let query = Query::parse(uri.query());
    if let Some(target) = metrics::target(uri.path()) {
        let verb = if target.name.is_some() { "get" } else { "list" };
        let attributes = authz::Attributes {
            verb: verb.into(),
            group: metrics::GROUP.into(),
            resource: target.plural().into(),
            subresource: String::new(),
            namespace: target.namespace.clone().unwrap_or_default(),
            name: target.name.clone().unwrap_or_default(),
            field_selector: query.get("fieldSelector").unwrap_or_default().to_owned(),
        };
        let answer = match authz::authorize(&identity, &attributes, &*state) {
            Ok(()) => metrics::serve(&state, &method, &target, &query).await,
            Err(denied) => Err(denied),
        };
        return match answer {
            Ok(answer) => json_response(StatusCode::OK, &answer),
            Err(error) => error_response(&error),
        };
    }
    let route = request::route(uri.path());
    if let Ok(Route::Resource(target)) = &route
        && let Err(denied) = authorize(&state, &identity, &method, &headers, &query, target, &body).await
    {
        return error_response(&denied);
    }
    let result = match route {
        Ok(Route::Discovery { group: None, version: None, legacy_core }) if method == Method::GET && let Some(version) = aggregated_discovery_version(&headers) => {
            Ok(aggregated_discovery(legacy_core, version))
        }
        Ok(Route::Discovery { group, version, legacy_core }) if method == Method::GET => discovery(group, version, legacy_core),
        Ok(Route::Discovery { .. }) => Err(ApiError::method_not_allowed(method.as_str())),
        // Services get their cluster IP and node ports from the stored Services under a lock:
        // in a group of servers, only the leader allocates, so that two servers never hand out
        // the same address at once.
        Ok(Route::Resource(target))
            if target.info.plural == "services" && matches!(method, Method::POST | Method::PUT | Method::PATCH) && !state.store.is_alone() =>
        {
            match state.store.leader() {
                Some((leader, _)) if leader == state.store.id() => resource(&state, &method, &headers, &query, target, &body, wants_objects).await,
                Some((_, url)) => forward(&state, &url, &method, &uri, &headers, body).await,
                None => Err(ApiError::unavailable("the control plane has no leader right now; Services are allocated by the leader")),
            }
        }
        Ok(Route::Resource(target)) => resource(&state, &method, &headers, &query, target, &body, wants_objects).await,
        Err(error) => Err(error),
    };
    match result {
        Ok(response) => response,
        Err(error) => error_response(&error),
    }
}

/// Whether `identity` may make this request on a resource (`authz`). A node's own credential
/// is judged by the name of the object it creates, too, and by the pods bound to it: a server
/// that has not yet applied a pod's binding catches up to the leader before it refuses.
async fn authorize(state: &AppState, identity: &authz::Identity, method: &Method, headers: &HeaderMap, query: &Query, target: &Target, body: &Bytes) -> Result<(), ApiError> {
    if *identity == authz::Identity::Admin {
        return Ok(());
    }
    let mut attributes = authz::Attributes::of(method, target, query.flag("watch"), query.get("fieldSelector"));
    if !matches!(identity, authz::Identity::Node(_)) {
        return authz::authorize(identity, &attributes, state);
    }
    if *method == Method::POST && attributes.name.is_empty() {
        attributes.name = request::decode_body(headers, body)?["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    }
    if authz::authorize(identity, &attributes, state).is_ok() {
        return Ok(());
    }
    state.store.read_barrier().await.map_err(objects::store_error)?;
    authz::authorize(identity, &attributes, state)
}

/// Sends the request as it came to the server at `url` (the leader) and relays the answer.
async fn forward(state: &AppState, url: &str, method: &Method, uri: &Uri, headers: &HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let path_and_query = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let mut request = state.peer_http.request(method.clone(), format!("{}{path_and_query}", url.trim_end_matches('/'))).body(body);
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT, header::USER_AGENT, header::HeaderName::from_static("impersonate-user"), header::HeaderName::from_static("impersonate-group")] {
        for value in headers.get_all(&name) {
            request = request.header(name.clone(), value);
        }
    }
    let answer = request.send().await.map_err(|e| ApiError::unavailable(format!("forwarding to the leader at {url}: {e}")))?;
    let code = answer.status();
    let mut relayed_headers = HeaderMap::new();
    for name in [header::CONTENT_TYPE, header::WARNING] {
        for value in answer.headers().get_all(&name) {
            relayed_headers.append(name.clone(), value.clone());
        }
    }
    let bytes = answer.bytes().await.map_err(|e| ApiError::unavailable(format!("forwarding to the leader at {url}: {e}")))?;
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = code;
    *response.headers_mut() = relayed_headers;
    Ok(response)
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|accept| {
        accept.split(',').next().is_some_and(|first| first.contains("as=Table"))
    })
}

/// `wants_objects`: an in-process caller takes watch events as objects (`WantObjects`).
async fn resource(state: &Arc<AppState>, method: &Method, headers: &HeaderMap, query: &Query, target: Target, body: &Bytes, wants_objects: bool) -> Result<Response, ApiError> {
    let info = target.info;
    let namespace = target.namespace.as_deref();
    let validation = FieldValidation::parse(query.get("fieldValidation"))?;
    let dry_run = query.dry_run()?;
    let scope = match target.subresource.as_deref() {
        Some("status") => UpdateScope::Status,
        _ => UpdateScope::Main,
    };
    // Reads are linearizable (a no-op on a single server): a follower first catches up to the
    // leader's commit point. So do writes, which read the current object (no-op detection,
    // patches, defaults from the old object), and watches, so that a server cut off from the
    // group (partitioned, or removed) refuses new watches instead of serving silence and its
    // clients move to another server. Only a `resourceVersion=0` read asks for any state.
    let any_state = *method == Method::GET && query.get("resourceVersion") == Some("0") && !query.flag("watch");
    if !any_state {
        state.store.read_barrier().await.map_err(objects::store_error)?;
    }
    if target.subresource.as_deref() == Some("log") {
        return match (method.clone(), target.name.as_deref()) {
            (Method::GET, Some(name)) => pod_log(state, namespace.unwrap_or("default"), name, query).await,
            (other, _) => Err(ApiError::method_not_allowed(other.as_str())),
        };
    }
    if target.subresource.as_deref() == Some("token") {
        return match (method.clone(), target.name.as_deref()) {
            (Method::POST, Some(name)) => {
                let account = objects::get(state, info, namespace, name)?;
                let request = request::decode_body(headers, body)?;
                let node = crate::authz::REQUESTER.try_with(|identity| match identity {
                    crate::authz::Identity::Nodes => Some(None),
                    crate::authz::Identity::Node(node) => Some(Some(node.clone())),
                    _ => None,
                });
                if let Ok(Some(node)) = node {
                    let pod_name = request["spec"]["boundObjectRef"]["name"].as_str().unwrap_or_default();
                    let pod = state.store.get_shared(&shoal_store::ObjectKey::new("pods", namespace.unwrap_or("default"), pod_name)).map_err(objects::store_error)?;
                    crate::serviceaccounts::node_may_request(node.as_deref(), &account, &request, pod.as_deref()).map_err(|reason| {
                        ApiError::forbidden(format!("serviceaccounts \"{name}\" is forbidden: {reason}"))
                    })?;
                }
                let answer = crate::serviceaccounts::token_request(&state.token_signer, &account, request, &**state, jiff::Timestamp::now())?;
                Ok(json_response(StatusCode::CREATED, &answer))
            }
            (other, _) => Err(ApiError::method_not_allowed(other.as_str())),
        };
    }
    if target.subresource.as_deref() == Some("binding") {
        return match (method.clone(), target.name.as_deref()) {
            (Method::POST, Some(name)) => {
                let binding = request::decode_body(headers, body)?;
                let bound = objects::bind(state, namespace.unwrap_or("default"), name, &binding, dry_run).await?;
                Ok(json_response(StatusCode::CREATED, &bound))
            }
            (other, _) => Err(ApiError::method_not_allowed(other.as_str())),
        };
    }
    if target.subresource.as_deref() == Some("scale") {
        let Some(name) = target.name.as_deref() else { return Err(ApiError::path_not_found()) };
        return match method.clone() {
            Method::GET => Ok(json_response(StatusCode::OK, &objects::scale_of(&objects::get(state, info, namespace, name)?))),
            Method::PUT => {
                let scale = request::decode_body(headers, body)?;
                Ok(json_response(StatusCode::OK, &objects::update_scale(state, info, namespace, name, ScaleChange::Replace(&scale), dry_run).await?))
            }
            Method::PATCH => {
                let patch_type = match request::content_type(headers).as_str() {
                    "application/merge-patch+json" | "application/strategic-merge-patch+json" => PatchType::Merge,
                    "application/json-patch+json" => PatchType::Json,
                    other => return Err(ApiError::unsupported_media_type(format!("the patch content type {other:?} is not supported on the scale subresource"))),
                };
                let patch = request::decode_body(headers, body)?;
                Ok(json_response(StatusCode::OK, &objects::update_scale(state, info, namespace, name, ScaleChange::Patch(patch_type, &patch), dry_run).await?))
            }
            other => Err(ApiError::method_not_allowed(other.as_str())),
        };
    }
    match (method.clone(), target.name.as_deref()) {
        (Method::GET, None) if query.flag("watch") => watch(state, headers, query, info, namespace, wants_objects),
        (Method::GET, None) => list(state, headers, query, info, namespace),
        (Method::GET, Some(name)) => {
            let object = with_type(info, objects::get(state, info, namespace, name)?);
            if wants_table(headers) {
                let include = IncludeObject::parse(query)?;
                return Ok(json_response(StatusCode::OK, &table_of(info, std::slice::from_ref(&object), meta::resource_version(&object).unwrap_or(0), true, include)));
            }
            Ok(json_response(StatusCode::OK, &object))
        }
        (Method::POST, None) => {
            if info.namespaced && namespace.is_none() {
                return Err(ApiError::method_not_allowed("POST"));
            }
            let object = request::decode_body(headers, body)?;
            let written = objects::create(state, info, namespace, object, validation, dry_run).await?;
            Ok(with_warnings(written_response(StatusCode::CREATED, info, &written), &written.warnings))
        }
        (Method::PUT, Some(name)) => {
            let desired = request::decode_body(headers, body)?;
            let current = objects::get(state, info, namespace, name)?;
            let precondition = shoal_store::command::Precondition { resource_version: meta::resource_version(&desired), uid: None };
            let mut desired = desired;
            if scope == UpdateScope::Main {
                shoal_api::apply::record_update(info.kind, &current, &mut desired, &field_manager(query, headers), &info.api_version(), &objects::now());
            }
            let written = objects::update(state, info, namespace, name, &current, desired, scope, precondition, validation, dry_run).await?;
            Ok(with_warnings(written_response(StatusCode::OK, info, &written), &written.warnings))
        }
        (Method::PATCH, Some(name)) => {
            let patch_type = match request::content_type(headers).as_str() {
                "application/merge-patch+json" => PatchType::Merge,
                "application/json-patch+json" => PatchType::Json,
                "application/strategic-merge-patch+json" => PatchType::Strategic,
                "application/apply-patch+yaml" => {
                    if scope != UpdateScope::Main {
                        return Err(ApiError::unsupported_media_type("server-side apply is served on the main resource, not on subresources"));
                    }
                    let Some(manager) = query.get("fieldManager").filter(|m| !m.is_empty()) else {
                        return Err(ApiError::bad_request("fieldManager is required for apply requests"));
                    };
                    let config = request::decode_body(headers, body)?;
                    let (written, created) = objects::server_side_apply(state, info, namespace, name, config, manager, query.flag("force"), validation, dry_run).await?;
                    let code = if created { StatusCode::CREATED } else { StatusCode::OK };
                    return Ok(with_warnings(written_response(code, info, &written), &written.warnings));
                }
                other => return Err(ApiError::unsupported_media_type(format!("the patch content type {other:?} is not supported; use application/apply-patch+yaml, application/strategic-merge-patch+json, application/merge-patch+json or application/json-patch+json"))),
            };
            let patch = request::decode_body(headers, body)?;
            let manager = field_manager(query, headers);
            let written = objects::patch(state, info, namespace, name, patch_type, &patch, scope, &manager, validation, dry_run).await?;
            Ok(with_warnings(written_response(StatusCode::OK, info, &written), &written.warnings))
        }
        (Method::DELETE, Some(name)) => {
            let body_value = if body.is_empty() { json!({}) } else { request::decode_body(headers, body)? };
            let mut options = DeleteOptions::from_body(&body_value)?;
            if let Some(grace) = query.number("gracePeriodSeconds")? {
                options.grace_period_seconds = Some(grace);
            }
            if let Some(policy) = query.get("propagationPolicy") {
                options.propagation_policy = Some(policy.to_owned());
            }
            options.dry_run |= dry_run;
            let deleted = objects::delete(state, info, namespace, name, &options).await?;
            Ok(json_response(StatusCode::OK, &with_type(info, deleted)))
        }
        (other, _) => Err(ApiError::method_not_allowed(other.as_str())),
    }
}

/// `pods/{name}/log`: proxied to the data plane of the pod's node, with the node token.
async fn pod_log(state: &Arc<AppState>, namespace: &str, name: &str, query: &Query) -> Result<Response, ApiError> {
    let pods = resources::by_name("pods").expect("pods are served");
    let nodes = resources::by_name("nodes").expect("nodes are served");
    let pod = objects::get(state, pods, Some(namespace), name)?;
    let Some(node_name) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else {
        return Err(ApiError::bad_request(format!("pod {name} is not scheduled to a node yet; it has no logs")));
    };
    let node = objects::get(state, nodes, None, node_name)?;
    let Some(data_addr) = node["metadata"]["annotations"]["shoal.dev/data-addr"].as_str() else {
        return Err(ApiError::unavailable(format!("node {node_name} has not published its data-plane address")));
    };
    let mut forwarded = Vec::new();
    for key in ["container", "follow", "tailLines", "timestamps", "sinceSeconds", "limitBytes", "previous"] {
        if let Some(value) = query.get(key) {
            forwarded.push((key, value.to_owned()));
        }
    }
    let response = state
        .http
        .get(format!("http://{data_addr}/_logs/{namespace}/{name}"))
        .query(&forwarded)
        .bearer_auth(&state.credentials.node_token)
        .send()
        .await
        .map_err(|e| ApiError::unavailable(format!("cannot reach node {node_name} at {data_addr}: {e}")))?;
    let status = response.status().as_u16();
    if status != 200 {
        let text = response.text().await.unwrap_or_default();
        return Err(ApiError::new(status, if status == 404 { "NotFound" } else { "BadRequest" }, text.trim().to_owned()));
    }
    let stream = response.bytes_stream();
    let mut reply = Response::new(Body::from_stream(stream));
    reply.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(reply)
}

/// Label and field selectors from the query, checked against the kind.
fn selectors(query: &Query, info: &ResourceInfo) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or_default())?;
    let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or_default(), info.kind)?;
    Ok((labels, fields))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    #[serde(rename = "rv")]
    revision: u64,
    #[serde(rename = "start")]
    start_after: String,
}

fn list(state: &Arc<AppState>, headers: &HeaderMap, query: &Query, info: &'static ResourceInfo, namespace: Option<&str>) -> Result<Response, ApiError> {
    let (labels, fields) = selectors(query, info)?;
    let limit = query.number("limit")?.filter(|l| *l > 0).map(|l| l as usize);
    let start_after = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            use base64::Engine;
            let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(token)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<ContinueToken>(&bytes).ok())
                .ok_or_else(|| ApiError::bad_request("the provided continue parameter is not valid"))?;
            Some(decoded.start_after)
        }
        None => None,
    };
    let filter = |object: &Value| labels.matches(meta::labels(object)) && fields.matches(object);
    let listed = state
        .store
        .list(&info.group_resource(), namespace, start_after.as_deref(), limit, &filter)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let items: Vec<Value> = listed.items.into_iter().map(|o| with_type(info, o)).collect();
    if wants_table(headers) {
        let mut table = table_of(info, &items, listed.revision, true, IncludeObject::parse(query)?);
        if let Some(next) = &listed.continue_after {
            table["metadata"]["continue"] = json!(encode_continue(listed.revision, next));
        }
        return Ok(json_response(StatusCode::OK, &table));
    }
    let mut metadata = json!({"resourceVersion": listed.revision.to_string()});
    if let Some(next) = &listed.continue_after {
        metadata["continue"] = json!(encode_continue(listed.revision, next));
    }
    Ok(json_response(StatusCode::OK, &json!({"kind": info.list_kind(), "apiVersion": info.api_version(), "metadata": metadata, "items": items})))
}

fn encode_continue(revision: u64, start_after: &str) -> String {
    use base64::Engine;
    let token = serde_json::to_vec(&ContinueToken { revision, start_after: start_after.to_owned() }).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token)
}

/// What each row of a Table carries besides its cells (`includeObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IncludeObject {
    /// Nothing.
    None,
    /// The object's metadata, as a `PartialObjectMetadata` (kube-apiserver's default).
    Metadata,
    /// The whole object: what kubectl asks for to sort by a field outside metadata
    /// (`--sort-by=.lastTimestamp`).
    Object,
}

impl IncludeObject {
    fn parse(query: &Query) -> Result<Self, ApiError> {
        match query.get("includeObject").filter(|v| !v.is_empty()) {
            None | Some("Metadata") => Ok(Self::Metadata),
            Some("None") => Ok(Self::None),
            Some("Object") => Ok(Self::Object),
            Some(other) => Err(ApiError::bad_request(format!("includeObject must be None, Metadata or Object, not {other:?}"))),
        }
    }
}

/// A `meta.k8s.io/v1` Table of `objects`.
fn table_of(info: &ResourceInfo, objects: &[Value], revision: u64, with_definitions: bool, include: IncludeObject) -> Value {
    let now = jiff::Timestamp::now();
    let columns = table::columns(info);
    let definitions: Vec<Value> = columns
        .iter()
        .map(|c| {
            let name = title_case(c.name);
            json!({"name": name, "type": "string", "format": if c.name == "NAME" { "name" } else { "" }, "description": "", "priority": c.priority})
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let mut row = json!({"cells": table::row(info, object, now)});
            match include {
                IncludeObject::None => {}
                IncludeObject::Metadata => {
                    row["object"] = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": object["metadata"].clone()});
                }
                IncludeObject::Object => row["object"] = object.clone(),
            }
            row
        })
        .collect();
    let mut table = json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": revision.to_string()}, "rows": rows});
    if with_definitions {
        table["columnDefinitions"] = Value::Array(definitions);
    }
    table
}

/// `UP-TO-DATE` → `Up-to-date`, as kube-apiserver names its columns (kubectl upper-cases them).
fn title_case(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    let mut characters = lower.chars();
    match characters.next() {
        Some(first) => first.to_ascii_uppercase().to_string() + characters.as_str(),
        None => String::new(),
    }
}

/// The watch stream: chunked JSON lines, one event each.
fn watch(state: &Arc<AppState>, headers: &HeaderMap, query: &Query, info: &'static ResourceInfo, namespace: Option<&str>, wants_objects: bool) -> Result<Response, ApiError> {
    let (labels, fields) = selectors(query, info)?;
    let as_table = wants_table(headers);
    let include = IncludeObject::parse(query)?;
    let bookmarks = query.flag("allowWatchBookmarks");
    let timeout = match query.number("timeoutSeconds")? {
        Some(seconds) if seconds > 0 => Duration::from_secs(seconds as u64),
        // kube-apiserver holds watches without a timeout for 30 to 60 minutes.
        _ => Duration::from_secs(1800 + rand::random_range(0..1800)),
    };
    let resource = info.group_resource();
    let namespace = namespace.map(str::to_owned);
    let requested = query.get("resourceVersion").filter(|rv| !rv.is_empty()).map(str::to_owned);
    let matches = move |object: &Value| labels.matches(meta::labels(object)) && fields.matches(object);

    // Where the stream starts: after the given revision, or after an initial listing sent as
    // ADDED events when none (or "0") is given.
    let mut initial = Vec::new();
    let start = match requested.as_deref() {
        None | Some("0") => {
            let listed = state
                .store
                .list(&resource, namespace.as_deref(), None, None, &|o| matches(o))
                .map_err(|e| ApiError::internal(e.to_string()))?;
            initial = listed.items;
            listed.revision
        }
        Some(text) => text.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid resource version: {text}")))?,
    };
    let watcher = state.store.watch(start).map(|w| w.only(resource.clone()));
    // In-process callers that asked for objects get the stored ones, shared; everyone else JSON
    // lines (or Table rows) in the body.
    let (out, body, object_events) = if wants_objects && !as_table {
        let (sender, receiver) = tokio::sync::mpsc::channel::<ObjectEvent>(64);
        (WatchOut::Objects(sender), Body::empty(), Some(ObjectEvents::new(Box::pin(received(receiver)))))
    } else {
        let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
        (WatchOut::Lines(sender), Body::from_stream(received(receiver)), None)
    };
    let shutdown = state.shutdown.clone();
    let mut in_step = state.store.in_step();
    state.tasks.spawn(async move {
        let encode = |event_type: &str, object: Value| -> Bytes {
            let object = if as_table { table_of(info, std::slice::from_ref(&object), meta::resource_version(&object).unwrap_or(0), true, include) } else { object };
            let mut line = serde_json::to_vec(&json!({"type": event_type, "object": object})).unwrap_or_default();
            line.push(b'\n');
            Bytes::from(line)
        };
        let mut watcher = match watcher {
            Ok(watcher) => watcher,
            Err(WatchError::Expired { requested, oldest }) => {
                out.send("ERROR", expired(requested, oldest), &encode).await;
                return;
            }
        };
        for object in initial {
            if !out.send("ADDED", with_type(info, object), &encode).await {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut bookmark_timer = tokio::time::interval(Duration::from_secs(60));
        bookmark_timer.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = shutdown.cancelled() => return,
                // Cut off from the group, this server ends its watches so that their clients
                // resume from another server instead of hearing silence.
                changed = in_step.changed() => {
                    if changed.is_err() || !*in_step.borrow() {
                        return;
                    }
                }
                _ = out.closed() => return,
                _ = bookmark_timer.tick(), if bookmarks => {
                    let revision = watcher.last_revision();
                    let bookmark = json!({"kind": info.kind, "apiVersion": info.api_version(), "metadata": {"resourceVersion": revision.to_string(), "annotations": {"k8s.io/initial-events-end": "false"}}});
                    if !out.send("BOOKMARK", bookmark, &encode).await {
                        return;
                    }
                }
                batch = watcher.next_batch() => {
                    let events = match batch {
                        Ok(events) => events,
                        Err(WatchError::Expired { requested, oldest }) => {
                            out.send("ERROR", expired(requested, oldest), &encode).await;
                            return;
                        }
                    };
                    for event in events {
                        if event.key.resource != resource || namespace.as_deref().is_some_and(|ns| ns != event.key.namespace) {
                            continue;
                        }
                        // A modification that moves the object out of (into) the selection is
                        // a DELETED (ADDED) for this watch; DELETED carries the object as it
                        // was, at the event's revision.
                        let now = matches(&event.object);
                        let before = match (&event.event_type, &event.previous) {
                            (EventType::Modified, Some(previous)) => matches(previous),
                            _ => now,
                        };
                        // The event type this watch reports, and whether it is the event's own
                        // (whose JSON line all plain watchers share).
                        let (event_type, own) = match (before, now) {
                            (false, false) => continue,
                            (false, true) => ("ADDED", false),
                            (true, false) => {
                                let mut previous = event.previous.as_deref().cloned().unwrap_or_else(|| Value::clone(&event.object));
                                if let Some(metadata) = previous.get_mut("metadata").and_then(Value::as_object_mut) {
                                    metadata.insert("resourceVersion".into(), json!(event.revision.to_string()));
                                }
                                if !out.send("DELETED", with_type(info, previous), &encode).await {
                                    return;
                                }
                                continue;
                            }
                            (true, true) => (event.event_type.as_str(), true),
                        };
                        let sent = match &out {
                            WatchOut::Objects(sender) => {
                                // The stored object is handed over as it is when it already
                                // names this resource's kind and version (stored objects do).
                                let object = if event.object["kind"] == info.kind && event.object["apiVersion"] == info.api_version() {
                                    Arc::clone(&event.object)
                                } else {
                                    Arc::new(with_type(info, Value::clone(&event.object)))
                                };
                                sender.send(ObjectEvent { event_type, object }).await.is_ok()
                            }
                            WatchOut::Lines(sender) => {
                                let line = if as_table {
                                    encode(event_type, with_type(info, Value::clone(&event.object)))
                                } else if own {
                                    // Plain JSON watchers share one encoding of each event.
                                    event.encoded.get_or_init(|| watch_line(event_type, info, &event.object)).clone()
                                } else {
                                    watch_line(event_type, info, &event.object)
                                };
                                sender.send(Ok(line)).await.is_ok()
                            }
                        };
                        if !sent {
                            return;
                        }
                    }
                }
            }
        }
    });
    let mut response = Response::new(body);
    if let Some(object_events) = object_events {
        response.extensions_mut().insert(object_events);
    }
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, private"));
    Ok(response.into_response())
}

/// What a channel receives, as a stream that ends when every sender is gone.
fn received<T: Send + 'static>(receiver: tokio::sync::mpsc::Receiver<T>) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(receiver, |mut receiver| async move { receiver.recv().await.map(|item| (item, receiver)) })
}

/// Where a watch's events go: JSON lines (or Table rows) in the response body, or the objects
/// themselves to a caller in this process.
enum WatchOut {
    Lines(tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>),
    Objects(tokio::sync::mpsc::Sender<ObjectEvent>),
}

impl WatchOut {
    /// Resolves once the watch's receiver is gone.
    async fn closed(&self) {
        match self {
            Self::Lines(sender) => sender.closed().await,
            Self::Objects(sender) => sender.closed().await,
        }
    }

    /// Sends an object built for this watch (encoded as a line, or handed over); false once
    /// the receiver is gone.
    async fn send(&self, event_type: &'static str, object: Value, encode: &impl Fn(&str, Value) -> Bytes) -> bool {
        match self {
            Self::Lines(sender) => sender.send(Ok(encode(event_type, object))).await.is_ok(),
            Self::Objects(sender) => sender.send(ObjectEvent { event_type, object: Arc::new(object) }).await.is_ok(),
        }
    }
}

/// The `Status` of an ERROR watch event for a revision no longer in the history.
fn expired(requested: u64, oldest: u64) -> Value {
    ApiError::gone(format!("too old resource version: {requested} ({oldest})")).to_status()
}

/// Every served kind supports the same verbs.
const VERBS: [&str; 7] = ["create", "delete", "get", "list", "patch", "update", "watch"];

/// Legacy discovery documents (`APIVersions`, `APIGroupList`, `APIGroup`, `APIResourceList`).
fn discovery(group: Option<String>, version: Option<String>, legacy_core: bool) -> Result<Response, ApiError> {
    let body = match (group.as_deref(), version.as_deref()) {
        (None, None) if legacy_core => json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]}),
        (None, None) => {
            let groups: Vec<Value> = served_groups().into_iter().map(group_document).collect();
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        }
        (Some(group), None) => {
            let Some(group) = served_groups().into_iter().find(|g| *g == group) else { return Err(ApiError::path_not_found()) };
            let mut document = group_document(group);
            document["kind"] = json!("APIGroup");
            document["apiVersion"] = json!("v1");
            document
        }
        (Some(group), Some(version)) => {
            let served: Vec<&ResourceInfo> = RESOURCES.iter().filter(|r| r.group == group && r.version == version).collect();
            let reviews: Vec<Value> = authz::REVIEWS
                .iter()
                .filter(|(g, _, _)| *g == group && version == "v1")
                .map(|(_, kind, plural)| json!({"name": plural, "singularName": "", "namespaced": false, "kind": kind, "verbs": ["create"]}))
                .collect();
            let reviews: Vec<Value> = if group == metrics::GROUP && version == metrics::VERSION {
                metrics::KINDS.iter().map(|(kind, plural, namespaced)| json!({"name": plural, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": ["get", "list"]})).collect()
            } else {
                reviews
            };
            if served.is_empty() && reviews.is_empty() {
                return Err(ApiError::path_not_found());
            }
            let mut listed = reviews;
            for info in served {
                listed.push(json!({
                    "name": info.plural, "singularName": info.singular, "namespaced": info.namespaced, "kind": info.kind,
                    "verbs": VERBS, "shortNames": info.short_names, "categories": info.categories,
                }));
                if info.has_status {
                    listed.push(json!({"name": format!("{}/status", info.plural), "singularName": "", "namespaced": info.namespaced, "kind": info.kind, "verbs": ["get", "patch", "update"]}));
                }
                if info.has_scale {
                    listed.push(json!({"name": format!("{}/scale", info.plural), "singularName": "", "namespaced": info.namespaced, "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}));
                }
                if info.kind == "Pod" {
                    listed.push(json!({"name": "pods/binding", "singularName": "", "namespaced": true, "kind": "Binding", "verbs": ["create"]}));
                    listed.push(json!({"name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]}));
                }
                if info.kind == "ServiceAccount" {
                    listed.push(json!({"name": "serviceaccounts/token", "singularName": "", "namespaced": true, "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest", "verbs": ["create"]}));
                }
            }
            let group_version = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": listed})
        }
        _ => return Err(ApiError::path_not_found()),
    };
    Ok(json_response(StatusCode::OK, &body))
}

/// Who makes a write, for `managedFields`: the `fieldManager` parameter, else the client's
/// `User-Agent` up to its first `/` (as kube-apiserver defaults it).
fn field_manager(query: &Query, headers: &HeaderMap) -> String {
    if let Some(manager) = query.get("fieldManager").filter(|m| !m.is_empty()) {
        return manager.to_owned();
    }
    let agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("unknown");
    agent.split('/').next().filter(|a| !a.is_empty()).unwrap_or("unknown").chars().take(128).collect()
}

/// The aggregated discovery version (`v2` or `v2beta1`) the `Accept` header asks for, if its
/// first acceptable alternative is one: kubectl 1.27 to 1.30 know only v2beta1, later ones ask
/// for v2 first. Plain JSON (or anything else) first means legacy discovery.
fn aggregated_discovery_version(headers: &HeaderMap) -> Option<&'static str> {
    let accept = headers.get(header::ACCEPT)?.to_str().ok()?;
    for alternative in accept.split(',') {
        let mut parts = alternative.split(';').map(str::trim);
        let media_type = parts.next().unwrap_or_default();
        let parameters: Vec<(&str, &str)> = parts.filter_map(|p| p.split_once('=')).map(|(k, v)| (k.trim(), v.trim())).collect();
        let parameter = |name: &str| parameters.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        if parameter("as") == Some("APIGroupDiscoveryList") && parameter("g") == Some("apidiscovery.k8s.io") && matches!(media_type, "application/json" | "*/*") {
            match parameter("v") {
                Some("v2") => return Some("v2"),
                Some("v2beta1") => return Some("v2beta1"),
                _ => continue,
            }
        }
        if matches!(media_type, "application/json" | "*/*" | "application/*") && parameter("as").is_none() {
            return None;
        }
    }
    None
}

/// Aggregated discovery (`APIGroupDiscoveryList`): every group, version and resource in one
/// document, `/api` for the core group and `/apis` for the named ones. The Content-Type
/// carries the negotiated version, or kubectl would read the body as a legacy document.
fn aggregated_discovery(core: bool, version: &'static str) -> Response {
    let mut groups: Vec<&str> = Vec::new();
    if core {
        groups.push("");
    } else {
        groups.extend(served_groups());
    }
    let items: Vec<Value> = groups
        .into_iter()
        .map(|group| {
            let versions: Vec<Value> = group_versions(group)
                .into_iter()
                .map(|group_version| {
                    let mut resources: Vec<Value> = RESOURCES.iter().filter(|r| r.group == group && r.version == group_version).map(discovered_resource).collect();
                    resources.extend(authz::REVIEWS.iter().filter(|(g, _, _)| *g == group && group_version == "v1").map(|(group, kind, plural)| {
                        json!({
                            "resource": plural, "singularResource": "", "scope": "Cluster", "verbs": ["create"],
                            "responseKind": {"group": group, "version": "v1", "kind": kind},
                        })
                    }));
                    if group == metrics::GROUP && group_version == metrics::VERSION {
                        resources.extend(metrics::KINDS.iter().map(|(kind, plural, namespaced)| {
                            json!({
                                "resource": plural, "singularResource": "", "scope": if *namespaced { "Namespaced" } else { "Cluster" }, "verbs": ["get", "list"],
                                "responseKind": {"group": metrics::GROUP, "version": metrics::VERSION, "kind": kind},
                            })
                        }));
                    }
                    json!({"version": group_version, "resources": resources, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": group}, "versions": versions})
        })
        .collect();
    let body = json!({"kind": "APIGroupDiscoveryList", "apiVersion": format!("apidiscovery.k8s.io/{version}"), "metadata": {}, "items": items});
    let mut response = json_response(StatusCode::OK, &body);
    let content_type = format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList");
    if let Ok(value) = HeaderValue::from_str(&content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response.headers_mut().insert(header::VARY, HeaderValue::from_static("Accept"));
    response
}

/// One resource of aggregated discovery, with its subresources.
fn discovered_resource(info: &ResourceInfo) -> Value {
    let kind = json!({"group": info.group, "version": info.version, "kind": info.kind});
    let mut subresources = Vec::new();
    if info.has_status {
        subresources.push(json!({"subresource": "status", "responseKind": kind, "verbs": ["get", "patch", "update"]}));
    }
    if info.has_scale {
        subresources.push(json!({"subresource": "scale", "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"}, "verbs": ["get", "patch", "update"]}));
    }
    if info.kind == "Pod" {
        subresources.push(json!({"subresource": "binding", "responseKind": {"group": "", "version": "v1", "kind": "Binding"}, "verbs": ["create"]}));
        subresources.push(json!({"subresource": "log", "responseKind": {"group": "", "version": "v1", "kind": "Pod"}, "verbs": ["get"]}));
    }
    if info.kind == "ServiceAccount" {
        subresources.push(json!({"subresource": "token", "responseKind": {"group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest"}, "verbs": ["create"]}));
    }
    json!({
        "resource": info.plural,
        "singularResource": info.singular,
        "responseKind": kind,
        "scope": if info.namespaced { "Namespaced" } else { "Cluster" },
        "shortNames": info.short_names,
        "categories": info.categories,
        "verbs": VERBS,
        "subresources": subresources,
    })
}

/// The named groups, in discovery order: the stored kinds' groups, then the self reviews', then
/// the resource metrics.
fn served_groups() -> Vec<&'static str> {
    let mut groups = resources::groups();
    for group in authz::review_groups().into_iter().chain([metrics::GROUP]) {
        if !groups.contains(&group) {
            groups.push(group);
        }
    }
    groups
}

/// The versions `group` serves, the preferred first.
fn group_versions(group: &str) -> Vec<&'static str> {
    let mut versions = Vec::new();
    for info in RESOURCES.iter().filter(|r| r.group == group) {
        if !versions.contains(&info.version) {
            versions.push(info.version);
        }
    }
    if versions.is_empty() && authz::review_groups().contains(&group) {
        versions.push("v1");
    }
    if group == metrics::GROUP {
        versions.push(metrics::VERSION);
    }
    versions
}

fn group_document(group: &str) -> Value {
    let versions = group_versions(group);
    let listed: Vec<Value> = versions.iter().map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v})).collect();
    json!({"name": group, "versions": listed, "preferredVersion": listed.first().cloned().unwrap_or(Value::Null)})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_written_answer_is_cut_from_the_watch_line_it_shares() {
        let pods = resources::by_name("pods").expect("pods");
        let object = Arc::new(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "resourceVersion": "7", "labels": {"a": "\"quoted\" }"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}));
        let plain = serde_json::to_vec(&typed(pods, &object)).expect("encode");
        let body = |response: Response| async move { response.into_body().collect().await.expect("body").to_bytes() };
        for event_type in ["ADDED", "MODIFIED"] {
            // Answered before any watcher: the answer fills the line the watchers then share.
            let written = objects::Written { object: Arc::clone(&object), warnings: Vec::new(), encoded: Some((event_type, Arc::default())) };
            let answer = written_response(StatusCode::CREATED, pods, &written);
            assert_eq!(answer.status(), StatusCode::CREATED);
            assert_eq!(body(answer).await, plain);
            let shared = written.encoded.as_ref().and_then(|(_, cell)| cell.get().cloned()).expect("the line is filled");
            assert_eq!(shared, watch_line(event_type, pods, &object));
            // A watcher came first: the answer is cut from its line.
            let cell = Arc::new(std::sync::OnceLock::new());
            cell.set(watch_line(event_type, pods, &object)).expect("empty");
            let written = objects::Written { object: Arc::clone(&object), warnings: Vec::new(), encoded: Some((event_type, cell)) };
            assert_eq!(body(written_response(StatusCode::OK, pods, &written)).await, plain);
        }
        // A line that is not the event's own frame is not cut: the answer is serialised afresh.
        let cell = Arc::new(std::sync::OnceLock::new());
        cell.set(watch_line("MODIFIED", pods, &object)).expect("empty");
        let written = objects::Written { object: Arc::clone(&object), warnings: Vec::new(), encoded: Some(("ADDED", cell)) };
        assert_eq!(body(written_response(StatusCode::OK, pods, &written)).await, plain);
    }

    #[test]
    fn discovery_negotiates_the_first_acceptable_alternative() {
        let accept = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT, HeaderValue::from_static(value));
            aggregated_discovery_version(&headers)
        };
        let both = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(accept(both), Some("v2"));
        assert_eq!(accept("application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"), Some("v2beta1"));
        assert_eq!(accept("application/json;g=apidiscovery.k8s.io;v=v3;as=APIGroupDiscoveryList,application/json"), None);
        assert_eq!(accept("application/json"), None);
        assert_eq!(accept("application/json, */*"), None);
        assert_eq!(HeaderMap::new().get(header::ACCEPT), None);
    }

    #[test]
    fn column_names_are_title_case() {
        assert_eq!(title_case("UP-TO-DATE"), "Up-to-date");
        assert_eq!(title_case("NAME"), "Name");
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
