//! What the web console's browser tests run, installed when missing (the
//! layout and versions are vane-testkit's `console_tools`, where the tests
//! look): Debian's `chromium` by apt, and Playwright for Python, pinned,
//! by pip into `<target>/console-deps/python` (stamped like the other
//! clients, `pinned`). Playwright never downloads a browser here: the
//! tests launch the system Chromium by path.

use std::path::{Path, PathBuf};

use anyhow::{Result, ensure};
use vane_testkit::console_tools::{
    CHROMIUM, ConsoleTools, PLAYWRIGHT_VERSION, PYTHON_PIP, python_dir,
};

use crate::apt::Apt;
use crate::pinned::ensure_pip_install;
use crate::process::target_dir;

/// Makes sure Chromium and Playwright are installed, installing what is
/// missing; returns where they are.
pub(crate) fn ensure(root: &Path, apt: &mut Apt) -> Result<ConsoleTools> {
    let target = target_dir(root);
    apt.ensure_tool(CHROMIUM, CHROMIUM)?;
    let dir = python_dir(&target);
    ensure_pip_install(
        apt,
        &dir,
        PYTHON_PIP,
        &format!("Playwright {PLAYWRIGHT_VERSION}"),
        "the console's browser tests",
    )?;
    let tools = ConsoleTools::locate(&target);
    let missing = tools.missing();
    ensure!(
        missing.is_empty(),
        "the console's browser tests still miss tools after installing them: {}; remove {} \
         and run `cargo xtask test` again",
        missing.join("; "),
        target.join("console-deps").display()
    );
    Ok(tools)
}

/// The tools as the tests' environment (see vane-testkit's `console_tools`).
pub(crate) fn test_env(tools: &ConsoleTools) -> Vec<(&'static str, PathBuf)> {
    tools.env()
}
