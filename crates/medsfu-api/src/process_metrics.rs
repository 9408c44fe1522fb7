//! The server process's CPU time, memory, threads and file descriptors, read from `/proc`
//! at each scrape (Linux; elsewhere the series stay at zero).

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, IntGauge};

/// Figures of `/proc/self/stat` the collector exports.
#[derive(Debug, PartialEq, Eq)]
pub struct Stat {
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Threads of the process.
    pub threads: u64,
    /// Virtual memory size, bytes.
    pub virtual_bytes: u64,
    /// Resident set, in pages.
    pub resident_pages: u64,
}

/// Parses the one line of `/proc/self/stat` (proc(5)); `None` if it is not one.
pub fn parse_stat(text: &str) -> Option<Stat> {
    // The command name (field 2) is in parentheses and may hold spaces or ')': the
    // fields that follow start after the last ')'. Index 0 is then field 3 (state).
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |field: usize| f.get(field - 3)?.parse::<u64>().ok();
    Some(Stat {
        cpu_ticks: n(14)?.checked_add(n(15)?)?,
        threads: n(20)?,
        virtual_bytes: n(23)?,
        resident_pages: n(24)?,
    })
}

/// A collector of the process's own figures, named `medsfu_process_*`.
pub struct ProcessCollector {
    cpu: Counter,
    resident: IntGauge,
    virtual_bytes: IntGauge,
    threads: IntGauge,
    open_fds: IntGauge,
    max_fds: IntGauge,
    start: Gauge,
    descs: Vec<Desc>,
}

impl ProcessCollector {
    /// A collector for this process, started at `started_s` (seconds since 1970).
    pub fn new(started_s: f64) -> prometheus::Result<ProcessCollector> {
        let g = |n: &str, h: &str| IntGauge::new(n, h);
        let c = ProcessCollector {
            cpu: Counter::new(
                "medsfu_process_cpu_seconds_total",
                "CPU time the server used, user and system",
            )?,
            resident: g(
                "medsfu_process_resident_memory_bytes",
                "Resident memory of the server",
            )?,
            virtual_bytes: g(
                "medsfu_process_virtual_memory_bytes",
                "Virtual memory size of the server",
            )?,
            threads: g("medsfu_process_threads", "Threads of the server")?,
            open_fds: g(
                "medsfu_process_open_fds",
                "Open file descriptors (sockets, files) of the server",
            )?,
            max_fds: g(
                "medsfu_process_max_fds",
                "The server's limit of open file descriptors",
            )?,
            start: Gauge::new(
                "medsfu_process_start_time_seconds",
                "When the server started, seconds since 1970",
            )?,
            descs: Vec::new(),
        };
        c.start.set(started_s);
        let descs = c
            .parts()
            .iter()
            .flat_map(|p| p.desc().into_iter().cloned())
            .collect();
        Ok(ProcessCollector { descs, ..c })
    }

    fn parts(&self) -> [&dyn Collector; 7] {
        [
            &self.cpu,
            &self.resident,
            &self.virtual_bytes,
            &self.threads,
            &self.open_fds,
            &self.max_fds,
            &self.start,
        ]
    }

    /// Reads the figures now.
    fn refresh(&self) {
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        if let Some(s) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .as_deref()
            .and_then(parse_stat)
        {
            let hz = rustix::param::clock_ticks_per_second().max(1);
            let cpu = s.cpu_ticks as f64 / hz as f64;
            // A counter only grows: add what was used since the last scrape.
            let used = cpu - self.cpu.get();
            if used > 0.0 {
                self.cpu.inc_by(used);
            }
            self.threads.set(clamp(s.threads));
            self.virtual_bytes.set(clamp(s.virtual_bytes));
            let page = rustix::param::page_size() as u64;
            self.resident
                .set(clamp(s.resident_pages.saturating_mul(page)));
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            // Less the descriptor reading the directory itself.
            self.open_fds
                .set(clamp(dir.count() as u64).saturating_sub(1));
        }
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        if let Some(max) = limit.current {
            self.max_fds.set(clamp(max));
        }
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.refresh();
        self.parts().iter().flat_map(|p| p.collect()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stat_line_is_read_past_a_command_name_with_spaces_and_parentheses() {
        let line = "4242 (medsfu (x) y) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    150 50 0 0 20 0 9 0 123456 987654321 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                cpu_ticks: 200,
                threads: 9,
                virtual_bytes: 987_654_321,
                resident_pages: 2048,
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
    }

    #[test]
    fn a_scrape_reports_this_process() {
        let r = prometheus::Registry::new();
        r.register(Box::new(ProcessCollector::new(1.5e9).expect("collector")))
            .expect("register");
        // Some CPU time to see.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&r.gather())
            .expect("encode");
        let get = |n: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(n)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("{n} in {text}"))
        };
        assert!(get("medsfu_process_resident_memory_bytes") > 1e6);
        assert!(get("medsfu_process_threads") >= 1.0);
        assert!(
            get("medsfu_process_open_fds") >= 3.0,
            "stdin, stdout, stderr at least"
        );
        assert!(get("medsfu_process_max_fds") >= get("medsfu_process_open_fds"));
        assert!(get("medsfu_process_cpu_seconds_total") > 0.0);
        assert_eq!(get("medsfu_process_start_time_seconds"), 1.5e9);
    }
}
