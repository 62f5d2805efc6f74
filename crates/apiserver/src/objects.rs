//! The object operations behind the REST verbs: create, update (with its status-subresource
//! and patch variants), delete with finalizers and graceful deletion, and namespace teardown.
//! Every write goes through the store, that is through Raft.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::{Map, Value, json};
use shoal_api::admission::{self, FieldValidation};
use shoal_api::resources::{self, ResourceInfo};
use shoal_api::{ApiError, meta};
use shoal_store::command::Precondition;
use shoal_store::{Command, ObjectKey, WriteError};

use crate::AppState;

/// How many times a patch re-reads and retries after losing a race with another writer.
const PATCH_RETRIES: usize = 16;

pub fn key(info: &ResourceInfo, namespace: Option<&str>, name: &str) -> ObjectKey {
    ObjectKey::new(info.group_resource(), if info.namespaced { namespace.unwrap_or_default() } else { "" }, name)
}

pub fn now() -> String {
    meta::format_time(jiff::Timestamp::now())
}

pub(crate) fn store_error(error: shoal_store::Error) -> ApiError {
    match error {
        shoal_store::Error::NotLeader(message) => ApiError::unavailable(format!("the control plane cannot accept writes right now: {message}")),
        other => ApiError::internal(other.to_string()),
    }
}

fn write_error(info: &ResourceInfo, name: &str, error: WriteError) -> ApiError {
    match error {
        WriteError::AlreadyExists => ApiError::already_exists(info, name),
        WriteError::NotFound => ApiError::not_found(info, name),
        WriteError::ResourceVersionConflict { .. } => {
            ApiError::conflict(info, name, "the object has been modified; please apply your changes to the latest version and try again")
        }
        WriteError::UidConflict { .. } => ApiError::conflict(info, name, error.to_string()),
        WriteError::AddressTaken { field, value, detail } => ApiError::invalid(info, name, &[shoal_api::FieldError::invalid(field, value, detail)]),
    }
}

pub fn get(state: &AppState, info: &ResourceInfo, namespace: Option<&str>, name: &str) -> Result<Value, ApiError> {
    state.store.get(&key(info, namespace, name)).map_err(store_error)?.ok_or_else(|| ApiError::not_found(info, name))
}

/// [`get`] without the copy: the stored object itself, for callers that only read it.
fn get_shared(state: &AppState, info: &ResourceInfo, namespace: Option<&str>, name: &str) -> Result<std::sync::Arc<Value>, ApiError> {
    state.store.get_shared(&key(info, namespace, name)).map_err(store_error)?.ok_or_else(|| ApiError::not_found(info, name))
}

/// Kinds whose objects carry a generation that tracks spec changes.
fn tracks_generation(info: &ResourceInfo) -> bool {
    !matches!(info.kind, "ConfigMap" | "Secret" | "Endpoints" | "Event" | "EndpointSlice")
}

/// The fields of an object that its spec-generation follows.
fn generation_fields_differ(before: &Value, after: &Value) -> bool {
    const IGNORED: [&str; 4] = ["metadata", "status", "apiVersion", "kind"];
    let (Some(before), Some(after)) = (before.as_object(), after.as_object()) else { return before != after };
    let counted = |map: &serde_json::Map<String, Value>| map.keys().filter(|k| !IGNORED.contains(&k.as_str())).count();
    counted(before) != counted(after) || before.iter().any(|(field, value)| !IGNORED.contains(&field.as_str()) && after.get(field) != Some(value))
}

/// What a create resets in `status` (as each kind's create strategy does).
fn reset_status_on_create(info: &ResourceInfo, object: &mut Value) {
    let Some(map) = object.as_object_mut() else { return };
    match info.kind {
        "Pod" => {
            map.insert("status".into(), json!({"phase": "Pending", "qosClass": qos_class(&map["spec"])}));
        }
        "Deployment" | "ReplicaSet" | "DaemonSet" | "Job" | "CronJob" | "Ingress" | "HorizontalPodAutoscaler" => {
            map.remove("status");
        }
        "Service" => {
            map.insert("status".into(), json!({"loadBalancer": {}}));
        }
        _ => {}
    }
}

/// The pod's QoS class, from its containers' requests and limits.
fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = spec["containers"].as_array().into_iter().flatten().collect();
    let any = containers.iter().any(|c| c["resources"]["requests"].as_object().is_some_and(|r| !r.is_empty()) || c["resources"]["limits"].as_object().is_some_and(|l| !l.is_empty()));
    if !any {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        let limits = &c["resources"]["limits"];
        let requests = &c["resources"]["requests"];
        ["cpu", "memory"].iter().all(|r| !limits[*r].is_null() && (requests[*r].is_null() || requests[*r] == limits[*r]))
    });
    if guaranteed { "Guaranteed" } else { "Burstable" }
}

fn generated_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    let suffix: String = (0..5).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect();
    format!("{prefix}{suffix}")
}

/// Checks that `namespace` exists and is not being torn down.
fn check_namespace(state: &AppState, namespace: &str) -> Result<(), ApiError> {
    let namespaces = resources::by_name("namespaces").expect("namespaces are served");
    let object = get_shared(state, namespaces, None, namespace)?;
    if !object["metadata"]["deletionTimestamp"].is_null() {
        return Err(ApiError::forbidden(format!(
            "unable to create new content in namespace {namespace} because it is being terminated"
        )));
    }
    Ok(())
}

