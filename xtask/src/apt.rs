//! Installing missing system tools with apt-get (when root), for the
//! tests and the demo: etcd, protoc, python3 with pip, node and npm.

use std::process::Command;

use anyhow::{Result, bail};

use crate::process::{on_path, run as run_cmd};

/// Installs missing tools with apt-get, running `apt-get update` at most once.
#[derive(Debug, Default)]
pub(crate) struct Apt {
    updated: bool,
}

impl Apt {
    /// Makes sure `bin` is on `$PATH`, installing the Debian package `package`
    /// when it is not and we are root. Without root (or apt-get) it fails
    /// with the command to run, rather than letting the tests fail later
    /// with a less clear error.
    pub(crate) fn ensure_tool(&mut self, bin: &str, package: &str) -> Result<()> {
        if on_path(bin) {
            return Ok(());
        }
        self.install(&[package], &format!("`{bin}`"))?;
        if !on_path(bin) {
            bail!("installed {package}, but `{bin}` is still not on PATH");
        }
        Ok(())
    }

    /// Installs Debian `packages`, needed for `what`, when we are root and
    /// have apt-get; otherwise fails with the command to run.
    pub(crate) fn install(&mut self, packages: &[&str], what: &str) -> Result<()> {
        let list = packages.join(" ");
        if !nix::unistd::geteuid().is_root() {
            bail!(
                "the build or the tests need {what}, which is missing; install it with \
                 `sudo apt-get install -y {list}` and run again"
            );
        }
        if !on_path("apt-get") {
            bail!(
                "the build or the tests need {what} (Debian packages {list}), which is missing, \
                 and there is no apt-get here to install it: install it and run again"
            );
        }
        println!("==> installing {list} (for {what})");
        if !self.updated {
            let mut update = Command::new("apt-get");
            update
                .arg("update")
                .env("DEBIAN_FRONTEND", "noninteractive");
            run_cmd(&mut update)?;
            self.updated = true;
        }
        let mut install = Command::new("apt-get");
        install
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive");
        run_cmd(&mut install)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn present_tools_need_nothing() {
        // `sh` is always there, so neither apt-get nor root is needed.
        let mut apt = Apt::default();
        apt.ensure_tool("sh", "dash").unwrap();
        assert!(!apt.updated);
    }
}
