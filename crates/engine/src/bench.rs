//! Throughput measurement with llama-bench's semantics, so our numbers and llama.cpp's line
//! up cell by cell.
//!
//! A [`BenchTest`] is a prompt-processing part (`pp`: `n_prompt` random tokens evaluated in
//! batches of `n_batch`, only the last token's logits computed), a token-generation part
//! (`tg`: `n_gen` single-token steps, each with logits), or both (`pp+tg`), optionally after
//! filling the context with `n_depth` tokens first (untimed). Like llama-bench, each test
//! starts with a warm-up run (the prompt, then one generated token), and every repetition
//! starts from an emptied cache; a filled depth is computed once and restored afterwards.
//! Tokenization and sampling are not part of the timing: tokens are random ids.
//!
//! [`run_spec_test`] is the speculative mode: the same greedy generation from a real prompt
//! (speculation needs text, not random ids), plainly and with a drafter, repetitions
//! interleaved, reporting both generation speeds, the speedup and the acceptance rate.

use std::time::Instant;

use engine_models::{Batch, ContextOptions};

use crate::error::{Error, Result};
use crate::model::Model;

/// One benchmark cell: what llama-bench calls a test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchTest {
    /// Prompt tokens evaluated in batches.
    pub n_prompt: usize,
    /// Tokens generated one at a time.
    pub n_gen: usize,
    /// Tokens already in the context before the timed part.
    pub n_depth: usize,
}

impl BenchTest {
    /// llama-bench's name for the test: `pp512`, `tg128`, `pp512+tg128`, with ` @ d1024`
    /// appended for a filled context.
    pub fn name(&self) -> String {
        let mut s = match (self.n_prompt, self.n_gen) {
            (p, 0) => format!("pp{p}"),
            (0, g) => format!("tg{g}"),
            (p, g) => format!("pp{p}+tg{g}"),
        };
        if self.n_depth > 0 {
            s.push_str(&format!(" @ d{}", self.n_depth));
        }
        s
    }

    /// Tokens counted for the throughput: prompt plus generated.
    pub fn n_tokens(&self) -> usize {
        self.n_prompt + self.n_gen
    }
}

/// How to run the tests.
#[derive(Clone, Copy, Debug)]
pub struct BenchConfig {
    /// Logical batch: tokens handed to one evaluation call (llama-bench `-b`).
    pub n_batch: usize,
    /// Physical batch: the largest forward pass (llama-bench `-ub`).
    pub n_ubatch: usize,
    /// Repetitions (llama-bench `-r`).
    pub reps: usize,
    /// Run the warm-up first (llama-bench runs it unless `--no-warmup`).
    pub warmup: bool,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            n_batch: 2048,
            n_ubatch: 512,
            reps: 5,
            warmup: true,
        }
    }
}

/// The timings of one test: one sample per repetition.
#[derive(Clone, Debug)]
pub struct BenchResult {
    /// The test.
    pub test: BenchTest,
    /// Wall time of each repetition's timed part, in nanoseconds.
    pub samples_ns: Vec<u64>,
}

impl BenchResult {
    /// Tokens per second of each repetition.
    pub fn samples_ts(&self) -> Vec<f64> {
        let n = self.test.n_tokens() as f64;
        self.samples_ns
            .iter()
            .map(|&ns| n * 1e9 / ns.max(1) as f64)
            .collect()
    }

    /// Mean and sample standard deviation of the repetitions' wall times (ns).
    pub fn ns_stats(&self) -> (f64, f64) {
        mean_stddev(
            &self
                .samples_ns
                .iter()
                .map(|&x| x as f64)
                .collect::<Vec<_>>(),
        )
    }

    /// Mean and sample standard deviation of the repetitions' tokens per second (the mean
    /// of the per-repetition rates, as llama-bench reports).
    pub fn ts_stats(&self) -> (f64, f64) {
        mean_stddev(&self.samples_ts())
    }
}

/// Mean and sample standard deviation (0 for fewer than two values).
pub fn mean_stddev(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (0.0, 0.0);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// A small deterministic generator for the random token ids (the ids only need to be
/// arbitrary, not good random numbers).
struct TokenRng(u64);

impl TokenRng {
    fn next(&mut self, n_vocab: usize) -> u32 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as u32 % n_vocab as u32
    }
}

/// The state a test runs in: the context, a batch, the logits buffer and the token source.
struct Runner<'m> {
    model: &'m dyn engine_models::Model,
    ctx: engine_models::Context,
    batch: Batch,
    logits: Vec<f32>,
    ids: Vec<u32>,
    rng: TokenRng,
    bos: Option<u32>,
    n_vocab: usize,
    n_batch: usize,
    n_ubatch: usize,
}

