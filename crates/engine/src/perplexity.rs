//! Perplexity and KL-divergence over a text, with llama-perplexity's semantics.
//!
//! The tokenized text (with the model's BOS) is cut into chunks of `n_ctx` tokens; each chunk
//! is evaluated from an empty context, its first token replaced by BOS when the model adds
//! one, and only the second half is scored: the logits at positions `n_ctx/2 ..= n_ctx-2`
//! predict the tokens after them. Perplexity is `exp` of the mean negative log-likelihood of
//! those tokens. Only one batch of logits is held at a time.
//!
//! For comparing a quantized model with its base, [`BaseWriter`] saves, per scored position,
//! the base model's most likely tokens with their log-probabilities: as many as hold
//! `1 - 1e-6` of the probability (at most [`MAX_KEPT`]), plus the target's log-probability
//! and the argmax. [`KldStats`] then measures the quantized model against it. Gemma's
//! vocabulary has 262,144 entries, so saving every log-probability (as llama-perplexity
//! does) would take about 0.5 MiB per position; the kept tokens take a few KiB. The KL
//! divergence is computed over the kept tokens plus one bucket for all the others, which is
//! exact up to the tail's share: the dropped part is at most the tail mass (below `1e-6`
//! unless [`MAX_KEPT`] tokens were not enough, which [`KldSummary::mean_tail_mass`] reports)
//! times the divergence within the tail.

use std::io::{Read, Write};

use engine_models::{Batch, ContextOptions};

use crate::error::{Error, Result};
use crate::model::Model;

/// Most base tokens kept per scored position.
pub const MAX_KEPT: usize = 4096;
/// Probability mass the kept base tokens must reach (unless [`MAX_KEPT`] stops first).
pub const KEPT_MASS: f64 = 1.0 - 1e-6;
const MAGIC: &[u8; 8] = b"ENGKLD01";

/// How to cut and evaluate the text.
#[derive(Clone, Copy, Debug)]
pub struct PerplexityOptions {
    /// Tokens per chunk (llama-perplexity `-c`).
    pub n_ctx: usize,
    /// Tokens per forward pass (llama-perplexity `-b`).
    pub n_batch: usize,
    /// Score at most this many chunks (llama-perplexity `--chunks`).
    pub max_chunks: Option<usize>,
}

/// Scored positions per chunk: logits at `n_ctx/2 ..= n_ctx-2`.
pub fn scored_per_chunk(n_ctx: usize) -> usize {
    n_ctx - 1 - n_ctx / 2
}

/// The number of chunks `n_tokens` tokens give, or an error when there are too few (as
/// llama-perplexity, at least `2 * n_ctx` tokens are required).
pub fn chunk_count(n_tokens: usize, opts: &PerplexityOptions) -> Result<usize> {
    if opts.n_ctx < 4 {
        return Err(Error::Options(format!(
            "a context of {} tokens is too small to score (at least 4)",
            opts.n_ctx
        )));
    }
    if n_tokens < 2 * opts.n_ctx {
        return Err(Error::Options(format!(
            "the text is {n_tokens} tokens; perplexity with a context of {} needs at least {} \
             (give a longer text or a smaller -c)",
            opts.n_ctx,
            2 * opts.n_ctx
        )));
    }
    let n = n_tokens / opts.n_ctx;
    Ok(opts.max_chunks.map_or(n, |m| n.min(m.max(1))))
}

/// What [`evaluate`] reports, in order.
pub enum Event<'a> {
    /// A scored position: the log-softmax of its logits and the token that follows it.
    Position {
        /// Chunk index.
        chunk: usize,
        /// Log-probabilities over the vocabulary.
        log_probs: &'a [f32],
        /// The token to predict.
        target: u32,
    },
    /// Every position of this chunk has been reported.
    ChunkDone(usize),
}

