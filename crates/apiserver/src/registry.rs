//! The built-in OCI registry under `/v2/`: the distribution API subset needed to push and pull
//! (blob uploads monolithic and chunked, blob HEAD/GET, manifest PUT/GET/HEAD/DELETE by tag or
//! digest, tag list, catalog), plus Shoal's garbage collection.
//!
//! Upload sessions live on the server that receives them (a temporary file each). A completed,
//! digest-verified blob is replicated through Raft in 1 MiB chunks, so every server has it;
//! manifests and tags are small objects in the replicated store. Manifests are checked when
//! pushed: their blobs must exist, the artifact must fit the size cap, it must be a Wasm artifact
//! or a container image, and Wasm layers must validate.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::response::Response;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use shoal_oci::media::{ArtifactKind, Manifest, OCI_MANIFEST, classify};
use shoal_oci::{Digest, wasm};
use shoal_store::{Command, ObjectKey, WriteError};

use crate::AppState;

/// Blobs are replicated in chunks of this size.
const CHUNK_BYTES: usize = 1024 * 1024;
/// The largest manifest accepted.
const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
const BLOBS: &str = "registry.blobs";
const MANIFESTS: &str = "registry.manifests";
const TAGS: &str = "registry.tags";

/// Registry state local to this server.
pub struct Registry {
    upload_dir: PathBuf,
    uploads: Mutex<HashMap<String, Upload>>,
    pub max_artifact_bytes: u64,
}

struct Upload {
    repository: String,
    path: PathBuf,
    size: u64,
}

impl Registry {
    pub fn new(data_dir: &std::path::Path, max_artifact_bytes: u64) -> std::io::Result<Self> {
        let upload_dir = data_dir.join("registry-uploads");
        // Sessions do not survive a restart; neither do their files.
        let _ = std::fs::remove_dir_all(&upload_dir);
        std::fs::create_dir_all(&upload_dir)?;
        Ok(Self { upload_dir, uploads: Mutex::new(HashMap::new()), max_artifact_bytes })
    }

    fn uploads(&self) -> std::sync::MutexGuard<'_, HashMap<String, Upload>> {
        self.uploads.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An error in the distribution API's own format.
struct OciError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

type OciResult<T> = Result<T, OciError>;

fn oci_error(status: StatusCode, code: &'static str, message: impl Into<String>) -> OciError {
    OciError { status, code, message: message.into() }
}

fn internal(error: impl std::fmt::Display) -> OciError {
    oci_error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", error.to_string())
}

impl OciError {
    fn into_response(self) -> Response {
        let body = json!({"errors": [{"code": self.code, "message": self.message, "detail": null}]});
        let mut response = Response::new(Body::from(serde_json::to_vec(&body).unwrap_or_default()));
        *response.status_mut() = self.status;
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"shoal\""));
        }
        response
    }
}

fn empty(status: StatusCode, headers: &[(&'static str, String)]) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(value) {
            response.headers_mut().insert(*name, value);
        }
    }
    response.headers_mut().insert("docker-distribution-api-version", HeaderValue::from_static("registry/2.0"));
    response
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Admin,
    /// Node agents may pull, not push or delete.
    Node,
}

fn role(state: &AppState, headers: &HeaderMap) -> Option<Role> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = if let Some(token) = value.strip_prefix("Bearer ") {
        token.trim().to_owned()
    } else if let Some(encoded) = value.strip_prefix("Basic ") {
        // Any user name; the password is the token (so `oras login -p TOKEN` works).
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        text.split_once(':')?.1.to_owned()
    } else {
        return None;
    };
    Some(match crate::authz::identify_token(state, token.as_bytes())? {
        crate::authz::Identity::Admin => Role::Admin,
        crate::authz::Identity::Nodes | crate::authz::Identity::Node(_) => Role::Node,
        crate::authz::Identity::User(_) => return None,
    })
}

fn valid_repository(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_' || b == b'-')
                && part.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && part.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
        })
}

/// Store keys: repositories contain `/`, which the key layout reserves, so it becomes `+`.
fn repository_key(repository: &str) -> String {
    repository.replace('/', "+")
}

fn blob_key(digest: &Digest) -> ObjectKey {
    ObjectKey::new(BLOBS, "", digest.hex())
}

