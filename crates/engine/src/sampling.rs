//! Token sampling: greedy, temperature, top-k, top-p, min-p and repetition, presence and
//! frequency penalties, seeded for reproducibility.
//!
//! The chain follows llama.cpp's default order: penalties, top-k, top-p, min-p, then
//! temperature and a draw from the remaining distribution. A temperature of 0 (or below)
//! is greedy: the argmax of the penalised logits. All buffers are kept between calls, so
//! sampling a token allocates nothing.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Sampling settings (llama-server's names and defaults).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; `<= 0` selects greedy decoding.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `top_p` (1 = all).
    pub top_p: f32,
    /// Drop tokens below `min_p` times the top probability (0 = off).
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of recent tokens by this (1 = off).
    pub repeat_penalty: f32,
    /// How many recent tokens the penalties look at (0 = off, -1 = whole context).
    pub repeat_last_n: i32,
    /// Subtract this from the logits of tokens already present (0 = off).
    pub presence_penalty: f32,
    /// Subtract this times the count of each token already present (0 = off).
    pub frequency_penalty: f32,
    /// Random seed; `None` picks one from the clock.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding with no penalties.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }

    /// Checks ranges, naming the first bad setting.
    pub fn validate(&self) -> Result<(), String> {
        if !self.temperature.is_finite() {
            return Err("temperature must be a finite number".into());
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return Err(format!("top_p must be within [0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(format!("min_p must be within [0, 1], got {}", self.min_p));
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return Err(format!(
                "repeat_penalty must be positive, got {}",
                self.repeat_penalty
            ));
        }
        if !self.presence_penalty.is_finite() || !self.frequency_penalty.is_finite() {
            return Err("penalties must be finite numbers".into());
        }
        if self.repeat_last_n < -1 {
            return Err(format!(
                "repeat_last_n must be -1 or more, got {}",
                self.repeat_last_n
            ));
        }
        Ok(())
    }

    fn penalties_active(&self) -> bool {
        self.repeat_last_n != 0
            && (self.repeat_penalty != 1.0
                || self.presence_penalty != 0.0
                || self.frequency_penalty != 0.0)
    }
}

/// A stateful sampler: remembers recent tokens for penalties and owns its RNG.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    history: Vec<u32>,
    cand: Vec<(u32, f32)>,
    counts: Vec<(u32, u32)>,
    probs: Vec<f32>,
}