/// The result of a write: the stored object (shared with the store) and warnings for the
/// client.
pub struct Written {
    pub object: Arc<Value>,
    pub warnings: Vec<String>,
    /// For an applied create or update: its watch event's type and shared encoding, so the
    /// answer and the JSON watch lines serialise the object once between them.
    pub encoded: Option<(&'static str, Arc<std::sync::OnceLock<bytes::Bytes>>)>,
}

pub async fn create(
    state: &AppState,
    info: &'static ResourceInfo,
    namespace: Option<&str>,
    mut object: Value,
    validation: FieldValidation,
    dry_run: bool,
) -> Result<Written, ApiError> {
    if !object.is_object() {
        return Err(ApiError::bad_request(format!("the body of the request is not a {} object", info.kind)));
    }
    let metadata = meta::metadata_mut(&mut object);
    if info.namespaced {
        let url_namespace = namespace.unwrap_or("default");
        match metadata.get("namespace").and_then(Value::as_str) {
            Some(given) if !given.is_empty() && given != url_namespace => {
                return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
            }
            _ => {
                metadata.insert("namespace".into(), json!(url_namespace));
            }
        }
    } else {
        metadata.remove("namespace");
    }
    let name_missing = metadata.get("name").and_then(Value::as_str).is_none_or(str::is_empty);
    if name_missing && let Some(prefix) = metadata.get("generateName").and_then(Value::as_str) {
        let name = generated_name(prefix);
        metadata.insert("name".into(), json!(name));
    }
    // Fields only the server sets.
    for field in ["resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"] {
        metadata.remove(field);
    }
    metadata.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    metadata.insert("creationTimestamp".into(), json!(now()));
    if tracks_generation(info) {
        metadata.insert("generation".into(), json!(1));
    }
    if info.kind == "Ingress" {
        default_ingress_class(state, &mut object)?;
    }
    let mut admitted = admission::admit(info, object, validation)?;
    no_escalation(state, info, &admitted.object)?;
    if info.kind == "Pod" && info.group.is_empty() {
        let namespace = meta::namespace(&admitted.object).to_owned();
        let account_name = admitted.object["spec"]["serviceAccountName"].as_str().unwrap_or("default").to_owned();
        let account = service_account(state, &namespace, &account_name).await?;
        let Some(account) = account else {
            return Err(ApiError::forbidden(format!(
                "pods \"{}\" is forbidden: error looking up service account {namespace}/{account_name}: serviceaccount \"{account_name}\" not found",
                meta::name(&admitted.object)
            )));
        };
        crate::serviceaccounts::mount_token(&mut admitted.object, Some(&account));
    }
    reset_status_on_create(info, &mut admitted.object);
    let name = meta::name(&admitted.object).to_owned();
    if info.namespaced {
        check_namespace(state, meta::namespace(&admitted.object))?;
    }
    let key = key(info, namespace.or(Some("default")), &name);
    let retryable = allocates_addresses(info);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut object = if retryable { admitted.object.clone() } else { std::mem::take(&mut admitted.object) };
        // Held until the write is applied, so no other Service is given the same address.
        let _allocation = allocate_service_addresses(state, info, &name, &mut object, None).await?;
        if dry_run {
            if state.store.get(&key).map_err(store_error)?.is_some() {
                return Err(ApiError::already_exists(info, &name));
            }
            return Ok(Written { object: Arc::new(object), warnings: admitted.warnings, encoded: None });
        }
        match state.store.write_stored(Command::Create { key: key.clone(), object }).await.map_err(store_error)? {
            Ok(stored) => return Ok(Written { object: stored.object, warnings: admitted.warnings, encoded: Some(("ADDED", stored.encoded)) }),
            // Another server gave the same address away first: allocate again from the state
            // that now shows it.
            Err(WriteError::AddressTaken { .. }) if retryable && attempt < ALLOCATION_ATTEMPTS => continue,
            Err(error) => return Err(write_error(info, &name, error)),
        }
    }
}

/// The ServiceAccount a new pod runs as (kube's ServiceAccount admission: a pod naming one that
/// does not exist is refused). The namespace's `default` account is made by a controller just
/// after the namespace, so a pod created in that moment waits for it, up to 2 s.
async fn service_account(state: &AppState, namespace: &str, name: &str) -> Result<Option<std::sync::Arc<Value>>, ApiError> {
    let key = ObjectKey::new("serviceaccounts", namespace, name);
    let waits = if name == "default" { 40 } else { 0 };
    for attempt in 0..=waits {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        if let Some(account) = state.store.get_shared(&key).map_err(store_error)? {
            return Ok(Some(account));
        }
    }
    Ok(None)
}

/// Whether `desired` (which carries no resourceVersion) equals `current` apart from
/// `metadata.resourceVersion`, compared in place rather than on a copy.
fn same_but_resource_version(desired: &Value, current: &Value) -> bool {
    let (Some(desired), Some(current)) = (desired.as_object(), current.as_object()) else { return desired == current };
    if desired.len() != current.len() {
        return false;
    }
    desired.iter().all(|(field, value)| match (field.as_str(), current.get(field)) {
        ("metadata", Some(stored)) => {
            let (Some(value), Some(stored)) = (value.as_object(), stored.as_object()) else { return value == stored };
            let counted = |map: &serde_json::Map<String, Value>| map.len() - usize::from(map.contains_key("resourceVersion"));
            counted(value) == counted(stored) && value.iter().all(|(key, inner)| key == "resourceVersion" || stored.get(key) == Some(inner))
        }
        (_, Some(stored)) => value == stored,
        (_, None) => false,
    })
}

/// How often a Service write allocates again after finding an address taken when it was applied.
const ALLOCATION_ATTEMPTS: usize = 3;

/// Whether writes of this kind allocate addresses (cluster IPs, node ports).
fn allocates_addresses(info: &ResourceInfo) -> bool {
    info.kind == "Service" && info.group.is_empty()
}

/// Which part of the object an update may change.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum UpdateScope {
    /// The main resource: everything but status (for kinds with a status subresource).
    Main,
    /// The status subresource: only status.
    Status,
}

/// Refuses a Role, ClusterRole or binding that grants more than the requester holds (when the
/// requester is judged by RBAC; see `rbac::escalation`).
fn no_escalation(state: &AppState, info: &ResourceInfo, object: &Value) -> Result<(), ApiError> {
    if info.group != shoal_api::validation::RBAC_GROUP {
        return Ok(());
    }
    let subject = crate::authz::REQUESTER.try_with(|identity| match identity {
        crate::authz::Identity::User(subject) if !subject.groups.iter().any(|g| g == "system:masters") => Some(subject.clone()),
        _ => None,
    });
    let Ok(Some(subject)) = subject else { return Ok(()) };
    match crate::rbac::escalation(state, &subject, info.kind, object) {
        None => Ok(()),
        Some(reason) => Err(ApiError::forbidden(format!("{} \"{}\" is forbidden: {reason}", info.group_resource(), meta::name(object)))),
    }
}

/// Fields whose change after creation Kubernetes refuses.
fn immutable_fields(info: &ResourceInfo) -> &'static [&'static str] {
    match info.kind {
        "Deployment" | "ReplicaSet" | "DaemonSet" => &["spec.selector"],
        "Job" => &["spec.selector", "spec.completionMode"],
        "Service" => &["spec.clusterIP"],
        "Pod" => &["spec.nodeName"],
        "RoleBinding" | "ClusterRoleBinding" => &["roleRef"],
        "Secret" => &["type"],
        _ => &[],
    }
}

/// What an update changes that cannot change: [`immutable_fields`] and an immutable
/// ConfigMap's or Secret's data. With `allocated_later` (a Service, before its addresses are
/// allocated), a cluster IP the update leaves out is not counted (the allocation keeps the
/// stored one).
fn immutable_errors(info: &ResourceInfo, current: &Value, object: &Value, allocated_later: bool) -> Vec<shoal_api::FieldError> {
    let mut errors = shoal_api::validation::immutable_data(info.kind, current, object);
    for path in immutable_fields(info) {
        let before = lookup(current, path);
        let after = lookup(object, path);
        let filled_in = allocated_later && after.is_null();
        if !before.is_null() && before != after && !filled_in {
            errors.push(shoal_api::FieldError::invalid(*path, after, "field is immutable"));
        }
    }
    errors
}

fn lookup<'a>(object: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(object, |value, segment| &value[segment])
}

