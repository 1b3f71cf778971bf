//! `cargo xtask man`: vanectl's man pages, rendered from its clap
//! definition (so they never drift from `--help`): `vanectl.1` and one page
//! per subcommand, `vanectl-push.1`, `vanectl-rollout-start.1` and so on.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

/// Writes every page into `out` (created if missing) and lists them.
pub(crate) fn run(root: &Path, out: Option<PathBuf>) -> Result<()> {
    let out = out.unwrap_or_else(|| crate::process::target_dir(root).join("man"));
    let pages = write_pages(&out)?;
    for page in &pages {
        println!("{}", page.display());
    }
    println!(
        "{} pages; read one with `man -l {}`",
        pages.len(),
        out.join("vanectl.1").display()
    );
    Ok(())
}

/// Renders the pages into `out`; returns their paths, `vanectl.1` first.
pub(crate) fn write_pages(out: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let command = <vanectl::Cli as clap::CommandFactory>::command();
    let version = command.get_version().unwrap_or_default().to_owned();
    let mut pages = Vec::new();
    render(&command, "vanectl", &version, out, &mut pages)?;
    Ok(pages)
}

/// Writes the page of `command` (named `name`) and those of its subcommands.
fn render(
    command: &clap::Command,
    name: &str,
    version: &str,
    out: &Path,
    pages: &mut Vec<PathBuf>,
) -> Result<()> {
    // The page's own name, so its header and NAME section say
    // `vanectl-push`, as `man vanectl-push` looks it up; vanectl's version
    // in every header.
    // (Subcommands have no `--version` flag of their own: `get` has a
    // `--version N` option.)
    let mut command = command
        .clone()
        .name(name.to_owned())
        .version(version.to_owned());
    if name != "vanectl" {
        command = command.disable_version_flag(true);
    }
    let mut buf = Vec::new();
    clap_mangen::Man::new(command.clone())
        .render(&mut buf)
        .with_context(|| format!("cannot render the page of {name}"))?;
    let path = out.join(format!("{name}.1"));
    std::fs::write(&path, buf).with_context(|| format!("cannot write {}", path.display()))?;
    pages.push(path);
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        render(
            sub,
            &format!("{name}-{}", sub.get_name()),
            version,
            out,
            pages,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn every_subcommand_has_a_page_with_its_options() {
        let dir = tempfile::tempdir().unwrap();
        let pages = write_pages(dir.path()).unwrap();
        let names: Vec<String> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "vanectl.1",
            "vanectl-push.1",
            "vanectl-completion.1",
            "vanectl-rollout.1",
            "vanectl-rollout-start.1",
        ] {
            assert!(names.iter().any(|n| n == want), "no {want} in {names:?}");
        }
        let push = std::fs::read_to_string(dir.path().join("vanectl-push.1")).unwrap();
        assert!(push.starts_with(".ie"), "{}", &push[..80.min(push.len())]);
        let version = env!("CARGO_PKG_VERSION");
        assert!(
            push.contains(&format!(
                ".TH vanectl-push 1  \"vanectl-push {version} (commit "
            )),
            "{push}"
        );
        assert!(push.contains("dry\\-run"), "{push}");
        let top = std::fs::read_to_string(dir.path().join("vanectl.1")).unwrap();
        assert!(top.contains("Exit codes"), "{top}");
    }
}
