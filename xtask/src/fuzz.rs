//! `cargo xtask fuzz`: runs the cargo-fuzz targets in `fuzz/` (all, or one)
//! for a while each and prints what each did; a crash fails the run and
//! names the input that caused it.
//!
//! cargo-fuzz is installed when missing. libFuzzer needs nightly: the
//! nightly toolchain is used when rustup has one, otherwise stable with
//! `RUSTC_BOOTSTRAP=1`. The fuzz crate is its own workspace, built into
//! `fuzz/target` so it never disturbs the workspace's `target/`.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::apt::Apt;
use crate::process::{display, on_path, run as run_cmd, which};
use crate::test::ensure_protoc;

/// Largest input libFuzzer generates: far above any snapshot file worth
/// testing, small enough to keep each run fast.
const MAX_LEN: usize = 16 * 1024;
/// An input using more memory than this is a failure (a crash report
/// `oom-*`): nothing of that size can come from a 16 KiB input legitimately.
const RSS_LIMIT_MB: u64 = 2048;
/// An input taking longer than this, in seconds, is a failure (`timeout-*`).
const TIMEOUT_SECS: u64 = 10;

/// Options of `cargo xtask fuzz`.
#[derive(Debug, clap::Args)]
pub(crate) struct FuzzArgs {
    /// How long to run each target, in seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Run only this target (a file name in fuzz/fuzz_targets, without `.rs`).
    #[arg(long)]
    target: Option<String>,
}

/// What one target's run did.
#[derive(Debug)]
struct Outcome {
    target: String,
    /// Seconds fuzzed, by libFuzzer's count, else the wall time of the run.
    seconds: f64,
    executions: Option<u64>,
    /// libFuzzer's average executions per second.
    exec_per_sec: Option<u64>,
    /// libFuzzer's peak resident set size, in MiB.
    peak_rss_mb: Option<u64>,
    corpus_files: usize,
    corpus_bytes: u64,
    /// The inputs libFuzzer saved as crashes, timeouts or out-of-memory.
    artifacts: Vec<String>,
    /// The run failed without saving an input (e.g. the build broke).
    failed: Option<String>,
}

pub(crate) fn run(root: &Path, args: FuzzArgs) -> Result<()> {
    let fuzz_dir = root.join("fuzz");
    let all = targets(&fuzz_dir)?;
    let chosen: Vec<String> = match &args.target {
        Some(t) if all.contains(t) => vec![t.clone()],
        Some(t) => bail!("no fuzz target {t:?}; the targets are: {}", all.join(", ")),
        None => all,
    };
    // The control crate's build needs protoc (the etcd client).
    ensure_protoc(&mut Apt::default())?;
    ensure_cargo_fuzz()?;
    let toolchain = Toolchain::detect();
    println!("==> fuzzing with {}", toolchain.describe());

    let mut build = toolchain.cargo_fuzz(root);
    build.arg("build").args(common_flags(&fuzz_dir));
    if let Some(t) = &args.target {
        build.arg(t);
    }
    println!("==> building: {}", display(&build));
    run_cmd(&mut build)?;

    let logs = fuzz_dir.join("target").join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let mut outcomes = Vec::new();
    for target in &chosen {
        let log = logs.join(format!("{target}.log"));
        let outcome = fuzz_one(root, &fuzz_dir, toolchain, target, args.seconds, &log)?;
        outcomes.push(outcome);
    }
    print_table(&outcomes);
    let crashed: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| !o.artifacts.is_empty() || o.failed.is_some())
        .collect();
    if crashed.is_empty() {
        println!(
            "no crashes; corpora in {}",
            fuzz_dir.join("corpus").display()
        );
        return Ok(());
    }
    for o in &crashed {
        for a in &o.artifacts {
            println!(
                "{}: crashing input {a}\n    reproduce: cargo +nightly fuzz run -s none {} {a}",
                o.target, o.target
            );
        }
        if let Some(why) = &o.failed {
            println!("{}: {why}", o.target);
        }
    }
    bail!(
        "{} of {} fuzz targets failed: {}",
        crashed.len(),
        outcomes.len(),
        crashed
            .iter()
            .map(|o| o.target.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The targets: the files in `fuzz/fuzz_targets`, sorted.
fn targets(fuzz_dir: &Path) -> Result<Vec<String>> {
    let dir = fuzz_dir.join("fuzz_targets");
    let mut out: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".rs").map(str::to_owned)
        })
        .collect();
    out.sort();
    if out.is_empty() {
        bail!("no fuzz targets in {}", dir.display());
    }
    Ok(out)
}