/// Replaces `current` with `desired` within `scope`, checking `precondition`. `desired` is the
/// full object the client wants (after a patch, or as PUT).
#[allow(clippy::too_many_arguments)]
pub async fn update(
    state: &AppState,
    info: &'static ResourceInfo,
    namespace: Option<&str>,
    name: &str,
    current: &Value,
    mut desired: Value,
    scope: UpdateScope,
    precondition: Precondition,
    validation: FieldValidation,
    dry_run: bool,
) -> Result<Written, ApiError> {
    if !desired.is_object() {
        return Err(ApiError::bad_request(format!("the body of the request is not a {} object", info.kind)));
    }
    if let Some(body_name) = desired["metadata"]["name"].as_str()
        && body_name != name
    {
        return Err(ApiError::bad_request(format!("the name of the object ({body_name}) does not match the name on the URL ({name})")));
    }
    if info.namespaced
        && let Some(body_namespace) = desired["metadata"]["namespace"].as_str()
        && !body_namespace.is_empty()
        && Some(body_namespace) != namespace
    {
        return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
    }
    if scope == UpdateScope::Status {
        // Only status changes through /status; everything else stays as stored. A field the
        // body already holds as stored (a status patch's body is the stored object patched) is
        // kept rather than copied again.
        if let (Some(fields), Some(stored)) = (desired.as_object_mut(), current.as_object()) {
            fields.retain(|key, _| key == "status" || stored.contains_key(key));
            for (key, value) in stored {
                if key != "status" && fields.get(key) != Some(value) {
                    fields.insert(key.clone(), value.clone());
                }
            }
        }
    } else if info.has_status {
        match current.get("status") {
            Some(status) => desired["status"] = status.clone(),
            None => {
                if let Some(map) = desired.as_object_mut() {
                    map.remove("status");
                }
            }
        }
    }
    let current_metadata = current["metadata"].as_object();
    let metadata = meta::metadata_mut(&mut desired);
    for field in ["uid", "creationTimestamp", "generation", "deletionTimestamp", "deletionGracePeriodSeconds", "namespace", "name"] {
        match current_metadata.and_then(|m| m.get(field)) {
            Some(value) => metadata.insert(field.into(), value.clone()),
            None => metadata.remove(field),
        };
    }
    metadata.remove("resourceVersion");
    if !current["metadata"]["deletionTimestamp"].is_null() {
        // A terminating object may lose finalizers but not gain new ones.
        let before = meta::finalizers(current);
        let after: Vec<String> = metadata.get("finalizers").and_then(Value::as_array).into_iter().flatten().filter_map(|f| f.as_str().map(str::to_owned)).collect();
        if let Some(added) = after.iter().find(|f| !before.contains(f)) {
            return Err(ApiError::invalid(info, name, &[shoal_api::FieldError::forbidden("metadata.finalizers", format!("no new finalizers can be added if the object is being deleted, found new finalizers []string{{\"{added}\"}}"))]));
        }
    }
    let retryable = allocates_addresses(info);
    let mut admitted = admission::admit_with(info, desired, validation, |object| immutable_errors(info, current, object, retryable))?;
    no_escalation(state, info, &admitted.object)?;
    let precondition = Precondition { resource_version: precondition.resource_version, uid: Some(meta::uid(current).to_owned()) };
    let key = key(info, namespace, name);
    let mut attempt = 0;
    let shoal_store::Stored { revision, object: stored, encoded } = loop {
        attempt += 1;
        let mut object = if retryable { admitted.object.clone() } else { std::mem::take(&mut admitted.object) };
        let _allocation = allocate_service_addresses(state, info, name, &mut object, Some(current)).await?;
        // A Service again once its addresses are allocated: a cluster IP that differs from the
        // stored one (nothing else changed since admission checked).
        if retryable {
            let changed = immutable_errors(info, current, &object, false);
            if !changed.is_empty() {
                return Err(ApiError::invalid(info, name, &changed));
            }
        }
        if tracks_generation(info) && generation_fields_differ(current, &object) && scope == UpdateScope::Main {
            let generation = current["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            meta::metadata_mut(&mut object).insert("generation".into(), json!(generation));
        }
        let stale = precondition.resource_version.is_some_and(|rv| Some(rv) != meta::resource_version(current));
        if !stale && same_but_resource_version(&object, current) {
            // Nothing changes: answer with the stored object and do not write.
            return Ok(Written { object: Arc::new(current.clone()), warnings: admitted.warnings, encoded: None });
        }
        if dry_run {
            if stale {
                return Err(ApiError::conflict(info, name, "the object has been modified; please apply your changes to the latest version and try again"));
            }
            meta::metadata_mut(&mut object).insert("resourceVersion".into(), current["metadata"]["resourceVersion"].clone());
            return Ok(Written { object: Arc::new(object), warnings: admitted.warnings, encoded: None });
        }
        match state.store.write_stored(Command::Update { key: key.clone(), object, precondition: precondition.clone() }).await.map_err(store_error)? {
            Ok(written) => break written,
            // Another server gave the same node port away first: allocate again.
            Err(WriteError::AddressTaken { .. }) if retryable && attempt < ALLOCATION_ATTEMPTS => continue,
            Err(error) => return Err(write_error(info, name, error)),
        }
    };
    // Removing the last finalizer of an object being deleted completes the deletion.
    if !stored["metadata"]["deletionTimestamp"].is_null() && meta::finalizers(&stored).is_empty() && !graceful_pending(info, &stored) {
        let outcome = state
            .store
            .write(Command::Delete { key, precondition: Precondition { resource_version: Some(revision), uid: None } })
            .await
            .map_err(store_error)?;
        if let Ok((_, deleted)) = outcome {
            return Ok(Written { object: deleted, warnings: admitted.warnings, encoded: None });
        }
    }
    Ok(Written { object: stored, warnings: admitted.warnings, encoded: Some(("MODIFIED", encoded)) })
}

/// Gives a Service its cluster IP and node ports (see [`crate::services`]). The returned guard
/// keeps other Service writes from allocating until the caller's write is applied.
async fn allocate_service_addresses(
    state: &AppState,
    info: &ResourceInfo,
    name: &str,
    object: &mut Value,
    previous: Option<&Value>,
) -> Result<Option<tokio::sync::MutexGuard<'static, ()>>, ApiError> {
    if info.kind != "Service" || !info.group.is_empty() {
        return Ok(None);
    }
    let guard = SERVICE_ALLOCATION.lock().await;
    let listed = state.store.list(&info.group_resource(), None, None, None, &|_| true).map_err(store_error)?;
    let taken = crate::services::Taken::of(&listed.items, previous.map(meta::uid));
    let seed = rand::rng().random::<u64>();
    crate::services::assign(object, previous, &state.service_cidr, &taken, seed).map_err(|errors| ApiError::invalid(info, name, &errors))?;
    Ok(Some(guard))
}

/// kube-apiserver's DefaultIngressClass admission: an Ingress created without a class gets the
/// class marked `ingressclass.kubernetes.io/is-default-class` (when exactly one is).
fn default_ingress_class(state: &AppState, object: &mut Value) -> Result<(), ApiError> {
    if !object["spec"]["ingressClassName"].is_null() || !object["metadata"]["annotations"]["kubernetes.io/ingress.class"].is_null() || !object["spec"].is_object() {
        return Ok(());
    }
    let classes = resources::by_name("ingressclasses").expect("ingress classes are served");
    let defaults = state
        .store
        .list(&classes.group_resource(), None, None, None, &|c| c["metadata"]["annotations"]["ingressclass.kubernetes.io/is-default-class"] == "true")
        .map_err(store_error)?;
    if let [class] = defaults.items.as_slice() {
        object["spec"]["ingressClassName"] = json!(meta::name(class));
    }
    Ok(())
}