impl Runner<'_> {
    /// Evaluates `n` random prompt tokens of sequence `seq` from position `start`, in
    /// batches of `n_batch` split into forward passes of `n_ubatch`; only the last token of
    /// each batch produces logits (llama-bench's `test_prompt`).
    fn prompt(&mut self, seq: u32, start: usize, n: usize) -> Result<()> {
        let mut done = 0;
        while done < n {
            let len = (n - done).min(self.n_batch);
            self.ids.clear();
            for i in 0..len {
                let id = match self.bos {
                    Some(b) if start + done + i == 0 => b,
                    _ => self.rng.next(self.n_vocab),
                };
                self.ids.push(id);
            }
            let mut off = 0;
            while off < len {
                let u = (len - off).min(self.n_ubatch);
                let pos = (start + done + off) as u32;
                self.batch.clear();
                if u > 1 {
                    self.batch
                        .push_seq(&self.ids[off..off + u - 1], pos, seq, false);
                }
                let last = off + u == len;
                self.batch
                    .push(self.ids[off + u - 1], pos + u as u32 - 1, seq, last);
                self.model
                    .forward(&mut self.ctx, &self.batch, &mut self.logits)?;
                off += u;
            }
            done += len;
        }
        Ok(())
    }

    /// Generates `n` tokens of sequence 0 from position `start`, one forward pass with
    /// logits each (llama-bench's `test_gen`; the next token is random, not sampled).
    fn generate(&mut self, start: usize, n: usize) -> Result<()> {
        let mut tok = self.bos.unwrap_or_else(|| self.rng.next(self.n_vocab));
        for i in 0..n {
            self.batch.clear();
            self.batch.push(tok, (start + i) as u32, 0, true);
            self.model
                .forward(&mut self.ctx, &self.batch, &mut self.logits)?;
            tok = self.rng.next(self.n_vocab);
        }
        Ok(())
    }
}

/// Runs one test on `model` and returns its samples. The context holds exactly
/// `n_depth + n_prompt + n_gen` tokens, as in llama-bench.
pub fn run_test(model: &Model, test: BenchTest, cfg: &BenchConfig) -> Result<BenchResult> {
    if test.n_tokens() == 0 {
        return Err(Error::Options(
            "a test needs prompt or generated tokens".into(),
        ));
    }
    if cfg.n_batch == 0 || cfg.n_ubatch == 0 {
        return Err(Error::Options("batch sizes must be at least 1".into()));
    }
    let n_ctx = test.n_depth + test.n_tokens();
    let n_ubatch = cfg.n_ubatch.min(cfg.n_batch).min(n_ctx);
    // With a depth, sequence 1 keeps the filled context and is copied into sequence 0
    // before every repetition.
    let ctx_opts = ContextOptions {
        n_ctx,
        n_seq: if test.n_depth > 0 { 2 } else { 1 },
        n_batch: n_ubatch,
        kv_type: model.context_options().kv_type,
    };
    let inner = model.inner();
    let tok = model.tokenizer();
    let n_vocab = model.info().n_vocab;
    let mut r = Runner {
        model: inner,
        ctx: inner.new_context(ctx_opts)?,
        batch: Batch::default(),
        logits: Vec::with_capacity(n_vocab),
        ids: Vec::with_capacity(cfg.n_batch.min(n_ctx)),
        rng: TokenRng(0x9E37_79B9_7F4A_7C15),
        bos: tok.add_bos().then(|| tok.bos()).flatten(),
        n_vocab,
        n_batch: cfg.n_batch,
        n_ubatch,
    };
    if cfg.warmup {
        if test.n_prompt > 0 {
            r.prompt(0, 0, test.n_prompt)?;
        }
        if test.n_gen > 0 {
            let at = r.ctx.seq_len(0);
            r.generate(at, 1)?;
        }
    }
    if test.n_depth > 0 {
        r.ctx.clear_seq(1);
        r.prompt(1, 0, test.n_depth)?;
    }
    let mut samples_ns = Vec::with_capacity(cfg.reps);
    for _ in 0..cfg.reps.max(1) {
        r.ctx.clear_seq(0);
        if test.n_depth > 0 {
            r.ctx.copy_prefix(1, 0, test.n_depth)?;
        }
        let t0 = Instant::now();
        if test.n_prompt > 0 {
            r.prompt(0, test.n_depth, test.n_prompt)?;
        }
        if test.n_gen > 0 {
            r.generate(test.n_depth + test.n_prompt, test.n_gen)?;
        }
        samples_ns.push(t0.elapsed().as_nanos() as u64);
    }
    Ok(BenchResult { test, samples_ns })
}

