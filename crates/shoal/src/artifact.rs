//! `shoal push`, `shoal pull` and `shoal artifact …`: Wasm artifacts in the built-in registry
//! (`shoal.local/…`) or any OCI registry.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use shoal_oci::client::{Auth, RegistryClient};
use shoal_oci::media::{ArtifactKind, Manifest, classify};
use shoal_oci::{Digest, Reference, wasm};

/// How to reach registries: the kubeconfig for the built-in one, flags for external ones.
#[derive(Args, Clone, Default)]
pub struct RegistryArgs {
    /// External registries that may be reached over plain HTTP (loopback ones always may).
    #[arg(long = "insecure-registry")]
    insecure: Vec<String>,
    /// User name for an external registry.
    #[arg(long)]
    username: Option<String>,
    /// Password or token for an external registry (or $SHOAL_REGISTRY_PASSWORD).
    #[arg(long, env = "SHOAL_REGISTRY_PASSWORD", hide_env_values = true)]
    password: Option<String>,
}

#[derive(Args)]
pub struct PushArgs {
    /// The .wasm file (a component or a core module).
    file: PathBuf,
    /// Where to push: `shoal.local/NAME:TAG` for this cluster, or any registry reference.
    reference: String,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Args)]
pub struct PullArgs {
    reference: String,
    /// Where to write the Wasm binary.
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Subcommand)]
pub enum ArtifactCommand {
    /// List the built-in registry's repositories and tags.
    Ls,
    /// Show an artifact: media types, size, world, imports and exports.
    Inspect {
        reference: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Delete a tag (or, by digest, a manifest and its tags).
    Rm { reference: String },
    /// Delete untagged manifests, then blobs no manifest references (older than the grace period).
    Gc {
        /// Keep unreferenced blobs younger than this, so pushes in flight keep theirs.
        #[arg(long, default_value_t = 600)]
        grace_period: u64,
    },
}

/// A client for the registry `reference` names.
pub fn registry_client(reference: &Reference, kubeconfig: &Path, server: Option<&str>, args: &RegistryArgs) -> anyhow::Result<RegistryClient> {
    if reference.is_built_in() {
        let config = shoal_client::Kubeconfig::load(kubeconfig)?;
        let mut builder = reqwest::Client::builder().use_rustls_tls().tls_built_in_root_certs(false);
        if let Some(ca) = &config.certificate_authority_pem {
            builder = builder.add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes())?);
        }
        let auth = config.token.map(Auth::Bearer).unwrap_or_default();
        let base = server.unwrap_or(&config.server).to_owned();
        return Ok(RegistryClient::new(builder.build()?, base, shoal_oci::BUILT_IN_REGISTRY, auth));
    }
    let auth = match (&args.username, &args.password) {
        (Some(username), Some(password)) => Auth::Basic { username: username.clone(), password: password.clone() },
        (None, Some(token)) => Auth::Bearer(token.clone()),
        _ => Auth::Anonymous,
    };
    Ok(RegistryClient::external(&reference.registry, &args.insecure, auth)?)
}

fn human_bytes(bytes: u64) -> String {
    if bytes >= 1024 * 1024 { format!("{:.1} MiB", bytes as f64 / 1048576.0) } else if bytes >= 1024 { format!("{:.1} KiB", bytes as f64 / 1024.0) } else { format!("{bytes} B") }
}

pub async fn push(kubeconfig: &Path, server: Option<&str>, args: PushArgs) -> anyhow::Result<ExitCode> {
    let pushed = push_file(kubeconfig, server, &args.file, &args.reference, &args.registry).await?;
    println!("{}: pushed {} ({}, {} world)", pushed.reference, human_bytes(pushed.bytes), if pushed.info.is_component { "component" } else { "core module" }, pushed.info.world.as_str());
    println!("digest: {}", pushed.digest);
    Ok(ExitCode::SUCCESS)
}

/// What [`push_file`] pushed.
pub struct Pushed {
    pub reference: Reference,
    pub digest: Digest,
    pub bytes: u64,
    pub info: wasm::WasmInfo,
}

