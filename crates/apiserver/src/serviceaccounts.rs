//! ServiceAccount tokens: `kubectl create token` (the TokenRequest API,
//! `POST …/serviceaccounts/NAME/token`) and their verification when a client presents one.
//!
//! A token is a JWT signed with ES256 by the cluster's ServiceAccount key (`pki/sa.key`, shared
//! by every server, so any server honours a token another issued). Its claims are the ones
//! kube-apiserver writes: `iss` and the default audience are
//! `https://kubernetes.default.svc.cluster.local`, `sub` is
//! `system:serviceaccount:NAMESPACE:NAME`, and `kubernetes.io` names the account (and the Pod or
//! Secret the token is bound to) by name and uid. A token stops working when it expires, when
//! its account is deleted (or recreated: the uid differs), or when the object it is bound to is.
//! Tokens whose audiences leave out the API's are for other services and open nothing here.

use base64::Engine;
use ring::signature::{ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, UnparsedPublicKey};
use serde_json::{Value, json};
use shoal_api::ApiError;

/// The issuer and default audience of every token, as kube-apiserver's default.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The shortest lifetime a TokenRequest may ask for (kube-apiserver's limit).
const MIN_EXPIRATION_SECONDS: i64 = 600;
/// The lifetime of a token when the request names none.
const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// How far clocks between servers may disagree on `nbf`.
const LEEWAY_SECONDS: i64 = 60;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).ok()
}

/// How many verified tokens [`Signer::verify`] remembers.
const VERIFIED_TOKENS_KEPT: usize = 4096;

/// The key that signs and checks tokens.
pub struct Signer {
    key: EcdsaKeyPair,
    /// The key's id, the `kid` of every token's header.
    kid: String,
    /// The claims of tokens whose signature checked out, by the SHA-256 of the whole token:
    /// checking a P-256 signature costs about 60 µs, a third of a ServiceAccount's request
    /// (`benches/RESULTS.md`). Only the signature is remembered; every use still checks the
    /// claims (expiry, the account and bound object still there).
    verified: std::sync::Mutex<std::collections::HashMap<[u8; 32], std::sync::Arc<Value>>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer {{ kid: {} }}", self.kid)
    }
}

impl Signer {
    /// From a P-256 private key in PKCS#8 PEM.
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let der = rcgen::KeyPair::from_pem(pem).map_err(|e| format!("reading the ServiceAccount key: {e}"))?.serialize_der();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &ring::rand::SystemRandom::new())
            .map_err(|e| format!("the ServiceAccount key is not a P-256 key: {e}"))?;
        let kid = b64(&ring::digest::digest(&ring::digest::SHA256, key.public_key().as_ref()).as_ref()[..16]);
        Ok(Self { key, kid, verified: std::sync::Mutex::default() })
    }

    /// A signed JWT carrying `claims`.
    pub fn sign(&self, claims: &Value) -> Result<String, String> {
        let header = json!({"alg": "ES256", "kid": self.kid});
        let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        let signature = self.key.sign(&ring::rand::SystemRandom::new(), input.as_bytes()).map_err(|_| "signing the token failed".to_owned())?;
        Ok(format!("{input}.{}", b64(signature.as_ref())))
    }

    /// The claims of `token` if this key signed it (nothing else is checked here).
    pub fn verify(&self, token: &str) -> Option<std::sync::Arc<Value>> {
        let mut digest = [0u8; 32];
        digest.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
        let remembered = self.verified.lock().unwrap_or_else(|p| p.into_inner()).get(&digest).cloned();
        if remembered.is_some() {
            return remembered;
        }
        let claims = std::sync::Arc::new(self.check_signature(token)?);
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.len() >= VERIFIED_TOKENS_KEPT {
            let now = jiff::Timestamp::now().as_second();
            verified.retain(|_, claims| claims["exp"].as_i64().is_some_and(|expires| expires > now));
            if verified.len() >= VERIFIED_TOKENS_KEPT {
                verified.clear();
            }
        }
        verified.insert(digest, std::sync::Arc::clone(&claims));
        Some(claims)
    }

    fn check_signature(&self, token: &str) -> Option<Value> {
        let mut parts = token.split('.');
        let (header, claims, signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header: Value = serde_json::from_slice(&unb64(header)?).ok()?;
        if header["alg"] != "ES256" {
            return None;
        }
        let input_len = token.len() - signature.len() - 1;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.key.public_key().as_ref()).verify(&token.as_bytes()[..input_len], &unb64(signature)?).ok()?;
        serde_json::from_slice(&unb64(claims)?).ok()
    }
}

