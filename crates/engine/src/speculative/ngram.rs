//! Prompt-lookup drafting: no second model. The last `n` tokens of the sequence are looked
//! up earlier in the sequence (prompt and generated text alike); the tokens that followed
//! their most recent earlier occurrence are proposed. The longest `n` in
//! `[n_min, n_max]` that matches wins. This is what makes code editing, summaries and RAG
//! answers that quote their context fast: the continuation is already in the context.
//!
//! The search walks the history backwards, `O(len * n_max)` comparisons per step (a few
//! microseconds for thousands of tokens), and keeps no state between steps.

use super::{Draft, DraftRequest, Drafter, DrafterKind};
use crate::error::Result;

/// Settings of the lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NgramParams {
    /// Shortest suffix matched.
    pub n_min: usize,
    /// Longest suffix matched (tried first).
    pub n_max: usize,
}

impl Default for NgramParams {
    fn default() -> Self {
        NgramParams { n_min: 2, n_max: 4 }
    }
}

/// The prompt-lookup drafter.
#[derive(Clone, Debug, Default)]
pub struct NgramDrafter {
    params: NgramParams,
}

impl NgramDrafter {
    /// A drafter matching suffixes of `params.n_min..=params.n_max` tokens.
    pub fn new(params: NgramParams) -> NgramDrafter {
        NgramDrafter {
            params: NgramParams {
                n_min: params.n_min.max(1),
                n_max: params.n_max.max(params.n_min.max(1)),
            },
        }
    }
}

/// The tokens following the most recent earlier occurrence of `history`'s last `n` tokens,
/// at most `max` of them.
pub fn lookup(history: &[u32], n: usize, max: usize) -> Option<&[u32]> {
    let len = history.len();
    if n == 0 || len <= n {
        return None;
    }
    let suffix = &history[len - n..];
    // candidate starts j with history[j..j+n] == suffix and j + n < len (something follows)
    (0..len - n).rev().find_map(|j| {
        (history[j..j + n] == *suffix).then(|| {
            let from = j + n;
            &history[from..(from + max).min(len)]
        })
    })
}

impl Drafter for NgramDrafter {
    fn kind(&self) -> DrafterKind {
        DrafterKind::Ngram
    }

    fn draft(&mut self, req: &DraftRequest<'_>, out: &mut Draft) -> Result<()> {
        out.clear();
        if req.max == 0 {
            return Ok(());
        }
        for n in (self.params.n_min..=self.params.n_max).rev() {
            if let Some(found) = lookup(req.history, n, req.max) {
                out.tokens.extend_from_slice(found);
                return Ok(());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SamplingParams;

    #[test]
    fn proposes_what_followed_the_latest_match() {
        let h = [1, 2, 3, 4, 5, 9, 2, 3, 7, 8, 1, 2, 3];
        // "2 3" occurs at 1 and 6; the latest earlier one (6) is followed by 7 8 1 2 3
        assert_eq!(lookup(&h, 2, 3), Some(&[7, 8, 1][..]));
        // "1 2 3" occurs at 0 only: followed by 4 5 9
        assert_eq!(lookup(&h, 3, 3), Some(&[4, 5, 9][..]));
        assert_eq!(lookup(&h, 4, 3), None);
        assert_eq!(lookup(&h, 2, 100).unwrap().len(), 5, "stops at the end");
        let mut d = NgramDrafter::new(NgramParams { n_min: 2, n_max: 4 });
        let mut out = Draft::default();
        let sp = SamplingParams::greedy();
        let req = DraftRequest {
            seq: 0,
            history: &h,
            max: 2,
            sampling: &sp,
        };
        d.draft(&req, &mut out).unwrap();
        assert_eq!(out.tokens, [4, 5], "the longest match wins");
        d.draft(
            &DraftRequest {
                history: &[5, 6, 7],
                ..req
            },
            &mut out,
        )
        .unwrap();
        assert!(out.is_empty());
        // a repeated token proposes its own continuation (runs of the same token)
        assert_eq!(lookup(&[4, 4, 4], 2, 4), Some(&[4][..]));
    }
}