/// Evaluates the chunks of `tokens`, reporting every scored position and the end of every
/// chunk to `visit`; returns the number of chunks.
pub fn evaluate(
    model: &Model,
    tokens: &[u32],
    opts: &PerplexityOptions,
    mut visit: impl FnMut(Event<'_>) -> Result<()>,
) -> Result<usize> {
    let n_ctx = opts.n_ctx;
    let n_chunks = chunk_count(tokens.len(), opts)?;
    let n_batch = opts.n_batch.clamp(1, n_ctx);
    let inner = model.inner();
    let n_vocab = model.info().n_vocab;
    let mut ctx = inner.new_context(ContextOptions {
        n_ctx,
        n_seq: 1,
        n_batch,
        kv_type: model.context_options().kv_type,
    })?;
    let tok = model.tokenizer();
    let bos = tok.add_bos().then(|| tok.bos()).flatten();
    let first = n_ctx / 2;
    let mut batch = Batch::default();
    let mut logits = Vec::new();
    let mut row = vec![0f32; n_vocab];
    for c in 0..n_chunks {
        let chunk = &tokens[c * n_ctx..(c + 1) * n_ctx];
        ctx.clear_seq(0);
        for b0 in (0..n_ctx).step_by(n_batch) {
            let b1 = (b0 + n_batch).min(n_ctx);
            batch.clear();
            for (p, &t) in chunk.iter().enumerate().take(b1).skip(b0) {
                let t = match bos {
                    Some(bos) if p == 0 => bos,
                    _ => t,
                };
                let scored = p >= first && p + 1 < n_ctx;
                batch.push(t, p as u32, 0, scored);
            }
            inner.forward(&mut ctx, &batch, &mut logits)?;
            let scored0 = b0.max(first);
            let scored1 = b1.min(n_ctx - 1);
            for (i, p) in (scored0..scored1).enumerate() {
                log_softmax(&logits[i * n_vocab..(i + 1) * n_vocab], &mut row);
                visit(Event::Position {
                    chunk: c,
                    log_probs: &row,
                    target: chunk[p + 1],
                })?;
            }
        }
        visit(Event::ChunkDone(c))?;
    }
    Ok(n_chunks)
}

/// `out = log_softmax(logits)`, accumulated in f64.
pub fn log_softmax(logits: &[f32], out: &mut [f32]) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let lse = max as f64 + sum.ln();
    for (o, &l) in out.iter_mut().zip(logits) {
        *o = (l as f64 - lse) as f32;
    }
}

/// Mean and its standard error of a running sample.
#[derive(Clone, Copy, Debug, Default)]
pub struct Running {
    n: u64,
    sum: f64,
    sum2: f64,
}

impl Running {
    /// Adds a value.
    pub fn push(&mut self, x: f64) {
        self.n += 1;
        self.sum += x;
        self.sum2 += x * x;
    }
    /// Values added.
    pub fn count(&self) -> u64 {
        self.n
    }
    /// Mean (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.sum / self.n as f64
        }
    }
    /// Standard error of the mean (0 with fewer than two values).
    pub fn stderr(&self) -> f64 {
        if self.n < 2 {
            return 0.0;
        }
        let n = self.n as f64;
        let var = (self.sum2 / n - self.mean().powi(2)).max(0.0);
        (var / (n - 1.0)).sqrt()
    }
}

/// Perplexity from negative log-likelihoods.
#[derive(Clone, Copy, Debug, Default)]
pub struct PplStats {
    nll: Running,
}

impl PplStats {
    /// Adds one scored token given its log-probability.
    pub fn push(&mut self, log_prob: f64) {
        self.nll.push(-log_prob);
    }
    /// Tokens scored.
    pub fn count(&self) -> u64 {
        self.nll.count()
    }
    /// Mean negative log-likelihood.
    pub fn mean_nll(&self) -> f64 {
        self.nll.mean()
    }
    /// `exp(mean nll)`.
    pub fn ppl(&self) -> f64 {
        self.nll.mean().exp()
    }
    /// Uncertainty of [`PplStats::ppl`] (llama-perplexity's `+/-`: ppl times the standard
    /// error of the mean nll).
    pub fn ppl_err(&self) -> f64 {
        self.ppl() * self.nll.stderr()
    }
}

/// Index of the largest value (the first of equals).
fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Writes the base model's distributions (see the module documentation).
pub struct BaseWriter<W: Write> {
    out: W,
    order: Vec<u32>,
}

impl<W: Write> BaseWriter<W> {
    /// Starts a file for `n_chunks` chunks of `n_ctx` tokens from a model with `n_vocab`
    /// entries; `tokens` are the chunks' tokens as evaluated.
    pub fn new(
        mut out: W,
        n_ctx: usize,
        n_vocab: usize,
        n_chunks: usize,
        tokens: &[u32],
    ) -> Result<Self> {
        let io = |e: std::io::Error| Error::Options(format!("cannot write the base file: {e}"));
        let used = &tokens[..n_chunks * n_ctx];
        out.write_all(MAGIC).map_err(io)?;
        for v in [n_ctx, n_vocab, n_chunks] {
            out.write_all(&(v as u32).to_le_bytes()).map_err(io)?;
        }
        for t in used {
            out.write_all(&t.to_le_bytes()).map_err(io)?;
        }
        Ok(BaseWriter {
            out,
            order: (0..n_vocab as u32).collect(),
        })
    }

