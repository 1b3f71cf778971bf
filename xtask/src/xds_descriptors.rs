//! `cargo xtask xds-descriptors`: writes `xds/descriptors.bin`, the
//! protobuf descriptor set vane-xds renders resources to JSON with. It is
//! compiled by protox from the `.proto` files the envoy-types crate ships,
//! for the message types the translation emits and their imports, and
//! committed, so no build needs the protos or a compiler.
//!
//! Run it again after a new envoy-types release, or when the translation
//! starts using a message from another file (vane-xds's unit test
//! `the_descriptor_set_covers_every_emitted_type` fails until then).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::process::{cargo, display};

/// The files declaring every message type the translation packs into an
/// `Any` (the resources, the filters, the load-balancing policies);
/// protox adds what they import.
const FILES: &[&str] = &[
    "envoy/config/listener/v3/listener.proto",
    "envoy/config/route/v3/route.proto",
    "envoy/config/route/v3/route_components.proto",
    "envoy/config/cluster/v3/cluster.proto",
    "envoy/config/endpoint/v3/endpoint.proto",
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    "envoy/extensions/filters/http/local_ratelimit/v3/local_rate_limit.proto",
    "envoy/extensions/load_balancing_policies/round_robin/v3/round_robin.proto",
    "envoy/extensions/load_balancing_policies/least_request/v3/least_request.proto",
    "envoy/extensions/load_balancing_policies/random/v3/random.proto",
    "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto",
    "envoy/extensions/transport_sockets/tls/v3/tls.proto",
    "envoy/extensions/transport_sockets/tls/v3/secret.proto",
    "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
];

/// Where the set is committed, relative to the workspace root.
pub(crate) const OUTPUT: &str = "xds/descriptors.bin";

pub(crate) fn run(root: &Path) -> Result<()> {
    let protos = envoy_types_protos(root)?;
    // Every directory under proto/ is an import root (data-plane-api, xds,
    // protoc-gen-validate, googleapis, …), as in envoy-types' own build.
    let mut includes: Vec<PathBuf> = std::fs::read_dir(&protos)
        .with_context(|| format!("reading {}", protos.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    includes.sort();
    let mut compiler = protox::Compiler::new(&includes).context("setting up protox")?;
    compiler.include_imports(true).include_source_info(false);
    compiler
        .open_files(FILES)
        .context("compiling Envoy's protos")?;
    let bytes = compiler.encode_file_descriptor_set();
    let out = root.join(OUTPUT);
    std::fs::write(&out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "wrote {} ({} files, {} bytes) from {}",
        out.display(),
        compiler.files().len(),
        bytes.len(),
        protos.display()
    );
    Ok(())
}

/// The `proto/` directory next to the resolved envoy-types crate's sources.
fn envoy_types_protos(root: &Path) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.current_dir(root)
        .args(["metadata", "--format-version", "1", "--locked"]);
    let out = cmd
        .output()
        .with_context(|| format!("running {}", display(&cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            display(&cmd),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let meta: Value = serde_json::from_slice(&out.stdout).context("reading cargo metadata")?;
    let manifest = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "envoy-types")
        .and_then(|p| p["manifest_path"].as_str())
        .context("envoy-types is not in the dependency graph")?;
    let dir = Path::new(manifest)
        .parent()
        .context("envoy-types' manifest has no directory")?
        .join("proto");
    if !dir.is_dir() {
        bail!(
            "{} is missing: envoy-types no longer ships its protos",
            dir.display()
        );
    }
    Ok(dir)
}
