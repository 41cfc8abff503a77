//! A small thread pool tuned for many short parallel loops (one per operator).
//!
//! `run(n_tasks, f)` calls `f(task)` for every task index on the calling thread and the
//! workers, handing out indices through an atomic counter, and returns when all are done.
//! Workers spin briefly between jobs (a decode step issues hundreds of small jobs, and a
//! futex wake-up per job would cost more than the job) and then sleep on a condition
//! variable, so an idle engine uses no CPU.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps.
const SPIN: Duration = Duration::from_micros(200);

type Job = dyn Fn(usize) + Sync;

struct Shared {
    /// The current job; valid while `remaining_workers > 0` for the current epoch.
    job: UnsafeCell<Option<*const Job>>,
    n_tasks: AtomicUsize,
    next: AtomicUsize,
    epoch: AtomicUsize,
    /// Workers that have not yet finished the current epoch.
    busy: AtomicUsize,
    /// Workers asleep on `wake` (or about to be): `run` skips the wake-up system call when
    /// every worker is still spinning, as they are between the jobs of a decode step.
    sleepers: AtomicUsize,
    shutdown: AtomicBool,
    panicked: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    sleep_lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the thread inside `run` while no worker reads it (all
// workers have finished the previous epoch), and read by workers only during an epoch in
// which `run` keeps the pointee alive.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

/// A fixed set of worker threads plus the caller.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    n_threads: usize,
    /// Serialises `run` calls from different threads.
    run_lock: Mutex<()>,
}

impl ThreadPool {
    /// A pool that computes on `n_threads` threads in total (the caller included).
    pub fn new(n_threads: usize) -> ThreadPool {
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            job: UnsafeCell::new(None),
            n_tasks: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            epoch: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            panicked: Mutex::new(None),
            sleep_lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = (1..n_threads)
            .map(|i| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("engine-cpu-{i}"))
                    .spawn(move || worker(s))
                    .expect("spawn worker thread")
            })
            .collect();
        ThreadPool {
            shared,
            workers,
            n_threads,
            run_lock: Mutex::new(()),
        }
    }

    /// Threads that compute (workers plus the caller).
    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Runs `f(i)` for `i in 0..n_tasks` across the pool and returns when all are done.
    /// A panic in `f` is re-raised here after every thread has stopped using `f`.
    pub fn run(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if n_tasks == 0 {
            return;
        }
        if self.workers.is_empty() || n_tasks == 1 {
            for i in 0..n_tasks {
                f(i);
            }
            return;
        }
        let _guard = self.run_lock.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY: no worker is inside an epoch (busy == 0 at the end of the previous run),
        // so nobody reads `job` now. The pointer is cleared before this function returns.
        unsafe {
            let erased: *const Job =
                std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Job>(f);
            *s.job.get() = Some(erased);
        }
        s.n_tasks.store(n_tasks, Ordering::Relaxed);
        s.next.store(0, Ordering::Relaxed);
        s.busy.store(self.workers.len(), Ordering::Relaxed);
        // SeqCst on both sides: either a worker about to sleep sees the new epoch, or this
        // thread sees it counted as a sleeper (and then wakes it under the lock it holds
        // from its check until it waits).
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _l = s.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| drain(s, f)));
        while s.busy.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        // SAFETY: all workers are done with this epoch.
        unsafe {
            *s.job.get() = None;
        }
        if let Err(p) = mine {
            resume_unwind(p);
        }
        if let Some(p) = s.panicked.lock().unwrap_or_else(|e| e.into_inner()).take() {
            resume_unwind(p);
        }
    }
}

fn drain(s: &Shared, f: &(dyn Fn(usize) + Sync + '_)) {
    let n = s.n_tasks.load(Ordering::Relaxed);
    loop {
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            break;
        }
        f(i);
    }
}

fn worker(s: Arc<Shared>) {
    let mut seen = 0usize;
    loop {
        // Wait for a new epoch: spin, then sleep.
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if s.shutdown.load(Ordering::Acquire) {
                return;
            }
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                break;
            }
            spins = spins.wrapping_add(1);
            // Read the clock only now and then: it costs more than a spin.
            if !spins.is_multiple_of(256) || start.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            let guard = s.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            if s.epoch.load(Ordering::SeqCst) == seen && !s.shutdown.load(Ordering::Acquire) {
                let _g = s
                    .wake
                    .wait_timeout(guard, Duration::from_millis(100))
                    .unwrap_or_else(|e| e.into_inner());
            }
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
        }
        // SAFETY: `run` set `job` before bumping the epoch and keeps it alive until `busy`
        // drops to zero, which happens only after this read and the calls below.
        let job = unsafe { (*s.job.get()).expect("job set for a new epoch") };
        let f: &Job = unsafe { &*job };
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| drain(&s, f))) {
            *s.panicked.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
        }
        s.busy.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        {
            let _l = self
                .shared
                .sleep_lock
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A raw pointer that may cross threads; used for disjoint writes from parallel tasks.
#[derive(Clone, Copy)]
pub struct SendPtr<T>(pub *mut T);
// SAFETY: users guarantee that tasks write disjoint elements.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// A mutable slice `[start, start + len)` of the pointee array.
    ///
    /// # Safety
    /// The range must be in bounds and not accessed by any other task concurrently.
    #[inline(always)]
    pub unsafe fn slice(self, start: usize, len: usize) -> &'static mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(start), len)
    }

    /// The pointer to element `start`.
    ///
    /// # Safety
    /// `start` must be in bounds of the pointee array.
    #[inline(always)]
    pub unsafe fn at(self, start: usize) -> *mut T {
        self.0.add(start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_task_runs_once() {
        let pool = ThreadPool::new(3);
        for n in [0usize, 1, 2, 7, 1000] {
            let hits: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
            pool.run(n, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn many_short_jobs_and_idle_gaps() {
        let pool = ThreadPool::new(2);
        let total = AtomicU64::new(0);
        for round in 0..2000u64 {
            pool.run(4, &|i| {
                total.fetch_add(i as u64 + round, Ordering::Relaxed);
            });
            if round % 500 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let want: u64 = (0..2000u64).map(|r| 6 + 4 * r).sum();
        assert_eq!(total.load(Ordering::Relaxed), want);
    }

    #[test]
    fn panics_propagate_and_pool_survives() {
        let pool = ThreadPool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(8, &|i| {
                if i == 5 {
                    panic!("boom");
                }
            })
        }));
        assert!(r.is_err());
        let n = AtomicU64::new(0);
        pool.run(8, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 8);
    }
}
