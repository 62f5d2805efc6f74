//! Errors as the Kubernetes API reports them: a `Status` object with code, reason and causes.

use serde_json::{Value, json};

use crate::ResourceInfo;

/// One invalid field, as in `details.causes[]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueNotSupported`, `FieldValueDuplicate`,
    /// `FieldValueForbidden`, `FieldValueTooLong`, `FieldValueNotFound`.
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn required(field: impl Into<String>) -> Self {
        Self { reason: "FieldValueRequired", field: field.into(), message: "Required value".into() }
    }

    pub fn invalid(field: impl Into<String>, value: impl std::fmt::Display, detail: impl std::fmt::Display) -> Self {
        Self { reason: "FieldValueInvalid", field: field.into(), message: format!("Invalid value: {value}: {detail}") }
    }

    pub fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        let supported: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
        Self {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!("Unsupported value: \"{value}\": supported values: {}", supported.join(", ")),
        }
    }

    pub fn not_found(field: impl Into<String>, value: impl std::fmt::Display) -> Self {
        Self { reason: "FieldValueNotFound", field: field.into(), message: format!("Not found: {value}") }
    }

    pub fn duplicate(field: impl Into<String>, value: impl std::fmt::Display) -> Self {
        Self { reason: "FieldValueDuplicate", field: field.into(), message: format!("Duplicate value: {value}") }
    }

    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { reason: "FieldValueForbidden", field: field.into(), message: format!("Forbidden: {}", detail.into()) }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// An error answered as a Kubernetes `Status`.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into(), details: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    pub fn not_found(info: &ResourceInfo, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{} \"{name}\" not found", info.group_resource()))
            .with_details(json!({"name": name, "group": info.group, "kind": info.plural}))
    }

    pub fn path_not_found() -> Self {
        Self::new(404, "NotFound", "the server could not find the requested resource")
    }

    pub fn method_not_allowed(method: &str) -> Self {
        Self::new(405, "MethodNotAllowed", format!("the server does not allow this method on the requested resource: {method}"))
    }

    pub fn already_exists(info: &ResourceInfo, name: &str) -> Self {
        Self::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", info.group_resource()))
            .with_details(json!({"name": name, "group": info.group, "kind": info.plural}))
    }

    pub fn conflict(info: &ResourceInfo, name: &str, detail: impl std::fmt::Display) -> Self {
        Self::new(409, "Conflict", format!("Operation cannot be fulfilled on {} \"{name}\": {detail}", info.group_resource()))
            .with_details(json!({"name": name, "group": info.group, "kind": info.plural}))
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(413, "RequestEntityTooLarge", message)
    }

    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", message)
    }

    /// 422 with every field error as a cause.
    pub fn invalid(info: &ResourceInfo, name: &str, errors: &[FieldError]) -> Self {
        let summary = match errors {
            [single] => single.to_string(),
            many => format!("[{}]", many.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")),
        };
        let causes: Vec<Value> = errors
            .iter()
            .map(|e| json!({"reason": e.reason, "message": e.message, "field": e.field}))
            .collect();
        Self::new(422, "Invalid", format!("{} \"{name}\" is invalid: {summary}", info.group_kind()))
            .with_details(json!({"name": name, "group": info.group, "kind": info.kind, "causes": causes}))
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// The `Status` object for the response body.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }

    /// Reads a `Status` body back (the client side).
    pub fn from_status(code: u16, body: &Value) -> Self {
        let reason = match body["reason"].as_str().unwrap_or_default() {
            "NotFound" => "NotFound",
            "AlreadyExists" => "AlreadyExists",
            "Conflict" => "Conflict",
            "Invalid" => "Invalid",
            "BadRequest" => "BadRequest",
            "Unauthorized" => "Unauthorized",
            "Forbidden" => "Forbidden",
            "Expired" => "Expired",
            "Gone" => "Gone",
            "RequestEntityTooLarge" => "RequestEntityTooLarge",
            "UnsupportedMediaType" => "UnsupportedMediaType",
            "MethodNotAllowed" => "MethodNotAllowed",
            "ServiceUnavailable" => "ServiceUnavailable",
            "Timeout" => "Timeout",
            "InternalError" => "InternalError",
            _ => "Unknown",
        };
        let message = body["message"].as_str().map(str::to_owned).unwrap_or_else(|| format!("the server answered {code}"));
        Self { code, reason, message, details: body.get("details").cloned() }
    }
}

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_lists_every_cause() {
        let info = crate::resources::by_name("deploy").expect("deployments are served");
        let error = ApiError::invalid(info, "web", &[FieldError::required("spec.selector"), FieldError::required("spec.template")]);
        let status = error.to_status();
        assert_eq!(status["code"], 422);
        assert_eq!(status["message"], "Deployment.apps \"web\" is invalid: [spec.selector: Required value, spec.template: Required value]");
        assert_eq!(status["details"]["causes"][1]["field"], "spec.template");
    }

    #[test]
    fn not_found_message_names_group_resource() {
        let info = crate::resources::by_name("deployments").expect("served");
        assert_eq!(ApiError::not_found(info, "web").message, "deployments.apps \"web\" not found");
    }
}