    /// Saves one scored position.
    pub fn push(&mut self, log_probs: &[f32], target: u32) -> Result<()> {
        let io = |e: std::io::Error| Error::Options(format!("cannot write the base file: {e}"));
        let k = MAX_KEPT.min(log_probs.len());
        let by_prob = |a: &u32, b: &u32| log_probs[*b as usize].total_cmp(&log_probs[*a as usize]);
        let order = &mut self.order;
        if k < order.len() {
            order.select_nth_unstable_by(k - 1, by_prob);
        }
        order[..k].sort_unstable_by(by_prob);
        let mut mass = 0.0f64;
        let mut kept = 0;
        while kept < k && mass < KEPT_MASS {
            mass += (log_probs[order[kept] as usize] as f64).exp();
            kept += 1;
        }
        let w = &mut self.out;
        w.write_all(&(kept as u32).to_le_bytes()).map_err(io)?;
        w.write_all(&log_probs[target as usize].to_le_bytes())
            .map_err(io)?;
        w.write_all(&argmax(log_probs).to_le_bytes()).map_err(io)?;
        for &id in &order[..kept] {
            w.write_all(&id.to_le_bytes()).map_err(io)?;
            w.write_all(&log_probs[id as usize].to_le_bytes())
                .map_err(io)?;
        }
        Ok(())
    }

    /// Flushes and returns the writer.
    pub fn finish(mut self) -> Result<W> {
        self.out
            .flush()
            .map_err(|e| Error::Options(format!("cannot write the base file: {e}")))?;
        Ok(self.out)
    }
}

/// A saved base file being read back.
pub struct BaseReader<R: Read> {
    input: R,
    /// Tokens per chunk.
    pub n_ctx: usize,
    /// Vocabulary size of the base model.
    pub n_vocab: usize,
    /// Chunks saved.
    pub n_chunks: usize,
    /// The evaluated tokens (`n_chunks * n_ctx`).
    pub tokens: Vec<u32>,
    ids: Vec<u32>,
    lps: Vec<f32>,
}

/// One saved position.
pub struct BasePosition<'a> {
    /// Log-probability the base gave the target token.
    pub target_log_prob: f32,
    /// The base's most likely token.
    pub argmax: u32,
    /// Kept token ids, most likely first.
    pub ids: &'a [u32],
    /// Their log-probabilities.
    pub log_probs: &'a [f32],
}

fn bad(what: impl std::fmt::Display) -> Error {
    Error::Options(format!("not a valid KL-divergence base file: {what}"))
}

fn read_u32(r: &mut impl Read) -> Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)
        .map_err(|e| bad(format!("truncated ({e})")))?;
    Ok(u32::from_le_bytes(b))
}

impl<R: Read> BaseReader<R> {
    /// Reads the header and tokens.
    pub fn new(mut input: R) -> Result<Self> {
        let mut magic = [0u8; 8];
        input
            .read_exact(&mut magic)
            .map_err(|e| bad(format!("cannot read the header ({e})")))?;
        if &magic != MAGIC {
            return Err(bad(
                "wrong magic (write one with `engine perplexity --kl-divergence-base FILE`)",
            ));
        }
        let n_ctx = read_u32(&mut input)? as usize;
        let n_vocab = read_u32(&mut input)? as usize;
        let n_chunks = read_u32(&mut input)? as usize;
        if n_ctx < 4 || n_vocab == 0 || n_chunks == 0 {
            return Err(bad(format!(
                "n_ctx {n_ctx}, n_vocab {n_vocab}, chunks {n_chunks}"
            )));
        }
        let n_tokens = n_ctx
            .checked_mul(n_chunks)
            .filter(|&n| n <= 1 << 28)
            .ok_or_else(|| {
                bad(format!(
                    "{n_chunks} chunks of {n_ctx} tokens is implausible"
                ))
            })?;
        let mut tokens = Vec::with_capacity(n_tokens);
        for _ in 0..n_tokens {
            let t = read_u32(&mut input)?;
            if t as usize >= n_vocab {
                return Err(bad(format!(
                    "token {t} outside the vocabulary of {n_vocab}"
                )));
            }
            tokens.push(t);
        }
        Ok(BaseReader {
            input,
            n_ctx,
            n_vocab,
            n_chunks,
            tokens,
            ids: Vec::new(),
            lps: Vec::new(),
        })
    }

