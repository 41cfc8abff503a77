//! The host's memory as Linux reports it in `/proc/meminfo`: what the OS sees in total and
//! what it can still give. Shared by the memory budget and the GPU backends that place
//! weights in system memory (APUs).

use std::path::Path;

/// RAM totals in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostMemory {
    /// `MemTotal`: the RAM the OS sees (a BIOS carve-out for an iGPU is not in it).
    pub total: u64,
    /// `MemAvailable`: what can be allocated without swapping.
    pub available: u64,
}

/// A `key:` line of a meminfo text, in bytes.
pub fn meminfo_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kb.checked_mul(1024)
}

/// Totals from a meminfo text.
pub fn parse(text: &str) -> Option<HostMemory> {
    Some(HostMemory {
        total: meminfo_field(text, "MemTotal:")?,
        available: meminfo_field(text, "MemAvailable:")?,
    })
}

/// This host's totals (`root` is `/` except in tests).
pub fn read(root: &Path) -> Option<HostMemory> {
    parse(&std::fs::read_to_string(root.join("proc/meminfo")).ok()?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn fields() {
        let s = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n";
        let m = super::parse(s).unwrap();
        assert_eq!(m.total, 24_000_000 * 1024);
        assert_eq!(m.available, 20_000_000 * 1024);
        assert_eq!(super::meminfo_field(s, "Nope:"), None);
        assert_eq!(super::parse("MemTotal: 1 kB\n"), None);
    }
}
