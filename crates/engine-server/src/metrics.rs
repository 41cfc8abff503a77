//! Prometheus metrics: the counters, gauges and histograms the server keeps, and their text
//! exposition (`GET /metrics`). Names follow llama-server's and vLLM's style with an
//! `engine:` prefix; `docs/server.md` lists them.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A cumulative histogram with fixed bucket bounds (seconds).
pub struct Histogram {
    bounds: &'static [f64],
    inner: Mutex<HistInner>,
}

struct HistInner {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// An empty histogram with these upper bounds (ascending; `+Inf` is implied).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            inner: Mutex::new(HistInner {
                counts: vec![0; bounds.len()],
                sum: 0.0,
                count: 0,
            }),
        }
    }

    /// Records one observation.
    pub fn observe(&self, v: f64) {
        if !v.is_finite() {
            return;
        }
        let mut h = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            h.counts[i] += 1;
        }
        h.sum += v;
        h.count += 1;
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).count
    }

    /// Adds `other`'s observations (same bounds) to this one.
    pub fn absorb(&self, other: &Histogram) {
        if std::ptr::eq(self, other) || self.bounds != other.bounds {
            return;
        }
        let o = other.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (counts, sum, count) = (o.counts.clone(), o.sum, o.count);
        drop(o);
        let mut h = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for (a, b) in h.counts.iter_mut().zip(counts) {
            *a += b;
        }
        h.sum += sum;
        h.count += count;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let h = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&h.counts) {
            cum += c;
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum {}", h.sum);
        let _ = writeln!(out, "{name}_count {}", h.count);
    }
}

const TTFT: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
];
const TPOT: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];
const LOAD: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0,
];
const LATENCY: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 240.0, 480.0,
];

/// Why a generation ended, as counted in `engine:request_success_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// End of generation or a stop string.
    Stop,
    /// `max_tokens` or a full context.
    Length,
    /// The client went away.
    Abort,
    /// An error or a shutdown cut it.
    Error,
}

/// Every metric of the server. Gauges that the scheduler owns are plain atomics it stores.
pub struct Metrics {
    /// Generation requests holding a slot.
    pub running: AtomicU64,
    /// Requests admitted but waiting for a slot.
    pub waiting: AtomicU64,
    /// Prompt tokens processed (evaluated or reused from cache).
    pub prompt_tokens: AtomicU64,
    /// Prompt tokens served from the prefix cache instead of being evaluated.
    pub prompt_tokens_cached: AtomicU64,
    /// Tokens generated.
    pub generation_tokens: AtomicU64,
    /// Finished generations by reason.
    finished: [AtomicU64; 4],
    /// Requests refused because the queue was full (503).
    pub rejected_queue_full: AtomicU64,
    /// Forward passes run by the scheduler.
    pub steps: AtomicU64,
    /// Tokens in the last step (batch size).
    pub last_batch_tokens: AtomicU64,
    /// KV cache usage of running sequences, as f64 bits.
    kv_usage_bits: AtomicU64,
    /// Tokens held in the KV cache (running and cached idle slots).
    pub kv_tokens: AtomicU64,
    /// KV capacity in tokens.
    pub kv_capacity: AtomicU64,
    /// Model load time, f64 seconds as bits.
    load_secs_bits: AtomicU64,
    /// Time to first token.
    pub ttft: Histogram,
    /// Time per output token after the first.
    pub tpot: Histogram,
    /// Arrival to last token.
    pub e2e: Histogram,
    /// Arrival to getting a slot.
    pub queue_time: Histogram,
    /// Models loaded (on startup, on demand, or by a load request).
    pub model_loads: AtomicU64,
    /// Loads that failed (or were refused by the memory budget).
    pub model_load_failures: AtomicU64,
    /// Models unloaded (keep-alive expiry, unload requests, eviction, shutdown).
    pub model_unloads: AtomicU64,
    /// Of the unloads, those that made room for another model.
    pub model_evictions: AtomicU64,
    /// Seconds per model load.
    pub model_load_seconds: Histogram,
    /// Models loaded now.
    pub models_loaded: AtomicU64,
    /// Estimated memory of the loaded models.
    pub models_memory_bytes: AtomicU64,
    /// The memory budget for models.
    pub memory_budget_bytes: AtomicU64,
    /// Speculative decoding counters.
    pub spec: crate::scheduler::speculative::SpecMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// All zero.
    pub fn new() -> Metrics {
        Metrics {
            running: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            prompt_tokens_cached: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            finished: Default::default(),
            rejected_queue_full: AtomicU64::new(0),
            steps: AtomicU64::new(0),
            last_batch_tokens: AtomicU64::new(0),
            kv_usage_bits: AtomicU64::new(0f64.to_bits()),
            kv_tokens: AtomicU64::new(0),
            kv_capacity: AtomicU64::new(0),
            load_secs_bits: AtomicU64::new(0f64.to_bits()),
            ttft: Histogram::new(TTFT),
            tpot: Histogram::new(TPOT),
            e2e: Histogram::new(LATENCY),
            queue_time: Histogram::new(LATENCY),
            model_loads: AtomicU64::new(0),
            model_load_failures: AtomicU64::new(0),
            model_unloads: AtomicU64::new(0),
            model_evictions: AtomicU64::new(0),
            model_load_seconds: Histogram::new(LOAD),
            models_loaded: AtomicU64::new(0),
            models_memory_bytes: AtomicU64::new(0),
            memory_budget_bytes: AtomicU64::new(0),
            spec: Default::default(),
        }
    }