    /// Reads the next position.
    pub fn next_position(&mut self) -> Result<BasePosition<'_>> {
        let r = &mut self.input;
        let kept = read_u32(r)? as usize;
        if kept == 0 || kept > MAX_KEPT.min(self.n_vocab) {
            return Err(bad(format!("{kept} kept tokens")));
        }
        let target_log_prob = f32::from_bits(read_u32(r)?);
        let argmax = read_u32(r)?;
        self.ids.clear();
        self.lps.clear();
        for _ in 0..kept {
            let id = read_u32(r)?;
            if id as usize >= self.n_vocab {
                return Err(bad(format!("token {id} outside the vocabulary")));
            }
            self.ids.push(id);
            self.lps.push(f32::from_bits(read_u32(r)?));
        }
        Ok(BasePosition {
            target_log_prob,
            argmax,
            ids: &self.ids,
            log_probs: &self.lps,
        })
    }
}

/// KL-divergence of a model against a saved base, position by position.
#[derive(Clone, Debug, Default)]
pub struct KldStats {
    kld: Running,
    same_top: Running,
    tail: Running,
    /// Perplexity of the model under test.
    pub ppl: PplStats,
    /// Perplexity of the base (from the saved target log-probabilities).
    pub ppl_base: PplStats,
    values: Vec<f64>,
}

/// What [`KldStats::summary`] reports.
#[derive(Clone, Copy, Debug)]
pub struct KldSummary {
    /// Positions compared.
    pub positions: u64,
    /// Mean KL-divergence (nats) and its standard error.
    pub mean_kld: f64,
    /// Standard error of `mean_kld`.
    pub mean_kld_err: f64,
    /// Median KL-divergence.
    pub median_kld: f64,
    /// 99th percentile.
    pub p99_kld: f64,
    /// Largest.
    pub max_kld: f64,
    /// Share of positions whose most likely token equals the base's (0..1).
    pub same_top: f64,
    /// Standard error of `same_top`.
    pub same_top_err: f64,
    /// Perplexity of the model under test, and of the base.
    pub ppl: f64,
    /// Perplexity of the base.
    pub ppl_base: f64,
    /// Mean probability the base put outside its kept tokens.
    pub mean_tail_mass: f64,
}

impl KldStats {
    /// Compares one position: `log_probs` from the model under test, `target` the scored token.
    pub fn push(&mut self, base: &BasePosition<'_>, log_probs: &[f32], target: u32) {
        let (mut kl, mut p_kept, mut q_kept) = (0.0f64, 0.0f64, 0.0f64);
        for (&id, &lp) in base.ids.iter().zip(base.log_probs) {
            let (lp, lq) = (lp as f64, log_probs[id as usize] as f64);
            let p = lp.exp();
            kl += p * (lp - lq);
            p_kept += p;
            q_kept += lq.exp();
        }
        let p_tail = (1.0 - p_kept).max(0.0);
        let q_tail = (1.0 - q_kept).max(f64::MIN_POSITIVE);
        if p_tail > 0.0 {
            kl += p_tail * (p_tail / q_tail).ln();
        }
        let kl = kl.max(0.0);
        self.kld.push(kl);
        self.values.push(kl);
        self.tail.push(p_tail);
        self.same_top.push(if argmax(log_probs) == base.argmax {
            1.0
        } else {
            0.0
        });
        self.ppl.push(log_probs[target as usize] as f64);
        self.ppl_base.push(base.target_log_prob as f64);
    }

