//! OpenAPI v3 for the kinds Shoal serves, generated from k8s-openapi's types (their `schemars`
//! schemas carry Kubernetes' own descriptions), one document per group version as
//! kube-apiserver serves them at `/openapi/v3/apis/GROUP/VERSION`.
//!
//! kubectl reads them for two things: `kubectl explain` walks `components.schemas`, and default
//! validation (`apply`, `create -f`) looks for the `fieldValidation` query parameter on each
//! kind's write operations; finding it, kubectl leaves validation to the server (which refuses
//! unknown fields under `fieldValidation=Strict`). Write operations deliberately carry no
//! `requestBody`: kubectl would then compute strategic merge patches from these schemas, which
//! lack the merge-key extensions, instead of from its compiled-in types.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use schemars::JsonSchema;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value, json};

use crate::resources::{RESOURCES, ResourceInfo};

/// The generated documents: `index` for `/openapi/v3`, and each group version's document by
/// its path (`api/v1`, `apis/apps/v1`) with the hash that names its version.
pub struct OpenApi {
    pub index: Vec<u8>,
    pub documents: BTreeMap<String, Document>,
}

pub struct Document {
    pub body: Vec<u8>,
    pub hash: String,
}

/// Adds the schema of the k8s-openapi type for `kind` (and of everything it refers to) to the
/// generator; returns the schema's name, or `None` for a kind without a type here.
fn add_kind(generator: &mut SchemaGenerator, kind: &str) -> Option<String> {
    use k8s_openapi::api::{apps, autoscaling, batch, coordination, core, discovery, networking, rbac};
    macro_rules! kinds {
        ($($name:literal => $ty:ty),* $(,)?) => {
            match kind {
                $($name => {
                    generator.subschema_for::<$ty>();
                    Some(<$ty as JsonSchema>::schema_name().into_owned())
                })*
                _ => None,
            }
        };
    }
    kinds! {
        "Namespace" => core::v1::Namespace,
        "Pod" => core::v1::Pod,
        "Service" => core::v1::Service,
        "Endpoints" => core::v1::Endpoints,
        "ConfigMap" => core::v1::ConfigMap,
        "Secret" => core::v1::Secret,
        "Node" => core::v1::Node,
        "Event" => core::v1::Event,
        "ServiceAccount" => core::v1::ServiceAccount,
        "Role" => rbac::v1::Role,
        "ClusterRole" => rbac::v1::ClusterRole,
        "RoleBinding" => rbac::v1::RoleBinding,
        "ClusterRoleBinding" => rbac::v1::ClusterRoleBinding,
        "Deployment" => apps::v1::Deployment,
        "ReplicaSet" => apps::v1::ReplicaSet,
        "DaemonSet" => apps::v1::DaemonSet,
        "Job" => batch::v1::Job,
        "CronJob" => batch::v1::CronJob,
        "Ingress" => networking::v1::Ingress,
        "IngressClass" => networking::v1::IngressClass,
        "EndpointSlice" => discovery::v1::EndpointSlice,
        "Lease" => coordination::v1::Lease,
        "HorizontalPodAutoscaler" => autoscaling::v2::HorizontalPodAutoscaler,
    }
}

fn gvk(info: &ResourceInfo) -> Value {
    json!({"group": info.group, "version": info.version, "kind": info.kind})
}

fn query(name: &str, kind: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": kind, "uniqueItems": true}})
}

fn path_parameter(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": format!("the {name} of the object"), "schema": {"type": "string", "uniqueItems": true}})
}

/// One operation on `info`'s kind; writes take kube-apiserver's write parameters.
fn operation(info: &ResourceInfo, action: &str, verb: &str, schema: &str, write: bool) -> Value {
    let mut parameters = Vec::new();
    if write {
        parameters.push(query("dryRun", "string", "When present (All), the write is validated and answered but not persisted."));
        parameters.push(query("fieldManager", "string", "The name of the actor making the change."));
        parameters.push(query(
            "fieldValidation",
            "string",
            "How the server treats unknown and duplicate fields: Ignore, Warn (the default) or Strict (refused with an error).",
        ));
    }
    if action == "patch" {
        parameters.push(query("force", "boolean", "Server-side apply: take over conflicting fields."));
    }
    json!({
        "operationId": format!("{verb}{}", info.kind),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(info),
        "parameters": parameters,
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}},
            "401": {"description": "Unauthorized"},
        },
    })
}

fn paths_for(info: &ResourceInfo, schema: &str, paths: &mut Map<String, Value>) {
    let base = info.group_version_path();
    let (collection, mut path_parameters) = if info.namespaced {
        (format!("{base}/namespaces/{{namespace}}/{}", info.plural), vec![path_parameter("namespace")])
    } else {
        (format!("{base}/{}", info.plural), Vec::new())
    };
    paths.insert(
        collection.clone(),
        json!({
            "get": operation(info, "list", "list", schema, false),
            "post": operation(info, "post", "create", schema, true),
            "parameters": path_parameters.clone(),
        }),
    );
    path_parameters.insert(0, path_parameter("name"));
    paths.insert(
        format!("{collection}/{{name}}"),
        json!({
            "get": operation(info, "get", "read", schema, false),
            "put": operation(info, "put", "replace", schema, true),
            "patch": operation(info, "patch", "patch", schema, true),
            "delete": operation(info, "delete", "delete", schema, false),
            "parameters": path_parameters,
        }),
    );
}