impl Sampler {
    /// A sampler with `params`; call [`Sampler::accept`] for prompt and generated tokens so
    /// penalties see them.
    pub fn new(params: SamplingParams) -> Sampler {
        let seed = params.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        });
        Sampler {
            params,
            rng: StdRng::seed_from_u64(seed),
            history: Vec::with_capacity(256),
            cand: Vec::new(),
            counts: Vec::with_capacity(256),
            probs: Vec::new(),
        }
    }

    /// The settings.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Records a token (prompt or generated) for the penalties.
    pub fn accept(&mut self, token: u32) {
        if !self.params.penalties_active() {
            return;
        }
        let keep = match self.params.repeat_last_n {
            -1 => usize::MAX,
            n => n.max(0) as usize,
        };
        if keep != usize::MAX && self.history.len() >= keep.max(1) * 2 {
            // keep the buffer bounded without shifting on every token
            let drop = self.history.len() - keep;
            self.history.drain(..drop);
        }
        self.history.push(token);
    }

    /// Forgets the token history.
    pub fn reset(&mut self) {
        self.history.clear();
    }

    fn recent(&self) -> &[u32] {
        match self.params.repeat_last_n {
            -1 => &self.history,
            n => {
                let n = (n.max(0) as usize).min(self.history.len());
                &self.history[self.history.len() - n..]
            }
        }
    }

    /// True when the chain is deterministic (temperature 0: the argmax of the penalised
    /// logits).
    pub fn is_greedy(&self) -> bool {
        self.params.temperature <= 0.0
    }

    /// Picks the next token from `logits` (one row of `n_vocab` values).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        match self.prepare(logits) {
            Some(id) => id,
            None => self.draw(),
        }
    }

    /// The distribution [`Sampler::sample`] draws from for `logits`, after penalties,
    /// truncation and temperature: `(token, probability)` pairs, most likely first,
    /// written to `out`. Greedy chains give their one token with probability 1. Nothing is
    /// drawn, so the random stream is untouched.
    pub fn distribution(&mut self, logits: &[f32], out: &mut Vec<(u32, f32)>) {
        out.clear();
        match self.prepare(logits) {
            Some(id) => out.push((id, 1.0)),
            None => out.extend(
                self.cand
                    .iter()
                    .map(|c| c.0)
                    .zip(self.probs.iter().copied()),
            ),
        }
    }

    /// A uniform draw from `[0, 1)` from the sampler's random stream.
    pub fn uniform(&mut self) -> f32 {
        self.rng.gen()
    }

    /// Draws a token from `weights` (`(token, weight)` pairs, not necessarily normalised)
    /// with the sampler's random stream; `None` when every weight is zero.
    pub fn draw_from(&mut self, weights: &[(u32, f32)]) -> Option<u32> {
        let total: f32 = weights.iter().map(|w| w.1.max(0.0)).sum();
        if total <= 0.0 || !total.is_finite() {
            return None;
        }
        let r = self.rng.gen::<f32>() * total;
        let mut cum = 0.0;
        for &(id, w) in weights {
            cum += w.max(0.0);
            if r < cum {
                return Some(id);
            }
        }
        weights.iter().rev().find(|w| w.1 > 0.0).map(|w| w.0)
    }

    /// Builds the candidates and their probabilities for `logits` (in `cand` and `probs`),
    /// or returns the token directly when the chain is deterministic.
    fn prepare(&mut self, logits: &[f32]) -> Option<u32> {
        let p = self.params.clone();
        let penalize = p.penalties_active() && !self.history.is_empty();
        if p.temperature <= 0.0 && !penalize {
            return Some(argmax(logits));
        }
        // Penalties touch only the tokens seen recently.
        self.counts.clear();
        if penalize {
            let start = self.history.len() - self.recent().len();
            for &t in &self.history[start..] {
                match self.counts.iter_mut().find(|(id, _)| *id == t) {
                    Some(c) => c.1 += 1,
                    None => self.counts.push((t, 1)),
                }
            }
        }
        let penalty = |id: u32, l: f32, counts: &[(u32, u32)]| -> f32 {
            match counts.iter().find(|(t, _)| *t == id) {
                None => l,
                Some(&(_, c)) => {
                    let mut l = if l > 0.0 {
                        l / p.repeat_penalty
                    } else {
                        l * p.repeat_penalty
                    };
                    l -= c as f32 * p.frequency_penalty + p.presence_penalty;
                    l
                }
            }
        };
        if p.temperature <= 0.0 {
            let mut best = (0u32, f32::NEG_INFINITY);
            for (i, &l) in logits.iter().enumerate() {
                let l = penalty(i as u32, l, &self.counts);
                if l > best.1 {
                    best = (i as u32, l);
                }
            }
            return Some(best.0);
        }

        self.cand.clear();
        self.cand
            .extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        if penalize {
            for &(t, _) in &self.counts {
                if let Some(c) = self.cand.get_mut(t as usize) {
                    c.1 = penalty(t, c.1, &self.counts);
                }
            }
        }
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1);
        if p.top_k > 0 && p.top_k < self.cand.len() {
            self.cand.select_nth_unstable_by(p.top_k - 1, by_logit);
            self.cand.truncate(p.top_k);
        }
        self.cand.sort_unstable_by(by_logit);

        // top-p and min-p on the untempered distribution, as llama.cpp's default chain does.
        softmax_into(&self.cand, 1.0, &mut self.probs);
        if p.top_p < 1.0 {
            let mut cum = 0.0;
            let mut keep = self.cand.len();
            for (i, &q) in self.probs.iter().enumerate() {
                cum += q;
                if cum >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            self.cand.truncate(keep.max(1));
            self.probs.truncate(keep.max(1));
        }
        if p.min_p > 0.0 && !self.probs.is_empty() {
            let cut = self.probs[0] * p.min_p;
            let keep = self.probs.iter().take_while(|&&q| q >= cut).count().max(1);
            self.cand.truncate(keep);
        }
        softmax_into(&self.cand, p.temperature, &mut self.probs);
        None
    }

    /// Draws from the candidates [`Sampler::prepare`] left.
    fn draw(&mut self) -> u32 {
        let r: f32 = self.rng.gen();
        let mut cum = 0.0;
        for (i, &q) in self.probs.iter().enumerate() {
            cum += q;
            if r < cum {
                return self.cand[i].0;
            }
        }
        self.cand.last().map(|c| c.0).unwrap_or(0)
    }
}

/// Index of the largest value (the first one on ties).
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = (0usize, f32::NEG_INFINITY);
    for (i, &v) in x.iter().enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0 as u32
}