/// One speculative benchmark: plain and speculative generation of the same tokens.
#[derive(Clone, Debug)]
pub struct SpecBenchResult {
    /// Tokens generated per run.
    pub n_gen: usize,
    /// Generation wall time of each plain repetition (ns), prompt excluded.
    pub plain_ns: Vec<u64>,
    /// Generation wall time of each speculative repetition (ns), prompt excluded.
    pub spec_ns: Vec<u64>,
    /// Drafting totals over the speculative repetitions.
    pub stats: crate::speculative::SpecStats,
    /// Whether every speculative run produced exactly the plain run's tokens.
    pub identical: bool,
}

impl SpecBenchResult {
    fn ts(&self, ns: &[u64]) -> (f64, f64) {
        mean_stddev(
            &ns.iter()
                .map(|&x| self.n_gen as f64 * 1e9 / x.max(1) as f64)
                .collect::<Vec<_>>(),
        )
    }

    /// Plain generation t/s: mean and standard deviation.
    pub fn plain_ts(&self) -> (f64, f64) {
        self.ts(&self.plain_ns)
    }

    /// Speculative generation t/s: mean and standard deviation.
    pub fn spec_ts(&self) -> (f64, f64) {
        self.ts(&self.spec_ns)
    }

    /// Mean speculative t/s over mean plain t/s.
    pub fn speedup(&self) -> f64 {
        self.spec_ts().0 / self.plain_ts().0.max(1e-9)
    }
}

/// Generates `n_gen` tokens greedily from `prompt` (token ids) `reps` times plainly and
/// `reps` times with `drafter`, alternating (plain, speculative, plain, ...) so that a
/// noisy machine slows both alike. End-of-generation tokens are ignored so every run
/// generates exactly `n_gen` tokens. One untimed warm-up run of each comes first.
pub fn run_spec_test(
    model: &Model,
    prompt: &[u32],
    n_gen: usize,
    reps: usize,
    drafter: &mut dyn crate::speculative::Drafter,
    spec: &crate::speculative::SpecParams,
) -> Result<SpecBenchResult> {
    use crate::model::{GenerateParams, Prompt};
    if n_gen == 0 || prompt.is_empty() {
        return Err(Error::Options(
            "a speculative test needs a prompt and tokens to generate".into(),
        ));
    }
    let params = GenerateParams {
        max_tokens: Some(n_gen),
        sampling: crate::sampling::SamplingParams::greedy(),
        ignore_eos: true,
        ..Default::default()
    };
    let prompt = Prompt::Tokens(prompt.to_vec());
    let mut session = model.session()?;
    let mut res = SpecBenchResult {
        n_gen,
        plain_ns: Vec::with_capacity(reps),
        spec_ns: Vec::with_capacity(reps),
        stats: Default::default(),
        identical: true,
    };
    for rep in 0..=reps.max(1) {
        let plain = session.generate(&prompt, &params, |_| true)?;
        let sp = session.generate_speculative(&prompt, &params, drafter, spec, |_| true)?;
        if rep == 0 {
            continue; // warm-up
        }
        res.plain_ns
            .push((plain.timings.predicted_ms * 1e6).round() as u64);
        res.spec_ns
            .push((sp.timings.predicted_ms * 1e6).round() as u64);
        res.identical &= sp.ids == plain.ids;
        if let Some(st) = sp.speculative {
            res.stats.steps += st.steps;
            res.stats.drafted += st.drafted;
            res.stats.accepted += st.accepted;
            res.stats.fallbacks += st.fallbacks;
        }
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_llama_bench() {
        let t = |p, g, d| BenchTest {
            n_prompt: p,
            n_gen: g,
            n_depth: d,
        };
        assert_eq!(t(512, 0, 0).name(), "pp512");
        assert_eq!(t(0, 128, 0).name(), "tg128");
        assert_eq!(t(512, 128, 0).name(), "pp512+tg128");
        assert_eq!(t(0, 128, 1024).name(), "tg128 @ d1024");
    }

    #[test]
    fn statistics() {
        let (m, s) = mean_stddev(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(m, 2.5);
        assert!((s - 1.290_994_4).abs() < 1e-6);
        assert_eq!(mean_stddev(&[7.0]), (7.0, 0.0));
        let r = BenchResult {
            test: BenchTest {
                n_prompt: 0,
                n_gen: 10,
                n_depth: 0,
            },
            samples_ns: vec![1_000_000_000, 500_000_000],
        };
        assert_eq!(r.samples_ts(), vec![10.0, 20.0]);
        assert_eq!(r.ts_stats().0, 15.0);
    }
}
