//! What the benchmarks read about a process from /proc: CPU time and memory.
#![allow(dead_code)]

/// utime + stime of `pid` (or `self`), in clock ticks.
pub fn cpu_ticks(pid: Option<u32>) -> u64 {
    let path = pid
        .map(|p| format!("/proc/{p}/stat"))
        .unwrap_or_else(|| "/proc/self/stat".into());
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the ")" that ends the command name: utime is field 14, stime 15 (1-based).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

/// Clock ticks per second.
pub fn hz() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// CPU of `pid` between two `cpu_ticks` readings `secs` apart, in % of one core.
pub fn cpu_percent(ticks: u64, secs: f64) -> f64 {
    ticks as f64 / hz() / secs * 100.0
}

/// A `/proc/<pid>/status` value in kB (`VmRSS:`, `VmHWM:`); `None` for `self`.
pub fn status_kb(pid: Option<u32>, key: &str) -> u64 {
    let path = pid
        .map(|p| format!("/proc/{p}/status"))
        .unwrap_or_else(|| "/proc/self/status".into());
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
