//! [`ProfilingDriver`]: a [`Driver`] decorator that times every launch and copy, for
//! `ENGINE_GPU_PROFILE=1`. Each operation is bracketed by device synchronisations, so its
//! time is what it costs alone (launch latency included) and the run is slower than
//! normal; the time between operations, when the device waits for the host, is reported as
//! the host gap. Copies before the first kernel launch (loading the weights) are counted on a
//! line of their own and left out of the rest. The table goes to stderr when the backend is
//! dropped.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine_core::Result;

use crate::driver::{DevPtr, Driver, FnHandle};

/// Calls and time per operation name.
#[derive(Default)]
struct Stats {
    by_name: HashMap<String, (u64, Duration)>,
    /// Copies before the first launch, and their time.
    loading: (u64, Duration),
    first: Option<Instant>,
    last: Option<Instant>,
}

/// Times each operation of `inner` (see the module doc).
pub struct ProfilingDriver {
    inner: Arc<dyn Driver>,
    names: Mutex<HashMap<usize, String>>,
    stats: Mutex<Stats>,
}

impl ProfilingDriver {
    /// Wraps `inner` when `ENGINE_GPU_PROFILE` is set to anything but `0`.
    pub fn wrap_if_asked(inner: Arc<dyn Driver>) -> Arc<dyn Driver> {
        match std::env::var("ENGINE_GPU_PROFILE") {
            Ok(v) if v != "0" && !v.is_empty() => Arc::new(ProfilingDriver {
                inner,
                names: Mutex::new(HashMap::new()),
                stats: Mutex::new(Stats::default()),
            }),
            _ => inner,
        }
    }

    fn timed<T>(&self, name: &str, launch: bool, op: impl FnOnce() -> Result<T>) -> Result<T> {
        self.inner.synchronize()?;
        let t0 = Instant::now();
        let out = op()?;
        self.inner.synchronize()?;
        let t1 = Instant::now();
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        if s.first.is_none() && !launch {
            s.loading.0 += 1;
            s.loading.1 += t1 - t0;
            return Ok(out);
        }
        s.first.get_or_insert(t0);
        s.last = Some(t1);
        let e = s.by_name.entry(name.to_string()).or_default();
        e.0 += 1;
        e.1 += t1 - t0;
        Ok(out)
    }

    /// The table: operations by total time, then the host gap.
    pub fn report(&self) -> String {
        let s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let mut rows: Vec<_> = s.by_name.iter().collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.1 .1));
        let busy: Duration = rows.iter().map(|r| r.1 .1).sum();
        let wall = match (s.first, s.last) {
            (Some(a), Some(b)) => b - a,
            _ => Duration::ZERO,
        };
        let pct = |d: Duration| 100.0 * d.as_secs_f64() / wall.as_secs_f64().max(1e-9);
        let mut out = format!(
            "GPU profile ({}): {} copies before the first launch (loading) took {:.1} ms; \
             {:.1} ms from the first launch to the last operation\n\
             {:<24} {:>8} {:>10} {:>9} {:>6}\n",
            self.inner.name(),
            s.loading.0,
            s.loading.1.as_secs_f64() * 1e3,
            wall.as_secs_f64() * 1e3,
            "operation",
            "calls",
            "total ms",
            "us/call",
            "%"
        );
        for (name, (n, d)) in rows {
            out += &format!(
                "{name:<24} {n:>8} {:>10.2} {:>9.1} {:>6.1}\n",
                d.as_secs_f64() * 1e3,
                d.as_secs_f64() * 1e6 / *n as f64,
                pct(*d)
            );
        }
        let gap = wall.saturating_sub(busy);
        out += &format!(
            "{:<24} {:>8} {:>10.2} {:>9} {:>6.1}\n",
            "(host gap)",
            "",
            gap.as_secs_f64() * 1e3,
            "",
            pct(gap)
        );
        out
    }
}

impl Drop for ProfilingDriver {
    fn drop(&mut self) {
        eprint!("{}", self.report());
    }
}

