//! Shoal's ingress class: which Ingresses the nodes' routers serve, shared by the API server
//! (which creates the class), the nodes (which route) and the controllers (which write status).

use serde_json::Value;

/// The IngressClass every node's router serves, created at bootstrap as the default class.
pub const CLASS: &str = "shoal";
/// The `spec.controller` of Shoal's IngressClasses.
pub const CONTROLLER: &str = "shoal.dev/ingress";
/// The Node annotation where a node with a router says its HTTP listener's address.
pub const INGRESS_ADDR_ANNOTATION: &str = "shoal.dev/ingress-addr";

/// Whether the routers serve `ingress`: its class is `shoal`, or any class whose controller is
/// Shoal's, or none at all (the default class).
pub fn served_by_shoal(ingress: &Value, classes: &[impl AsRef<Value>]) -> bool {
    let class = ingress["spec"]["ingressClassName"].as_str().or(ingress["metadata"]["annotations"]["kubernetes.io/ingress.class"].as_str());
    match class {
        None => true,
        Some(CLASS) => true,
        Some(name) => classes.iter().map(AsRef::as_ref).any(|c| c["metadata"]["name"] == name && c["spec"]["controller"] == CONTROLLER),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_shoal_class_its_controller_and_no_class_are_served() {
        let classes = [
            std::sync::Arc::new(json!({"metadata": {"name": "edge"}, "spec": {"controller": CONTROLLER}})),
            std::sync::Arc::new(json!({"metadata": {"name": "nginx"}, "spec": {"controller": "k8s.io/ingress-nginx"}})),
        ];
        assert!(served_by_shoal(&json!({"spec": {"ingressClassName": "shoal"}}), &classes));
        assert!(served_by_shoal(&json!({"metadata": {"annotations": {"kubernetes.io/ingress.class": "shoal"}}, "spec": {}}), &classes));
        assert!(served_by_shoal(&json!({"spec": {"ingressClassName": "edge"}}), &classes));
        assert!(served_by_shoal(&json!({"spec": {}}), &classes));
        assert!(!served_by_shoal(&json!({"spec": {"ingressClassName": "nginx"}}), &classes));
    }
}
