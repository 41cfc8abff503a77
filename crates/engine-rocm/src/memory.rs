//! Where the weights and caches live, and what the BIOS costs an APU owner.
//!
//! A discrete GPU has one pool: its VRAM (`hipMalloc`). An APU such as the Radeon 780M has
//! two views of the same DRAM: the BIOS carve-out ("UMA frame buffer", reported as VRAM)
//! and GTT, the system RAM the GPU may map, which the kernel caps at a fraction (by default
//! half) of the RAM the OS sees. Memory reserved for the carve-out is gone from the OS, so
//! a bigger carve-out *shrinks* GTT. [`place`] picks the pool that holds the model (a flag
//! can force either); [`uma_advice`] puts the BIOS setting's cost in numbers. Everything
//! here is a pure function of recorded facts, so the decisions are unit-tested.

use std::fmt;

use engine_core::hostmem::HostMemory;

use crate::sysfs::AmdGpuMemory;

/// The carve-out a BIOS set to AUTO (or its minimum) leaves on these boxes.
pub const MIN_CARVE_OUT: u64 = 512 << 20;

/// What the placement decision looks at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryFacts {
    /// The GPU shares DRAM with the CPU (`hipDeviceAttributeIntegrated`).
    pub integrated: bool,
    /// amdgpu's counters from sysfs.
    pub sysfs: AmdGpuMemory,
    /// `hipMemGetInfo`: (free, total) of what `hipMalloc` can give, when HIP is loaded.
    pub hip: Option<(u64, u64)>,
    /// The OS's RAM.
    pub host: Option<HostMemory>,
}

/// Where allocations go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    /// Device memory (`hipMalloc`): VRAM, or the carve-out on an APU.
    Device,
    /// System memory the GPU maps (`hipMallocManaged`, coarse-grained), counted in GTT.
    Host,
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Pool::Device => "device memory",
            Pool::Host => "system memory mapped by the GPU (GTT)",
        })
    }
}

/// The user's choice (`--gpu-memory auto|device|host`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Choice {
    /// Device memory on a discrete GPU; on an APU the pool that holds the model.
    #[default]
    Auto,
    /// Always device memory.
    Device,
    /// Always GPU-mapped system memory.
    Host,
}

impl std::str::FromStr for Choice {
    type Err = String;
    fn from_str(s: &str) -> Result<Choice, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Choice::Auto),
            "device" | "vram" => Ok(Choice::Device),
            "host" | "gtt" | "system" => Ok(Choice::Host),
            _ => Err(format!(
                "unknown GPU memory placement '{s}' (auto, device or host)"
            )),
        }
    }
}

/// Free and total bytes of one pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSize {
    /// Free now.
    pub free: u64,
    /// In all.
    pub total: u64,
}

impl MemoryFacts {
    /// Device memory: what HIP reports, else the VRAM counters.
    pub fn device_pool(&self) -> Option<PoolSize> {
        if let Some((free, total)) = self.hip {
            return Some(PoolSize { free, total });
        }
        let total = self.sysfs.vram_total?;
        Some(PoolSize {
            free: total.saturating_sub(self.sysfs.vram_used.unwrap_or(0)),
            total,
        })
    }

    /// GPU-mapped system memory: GTT's free part, no more than the OS can give.
    pub fn host_pool(&self) -> Option<PoolSize> {
        let total = self.sysfs.gtt_total?;
        let mut free = total.saturating_sub(self.sysfs.gtt_used.unwrap_or(0));
        if let Some(h) = self.host {
            free = free.min(h.available);
        }
        Some(PoolSize { free, total })
    }
}

/// The decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Where allocations go.
    pub pool: Pool,
    /// Free bytes there when decided.
    pub free: u64,
    /// Why, in words.
    pub why: String,
}

