//! What the demo prepares before the tour: the files it pushes, the demo
//! certificates and policy (mTLS), and vane-control's command line, in
//! both security modes.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result, ensure};

use crate::narrate::wrap;

/// What the demo appends to vane-pki's `DEMO_POLICY`: the proxy, Envoy and
/// the OpenFeature SDK run with the agent's certificate (identity
/// `agent-edge`, an agent of `edge` only) and follow `web`, `mesh` and
/// `shop`, so that identity may watch those as well.
const WEB_BINDING: &str =
    "  # Added by `cargo xtask demo`: its proxy, its Envoy and its OpenFeature
  # SDK (also agent-edge) follow groups web, mesh and shop.
  - identity: agent-edge
    role: agent
    groups: [\"web\", \"mesh\", \"shop\"]
";

/// How the demo's processes talk to each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Security {
    /// TLS with client certificates and a policy (the default): vanectl is
    /// `operator`, the sidecar and the proxy are `agent-edge`.
    Mtls,
    /// Plaintext on loopback, no identities, authorization off (`--plaintext`).
    Plaintext,
}

/// Writes vane-pki's demo set into `work` (what `cargo xtask certs` writes),
/// extends its policy for the demo's proxy, and shows both.
pub(crate) fn write_certs(work: &Path) -> Result<()> {
    let explain = "A CA signs the control server's certificate (for 127.0.0.1 and localhost) \
                   and client certificates whose CN is an identity: operator, reader and \
                   agent-edge. The policy says which identity may do what in which groups; \
                   the server refuses everything else. A certificate from another CA fails \
                   the TLS handshake, and a caller with no certificate (and no bearer token) \
                   is refused as unauthenticated. The files live in the scratch directory \
                   and are removed with it at the end.";
    println!("    {}", wrap(explain, 76, "    "));
    let set = vane_pki::DemoSet::generate().context("generating the demo certificates")?;
    let written = set.write(work, false)?;
    let names: Vec<String> = written
        .iter()
        .filter_map(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    let wrote = format!(
        "(wrote {}: the set `cargo xtask certs --out DIR` writes)",
        names.join(", ")
    );
    println!("{}", wrap(&wrote, 80, " "));
    let policy = work.join("policy.yaml");
    let mut file = OpenOptions::new()
        .append(true)
        .open(&policy)
        .with_context(|| format!("cannot open {}", policy.display()))?;
    file.write_all(WEB_BINDING.as_bytes())
        .with_context(|| format!("cannot write {}", policy.display()))?;
    println!("$ cat policy.yaml   # with one binding added for this demo's proxy, Envoy and SDK");
    let text = std::fs::read_to_string(&policy)
        .with_context(|| format!("cannot read {}", policy.display()))?;
    print!("{text}");
    Ok(())
}

/// vane-control's arguments for `addr`, and the command line as shown
/// (relative file names: the tour runs in the scratch directory).
pub(crate) fn control_args(
    addr: &str,
    work: &Path,
    data: &Path,
    security: Security,
) -> (Vec<OsString>, String) {
    let mut args: Vec<OsString> = vec![
        "--listen".into(),
        addr.into(),
        "--data-dir".into(),
        data.into(),
    ];
    let mut shown = format!("vane-control --listen {addr} --data-dir {}", data.display());
    if security == Security::Mtls {
        shown.push_str(" \\\n   ");
        for (flag, file) in [
            ("--tls-cert", "server.pem"),
            ("--tls-key", "server.key"),
            ("--client-ca", "ca.pem"),
            ("--policy", "policy.yaml"),
        ] {
            args.push(flag.into());
            args.push(work.join(file).into());
            shown.push_str(&format!(" {flag} {file}"));
        }
    }
    (args, shown)
}

/// The web console's flag for `addr` (docs/console.md).
pub(crate) fn console_args(addr: std::net::SocketAddr) -> [OsString; 2] {
    ["--console-listen".into(), addr.to_string().into()]
}

/// The files the tour pushes: the example, a changed copy, a broken copy;
/// the flags example and its change.
pub(crate) fn write_files(root: &Path, work: &Path) -> Result<()> {
    let example_path = root.join(SNAPSHOT);
    let example = std::fs::read_to_string(&example_path)
        .with_context(|| format!("cannot read {}", example_path.display()))?;
    std::fs::write(work.join("snapshot.yaml"), &example)?;
    let v2 = replace_once(SNAPSHOT, &example, "weight: 3", "weight: 5")?;
    let v2 = replace_once(
        SNAPSHOT,
        &v2,
        "feature.new_checkout: true",
        "feature.new_checkout: false",
    )?;
    std::fs::write(work.join("snapshot-v2.yaml"), v2)?;
    let dangling = replace_once(SNAPSHOT, &example, "cluster: api,", "cluster: paymnets,")?;
    std::fs::write(work.join("dangling.yaml"), dangling)?;
    // The shell long-poll client the tour runs (`longpoll.rs`).
    let longpoll = root.join("examples/longpoll.sh");
    std::fs::copy(&longpoll, work.join("longpoll.sh"))
        .with_context(|| format!("cannot copy {}", longpoll.display()))?;
    // The OpenFeature steps' flags (`openfeature.rs`).
    let flags_path = root.join(FLAGS);
    let flags = std::fs::read_to_string(&flags_path)
        .with_context(|| format!("cannot read {}", flags_path.display()))?;
    std::fs::write(work.join("flags.yaml"), &flags)?;
    // The change: the new checkout's default variant on (everyone gets it).
    let flags_v2 = replace_once(FLAGS, &flags, "defaultVariant: off", "defaultVariant: on")?;
    std::fs::write(work.join("flags-v2.yaml"), flags_v2)?;
    Ok(())
}

/// The example snapshot, from the workspace root.
const SNAPSHOT: &str = "examples/snapshot.yaml";
/// The example flags, from the workspace root.
const FLAGS: &str = "examples/flags.yaml";

/// `text` (the example `name`) with `from` replaced by `to`, failing if
/// `from` is not there exactly once (so a change to the example cannot
/// silently void a step).
pub(crate) fn replace_once(name: &str, text: &str, from: &str, to: &str) -> Result<String> {
    let n = text.matches(from).count();
    ensure!(
        n == 1,
        "{name} should contain `{from}` exactly once, found {n}: update the demo"
    );
    Ok(text.replacen(from, to, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_files_follow_the_example() {
        let root = crate::workspace_root();
        let work = tempfile::tempdir().unwrap();
        write_files(&root, work.path()).unwrap();
        let v2 = std::fs::read_to_string(work.path().join("snapshot-v2.yaml")).unwrap();
        assert!(v2.contains("weight: 5") && v2.contains("new_checkout: false"));
        let bad = std::fs::read_to_string(work.path().join("dangling.yaml")).unwrap();
        assert!(bad.contains("cluster: paymnets,"));
        let flags = std::fs::read_to_string(work.path().join("flags.yaml")).unwrap();
        let flags_v2 = std::fs::read_to_string(work.path().join("flags-v2.yaml")).unwrap();
        assert!(flags.contains("defaultVariant: off"), "{flags}");
        assert!(flags_v2.contains("defaultVariant: on"), "{flags_v2}");
        assert!(!flags_v2.contains("defaultVariant: off"), "{flags_v2}");
    }

    #[test]
    fn replace_once_refuses_missing_text() {
        let err = replace_once("x.yaml", "a b", "c", "d").unwrap_err();
        assert!(
            err.to_string().starts_with("x.yaml should contain `c`"),
            "{err}"
        );
        assert!(replace_once("x.yaml", "a a", "a", "d").is_err());
        assert_eq!(replace_once("x.yaml", "a b", "b", "c").unwrap(), "a c");
    }

    #[test]
    fn control_arguments_per_security() {
        let (args, shown) = control_args(
            "127.0.0.1:0",
            Path::new("/w"),
            Path::new("/w/data"),
            Security::Plaintext,
        );
        assert_eq!(args.len(), 4);
        assert_eq!(
            shown,
            "vane-control --listen 127.0.0.1:0 --data-dir /w/data"
        );
        let (args, shown) = control_args(
            "127.0.0.1:0",
            Path::new("/w"),
            Path::new("/w/data"),
            Security::Mtls,
        );
        assert!(args.contains(&OsString::from("/w/policy.yaml")), "{args:?}");
        assert!(shown.ends_with("--policy policy.yaml"), "{shown}");
    }
}
