//! The ROCm backend: AMD GPUs through the HIP runtime, loaded at run time.
//!
//! Nothing links ROCm: [`hip`] opens `libamdhip64` when a ROCm device is asked for, and
//! [`hiprtc`] compiles the shared kernel sources of `kernels/cuda` (the portability header
//! has a HIP branch) for the GPU's gfx target, kept in the code-object cache like the CUDA
//! cubins. [`arch`] works out the target from the kernel driver and
//! `HSA_OVERRIDE_GFX_VERSION`; [`sysfs`] reads amdgpu's VRAM and GTT counters; [`memory`]
//! decides where an APU's weights go and what its BIOS carve-out costs. The backend itself
//! is [`engine_gpu::GpuBackend`] over [`driver::RocmDriver`].
//!
//! **Status:** the kernels compile for gfx1103, gfx1100, gfx1151 and gfx90a in CI and the
//! hiprtc path runs without a GPU; no kernel has run on AMD hardware.

#![warn(missing_docs)]

pub mod arch;
pub mod driver;
pub mod hip;
pub mod hiprtc;
pub mod memory;
pub mod sysfs;

use std::ffi::c_char;
use std::path::Path;
use std::sync::Arc;

use engine_gpu::cache::{CacheKey, CodeCache};
use engine_gpu::GpuBackend;

use arch::{ArchInfo, Gfx};
use hip::Hip;
use memory::{Choice, MemoryFacts};

/// An AMD GPU as the runtime and the kernel driver report it.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// HIP ordinal.
    pub ordinal: usize,
    /// Marketing name.
    pub name: String,
    /// Hardware target and override.
    pub arch: ArchInfo,
    /// Compute units.
    pub compute_units: Option<u32>,
    /// Wavefront size the runtime reports.
    pub wave_size: Option<u32>,
    /// Memory facts for placement.
    pub memory: MemoryFacts,
}

/// Why [`open`] failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpenError {
    /// The model does not fit the GPU's memory (checked before anything is allocated).
    Memory(String),
    /// ROCm, the device, its target or the kernels are not usable.
    Device(String),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Memory(s) | OpenError::Device(s) => f.write_str(s),
        }
    }
}

impl From<String> for OpenError {
    fn from(s: String) -> OpenError {
        OpenError::Device(s)
    }
}

/// Why ROCm cannot be used, in words for the user.
pub fn unavailable_reason() -> Option<String> {
    let hip = match Hip::get() {
        Ok(h) => h,
        Err(e) => return Some(e),
    };
    // SAFETY: plain call; repeated calls are allowed.
    let rc = unsafe { (hip.init)(0) };
    if rc != 0 {
        return Some(format!(
            "ROCm is not available: the HIP runtime ({}) failed to start: {}. Is the amdgpu \
             driver loaded, and may this user open /dev/kfd (render and video groups)?",
            hip.path,
            hip.describe(rc)
        ));
    }
    let mut n = 0;
    // SAFETY: out-parameter.
    let rc = unsafe { (hip.device_count)(&mut n) };
    if rc != 0 || n <= 0 {
        return Some("ROCm is not available: the HIP runtime found no AMD GPU".into());
    }
    None
}

/// The kernel-driver GPU that HIP ordinal `ordinal` is, given a `*_VISIBLE_DEVICES` list
/// (numeric; UUIDs are not resolved): the list's entry, else the ordinal itself.
pub fn sysfs_index(ordinal: usize, visible: Option<&str>) -> Option<usize> {
    match visible.map(str::trim).filter(|v| !v.is_empty()) {
        None => Some(ordinal),
        Some(list) => list.split(',').nth(ordinal)?.trim().parse().ok(),
    }
}

fn visible_devices() -> Option<String> {
    [
        "HIP_VISIBLE_DEVICES",
        "ROCR_VISIBLE_DEVICES",
        "CUDA_VISIBLE_DEVICES",
    ]
    .iter()
    .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
}

fn override_env() -> Option<String> {
    std::env::var("HSA_OVERRIDE_GFX_VERSION").ok()
}