/// Formats bytes as GiB.
pub fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn fits(p: Option<PoolSize>, need: Option<u64>) -> bool {
    match (p, need) {
        (Some(p), Some(n)) => n <= p.free,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// Chooses the pool for a model needing `need` bytes (weights, KV cache and buffers; `None`
/// when unknown), or says why it cannot fit.
pub fn place(f: &MemoryFacts, need: Option<u64>, choice: Choice) -> Result<Placement, String> {
    let dev = f.device_pool();
    let host = f.host_pool();
    let free_of = |p: Option<PoolSize>| p.map_or(0, |p| p.free);
    let pick = |pool: Pool, why: String| {
        let free = free_of(if pool == Pool::Device { dev } else { host });
        Placement { pool, free, why }
    };
    let too_big = |what: String| {
        let mut msg = format!(
            "{what}: the model needs {}, device memory has {} free and GPU-mapped system \
             memory (GTT) {} free",
            gib(need.unwrap_or(0)),
            gib(free_of(dev)),
            gib(free_of(host)),
        );
        if let Some(a) = uma_advice(f).filter(|a| a.gain() > 0) {
            msg.push_str(&format!(
                ". {} Setting the BIOS UMA frame buffer to AUTO (or its minimum) would let \
                 the GPU use about {}.",
                a.now_line(),
                gib(a.gpu_usable_at_min)
            ));
        }
        msg.push_str(" Use a smaller context (-c), a smaller quantization, or --device cpu.");
        msg
    };
    match choice {
        Choice::Device => {
            if !fits(dev, need) {
                return Err(too_big(
                    "device memory is too small (--gpu-memory device)".into(),
                ));
            }
            Ok(pick(Pool::Device, "forced by --gpu-memory device".into()))
        }
        Choice::Host => {
            if host.is_none() {
                return Err("--gpu-memory host: the GTT size is unknown (no amdgpu \
                            mem_info_gtt_total in sysfs)"
                    .into());
            }
            if !fits(host, need) {
                return Err(too_big("GTT is too small (--gpu-memory host)".into()));
            }
            let why = if f.integrated {
                "forced by --gpu-memory host".to_string()
            } else {
                "forced by --gpu-memory host (a discrete GPU reads it over PCIe: slow)".to_string()
            };
            Ok(pick(Pool::Host, why))
        }
        Choice::Auto if !f.integrated => {
            if !fits(dev, need) {
                return Err(too_big("the GPU's memory is too small".into()));
            }
            Ok(pick(Pool::Device, "discrete GPU".into()))
        }
        Choice::Auto => {
            let (d, h) = (free_of(dev), free_of(host));
            match need {
                Some(_) if fits(dev, need) => Ok(pick(
                    Pool::Device,
                    format!("APU: the model fits the device pool ({} free)", gib(d)),
                )),
                Some(_) if fits(host, need) => Ok(pick(
                    Pool::Host,
                    format!(
                        "APU: the model does not fit device memory ({} free) but fits GTT ({} free)",
                        gib(d),
                        gib(h)
                    ),
                )),
                Some(_) => Err(too_big("the APU's GPU memory is too small".into())),
                None if h > d => Ok(pick(Pool::Host, "APU: GTT is the larger pool".into())),
                None => Ok(pick(Pool::Device, "APU: device memory is the larger pool".into())),
            }
        }
    }
}

/// What the BIOS carve-out costs, for an APU: now versus a minimal carve-out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UmaAdvice {
    /// The carve-out (VRAM total).
    pub carve_out: u64,
    /// RAM the OS sees now.
    pub os_ram: u64,
    /// GTT now.
    pub gtt: u64,
    /// GTT as a fraction of the OS's RAM (the kernel's cap; 0.5 by default).
    pub gtt_ratio: f64,
    /// Whether the runtime's device memory is the carve-out (else it reports GTT-backed
    /// memory, as newer kernels do for APUs).
    pub runtime_uses_carve_out: bool,
    /// The most the GPU can use now (the larger pool).
    pub gpu_usable_now: u64,
    /// RAM the OS would see with [`MIN_CARVE_OUT`].
    pub os_ram_at_min: u64,
    /// GTT it would have then.
    pub gtt_at_min: u64,
    /// The most the GPU could use then.
    pub gpu_usable_at_min: u64,
}

impl UmaAdvice {
    /// What a minimal carve-out would add for the GPU (negative: it would lose).
    pub fn gain(&self) -> i64 {
        self.gpu_usable_at_min as i64 - self.gpu_usable_now as i64
    }

    /// The present state in one sentence.
    pub fn now_line(&self) -> String {
        format!(
            "The BIOS carve-out is {}, so the OS sees {} and GTT is {} ({:.0}% of it); the GPU \
             can use {}.",
            gib(self.carve_out),
            gib(self.os_ram),
            gib(self.gtt),
            self.gtt_ratio * 100.0,
            gib(self.gpu_usable_now)
        )
    }

    /// The advice, in lines for `engine doctor`.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![self.now_line()];
        if self.carve_out <= MIN_CARVE_OUT {
            out.push(format!(
                "The carve-out is already minimal (BIOS UMA AUTO), the best setting for LLMs. To \
                 let the GPU map more than {:.0}% of RAM, raise the kernel's GTT limit \
                 (amdgpu.gttsize in MiB and ttm.pages_limit in 4 KiB pages on the kernel \
                 command line).",
                self.gtt_ratio * 100.0
            ));
            return out;
        }
        let cpu_gain = self.os_ram_at_min.saturating_sub(self.os_ram);
        let g = self.gain();
        if g > 0 {
            out.push(format!(
                "With the BIOS UMA frame buffer at AUTO ({}), the OS would see {} and GTT would \
                 be {}: the GPU could use {} ({:+.2} GiB, {:.1}x) and the CPU would get {} more \
                 RAM. Reserving VRAM in the BIOS shrinks GTT: set it to AUTO.",
                gib(MIN_CARVE_OUT),
                gib(self.os_ram_at_min),
                gib(self.gtt_at_min),
                gib(self.gpu_usable_at_min),
                g as f64 / (1u64 << 30) as f64,
                self.gpu_usable_at_min as f64 / self.gpu_usable_now.max(1) as f64,
                gib(cpu_gain)
            ));
        } else {
            out.push(format!(
                "With the BIOS UMA frame buffer at AUTO ({}), the GPU could use {} through GTT \
                 ({:+.2} GiB) but the CPU would get {} more RAM; this carve-out trades CPU \
                 memory for dedicated GPU memory.",
                gib(MIN_CARVE_OUT),
                gib(self.gpu_usable_at_min),
                g as f64 / (1u64 << 30) as f64,
                gib(cpu_gain)
            ));
        }
        out
    }
}

