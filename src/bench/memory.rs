//! Peak memory of a rank: the kernel's high-water mark of resident memory (`VmHWM` in
//! `/proc/self/status`), which counts every page the process ever had resident at once
//! (buffers, the library's backup and pools, the program itself), not what it asked for.
//!
//! ringbench reports the maximum over ranks in its footer and `--json`, next to the
//! largest buffer, so the memory a collective costs beyond the user's buffer is visible.

/// Peak resident memory of this process in bytes, or `None` where `/proc` does not say
/// (not Linux, or a kernel without `VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status").ok().as_deref().and_then(parse_vm_hwm)
}

/// The `VmHWM:` line of a `/proc/PID/status` text, in bytes (the kernel writes kB = KiB).
pub fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    let mut words = line.split_whitespace();
    let kib: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => kib.checked_mul(1024),
        _ => None,
    }
}

/// The footer line: the peak over ranks, and its ratio to the largest size measured
/// (`size_bytes`, the table's size column: an all_reduce's buffer; 0 prints no ratio).
pub fn footer_line(peak_bytes: Option<u64>, size_bytes: u64) -> String {
    let Some(peak) = peak_bytes else {
        return "# Peak RSS per rank    : unknown (no VmHWM in /proc/self/status)".into();
    };
    let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
    let ratio = if size_bytes > 0 {
        let size = if size_bytes >= 1 << 20 {
            format!("{:.0} MiB", mib(size_bytes))
        } else {
            format!("{:.0} KiB", size_bytes as f64 / 1024.0)
        };
        format!(" = {:.2}x the largest size ({size})", peak as f64 / size_bytes as f64)
    } else {
        String::new()
    };
    format!("# Peak RSS per rank    : {:.1} MiB (VmHWM, max over ranks){ratio}", mib(peak))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_hwm_is_read_in_bytes() {
        let status = "Name:\tringbench\nVmPeak:\t  900000 kB\nVmHWM:\t  262144 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(256 << 20));
        assert_eq!(parse_vm_hwm("VmRSS:\t 1000 kB\n"), None);
        assert_eq!(parse_vm_hwm("VmHWM:\t 12 MB\n"), None);
        assert_eq!(parse_vm_hwm("VmHWM:\t x kB\n"), None);
    }

    #[test]
    fn this_process_has_a_peak() {
        let peak = peak_rss_bytes().expect("Linux /proc/self/status has VmHWM");
        assert!(peak > 0);
    }

    #[test]
    fn footer_gives_the_ratio_to_the_buffer() {
        assert_eq!(
            footer_line(Some(563 << 20), 256 << 20),
            "# Peak RSS per rank    : 563.0 MiB (VmHWM, max over ranks) = 2.20x the largest size (256 MiB)"
        );
        assert_eq!(footer_line(Some(3 << 19), 0), "# Peak RSS per rank    : 1.5 MiB (VmHWM, max over ranks)");
        // A small largest size is named in KiB, not rounded to "0 MiB".
        assert_eq!(
            footer_line(Some(16 << 20), 64 << 10),
            "# Peak RSS per rank    : 16.0 MiB (VmHWM, max over ranks) = 256.00x the largest size (64 KiB)"
        );
        assert!(footer_line(None, 1).contains("unknown"));
    }
}