fn softmax_into(cand: &[(u32, f32)], temp: f32, out: &mut Vec<f32>) {
    out.clear();
    let m = cand.iter().fold(f32::NEG_INFINITY, |a, c| a.max(c.1));
    let mut sum = 0.0;
    for c in cand {
        let e = ((c.1 - m) / temp).exp();
        out.push(e);
        sum += e;
    }
    for v in out.iter_mut() {
        *v /= sum;
    }
}

/// The `k` most likely tokens of a logit row with their log-probabilities (log-softmax over
/// the whole vocabulary), most likely first. `scratch` is reused between calls.
pub fn top_logprobs(logits: &[f32], k: usize, scratch: &mut Vec<(u32, f32)>) -> Vec<(u32, f32)> {
    let m = logits.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    let lse = m + logits
        .iter()
        .map(|&v| ((v - m) as f64).exp())
        .sum::<f64>()
        .ln() as f32;
    scratch.clear();
    scratch.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
    let k = k.min(scratch.len());
    if k == 0 {
        return vec![];
    }
    let by = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1);
    scratch.select_nth_unstable_by(k - 1, by);
    scratch.truncate(k);
    scratch.sort_unstable_by(by);
    scratch.iter().map(|&(i, l)| (i, l - lse)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        (0..1000)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0)
            .collect()
    }

    #[test]
    fn greedy_is_argmax() {
        let l = logits();
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&l), argmax(&l));
    }

    #[test]
    fn same_seed_same_tokens_different_seed_differs() {
        let l = logits();
        let p = SamplingParams {
            temperature: 1.5,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: Some(7),
            ..Default::default()
        };
        let run = |p: &SamplingParams| {
            let mut s = Sampler::new(p.clone());
            (0..50).map(|_| s.sample(&l)).collect::<Vec<_>>()
        };
        assert_eq!(run(&p), run(&p));
        assert_ne!(
            run(&p),
            run(&SamplingParams {
                seed: Some(8),
                ..p.clone()
            })
        );
    }

    #[test]
    fn top_k_one_is_greedy_and_top_k_bounds_the_support() {
        let l = logits();
        let mut s = Sampler::new(SamplingParams {
            temperature: 5.0,
            top_k: 1,
            seed: Some(1),
            ..Default::default()
        });
        assert_eq!(s.sample(&l), argmax(&l));
        let mut s = Sampler::new(SamplingParams {
            temperature: 100.0,
            top_k: 3,
            top_p: 1.0,
            min_p: 0.0,
            seed: Some(1),
            ..Default::default()
        });
        let mut sorted: Vec<u32> = (0..1000).collect();
        sorted.sort_by(|a, b| l[*b as usize].total_cmp(&l[*a as usize]));
        for _ in 0..200 {
            assert!(sorted[..3].contains(&s.sample(&l)));
        }
    }

    #[test]
    fn min_p_and_top_p_cut_the_tail() {
        let mut l = vec![0.0f32; 100];
        l[5] = 10.0;
        l[6] = 9.5;
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.1,
            seed: Some(3),
            ..Default::default()
        });
        for _ in 0..100 {
            assert!([5, 6].contains(&s.sample(&l)));
        }
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            min_p: 0.0,
            seed: Some(3),
            ..Default::default()
        });
        for _ in 0..100 {
            assert_eq!(s.sample(&l), 5);
        }
    }

    #[test]
    fn penalties_change_the_greedy_choice() {
        let mut l = vec![0.0f32; 10];
        l[2] = 2.0;
        l[3] = 1.9;
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.0,
            repeat_penalty: 1.5,
            ..Default::default()
        });
        s.accept(2);
        assert_eq!(s.sample(&l), 3, "2.0/1.5 < 1.9");
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.0,
            presence_penalty: 0.5,
            ..Default::default()
        });
        s.accept(2);
        assert_eq!(s.sample(&l), 3);
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.0,
            frequency_penalty: 0.05,
            ..Default::default()
        });
        s.accept(2);
        assert_eq!(s.sample(&l), 2, "one occurrence: 1.95 > 1.9");
        s.accept(2);
        s.accept(2);
        assert_eq!(s.sample(&l), 3, "three occurrences: 1.85 < 1.9");
    }

    #[test]
    fn logprobs_are_normalised() {
        let l = logits();
        let mut scratch = vec![];
        let top = top_logprobs(&l, 5, &mut scratch);
        assert_eq!(top.len(), 5);
        assert_eq!(top[0].0, argmax(&l));
        let total: f64 = l
            .iter()
            .map(|&v| ((v - l[top[0].0 as usize]) as f64).exp())
            .sum();
        assert!((top[0].1 as f64 + total.ln()).abs() < 1e-4);
        assert!(top.windows(2).all(|w| w[0].1 >= w[1].1));
    }
}
