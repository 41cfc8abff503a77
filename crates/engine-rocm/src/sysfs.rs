//! What the Linux kernel driver says about AMD GPUs, readable without ROCm installed: the
//! KFD topology (`/sys/class/kfd/kfd/topology/nodes/*/properties`: gfx target, compute
//! units, render node) and the amdgpu memory counters (`mem_info_vram_total`,
//! `mem_info_gtt_total` and their `_used` twins under the render node's device). `root` is
//! `/` except in tests, which replay recorded trees.

use std::path::{Path, PathBuf};

use crate::arch::Gfx;

/// amdgpu's memory counters, in bytes (absent when the file is missing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AmdGpuMemory {
    /// `mem_info_vram_total`: dedicated VRAM, or on an APU the BIOS carve-out.
    pub vram_total: Option<u64>,
    /// `mem_info_vram_used`.
    pub vram_used: Option<u64>,
    /// `mem_info_gtt_total`: system RAM the GPU may map (by default half of what the OS
    /// sees; `amdgpu.gttsize` / `ttm.pages_limit` change it).
    pub gtt_total: Option<u64>,
    /// `mem_info_gtt_used`.
    pub gtt_used: Option<u64>,
}

/// One AMD GPU as the kernel driver sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmdGpu {
    /// KFD topology node number (absent when only the DRM device is known).
    pub kfd_node: Option<u32>,
    /// Hardware gfx target from `gfx_target_version`.
    pub gfx: Option<Gfx>,
    /// Compute units (`simd_count` / `simd_per_cu`).
    pub compute_units: Option<u32>,
    /// The DRM device directory the counters were read from.
    pub device_dir: PathBuf,
    /// Memory counters.
    pub memory: AmdGpuMemory,
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn memory_of(dev: &Path) -> AmdGpuMemory {
    AmdGpuMemory {
        vram_total: read_u64(&dev.join("mem_info_vram_total")),
        vram_used: read_u64(&dev.join("mem_info_vram_used")),
        gtt_total: read_u64(&dev.join("mem_info_gtt_total")),
        gtt_used: read_u64(&dev.join("mem_info_gtt_used")),
    }
}

/// `key value` lines of a KFD properties file.
fn property(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()? == key).then(|| it.next()?.parse().ok())?
    })
}

fn numbered_dirs(dir: &Path, prefix: &str) -> Vec<(u32, PathBuf)> {
    let mut out: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let n = name.strip_prefix(prefix)?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// The AMD GPUs under `root`, in KFD node order (the order the HIP runtime numbers them,
/// before `HIP_VISIBLE_DEVICES` / `ROCR_VISIBLE_DEVICES` filtering). Without a KFD
/// topology (amdgpu loaded without compute support), the DRM cards with amdgpu memory
/// counters, with an unknown target.
pub fn scan(root: &Path) -> Vec<AmdGpu> {
    let drm = root.join("sys/class/drm");
    let mut gpus = Vec::new();
    for (node, dir) in numbered_dirs(&root.join("sys/class/kfd/kfd/topology/nodes"), "") {
        let Ok(props) = std::fs::read_to_string(dir.join("properties")) else {
            continue;
        };
        let simds = property(&props, "simd_count").unwrap_or(0);
        if simds == 0 {
            continue; // a CPU node
        }
        let per_cu = property(&props, "simd_per_cu").filter(|&s| s > 0);
        let device_dir = property(&props, "drm_render_minor")
            .map(|m| drm.join(format!("renderD{m}")).join("device"))
            .unwrap_or_default();
        gpus.push(AmdGpu {
            kfd_node: Some(node),
            gfx: property(&props, "gfx_target_version")
                .and_then(|v| Gfx::from_target_version(v as u32)),
            compute_units: per_cu.map(|p| (simds / p) as u32),
            memory: memory_of(&device_dir),
            device_dir,
        });
    }
    if gpus.is_empty() {
        for (_, card) in numbered_dirs(&drm, "card") {
            let dev = card.join("device");
            let memory = memory_of(&dev);
            if memory.vram_total.is_some() || memory.gtt_total.is_some() {
                gpus.push(AmdGpu {
                    kfd_node: None,
                    gfx: None,
                    compute_units: None,
                    device_dir: dev,
                    memory,
                });
            }
        }
    }
    gpus
}

#[cfg(test)]
pub(crate) mod recorded {
    //! Writes sysfs trees for tests.
    use std::path::Path;

    pub fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// A Ryzen 7840HS-class box: CPU node 0, the 780M (gfx1103, 12 CUs) as node 1 on
    /// renderD128, with the given counters and RAM.
    pub fn apu(root: &Path, vram: u64, gtt: u64, mem_total: u64, mem_available: u64) {
        write(
            root,
            "sys/class/kfd/kfd/topology/nodes/0/properties",
            "cpu_cores_count 16\nsimd_count 0\ngfx_target_version 0\n",
        );
        write(
            root,
            "sys/class/kfd/kfd/topology/nodes/1/properties",
            "cpu_cores_count 0\nsimd_count 24\nsimd_per_cu 2\ngfx_target_version 110003\ndrm_render_minor 128\n",
        );
        let dev = "sys/class/drm/renderD128/device/";
        write(
            root,
            &format!("{dev}mem_info_vram_total"),
            &format!("{vram}\n"),
        );
        write(root, &format!("{dev}mem_info_vram_used"), "52428800\n");
        write(
            root,
            &format!("{dev}mem_info_gtt_total"),
            &format!("{gtt}\n"),
        );
        write(root, &format!("{dev}mem_info_gtt_used"), "16777216\n");
        write(
            root,
            "proc/meminfo",
            &format!(
                "MemTotal: {} kB\nMemFree: 1 kB\nMemAvailable: {} kB\n",
                mem_total / 1024,
                mem_available / 1024
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_recorded_apu() {
        let dir = std::env::temp_dir().join(format!("engine-rocm-sysfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        recorded::apu(&dir, 512 << 20, 15 << 30, 30 << 30, 28 << 30);
        let gpus = scan(&dir);
        assert_eq!(gpus.len(), 1);
        let g = &gpus[0];
        assert_eq!(g.kfd_node, Some(1));
        assert_eq!(g.gfx.unwrap().to_string(), "gfx1103");
        assert_eq!(g.compute_units, Some(12));
        assert_eq!(g.memory.vram_total, Some(512 << 20));
        assert_eq!(g.memory.gtt_total, Some(15 << 30));
        assert_eq!(g.memory.gtt_used, Some(16 << 20));
        let host = engine_core::hostmem::read(&dir).unwrap();
        assert_eq!(host.total, 30 << 30);
        // without KFD, the DRM card's counters are still found
        std::fs::remove_dir_all(dir.join("sys/class/kfd")).unwrap();
        recorded::write(
            &dir,
            "sys/class/drm/card0/device/mem_info_vram_total",
            "1024\n",
        );
        recorded::write(&dir, "sys/class/drm/card0-DP-1/status", "connected\n");
        let gpus = scan(&dir);
        assert_eq!(gpus.len(), 1);
        assert_eq!(gpus[0].gfx, None);
        assert_eq!(gpus[0].memory.vram_total, Some(1024));
        // nothing at all
        assert!(scan(&dir.join("nowhere")).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
