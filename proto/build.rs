//! Compiles `vane/v1/*.proto` and flagd's `flagd/sync/v1/sync.proto` with
//! protox (pure Rust, no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "vane/v1/snapshot.proto",
        "vane/v1/discovery.proto",
        "vane/v1/admin.proto",
        "vane/v1/store.proto",
        // OpenFeature's flagd providers (in-process mode) stream flags from
        // this service; its well-known types come from prost-types.
        "flagd/sync/v1/sync.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    admin_methods(&fds)?;
    tonic_prost_build::configure()
        // Snapshot bodies are encoded once per version and shared by every
        // stream: `Bytes` makes each clone a reference-count increment.
        .bytes(".")
        .btree_map(".")
        // Smaller per-call buffers than tonic's default (src/codec.rs).
        .codec_path("crate::codec::VaneCodec")
        .compile_fds(fds)?;
    Ok(())
}

/// Writes `admin_methods.rs`: the Admin service's method names, the bounded
/// set the control server's per-method metrics use as labels.
fn admin_methods(fds: &prost_types::FileDescriptorSet) -> Result<(), Box<dyn std::error::Error>> {
    let methods: Vec<String> = fds
        .file
        .iter()
        .filter(|f| f.package() == "vane.v1")
        .flat_map(|f| f.service.iter())
        .filter(|s| s.name() == "Admin")
        .flat_map(|s| s.method.iter())
        .map(|m| format!("{:?}", m.name()))
        .collect();
    if methods.is_empty() {
        return Err("vane.v1.Admin has no methods".into());
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("admin_methods.rs");
    std::fs::write(out, format!("&[{}]", methods.join(", ")))?;
    Ok(())
}