/// The AMD GPUs, or why there are none.
pub fn probe() -> Result<Vec<DeviceInfo>, String> {
    if let Some(why) = unavailable_reason() {
        return Err(why);
    }
    let hip = Hip::get()?;
    let mut n = 0;
    // SAFETY: out-parameter.
    hip.check(unsafe { (hip.device_count)(&mut n) }, "device count")?;
    let drm = sysfs::scan(Path::new("/"));
    let host = engine_core::hostmem::read(Path::new("/"));
    let visible = visible_devices();
    let mut out = Vec::new();
    for i in 0..n.max(0) {
        let mut name = [0 as c_char; 256];
        let attr = |a| {
            let mut v = 0;
            // SAFETY: out-parameter for a valid device and attribute.
            (unsafe { (hip.device_attribute)(&mut v, a, i) } == 0).then_some(v)
        };
        // SAFETY: a buffer of the given length.
        unsafe { (hip.device_name)(name.as_mut_ptr(), name.len() as i32, i) };
        // SAFETY: the runtime NUL-terminates within the buffer.
        let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: selects an enumerated device, then out-parameters.
        let mem_ok =
            unsafe { (hip.set_device)(i) == 0 && (hip.mem_get_info)(&mut free, &mut total) == 0 };
        let gpu = sysfs_index(i as usize, visible.as_deref()).and_then(|k| drm.get(k));
        let integrated = attr(hip::ATTR_INTEGRATED)
            .map(|v| v != 0)
            .unwrap_or_else(|| gpu.and_then(|g| g.gfx).is_some_and(|g| g.is_known_apu()));
        out.push(DeviceInfo {
            ordinal: i as usize,
            name,
            arch: ArchInfo::new(gpu.and_then(|g| g.gfx), override_env().as_deref()),
            compute_units: attr(hip::ATTR_MULTIPROCESSOR_COUNT)
                .map(|v| v as u32)
                .or(gpu.and_then(|g| g.compute_units)),
            wave_size: attr(hip::ATTR_WARP_SIZE).map(|v| v as u32),
            memory: MemoryFacts {
                integrated,
                sysfs: gpu.map(|g| g.memory).unwrap_or_default(),
                hip: mem_ok.then_some((free as u64, total as u64)),
                host,
            },
        });
    }
    Ok(out)
}

/// Compiles the kernel program for `target` (e.g. `gfx1103`) through hiprtc; no GPU
/// needed. What the hiprtc test runs for the CI targets.
pub fn compile(target: &str) -> Result<Vec<u8>, String> {
    let gfx = Gfx::parse(target).ok_or_else(|| format!("'{target}' is not a gfx target"))?;
    let src = engine_gpu::source::program()?;
    hiprtc::Hiprtc::load()?.compile(&src, gfx)
}

/// The code-object cache key: the expanded source, the target the runtime loads code for
/// (the override's when one is in effect), hiprtc's and the runtime's versions, and the
/// compiler options.
pub fn cache_key(
    src: &str,
    target: Gfx,
    rtc_version: Option<(i32, i32)>,
    runtime_version: i32,
) -> CacheKey {
    CacheKey {
        source_hash: engine_gpu::source::hash(src),
        target: target.to_string(),
        toolchain: format!(
            "hiprtc {rtc_version:?} / HIP runtime {runtime_version} / {}",
            hiprtc::options(target).join(" ")
        ),
    }
}