/// Whether `token` looks like a JWT (and so is worth a signature check).
pub fn looks_like_jwt(token: &[u8]) -> bool {
    token.starts_with(b"eyJ") && token.iter().filter(|&&b| b == b'.').count() == 2
}

/// Who a valid token speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// What checking a token's claims needs from the stored objects: the uid of an object, or
/// `None` when there is none (or it is being deleted).
pub trait Objects {
    fn live_uid(&self, resource: &str, namespace: &str, name: &str) -> Option<String>;
}

impl Objects for crate::AppState {
    fn live_uid(&self, resource: &str, namespace: &str, name: &str) -> Option<String> {
        let object = self.store.get_shared(&shoal_store::ObjectKey::new(resource, namespace, name)).ok()??;
        if deleted_long_ago(&object["metadata"]["deletionTimestamp"], jiff::Timestamp::now().as_second()) {
            return None;
        }
        Some(object["metadata"]["uid"].as_str().unwrap_or_default().to_owned())
    }
}

/// Whether an object's `deletionTimestamp` (the end of its grace period) passed more than the
/// clock leeway before `now`. As kube-apiserver does, a token bound to a terminating pod keeps
/// working through the pod's grace period, so its in-flight calls to the API finish.
fn deleted_long_ago(deletion: &Value, now: i64) -> bool {
    match deletion.as_str() {
        None => false,
        Some(text) => text.parse::<jiff::Timestamp>().map_or(true, |at| at.as_second() + LEEWAY_SECONDS < now),
    }
}

/// Where a pod's containers find their ServiceAccount's token, the cluster's CA and their
/// namespace (kube's `DefaultAPITokenMountPath`).
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The ConfigMap in every namespace that holds the cluster's CA certificate (`ca.crt`).
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";
/// The lifetime the injected volume asks for (kube's value: an hour and seven seconds, which
/// marks the token as one the node refreshes).
const MOUNTED_TOKEN_SECONDS: i64 = 3607;

