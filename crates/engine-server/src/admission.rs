//! Admission control: a bounded number of generation and embedding requests may be in the
//! server at once (running plus waiting for a slot); beyond that a request is refused with
//! 503 and `Retry-After`, and after shutdown begins every new request is refused.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Why a request was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Running and waiting requests are at the limit.
    QueueFull,
    /// The server is shutting down.
    ShuttingDown,
}

/// Counts requests in the server.
pub struct Admission {
    inflight: AtomicUsize,
    limit: usize,
    closed: AtomicBool,
}

/// Held by an admitted request; dropping it frees its place (and whatever it holds, such as
/// the mark that keeps its model busy and loaded).
pub struct Permit {
    adm: Arc<Admission>,
    held: Option<Box<dyn Send + Sync>>,
}

impl Permit {
    /// Keeps `guard` alive as long as this permit (the request's job).
    pub fn hold(&mut self, guard: impl Send + Sync + 'static) {
        self.held = Some(Box::new(guard));
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.adm.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    /// Admits at most `limit` requests at once.
    pub fn new(limit: usize) -> Arc<Admission> {
        Arc::new(Admission {
            inflight: AtomicUsize::new(0),
            limit: limit.max(1),
            closed: AtomicBool::new(false),
        })
    }

    /// Takes a place, or says why not.
    pub fn try_acquire(self: &Arc<Self>) -> Result<Permit, Refusal> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Refusal::ShuttingDown);
        }
        let mut cur = self.inflight.load(Ordering::Acquire);
        loop {
            if cur >= self.limit {
                return Err(Refusal::QueueFull);
            }
            match self.inflight.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Ok(Permit {
                        adm: self.clone(),
                        held: None,
                    })
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Refuses every later request.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Requests admitted and not yet finished.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_and_release() {
        let a = Admission::new(2);
        let p1 = a.try_acquire().unwrap();
        let _p2 = a.try_acquire().unwrap();
        assert_eq!(a.try_acquire().err(), Some(Refusal::QueueFull));
        drop(p1);
        let _p3 = a.try_acquire().unwrap();
        assert_eq!(a.inflight(), 2);
        a.close();
        assert_eq!(a.try_acquire().err(), Some(Refusal::ShuttingDown));
    }

    #[test]
    fn concurrent_acquires_never_exceed_the_limit() {
        let a = Admission::new(5);
        let got = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..16 {
                s.spawn(|| {
                    if let Ok(p) = a.try_acquire() {
                        got.lock().unwrap().push(p);
                    }
                });
            }
        });
        assert_eq!(got.lock().unwrap().len(), 5);
    }
}