impl Driver for ProfilingDriver {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn warp_size(&self) -> u32 {
        self.inner.warp_size()
    }
    fn function(&self, name: &str) -> Result<FnHandle> {
        let f = self.inner.function(name)?;
        self.names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(f.0, name.to_string());
        Ok(f)
    }
    fn alloc(&self, bytes: usize) -> Result<DevPtr> {
        self.inner.alloc(bytes)
    }
    unsafe fn free(&self, ptr: DevPtr) {
        // SAFETY: forwarded with the caller's guarantee.
        unsafe { self.inner.free(ptr) }
    }
    fn upload(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        self.timed("(upload)", false, || self.inner.upload(dst, src))
    }
    fn download(&self, src: DevPtr, dst: &mut [u8]) -> Result<()> {
        self.timed("(download)", false, || self.inner.download(src, dst))
    }
    fn copy(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<()> {
        self.timed("(copy)", false, || self.inner.copy(dst, src, bytes))
    }
    fn zero(&self, dst: DevPtr, bytes: usize) -> Result<()> {
        self.timed("(zero)", false, || self.inner.zero(dst, bytes))
    }
    unsafe fn launch(
        &self,
        f: FnHandle,
        grid: [u32; 3],
        block: [u32; 3],
        args: &mut [*mut c_void],
    ) -> Result<()> {
        let name = self
            .names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&f.0)
            .cloned()
            .unwrap_or_else(|| format!("kernel {:#x}", f.0));
        // SAFETY: forwarded with the caller's guarantee.
        self.timed(&name, true, || unsafe {
            self.inner.launch(f, grid, block, args)
        })
    }
    fn synchronize(&self) -> Result<()> {
        self.inner.synchronize()
    }
    fn memory(&self) -> Result<(u64, u64)> {
        self.inner.memory()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A driver that does nothing, for the profiler's bookkeeping.
    struct Null;

    impl Driver for Null {
        fn name(&self) -> &'static str {
            "null"
        }
        fn describe(&self) -> String {
            "null".into()
        }
        fn warp_size(&self) -> u32 {
            32
        }
        fn function(&self, name: &str) -> Result<FnHandle> {
            Ok(FnHandle(name.len()))
        }
        fn alloc(&self, _: usize) -> Result<DevPtr> {
            Ok(0)
        }
        unsafe fn free(&self, _: DevPtr) {}
        fn upload(&self, _: DevPtr, _: &[u8]) -> Result<()> {
            Ok(())
        }
        fn download(&self, _: DevPtr, _: &mut [u8]) -> Result<()> {
            Ok(())
        }
        fn copy(&self, _: DevPtr, _: DevPtr, _: usize) -> Result<()> {
            Ok(())
        }
        fn zero(&self, _: DevPtr, _: usize) -> Result<()> {
            Ok(())
        }
        unsafe fn launch(
            &self,
            _: FnHandle,
            _: [u32; 3],
            _: [u32; 3],
            _: &mut [*mut c_void],
        ) -> Result<()> {
            Ok(())
        }
        fn synchronize(&self) -> Result<()> {
            Ok(())
        }
        fn memory(&self) -> Result<(u64, u64)> {
            Ok((0, 0))
        }
    }

    #[test]
    fn copies_before_the_first_launch_count_as_loading() {
        let p = ProfilingDriver {
            inner: Arc::new(Null),
            names: Mutex::new(HashMap::new()),
            stats: Mutex::new(Stats::default()),
        };
        p.upload(0, &[0; 4]).unwrap();
        p.upload(0, &[0; 4]).unwrap();
        let f = p.function("rms_norm").unwrap();
        // SAFETY: the null driver touches nothing.
        unsafe { p.launch(f, [1; 3], [1; 3], &mut []).unwrap() };
        unsafe { p.launch(f, [1; 3], [1; 3], &mut []).unwrap() };
        p.upload(0, &[0; 4]).unwrap();
        let report = p.report();
        assert!(
            report.contains("2 copies before the first launch"),
            "{report}"
        );
        let line = |name: &str| {
            report
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no {name} line in\n{report}"))
                .split_whitespace()
                .nth(1)
                .map(str::to_string)
        };
        assert_eq!(line("rms_norm").as_deref(), Some("2"), "{report}");
        assert_eq!(line("(upload)").as_deref(), Some("1"), "{report}");
        assert!(report.contains("(host gap)"), "{report}");
    }
}