    /// Adds one model's request metrics to these: counters and histograms always, the
    /// scheduler's gauges (running, waiting, KV cache) when `gauges` is set. The model
    /// management metrics are the server's own and are not copied.
    pub fn absorb(&self, other: &Metrics, gauges: bool) {
        if std::ptr::eq(self, other) {
            return;
        }
        let add = |a: &AtomicU64, b: &AtomicU64| {
            a.fetch_add(b.load(Ordering::Relaxed), Ordering::Relaxed);
        };
        add(&self.prompt_tokens, &other.prompt_tokens);
        add(&self.prompt_tokens_cached, &other.prompt_tokens_cached);
        add(&self.generation_tokens, &other.generation_tokens);
        for (a, b) in self.finished.iter().zip(&other.finished) {
            add(a, b);
        }
        add(&self.rejected_queue_full, &other.rejected_queue_full);
        add(&self.steps, &other.steps);
        self.ttft.absorb(&other.ttft);
        self.tpot.absorb(&other.tpot);
        self.e2e.absorb(&other.e2e);
        self.queue_time.absorb(&other.queue_time);
        self.spec.absorb(&other.spec);
        if gauges {
            add(&self.running, &other.running);
            add(&self.waiting, &other.waiting);
            add(&self.kv_tokens, &other.kv_tokens);
            let (c1, c2) = (
                self.kv_capacity.load(Ordering::Relaxed) as f64,
                other.kv_capacity.load(Ordering::Relaxed) as f64,
            );
            let (u1, u2) = (
                f64::from_bits(self.kv_usage_bits.load(Ordering::Relaxed)),
                f64::from_bits(other.kv_usage_bits.load(Ordering::Relaxed)),
            );
            if c1 + c2 > 0.0 {
                self.set_kv_usage((u1 * c1 + u2 * c2) / (c1 + c2));
            }
            add(&self.kv_capacity, &other.kv_capacity);
            let last = other.last_batch_tokens.load(Ordering::Relaxed);
            self.last_batch_tokens.fetch_max(last, Ordering::Relaxed);
        }
    }

    /// A copy of the request metrics and gauges (for summing over models).
    pub fn snapshot(&self) -> Metrics {
        let m = Metrics::new();
        m.absorb(self, true);
        let copy =
            |a: &AtomicU64, b: &AtomicU64| a.store(b.load(Ordering::Relaxed), Ordering::Relaxed);
        copy(&m.load_secs_bits, &self.load_secs_bits);
        copy(&m.model_loads, &self.model_loads);
        copy(&m.model_load_failures, &self.model_load_failures);
        copy(&m.model_unloads, &self.model_unloads);
        copy(&m.model_evictions, &self.model_evictions);
        copy(&m.models_loaded, &self.models_loaded);
        copy(&m.models_memory_bytes, &self.models_memory_bytes);
        copy(&m.memory_budget_bytes, &self.memory_budget_bytes);
        m.model_load_seconds.absorb(&self.model_load_seconds);
        m
    }