/// One allocation at a time (per process: the API server that writes is the one allocating).
static SERVICE_ALLOCATION: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A pod bound to a node waits for that node to finish its graceful deletion.
fn graceful_pending(info: &ResourceInfo, object: &Value) -> bool {
    info.kind == "Pod" && object["metadata"]["deletionGracePeriodSeconds"].as_i64().unwrap_or(0) > 0
}

/// How a patch body is applied.
#[derive(Clone, Copy, Debug)]
pub enum PatchType {
    Merge,
    Json,
    /// Kubernetes' strategic merge patch: lists merged by their keys (see `shoal_api::strategic`).
    Strategic,
}

#[allow(clippy::too_many_arguments)]
pub async fn patch(
    state: &AppState,
    info: &'static ResourceInfo,
    namespace: Option<&str>,
    name: &str,
    patch_type: PatchType,
    patch: &Value,
    scope: UpdateScope,
    manager: &str,
    validation: FieldValidation,
    dry_run: bool,
) -> Result<Written, ApiError> {
    for _ in 0..PATCH_RETRIES {
        // Shared with the store's copy: the patch works on its own copy only.
        let current = get_shared(state, info, namespace, name)?;
        let current: &Value = &current;
        let mut patched = match patch_type {
            PatchType::Merge => {
                if !patch.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                let mut patched = current.clone();
                shoal_api::patch::merge_patch(&mut patched, patch);
                patched
            }
            PatchType::Json => {
                let mut patched = current.clone();
                shoal_api::patch::json_patch(&mut patched, patch)?;
                patched
            }
            PatchType::Strategic => shoal_api::strategic::apply(info.kind, current, patch)?,
        };
        if matches!(scope, UpdateScope::Main) {
            shoal_api::apply::record_update(info.kind, current, &mut patched, manager, &info.api_version(), &now());
        }
        // A resourceVersion the patch itself sets is the client's precondition; otherwise the
        // patch applies to whatever is current, retried if another write wins the race.
        let requested = meta::resource_version(&patched);
        let client_precondition = requested.is_some() && requested != meta::resource_version(current);
        let precondition = Precondition {
            resource_version: if client_precondition { requested } else { meta::resource_version(current) },
            uid: None,
        };
        match update(state, info, namespace, name, current, patched, scope, precondition, validation, dry_run).await {
            Err(error) if error.code == 409 && error.reason == "Conflict" && !client_precondition => continue,
            other => return other,
        }
    }
    Err(ApiError::conflict(info, name, "the object kept changing while the patch was applied; try again"))
}

/// Server-side apply of `config` by `manager` (see `shoal_api::apply`): creates the object when
/// it does not exist (then the bool is true), else merges, with conflicts as 409 unless `force`.
#[allow(clippy::too_many_arguments)]
pub async fn server_side_apply(
    state: &AppState,
    info: &'static ResourceInfo,
    namespace: Option<&str>,
    name: &str,
    mut config: Value,
    manager: &str,
    force: bool,
    validation: FieldValidation,
    dry_run: bool,
) -> Result<(Written, bool), ApiError> {
    let Some(map) = config.as_object_mut() else { return Err(ApiError::bad_request("an apply patch must be an object")) };
    let api_version = info.api_version();
    if map.get("apiVersion").and_then(Value::as_str) != Some(api_version.as_str()) || map.get("kind").and_then(Value::as_str) != Some(info.kind) {
        return Err(ApiError::bad_request(format!("an apply patch to {} must set apiVersion {api_version:?} and kind {:?}", info.group_resource(), info.kind)));
    }
    let metadata = map.entry("metadata").or_insert_with(|| json!({}));
    let Some(metadata) = metadata.as_object_mut() else { return Err(ApiError::bad_request("metadata must be an object")) };
    match metadata.get("name").and_then(Value::as_str) {
        Some(body_name) if body_name != name => {
            return Err(ApiError::bad_request(format!("the name of the object ({body_name}) does not match the name on the URL ({name})")));
        }
        _ => {
            metadata.insert("name".into(), json!(name));
        }
    }
    metadata.remove("managedFields");
    let requested = meta::resource_version(&config);
    for _ in 0..PATCH_RETRIES {
        let current = match get(state, info, namespace, name) {
            Ok(current) => current,
            Err(error) if error.code == 404 => {
                let object = shoal_api::apply::apply(info.kind, None, &config, manager, force, &api_version, &now())?;
                match create(state, info, namespace, object, validation, dry_run).await {
                    Err(error) if error.code == 409 && error.reason == "AlreadyExists" => continue,
                    other => return other.map(|written| (written, true)),
                }
            }
            Err(error) => return Err(error),
        };
        let applied = shoal_api::apply::apply(info.kind, Some(&current), &config, manager, force, &api_version, &now())?;
        let client_precondition = requested.is_some() && requested != meta::resource_version(&current);
        let precondition = Precondition { resource_version: if client_precondition { requested } else { meta::resource_version(&current) }, uid: None };
        match update(state, info, namespace, name, &current, applied, UpdateScope::Main, precondition, validation, dry_run).await {
            Err(error) if error.code == 409 && error.reason == "Conflict" && !client_precondition => continue,
            other => return other.map(|written| (written, false)),
        }
    }
    Err(ApiError::conflict(info, name, "the object kept changing while the apply was merged; try again"))
}

/// `pods/{name}/binding`: assigns a pending pod to a node, once. The scheduler's only write.
pub async fn bind(state: &AppState, namespace: &str, name: &str, binding: &Value, dry_run: bool) -> Result<Value, ApiError> {
    let pods = resources::by_name("pods").expect("pods are served");
    let target = binding["target"]["name"].as_str().filter(|n| !n.is_empty());
    let Some(node_name) = target else {
        return Err(ApiError::invalid(pods, name, &[shoal_api::FieldError::required("target.name")]));
    };
    if let Some(kind) = binding["target"]["kind"].as_str().filter(|k| !k.is_empty() && *k != "Node") {
        return Err(ApiError::invalid(pods, name, &[shoal_api::FieldError::not_supported("target.kind", kind, &["Node"])]));
    }
    let current = get_shared(state, pods, Some(namespace), name)?;
    let current: &Value = &current;
    if let Some(expected) = binding["metadata"]["uid"].as_str().filter(|u| !u.is_empty())
        && expected != meta::uid(current)
    {
        return Err(ApiError::conflict(pods, name, format!("Precondition failed: UID in precondition: {expected}, UID in object meta: {}", meta::uid(current))));
    }
    if let Some(assigned) = current["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
        return Err(ApiError::conflict(pods, name, format!("pod {name} is already assigned to node \"{assigned}\"")));
    }
    if !current["metadata"]["deletionTimestamp"].is_null() {
        return Err(ApiError::conflict(pods, name, format!("pod {name} is being deleted, cannot be assigned to a host")));
    }
    let mut bound = current.clone();
    bound["spec"]["nodeName"] = json!(node_name);
    let scheduled = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now()});
    let conditions = bound["status"]["conditions"].as_array().cloned().unwrap_or_default();
    let mut conditions: Vec<Value> = conditions.into_iter().filter(|c| c["type"] != "PodScheduled").collect();
    conditions.insert(0, scheduled);
    bound["status"]["conditions"] = Value::Array(conditions);
    if dry_run {
        return Ok(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}));
    }
    let precondition = Precondition { resource_version: meta::resource_version(current), uid: Some(meta::uid(current).to_owned()) };
    state
        .store
        .write(Command::Update { key: key(pods, Some(namespace), name), object: bound, precondition })
        .await
        .map_err(store_error)?
        .map_err(|e| write_error(pods, name, e))?;
    Ok(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}))
}

