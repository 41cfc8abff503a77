//! AMD GPU architecture names: the gfx target from the kernel driver's topology
//! (`gfx_target_version`, e.g. 110003), the override `HSA_OVERRIDE_GFX_VERSION` (e.g.
//! `11.0.0`) that makes the runtime present the GPU as another target, the target the
//! kernels must be compiled for, and its wavefront size.

use std::fmt;

/// A gfx target: major, minor, stepping (`gfx1103` = 11, 0, 3; `gfx90a` = 9, 0, 10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Gfx {
    /// Major version (9 = GCN5/CDNA, 10 = RDNA1/2, 11 = RDNA3, 12 = RDNA4).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Stepping.
    pub stepping: u32,
}

/// The targets CI compiles every kernel for (the 780M, RDNA3 desktop, Strix Halo) and a
/// wave64 CDNA target, so both wavefront sizes are built.
pub const CI_TARGETS: &[&str] = &["gfx1103", "gfx1100", "gfx1151", "gfx90a"];

impl Gfx {
    /// From the KFD topology's `gfx_target_version` (major*10000 + minor*100 + stepping).
    pub fn from_target_version(v: u32) -> Option<Gfx> {
        (v >= 10000).then_some(Gfx {
            major: v / 10000,
            minor: (v / 100) % 100,
            stepping: v % 100,
        })
    }

    /// From `HSA_OVERRIDE_GFX_VERSION`'s `major.minor.stepping` (decimal numbers).
    pub fn from_override(s: &str) -> Option<Gfx> {
        let mut it = s.trim().split('.').map(|p| p.parse::<u32>().ok());
        let (major, minor, stepping) = (it.next()??, it.next()??, it.next()??);
        if it.next().is_some() || major == 0 || minor > 15 || stepping > 15 {
            return None;
        }
        Some(Gfx {
            major,
            minor,
            stepping,
        })
    }

    /// From a name such as `gfx1103` or `gfx90a:sramecc+:xnack-` (features are dropped).
    pub fn parse(name: &str) -> Option<Gfx> {
        let digits = name.split(':').next()?.strip_prefix("gfx")?;
        if digits.len() < 3 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        let (major, rest) = digits.split_at(digits.len() - 2);
        let mut rest = rest.chars().map(|c| c.to_digit(16));
        Some(Gfx {
            major: major.parse().ok()?,
            minor: rest.next()??,
            stepping: rest.next()??,
        })
    }

    /// Threads per wavefront the kernels are built for: GCN and CDNA (gfx9) run wave64
    /// only; RDNA (gfx10 and newer) runs the wave32 kernels HIP compiles by default.
    pub fn wave_size(&self) -> u32 {
        if self.major <= 9 {
            64
        } else {
            32
        }
    }

    /// Why the kernels cannot run on this target, if they cannot: they need gfx9 (Vega) or
    /// newer (packed f16 conversions and the cross-lane operations the reductions use).
    pub fn unsupported_reason(&self) -> Option<String> {
        (self.major < 9).then(|| {
            format!("{self} is older than gfx9 (Vega); the ROCm kernels need gfx9 or newer")
        })
    }

    /// Whether this target is an APU's iGPU (sharing DRAM with the CPU), from the list of
    /// AMD APU targets: a fallback for when the HIP runtime cannot be asked.
    pub fn is_known_apu(&self) -> bool {
        const APUS: &[(u32, u32, u32)] = &[
            (9, 0, 2),  // Raven Ridge
            (9, 0, 9),  // Raven 2, Picasso
            (9, 0, 12), // Renoir, Cezanne, Lucienne (gfx90c)
            (10, 3, 3), // Van Gogh
            (10, 3, 5), // Rembrandt (680M)
            (10, 3, 6), // Raphael, Granite Ridge
            (11, 0, 3), // Phoenix, Hawk Point (780M, 760M)
            (11, 5, 0), // Strix Point (890M)
            (11, 5, 1), // Strix Halo (8060S)
            (11, 5, 2), // Krackan Point
        ];
        APUS.contains(&(self.major, self.minor, self.stepping))
    }

    /// RDNA3 and RDNA3.5 (gfx11xx): int8 dot4 and WMMA, no MFMA.
    pub fn is_rdna3(&self) -> bool {
        self.major == 11
    }
}

impl fmt::Display for Gfx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gfx{}{:x}{:x}", self.major, self.minor, self.stepping)
    }
}

/// The hardware's target, the override in effect, and what code must be compiled for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchInfo {
    /// What the hardware is (from the kernel driver), when known.
    pub hardware: Option<Gfx>,
    /// `HSA_OVERRIDE_GFX_VERSION` as set, parsed.
    pub override_to: Option<Gfx>,
    /// The raw override value when it is set but not understood.
    pub override_invalid: Option<String>,
}