    /// Counts a finished generation.
    pub fn finished(&self, f: Finish) {
        self.finished[f as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Finished generations with this reason.
    pub fn finished_count(&self, f: Finish) -> u64 {
        self.finished[f as usize].load(Ordering::Relaxed)
    }

    /// Sets the KV usage ratio of running sequences.
    pub fn set_kv_usage(&self, ratio: f64) {
        self.kv_usage_bits.store(ratio.to_bits(), Ordering::Relaxed);
    }

    /// Sets the model load time.
    pub fn set_load_time(&self, secs: f64) {
        self.load_secs_bits.store(secs.to_bits(), Ordering::Relaxed);
    }

    /// The text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 << 10);
        let g = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let mut scalar = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        };
        scalar(
            "engine:num_requests_running",
            "gauge",
            "Generation requests holding a slot and being decoded.",
            g(&self.running).to_string(),
        );
        scalar(
            "engine:num_requests_waiting",
            "gauge",
            "Requests admitted to the queue and waiting for a slot.",
            g(&self.waiting).to_string(),
        );
        scalar(
            "engine:prompt_tokens_total",
            "counter",
            "Prompt tokens processed (evaluated or reused from the prefix cache).",
            g(&self.prompt_tokens).to_string(),
        );
        scalar(
            "engine:prompt_tokens_cached_total",
            "counter",
            "Prompt tokens reused from the prefix cache instead of being evaluated.",
            g(&self.prompt_tokens_cached).to_string(),
        );
        scalar(
            "engine:generation_tokens_total",
            "counter",
            "Tokens generated.",
            g(&self.generation_tokens).to_string(),
        );
        scalar(
            "engine:requests_rejected_total",
            "counter",
            "Requests refused with 503 because the queue was full.",
            g(&self.rejected_queue_full).to_string(),
        );
        scalar(
            "engine:batch_steps_total",
            "counter",
            "Batched forward passes run by the scheduler.",
            g(&self.steps).to_string(),
        );
        scalar(
            "engine:batch_tokens",
            "gauge",
            "Tokens evaluated in the most recent forward pass.",
            g(&self.last_batch_tokens).to_string(),
        );
        scalar(
            "engine:kv_cache_usage_ratio",
            "gauge",
            "Fraction of the KV cache held by running sequences (0 to 1).",
            f64::from_bits(g(&self.kv_usage_bits)).to_string(),
        );
        scalar(
            "engine:kv_cache_tokens",
            "gauge",
            "Tokens held in the KV cache, running and cached idle slots together.",
            g(&self.kv_tokens).to_string(),
        );
        scalar(
            "engine:kv_cache_capacity_tokens",
            "gauge",
            "KV cache capacity in tokens (slots times context per slot).",
            g(&self.kv_capacity).to_string(),
        );
        scalar(
            "engine:model_load_time_seconds",
            "gauge",
            "Seconds spent loading the model.",
            f64::from_bits(g(&self.load_secs_bits)).to_string(),
        );
        scalar(
            "engine:model_loads_total",
            "counter",
            "Models loaded (at startup, on demand, or by a load request).",
            g(&self.model_loads).to_string(),
        );
        scalar(
            "engine:model_load_failures_total",
            "counter",
            "Model loads that failed or were refused by the memory budget.",
            g(&self.model_load_failures).to_string(),
        );
        scalar(
            "engine:model_unloads_total",
            "counter",
            "Models unloaded (keep-alive expiry, unload requests, evictions, shutdown).",
            g(&self.model_unloads).to_string(),
        );
        scalar(
            "engine:model_evictions_total",
            "counter",
            "Idle models unloaded to make room for another model under --max-memory.",
            g(&self.model_evictions).to_string(),
        );
        scalar(
            "engine:models_loaded",
            "gauge",
            "Models loaded now.",
            g(&self.models_loaded).to_string(),
        );
        scalar(
            "engine:models_memory_bytes",
            "gauge",
            "Estimated memory of the loaded models (weights + KV cache + compute buffers).",
            g(&self.models_memory_bytes).to_string(),
        );
        scalar(
            "engine:memory_budget_bytes",
            "gauge",
            "Memory the loaded models may use together (--max-memory).",
            g(&self.memory_budget_bytes).to_string(),
        );
        scalar(
            "engine:process_resident_memory_bytes",
            "gauge",
            "Resident memory of the server process.",
            resident_memory().unwrap_or(0).to_string(),
        );
        let _ = writeln!(
            out,
            "# HELP engine:request_success_total Finished generation requests by finish reason."
        );
        let _ = writeln!(out, "# TYPE engine:request_success_total counter");
        for (label, f) in [
            ("stop", Finish::Stop),
            ("length", Finish::Length),
            ("abort", Finish::Abort),
            ("error", Finish::Error),
        ] {
            let _ = writeln!(
                out,
                "engine:request_success_total{{finished_reason=\"{label}\"}} {}",
                self.finished_count(f)
            );
        }
        self.ttft.render(
            &mut out,
            "engine:time_to_first_token_seconds",
            "Seconds from arrival to the first generated token.",
        );
        self.tpot.render(
            &mut out,
            "engine:time_per_output_token_seconds",
            "Seconds per generated token after the first.",
        );
        self.e2e.render(
            &mut out,
            "engine:e2e_request_latency_seconds",
            "Seconds from arrival to the end of generation.",
        );
        self.queue_time.render(
            &mut out,
            "engine:request_queue_time_seconds",
            "Seconds from arrival to getting a slot.",
        );
        self.model_load_seconds.render(
            &mut out,
            "engine:model_load_duration_seconds",
            "Seconds per model load (estimate, evictions, loading, starting the scheduler).",
        );
        self.spec.render(&mut out);
        out
    }
}