/// The `autoscaling/v1` Scale view of a Deployment or ReplicaSet.
pub fn scale_of(object: &Value) -> Value {
    let selector = shoal_api::selector::LabelSelector::from_object(&object["spec"]["selector"]).map(|s| s.to_string()).unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": object["metadata"]["name"],
            "namespace": object["metadata"]["namespace"],
            "uid": object["metadata"]["uid"],
            "resourceVersion": object["metadata"]["resourceVersion"],
            "creationTimestamp": object["metadata"]["creationTimestamp"],
        },
        "spec": {"replicas": object["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {"replicas": object["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector},
    })
}

/// How a client changes a Scale.
pub enum ScaleChange<'a> {
    Replace(&'a Value),
    Patch(PatchType, &'a Value),
}

/// PUT or PATCH of `…/scale`: changes only `spec.replicas` of the scaled object.
pub async fn update_scale(
    state: &AppState,
    info: &'static ResourceInfo,
    namespace: Option<&str>,
    name: &str,
    change: ScaleChange<'_>,
    dry_run: bool,
) -> Result<Value, ApiError> {
    for _ in 0..PATCH_RETRIES {
        let current = get(state, info, namespace, name)?;
        let mut scale = scale_of(&current);
        let client_version = match &change {
            ScaleChange::Replace(body) => {
                scale = (*body).clone();
                meta::resource_version(body)
            }
            // A Scale has no lists, so a strategic merge patch of it is a merge patch.
            ScaleChange::Patch(PatchType::Merge | PatchType::Strategic, patch) => {
                shoal_api::patch::merge_patch(&mut scale, patch);
                meta::resource_version(patch)
            }
            ScaleChange::Patch(PatchType::Json, patch) => {
                shoal_api::patch::json_patch(&mut scale, patch)?;
                meta::resource_version(&scale).filter(|rv| Some(*rv) != meta::resource_version(&current))
            }
        };
        let replicas = &scale["spec"]["replicas"];
        let Some(replicas) = replicas.as_i64().filter(|r| *r >= 0) else {
            return Err(ApiError::invalid(info, name, &[shoal_api::FieldError::invalid("spec.replicas", replicas, "must be greater than or equal to 0")]));
        };
        let mut desired = current.clone();
        desired["spec"]["replicas"] = json!(replicas);
        let precondition = Precondition { resource_version: client_version.or(meta::resource_version(&current)), uid: None };
        match update(state, info, namespace, name, &current, desired, UpdateScope::Main, precondition, FieldValidation::Ignore, dry_run).await {
            Err(error) if error.code == 409 && error.reason == "Conflict" && client_version.is_none() => continue,
            Err(error) => return Err(error),
            Ok(written) => return Ok(scale_of(&written.object)),
        }
    }
    Err(ApiError::conflict(info, name, "the object kept changing while the scale was applied; try again"))
}

/// DeleteOptions from the body and query.
#[derive(Debug, Default, Clone)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub propagation_policy: Option<String>,
    pub precondition: Precondition,
    pub dry_run: bool,
}

impl DeleteOptions {
    pub fn from_body(body: &Value) -> Result<Self, ApiError> {
        let dry_run = match &body["dryRun"] {
            Value::Array(values) => values.iter().any(|v| v == "All"),
            _ => false,
        };
        let policy = body["propagationPolicy"].as_str().map(str::to_owned);
        if let Some(policy) = &policy
            && !["Orphan", "Background", "Foreground"].contains(&policy.as_str())
        {
            return Err(ApiError::bad_request(format!("propagationPolicy must be one of Orphan, Background, Foreground, got {policy}")));
        }
        Ok(Self {
            grace_period_seconds: body["gracePeriodSeconds"].as_i64(),
            propagation_policy: policy,
            precondition: Precondition {
                resource_version: body["preconditions"]["resourceVersion"].as_str().and_then(|rv| rv.parse().ok()),
                uid: body["preconditions"]["uid"].as_str().map(str::to_owned),
            },
            dry_run,
        })
    }
}

pub async fn delete(
    state: &Arc<AppState>,
    info: &'static ResourceInfo,
    namespace: Option<&str>,
    name: &str,
    options: &DeleteOptions,
) -> Result<Value, ApiError> {
    // A graceful deletion writes the object it read (with a deletion timestamp). One that loses
    // a race with another writer, say a node reporting the pod's status, tries again on the
    // object as it is now, as kube-apiserver's GuaranteedUpdate does: the client asked for a
    // deletion, not an update of a version. Its own preconditions are checked again each time.
    const ATTEMPTS: usize = 16;
    let mut attempt = 1;
    loop {
        match delete_once(state, info, namespace, name, options).await? {
            Ok(deleted) => return Ok(deleted),
            Err(raced) if attempt == ATTEMPTS => return Err(write_error(info, name, raced)),
            Err(_) => attempt += 1,
        }
    }
}

