//! The Mamba-2 mixer of hybrid models (Nemotron-H): input projection into `z`, `[x | B | C]`
//! and the time steps, the causal convolution with its rolling per-sequence state, the
//! selective scan with grouped B/C and the `D` skip, the `z` gate, grouped RMS norm and the
//! output projection.

use engine_core::{Activation, Backend, DType, SeqRun, SsmScanSpec, Tensor, Weight};

use crate::context::{LayerMemory, LayerRecurrent};
use crate::error::{ModelError, Result};
use crate::hparams::SsmHParams;
use crate::weights::WeightLoader;

/// One Mamba-2 layer's weights.
pub struct MambaWeights {
    in_z: Weight,
    in_xbc: Weight,
    in_dt: Weight,
    conv: Weight,
    conv_b: Option<Weight>,
    dt_b: Weight,
    a: Weight,
    d: Weight,
    norm: Option<Weight>,
    out: Weight,
}

impl MambaWeights {
    /// Loads layer `i`'s `ssm_*` tensors; `ssm_in` is split by rows into its three parts.
    pub fn load(
        wl: &mut WeightLoader,
        i: usize,
        ssm: &SsmHParams,
        n_embd: usize,
    ) -> Result<MambaWeights> {
        let t = |s: &str| format!("blk.{i}.{s}");
        let (di, cd, nh) = (ssm.d_inner, ssm.conv_dim(), ssm.n_head);
        let name = t("ssm_in.weight");
        let parts = wl
            .split_rows(&name, Some(&[di + cd + nh, n_embd]), &[di, cd, nh])?
            .ok_or_else(|| ModelError::Tensor {
                name: name.clone(),
                problem: "required by the architecture but missing from the file".into(),
            })?;
        let mut p = parts.into_iter();
        let (in_z, in_xbc, in_dt) = (
            p.next().expect("3 parts"),
            p.next().expect("3 parts"),
            p.next().expect("3 parts"),
        );
        Ok(MambaWeights {
            in_z,
            in_xbc,
            in_dt,
            conv: wl.get(&t("ssm_conv1d.weight"), Some(&[cd, ssm.d_conv]))?,
            conv_b: wl.opt(&t("ssm_conv1d.bias"), Some(&[cd]))?,
            dt_b: wl.get(&t("ssm_dt.bias"), Some(&[nh]))?,
            a: wl.get(&t("ssm_a"), Some(&[nh, 1]))?,
            d: wl.get(&t("ssm_d"), Some(&[nh, 1]))?,
            norm: wl.opt(
                &t("ssm_norm.weight"),
                Some(&[ssm.n_group, di / ssm.n_group]),
            )?,
            out: wl.get(&t("ssm_out.weight"), Some(&[n_embd, di]))?,
        })
    }
}

/// What a Mamba-2 layer keeps per sequence.
pub fn memory(ssm: &SsmHParams) -> LayerMemory {
    LayerMemory::Recurrent((ssm.d_conv - 1) * ssm.conv_dim(), ssm.d_inner * ssm.d_state)
}

/// Preallocated buffers of the Mamba-2 mixer.
pub struct MambaScratch {
    z: Tensor,
    xbc_in: Tensor,
    xbc: Tensor,
    dt: Tensor,
    y: Tensor,
}

impl MambaScratch {
    /// Buffers for up to `n_batch` tokens.
    pub fn new(be: &dyn Backend, ssm: &SsmHParams, n_batch: usize) -> Result<MambaScratch> {
        Ok(MambaScratch {
            z: be.alloc(DType::F32, &[n_batch, ssm.d_inner])?,
            xbc_in: be.alloc(DType::F32, &[n_batch, ssm.conv_dim()])?,
            xbc: be.alloc(DType::F32, &[n_batch, ssm.conv_dim()])?,
            dt: be.alloc(DType::F32, &[n_batch, ssm.n_head])?,
            y: be.alloc(DType::F32, &[n_batch, ssm.d_inner])?,
        })
    }

    /// Bytes these buffers take (the estimate before allocating).
    pub fn device_bytes(ssm: &SsmHParams, n_batch: usize) -> u64 {
        4 * (n_batch * (3 * ssm.d_inner + 2 * ssm.conv_dim() + ssm.n_head)) as u64
    }
}

impl MambaWeights {
    /// Runs the mixer on the normalised rows `h` into `out` (`[n, n_embd]`), advancing each
    /// sequence's state in `mem`. `runs` are the rows' sequence runs (with their state
    /// slots), `groups` their lengths.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        be: &dyn Backend,
        ssm: &SsmHParams,
        eps: f32,
        h: &Tensor,
        runs: &[SeqRun],
        groups: &[u32],
        mem: &mut LayerRecurrent,
        s: &mut MambaScratch,
        out: &mut Tensor,
    ) -> Result<()> {
        let n = h.rows();
        s.z.reshape(&[n, ssm.d_inner])?;
        s.xbc_in.reshape(&[n, ssm.conv_dim()])?;
        s.xbc.reshape(&[n, ssm.conv_dim()])?;
        s.dt.reshape(&[n, ssm.n_head])?;
        s.y.reshape(&[n, ssm.d_inner])?;
        be.matmul_groups(h, &self.in_z, &mut s.z, groups)?;
        be.matmul_groups(h, &self.in_xbc, &mut s.xbc_in, groups)?;
        be.matmul_groups(h, &self.in_dt, &mut s.dt, groups)?;
        be.ssm_conv(
            &s.xbc_in,
            &self.conv,
            self.conv_b.as_ref(),
            &mut mem.conv,
            runs,
            &mut s.xbc,
        )?;
        let spec = SsmScanSpec {
            n_head: ssm.n_head,
            head_dim: ssm.d_inner / ssm.n_head,
            d_state: ssm.d_state,
            n_group: ssm.n_group,
            a: &self.a,
            d: &self.d,
            dt_bias: &self.dt_b,
            runs,
        };
        be.ssm_scan(&s.xbc, &s.dt, &mut mem.ssm, &spec, &mut s.y)?;
        // y * silu(z)
        be.glu(Activation::Silu, &mut s.z, &s.y)?;
        if let Some(w) = &self.norm {
            be.rms_norm_groups_inplace(&mut s.z, Some(w), ssm.d_inner / ssm.n_group, eps)?;
        }
        be.matmul_groups(&s.z, &self.out, out, groups)?;
        Ok(())
    }
}