/// Flags of both `cargo fuzz build` and `cargo fuzz run`. No sanitizer:
/// the workspace forbids `unsafe`, so AddressSanitizer would mostly
/// re-check the standard library at half the executions per second;
/// panics, overflow checks and debug assertions (on in cargo-fuzz's
/// release builds) are what find our bugs.
fn common_flags(fuzz_dir: &Path) -> Vec<String> {
    vec![
        "--fuzz-dir".into(),
        fuzz_dir.display().to_string(),
        "--target-dir".into(),
        fuzz_dir.join("target").display().to_string(),
        "--sanitizer".into(),
        "none".into(),
    ]
}

/// Installs cargo-fuzz from crates.io when `cargo fuzz` is missing.
fn ensure_cargo_fuzz() -> Result<()> {
    if on_path("cargo-fuzz") {
        return Ok(());
    }
    println!("==> installing cargo-fuzz (cargo install cargo-fuzz --locked)");
    run_cmd(crate::process::cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    if !on_path("cargo-fuzz") {
        bail!("installed cargo-fuzz, but `cargo-fuzz` is not on PATH (is ~/.cargo/bin?)");
    }
    Ok(())
}

/// The toolchain libFuzzer builds with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Toolchain {
    /// rustup's nightly, through `cargo +nightly`.
    Nightly,
    /// The running (stable) cargo with `RUSTC_BOOTSTRAP=1`.
    StableBootstrap,
}

impl Toolchain {
    fn detect() -> Self {
        let listed = Command::new("rustup")
            .args(["toolchain", "list"])
            .stderr(Stdio::null())
            .output();
        match listed {
            Ok(out)
                if out.status.success() && has_nightly(&String::from_utf8_lossy(&out.stdout)) =>
            {
                Toolchain::Nightly
            }
            _ => Toolchain::StableBootstrap,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Toolchain::Nightly => "the nightly toolchain",
            Toolchain::StableBootstrap => "stable and RUSTC_BOOTSTRAP=1 (rustup has no nightly)",
        }
    }

    /// `cargo fuzz` on this toolchain, in `root`, with `PROTOC` set like
    /// the workspace's own builds.
    fn cargo_fuzz(self, root: &Path) -> Command {
        let mut cmd = match self {
            Toolchain::Nightly => {
                // The rustup proxy, not $CARGO (the stable cargo running
                // us), so that `+nightly` means something.
                let mut cmd = Command::new("cargo");
                cmd.arg("+nightly");
                cmd
            }
            Toolchain::StableBootstrap => {
                let mut cmd = crate::process::cargo();
                cmd.env("RUSTC_BOOTSTRAP", "1");
                cmd
            }
        };
        cmd.arg("fuzz").current_dir(root);
        if std::env::var_os("PROTOC").is_none()
            && let Some(protoc) = which("protoc")
        {
            cmd.env("PROTOC", protoc);
        }
        cmd
    }
}

/// Whether `rustup toolchain list` output names a nightly toolchain.
fn has_nightly(listing: &str) -> bool {
    listing
        .lines()
        .any(|l| l.trim_start().starts_with("nightly"))
}