fn manifest_key(repository: &str, digest: &Digest) -> ObjectKey {
    ObjectKey::new(MANIFESTS, repository_key(repository), digest.hex())
}

fn tag_key(repository: &str, tag: &str) -> ObjectKey {
    ObjectKey::new(TAGS, repository_key(repository), tag)
}

/// What a `/v2/...` path names.
enum Route {
    Base,
    Catalog,
    GarbageCollect,
    Tags(String),
    Uploads(String, Option<String>),
    Blob(String, String),
    Manifest(String, String),
}

fn route(path: &str) -> OciResult<Route> {
    let not_found = || oci_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", format!("no such registry path: {path}"));
    let rest = match path {
        "/v2" | "/v2/" => return Ok(Route::Base),
        "/v2/_catalog" => return Ok(Route::Catalog),
        "/v2/_shoal/gc" => return Ok(Route::GarbageCollect),
        other => other.strip_prefix("/v2/").ok_or_else(not_found)?,
    };
    let checked = |repository: &str| -> OciResult<String> {
        if valid_repository(repository) {
            Ok(repository.to_owned())
        } else {
            Err(oci_error(StatusCode::BAD_REQUEST, "NAME_INVALID", format!("invalid repository name {repository:?}")))
        }
    };
    if let Some(repository) = rest.strip_suffix("/tags/list") {
        return Ok(Route::Tags(checked(repository)?));
    }
    if let Some(index) = rest.find("/blobs/uploads") {
        let session = rest[index + "/blobs/uploads".len()..].trim_matches('/');
        return Ok(Route::Uploads(checked(&rest[..index])?, (!session.is_empty()).then(|| session.to_owned())));
    }
    if let Some(index) = rest.rfind("/manifests/") {
        return Ok(Route::Manifest(checked(&rest[..index])?, rest[index + "/manifests/".len()..].to_owned()));
    }
    if let Some(index) = rest.rfind("/blobs/") {
        return Ok(Route::Blob(checked(&rest[..index])?, rest[index + "/blobs/".len()..].to_owned()));
    }
    Err(not_found())
}

fn query(uri: &Uri) -> HashMap<String, String> {
    form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).into_owned().collect()
}

