//! What the xDS helpers share: the installed tools (or a failure saying
//! how to install them), the client scripts' paths, bounded waits and log
//! tails.

use std::path::PathBuf;
use std::time::Duration;

use crate::xds_tools::XdsTools;

/// How long an xDS client may take to reach a state that must come.
pub const XDS_WAIT: Duration = Duration::from_secs(30);

/// The installed tools. A missing one fails the test, saying how to
/// install it: the xDS tests are part of the suite, never skipped.
#[track_caller]
pub fn tools() -> XdsTools {
    let target = crate::process::bin_dir()
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"));
    let tools = XdsTools::locate(&target);
    let missing = tools.missing();
    assert!(
        missing.is_empty(),
        "the xDS tests need tools that are not installed: {}. Run `cargo xtask test` \
         (it installs them, pinned, into {}/xds-deps), then run the tests again",
        missing.join("; "),
        target.display()
    );
    tools
}

/// A file of `tests/xds-clients/`.
pub fn client_script(name: &str) -> PathBuf {
    crate::process::workspace_root()
        .join("tests")
        .join("xds-clients")
        .join(name)
}

pub use crate::lines::{tail, wait_for};