    /// The statistics so far.
    pub fn summary(&self) -> KldSummary {
        let mut v = self.values.clone();
        v.sort_unstable_by(f64::total_cmp);
        let pct = |q: f64| {
            if v.is_empty() {
                0.0
            } else {
                v[((v.len() - 1) as f64 * q).round() as usize]
            }
        };
        KldSummary {
            positions: self.kld.count(),
            mean_kld: self.kld.mean(),
            mean_kld_err: self.kld.stderr(),
            median_kld: pct(0.5),
            p99_kld: pct(0.99),
            max_kld: v.last().copied().unwrap_or(0.0),
            same_top: self.same_top.mean(),
            same_top_err: self.same_top.stderr(),
            ppl: self.ppl.ppl(),
            ppl_base: self.ppl_base.ppl(),
            mean_tail_mass: self.tail.mean(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn softmaxed(logits: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; logits.len()];
        log_softmax(logits, &mut out);
        out
    }

    #[test]
    fn log_softmax_normalises() {
        let lp = softmaxed(&[1.0, 2.0, 3.0, -50.0]);
        let total: f64 = lp.iter().map(|&x| (x as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6, "{total}");
        assert!((lp[2] - lp[1] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn chunking_follows_llama_perplexity() {
        let o = |n_ctx, max_chunks| PerplexityOptions {
            n_ctx,
            n_batch: 512,
            max_chunks,
        };
        assert_eq!(scored_per_chunk(512), 255);
        assert_eq!(chunk_count(3642, &o(512, None)).unwrap(), 7);
        assert_eq!(chunk_count(3642, &o(512, Some(3))).unwrap(), 3);
        let e = chunk_count(1000, &o(512, None)).unwrap_err().to_string();
        assert!(e.contains("at least 1024"), "{e}");
    }

    /// Round trip through the file, and the KL-divergence of known distributions: a model
    /// equal to the base has 0, and a shifted one has the analytic value.
    #[test]
    fn base_file_round_trip_and_kld() {
        let n_vocab = 6;
        let base = softmaxed(&[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]);
        let other = softmaxed(&[1.0, 2.0, 0.5, 0.0, -1.0, -3.0]);
        let tokens: Vec<u32> = (0..8).map(|i| i % 6).collect();
        let mut w = BaseWriter::new(Vec::new(), 4, n_vocab, 2, &tokens).unwrap();
        w.push(&base, 1).unwrap();
        w.push(&base, 0).unwrap();
        let bytes = w.finish().unwrap();
        let mut r = BaseReader::new(&bytes[..]).unwrap();
        assert_eq!((r.n_ctx, r.n_vocab, r.n_chunks), (4, 6, 2));
        assert_eq!(r.tokens, tokens);
        let mut same = KldStats::default();
        let p = r.next_position().unwrap();
        assert_eq!(p.argmax, 0);
        assert_eq!(
            p.ids.len(),
            6,
            "all six tokens are needed for 1 - 1e-6 of the mass"
        );
        assert_eq!(p.ids[0], 0);
        same.push(&p, &base, 1);
        assert!(same.summary().mean_kld < 1e-9);
        let mut diff = KldStats::default();
        let p = r.next_position().unwrap();
        diff.push(&p, &other, 0);
        let exact: f64 = base
            .iter()
            .zip(&other)
            .map(|(&a, &b)| (a as f64).exp() * (a as f64 - b as f64))
            .sum();
        let s = diff.summary();
        assert!(
            (s.mean_kld - exact).abs() < 1e-9,
            "{} vs {exact}",
            s.mean_kld
        );
        assert_eq!(s.same_top, 0.0);
        assert!((s.ppl_base - (-base[0] as f64).exp()).abs() < 1e-6);
        assert!(r.next_position().is_err(), "past the end is an error");
    }

    /// Keeping only the head of a long-tailed distribution loses at most the tail's share.
    #[test]
    fn kept_head_bounds_the_tail() {
        let n_vocab = 20_000;
        let logits: Vec<f32> = (0..n_vocab).map(|i| -(i as f32) * 0.001).collect();
        let base = softmaxed(&logits);
        let shifted: Vec<f32> = logits.iter().map(|&l| l * 1.1).collect();
        let other = softmaxed(&shifted);
        let mut w = BaseWriter::new(Vec::new(), 4, n_vocab, 1, &[0, 1, 2, 3]).unwrap();
        w.push(&base, 3).unwrap();
        let bytes = w.finish().unwrap();
        let mut r = BaseReader::new(&bytes[..]).unwrap();
        let p = r.next_position().unwrap();
        assert_eq!(p.ids.len(), MAX_KEPT);
        let mut s = KldStats::default();
        s.push(&p, &other, 3);
        let exact: f64 = base
            .iter()
            .zip(&other)
            .map(|(&a, &b)| (a as f64).exp() * (a as f64 - b as f64))
            .sum();
        let got = s.summary();
        assert!(got.mean_tail_mass > 0.01, "this distribution is flat");
        assert!(got.mean_kld <= exact + 1e-9 && exact - got.mean_kld < 0.5 * exact);
    }

    #[test]
    fn corrupt_base_files_are_errors() {
        assert!(BaseReader::new(&b"nope"[..]).is_err());
        let mut bytes = MAGIC.to_vec();
        for v in [4u32, 10, 1] {
            bytes.extend(v.to_le_bytes());
        }
        bytes.extend(11u32.to_le_bytes()); // a token outside the vocabulary
        let e = BaseReader::new(&bytes[..]).err().unwrap().to_string();
        assert!(e.contains("outside the vocabulary"), "{e}");
        let mut bytes = MAGIC.to_vec();
        for v in [1u32 << 20, 10, 1 << 20] {
            bytes.extend(v.to_le_bytes());
        }
        assert!(BaseReader::new(&bytes[..]).is_err());
    }
}