/// Opens device `ordinal` for a model needing `need` bytes (when known): checks the target,
/// places memory per `choice` (refusing up front when the model cannot fit), and loads the
/// kernels compiled for the target (or read from `cache`).
pub fn open(
    ordinal: usize,
    cache: &CodeCache,
    choice: Choice,
    need: Option<u64>,
) -> Result<GpuBackend, OpenError> {
    let devices = probe()?;
    let info = devices.get(ordinal).ok_or_else(|| {
        format!(
            "ROCm device {ordinal} does not exist ({} device(s) found)",
            devices.len()
        )
    })?;
    let target = info.arch.effective().ok_or_else(|| {
        format!(
            "cannot tell the gfx target of {} (no KFD topology in /sys/class/kfd); set \
             HSA_OVERRIDE_GFX_VERSION to the target's major.minor.stepping",
            info.name
        )
    })?;
    if let Some(why) = target.unsupported_reason() {
        return Err(why.into());
    }
    if let Some(w) = info.wave_size.filter(|&w| w != target.wave_size()) {
        return Err(format!(
            "{} runs wavefronts of {w} lanes but the kernels for {target} are built for {}",
            info.name,
            target.wave_size()
        )
        .into());
    }
    let placement = memory::place(&info.memory, need, choice).map_err(OpenError::Memory)?;
    let hip = Hip::get()?;
    let src = engine_gpu::source::program()?;
    let rtc = hiprtc::Hiprtc::load();
    let key = cache_key(
        &src,
        target,
        rtc.as_ref().map(|r| r.version()).ok(),
        hip.version(),
    );
    let (code, _cached) = cache.get_or_compile(&key, "hsaco", || {
        rtc.as_ref().map_err(|e| e.clone())?.compile(&src, target)
    })?;
    let shown = match (info.arch.hardware, info.arch.override_to) {
        (Some(hw), Some(o)) if hw != o => format!("{hw} as {o} via HSA_OVERRIDE_GFX_VERSION"),
        _ => target.to_string(),
    };
    let describe = format!(
        "ROCm {} ({}{}, {}: {} free; {})",
        info.name,
        shown,
        info.compute_units
            .map_or(String::new(), |c| format!(", {c} CUs")),
        placement.pool,
        memory::gib(placement.free),
        placement.why
    );
    let drv = driver::RocmDriver::new(
        hip,
        ordinal,
        &code,
        placement.pool,
        target.wave_size(),
        describe,
    )
    .map_err(|e| e.to_string())?;
    Ok(GpuBackend::new(Arc::new(drv)).map_err(|e| e.to_string())?)
}