impl ArchInfo {
    /// Combines the driver's target with the environment's override value.
    pub fn new(hardware: Option<Gfx>, override_env: Option<&str>) -> ArchInfo {
        let raw = override_env.map(str::trim).filter(|s| !s.is_empty());
        let override_to = raw.and_then(Gfx::from_override);
        ArchInfo {
            hardware,
            override_to,
            override_invalid: raw.filter(|_| override_to.is_none()).map(str::to_string),
        }
    }

    /// The target the runtime loads code for: the override when set (the runtime then
    /// presents the GPU as that target), else the hardware's.
    pub fn effective(&self) -> Option<Gfx> {
        self.override_to.or(self.hardware)
    }

    /// One line for users, e.g. `gfx1103` or `gfx1103 presented as gfx1100
    /// (HSA_OVERRIDE_GFX_VERSION=11.0.0)`.
    pub fn describe(&self) -> String {
        let hw = self
            .hardware
            .map_or_else(|| "unknown gfx target".to_string(), |g| g.to_string());
        match (&self.override_to, &self.override_invalid) {
            (Some(o), _) if Some(*o) == self.hardware => {
                format!("{hw} (HSA_OVERRIDE_GFX_VERSION names the same target)")
            }
            (Some(o), _) => format!(
                "{hw} presented as {o} (HSA_OVERRIDE_GFX_VERSION={}.{}.{} in effect; the \
                 engine compiles its kernels for {o}, and {hw} would need no override)",
                o.major, o.minor, o.stepping
            ),
            (None, Some(raw)) => format!(
                "{hw} (HSA_OVERRIDE_GFX_VERSION='{raw}' is not major.minor.stepping and is \
                 ignored by the engine)"
            ),
            (None, None) => format!("{hw} (no HSA_OVERRIDE_GFX_VERSION)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (v, name) in [
            (110003, "gfx1103"),
            (110000, "gfx1100"),
            (110501, "gfx1151"),
            (90010, "gfx90a"),
            (90402, "gfx942"),
            (100300, "gfx1030"),
            (120001, "gfx1201"),
        ] {
            let g = Gfx::from_target_version(v).unwrap();
            assert_eq!(g.to_string(), name);
            assert_eq!(Gfx::parse(name), Some(g));
        }
        assert_eq!(
            Gfx::parse("gfx90a:sramecc+:xnack-"),
            Gfx::from_target_version(90010)
        );
        for bad in ["", "gfx", "gfx1", "sm_86", "gfx11z3"] {
            assert_eq!(Gfx::parse(bad), None, "{bad}");
        }
        assert_eq!(Gfx::from_target_version(0), None);
    }

    #[test]
    fn wave_sizes_and_support() {
        let g = |s| Gfx::parse(s).unwrap();
        assert_eq!(g("gfx1103").wave_size(), 32);
        assert_eq!(g("gfx1151").wave_size(), 32);
        assert_eq!(g("gfx90a").wave_size(), 64);
        assert_eq!(g("gfx906").wave_size(), 64);
        assert!(g("gfx1103").is_rdna3() && !g("gfx1030").is_rdna3());
        assert!(g("gfx803").unsupported_reason().is_some());
        assert!(g("gfx1103").is_known_apu() && g("gfx90c").is_known_apu());
        assert!(!g("gfx1100").is_known_apu() && !g("gfx90a").is_known_apu());
        assert!(g("gfx900").unsupported_reason().is_none());
    }

    #[test]
    fn override_detection() {
        let hw = Gfx::parse("gfx1103");
        // the 780M as shipped: no override, compiled for itself
        let a = ArchInfo::new(hw, None);
        assert_eq!(a.effective(), hw);
        assert!(a.describe().contains("no HSA_OVERRIDE_GFX_VERSION"));
        // Ollama's workaround: the runtime presents it as gfx1100, so code is built for that
        let a = ArchInfo::new(hw, Some("11.0.0"));
        assert_eq!(a.effective(), Gfx::parse("gfx1100"));
        let d = a.describe();
        assert!(d.contains("gfx1103 presented as gfx1100"), "{d}");
        assert!(d.contains("HSA_OVERRIDE_GFX_VERSION=11.0.0"), "{d}");
        // an override naming the hardware's own target
        let a = ArchInfo::new(hw, Some("11.0.3"));
        assert_eq!(a.effective(), hw);
        assert!(a.describe().contains("same target"));
        // empty is unset; garbage is reported, not used
        assert_eq!(ArchInfo::new(hw, Some(" ")), ArchInfo::new(hw, None));
        let a = ArchInfo::new(hw, Some("eleven"));
        assert_eq!(a.effective(), hw);
        assert!(a.describe().contains("'eleven'"));
        for bad in ["11.0", "11.0.0.0", "a.b.c", "0.0.0", "11.16.0"] {
            assert_eq!(Gfx::from_override(bad), None, "{bad}");
        }
        // no driver information, override only
        assert_eq!(
            ArchInfo::new(None, Some("11.0.0")).effective(),
            Gfx::parse("gfx1100")
        );
    }
}
