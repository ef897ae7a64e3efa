//! What the operating system tells about this process's resources.

/// Peak resident memory of this process in MB (`VmHWM` of `/proc/self/status`), or
/// `None` where the system does not tell it.
pub fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn peak_memory_covers_a_large_allocation() {
        if let Some(before) = super::peak_rss_mb() {
            let v = vec![1u8; 64 << 20];
            std::hint::black_box(&v);
            let after = super::peak_rss_mb().unwrap();
            assert!(after >= 64.0 && after >= before, "{before} -> {after}");
        }
    }
}
