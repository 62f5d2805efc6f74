//! The cluster's credentials: a CA and serving certificate (rcgen), the admin and node bearer
//! tokens, and the admin kubeconfig, all created in the data dir on first start and reused after.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use rand::RngCore;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};

use crate::error::{Error, Result};

/// Paths and contents of the credentials in a data dir.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub admin_token: String,
    pub node_token: String,
    /// The token servers present to one another and a joining server presents to join:
    /// `K1<sha256 of the CA certificate, hex>::<secret>`, so that the joiner can check the CA it
    /// is handed before trusting it (as k3s's tokens do).
    pub server_token: String,
    /// The P-256 key (PKCS#8 PEM) that signs ServiceAccount tokens, shared by every server.
    pub service_account_key_pem: String,
    pub kubeconfig_path: PathBuf,
}

/// Secrets a new cluster's first server takes instead of random ones (`shoal server --token`,
/// `--agent-token`), so that the servers and agents of a fixed deployment (docker-compose,
/// systemd units) can be given them up front. Ignored once the tokens exist.
#[derive(Clone, Default)]
pub struct Presets {
    pub server_secret: Option<String>,
    pub node_secret: Option<String>,
}

impl std::fmt::Debug for Presets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Presets { .. }")
    }
}

/// What every server of a cluster shares: the CA (with its key, to issue each server's serving
/// certificate) and the tokens. A joining server receives it from a member.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct SharedCredentials {
    pub ca_pem: String,
    pub ca_key_pem: String,
    pub admin_token: String,
    pub node_token: String,
    pub server_token: String,
    /// Absent from a member that predates ServiceAccount tokens: the joiner then makes its own.
    #[serde(default)]
    pub service_account_key_pem: String,
}

impl std::fmt::Debug for SharedCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedCredentials { .. }")
    }
}

/// The hex SHA-256 of a CA certificate's PEM text, as join tokens carry it.
pub fn ca_hash(ca_pem: &str) -> String {
    sha256_hex(ca_pem.trim())
}

pub(crate) use shoal_api::token::sha256_hex;

/// `bytes` random bytes, in hex.
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buffer);
    buffer.iter().map(|b| format!("{b:02x}")).collect()
}


/// Reads the shared credentials from a member's data dir (to hand to a joining server).
pub fn shared(data_dir: &Path, credentials: &Credentials) -> Result<SharedCredentials> {
    let path = data_dir.join("pki").join("ca.key");
    let ca_key_pem = std::fs::read_to_string(&path).map_err(|source| Error::Io { path, source })?;
    Ok(SharedCredentials {
        ca_pem: credentials.ca_pem.clone(),
        ca_key_pem,
        admin_token: credentials.admin_token.clone(),
        node_token: credentials.node_token.clone(),
        server_token: credentials.server_token.clone(),
        service_account_key_pem: credentials.service_account_key_pem.clone(),
    })
}

/// Installs a cluster's shared credentials in a new server's data dir, before [`ensure`] issues
/// its serving certificate from that CA.
pub fn install_shared(data_dir: &Path, shared: &SharedCredentials) -> Result<()> {
    let pki = data_dir.join("pki");
    std::fs::create_dir_all(&pki).map_err(|source| Error::Io { path: pki.clone(), source })?;
    write_private(&pki.join("ca.key"), &shared.ca_key_pem)?;
    write_private(&pki.join("ca.crt"), &shared.ca_pem)?;
    write_private(&data_dir.join("admin-token"), &shared.admin_token)?;
    write_private(&data_dir.join("node-token"), &shared.node_token)?;
    write_private(&data_dir.join("server-token"), &shared.server_token)?;
    if !shared.service_account_key_pem.is_empty() {
        write_private(&pki.join("sa.key"), &shared.service_account_key_pem)?;
    }
    Ok(())
}

fn random_token() -> String {
    random_hex(32)
}

fn read_or_create(path: &Path, create: impl FnOnce() -> Result<String>) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.trim().to_owned()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let text = create()?;
            write_private(path, &text)?;
            Ok(text)
        }
        Err(source) => Err(Error::Io { path: path.to_owned(), source }),
    }
}

/// Writes a file readable only by its owner (keys and tokens).
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| Error::Io { path: path.to_owned(), source };
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&temporary).map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&temporary, path).map_err(io)?;
    Ok(())
}

fn ca_params() -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(Error::tls)?;
    params.distinguished_name.push(DnType::CommonName, "shoal-ca");
    params.distinguished_name.push(DnType::OrganizationName, "shoal");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2045, 1, 1);
    Ok(params)
}

