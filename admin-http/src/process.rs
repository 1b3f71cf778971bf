//! The series every Vane metrics endpoint carries besides its own: the
//! standard `process_*` figures (CPU, memory, file descriptors, start
//! time, named as the Prometheus client libraries name them), read from
//! `/proc/self` at scrape time on Linux (absent elsewhere), and
//! `vane_build_info{version,commit} 1`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Clock ticks per second of the times in `/proc/self/stat`: the kernel's
/// USER_HZ, 100 on every architecture Vane builds for (Prometheus' own
/// procfs library assumes the same).
const USER_HZ: f64 = 100.0;

/// Adds the `process_*` series and `vane_build_info` to `registry`.
pub fn register_process_and_build(registry: &mut Registry) {
    registry.register_collector(Box::new(ProcessCollector));
}

/// What one scrape reads from `/proc`.
#[derive(Debug, Default, Clone, PartialEq)]
struct Process {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<i64>,
    virtual_bytes: Option<i64>,
    open_fds: Option<i64>,
    max_fds: Option<i64>,
    start_time_seconds: Option<f64>,
}

impl Process {
    fn read() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let stat = read("/proc/self/stat");
        let stat = stat.as_deref().map(stat_fields);
        let status = read("/proc/self/status");
        let status = status.as_deref();
        let boot = read("/proc/stat").and_then(|s| boot_time(&s));
        Self {
            cpu_seconds: stat.as_ref().and_then(|s| s.cpu_ticks).map(|t| t / USER_HZ),
            resident_bytes: status
                .and_then(|s| status_kib(s, "VmRSS:"))
                .map(|k| k * 1024),
            virtual_bytes: status
                .and_then(|s| status_kib(s, "VmSize:"))
                .map(|k| k * 1024),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|d| i64::try_from(d.count()).unwrap_or(i64::MAX)),
            max_fds: read("/proc/self/limits").and_then(|l| max_open_files(&l)),
            start_time_seconds: match (boot, stat.and_then(|s| s.start_ticks)) {
                (Some(boot), Some(ticks)) => Some(boot + ticks / USER_HZ),
                _ => None,
            },
        }
    }
}

/// The fields of `/proc/self/stat` used here.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stat {
    /// utime + stime, in clock ticks.
    cpu_ticks: Option<f64>,
    /// Start time after boot, in clock ticks.
    start_ticks: Option<f64>,
}

/// Parses `/proc/self/stat`. The command name (field 2) is in parentheses
/// and may hold spaces and parentheses itself, so fields are counted from
/// the last `)`: field 3 (state) is the first after it.
fn stat_fields(stat: &str) -> Stat {
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Field n (1-based, man proc) is at index n - 3 here.
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
    Stat {
        cpu_ticks: field(14).zip(field(15)).map(|(u, s)| u + s),
        start_ticks: field(22),
    }
}

/// A `Key:   123 kB` line of `/proc/self/status`, in KiB.
fn status_kib(status: &str, key: &str) -> Option<i64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The soft limit on open files in `/proc/self/limits`.
fn max_open_files(limits: &str) -> Option<i64> {
    let rest = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    let soft = rest.split_whitespace().next()?;
    if soft == "unlimited" {
        return Some(i64::MAX);
    }
    soft.parse().ok()
}

/// The boot time in `/proc/stat` (`btime`, seconds since the epoch).
fn boot_time(stat: &str) -> Option<f64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|s| s.trim().parse().ok())
}

#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let p = Process::read();
        if let Some(v) = p.cpu_seconds {
            let m = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(v).encode(m)?;
        }
        for (name, help, value) in [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                p.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                p.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                p.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                p.max_fds,
            ),
        ] {
            if let Some(v) = value {
                let m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                ConstGauge::new(v).encode(m)?;
            }
        }
        if let Some(v) = p.start_time_seconds {
            let m = encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(v).encode(m)?;
        }
        let mut m = encoder.encode_descriptor(
            "vane_build_info",
            "Always 1; the labels say which Vane this is: its version and the git commit it was built from (unknown outside git)",
            None,
            MetricType::Gauge,
        )?;
        let labels = [
            ("version", vane_build_info::VERSION),
            ("commit", vane_build_info::COMMIT),
        ];
        ConstGauge::new(1).encode(m.encode_family(&labels)?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        // A command name with spaces and a parenthesis.
        let stat = "4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 3 0 12345 10000 300 18446744073709551615";
        let s = stat_fields(stat);
        assert_eq!(s.cpu_ticks, Some(300.0));
        assert_eq!(s.start_ticks, Some(12345.0));
    }

    #[test]
    fn status_limits_and_boot_time_parse() {
        assert_eq!(
            status_kib("Name:\tx\nVmSize:\t  2048 kB\nVmRSS:\t 512 kB\n", "VmRSS:"),
            Some(512)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024));
        assert_eq!(
            boot_time("cpu 1 2\nbtime 1700000000\n"),
            Some(1_700_000_000.0)
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_read() {
        let p = Process::read();
        assert!(p.resident_bytes.is_some_and(|b| b > 0), "{p:?}");
        assert!(p.open_fds.is_some_and(|n| n >= 3), "{p:?}");
        let start = p.start_time_seconds.unwrap_or(0.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            start > now - 86_400.0 * 365.0 && start <= now + 1.0,
            "{start}"
        );
        let mut r = Registry::default();
        register_process_and_build(&mut r);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        assert!(text.contains("process_cpu_seconds_total "), "{text}");
        assert!(
            text.contains(&format!(
                "vane_build_info{{version=\"{}\",commit=\"{}\"}} 1",
                vane_build_info::VERSION,
                vane_build_info::COMMIT
            )),
            "{text}"
        );
    }
}
