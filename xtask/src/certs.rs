//! `cargo xtask certs --out DIR`: a CA, a server certificate for 127.0.0.1
//! and localhost, client certificates for `operator`, `reader` and
//! `agent-edge`, and the policy that binds them, for demos and manual tests.

use std::path::Path;

use anyhow::{Context as _, Result};

pub(crate) fn run(out: &Path, force: bool) -> Result<()> {
    let set = vane_pki::DemoSet::generate().context("generating the certificates")?;
    // The error names the file (and says --force when one exists).
    let written = set.write(out, force)?;
    for path in &written {
        println!("wrote {}", path.display());
    }
    println!(
        "try: vane-control --tls-cert {dir}/server.pem --tls-key {dir}/server.key \
         --client-ca {dir}/ca.pem --policy {dir}/policy.yaml",
        dir = out.display()
    );
    println!(
        "     vanectl --server https://127.0.0.1:7070 --ca {dir}/ca.pem \
         --cert {dir}/operator.pem --key {dir}/operator.key status",
        dir = out.display()
    );
    Ok(())
}