/// The carve-out's cost, when the facts describe an APU with known counters. GTT is
/// assumed to keep its present fraction of the OS's RAM (true of the kernel's default; a
/// fixed `amdgpu.gttsize` would not grow).
pub fn uma_advice(f: &MemoryFacts) -> Option<UmaAdvice> {
    if !f.integrated {
        return None;
    }
    let carve_out = f.sysfs.vram_total?;
    let gtt = f.sysfs.gtt_total?;
    let os_ram = f.host?.total;
    if os_ram == 0 {
        return None;
    }
    let gtt_ratio = (gtt as f64 / os_ram as f64).min(1.0);
    let device_total = f.device_pool().map_or(carve_out, |p| p.total);
    // Within 10% of the carve-out: hipMalloc draws from it.
    let runtime_uses_carve_out = device_total.abs_diff(carve_out) <= carve_out / 10;
    let gpu_usable_now = device_total.max(gtt);
    let os_ram_at_min = os_ram + carve_out.saturating_sub(MIN_CARVE_OUT);
    let gtt_at_min = (os_ram_at_min as f64 * gtt_ratio) as u64;
    let device_at_min = if runtime_uses_carve_out {
        MIN_CARVE_OUT.min(carve_out)
    } else {
        gtt_at_min
    };
    Some(UmaAdvice {
        carve_out,
        os_ram,
        gtt,
        gtt_ratio,
        runtime_uses_carve_out,
        gpu_usable_now,
        os_ram_at_min,
        gtt_at_min,
        gpu_usable_at_min: device_at_min.max(gtt_at_min),
    })
}

#[cfg(test)]
mod tests {
    //! Recorded cases: a Radeon 780M mini-PC with 32 GiB of DDR5. The counters are
    //! reconstructed from the users' report (AUTO: ~15 GB usable; 16 GB carve-out: ~8 GB),
    //! with the kernel reserving ~0.8 GiB of RAM and GTT at half of the OS's RAM; they are
    //! not captured from a device (none is reachable from CI).
    use super::*;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    fn facts(carve: u64, hip_total: Option<u64>) -> MemoryFacts {
        let os_ram = 32 * GIB - carve - 800 * MIB;
        let gtt = os_ram / 2;
        MemoryFacts {
            integrated: true,
            sysfs: AmdGpuMemory {
                vram_total: Some(carve),
                vram_used: Some(50 * MIB),
                gtt_total: Some(gtt),
                gtt_used: Some(16 * MIB),
            },
            hip: hip_total.map(|t| (t - 60 * MIB, t)),
            host: Some(HostMemory {
                total: os_ram,
                available: os_ram - 2 * GIB,
            }),
        }
    }

    /// BIOS UMA at AUTO (512 MiB carve-out); the runtime's device memory is the carve-out.
    fn auto() -> MemoryFacts {
        facts(512 * MIB, Some(512 * MIB))
    }

    /// 16 GiB carve-out; the runtime reports GTT-backed memory for the APU (the story's
    /// stack: what it could use was half of the OS's RAM).
    fn carve_16g() -> MemoryFacts {
        let f = facts(16 * GIB, None);
        let gtt = f.sysfs.gtt_total.unwrap();
        MemoryFacts {
            hip: Some((gtt - 60 * MIB, gtt)),
            ..f
        }
    }

    const GEMMA4_E4B_Q8: u64 = 9 * GIB; // weights + KV + buffers