/// One attempt of [`delete`]: `Ok(Err(conflict))` when the object changed between reading it
/// and writing its deletion mark.
async fn delete_once(
    state: &Arc<AppState>,
    info: &'static ResourceInfo,
    namespace: Option<&str>,
    name: &str,
    options: &DeleteOptions,
) -> Result<Result<Value, WriteError>, ApiError> {
    let current = get(state, info, namespace, name)?;
    if let Some(expected) = &options.precondition.uid
        && expected != meta::uid(&current)
    {
        return Err(ApiError::conflict(info, name, format!("Precondition failed: UID in precondition: {expected}, UID in object meta: {}", meta::uid(&current))));
    }
    if let Some(expected) = options.precondition.resource_version
        && Some(expected) != meta::resource_version(&current)
    {
        return Err(ApiError::conflict(info, name, format!("Precondition failed: ResourceVersion in precondition: {expected}, ResourceVersion in object meta: {}", meta::resource_version(&current).unwrap_or(0))));
    }
    if options.dry_run {
        return Ok(Ok(current));
    }
    let key = key(info, namespace, name);
    let already_terminating = !current["metadata"]["deletionTimestamp"].is_null();

    if info.kind == "Namespace" {
        if ["default", "kube-system", "kube-public"].contains(&name) {
            return Err(ApiError::forbidden(format!("namespace \"{name}\" is forbidden: this namespace may not be deleted")));
        }
        let object = if already_terminating {
            current
        } else {
            let mut terminating = current.clone();
            let metadata = meta::metadata_mut(&mut terminating);
            metadata.insert("deletionTimestamp".into(), json!(now()));
            metadata.insert("deletionGracePeriodSeconds".into(), json!(0));
            terminating["status"]["phase"] = json!("Terminating");
            match write_deletion_mark(state, info, name, key, &current, terminating).await? {
                Ok(marked) => marked,
                Err(raced) => return Ok(Err(raced)),
            }
        };
        spawn_namespace_teardown(state, name.to_owned());
        return Ok(Ok(object));
    }

    let grace = match info.kind {
        "Pod" if !current["spec"]["nodeName"].as_str().unwrap_or_default().is_empty() => options
            .grace_period_seconds
            .or_else(|| current["spec"]["terminationGracePeriodSeconds"].as_i64())
            .unwrap_or(30)
            .max(0),
        _ => 0,
    };
    let mut finalizers = meta::finalizers(&current);
    // Foreground and Orphan deletion are finalizers the garbage collector acts on.
    let propagation_finalizer = match options.propagation_policy.as_deref() {
        Some("Foreground") => Some("foregroundDeletion"),
        Some("Orphan") => Some("orphan"),
        _ => None,
    };
    let adds_finalizer = propagation_finalizer.filter(|f| !finalizers.iter().any(|have| have == f) && !already_terminating);
    if let Some(finalizer) = adds_finalizer {
        finalizers.push(finalizer.to_owned());
    }
    if grace > 0 || !finalizers.is_empty() {
        // Graceful deletion: mark the object; its node (for pods) or the owners of its
        // finalizers complete the deletion.
        let current_grace = current["metadata"]["deletionGracePeriodSeconds"].as_i64();
        if already_terminating && current_grace.is_some_and(|g| g <= grace) {
            return Ok(Ok(current));
        }
        let mut terminating = current.clone();
        let deadline = jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_secs(grace)).unwrap_or_else(|_| jiff::Timestamp::now());
        let metadata = meta::metadata_mut(&mut terminating);
        if adds_finalizer.is_some() {
            metadata.insert("finalizers".into(), json!(finalizers));
        }
        metadata.insert("deletionTimestamp".into(), json!(meta::format_time(deadline)));
        metadata.insert("deletionGracePeriodSeconds".into(), json!(grace));
        if tracks_generation(info) {
            let generation = current["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            meta::metadata_mut(&mut terminating).insert("generation".into(), json!(generation));
        }
        return write_deletion_mark(state, info, name, key, &current, terminating).await;
    }
    let precondition = Precondition { resource_version: None, uid: Some(meta::uid(&current).to_owned()) };
    let (_, deleted) = state
        .store
        .write(Command::Delete { key, precondition })
        .await
        .map_err(store_error)?
        .map_err(|e| write_error(info, name, e))?;
    Ok(Ok(Arc::unwrap_or_clone(deleted)))
}

/// Writes `marked` (`current` with its deletion mark) if the object is still `current`; the
/// conflict when it is not comes back as `Ok(Err(..))`, for [`delete`] to try again.
async fn write_deletion_mark(state: &AppState, info: &ResourceInfo, name: &str, key: ObjectKey, current: &Value, marked: Value) -> Result<Result<Value, WriteError>, ApiError> {
    let precondition = Precondition { resource_version: meta::resource_version(current), uid: Some(meta::uid(current).to_owned()) };
    match state.store.write(Command::Update { key, object: marked, precondition }).await.map_err(store_error)? {
        Ok((_, stored)) => Ok(Ok(Arc::unwrap_or_clone(stored))),
        Err(raced @ WriteError::ResourceVersionConflict { .. }) => Ok(Err(raced)),
        Err(error) => Err(write_error(info, name, error)),
    }
}

/// Deletes everything in a terminating namespace, then the namespace itself. Runs until done;
/// restarted for every terminating namespace when the server starts.
pub fn spawn_namespace_teardown(state: &Arc<AppState>, namespace: String) {
    {
        let mut running = state.namespace_teardowns.lock().unwrap_or_else(|p| p.into_inner());
        if !running.insert(namespace.clone()) {
            return;
        }
    }
    let state = Arc::clone(state);
    let tracker = state.tasks.clone();
    tracker.spawn(async move {
        let shutdown = state.shutdown.clone();
        tokio::select! {
            _ = teardown(&state, &namespace) => {}
            _ = shutdown.cancelled() => {}
        }
        state.namespace_teardowns.lock().unwrap_or_else(|p| p.into_inner()).remove(&namespace);
    });
}

