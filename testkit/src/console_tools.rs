//! What the web console's browser tests run, and where it is: Debian's
//! `chromium` (apt) driven by Playwright for Python, pinned and installed
//! by pip under the build directory (`<target>/console-deps/python`), with
//! no browser download (the script launches the system Chromium by path),
//! and the committed driver script in `tests/console-browser/`. `cargo
//! xtask test` installs both when missing; the tests find them here.
//! Standard library only, so xtask can use it without the heavy part of
//! the crate.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What pip installs: Playwright and its one dependency, each pinned.
pub const PYTHON_PIP: &[&str] = &["playwright==1.65.2", "greenlet==3.5.6"];
/// The Playwright version (also in [`PYTHON_PIP`]).
pub const PLAYWRIGHT_VERSION: &str = "1.65.2";
/// The driver script, from the workspace root.
pub const SCRIPT: &str = "tests/console-browser/console_browser.py";
/// The `PYTHONPATH` holding Playwright, instead of the one under the
/// build directory.
pub const ENV_PYTHONPATH: &str = "VANE_CONSOLE_PYTHONPATH";
/// The Chromium binary, instead of `chromium` on `PATH`.
pub const ENV_CHROMIUM: &str = "VANE_CHROMIUM";
/// Debian's package and binary.
pub const CHROMIUM: &str = "chromium";

/// The pip target under the cargo target directory `target`.
pub fn python_dir(target: &Path) -> PathBuf {
    target.join("console-deps").join("python")
}

/// Where Playwright and Chromium are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleTools {
    /// A directory to put on `PYTHONPATH` (the pip target).
    pub pythonpath: PathBuf,
    /// The Chromium executable (`None` when not found).
    pub chromium: Option<PathBuf>,
}

impl ConsoleTools {
    /// Playwright from [`ENV_PYTHONPATH`] (else under `target`) and Chromium
    /// from [`ENV_CHROMIUM`] (else `chromium` on `PATH`).
    pub fn locate(target: &Path) -> Self {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Self {
            pythonpath: var(ENV_PYTHONPATH).unwrap_or_else(|| python_dir(target)),
            chromium: var(ENV_CHROMIUM).or_else(|| on_path(CHROMIUM)),
        }
    }

    /// What is missing, one line each (empty when everything is there).
    pub fn missing(&self) -> Vec<String> {
        let mut missing = Vec::new();
        let playwright = self
            .pythonpath
            .join("playwright")
            .join("sync_api")
            .join("__init__.py");
        if !playwright.is_file() {
            missing.push(format!(
                "Playwright for Python {PLAYWRIGHT_VERSION} ({}; ${ENV_PYTHONPATH} overrides)",
                self.pythonpath.display()
            ));
        }
        match &self.chromium {
            Some(path) if path.is_file() => {}
            Some(path) => missing.push(format!("Chromium ({} is not a file)", path.display())),
            None => missing.push(format!(
                "Chromium (Debian's `{CHROMIUM}`, not on PATH; ${ENV_CHROMIUM} overrides)"
            )),
        }
        missing
    }

    /// The environment variables that point a test run at these.
    pub fn env(&self) -> Vec<(&'static str, PathBuf)> {
        let mut env = vec![(ENV_PYTHONPATH, self.pythonpath.clone())];
        if let Some(chromium) = &self.chromium {
            env.push((ENV_CHROMIUM, chromium.clone()));
        }
        env
    }

    /// The installed tools, for a test; a missing one fails the test,
    /// saying how to install it (the console tests are never skipped).
    #[track_caller]
    pub fn for_tests() -> Self {
        let target = crate::process::bin_dir()
            .parent()
            .map_or_else(|| PathBuf::from("target"), Path::to_path_buf);
        let tools = Self::locate(&target);
        let missing = tools.missing();
        assert!(
            missing.is_empty(),
            "the console's browser tests need tools that are not installed: {}. Run `cargo \
             xtask test` (it installs Chromium with apt and Playwright, pinned, into \
             {}/console-deps), then run the tests again",
            missing.join("; "),
            target.display()
        );
        tools
    }

    /// `python3 -u console_browser.py --chromium PATH` with `PYTHONPATH`
    /// set; add the scenario and its arguments.
    pub fn driver(&self) -> Command {
        let mut cmd = Command::new("python3");
        cmd.arg("-u")
            .arg(crate::process::workspace_root().join(SCRIPT))
            .env("PYTHONPATH", &self.pythonpath);
        if let Some(chromium) = &self.chromium {
            cmd.arg("--chromium").arg(chromium);
        }
        cmd
    }
}

/// `bin` on `PATH`, if there.
fn on_path(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(bin))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn playwright_is_pinned_exactly_and_lives_under_the_target_directory() {
        for spec in PYTHON_PIP {
            assert!(spec.contains("=="), "{spec} is not pinned with ==");
        }
        assert!(PYTHON_PIP.contains(&"playwright==1.65.2"));
        assert_eq!(
            python_dir(Path::new("/t")),
            Path::new("/t/console-deps/python")
        );
    }

    #[test]
    fn missing_tools_are_named() {
        let tools = ConsoleTools {
            pythonpath: PathBuf::from("/surely/not"),
            chromium: None,
        };
        let missing = tools.missing();
        assert_eq!(missing.len(), 2, "{missing:?}");
        assert!(
            missing[0].starts_with("Playwright for Python 1.65.2"),
            "{missing:?}"
        );
        assert!(missing[1].contains(ENV_CHROMIUM), "{missing:?}");
    }

    #[test]
    fn the_driver_runs_the_committed_script_with_the_packages() {
        let tools = ConsoleTools {
            pythonpath: PathBuf::from("/t/console-deps/python"),
            chromium: Some(PathBuf::from("/usr/bin/chromium")),
        };
        let cmd = tools.driver();
        let args: Vec<_> = cmd.get_args().collect();
        assert!(Path::new(args[1]).is_file(), "{args:?}");
        assert_eq!(args[2..], ["--chromium", "/usr/bin/chromium"]);
    }
}
