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