/// The document path of a group version: `api/v1` or `apis/GROUP/VERSION`.
fn document_path(info: &ResourceInfo) -> String {
    info.group_version_path().trim_start_matches('/').to_owned()
}

fn hash_of(bytes: &[u8]) -> String {
    // SipHash with fixed keys: stable for the life of the binary, which is all a cache needs.
    let mut hasher = std::hash::DefaultHasher::new();
    bytes.hash(&mut hasher);
    format!("{:016X}", hasher.finish())
}

/// Generates every group version's document and the index (`version` is the server's
/// `gitVersion`).
pub fn generate(version: &str) -> OpenApi {
    let mut by_group_version: BTreeMap<String, Vec<&'static ResourceInfo>> = BTreeMap::new();
    for info in RESOURCES {
        by_group_version.entry(document_path(info)).or_default().push(info);
    }
    let mut documents = BTreeMap::new();
    let mut index = Map::new();
    for (path, infos) in by_group_version {
        let mut generator = SchemaGenerator::new(SchemaSettings::openapi3());
        let mut paths = Map::new();
        let mut kinds = Vec::new();
        for info in infos {
            let Some(schema) = add_kind(&mut generator, info.kind) else { continue };
            paths_for(info, &schema, &mut paths);
            kinds.push((schema, gvk(info)));
        }
        let mut schemas = generator.take_definitions(true);
        for (schema, gvk) in kinds {
            if let Some(Value::Object(definition)) = schemas.get_mut(&schema) {
                definition.insert("x-kubernetes-group-version-kind".into(), json!([gvk]));
            }
        }
        let document = json!({
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": version},
            "paths": paths,
            "components": {"schemas": schemas},
        });
        let body = serde_json::to_vec(&document).unwrap_or_default();
        let hash = hash_of(&body);
        index.insert(path.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}));
        documents.insert(path, Document { body, hash });
    }
    let index = serde_json::to_vec(&json!({"paths": index})).unwrap_or_default();
    OpenApi { index, documents }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_kind_has_a_schema_and_write_operations_with_field_validation() {
        let openapi = generate("v1.33.0");
        let index: Value = serde_json::from_slice(&openapi.index).expect("index JSON");
        for info in RESOURCES {
            let path = document_path(info);
            let url = index["paths"][&path]["serverRelativeURL"].as_str().unwrap_or_default();
            assert!(url.starts_with(&format!("/openapi/v3/{path}?hash=")), "{path}: {url}");
            let document: Value = serde_json::from_slice(&openapi.documents[&path].body).expect("document JSON");
            let schemas = document["components"]["schemas"].as_object().expect("schemas");
            let (name, schema) = schemas
                .iter()
                .find(|(_, s)| s["x-kubernetes-group-version-kind"][0]["kind"] == info.kind)
                .unwrap_or_else(|| panic!("no schema is tagged with {}", info.kind));
            assert!(schema["properties"]["metadata"].is_object(), "{name}");
            let item = if info.namespaced { format!("{}/namespaces/{{namespace}}/{}/{{name}}", info.group_version_path(), info.plural) } else { format!("{}/{}/{{name}}", info.group_version_path(), info.plural) };
            let patch = &document["paths"][&item]["patch"];
            assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], info.kind, "{item}");
            assert!(patch["parameters"].as_array().expect("parameters").iter().any(|p| p["name"] == "fieldValidation"));
            assert!(patch.get("requestBody").is_none(), "no requestBody, so kubectl keeps its own merge keys");
        }
    }

    #[test]
    fn references_resolve_within_the_document() {
        let openapi = generate("v1.33.0");
        let document: Value = serde_json::from_slice(&openapi.documents["apis/apps/v1"].body).expect("JSON");
        let schemas = document["components"]["schemas"].as_object().expect("schemas");
        let spec = &schemas["io.k8s.api.apps.v1.Deployment"]["properties"]["spec"];
        let target = spec.to_string();
        assert!(target.contains("#/components/schemas/io.k8s.api.apps.v1.DeploymentSpec"), "{target}");
        let text = String::from_utf8_lossy(&openapi.documents["apis/apps/v1"].body).into_owned();
        for reference in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = reference.split('"').next().unwrap_or_default();
            assert!(schemas.contains_key(name), "{name} is referred to but not defined");
        }
        assert!(schemas["io.k8s.api.apps.v1.DeploymentSpec"]["description"].as_str().unwrap_or_default().contains("desired behavior"));
    }
}