/// What `engine doctor` prints about ROCm and AMD GPUs: the runtime and compiler found (or
/// not), each GPU's target and override, VRAM versus GTT, and on an APU what the BIOS
/// carve-out costs. Works without ROCm installed (from the kernel driver's files).
pub fn report() -> Vec<String> {
    let mut out = Vec::new();
    match Hip::get() {
        Ok(h) => out.push(format!("HIP runtime: {} (version {})", h.path, h.version())),
        Err(e) => out.push(e),
    }
    match hiprtc::Hiprtc::load() {
        Ok(r) => out.push(format!("hiprtc: {} (version {:?})", r.path(), r.version())),
        Err(e) => out.push(e),
    }
    let probed = probe();
    if let Err(why) = &probed {
        if Hip::get().is_ok() {
            out.push(why.clone());
        }
    }
    let host = engine_core::hostmem::read(Path::new("/"));
    let gpus = sysfs::scan(Path::new("/"));
    if gpus.is_empty() {
        out.push(
            "No AMD GPU in the kernel driver's files (/sys/class/kfd, /sys/class/drm).".into(),
        );
    }
    let env = override_env();
    for (k, g) in gpus.iter().enumerate() {
        let hip_dev = probed.as_ref().ok().and_then(|d| d.get(k));
        let arch = ArchInfo::new(g.gfx, env.as_deref());
        let integrated = hip_dev.map_or_else(
            || g.gfx.is_some_and(|x| x.is_known_apu()),
            |d| d.memory.integrated,
        );
        out.push(format!(
            "AMD GPU {k}{}: {}{}{}",
            hip_dev.map_or(String::new(), |d| format!(" ({})", d.name)),
            arch.describe(),
            g.compute_units
                .map_or(String::new(), |c| format!(", {c} CUs")),
            if integrated { ", integrated (APU)" } else { "" }
        ));
        let m = &g.memory;
        let pair = |t: Option<u64>, u: Option<u64>| match (t, u) {
            (Some(t), Some(u)) => format!("{} total, {} used", memory::gib(t), memory::gib(u)),
            (Some(t), None) => format!("{} total", memory::gib(t)),
            _ => "unknown".to_string(),
        };
        out.push(format!(
            "  VRAM{}: {}",
            if integrated { " (BIOS carve-out)" } else { "" },
            pair(m.vram_total, m.vram_used)
        ));
        out.push(format!(
            "  GTT (system RAM the GPU may map): {}",
            pair(m.gtt_total, m.gtt_used)
        ));
        if let Some((free, total)) = hip_dev.and_then(|d| d.memory.hip) {
            out.push(format!(
                "  hipMemGetInfo: {} free of {}",
                memory::gib(free),
                memory::gib(total)
            ));
        }
        if let Some(h) = host {
            out.push(format!("  RAM the OS sees: {}", memory::gib(h.total)));
        }
        let facts = hip_dev.map_or(
            MemoryFacts {
                integrated,
                sysfs: g.memory,
                hip: None,
                host,
            },
            |d| d.memory,
        );
        if let Some(a) = memory::uma_advice(&facts) {
            out.extend(a.lines().into_iter().map(|l| format!("  {l}")));
        }
        if let Ok(p) = memory::place(&facts, None, Choice::Auto) {
            out.push(format!(
                "  Placement (--gpu-memory auto): {}, {} free ({})",
                p.pool,
                memory::gib(p.free),
                p.why
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_objects_are_cached_per_target_and_toolchain() {
        let dir = std::env::temp_dir().join(format!("engine-rocm-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cache = CodeCache::new(&dir);
        let src = engine_gpu::source::program().unwrap();
        let hw = Gfx::parse("gfx1103").unwrap();
        let key = cache_key(&src, hw, Some((6, 4)), 60_443_483);
        let mut compiles = 0;
        for _ in 0..2 {
            let (code, _) = cache
                .get_or_compile::<()>(&key, "hsaco", || {
                    compiles += 1;
                    Ok(b"\x7fELF gfx1103 object".to_vec())
                })
                .unwrap();
            assert_eq!(code, b"\x7fELF gfx1103 object");
        }
        assert_eq!(compiles, 1, "the second open reads the cache");
        // an override presents the GPU as another target: another object
        let arch = ArchInfo::new(Some(hw), Some("11.0.0"));
        let over = cache_key(&src, arch.effective().unwrap(), Some((6, 4)), 60_443_483);
        assert_ne!(over.file_name("hsaco"), key.file_name("hsaco"));
        assert!(over.file_name("hsaco").starts_with("gfx1100-"));
        // a ROCm update (runtime or compiler) never loads the old object
        for other in [
            cache_key(&src, hw, Some((6, 4)), 70_000_000),
            cache_key(&src, hw, Some((7, 0)), 60_443_483),
            cache_key(&format!("{src}\n"), hw, Some((6, 4)), 60_443_483),
        ] {
            assert_ne!(other.file_name("hsaco"), key.file_name("hsaco"));
            assert!(cache.load(&other, "hsaco").is_none());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn visible_devices_map_ordinals() {
        assert_eq!(sysfs_index(0, None), Some(0));
        assert_eq!(sysfs_index(1, Some("")), Some(1));
        assert_eq!(sysfs_index(0, Some("2,0")), Some(2));
        assert_eq!(sysfs_index(1, Some("2, 0")), Some(0));
        assert_eq!(sysfs_index(2, Some("2,0")), None);
        assert_eq!(sysfs_index(0, Some("GPU-abcdef")), None);
    }

    #[test]
    fn without_rocm_the_reason_is_clear_and_nothing_panics() {
        match unavailable_reason() {
            Some(why) => assert!(why.starts_with("ROCm is not available"), "{why}"),
            None => eprintln!("an AMD GPU is usable here: the no-ROCm message was not checked"),
        }
        // the doctor report works either way
        assert!(!report().is_empty());
    }
}
