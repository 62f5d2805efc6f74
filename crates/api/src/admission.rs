//! Admission of a written object: the schema check against the k8s-openapi type (type errors and
//! unknown fields, per `fieldValidation`), then defaulting, then validation.

use k8s_openapi::api::{apps, autoscaling, batch, coordination, core, discovery, networking, rbac};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{ApiError, FieldError};
use crate::{ResourceInfo, defaults, validation};

/// What to do with fields the schema does not know (`?fieldValidation=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FieldValidation {
    /// Refuse the request (kubectl's default with server-side validation).
    #[default]
    Strict,
    /// Drop the fields and answer with a warning.
    Warn,
    /// Drop the fields silently.
    Ignore,
}

impl FieldValidation {
    pub fn parse(text: Option<&str>) -> Result<Self, ApiError> {
        match text {
            None | Some("") | Some("Strict") => Ok(Self::Strict),
            Some("Warn") => Ok(Self::Warn),
            Some("Ignore") => Ok(Self::Ignore),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation must be one of \"Ignore\", \"Warn\", or \"Strict\", got \"{other}\""
            ))),
        }
    }
}

/// The outcome of admission: the object to store and any warnings for the client.
#[derive(Debug)]
pub struct Admitted {
    pub object: Value,
    pub warnings: Vec<String>,
}

/// Checks `object` against the kind's schema; returns the object (with unknown fields dropped
/// unless refused) and the unknown fields found.
fn check_typed<T: DeserializeOwned + Serialize>(object: &Value) -> Result<(Option<Value>, Vec<String>), String> {
    let mut unknown = Vec::new();
    let typed: T = serde_ignored::deserialize(object, |path| unknown.push(kubernetes_path(&path)))
        .map_err(|e| e.to_string())?;
    if unknown.is_empty() {
        Ok((None, unknown))
    } else {
        let pruned = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
        Ok((Some(pruned), unknown))
    }
}

/// Renders serde_ignored's path the way Kubernetes writes field paths: `spec.containers[0].foo`.
fn kubernetes_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", kubernetes_path(parent)),
        Path::Map { parent, key } => {
            let parent = kubernetes_path(parent);
            if parent.is_empty() { key.clone() } else { format!("{parent}.{key}") }
        }
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => kubernetes_path(parent),
    }
}

macro_rules! dispatch {
    ($info:expr, $object:expr, $( ($group:literal, $kind:literal) => $ty:ty ),* $(,)?) => {
        match ($info.group, $info.kind) {
            $( ($group, $kind) => Some(check_typed::<$ty>($object)), )*
            _ => None,
        }
    };
}

fn schema_check(info: &ResourceInfo, object: &Value) -> Option<Result<(Option<Value>, Vec<String>), String>> {
    dispatch!(info, object,
        ("", "Namespace") => core::v1::Namespace,
        ("", "Pod") => core::v1::Pod,
        ("", "Service") => core::v1::Service,
        ("", "Endpoints") => core::v1::Endpoints,
        ("", "ConfigMap") => core::v1::ConfigMap,
        ("", "Secret") => core::v1::Secret,
        ("", "Node") => core::v1::Node,
        ("", "Event") => core::v1::Event,
        ("", "ServiceAccount") => core::v1::ServiceAccount,
        ("rbac.authorization.k8s.io", "Role") => rbac::v1::Role,
        ("rbac.authorization.k8s.io", "ClusterRole") => rbac::v1::ClusterRole,
        ("rbac.authorization.k8s.io", "RoleBinding") => rbac::v1::RoleBinding,
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => rbac::v1::ClusterRoleBinding,
        ("apps", "Deployment") => apps::v1::Deployment,
        ("apps", "ReplicaSet") => apps::v1::ReplicaSet,
        ("apps", "DaemonSet") => apps::v1::DaemonSet,
        ("batch", "Job") => batch::v1::Job,
        ("batch", "CronJob") => batch::v1::CronJob,
        ("networking.k8s.io", "Ingress") => networking::v1::Ingress,
        ("networking.k8s.io", "IngressClass") => networking::v1::IngressClass,
        ("discovery.k8s.io", "EndpointSlice") => discovery::v1::EndpointSlice,
        ("coordination.k8s.io", "Lease") => coordination::v1::Lease,
        ("autoscaling", "HorizontalPodAutoscaler") => autoscaling::v2::HorizontalPodAutoscaler,
    )
}

/// Whether the kind has a typed schema (every served kind must).
pub fn has_schema(info: &ResourceInfo) -> bool {
    schema_check(info, &serde_json::json!({})).is_some()
}

