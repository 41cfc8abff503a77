//! A batch of tokens to evaluate: token id, position, sequence, and whether its logits are
//! wanted (llama.cpp's `llama_batch`), plus whether a token must get exactly the arithmetic
//! of a one-token step (drafted tokens being verified, see [`Batch::push_verify`]).

/// Tokens for one forward pass, possibly from several sequences.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// Token ids.
    pub tokens: Vec<u32>,
    /// Position of each token in its sequence.
    pub pos: Vec<u32>,
    /// Sequence of each token (a context slot index).
    pub seq: Vec<u32>,
    /// Whether logits are produced for each token.
    pub output: Vec<bool>,
    /// Whether each token is evaluated as if it were a one-token step of its own: it forms
    /// its own kernel group for matmuls and attention instead of sharing its sequence run's
    /// (batched) routines, so its logits are bit-identical to plain one-token decoding.
    pub single: Vec<bool>,
}

impl Batch {
    /// An empty batch with room for `n` tokens.
    pub fn with_capacity(n: usize) -> Batch {
        Batch {
            tokens: Vec::with_capacity(n),
            pos: Vec::with_capacity(n),
            seq: Vec::with_capacity(n),
            output: Vec::with_capacity(n),
            single: Vec::with_capacity(n),
        }
    }

    /// Removes every token (keeps the allocations).
    pub fn clear(&mut self) {
        self.tokens.clear();
        self.pos.clear();
        self.seq.clear();
        self.output.clear();
        self.single.clear();
    }

    /// Appends one token.
    pub fn push(&mut self, token: u32, pos: u32, seq: u32, output: bool) {
        self.tokens.push(token);
        self.pos.push(pos);
        self.seq.push(seq);
        self.output.push(output);
        self.single.push(false);
    }

    /// Appends consecutive tokens of one sequence starting at `start`; logits for the last
    /// one only, or for all when `all_logits`.
    pub fn push_seq(&mut self, tokens: &[u32], start: u32, seq: u32, all_logits: bool) {
        for (i, &t) in tokens.iter().enumerate() {
            self.push(
                t,
                start + i as u32,
                seq,
                all_logits || i + 1 == tokens.len(),
            );
        }
    }

    /// Appends consecutive tokens of one sequence starting at `start`, each with logits and
    /// each evaluated with a one-token step's arithmetic: the verification of drafted tokens
    /// in speculative decoding. One forward pass scores them all, yet every row's logits
    /// equal, bit for bit, what decoding the tokens one at a time would give, so greedy
    /// speculative decoding reproduces plain decoding exactly.
    pub fn push_verify(&mut self, tokens: &[u32], start: u32, seq: u32) {
        for (i, &t) in tokens.iter().enumerate() {
            self.push_single(t, start + i as u32, seq, true);
        }
    }

    /// Appends one token evaluated with a one-token step's arithmetic (see
    /// [`Batch::single`]).
    pub fn push_single(&mut self, token: u32, pos: u32, seq: u32, output: bool) {
        self.push(token, pos, seq, output);
        *self.single.last_mut().expect("just pushed") = true;
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Number of tokens whose logits are wanted.
    pub fn n_outputs(&self) -> usize {
        self.output.iter().filter(|&&o| o).count()
    }
}