/// kube's ServiceAccount admission for a new pod: unless the pod (or, when the pod does not
/// say, its account) sets `automountServiceAccountToken: false`, adds a projected
/// `kube-api-access-XXXXX` volume (a token bound to the pod, the CA, the namespace) and mounts
/// it read-only at [`TOKEN_MOUNT_PATH`] in every container and init container that mounts
/// nothing there already. `account` is the pod's ServiceAccount, when it exists.
pub fn mount_token(pod: &mut Value, account: Option<&Value>) {
    let automount = match &pod["spec"]["automountServiceAccountToken"] {
        Value::Bool(chosen) => *chosen,
        _ => account.is_none_or(|a| a["automountServiceAccountToken"] != false),
    };
    if !automount || !pod["spec"].is_object() {
        return;
    }
    let taken: Vec<String> = pod["spec"]["volumes"].as_array().into_iter().flatten().filter_map(|v| v["name"].as_str().map(str::to_owned)).collect();
    let volume_name = loop {
        let suffix: String = uuid::Uuid::new_v4().simple().to_string().chars().filter(|c| c.is_ascii_lowercase() || ('2'..='9').contains(c)).take(5).collect();
        let candidate = format!("kube-api-access-{suffix}");
        if suffix.len() == 5 && !taken.contains(&candidate) {
            break candidate;
        }
    };
    let mut needed = false;
    for key in ["initContainers", "containers"] {
        for container in pod["spec"][key].as_array_mut().into_iter().flatten() {
            let mounted = container["volumeMounts"].as_array().into_iter().flatten().any(|m| m["mountPath"].as_str().map(|p| p.trim_end_matches('/')) == Some(TOKEN_MOUNT_PATH));
            if mounted || !container.is_object() {
                continue;
            }
            let mount = json!({"name": volume_name, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH});
            match container["volumeMounts"].as_array_mut() {
                Some(mounts) => mounts.push(mount),
                None => container["volumeMounts"] = json!([mount]),
            }
            needed = true;
        }
    }
    if !needed {
        return;
    }
    let volume = json!({
        "name": volume_name,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": MOUNTED_TOKEN_SECONDS, "path": "token"}},
                {"configMap": {"name": ROOT_CA_CONFIG_MAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    });
    match pod["spec"]["volumes"].as_array_mut() {
        Some(volumes) => volumes.push(volume),
        None => pod["spec"]["volumes"] = json!([volume]),
    }
}

/// What a node may ask of the TokenRequest API (kube's NodeRestriction): only tokens bound to
/// a pod that runs as `account`, and, for a node's own credential (`node` is `Some`), a pod bound
/// to that node. `pod` is the stored pod the request binds to, if any.
pub fn node_may_request(node: Option<&str>, account: &Value, request: &Value, pod: Option<&Value>) -> Result<(), String> {
    let bound = &request["spec"]["boundObjectRef"];
    if bound["kind"] != "Pod" {
        return Err("a node may only request tokens bound to a pod".into());
    }
    let Some(pod) = pod else { return Err(format!("pod {:?} not found", bound["name"].as_str().unwrap_or_default())) };
    let account_name = account["metadata"]["name"].as_str().unwrap_or_default();
    if pod["spec"]["serviceAccountName"].as_str().unwrap_or("default") != account_name {
        return Err(format!("pod {} does not run as ServiceAccount {account_name}", pod["metadata"]["name"].as_str().unwrap_or_default()));
    }
    if let Some(node) = node
        && pod["spec"]["nodeName"] != node
    {
        return Err(format!("pod {} is not bound to node {node}", pod["metadata"]["name"].as_str().unwrap_or_default()));
    }
    Ok(())
}

/// The account a token's claims stand for at `now` (Unix seconds), if they are for this API,
/// current, and every object they name is still there with the same uid.
pub fn check_claims(claims: &Value, now: i64, objects: &dyn Objects) -> Result<Account, String> {
    if claims["iss"] != ISSUER {
        return Err("the token was issued by someone else".into());
    }
    let audiences = match &claims["aud"] {
        Value::String(one) => vec![one.as_str()],
        many => many.as_array().into_iter().flatten().filter_map(Value::as_str).collect(),
    };
    if !audiences.contains(&ISSUER) {
        return Err("the token is not for this API (audience)".into());
    }
    let (Some(expires), Some(not_before)) = (claims["exp"].as_i64(), claims["nbf"].as_i64().or(claims["iat"].as_i64())) else {
        return Err("the token has no lifetime".into());
    };
    if now >= expires {
        return Err("the token has expired".into());
    }
    if now + LEEWAY_SECONDS < not_before {
        return Err("the token is not valid yet".into());
    }
    let details = &claims["kubernetes.io"];
    let namespace = details["namespace"].as_str().unwrap_or_default();
    let account = &details["serviceaccount"];
    let (name, uid) = (account["name"].as_str().unwrap_or_default(), account["uid"].as_str().unwrap_or_default());
    if namespace.is_empty() || name.is_empty() || claims["sub"] != format!("system:serviceaccount:{namespace}:{name}") {
        return Err("the token names no service account".into());
    }
    if objects.live_uid("serviceaccounts", namespace, name).as_deref() != Some(uid) {
        return Err(format!("service account {namespace}/{name} (uid {uid}) no longer exists"));
    }
    for (key, resource) in [("pod", "pods"), ("secret", "secrets")] {
        let bound = &details[key];
        if bound.is_null() {
            continue;
        }
        let (bound_name, bound_uid) = (bound["name"].as_str().unwrap_or_default(), bound["uid"].as_str().unwrap_or_default());
        if objects.live_uid(resource, namespace, bound_name).as_deref() != Some(bound_uid) {
            return Err(format!("the {key} {namespace}/{bound_name} the token is bound to no longer exists"));
        }
    }
    Ok(Account { namespace: namespace.to_owned(), name: name.to_owned(), uid: uid.to_owned() })
}

/// Answers a TokenRequest for service account `namespace/name` (`account` is the stored
/// object): the request with its spec defaulted and `status` holding the token.
pub fn token_request(signer: &Signer, account: &Value, request: Value, objects: &dyn Objects, now: jiff::Timestamp) -> Result<Value, ApiError> {
    if !request.is_object() {
        return Err(ApiError::bad_request("a TokenRequest must be a JSON object"));
    }
    for (field, expected) in [("apiVersion", "authentication.k8s.io/v1"), ("kind", "TokenRequest")] {
        if let Some(sent) = request.get(field).and_then(Value::as_str)
            && sent != expected
        {
            return Err(ApiError::bad_request(format!("the body is a {sent} ({field}), not a {expected}")));
        }
    }
    let namespace = account["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = account["metadata"]["name"].as_str().unwrap_or_default();
    let spec = &request["spec"];
    let expiration = match &spec["expirationSeconds"] {
        Value::Null => DEFAULT_EXPIRATION_SECONDS,
        value => value.as_i64().ok_or_else(|| ApiError::bad_request("spec.expirationSeconds must be an integer"))?,
    };
    let invalid = |detail: String| {
        let info = shoal_api::resources::by_name("serviceaccounts").expect("service accounts are served");
        ApiError::invalid(info, name, &[shoal_api::FieldError::invalid("spec.expirationSeconds", expiration, detail)])
    };
    if expiration < MIN_EXPIRATION_SECONDS {
        return Err(invalid("may not specify a duration less than 10 minutes".into()));
    }
    if expiration > 1 << 32 {
        return Err(invalid("may not specify a duration larger than 2^32 seconds".into()));
    }
    let mut audiences: Vec<String> = spec["audiences"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect();
    if audiences.is_empty() {
        audiences.push(ISSUER.to_owned());
    }
    let mut details = json!({"namespace": namespace, "serviceaccount": {"name": name, "uid": account["metadata"]["uid"]}});
    let bound = &spec["boundObjectRef"];
    if !bound.is_null() {
        let kind = bound["kind"].as_str().unwrap_or_default();
        let (key, resource) = match kind {
            "Pod" => ("pod", "pods"),
            "Secret" => ("secret", "secrets"),
            other => return Err(ApiError::bad_request(format!("cannot bind a token to a {other:?}: use Pod or Secret"))),
        };
        let bound_name = bound["name"].as_str().unwrap_or_default();
        let Some(uid) = objects.live_uid(resource, namespace, bound_name) else {
            return Err(ApiError::new(404, "NotFound", format!("{resource} \"{bound_name}\" not found")));
        };
        if let Some(expected) = bound["uid"].as_str().filter(|u| !u.is_empty())
            && expected != uid
        {
            return Err(ApiError::new(409, "Conflict", format!("the {kind} {bound_name} has uid {uid}, not {expected}")));
        }
        details[key] = json!({"name": bound_name, "uid": uid});
    }
    let issued = now.as_second();
    let expires = issued + expiration;
    let claims = json!({
        "aud": audiences, "exp": expires, "iat": issued, "nbf": issued, "iss": ISSUER,
        "jti": uuid::Uuid::new_v4().to_string(),
        "kubernetes.io": details,
        "sub": format!("system:serviceaccount:{namespace}:{name}"),
    });
    let token = signer.sign(&claims).map_err(ApiError::internal)?;
    let expiry = jiff::Timestamp::from_second(expires).map_err(|e| ApiError::internal(e.to_string()))?;
    let mut spec = spec.clone();
    if !spec.is_object() {
        spec = json!({});
    }
    spec["audiences"] = json!(audiences);
    spec["expirationSeconds"] = json!(expiration);
    if bound.is_null() {
        spec["boundObjectRef"] = Value::Null;
    }
    Ok(json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()},
        "spec": spec,
        "status": {"token": token, "expirationTimestamp": expiry.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Stored(Vec<(&'static str, &'static str, &'static str)>);

    impl Objects for Stored {
        fn live_uid(&self, resource: &str, _namespace: &str, name: &str) -> Option<String> {
            self.0.iter().find(|(r, n, _)| *r == resource && *n == name).map(|(_, _, uid)| (*uid).to_owned())
        }
    }

    fn signer() -> Signer {
        Signer::from_pem(&rcgen::KeyPair::generate().expect("key").serialize_pem()).expect("signer")
    }

    fn account() -> Value {
        json!({"metadata": {"namespace": "team", "name": "bot", "uid": "u1"}})
    }

    fn issue(signer: &Signer, spec: Value, objects: &Stored) -> Result<Value, ApiError> {
        token_request(signer, &account(), json!({"spec": spec}), objects, jiff::Timestamp::from_second(1_000_000).expect("time"))
    }

    #[test]
    fn a_token_names_its_account_until_it_expires_or_the_account_goes() {
        let signer = signer();
        let stored = Stored(vec![("serviceaccounts", "bot", "u1")]);
        let answer = issue(&signer, json!({}), &stored).expect("issued");
        assert_eq!(answer["spec"]["expirationSeconds"], 3600);
        assert_eq!(answer["spec"]["audiences"], json!([ISSUER]));
        assert_eq!(answer["status"]["expirationTimestamp"], "1970-01-12T14:46:40Z");
        let token = answer["status"]["token"].as_str().expect("token");
        assert!(looks_like_jwt(token.as_bytes()));
        let claims = signer.verify(token).expect("our signature");
        assert_eq!(claims["sub"], "system:serviceaccount:team:bot");
        let account = check_claims(&claims, 1_000_010, &stored).expect("valid");
        assert_eq!((account.namespace.as_str(), account.name.as_str(), account.uid.as_str()), ("team", "bot", "u1"));
        assert!(check_claims(&claims, 1_003_600, &stored).expect_err("expired").contains("expired"));
        assert!(check_claims(&claims, 1_000_010, &Stored(vec![("serviceaccounts", "bot", "u2")])).is_err(), "recreated account");
        assert!(check_claims(&claims, 1_000_010, &Stored(vec![])).is_err(), "deleted account");
    }

    #[test]
    fn another_key_or_a_changed_claim_is_not_ours() {
        let signer = signer();
        let stored = Stored(vec![("serviceaccounts", "bot", "u1")]);
        let token = issue(&signer, json!({}), &stored).expect("issued")["status"]["token"].as_str().expect("token").to_owned();
        assert!(self::signer().verify(&token).is_none(), "another cluster's key");
        // The genuine token is verified first, so its signature is remembered: a forged claim
        // under that signature must still fail.
        assert!(signer.verify(&token).is_some());
        assert!(signer.verify(&token).is_some(), "remembered");
        let parts: Vec<&str> = token.split('.').collect();
        let forged = json!({"iss": ISSUER, "aud": [ISSUER], "sub": "system:serviceaccount:kube-system:admin", "exp": 2_000_000, "nbf": 0});
        let tampered = format!("{}.{}.{}", parts[0], b64(forged.to_string().as_bytes()), parts[2]);
        assert!(signer.verify(&tampered).is_none());
        assert!(signer.verify(&tampered).is_none(), "a failure is not remembered as a success");
        assert!(signer.verify("eyJ.not.a-token").is_none());
        let none = format!("{}.{}.", b64(br#"{"alg":"none"}"#), parts[1]);
        assert!(signer.verify(&none).is_none(), "alg none");
    }

    #[test]
    fn audiences_lifetimes_and_bindings_are_checked() {
        let signer = signer();
        let stored = Stored(vec![("serviceaccounts", "bot", "u1"), ("pods", "web", "p1")]);
        let other = issue(&signer, json!({"audiences": ["vault"]}), &stored).expect("issued");
        let claims = signer.verify(other["status"]["token"].as_str().expect("token")).expect("ours");
        assert!(check_claims(&claims, 1_000_010, &stored).expect_err("not for the API").contains("audience"));
        let short = issue(&signer, json!({"expirationSeconds": 60}), &stored).expect_err("too short");
        assert_eq!(short.code, 422);
        assert!(short.message.contains("less than 10 minutes"), "{}", short.message);
        let bound = issue(&signer, json!({"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "web"}}), &stored).expect("issued");
        let claims = signer.verify(bound["status"]["token"].as_str().expect("token")).expect("ours");
        assert_eq!(claims["kubernetes.io"]["pod"], json!({"name": "web", "uid": "p1"}));
        assert!(check_claims(&claims, 1_000_010, &stored).is_ok());
        assert!(check_claims(&claims, 1_000_010, &Stored(vec![("serviceaccounts", "bot", "u1")])).expect_err("pod gone").contains("pod team/web"));
        assert_eq!(issue(&signer, json!({"boundObjectRef": {"kind": "Pod", "name": "gone"}}), &stored).expect_err("no pod").code, 404);
        assert_eq!(issue(&signer, json!({"boundObjectRef": {"kind": "Pod", "name": "web", "uid": "other"}}), &stored).expect_err("uid").code, 409);
        assert_eq!(issue(&signer, json!({"boundObjectRef": {"kind": "Node", "name": "a"}}), &stored).expect_err("kind").code, 400);
    }

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "web", "namespace": "team"}, "spec": spec})
    }

    #[test]
    fn new_pods_mount_their_account_token_unless_they_or_the_account_opt_out() {
        let mut web = pod(json!({"serviceAccountName": "bot", "volumes": [{"name": "data", "emptyDir": {}}],
            "initContainers": [{"name": "setup"}],
            "containers": [{"name": "app", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}, {"name": "own", "volumeMounts": [{"name": "data", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount/"}]}]}));
        mount_token(&mut web, Some(&account()));
        let volumes = web["spec"]["volumes"].as_array().expect("volumes");
        assert_eq!(volumes.len(), 2);
        let name = volumes[1]["name"].as_str().expect("name");
        assert!(name.starts_with("kube-api-access-") && name.len() == "kube-api-access-".len() + 5, "{name}");
        assert_eq!(volumes[1]["projected"]["sources"][0]["serviceAccountToken"], json!({"expirationSeconds": 3607, "path": "token"}));
        assert_eq!(volumes[1]["projected"]["sources"][1]["configMap"]["name"], ROOT_CA_CONFIG_MAP);
        assert_eq!(volumes[1]["projected"]["sources"][2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"], "metadata.namespace");
        let mount = json!({"name": name, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH});
        assert_eq!(web["spec"]["initContainers"][0]["volumeMounts"], json!([mount]));
        assert_eq!(web["spec"]["containers"][0]["volumeMounts"][1], mount);
        assert_eq!(web["spec"]["containers"][1]["volumeMounts"].as_array().map(Vec::len), Some(1), "a container with its own mount there keeps it");

        let opted_out = |pod_choice: Value, account_choice: Value| {
            let mut spec = json!({"containers": [{"name": "app"}]});
            spec["automountServiceAccountToken"] = pod_choice;
            let mut object = pod(spec);
            let mut account = account();
            account["automountServiceAccountToken"] = account_choice;
            mount_token(&mut object, Some(&account));
            object["spec"]["volumes"].is_null()
        };
        assert!(opted_out(json!(false), Value::Null));
        assert!(opted_out(Value::Null, json!(false)));
        assert!(!opted_out(json!(true), json!(false)), "the pod's choice wins");
        assert!(!opted_out(Value::Null, Value::Null));
        let mut no_account = pod(json!({"containers": [{"name": "app"}]}));
        mount_token(&mut no_account, None);
        assert_eq!(no_account["spec"]["volumes"].as_array().map(Vec::len), Some(1), "mounted even before the account exists");
    }

    #[test]
    fn nodes_get_tokens_only_for_pods_bound_to_them_running_as_the_account() {
        let bound = |kind: &str| json!({"spec": {"boundObjectRef": {"kind": kind, "name": "web"}}});
        let on_a = pod(json!({"nodeName": "a", "serviceAccountName": "bot"}));
        assert!(node_may_request(Some("a"), &account(), &bound("Pod"), Some(&on_a)).is_ok());
        assert!(node_may_request(None, &account(), &bound("Pod"), Some(&on_a)).is_ok(), "the shared node token, for any node");
        assert!(node_may_request(Some("b"), &account(), &bound("Pod"), Some(&on_a)).expect_err("another node's pod").contains("not bound to node b"));
        assert!(node_may_request(Some("a"), &account(), &bound("Secret"), Some(&on_a)).is_err());
        assert!(node_may_request(Some("a"), &account(), &json!({"spec": {}}), Some(&on_a)).is_err(), "unbound tokens");
        assert!(node_may_request(Some("a"), &account(), &bound("Pod"), None).is_err());
        let as_default = pod(json!({"nodeName": "a"}));
        assert!(node_may_request(Some("a"), &account(), &bound("Pod"), Some(&as_default)).expect_err("another account").contains("does not run as"));
    }

    #[test]
    fn a_terminating_object_counts_as_there_until_its_grace_period_and_the_leeway_pass() {
        let at = |text: &str| json!(text);
        let end = "1970-01-12T13:46:40Z".parse::<jiff::Timestamp>().expect("time").as_second();
        assert!(!deleted_long_ago(&Value::Null, end));
        assert!(!deleted_long_ago(&at("1970-01-12T13:46:40Z"), end + LEEWAY_SECONDS));
        assert!(deleted_long_ago(&at("1970-01-12T13:46:40Z"), end + LEEWAY_SECONDS + 1));
        assert!(deleted_long_ago(&at("not a time"), end), "unreadable: gone");
    }
}