/// Checks apiVersion and kind, then the schema, per `mode`. Does not default or validate.
pub fn decode(info: &ResourceInfo, mut object: Value, mode: FieldValidation) -> Result<Admitted, ApiError> {
    if !object.is_object() {
        return Err(ApiError::bad_request(format!("the body of the request is not a {} object", info.kind)));
    }
    let api_version = info.api_version();
    match object["apiVersion"].as_str() {
        None => object["apiVersion"] = Value::String(api_version.clone()),
        Some(given) if given == api_version => {}
        Some(given) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({given}) does not match the expected API version ({api_version})"
            )));
        }
    }
    match object["kind"].as_str() {
        None => object["kind"] = Value::String(info.kind.to_owned()),
        Some(kind) if kind == info.kind => {}
        Some(kind) => {
            return Err(ApiError::bad_request(format!("the kind in the data ({kind}) does not match the expected kind ({})", info.kind)));
        }
    }
    let checked = schema_check(info, &object)
        .ok_or_else(|| ApiError::internal(format!("no schema for {}", info.kind)))?
        .map_err(|detail| {
            ApiError::bad_request(format!("{} in version \"{}\" cannot be handled as a {}: {detail}", info.kind, info.version, info.kind))
        })?;
    let (pruned, unknown) = checked;
    let mut warnings = Vec::new();
    if !unknown.is_empty() {
        match mode {
            FieldValidation::Strict => {
                let listed: Vec<String> = unknown.iter().map(|field| format!("unknown field \"{field}\"")).collect();
                return Err(ApiError::bad_request(format!(
                    "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
                    info.kind,
                    info.version,
                    info.kind,
                    listed.join(", ")
                )));
            }
            FieldValidation::Warn => warnings.extend(unknown.iter().map(|field| format!("unknown field \"{field}\""))),
            FieldValidation::Ignore => {}
        }
        if let Some(pruned) = pruned {
            object = pruned;
        }
    }
    Ok(Admitted { object, warnings })
}

/// Full admission of a create or update: decode, default, validate.
pub fn admit(info: &ResourceInfo, object: Value, mode: FieldValidation) -> Result<Admitted, ApiError> {
    admit_with(info, object, mode, |_| Vec::new())
}

/// [`admit`], refusing also what `before` finds wrong with the defaulted object (an update's
/// changes to immutable fields), listed first and in the same answer, as kube-apiserver's
/// update validation lists them.
pub fn admit_with(info: &ResourceInfo, object: Value, mode: FieldValidation, before: impl FnOnce(&Value) -> Vec<FieldError>) -> Result<Admitted, ApiError> {
    let mut admitted = decode(info, object, mode)?;
    defaults::apply(info, &mut admitted.object);
    let mut errors = before(&admitted.object);
    errors.extend(validation::validate(info, &admitted.object));
    if !errors.is_empty() {
        let name = admitted.object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        return Err(ApiError::invalid(info, &name, &errors));
    }
    Ok(admitted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::by_name;
    use serde_json::json;

    fn deployment() -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "shoal.local/samples/hello:latest"}]}}}})
    }

    #[test]
    fn unknown_fields_are_refused_under_strict_with_their_path() {
        let info = by_name("deploy").expect("served");
        let mut object = deployment();
        object["spec"]["replicaz"] = json!(3);
        object["spec"]["template"]["spec"]["containers"][0]["imagee"] = json!("x");
        let error = admit(info, object, FieldValidation::Strict).expect_err("refused");
        assert_eq!(error.code, 400);
        assert!(error.message.contains("unknown field \"spec.replicaz\""), "{}", error.message);
        assert!(error.message.contains("unknown field \"spec.template.spec.containers[0].imagee\""), "{}", error.message);
    }

    #[test]
    fn unknown_fields_are_dropped_under_warn_and_ignore() {
        let info = by_name("deploy").expect("served");
        let mut object = deployment();
        object["spec"]["replicaz"] = json!(3);
        let warned = admit(info, object.clone(), FieldValidation::Warn).expect("admitted");
        assert_eq!(warned.warnings, vec!["unknown field \"spec.replicaz\""]);
        assert!(warned.object["spec"].get("replicaz").is_none());
        let ignored = admit(info, object, FieldValidation::Ignore).expect("admitted");
        assert!(ignored.warnings.is_empty());
        assert_eq!(ignored.object["spec"]["replicas"], 1);
    }

    #[test]
    fn type_errors_and_wrong_kinds_are_bad_requests() {
        let info = by_name("deploy").expect("served");
        let mut object = deployment();
        object["spec"]["replicas"] = json!("three");
        assert_eq!(admit(info, object, FieldValidation::Strict).expect_err("refused").code, 400);
        let mut object = deployment();
        object["kind"] = json!("ReplicaSet");
        assert_eq!(admit(info, object, FieldValidation::Strict).expect_err("refused").code, 400);
    }

    #[test]
    fn invalid_objects_get_422_with_causes() {
        let info = by_name("deploy").expect("served");
        let mut object = deployment();
        object["spec"]["template"]["metadata"]["labels"] = json!({"app": "other"});
        let error = admit(info, object, FieldValidation::Strict).expect_err("refused");
        assert_eq!(error.code, 422);
        let status = error.to_status();
        assert_eq!(status["details"]["causes"][0]["field"], "spec.template.metadata.labels");
    }

    #[test]
    fn an_updates_own_errors_come_first_in_the_same_answer() {
        let info = by_name("deploy").expect("served");
        let mut object = deployment();
        object["spec"]["template"]["metadata"]["labels"] = json!({"app": "other"});
        let before = |defaulted: &Value| {
            assert_eq!(defaulted["spec"]["replicas"], 1, "judged after defaulting");
            vec![FieldError::invalid("spec.selector", &defaulted["spec"]["selector"], "field is immutable")]
        };
        let status = admit_with(info, object, FieldValidation::Strict, before).expect_err("refused").to_status();
        let fields: Vec<&str> = status["details"]["causes"].as_array().expect("causes").iter().filter_map(|c| c["field"].as_str()).collect();
        assert_eq!(fields, ["spec.selector", "spec.template.metadata.labels"]);
        assert!(admit_with(info, deployment(), FieldValidation::Strict, |_| Vec::new()).is_ok());
    }
}