async fn teardown(state: &Arc<AppState>, namespace: &str) {
    let namespaces = resources::by_name("namespaces").expect("namespaces are served");
    loop {
        let mut remaining = 0usize;
        for info in resources::RESOURCES.iter().filter(|r| r.namespaced) {
            let listed = match state.store.list(&info.group_resource(), Some(namespace), None, None, &|_| true) {
                Ok(listed) => listed,
                Err(error) => {
                    tracing::warn!(%error, namespace, "listing during namespace teardown");
                    remaining += 1;
                    continue;
                }
            };
            for object in listed.items {
                remaining += 1;
                if object["metadata"]["deletionTimestamp"].is_null() {
                    let options = DeleteOptions { propagation_policy: Some("Background".into()), ..Default::default() };
                    if let Err(error) = delete(state, info, Some(namespace), meta::name(&object), &options).await
                        && error.code != 404
                    {
                        tracing::warn!(%error, namespace, "deleting during namespace teardown");
                    }
                }
            }
        }
        if remaining == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if let Ok(current) = get(state, namespaces, None, namespace) {
        let precondition = Precondition { resource_version: None, uid: Some(meta::uid(&current).to_owned()) };
        let outcome = state.store.write(Command::Delete { key: key(namespaces, None, namespace), precondition }).await;
        if let Err(error) = outcome {
            tracing::warn!(%error, namespace, "removing the namespace after teardown");
        }
    }
}

/// Creates `object` unless an object of that name exists (bootstrap objects are made once).
async fn create_if_missing(state: &AppState, info: &'static ResourceInfo, namespace: Option<&str>, object: Value) -> Result<(), ApiError> {
    if state.store.get(&key(info, namespace, meta::name(&object))).map_err(store_error)?.is_some() {
        return Ok(());
    }
    match create(state, info, namespace, object, FieldValidation::Strict, false).await {
        Ok(_) => Ok(()),
        Err(error) if error.code == 409 => Ok(()),
        Err(error) => Err(error),
    }
}

/// The `default/kubernetes` Service every cluster has: the first address of the service range,
/// port 443 (target: this server's port), with Endpoints and EndpointSlices naming every API
/// server of the group (see [`reconcile_kubernetes_endpoints`]).
async fn kubernetes_service(state: &Arc<AppState>, api_host: &str, api_port: u16) -> Result<(), ApiError> {
    let services = resources::by_name("services").expect("services are served");
    let service = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "clusterIP": state.service_cidr.first().to_string(),
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": api_port}]}});
    create_if_missing(state, services, Some("default"), service).await?;
    let mut members: Vec<String> = state.store.members().into_iter().map(|(_, url)| url).collect();
    if members.is_empty() {
        members.push(format!("https://{api_host}:{api_port}"));
    }
    reconcile_kubernetes_endpoints(state, &members).await
}

/// Where a member's API is served: its address and port, from its base URL
/// (`https://HOST:PORT`). Host names are resolved; `None` when that fails.
async fn member_address(url: &str) -> Option<(std::net::IpAddr, u16)> {
    let uri: http::Uri = url.parse().ok()?;
    let port = uri.port_u16().unwrap_or(443);
    let host = uri.host()?.trim_matches(['[', ']']);
    if let Ok(address) = host.parse::<std::net::IpAddr>() {
        return Some((address, port));
    }
    let resolved = tokio::time::timeout(Duration::from_secs(2), tokio::net::lookup_host((host, port))).await.ok()?.ok()?;
    let mut addresses: Vec<std::net::SocketAddr> = resolved.collect();
    // IPv4 first, as kube-apiserver advertises.
    addresses.sort_by_key(|a| a.is_ipv6());
    addresses.first().map(|a| (a.ip(), port))
}

/// The `default/kubernetes` EndpointSlices and Endpoints for API servers at `addresses`:
/// one slice per address family and port (a slice has one port list), the first named
/// `kubernetes` and the others `kubernetes-PORT` (`-v6` added for IPv6), and one Endpoints
/// with one subset per port.
fn kubernetes_endpoint_objects(addresses: &[(std::net::IpAddr, u16)]) -> (Vec<Value>, Value) {
    use std::collections::{BTreeMap, BTreeSet};
    let mut by_family_port: BTreeMap<(bool, u16), BTreeSet<std::net::IpAddr>> = BTreeMap::new();
    let mut by_port: BTreeMap<u16, BTreeSet<std::net::IpAddr>> = BTreeMap::new();
    for (address, port) in addresses {
        by_family_port.entry((address.is_ipv6(), *port)).or_default().insert(*address);
        by_port.entry(*port).or_default().insert(*address);
    }
    let slices = by_family_port
        .iter()
        .enumerate()
        .map(|(index, ((v6, port), hosts))| {
            let name = match (index, v6) {
                (0, _) => "kubernetes".to_owned(),
                (_, false) => format!("kubernetes-{port}"),
                (_, true) => format!("kubernetes-{port}-v6"),
            };
            let endpoints: Vec<Value> =
                hosts.iter().map(|host| json!({"addresses": [host.to_string()], "conditions": {"ready": true, "serving": true, "terminating": false}})).collect();
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": name, "labels": {"kubernetes.io/service-name": "kubernetes", "endpointslice.kubernetes.io/managed-by": "shoal-apiserver"}},
                "addressType": if *v6 { "IPv6" } else { "IPv4" },
                "endpoints": endpoints,
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}]})
        })
        .collect();
    let subsets: Vec<Value> = by_port
        .iter()
        .map(|(port, hosts)| {
            json!({"addresses": hosts.iter().map(|host| json!({"ip": host.to_string()})).collect::<Vec<_>>(),
                   "ports": [{"name": "https", "port": port, "protocol": "TCP"}]})
        })
        .collect();
    let endpoints = json!({"apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": subsets});
    (slices, endpoints)
}

/// Makes the `default/kubernetes` Endpoints and EndpointSlices name every API server of the
/// group (`members`: their base URLs), creating, rewriting and deleting as needed. The leader
/// runs it at start and whenever the membership changes (see [`keep_kubernetes_endpoints`]).
pub async fn reconcile_kubernetes_endpoints(state: &Arc<AppState>, members: &[String]) -> Result<(), ApiError> {
    let mut addresses = Vec::new();
    for url in members {
        match member_address(url).await {
            Some(address) => addresses.push(address),
            None => tracing::warn!(%url, "an API server's address does not resolve; the kubernetes Endpoints leave it out"),
        }
    }
    if addresses.is_empty() {
        return Ok(());
    }
    let (slices, endpoints) = kubernetes_endpoint_objects(&addresses);
    let wanted: Vec<String> = slices.iter().map(|slice| meta::name(slice).to_owned()).collect();
    let slice_info = resources::by_name("endpointslices").expect("served");
    let endpoints_info = resources::by_name("endpoints").expect("served");
    let mut desired: Vec<(&'static ResourceInfo, Value, &[&str])> = slices.into_iter().map(|slice| (slice_info, slice, &["endpoints", "ports", "addressType"][..])).collect();
    desired.push((endpoints_info, endpoints, &["subsets"][..]));
    for (info, mut object, fields) in desired {
        let name = meta::name(&object).to_owned();
        match state.store.get(&key(info, Some("default"), &name)).map_err(store_error)? {
            None => create_if_missing(state, info, Some("default"), object).await?,
            Some(current) => {
                if fields.iter().any(|field| current[*field] != object[*field]) {
                    object["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
                    let precondition = Precondition { resource_version: meta::resource_version(&current), uid: None };
                    update(state, info, Some("default"), &name, &current, object, UpdateScope::Main, precondition, FieldValidation::Strict, false).await?;
                }
            }
        }
    }
    // Slices of ports no server serves on any more.
    let listed = state
        .store
        .list(&slice_info.group_resource(), Some("default"), None, None, &|slice| {
            slice["metadata"]["labels"]["kubernetes.io/service-name"] == "kubernetes" && slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == "shoal-apiserver"
        })
        .map_err(store_error)?;
    for slice in listed.items {
        let name = meta::name(&slice);
        if !wanted.iter().any(|w| w == name) {
            match delete(state, slice_info, Some("default"), name, &DeleteOptions::default()).await {
                Ok(_) => {}
                Err(error) if error.code == 404 => {}
                Err(error) => return Err(error),
            }
        }
    }
    Ok(())
}

/// On the leader, keeps the `default/kubernetes` Endpoints in step with the group's members:
/// checked every 2 s, rewritten when a member joins, leaves or moves.
pub async fn keep_kubernetes_endpoints(state: Arc<AppState>) {
    let mut written: Option<Vec<String>> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = state.shutdown.cancelled() => return,
        }
        if state.store.leader().is_none_or(|(leader, _)| leader != state.store.id()) {
            written = None;
            continue;
        }
        let mut members: Vec<String> = state.store.members().into_iter().map(|(_, url)| url).collect();
        members.sort();
        if written.as_ref() == Some(&members) {
            continue;
        }
        match reconcile_kubernetes_endpoints(&state, &members).await {
            Ok(()) => written = Some(members),
            Err(error) => tracing::info!(error = %error.message, "the kubernetes Endpoints wait to be rewritten with the current API servers"),
        }
    }
}

