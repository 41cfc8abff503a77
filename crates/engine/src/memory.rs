//! Memory budgeting: what the host has available, and the check that refuses to start a
//! model and context that would not fit (instead of letting the node run out of memory).

use engine_models::MemoryEstimate;

use crate::error::{Error, Result};

/// Bytes the OS reports as available (`MemAvailable` in /proc/meminfo), if known.
pub fn available_memory() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo(&s, "MemAvailable:")
}

/// Bytes of RAM in total (`MemTotal`), if known.
pub fn total_memory() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo(&s, "MemTotal:")
}

fn parse_meminfo(s: &str, key: &str) -> Option<u64> {
    let line = s.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Formats a byte count as MiB/GiB for messages.
pub fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

/// Refuses an estimate larger than `budget` bytes, naming the parts.
pub fn check(est: &MemoryEstimate, budget: u64, what: &str) -> Result<()> {
    if est.total() > budget {
        return Err(Error::Memory(format!(
            "{what} needs {} (weights {} + KV cache {} + compute buffers {}), but only {} is available; use a smaller context (-c) or a smaller model",
            human(est.total()),
            human(est.weights),
            human(est.kv_cache),
            human(est.scratch),
            human(budget)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_parsing() {
        let s = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(parse_meminfo(s, "MemAvailable:"), Some(20_000_000 * 1024));
        assert_eq!(parse_meminfo(s, "MemTotal:"), Some(24_000_000 * 1024));
        assert_eq!(parse_meminfo(s, "Nope:"), None);
    }

    #[test]
    fn refusal_names_the_sizes() {
        let est = MemoryEstimate {
            weights: 3 << 30,
            kv_cache: 1 << 30,
            scratch: 1 << 20,
        };
        let e = check(&est, 2 << 30, "model x").unwrap_err().to_string();
        assert!(
            e.contains("4.00 GiB") && e.contains("2.00 GiB") && e.contains("weights 3.00 GiB"),
            "{e}"
        );
        assert!(check(&est, 8 << 30, "model x").is_ok());
    }
}
