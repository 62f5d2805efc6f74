//! Parsing requests: which resource a path names, query parameters, and request bodies (JSON or
//! YAML, size- and depth-limited).

use std::collections::HashMap;

use http::HeaderMap;
use serde_json::Value;
use shoal_api::resources::{self, ResourceInfo};
use shoal_api::protobuf::ProtobufError;
use shoal_api::{ApiError, yaml};

/// The largest request body accepted (as kube-apiserver's 3 MiB).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// What a path under `/api` or `/apis` addresses.
#[derive(Debug)]
pub enum Route {
    /// `/api`, `/apis`, `/api/v1`, `/apis/GROUP`, `/apis/GROUP/VERSION`.
    Discovery { group: Option<String>, version: Option<String>, legacy_core: bool },
    Resource(Target),
}

/// A resource path: the kind, and the namespace, name and subresource it names (if any).
#[derive(Debug, Clone)]
pub struct Target {
    pub info: &'static ResourceInfo,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

pub fn route(path: &str) -> Result<Route, ApiError> {
    // Each segment percent-decoded, as kube-apiserver reads the path: kubectl escapes what a
    // name may hold that a URL may not (an RBAC name such as `team a:reader`).
    let decoded: Vec<std::borrow::Cow<'_, str>> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|segment| percent_encoding::percent_decode_str(segment).decode_utf8().map_err(|_| ApiError::path_not_found()))
        .collect::<Result<_, _>>()?;
    let segments: Vec<&str> = decoded.iter().map(|segment| &**segment).collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api"] => return Ok(Route::Discovery { group: None, version: None, legacy_core: true }),
        ["apis"] => return Ok(Route::Discovery { group: None, version: None, legacy_core: false }),
        ["api", version] => return Ok(Route::Discovery { group: Some(String::new()), version: Some((*version).into()), legacy_core: true }),
        ["apis", group] => return Ok(Route::Discovery { group: Some((*group).into()), version: None, legacy_core: false }),
        ["apis", group, version] => return Ok(Route::Discovery { group: Some((*group).into()), version: Some((*version).into()), legacy_core: false }),
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(ApiError::path_not_found()),
    };
    let lookup = |plural: &str| resources::by_path(group, version, plural).ok_or_else(ApiError::path_not_found);
    let target = match rest {
        // The core group's namespaces are both a kind and the prefix of namespaced paths.
        ["namespaces", name, sub @ ("status" | "finalize")] if group.is_empty() => Target {
            info: lookup("namespaces")?,
            namespace: None,
            name: Some((*name).into()),
            subresource: Some((*sub).into()),
        },
        ["namespaces", namespace, plural, tail @ ..] => {
            let info = lookup(plural)?;
            if !info.namespaced {
                return Err(ApiError::path_not_found());
            }
            let (name, subresource) = match tail {
                [] => (None, None),
                [name] => (Some((*name).to_owned()), None),
                [name, sub] => (Some((*name).to_owned()), Some((*sub).to_owned())),
                _ => return Err(ApiError::path_not_found()),
            };
            Target { info, namespace: Some((*namespace).into()), name, subresource }
        }
        [plural, tail @ ..] => {
            let info = lookup(plural)?;
            let (name, subresource) = match tail {
                [] => (None, None),
                // A namespaced kind's name needs a namespace in the path.
                [_, ..] if info.namespaced => return Err(ApiError::path_not_found()),
                [name] => (Some((*name).to_owned()), None),
                [name, sub] => (Some((*name).to_owned()), Some((*sub).to_owned())),
                _ => return Err(ApiError::path_not_found()),
            };
            Target { info, namespace: None, name, subresource }
        }
        [] => return Err(ApiError::path_not_found()),
    };
    if let Some(sub) = &target.subresource {
        let known = (sub == "status" && target.info.has_status)
            || (sub == "finalize" && target.info.kind == "Namespace")
            || (sub == "scale" && target.info.has_scale)
            || ((sub == "log" || sub == "binding") && target.info.kind == "Pod")
            || (sub == "token" && target.info.kind == "ServiceAccount");
        if !known {
            return Err(ApiError::path_not_found());
        }
    }
    Ok(Route::Resource(target))
}

/// Query parameters (the last value wins, as in Go's `Query().Get`).
#[derive(Debug, Default)]
pub struct Query(HashMap<String, String>);