/// Resident set size of this process in bytes (Linux; `None` elsewhere).
pub fn resident_memory() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line["VmRSS:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absorbing_sums_counters_histograms_and_gauges() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.generation_tokens.store(5, Ordering::Relaxed);
        b.generation_tokens.store(7, Ordering::Relaxed);
        a.running.store(1, Ordering::Relaxed);
        b.running.store(2, Ordering::Relaxed);
        a.kv_capacity.store(100, Ordering::Relaxed);
        b.kv_capacity.store(300, Ordering::Relaxed);
        a.set_kv_usage(1.0);
        b.set_kv_usage(0.0);
        b.ttft.observe(0.3);
        b.finished(Finish::Stop);
        a.model_loads.store(3, Ordering::Relaxed);
        let sum = a.snapshot();
        sum.absorb(&b, true);
        let s = sum.render();
        assert!(s.contains("engine:generation_tokens_total 12\n"), "{s}");
        assert!(s.contains("engine:num_requests_running 3\n"), "{s}");
        assert!(s.contains("engine:kv_cache_capacity_tokens 400\n"), "{s}");
        assert!(s.contains("engine:kv_cache_usage_ratio 0.25\n"), "{s}");
        assert!(
            s.contains("engine:time_to_first_token_seconds_count 1\n"),
            "{s}"
        );
        assert!(s.contains("engine:request_success_total{finished_reason=\"stop\"} 1\n"));
        assert!(s.contains("engine:model_loads_total 3\n"), "{s}");
        // without gauges, a retired model adds only its counters
        let c = Metrics::new();
        c.absorb(&b, false);
        assert_eq!(c.running.load(Ordering::Relaxed), 0);
        assert_eq!(c.generation_tokens.load(Ordering::Relaxed), 7);
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(5.0);
        h.observe(f64::NAN);
        let mut s = String::new();
        h.render(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"0.1\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"1\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_count 3\n"), "{s}");
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn exposition_names_every_metric() {
        let m = Metrics::new();
        m.finished(Finish::Length);
        m.set_kv_usage(0.25);
        let s = m.render();
        for name in [
            "engine:num_requests_running 0",
            "engine:num_requests_waiting 0",
            "engine:prompt_tokens_total 0",
            "engine:generation_tokens_total 0",
            "engine:kv_cache_usage_ratio 0.25",
            "engine:request_success_total{finished_reason=\"length\"} 1",
            "engine:time_to_first_token_seconds_count 0",
            "engine:time_per_output_token_seconds_count 0",
            "engine:e2e_request_latency_seconds_count 0",
            "engine:request_queue_time_seconds_count 0",
            "engine:model_load_time_seconds",
            "engine:process_resident_memory_bytes",
            "engine:model_loads_total 0",
            "engine:model_unloads_total 0",
            "engine:model_evictions_total 0",
            "engine:models_loaded 0",
            "engine:model_load_duration_seconds_count 0",
        ] {
            assert!(s.contains(name), "missing {name} in\n{s}");
        }
    }
}
