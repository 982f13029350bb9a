//! What the machine and this process report about memory (Linux `/proc`), and its units in
//! messages.

use std::sync::Arc;

/// Bytes as GiB, for messages.
pub fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// The high-water mark of this process's anonymous resident memory (`RssAnon`: what the job
/// allocated, without the file pages of the memory-mapped checkpoint), sampled every 20 ms on a
/// thread of its own.
pub struct AnonPeak {
    peak: Arc<std::sync::atomic::AtomicU64>,
}

impl AnonPeak {
    pub fn start() -> Self {
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let p = peak.clone();
        std::thread::spawn(move || loop {
            if let Some(now) = rss_anon() {
                p.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
            }
            if Arc::strong_count(&p) == 1 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        });
        Self { peak }
    }

    /// The highest sample so far, including now.
    pub fn peak(&self) -> u64 {
        let now = rss_anon().unwrap_or(0);
        self.peak
            .fetch_max(now, std::sync::atomic::Ordering::Relaxed)
            .max(now)
    }
}

/// This process's `RssAnon` now, in bytes (Linux).
pub fn rss_anon() -> Option<u64> {
    rss_anon_of("self")
}

/// `RssAnon` of process `pid` (a number or `self`) now, in bytes (Linux).
pub fn rss_anon_of(pid: &str) -> Option<u64> {
    proc_status_bytes(pid, "RssAnon")
}

/// A memory field (`VmHWM`, `RssAnon`, …) of `/proc/PID/status` in bytes (Linux).
pub fn proc_status_bytes(pid: &str, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s
        .lines()
        .find(|l| l.strip_prefix(key).is_some_and(|r| r.starts_with(':')))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Peak resident memory of this process so far (Linux `VmHWM`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    peak_rss_of("self")
}

/// Peak resident memory (`VmHWM`) of process `pid` (a number or `self`); Linux only.
pub fn peak_rss_of(pid: &str) -> Option<u64> {
    proc_status_bytes(pid, "VmHWM")
}

/// Memory the machine can still give now (Linux `MemAvailable`), in bytes.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
