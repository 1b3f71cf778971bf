//! `cargo xtask bench push`: durable pushes per second through the Admin
//! API of a release `vane-control` on the embedded store, with 1, 8 and 64
//! concurrent pushers (each waits for its push to be fsynced and answered
//! before the next), every pusher on its own group and all on one group;
//! plus what one fsync costs on the data directory's disk, the bound that
//! group commit beats.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

use super::fanout::{ControlServer, build_release, raise_nofile, run_loadgen};
use crate::process::target_dir;

/// Options of `cargo xtask bench push`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Options {
    /// Numbers of concurrent pushers, comma-separated.
    #[arg(long, default_value = "1,8,64", value_delimiter = ',')]
    pub(crate) concurrency: Vec<usize>,
    /// Seconds each measurement pushes.
    #[arg(long, default_value_t = 3.0)]
    pub(crate) seconds: f64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Builds the release binaries, measures, prints.
pub(crate) fn run(root: &Path, o: &Options) -> Result<()> {
    build_release(root)?;
    let report = measure(&target_dir(root).join("release"), o)?;
    if o.json {
        println!("{report}");
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

/// Runs the scenario with the binaries in `bin_dir`.
pub(crate) fn measure(bin_dir: &Path, o: &Options) -> Result<Value> {
    raise_nofile(o.concurrency.iter().sum::<usize>() as u64 + 256)?;
    let dir = tempfile::Builder::new().prefix("vane-bench-").tempdir()?;
    let server = ControlServer::start(bin_dir, dir.path())?;
    let concurrency: Vec<String> = o.concurrency.iter().map(usize::to_string).collect();
    let mut cmd = Command::new(bin_dir.join("vane-loadgen"));
    cmd.args(["push", "--server", &server.url()])
        .args(["--concurrency", &concurrency.join(",")])
        .args([
            "--duration",
            &format!(
                "{}ms",
                Duration::from_secs_f64(o.seconds.max(0.0)).as_millis()
            ),
        ])
        .arg("--fsync-dir")
        .arg(server.data_dir());
    let report = run_loadgen(&mut cmd, &server)?;
    server.stop()?;
    Ok(report)
}

/// The report as a table.
pub(crate) fn table(r: &Value) -> String {
    let get = |map: &str, k: &str| r[map][k].as_f64().unwrap_or(f64::NAN);
    let mut out = format!(
        "durable pushes ({}-byte snapshots, {} s each, fsync of 4 KiB here: p50 {:.3} ms, p99 {:.3} ms)\n",
        r["snapshot_bytes"],
        r["duration_seconds"],
        r["fsync_p50_ms"].as_f64().unwrap_or(f64::NAN),
        r["fsync_p99_ms"].as_f64().unwrap_or(f64::NAN),
    );
    out.push_str(&format!(
        "{:>8} {:>16} {:>16} {:>14} {:>14}\n",
        "pushers", "own groups /s", "one group /s", "p50 ms", "p99 ms"
    ));
    if let Some(keys) = r["pushes_per_sec"].as_object() {
        let mut keys: Vec<&String> = keys.keys().collect();
        keys.sort_by_key(|k| k.parse::<usize>().unwrap_or(usize::MAX));
        for k in keys {
            out.push_str(&format!(
                "{k:>8} {:>16.0} {:>16.0} {:>14.2} {:>14.2}\n",
                get("pushes_per_sec", k),
                get("pushes_per_sec_one_group", k),
                get("latency_p50_ms", k),
                get("latency_p99_ms", k),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small run on the debug binaries `cargo xtask test` builds first.
    #[test]
    fn smoke() {
        let bin_dir = super::super::smoke_bins();
        let o = Options {
            concurrency: vec![1, 4],
            seconds: 0.3,
            json: true,
        };
        let r = measure(&bin_dir, &o).expect("the benchmark runs");
        for k in ["1", "4"] {
            assert!(r["pushes_per_sec"][k].as_f64().unwrap() > 0.0, "{r}");
        }
        assert!(table(&r).contains("own groups"));
    }
}