/// Pushes a .wasm file as a CNCF Wasm artifact to `reference` (a tag).
pub async fn push_file(kubeconfig: &Path, server: Option<&str>, file: &Path, reference: &str, registry: &RegistryArgs) -> anyhow::Result<Pushed> {
    let reference = Reference::parse(reference)?;
    if reference.digest.is_some() {
        bail!("push to a tag, not a digest: the digest is computed from what is pushed");
    }
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let info = wasm::inspect(&bytes).with_context(|| format!("{} cannot be pushed", file.display()))?;
    let client = registry_client(&reference, kubeconfig, server, registry)?;
    let (manifest, config) = shoal_oci::media::cncf_artifact(&bytes, &info);
    let total = bytes.len() as u64;
    let show_progress = total > 4 * 1024 * 1024;
    let progress = |sent: u64, total: u64| {
        if show_progress {
            eprint!("\rpushing {}: {:>3}%", human_bytes(total), sent * 100 / total.max(1));
            if sent == total {
                eprintln!();
            }
        }
    };
    client.push_blob(&reference.repository, &bytes, &progress).await?;
    client.push_blob(&reference.repository, &config, &|_, _| {}).await?;
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let tag = reference.tag.clone().unwrap_or_else(|| "latest".into());
    let digest = client.push_manifest(&reference.repository, &tag, &manifest_bytes, shoal_oci::media::OCI_MANIFEST).await?;
    Ok(Pushed { reference, digest, bytes: total, info })
}

/// Resolves a reference to an image manifest (following an index to its Wasm entry).
async fn resolve(client: &RegistryClient, reference: &Reference) -> anyhow::Result<(Manifest, Digest, usize)> {
    let (bytes, _, digest) = client.get_manifest(&reference.repository, &reference.manifest_reference()).await?;
    let manifest = Manifest::parse(&bytes)?;
    if manifest.is_index() {
        let entry = manifest
            .manifests
            .iter()
            .find(|m| m.platform.as_ref().is_some_and(|p| p["architecture"] == "wasm"))
            .or_else(|| manifest.manifests.first())
            .context("the index lists no manifests")?;
        let (bytes, _, digest) = client.get_manifest(&reference.repository, &entry.digest).await?;
        return Ok((Manifest::parse(&bytes)?, digest, bytes.len()));
    }
    Ok((manifest, digest, bytes.len()))
}

pub async fn pull(kubeconfig: &Path, server: Option<&str>, args: PullArgs) -> anyhow::Result<ExitCode> {
    let reference = Reference::parse(&args.reference)?;
    let client = registry_client(&reference, kubeconfig, server, &args.registry)?;
    let (manifest, digest, _) = resolve(&client, &reference).await?;
    let layer = match classify(&manifest)? {
        ArtifactKind::Wasm { layer, .. } => layer,
        ArtifactKind::SpinApp { components } if components.len() == 1 => components[0].clone(),
        ArtifactKind::SpinApp { components } => bail!("{reference} is a Spin application of {} components; pull writes one Wasm file", components.len()),
        ArtifactKind::Container => bail!("{reference} is a container image, not a Wasm artifact"),
    };
    let bytes = client.get_blob(&reference.repository, &Digest::parse(&layer.digest)?, shoal_oci::DEFAULT_MAX_ARTIFACT_BYTES).await?;
    std::fs::write(&args.output, &bytes).with_context(|| format!("writing {}", args.output.display()))?;
    println!("{reference}@{digest}: wrote {} to {}", human_bytes(bytes.len() as u64), args.output.display());
    Ok(ExitCode::SUCCESS)
}

