//! Dense feed-forward blocks: gated (SwiGLU, GEGLU; the gate as its own matrix or fused with
//! the up projection, as Phi-3 stores it) or ungated (squared ReLU), with optional biases.
//! Also the shared expert of MoE layers.

use engine_core::{Activation, Backend, Tensor, Weight};

use crate::error::{ModelError, Result};
use crate::weights::WeightLoader;

/// One dense feed-forward block's weights.
pub struct DenseFfn {
    /// Gate projection `[n_ff, n_embd]` (absent for ungated activations).
    pub gate: Option<Weight>,
    /// Up projection `[n_ff, n_embd]`.
    pub up: Weight,
    /// Down projection `[n_embd, n_ff]`.
    pub down: Weight,
    /// Gate bias.
    pub b_gate: Option<Weight>,
    /// Up bias.
    pub b_up: Option<Weight>,
    /// Down bias.
    pub b_down: Option<Weight>,
}

/// True for activations that multiply a gate with an up projection.
pub fn is_gated(act: Activation) -> bool {
    !matches!(act, Activation::ReluSquared)
}

impl DenseFfn {
    /// Loads `blk.{i}.{gate,up,down}{suffix}` with hidden width `n_ff`: a separate gate, a
    /// gate fused in front of the up rows (`up` of `2 * n_ff` rows), or no gate for an
    /// ungated activation.
    pub fn load(
        wl: &mut WeightLoader,
        i: usize,
        suffix: &str,
        n_embd: usize,
        n_ff: usize,
        act: Activation,
    ) -> Result<DenseFfn> {
        let t = |s: &str| format!("blk.{i}.ffn_{s}{suffix}");
        let gated = is_gated(act);
        let gate = wl.opt(&format!("{}.weight", t("gate")), Some(&[n_ff, n_embd]))?;
        let up_name = format!("{}.weight", t("up"));
        let (gate, up) = match gate {
            Some(g) => (Some(g), wl.get(&up_name, Some(&[n_ff, n_embd]))?),
            None if gated => {
                let parts = wl
                    .split_rows(&up_name, Some(&[2 * n_ff, n_embd]), &[n_ff, n_ff])
                    .map_err(|e| match e {
                        ModelError::Tensor { name, problem } => ModelError::Tensor {
                            name,
                            problem: format!(
                                "{problem} (no {} for the gated activation, so the up \
                                 projection must hold gate and up rows)",
                                t("gate")
                            ),
                        },
                        other => other,
                    })?
                    .ok_or_else(|| ModelError::Tensor {
                        name: up_name.clone(),
                        problem: "required by the architecture but missing from the file".into(),
                    })?;
                let mut it = parts.into_iter();
                (it.next(), it.next().expect("two parts"))
            }
            None => (None, wl.get(&up_name, Some(&[n_ff, n_embd]))?),
        };
        Ok(DenseFfn {
            gate,
            up,
            down: wl.get(&format!("{}.weight", t("down")), Some(&[n_embd, n_ff]))?,
            b_gate: wl.opt(&format!("{}.bias", t("gate")), Some(&[n_ff]))?,
            b_up: wl.opt(&format!("{}.bias", t("up")), Some(&[n_ff]))?,
            b_down: wl.opt(&format!("{}.bias", t("down")), Some(&[n_embd]))?,
        })
    }

    /// Hidden width.
    pub fn n_ff(&self) -> usize {
        self.up.rows()
    }

    /// `out = down(act(gate(h)) * up(h))` for the rows of `h`; `gate` and `up` are scratch
    /// of at least `[h.rows(), n_ff]`, `groups` the rows' sequence runs.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        be: &dyn Backend,
        act: Activation,
        h: &Tensor,
        gate: &mut Tensor,
        up: &mut Tensor,
        out: &mut Tensor,
        groups: &[u32],
    ) -> Result<()> {
        let (n, ff) = (h.rows(), self.n_ff());
        gate.reshape(&[n, ff])?;
        up.reshape(&[n, ff])?;
        be.matmul_groups(h, &self.up, up, groups)?;
        if let Some(b) = &self.b_up {
            be.add_bias(up, b)?;
        }
        match &self.gate {
            Some(g) => {
                be.matmul_groups(h, g, gate, groups)?;
                if let Some(b) = &self.b_gate {
                    be.add_bias(gate, b)?;
                }
                be.glu(act, gate, up)?;
                be.matmul_groups(gate, &self.down, out, groups)?;
            }
            None => {
                be.glu(act, up, gate)?;
                be.matmul_groups(up, &self.down, out, groups)?;
            }
        }
        if let Some(b) = &self.b_down {
            be.add_bias(out, b)?;
        }
        Ok(())
    }
}