    #[test]
    fn auto_places_a_9gib_model_in_gtt() {
        let f = auto();
        let p = place(&f, Some(GEMMA4_E4B_Q8), Choice::Auto).unwrap();
        assert_eq!(p.pool, Pool::Host, "{p:?}");
        assert!(p.free > 15 * GIB, "{}", gib(p.free));
        assert!(p.why.contains("fits GTT"), "{}", p.why);
        // a model small enough for the 512 MiB carve-out stays in device memory
        let p = place(&f, Some(300 * MIB), Choice::Auto).unwrap();
        assert_eq!(p.pool, Pool::Device);
        // forcing device memory refuses with numbers, not an OOM later
        let e = place(&f, Some(GEMMA4_E4B_Q8), Choice::Device).unwrap_err();
        assert!(
            e.contains("needs 9.00 GiB") && e.contains("device memory has"),
            "{e}"
        );
        assert_eq!(
            place(&f, Some(GEMMA4_E4B_Q8), Choice::Host).unwrap().pool,
            Pool::Host
        );
        // unknown need: the larger pool
        assert_eq!(place(&f, None, Choice::Auto).unwrap().pool, Pool::Host);
        // the advice: nothing to gain from the BIOS, point at the kernel's GTT cap
        let a = uma_advice(&f).unwrap();
        assert!(a.runtime_uses_carve_out);
        assert_eq!(a.gain(), 0);
        assert!((a.gtt_ratio - 0.5).abs() < 1e-6);
        let text = a.lines().join(" ");
        assert!(
            text.contains("already minimal") && text.contains("amdgpu.gttsize"),
            "{text}"
        );
    }

    #[test]
    fn a_16gib_carve_out_halves_what_the_gpu_can_use() {
        let f = carve_16g();
        // 8 GB usable, as the users found: the 9 GiB model is refused up front, with the fix
        let e = place(&f, Some(GEMMA4_E4B_Q8), Choice::Auto).unwrap_err();
        assert!(e.contains("BIOS UMA frame buffer to AUTO"), "{e}");
        assert!(e.contains("about 15.36 GiB"), "{e}");
        // a 6 GiB model fits; device memory is preferred when both fit
        let p = place(&f, Some(6 * GIB), Choice::Auto).unwrap();
        assert_eq!(p.pool, Pool::Device);
        let a = uma_advice(&f).unwrap();
        assert!(!a.runtime_uses_carve_out);
        assert!(
            a.gpu_usable_now < 8 * GIB && a.gpu_usable_now > 7 * GIB,
            "{a:?}"
        );
        assert!(a.gpu_usable_at_min > 15 * GIB, "{a:?}");
        let ratio = a.gpu_usable_at_min as f64 / a.gpu_usable_now as f64;
        assert!((1.9..2.1).contains(&ratio), "{ratio}");
        assert_eq!(a.os_ram_at_min - a.os_ram, 16 * GIB - MIN_CARVE_OUT);
        let text = a.lines().join(" ");
        assert!(
            text.contains("set it to AUTO") && text.contains("2.0x"),
            "{text}"
        );
    }

    #[test]
    fn a_carve_out_the_runtime_uses_is_a_trade_not_a_loss() {
        // 16 GiB carve-out on a stack whose hipMalloc draws from it: 16 GiB dedicated
        let f = facts(16 * GIB, Some(16 * GIB));
        let a = uma_advice(&f).unwrap();
        assert!(a.runtime_uses_carve_out);
        assert_eq!(a.gpu_usable_now, 16 * GIB);
        assert!(a.gain() < 0);
        assert!(a.lines().join(" ").contains("trades CPU memory"));
        assert_eq!(
            place(&f, Some(GEMMA4_E4B_Q8), Choice::Auto).unwrap().pool,
            Pool::Device
        );
    }

    #[test]
    fn discrete_gpus_use_device_memory() {
        let f = MemoryFacts {
            integrated: false,
            sysfs: AmdGpuMemory {
                vram_total: Some(24 * GIB),
                vram_used: Some(0),
                gtt_total: Some(31 * GIB),
                gtt_used: Some(0),
            },
            hip: Some((23 * GIB, 24 * GIB)),
            host: Some(HostMemory {
                total: 62 * GIB,
                available: 60 * GIB,
            }),
        };
        assert_eq!(uma_advice(&f), None);
        let p = place(&f, Some(20 * GIB), Choice::Auto).unwrap();
        assert_eq!(p.pool, Pool::Device);
        assert!(place(&f, Some(30 * GIB), Choice::Auto).is_err());
        let p = place(&f, Some(30 * GIB), Choice::Host).unwrap();
        assert!(p.why.contains("PCIe"));
        // GTT's free part is capped by what the OS can give
        let tight = MemoryFacts {
            host: Some(HostMemory {
                total: 62 * GIB,
                available: 4 * GIB,
            }),
            ..f
        };
        assert_eq!(tight.host_pool().unwrap().free, 4 * GIB);
    }

    #[test]
    fn choices_parse() {
        assert_eq!("auto".parse(), Ok(Choice::Auto));
        assert_eq!("Device".parse(), Ok(Choice::Device));
        assert_eq!("gtt".parse(), Ok(Choice::Host));
        assert!("ram".parse::<Choice>().is_err());
    }
}