/// Loads or creates the credentials in `data_dir`. The serving certificate names `localhost`,
/// the loopback addresses, the machine's host name, the in-cluster names, and `extra_names`.
pub fn ensure(data_dir: &Path, extra_names: &[String], presets: &Presets) -> Result<Credentials> {
    let pki = data_dir.join("pki");
    std::fs::create_dir_all(&pki).map_err(|source| Error::Io { path: pki.clone(), source })?;
    let ca_key_pem = read_or_create(&pki.join("ca.key"), || Ok(KeyPair::generate().map_err(Error::tls)?.serialize_pem()))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(Error::tls)?;
    let ca_pem = read_or_create(&pki.join("ca.crt"), || Ok(ca_params()?.self_signed(&ca_key).map_err(Error::tls)?.pem()))?;

    let mut names: Vec<String> = vec![
        "localhost".into(),
        "127.0.0.1".into(),
        "::1".into(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        "kubernetes.default.svc.cluster.local".into(),
    ];
    if let Ok(host) = std::fs::read_to_string("/etc/hostname") {
        let host = host.trim();
        if !host.is_empty() {
            names.push(host.to_owned());
        }
    }
    for name in extra_names {
        if !names.contains(name) && name != "0.0.0.0" && name != "::" {
            names.push(name.clone());
        }
    }
    let names_path = pki.join("server.names");
    let recorded = std::fs::read_to_string(&names_path).unwrap_or_default();
    let server_cert_path = pki.join("server.crt");
    let server_key_path = pki.join("server.key");
    let (server_cert_pem, server_key_pem) = if recorded.trim() == names.join(",") && server_cert_path.exists() && server_key_path.exists() {
        let read = |path: &Path| std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_owned(), source });
        (read(&server_cert_path)?, read(&server_key_path)?)
    } else {
        // First start, or the server is now reachable under other names: issue a new serving
        // certificate from the same CA, so existing kubeconfigs keep working.
        let key = KeyPair::generate().map_err(Error::tls)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(Error::tls)?;
        params.distinguished_name.push(DnType::CommonName, "shoal-apiserver");
        params.subject_alt_names = names
            .iter()
            .map(|name| match name.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => name.clone().try_into().map(SanType::DnsName).map_err(Error::tls),
            })
            .collect::<Result<_>>()?;
        params.not_before = rcgen::date_time_ymd(2025, 1, 1);
        params.not_after = rcgen::date_time_ymd(2045, 1, 1);
        let issuer = Issuer::new(ca_params()?, &ca_key);
        let certificate = params.signed_by(&key, &issuer).map_err(Error::tls)?;
        write_private(&server_key_path, &key.serialize_pem())?;
        write_private(&server_cert_path, &certificate.pem())?;
        write_private(&names_path, &names.join(","))?;
        (certificate.pem(), key.serialize_pem())
    };
    let admin_token = read_or_create(&data_dir.join("admin-token"), || Ok(random_token()))?;
    let service_account_key_pem = read_or_create(&pki.join("sa.key"), || Ok(KeyPair::generate().map_err(Error::tls)?.serialize_pem()))?;
    let hash = ca_hash(&ca_pem);
    let secret_or_random = |preset: &Option<String>| preset.as_deref().map(|s| shoal_api::token::secret(s).to_owned()).unwrap_or_else(random_token);
    let node_token = read_or_create(&data_dir.join("node-token"), || Ok(shoal_api::token::compose(&hash, &secret_or_random(&presets.node_secret))))?;
    let server_token = read_or_create(&data_dir.join("server-token"), || Ok(shoal_api::token::compose(&hash, &secret_or_random(&presets.server_secret))))?;
    Ok(Credentials {
        ca_pem,
        server_cert_pem,
        server_key_pem,
        admin_token,
        node_token,
        server_token,
        service_account_key_pem,
        kubeconfig_path: data_dir.join("admin.kubeconfig"),
    })
}

/// Writes the admin kubeconfig for `server_url` (usable by `shoal` and kubectl alike). With
/// several servers (`all_servers`), the cluster carries a `shoal.dev/servers` extension listing
/// them, which kubectl ignores and Shoal's client fails over among.
pub fn write_kubeconfig(credentials: &Credentials, server_url: &str, all_servers: &[String]) -> Result<()> {
    let ca_data = base64::engine::general_purpose::STANDARD.encode(credentials.ca_pem.as_bytes());
    let extensions = if all_servers.len() > 1 {
        format!("    extensions:\n    - name: shoal.dev/servers\n      extension:\n        servers: [{}]\n", all_servers.join(", "))
    } else {
        String::new()
    };
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: shoal\n  cluster:\n    server: {server_url}\n    certificate-authority-data: {ca_data}\n{extensions}users:\n- name: shoal-admin\n  user:\n    token: {token}\ncontexts:\n- name: shoal\n  context:\n    cluster: shoal\n    user: shoal-admin\n    namespace: default\ncurrent-context: shoal\npreferences: {{}}\n",
        token = credentials.admin_token
    );
    write_private(&credentials.kubeconfig_path, &kubeconfig)
}

#[cfg(test)]
mod tests {
    use rustls::client::danger::ServerCertVerifier;
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls_pki_types::pem::PemObject;

    /// Whether `certificate_pem` is valid, under `ca_pem`, for `name`.
    fn valid_for(ca_pem: &str, certificate_pem: &str, name: &str) -> bool {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("CA")).expect("root");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(std::sync::Arc::new(roots), provider).build().expect("verifier");
        let certificate = CertificateDer::from_pem_slice(certificate_pem.as_bytes()).expect("certificate");
        let name = ServerName::try_from(name.to_owned()).expect("name");
        verifier.verify_server_cert(&certificate, &[], &name, &[], UnixTime::now()).is_ok()
    }

    #[test]
    fn a_server_names_its_clients_in_cluster_names_and_addresses() {
        let directory = tempfile::tempdir().expect("tempdir");
        let names = ["0.0.0.0".to_owned(), "10.43.0.1".to_owned()];
        let credentials = super::ensure(directory.path(), &names, &super::Presets::default()).expect("credentials");
        for name in ["localhost", "127.0.0.1", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "10.43.0.1"] {
            assert!(valid_for(&credentials.ca_pem, &credentials.server_cert_pem, name), "{name}");
        }
        assert!(!valid_for(&credentials.ca_pem, &credentials.server_cert_pem, "10.43.0.2"));
        assert!(!valid_for(&credentials.ca_pem, &credentials.server_cert_pem, "example.com"));
        // A restart with another name reissues the certificate from the same CA.
        let again = super::ensure(directory.path(), &["0.0.0.0".to_owned(), "10.96.0.1".to_owned()], &super::Presets::default()).expect("credentials");
        assert_eq!(again.ca_pem.trim(), credentials.ca_pem.trim(), "the same CA");
        assert!(valid_for(&again.ca_pem, &again.server_cert_pem, "10.96.0.1"));
    }
}