impl Query {
    pub fn parse(query: Option<&str>) -> Self {
        Self(form_urlencoded::parse(query.unwrap_or_default().as_bytes()).into_owned().collect())
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true") | Some("1"))
    }

    pub fn number(&self, key: &str) -> Result<Option<i64>, ApiError> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some(text) => text.parse().map(Some).map_err(|_| ApiError::bad_request(format!("invalid value for {key}: {text}"))),
        }
    }

    pub fn dry_run(&self) -> Result<bool, ApiError> {
        match self.get("dryRun") {
            None | Some("") => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!("unsupported dry run value: {other}; only \"All\" is supported"))),
        }
    }
}

/// The body's media type, without parameters.
pub fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// Decodes a JSON or YAML body into a value, refusing other media types and deep nesting.
pub fn decode_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let media_type = content_type(headers);
    let value = match media_type.as_str() {
        "" | "application/json" | "application/merge-patch+json" | "application/json-patch+json" | "application/strategic-merge-patch+json" => {
            serde_json::from_slice::<Value>(body).map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?
        }
        "application/yaml" | "application/x-yaml" | "text/yaml" | "application/apply-patch+yaml" => {
            let text = std::str::from_utf8(body).map_err(|_| ApiError::bad_request("the request body is not UTF-8"))?;
            yaml::from_str(text).map_err(|e| ApiError::bad_request(format!("the request body is not valid YAML: {e}")))?
        }
        // kubectl 1.32 and later send the imperative `kubectl create namespace|configmap|secret|…`
        // as protobuf, and do not retry with JSON.
        "application/vnd.kubernetes.protobuf" => match shoal_api::protobuf::decode_object(body) {
            Ok(value) => value,
            Err(error @ ProtobufError::Malformed(_)) => return Err(ApiError::bad_request(error.to_string())),
            Err(ProtobufError::Unsupported(detail)) => {
                return Err(ApiError::unsupported_media_type(format!(
                    "{detail}. Send JSON or YAML instead: for an imperative `kubectl create …` use `kubectl create … --dry-run=client -o yaml | kubectl apply -f -`"
                )));
            }
        },
        other => {
            return Err(ApiError::unsupported_media_type(format!(
                "the body of the request was in an unknown format ({other}) - accepted media types include: application/json, application/yaml"
            )));
        }
    };
    if yaml::depth(&value) > yaml::MAX_DEPTH {
        return Err(ApiError::bad_request(format!("the request body nests deeper than {} levels", yaml::MAX_DEPTH)));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(path: &str) -> Target {
        match route(path).expect(path) {
            Route::Resource(target) => target,
            other => panic!("{path} routed to {other:?}"),
        }
    }

    #[test]
    fn paths_route_like_kube_apiserver() {
        let t = target("/apis/apps/v1/namespaces/default/deployments/web");
        assert_eq!((t.info.kind, t.namespace.as_deref(), t.name.as_deref()), ("Deployment", Some("default"), Some("web")));
        let t = target("/api/v1/pods");
        assert_eq!((t.info.kind, t.namespace, t.name), ("Pod", None, None));
        let t = target("/api/v1/namespaces/team");
        assert_eq!((t.info.kind, t.name.as_deref()), ("Namespace", Some("team")));
        let t = target("/api/v1/namespaces/team/status");
        assert_eq!((t.info.kind, t.name.as_deref(), t.subresource.as_deref()), ("Namespace", Some("team"), Some("status")));
        let t = target("/api/v1/namespaces/default/pods/p/status");
        assert_eq!(t.subresource.as_deref(), Some("status"));
        let t = target("/api/v1/nodes/n1");
        assert_eq!((t.info.kind, t.name.as_deref()), ("Node", Some("n1")));
        let t = target("/apis/rbac.authorization.k8s.io/v1/clusterroles/team%20a:reader");
        assert_eq!((t.info.kind, t.name.as_deref()), ("ClusterRole", Some("team a:reader")), "segments are percent-decoded");
        assert!(route("/api/v1/nodes/%FF").is_err(), "not UTF-8");
    }

    #[test]
    fn unknown_paths_are_not_found() {
        for path in ["/api/v1/widgets", "/apis/apps/v2/deployments", "/api/v1/pods/p", "/api/v1/namespaces/default/nodes", "/api/v1/namespaces/default/configmaps/c/status", "/x"] {
            assert!(route(path).is_err(), "{path}");
        }
    }
}