/// Creates the objects every cluster has (namespaces, the `shoal` IngressClass, RBAC's default
/// ClusterRoles, the `kubernetes` Service), and resumes teardown of terminating namespaces.
pub async fn bootstrap(state: &Arc<AppState>, api_host: &str, api_port: u16) -> Result<(), ApiError> {
    let namespaces = resources::by_name("namespaces").expect("namespaces are served");
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        create_if_missing(state, namespaces, None, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})).await?;
    }
    // Every node's ingress router serves the `shoal` class, the default one.
    let classes = resources::by_name("ingressclasses").expect("ingress classes are served");
    let class = json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": shoal_api::ingress::CLASS, "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
        "spec": {"controller": shoal_api::ingress::CONTROLLER}});
    create_if_missing(state, classes, None, class).await?;
    // RBAC's default roles (`cluster-admin`, `admin`, `edit`, `view`).
    for (plural, object) in crate::rbac::bootstrap_objects() {
        let info = resources::by_path(shoal_api::validation::RBAC_GROUP, "v1", plural).expect("RBAC kinds are served");
        create_if_missing(state, info, None, object).await?;
    }
    kubernetes_service(state, api_host, api_port).await?;
    let listed = state.store.list(&namespaces.group_resource(), None, None, None, &|o| !o["metadata"]["deletionTimestamp"].is_null()).map_err(store_error)?;
    for object in listed.items {
        spawn_namespace_teardown(state, meta::name(&object).to_owned());
    }
    Ok(())
}

/// `object` as [`with_type`] would make it, serialised from a borrow: no copy of the object
/// (an answer or a watch event shares the stored object).
pub struct Typed<'a> {
    info: &'a ResourceInfo,
    object: &'a Value,
}

pub fn typed<'a>(info: &'a ResourceInfo, object: &'a Value) -> Typed<'a> {
    Typed { info, object }
}

impl serde::Serialize for Typed<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let Some(fields) = self.object.as_object() else { return self.object.serialize(serializer) };
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("apiVersion", &self.info.api_version())?;
        map.serialize_entry("kind", self.info.kind)?;
        for (key, value) in fields {
            if key != "apiVersion" && key != "kind" {
                map.serialize_entry(key, value)?;
            }
        }
        map.end()
    }
}

/// The object with `apiVersion` and `kind` set (list items carry them too).
pub fn with_type(info: &ResourceInfo, mut object: Value) -> Value {
    if let Some(map) = object.as_object_mut() {
        let mut ordered = Map::new();
        ordered.insert("apiVersion".into(), json!(info.api_version()));
        ordered.insert("kind".into(), json!(info.kind));
        for (k, v) in std::mem::take(map) {
            ordered.entry(k).or_insert(v);
        }
        *map = ordered;
    }
    object
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_serialises_what_with_type_builds_with_type_and_version_first() {
        let pods = resources::by_name("pods").expect("pods");
        let deployments = resources::by_name("deployments").expect("deployments");
        for (info, object) in [
            (pods, json!({"metadata": {"name": "p"}, "data": {"a": "1"}, "spec": {"x": [1, 2]}})),
            // The stored kind and version are replaced by the resource's, as with_type does.
            (deployments, json!({"apiVersion": "extensions/v1beta1", "kind": "Wrong", "metadata": {"name": "d"}})),
            (pods, json!("not an object")),
        ] {
            let text = serde_json::to_string(&typed(info, &object)).expect("serialises");
            assert_eq!(serde_json::from_str::<Value>(&text).expect("JSON"), with_type(info, object.clone()), "{text}");
            if object.is_object() {
                assert!(text.starts_with(&format!("{{\"apiVersion\":\"{}\",\"kind\":\"{}\",", info.api_version(), info.kind)), "{text}");
            }
        }
    }

    #[test]
    fn in_place_comparisons_match_comparing_copies() {
        let stored = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "resourceVersion": "7", "labels": {"a": "1"}}, "spec": {"x": 1}, "status": {"phase": "Running"}});
        let mut same = stored.clone();
        same["metadata"].as_object_mut().expect("metadata").remove("resourceVersion");
        assert!(same_but_resource_version(&same, &stored));
        let mut relabelled = same.clone();
        relabelled["metadata"]["labels"]["a"] = json!("2");
        assert!(!same_but_resource_version(&relabelled, &stored));
        let mut extra = same.clone();
        extra["metadata"]["annotations"] = json!({});
        assert!(!same_but_resource_version(&extra, &stored), "a field more in metadata is a change");
        let mut fewer = same.clone();
        fewer.as_object_mut().expect("object").remove("status");
        assert!(!same_but_resource_version(&fewer, &stored), "a field less is a change");

        // Generation: only what is not metadata, status, apiVersion or kind.
        assert!(!generation_fields_differ(&stored, &relabelled));
        let mut status_only = stored.clone();
        status_only["status"]["phase"] = json!("Succeeded");
        assert!(!generation_fields_differ(&stored, &status_only));
        let mut respecced = stored.clone();
        respecced["spec"]["x"] = json!(2);
        assert!(generation_fields_differ(&stored, &respecced));
        let mut added = stored.clone();
        added["data"] = json!({});
        assert!(generation_fields_differ(&stored, &added) && generation_fields_differ(&added, &stored));
    }

    #[test]
    fn kubernetes_endpoints_group_the_servers_by_port_and_family() {
        let v4 = |text: &str| text.parse::<std::net::IpAddr>().expect("address");
        let (slices, endpoints) = kubernetes_endpoint_objects(&[(v4("10.0.0.2"), 6443), (v4("10.0.0.1"), 6443), (v4("10.0.0.3"), 7443), (v4("fd00::1"), 6443)]);
        let summary: Vec<(String, String, Vec<String>, u64)> = slices
            .iter()
            .map(|slice| {
                let hosts = slice["endpoints"].as_array().expect("endpoints").iter().map(|e| e["addresses"][0].as_str().expect("address").to_owned()).collect();
                (meta::name(slice).to_owned(), slice["addressType"].as_str().expect("type").to_owned(), hosts, slice["ports"][0]["port"].as_u64().expect("port"))
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("kubernetes".to_owned(), "IPv4".to_owned(), vec!["10.0.0.1".to_owned(), "10.0.0.2".to_owned()], 6443),
                ("kubernetes-7443".to_owned(), "IPv4".to_owned(), vec!["10.0.0.3".to_owned()], 7443),
                ("kubernetes-6443-v6".to_owned(), "IPv6".to_owned(), vec!["fd00::1".to_owned()], 6443),
            ]
        );
        assert_eq!(
            endpoints["subsets"],
            json!([
                {"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}, {"ip": "fd00::1"}], "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]},
                {"addresses": [{"ip": "10.0.0.3"}], "ports": [{"name": "https", "port": 7443, "protocol": "TCP"}]}
            ])
        );
    }

    #[tokio::test]
    async fn member_addresses_come_from_their_urls() {
        assert_eq!(member_address("https://10.1.2.3:6443").await, Some(("10.1.2.3".parse().expect("ip"), 6443)));
        assert_eq!(member_address("https://[fd00::7]:7443").await, Some(("fd00::7".parse().expect("ip"), 7443)));
        assert_eq!(member_address("https://127.0.0.1").await, Some(("127.0.0.1".parse().expect("ip"), 443)));
        assert_eq!(member_address("not a url").await, None);
    }
}