/// Entry point for every `/v2` request.
pub async fn handle(state: Arc<AppState>, method: Method, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    match dispatch(&state, &method, &uri, &headers, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn dispatch(state: &Arc<AppState>, method: &Method, uri: &Uri, headers: &HeaderMap, body: Body) -> OciResult<Response> {
    let Some(role) = role(state, headers) else {
        return Err(oci_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "authentication required: a bearer token, or basic auth with the token as password"));
    };
    let reading = matches!(*method, Method::GET | Method::HEAD);
    if !reading && role != Role::Admin {
        return Err(oci_error(StatusCode::FORBIDDEN, "DENIED", "the node token may only pull"));
    }
    let parameters = query(uri);
    match (route(uri.path())?, method.clone()) {
        (Route::Base, Method::GET | Method::HEAD) => Ok(json_response(StatusCode::OK, &json!({}))),
        (Route::Catalog, Method::GET) => catalog(state),
        (Route::GarbageCollect, Method::POST) => garbage_collect(state, &parameters).await,
        (Route::Tags(repository), Method::GET) => tags(state, &repository),
        (Route::Uploads(repository, None), Method::POST) => start_upload(state, &repository, &parameters, body).await,
        (Route::Uploads(repository, Some(session)), Method::PATCH) => patch_upload(state, &repository, &session, body).await,
        (Route::Uploads(repository, Some(session)), Method::PUT) => finish_upload(state, &repository, &session, &parameters, body).await,
        (Route::Uploads(repository, Some(session)), Method::GET) => upload_status(state, &repository, &session),
        (Route::Uploads(repository, Some(session)), Method::DELETE) => cancel_upload(state, &repository, &session),
        (Route::Blob(repository, digest), Method::GET | Method::HEAD) => get_blob(state, &repository, &digest, *method == Method::HEAD).await,
        (Route::Manifest(repository, reference), Method::PUT) => put_manifest(state, &repository, &reference, headers, body).await,
        (Route::Manifest(repository, reference), Method::GET | Method::HEAD) => get_manifest(state, &repository, &reference, *method == Method::HEAD),
        (Route::Manifest(repository, reference), Method::DELETE) => delete_manifest(state, &repository, &reference).await,
        (_, other) => Err(oci_error(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", format!("{other} is not supported here"))),
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    let mut response = Response::new(Body::from(serde_json::to_vec(value).unwrap_or_default()));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.headers_mut().insert("docker-distribution-api-version", HeaderValue::from_static("registry/2.0"));
    response
}

/// Reads a request body, refusing more than `limit` bytes.
async fn read_body(body: Body, limit: u64) -> OciResult<Bytes> {
    match http_body_util::Limited::new(body, limit as usize).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            Err(oci_error(StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID", format!("the artifact exceeds the registry's size limit of {limit} bytes")))
        }
        Err(error) => Err(oci_error(StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID", format!("reading the body: {error}"))),
    }
}

fn get_object(state: &AppState, key: &ObjectKey) -> OciResult<Option<Value>> {
    state.store.get(key).map_err(internal)
}

/// Creates or replaces an object at `key`.
async fn put_object(state: &AppState, key: ObjectKey, mut object: Value) -> OciResult<()> {
    object["metadata"] = json!({"name": key.name.clone()});
    let created = state.store.write(Command::Create { key: key.clone(), object: object.clone() }).await.map_err(internal)?;
    match created {
        Ok(_) => Ok(()),
        Err(WriteError::AlreadyExists) => {
            state
                .store
                .write(Command::Update { key, object, precondition: Default::default() })
                .await
                .map_err(internal)?
                .map(|_| ())
                .map_err(internal)
        }
        Err(other) => Err(internal(other)),
    }
}

async fn delete_object(state: &AppState, key: ObjectKey) -> OciResult<bool> {
    match state.store.write(Command::Delete { key, precondition: Default::default() }).await.map_err(internal)? {
        Ok(_) => Ok(true),
        Err(WriteError::NotFound) => Ok(false),
        Err(other) => Err(internal(other)),
    }
}

fn parse_digest(text: &str) -> OciResult<Digest> {
    Digest::parse(text).map_err(|e| oci_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", e.to_string()))
}

/// Replicates a verified blob unless the store already has it.
async fn store_blob(state: &AppState, digest: &Digest, bytes: &[u8]) -> OciResult<()> {
    if get_object(state, &blob_key(digest))?.is_some() {
        return Ok(());
    }
    let chunks = bytes.chunks(CHUNK_BYTES).count().max(1);
    for (index, chunk) in bytes.chunks(CHUNK_BYTES).enumerate() {
        let data = base64::engine::general_purpose::STANDARD.encode(chunk);
        state
            .store
            .write_blob(Command::PutBlobChunk { digest: digest.to_string(), index: index as u32, data })
            .await
            .map_err(internal)?;
    }
    let created = crate::objects::now();
    put_object(state, blob_key(digest), json!({"digest": digest.to_string(), "size": bytes.len(), "chunks": chunks, "created": created})).await
}

/// The whole blob (its chunks from this server, or from a peer that has them).
async fn read_blob(state: &AppState, digest: &Digest) -> OciResult<Option<Vec<u8>>> {
    let Some(meta) = get_object(state, &blob_key(digest))? else { return Ok(None) };
    let chunks = meta["chunks"].as_u64().unwrap_or(0) as u32;
    let mut bytes = Vec::with_capacity(meta["size"].as_u64().unwrap_or(0) as usize);
    for index in 0..chunks {
        let chunk = state
            .store
            .blob_chunk_anywhere(digest.as_str(), index)
            .await
            .map_err(internal)?
            .ok_or_else(|| internal(format!("chunk {index} of {digest} is missing on this server")))?;
        bytes.extend_from_slice(&chunk);
    }
    Ok(Some(bytes))
}

async fn start_upload(state: &Arc<AppState>, repository: &str, parameters: &HashMap<String, String>, body: Body) -> OciResult<Response> {
    let registry = &state.registry;
    if let (Some(mount), Some(_from)) = (parameters.get("mount"), parameters.get("from")) {
        let digest = parse_digest(mount)?;
        if get_object(state, &blob_key(&digest))?.is_some() {
            return Ok(empty(StatusCode::CREATED, &[("location", format!("/v2/{repository}/blobs/{digest}")), ("docker-content-digest", digest.to_string())]));
        }
    }
    if let Some(digest) = parameters.get("digest") {
        // Monolithic upload in one POST.
        let digest = parse_digest(digest)?;
        let bytes = read_body(body, registry.max_artifact_bytes).await?;
        verify(&digest, &bytes)?;
        store_blob(state, &digest, &bytes).await?;
        return Ok(empty(StatusCode::CREATED, &[("location", format!("/v2/{repository}/blobs/{digest}")), ("docker-content-digest", digest.to_string())]));
    }
    let session = uuid::Uuid::new_v4().to_string();
    let path = registry.upload_dir.join(&session);
    std::fs::write(&path, b"").map_err(internal)?;
    registry.uploads().insert(session.clone(), Upload { repository: repository.to_owned(), path, size: 0 });
    Ok(empty(
        StatusCode::ACCEPTED,
        &[("location", format!("/v2/{repository}/blobs/uploads/{session}")), ("docker-upload-uuid", session), ("range", "0-0".into()), ("content-length", "0".into())],
    ))
}

fn verify(digest: &Digest, bytes: &[u8]) -> OciResult<()> {
    digest.verify(bytes).map_err(|e| oci_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", e.to_string()))
}

/// Appends `body` to the session's file, within the size cap; returns the new size.
async fn append(state: &AppState, repository: &str, session: &str, body: Body) -> OciResult<(PathBuf, u64)> {
    let registry = &state.registry;
    let (path, size) = {
        let uploads = registry.uploads();
        let upload = uploads
            .get(session)
            .filter(|u| u.repository == repository)
            .ok_or_else(|| oci_error(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN", format!("no upload session {session}")))?;
        (upload.path.clone(), upload.size)
    };
    let remaining = registry.max_artifact_bytes.saturating_sub(size);
    let bytes = read_body(body, remaining).await?;
    if !bytes.is_empty() {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).map_err(internal)?;
        file.write_all(&bytes).map_err(internal)?;
    }
    let size = size + bytes.len() as u64;
    if let Some(upload) = registry.uploads().get_mut(session) {
        upload.size = size;
    }
    Ok((path, size))
}

async fn patch_upload(state: &Arc<AppState>, repository: &str, session: &str, body: Body) -> OciResult<Response> {
    let (_, size) = append(state, repository, session, body).await?;
    Ok(empty(
        StatusCode::ACCEPTED,
        &[("location", format!("/v2/{repository}/blobs/uploads/{session}")), ("docker-upload-uuid", session.to_owned()), ("range", format!("0-{}", size.saturating_sub(1)))],
    ))
}

async fn finish_upload(state: &Arc<AppState>, repository: &str, session: &str, parameters: &HashMap<String, String>, body: Body) -> OciResult<Response> {
    let digest = parse_digest(parameters.get("digest").map(String::as_str).unwrap_or_default())?;
    let (path, _) = append(state, repository, session, body).await?;
    let bytes = std::fs::read(&path).map_err(internal)?;
    let outcome = match verify(&digest, &bytes) {
        Ok(()) => store_blob(state, &digest, &bytes).await,
        Err(error) => Err(error),
    };
    state.registry.uploads().remove(session);
    let _ = std::fs::remove_file(&path);
    outcome?;
    Ok(empty(StatusCode::CREATED, &[("location", format!("/v2/{repository}/blobs/{digest}")), ("docker-content-digest", digest.to_string()), ("content-length", "0".into())]))
}

fn upload_status(state: &AppState, repository: &str, session: &str) -> OciResult<Response> {
    let uploads = state.registry.uploads();
    let upload = uploads
        .get(session)
        .filter(|u| u.repository == repository)
        .ok_or_else(|| oci_error(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN", format!("no upload session {session}")))?;
    Ok(empty(StatusCode::NO_CONTENT, &[("range", format!("0-{}", upload.size.saturating_sub(1))), ("docker-upload-uuid", session.to_owned())]))
}

fn cancel_upload(state: &AppState, repository: &str, session: &str) -> OciResult<Response> {
    let removed = state.registry.uploads().remove(session).filter(|u| u.repository == repository);
    match removed {
        Some(upload) => {
            let _ = std::fs::remove_file(upload.path);
            Ok(empty(StatusCode::NO_CONTENT, &[]))
        }
        None => Err(oci_error(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN", format!("no upload session {session}"))),
    }
}

async fn get_blob(state: &AppState, repository: &str, digest: &str, head: bool) -> OciResult<Response> {
    let digest = parse_digest(digest)?;
    let unknown = || oci_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", format!("blob {digest} is not in {repository}"));
    let meta = get_object(state, &blob_key(&digest))?.ok_or_else(unknown)?;
    let size = meta["size"].as_u64().unwrap_or(0);
    let headers = [("content-length", size.to_string()), ("docker-content-digest", digest.to_string()), ("content-type", "application/octet-stream".to_owned())];
    if head {
        return Ok(empty(StatusCode::OK, &headers));
    }
    let bytes = read_blob(state, &digest).await?.ok_or_else(unknown)?;
    let mut response = empty(StatusCode::OK, &headers);
    *response.body_mut() = Body::from(bytes);
    Ok(response)
}

async fn put_manifest(state: &Arc<AppState>, repository: &str, reference: &str, headers: &HeaderMap, body: Body) -> OciResult<Response> {
    let bytes = read_body(body, MAX_MANIFEST_BYTES as u64).await?;
    let digest = Digest::of(&bytes);
    if let Ok(pinned) = Digest::parse(reference) {
        verify(&pinned, &bytes)?;
    } else if !reference.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-') || reference.is_empty() || reference.len() > 128 {
        return Err(oci_error(StatusCode::BAD_REQUEST, "TAG_INVALID", format!("invalid tag {reference:?}")));
    }
    let invalid = |message: String| oci_error(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", message);
    let manifest = Manifest::parse(&bytes).map_err(|e| invalid(e.to_string()))?;
    let media_type = manifest
        .media_type
        .clone()
        .or_else(|| headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned))
        .unwrap_or_else(|| OCI_MANIFEST.to_owned());
    let mut referenced = Vec::new();
    let mut summary = json!({});
    if manifest.is_index() {
        for entry in &manifest.manifests {
            let child = parse_digest(&entry.digest)?;
            if get_object(state, &manifest_key(repository, &child))?.is_none() {
                return Err(oci_error(StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN", format!("the index references manifest {child}, which is not in {repository}")));
            }
        }
        summary["kind"] = json!("index");
    } else {
        let total: u64 = manifest.blobs().map(|d| d.size).sum();
        if total > state.registry.max_artifact_bytes {
            return Err(oci_error(StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID", format!("the artifact's blobs total {total} bytes, over the limit of {}", state.registry.max_artifact_bytes)));
        }
        for descriptor in manifest.blobs() {
            let blob = parse_digest(&descriptor.digest)?;
            match get_object(state, &blob_key(&blob))? {
                None => return Err(oci_error(StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN", format!("blob {blob} ({}) has not been uploaded", descriptor.media_type))),
                Some(meta) if meta["size"].as_u64() != Some(descriptor.size) => {
                    return Err(invalid(format!("blob {blob} is {} bytes, the manifest says {}", meta["size"], descriptor.size)));
                }
                Some(_) => referenced.push(blob.to_string()),
            }
        }
        let kind = classify(&manifest).map_err(|e| invalid(e.to_string()))?;
        let wasm_layers = match &kind {
            ArtifactKind::Wasm { layer, .. } => vec![layer.clone()],
            ArtifactKind::SpinApp { components } => components.clone(),
            ArtifactKind::Container => Vec::new(),
        };
        summary["kind"] = json!(match kind {
            ArtifactKind::Wasm { .. } => "wasm",
            ArtifactKind::SpinApp { .. } => "spin",
            ArtifactKind::Container => "container",
        });
        for layer in wasm_layers {
            let layer_digest = parse_digest(&layer.digest)?;
            let wasm_bytes = read_blob(state, &layer_digest).await?.ok_or_else(|| internal(format!("blob {layer_digest} vanished")))?;
            let info = wasm::inspect(&wasm_bytes).map_err(|e| invalid(format!("layer {layer_digest} is not valid Wasm: {e}")))?;
            summary["world"] = json!(info.world.as_str());
            summary["component"] = json!(info.is_component);
        }
    }
    let manifest_object = json!({
        "repository": repository,
        "digest": digest.to_string(),
        "mediaType": media_type,
        "size": bytes.len(),
        "content": base64::engine::general_purpose::STANDARD.encode(&bytes),
        "blobs": referenced,
        "summary": summary,
        "created": crate::objects::now(),
    });
    put_object(state, manifest_key(repository, &digest), manifest_object).await?;
    if Digest::parse(reference).is_err() {
        put_object(state, tag_key(repository, reference), json!({"repository": repository, "tag": reference, "digest": digest.to_string()})).await?;
    }
    Ok(empty(StatusCode::CREATED, &[("location", format!("/v2/{repository}/manifests/{digest}")), ("docker-content-digest", digest.to_string()), ("content-length", "0".into())]))
}

/// The manifest object for a tag or digest in `repository`.
fn find_manifest(state: &AppState, repository: &str, reference: &str) -> OciResult<Value> {
    let unknown = || oci_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", format!("manifest {reference} is not in {repository}"));
    let digest = match Digest::parse(reference) {
        Ok(digest) => digest,
        Err(_) => {
            let tag = get_object(state, &tag_key(repository, reference))?.ok_or_else(unknown)?;
            parse_digest(tag["digest"].as_str().unwrap_or_default())?
        }
    };
    get_object(state, &manifest_key(repository, &digest))?.ok_or_else(unknown)
}

fn get_manifest(state: &AppState, repository: &str, reference: &str, head: bool) -> OciResult<Response> {
    let manifest = find_manifest(state, repository, reference)?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(manifest["content"].as_str().unwrap_or_default()).map_err(internal)?;
    let headers = [
        ("content-type", manifest["mediaType"].as_str().unwrap_or(OCI_MANIFEST).to_owned()),
        ("docker-content-digest", manifest["digest"].as_str().unwrap_or_default().to_owned()),
        ("content-length", bytes.len().to_string()),
    ];
    let mut response = empty(StatusCode::OK, &headers);
    if !head {
        *response.body_mut() = Body::from(bytes);
    }
    Ok(response)
}

async fn delete_manifest(state: &AppState, repository: &str, reference: &str) -> OciResult<Response> {
    match Digest::parse(reference) {
        Ok(digest) => {
            find_manifest(state, repository, reference)?;
            // Untag everything that points at it, then drop it.
            let listed = state.store.list(TAGS, Some(&repository_key(repository)), None, None, &|t| t["digest"] == digest.to_string()).map_err(internal)?;
            for tag in listed.items {
                delete_object(state, tag_key(repository, tag["tag"].as_str().unwrap_or_default())).await?;
            }
            delete_object(state, manifest_key(repository, &digest)).await?;
        }
        Err(_) => {
            if !delete_object(state, tag_key(repository, reference)).await? {
                return Err(oci_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", format!("tag {reference} is not in {repository}")));
            }
        }
    }
    Ok(empty(StatusCode::ACCEPTED, &[]))
}

fn tags(state: &AppState, repository: &str) -> OciResult<Response> {
    let listed = state.store.list(TAGS, Some(&repository_key(repository)), None, None, &|_| true).map_err(internal)?;
    let manifests = state.store.list(MANIFESTS, Some(&repository_key(repository)), None, Some(1), &|_| true).map_err(internal)?;
    if listed.items.is_empty() && manifests.items.is_empty() {
        return Err(oci_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", format!("repository {repository} is not known")));
    }
    let tags: Vec<&str> = listed.items.iter().filter_map(|t| t["tag"].as_str()).collect();
    Ok(json_response(StatusCode::OK, &json!({"name": repository, "tags": tags})))
}

fn catalog(state: &AppState) -> OciResult<Response> {
    let listed = state.store.list(MANIFESTS, None, None, None, &|_| true).map_err(internal)?;
    let repositories: BTreeSet<&str> = listed.items.iter().filter_map(|m| m["repository"].as_str()).collect();
    Ok(json_response(StatusCode::OK, &json!({"repositories": repositories})))
}

/// Deletes untagged manifests (that no index references), then blobs no manifest references, all
/// older than the grace period (so a push whose manifest or tag is not yet written keeps its
/// content).
async fn garbage_collect(state: &AppState, parameters: &HashMap<String, String>) -> OciResult<Response> {
    let grace: i64 = parameters.get("gracePeriodSeconds").and_then(|g| g.parse().ok()).unwrap_or(600);
    let now = jiff::Timestamp::now().as_second();
    let old_enough = |object: &Value| now - object["created"].as_str().and_then(shoal_api::meta::parse_time).map_or(0, |t| t.as_second()) >= grace;
    let tags = state.store.list(TAGS, None, None, None, &|_| true).map_err(internal)?;
    let mut kept: BTreeSet<(String, String)> = tags
        .items
        .iter()
        .map(|t| (t["repository"].as_str().unwrap_or_default().to_owned(), t["digest"].as_str().unwrap_or_default().to_owned()))
        .collect();
    let manifests = state.store.list(MANIFESTS, None, None, None, &|_| true).map_err(internal)?;
    // Manifests that a kept index lists are kept too.
    for manifest in &manifests.items {
        let repository = manifest["repository"].as_str().unwrap_or_default().to_owned();
        if manifest["summary"]["kind"] == "index" && kept.contains(&(repository.clone(), manifest["digest"].as_str().unwrap_or_default().to_owned())) {
            let content = base64::engine::general_purpose::STANDARD.decode(manifest["content"].as_str().unwrap_or_default()).unwrap_or_default();
            if let Ok(index) = Manifest::parse(&content) {
                kept.extend(index.manifests.iter().map(|m| (repository.clone(), m.digest.clone())));
            }
        }
    }
    let mut deleted_manifests = 0u64;
    let mut referenced = BTreeSet::new();
    for manifest in manifests.items {
        let repository = manifest["repository"].as_str().unwrap_or_default().to_owned();
        let digest = manifest["digest"].as_str().unwrap_or_default().to_owned();
        if kept.contains(&(repository.clone(), digest.clone())) || !old_enough(&manifest) {
            referenced.extend(manifest["blobs"].as_array().into_iter().flatten().filter_map(|b| b.as_str().map(str::to_owned)));
            continue;
        }
        if delete_object(state, manifest_key(&repository, &parse_digest(&digest)?)).await? {
            deleted_manifests += 1;
        }
    }
    let blobs = state.store.list(BLOBS, None, None, None, &|_| true).map_err(internal)?;
    let (mut deleted, mut freed) = (0u64, 0u64);
    for blob in blobs.items {
        let digest = blob["digest"].as_str().unwrap_or_default().to_owned();
        if referenced.contains(&digest) || !old_enough(&blob) {
            continue;
        }
        if delete_object(state, blob_key(&parse_digest(&digest)?)).await? {
            state.store.write_blob(Command::DeleteBlobChunks { digest: digest.clone() }).await.map_err(internal)?;
            deleted += 1;
            freed += blob["size"].as_u64().unwrap_or(0);
        }
    }
    Ok(json_response(StatusCode::OK, &json!({"deletedManifests": deleted_manifests, "deletedBlobs": deleted, "freedBytes": freed})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_paths_route_with_nested_repositories() {
        assert!(matches!(route("/v2/"), Ok(Route::Base)));
        assert!(matches!(route("/v2/samples/hello/tags/list"), Ok(Route::Tags(r)) if r == "samples/hello"));
        assert!(matches!(route("/v2/samples/hello/blobs/uploads/"), Ok(Route::Uploads(r, None)) if r == "samples/hello"));
        assert!(matches!(route("/v2/a/blobs/uploads/abc"), Ok(Route::Uploads(r, Some(s))) if r == "a" && s == "abc"));
        assert!(matches!(route("/v2/a/b/manifests/1.0"), Ok(Route::Manifest(r, t)) if r == "a/b" && t == "1.0"));
        assert!(matches!(route("/v2/a/blobs/sha256:00"), Ok(Route::Blob(r, d)) if r == "a" && d == "sha256:00"));
        assert!(route("/v2/UPPER/tags/list").is_err());
        assert!(route("/v2/a/unknown").is_err());
    }
}