pub async fn artifact(kubeconfig: &Path, server: Option<&str>, command: ArtifactCommand) -> anyhow::Result<ExitCode> {
    let built_in = |reference: &str| -> anyhow::Result<Reference> {
        let reference = Reference::parse(reference)?;
        if !reference.is_built_in() {
            bail!("{reference} is not in the built-in registry (shoal.local/…)");
        }
        Ok(reference)
    };
    match command {
        ArtifactCommand::Ls => {
            let reference = Reference::parse("shoal.local/x")?;
            let client = registry_client(&reference, kubeconfig, server, &RegistryArgs { insecure: vec![], username: None, password: None })?;
            let mut rows = Vec::new();
            for repository in client.catalog().await? {
                for tag in client.tags(&repository).await? {
                    let (bytes, _, digest) = client.get_manifest(&repository, &tag).await?;
                    let manifest = Manifest::parse(&bytes)?;
                    let size: u64 = manifest.blobs().map(|d| d.size).sum();
                    let kind = match classify(&manifest) {
                        Ok(ArtifactKind::Wasm { .. }) => "wasm",
                        Ok(ArtifactKind::SpinApp { .. }) => "spin",
                        Ok(ArtifactKind::Container) => "container",
                        Err(_) => "index",
                    };
                    rows.push(vec![format!("shoal.local/{repository}:{tag}"), kind.to_owned(), human_bytes(size), digest.to_string()]);
                }
            }
            if rows.is_empty() {
                eprintln!("No artifacts in the built-in registry.");
            } else {
                crate::output::print_table(&["REFERENCE".into(), "KIND".into(), "SIZE".into(), "DIGEST".into()], &rows);
            }
        }
        ArtifactCommand::Inspect { reference, registry } => {
            let reference = Reference::parse(&reference)?;
            let client = registry_client(&reference, kubeconfig, server, &registry)?;
            let (manifest, digest, manifest_size) = resolve(&client, &reference).await?;
            println!("Reference:     {reference}");
            println!("Digest:        {digest}");
            println!("Manifest:      {} ({manifest_size} bytes)", manifest.media_type.as_deref().unwrap_or("(none)"));
            if let Some(config) = &manifest.config {
                println!("Config:        {} ({} bytes)", config.media_type, config.size);
            }
            for layer in &manifest.layers {
                println!("Layer:         {} ({}) {}", layer.media_type, human_bytes(layer.size), layer.digest);
            }
            let total: u64 = manifest.blobs().map(|d| d.size).sum();
            println!("Size:          {}", human_bytes(total));
            let layers = match classify(&manifest)? {
                ArtifactKind::Wasm { layer, .. } => vec![layer],
                ArtifactKind::SpinApp { components } => components,
                ArtifactKind::Container => {
                    println!("Kind:          container image");
                    return Ok(ExitCode::SUCCESS);
                }
            };
            for layer in layers {
                let bytes = client.get_blob(&reference.repository, &Digest::parse(&layer.digest)?, shoal_oci::DEFAULT_MAX_ARTIFACT_BYTES).await?;
                let info = wasm::inspect(&bytes)?;
                println!("Kind:          {}", if info.is_component { "component" } else { "core module" });
                println!("World:         {}", info.world.as_str());
                println!("Imports:");
                for import in &info.imports {
                    println!("  {import}");
                }
                println!("Exports:");
                for export in &info.exports {
                    println!("  {export}");
                }
            }
        }
        ArtifactCommand::Rm { reference } => {
            let reference = built_in(&reference)?;
            let client = registry_client(&reference, kubeconfig, server, &RegistryArgs { insecure: vec![], username: None, password: None })?;
            client.delete_manifest(&reference.repository, &reference.manifest_reference()).await?;
            println!("{reference} deleted");
        }
        ArtifactCommand::Gc { grace_period } => {
            let reference = Reference::parse("shoal.local/x")?;
            let client = registry_client(&reference, kubeconfig, server, &RegistryArgs { insecure: vec![], username: None, password: None })?;
            let result = client.post_json(&format!("/v2/_shoal/gc?gracePeriodSeconds={grace_period}")).await?;
            println!(
                "deleted {} untagged manifest(s) and {} unreferenced blob(s), {} freed",
                result["deletedManifests"],
                result["deletedBlobs"],
                human_bytes(result["freedBytes"].as_u64().unwrap_or(0))
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