/// Runs one target for `seconds`, echoing libFuzzer's progress and keeping
/// its whole output in `log`.
fn fuzz_one(
    root: &Path,
    fuzz_dir: &Path,
    toolchain: Toolchain,
    target: &str,
    seconds: u64,
    log: &Path,
) -> Result<Outcome> {
    // The corpus grows with what the run finds; the inputs that once
    // crashed (kept apart, so minimizing the corpus never drops them) are
    // read as well.
    let corpus = fuzz_dir.join("corpus").join(target);
    std::fs::create_dir_all(&corpus)
        .with_context(|| format!("cannot create {}", corpus.display()))?;
    let regressions = fuzz_dir.join("regressions").join(target);
    let mut cmd = toolchain.cargo_fuzz(root);
    cmd.arg("run")
        .args(common_flags(fuzz_dir))
        .arg(target)
        .arg(&corpus);
    if regressions.is_dir() {
        cmd.arg(&regressions);
    }
    cmd.arg("--")
        .args(libfuzzer_flags(fuzz_dir, target, seconds));
    println!("==> {target}: {}", display(&cmd));
    let mut log_file =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{}`", display(&cmd)))?;
    // libFuzzer reports on stderr, cargo-fuzz's hints go to stdout: read
    // both, stdout on a thread of its own so neither pipe fills up.
    let stdout = child.stdout.take();
    let stdout_lines = std::thread::spawn(move || {
        stdout
            .map(|s| {
                BufReader::new(s)
                    .lines()
                    .map_while(Result::ok)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    });
    let mut stats = Stats::default();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            writeln!(log_file, "{line}").ok();
            stats.read(&line);
            if worth_echoing(&line) {
                println!("    {line}");
            }
        }
    }
    let status = child.wait().context("waiting for cargo fuzz")?;
    let took = start.elapsed();
    for line in stdout_lines.join().unwrap_or_default() {
        writeln!(log_file, "{line}").ok();
        stats.read(&line);
    }
    let (corpus_files, corpus_bytes) = corpus_size(&fuzz_dir.join("corpus").join(target));
    let failed = (!status.success() && stats.artifacts.is_empty()).then(|| {
        format!(
            "`cargo fuzz run` failed ({status}) without saving an input; see {}",
            log.display()
        )
    });
    Ok(Outcome {
        target: target.to_owned(),
        seconds: stats.seconds.map_or(took.as_secs_f64(), |s| s as f64),
        executions: stats.executions,
        exec_per_sec: stats.exec_per_sec,
        peak_rss_mb: stats.peak_rss_mb,
        corpus_files,
        corpus_bytes,
        artifacts: stats.artifacts,
        failed,
    })
}

/// libFuzzer's flags for one run.
fn libfuzzer_flags(fuzz_dir: &Path, target: &str, seconds: u64) -> Vec<String> {
    let mut flags = vec![
        format!("-max_total_time={seconds}"),
        format!("-max_len={MAX_LEN}"),
        format!("-rss_limit_mb={RSS_LIMIT_MB}"),
        format!("-timeout={TIMEOUT_SECS}"),
        "-print_final_stats=1".into(),
    ];
    // Keywords of the input format, when the target has a dictionary.
    let dict = fuzz_dir.join("dicts").join(format!("{target}.dict"));
    if dict.is_file() {
        flags.push(format!("-dict={}", dict.display()));
    }
    flags
}

/// libFuzzer's progress lines worth showing: not each new coverage point,
/// nor the dictionary it recommends at the end.
fn worth_echoing(line: &str) -> bool {
    if line.starts_with('#') {
        return ["INITED", "pulse", "DONE", "RELOAD"]
            .iter()
            .any(|k| line.contains(k))
            && !line.starts_with("######");
    }
    let line = line.trim_start();
    !(line.starts_with("NEW_FUNC") || line.starts_with('"'))
}

/// What libFuzzer's output says about a run.
#[derive(Debug, Default)]
struct Stats {
    executions: Option<u64>,
    exec_per_sec: Option<u64>,
    peak_rss_mb: Option<u64>,
    /// libFuzzer's own count of the seconds it fuzzed (without the build).
    seconds: Option<u64>,
    artifacts: Vec<String>,
}

impl Stats {
    fn read(&mut self, line: &str) {
        if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            self.executions = n.trim().parse().ok().or(self.executions);
        } else if let Some(n) = line.strip_prefix("stat::average_exec_per_sec:") {
            self.exec_per_sec = n.trim().parse().ok();
        } else if let Some(n) = line.strip_prefix("stat::peak_rss_mb:") {
            self.peak_rss_mb = n.trim().parse().ok();
        } else if let Some(rest) = line.strip_prefix("Done ") {
            // "Done 123456 runs in 60 second(s)"
            let words: Vec<&str> = rest.split_whitespace().collect();
            if self.executions.is_none() {
                self.executions = words.first().and_then(|n| n.parse().ok());
            }
            self.seconds = words.get(3).and_then(|n| n.parse().ok());
        } else if let Some((_, path)) = line.split_once("Test unit written to ") {
            let path = path.trim().to_owned();
            if !self.artifacts.contains(&path) {
                self.artifacts.push(path);
            }
        }
    }
}

/// Files and bytes in a corpus directory.
fn corpus_size(dir: &Path) -> (usize, u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .fold((0, 0), |(n, bytes), m| (n + 1, bytes + m.len()))
}

fn print_table(outcomes: &[Outcome]) {
    println!();
    println!(
        "{:<16} {:>8} {:>12} {:>8} {:>8} {:>8} {:>10} {:>8}",
        "target", "seconds", "executions", "exec/s", "peak MiB", "corpus", "corpus KiB", "crashes"
    );
    let or_unknown = |n: Option<u64>| n.map_or_else(|| "?".to_owned(), |n| n.to_string());
    for o in outcomes {
        let crashes = o.artifacts.len() + usize::from(o.failed.is_some());
        println!(
            "{:<16} {:>8.0} {:>12} {:>8} {:>8} {:>8} {:>10} {:>8}",
            o.target,
            o.seconds,
            or_unknown(o.executions),
            or_unknown(o.exec_per_sec),
            or_unknown(o.peak_rss_mb),
            o.corpus_files,
            o.corpus_bytes.div_ceil(1024),
            crashes
        );
    }
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_output() {
        let mut s = Stats::default();
        for line in [
            "#2097152\tpulse  cov: 812 ft: 3012 corp: 233/51Kb exec/s: 34952 rss: 88Mb",
            "Done 2155873 runs in 61 second(s)",
            "stat::number_of_executed_units: 2155873",
            "stat::average_exec_per_sec:     35342",
            "stat::peak_rss_mb:              88",
            "artifact_prefix='/w/fuzz/artifacts/delta_apply/'; Test unit written to /w/fuzz/artifacts/delta_apply/crash-da39a3ee",
        ] {
            s.read(line);
        }
        assert_eq!(s.executions, Some(2_155_873));
        assert_eq!(s.seconds, Some(61));
        assert_eq!(s.exec_per_sec, Some(35_342));
        assert_eq!(s.peak_rss_mb, Some(88));
        assert_eq!(
            s.artifacts,
            ["/w/fuzz/artifacts/delta_apply/crash-da39a3ee"]
        );
    }

    #[test]
    fn finds_nightly_in_rustup_listing() {
        assert!(has_nightly(
            "stable-x86_64-unknown-linux-gnu (default)\nnightly-x86_64-unknown-linux-gnu\n"
        ));
        assert!(!has_nightly("stable-x86_64-unknown-linux-gnu (default)\n"));
    }

    #[test]
    fn echoes_progress_not_every_new_input() {
        assert!(worth_echoing("#1024\tpulse  cov: 1 ft: 2"));
        assert!(!worth_echoing("#1025\tNEW    cov: 1 ft: 3"));
        assert!(!worth_echoing(
            "\tNEW_FUNC[1/3]: 0x55 in vane_model::validate"
        ));
        assert!(worth_echoing("==12== ERROR: libFuzzer: deadly signal"));
        assert!(!worth_echoing("###### Recommended dictionary. ######"));
        assert!(!worth_echoing("    \"zedg\" # Uses: 244"));
    }

    #[test]
    fn the_targets_are_the_files() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let t = targets(&root.join("fuzz")).unwrap();
        assert!(t.contains(&"snapshot_file".to_owned()), "{t:?}");
        assert!(t.windows(2).all(|w| w[0] < w[1]));
    }
}
