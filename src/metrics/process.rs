//! The standard `process_*` metrics, read from `/proc/self` on every scrape (Linux only; on
//! other systems, or when `/proc` is hidden, the missing values are simply not exported).
//!
//! Names and units follow the Prometheus client libraries' process collector
//! (prometheus.io/docs/instrumenting/writing_clientlibs/#process-metrics), so dashboards
//! written for other daemons work unchanged. We read `/proc` ourselves instead of pulling in
//! `procfs`: five small files, no `unsafe` and no `sysconf` (see the constants below).

use std::fs;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// `/proc/<pid>/stat` reports times in clock ticks of `USER_HZ`, which the kernel fixes at 100
/// for this interface on every architecture (proc(5), "(14) utime ... sysconf(_SC_CLK_TCK)").
const TICKS_PER_SECOND: f64 = 100.0;

/// Exports `process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds` and
/// `process_start_time_seconds`.
#[derive(Debug, Default)]
pub(crate) struct ProcessCollector {
    _private: (),
}

/// One reading of the process's figures; `None` where `/proc` did not tell.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct ProcessStats {
    /// User + system CPU time, seconds.
    pub cpu_seconds: Option<f64>,
    /// Resident set size, bytes.
    pub resident_bytes: Option<u64>,
    /// Virtual memory size, bytes.
    pub virtual_bytes: Option<u64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// The soft `RLIMIT_NOFILE`.
    pub max_fds: Option<u64>,
    /// Start time since the Unix epoch, seconds.
    pub start_time_seconds: Option<f64>,
}

impl ProcessCollector {
    /// A collector for the current process.
    pub(crate) fn new() -> Self {
        Self::default()
    }
}

impl ProcessStats {
    /// Reads the current process's figures from `/proc/self` and `/proc/stat`.
    pub(crate) fn read() -> Self {
        let stat = fs::read_to_string("/proc/self/stat").ok();
        let stat_fields = stat.as_deref().and_then(stat_fields_after_comm);
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        // Fields after `comm` are numbered from 3 in proc(5); index 0 here is field 3 (state).
        let field = |n: usize| stat_fields.as_ref().and_then(|f| f.get(n - 3)).and_then(|v| v.parse::<u64>().ok());
        let cpu_seconds = match (field(14), field(15)) {
            (Some(utime), Some(stime)) => Some((utime + stime) as f64 / TICKS_PER_SECOND),
            _ => None,
        };
        let boot_time = fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse::<u64>().ok()));
        let start_time_seconds = match (boot_time, field(22)) {
            (Some(boot), Some(ticks)) => Some(boot as f64 + ticks as f64 / TICKS_PER_SECOND),
            _ => None,
        };
        let open_fds = fs::read_dir("/proc/self/fd").ok().map(|dir| dir.count() as u64);
        let max_fds = fs::read_to_string("/proc/self/limits").ok().and_then(|s| parse_max_open_files(&s));
        ProcessStats {
            cpu_seconds,
            resident_bytes: status_kib(&status, "VmRSS:").map(|k| k * 1024),
            virtual_bytes: status_kib(&status, "VmSize:").map(|k| k * 1024),
            // read_dir's own descriptor is in the listing; do not count it.
            open_fds: open_fds.map(|n| n.saturating_sub(1)),
            max_fds,
            start_time_seconds,
        }
    }
}

/// The whitespace-separated fields of `/proc/<pid>/stat` after `(comm)`, which may itself
/// contain spaces and parentheses, so split at the *last* `)`.
fn stat_fields_after_comm(stat: &str) -> Option<Vec<&str>> {
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().collect())
}

/// A `Key:   1234 kB` line of `/proc/<pid>/status`, in KiB.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// The soft limit of the `Max open files` row of `/proc/<pid>/limits`.
fn parse_max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = ProcessStats::read();
        if let Some(v) = stats.cpu_seconds {
            let m = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(v).encode(m)?;
        }
        let gauges: [(&str, &str, Option<f64>); 5] = [
            ("process_resident_memory_bytes", "Resident memory size in bytes", stats.resident_bytes.map(|v| v as f64)),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes", stats.virtual_bytes.map(|v| v as f64)),
            ("process_open_fds", "Number of open file descriptors", stats.open_fds.map(|v| v as f64)),
            ("process_max_fds", "Maximum number of open file descriptors", stats.max_fds.map(|v| v as f64)),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                stats.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                ConstGauge::new(v).encode(m)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_formats() {
        let stat = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 9 0 12345 1000 200";
        let fields = stat_fields_after_comm(stat).unwrap();
        assert_eq!(fields[0], "S");
        assert_eq!(fields[14 - 3], "250");
        assert_eq!(fields[22 - 3], "12345");
        assert_eq!(status_kib("Name:\tx\nVmRSS:\t   2048 kB\n", "VmRSS:"), Some(2048));
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        assert_eq!(parse_max_open_files(limits), Some(1024));
    }

    #[test]
    fn reads_this_process() {
        let s = ProcessStats::read();
        assert!(s.resident_bytes.unwrap() > 0);
        assert!(s.open_fds.unwrap() >= 3);
        assert!(s.max_fds.unwrap() >= s.open_fds.unwrap());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let start = s.start_time_seconds.unwrap();
        assert!(start <= now + 1.0 && start > now - 86_400.0 * 365.0, "start {start} now {now}");
    }
}
