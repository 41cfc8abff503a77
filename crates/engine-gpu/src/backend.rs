//! [`GpuBackend`]: every `Backend` operation as launches of the shared kernels, through a
//! [`Driver`]. Shapes are checked here, on the host, before anything is queued; host index
//! arrays (token ids, positions, cache rows) are copied into small reusable device buffers.
//!
//! Weights keep their file layout on the device (no repacking). Vectors that are not
//! multiplied (norm weights, biases, sinks, SSM parameters) are stored as f32.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use engine_core::backend::SsmScanSpec;
use engine_core::backend::{Activation, AttentionSpec, ExpertSpan, RopeMode, RopeSpec, SeqRun};
use engine_core::{Backend, DType, DeviceBuffer, Error, HostBytes, Result, Shape, Tensor, Weight};

use crate::driver::{DevPtr, Driver, FnHandle};

/// Weight formats the matmul and embedding kernels decode, with their kernel suffixes.
pub const FORMATS: &[(DType, &str)] = &[
    (DType::F32, "f32"),
    (DType::F16, "f16"),
    (DType::BF16, "bf16"),
    (DType::Q4_0, "q4_0"),
    (DType::Q4_1, "q4_1"),
    (DType::Q5_0, "q5_0"),
    (DType::Q5_1, "q5_1"),
    (DType::Q8_0, "q8_0"),
    (DType::Q2_K, "q2_k"),
    (DType::Q3_K, "q3_k"),
    (DType::Q4_K, "q4_k"),
    (DType::Q5_K, "q5_k"),
    (DType::Q6_K, "q6_k"),
    (DType::IQ4_NL, "iq4_nl"),
    (DType::IQ4_XS, "iq4_xs"),
    (DType::MXFP4, "mxfp4"),
];

/// Activation rows one matmul block handles (`MM_COLS` in matmul.cu).
const MM_COLS: u32 = 8;
/// Warps per matmul block (one weight row each).
const MM_WARPS: u32 = 4;
/// Threads per block for row-wise kernels.
const ROW_THREADS: u32 = 256;
/// Warps per attention block (`ATT_WARPS` in attention.cu).
const ATT_WARPS: u32 = 8;
/// Largest head size the attention kernel holds in registers (16 values per lane).
const ATT_MAX_PER_LANE: usize = 16;

/// Device memory owned by the backend.
pub struct GpuBuf {
    ptr: DevPtr,
    bytes: usize,
    drv: Arc<dyn Driver>,
}

impl GpuBuf {
    fn new(drv: &Arc<dyn Driver>, bytes: usize) -> Result<GpuBuf> {
        let ptr = drv.alloc(bytes.max(1))?;
        Ok(GpuBuf {
            ptr,
            bytes,
            drv: drv.clone(),
        })
    }

    /// The device address.
    pub fn ptr(&self) -> DevPtr {
        self.ptr
    }
}

impl Drop for GpuBuf {
    fn drop(&mut self) {
        // SAFETY: the pointer came from this driver's alloc and is dropped once.
        unsafe { self.drv.free(self.ptr) }
    }
}

impl DeviceBuffer for GpuBuf {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
    fn capacity_bytes(&self) -> usize {
        self.bytes
    }
}

fn dev(b: &dyn DeviceBuffer) -> Result<DevPtr> {
    b.as_any()
        .downcast_ref::<GpuBuf>()
        .map(|g| g.ptr)
        .ok_or(Error::WrongBackend("GPU"))
}

fn tptr(t: &Tensor) -> Result<DevPtr> {
    dev(t.buffer())
}

fn wptr(w: &Weight) -> Result<DevPtr> {
    dev(w.buffer())
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::Shape(what()))
    }
}

fn need_f32(t: &Tensor, what: &str) -> Result<()> {
    check(t.dtype() == DType::F32, || {
        format!("{what} must be F32, not {}", t.dtype())
    })
}

fn f32_weight(w: &Weight, what: &str) -> Result<DevPtr> {
    if w.dtype() != DType::F32 {
        return Err(Error::Backend(format!(
            "{what} '{}' is {} on the GPU; it must be F32",
            w.name(),
            w.dtype()
        )));
    }
    wptr(w)
}

/// A kernel argument: the address of a value that lives until the launch returns.
fn a<T>(v: &T) -> *mut c_void {
    v as *const T as *mut c_void
}

fn blocks_for(n: usize, threads: u32) -> Result<u32> {
    u32::try_from(n.div_ceil(threads as usize).max(1))
        .map_err(|_| Error::Shape(format!("{n} elements are too many for one launch")))
}

fn i32_of(n: usize, what: &str) -> Result<i32> {
    i32::try_from(n).map_err(|_| Error::Shape(format!("{what} {n} does not fit the kernels")))
}

struct Kernels {
    matmul: HashMap<DType, FnHandle>,
    embed: HashMap<DType, FnHandle>,
    rms_norm: FnHandle,
    rms_norm_groups: FnHandle,
    add: FnHandle,
    scale: FnHandle,
    scale_rows: FnHandle,
    add_bias: FnHandle,
    glu: FnHandle,
    rope: FnHandle,
    kv_store_f32: FnHandle,
    kv_store_f16: FnHandle,
    move_rows: FnHandle,
    weighted_row_sum: FnHandle,
    attention_f32: FnHandle,
    attention_f16: FnHandle,
    ssm_conv: FnHandle,
    ssm_scan: FnHandle,
}

impl Kernels {
    fn resolve(d: &dyn Driver) -> Result<Kernels> {
        let mut matmul = HashMap::new();
        let mut embed = HashMap::new();
        for &(dt, suffix) in FORMATS {
            matmul.insert(dt, d.function(&format!("matmul_{suffix}"))?);
            embed.insert(dt, d.function(&format!("embed_{suffix}"))?);
        }
        Ok(Kernels {
            matmul,
            embed,
            rms_norm: d.function("rms_norm")?,
            rms_norm_groups: d.function("rms_norm_groups")?,
            add: d.function("add")?,
            scale: d.function("scale")?,
            scale_rows: d.function("scale_rows")?,
            add_bias: d.function("add_bias")?,
            glu: d.function("glu")?,
            rope: d.function("rope")?,
            kv_store_f32: d.function("kv_store_f32")?,
            kv_store_f16: d.function("kv_store_f16")?,
            move_rows: d.function("move_rows")?,
            weighted_row_sum: d.function("weighted_row_sum")?,
            attention_f32: d.function("attention_f32")?,
            attention_f16: d.function("attention_f16")?,
            ssm_conv: d.function("ssm_conv")?,
            ssm_scan: d.function("ssm_scan")?,
        })
    }
}

/// Reusable device buffers for host index arrays, one per kind of operation, each with a
/// host copy of what it holds: the layers of one step stage the same positions, cache rows
/// and query spans, so only the first layer uploads them.
struct Staging {
    slots: Vec<(Option<GpuBuf>, Vec<u32>)>,
}

/// Staging slots, one per kind of operation (an operation staging two arrays uses two).
mod slot {
    pub const ROWS: usize = 0;
    pub const SCALES: usize = 1;
    pub const POSITIONS: usize = 2;
    pub const CACHE_ROWS: usize = 3;
    pub const QUERIES: usize = 4;
    pub const IDS: usize = 5;
    pub const SSM_RUNS: usize = 6;
    pub const COUNT: usize = 7;
}

/// The GPU backend over a [`Driver`].
pub struct GpuBackend {
    drv: Arc<dyn Driver>,
    k: Kernels,
    staging: Mutex<Staging>,
}

impl GpuBackend {
    /// A backend on `driver`, whose module must hold every kernel of `kernels/cuda`.
    /// With `ENGINE_GPU_PROFILE=1` every operation is timed ([`crate::profile`]).
    pub fn new(driver: Arc<dyn Driver>) -> Result<GpuBackend> {
        let driver = crate::profile::ProfilingDriver::wrap_if_asked(driver);
        let k = Kernels::resolve(driver.as_ref())?;
        Ok(GpuBackend {
            drv: driver,
            k,
            staging: Mutex::new(Staging {
                slots: (0..slot::COUNT).map(|_| (None, Vec::new())).collect(),
            }),
        })
    }

    /// The driver.
    pub fn driver(&self) -> &Arc<dyn Driver> {
        &self.drv
    }

    /// Copies host words into staging slot `slot` and returns its device address. The
    /// copy is ordered after earlier launches, so a slot can be refilled by the next call.
    /// Words equal to what the slot already holds are not copied again (nothing else writes
    /// a staging buffer), which saves a synchronous copy per layer.
    fn stage(&self, slot: usize, words: &[u32]) -> Result<DevPtr> {
        let bytes = std::mem::size_of_val(words);
        let mut st = self.staging.lock().map_err(|_| {
            Error::Backend("GPU staging buffers poisoned by an earlier panic".into())
        })?;
        let (buf, held) = &mut st.slots[slot];
        if buf.as_ref().is_none_or(|b| b.bytes < bytes) {
            held.clear();
            *buf = Some(GpuBuf::new(&self.drv, bytes.next_power_of_two().max(4096))?);
        }
        let ptr = buf.as_ref().expect("slot filled above").ptr;
        if held.as_slice() != words {
            // SAFETY: u32 words viewed as bytes.
            let src = unsafe { std::slice::from_raw_parts(words.as_ptr() as *const u8, bytes) };
            held.clear();
            self.drv.upload(ptr, src)?;
            held.extend_from_slice(words);
        }
        Ok(ptr)
    }

    fn stage_f32(&self, slot: usize, v: &[f32]) -> Result<DevPtr> {
        // SAFETY: f32 and u32 have the same size and alignment.
        let words = unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u32, v.len()) };
        self.stage(slot, words)
    }

    fn launch(
        &self,
        f: FnHandle,
        grid: [u32; 3],
        block: [u32; 3],
        args: &mut [*mut c_void],
    ) -> Result<()> {
        // SAFETY: every launch site passes arguments matching its kernel's signature in
        // kernels/cuda, with device pointers checked against the tensors' shapes.
        unsafe { self.drv.launch(f, grid, block, args) }
    }

    fn elementwise(&self, f: FnHandle, n: usize, args: &mut [*mut c_void]) -> Result<()> {
        self.launch(f, [blocks_for(n, 256)?, 1, 1], [256, 1, 1], args)
    }

    fn matmul_raw(
        &self,
        x: DevPtr,
        w: &Weight,
        w_offset_rows: usize,
        out: DevPtr,
        n: usize,
        m: usize,
    ) -> Result<()> {
        let k = w.cols();
        let f = *self
            .k
            .matmul
            .get(&w.dtype())
            .ok_or(Error::UnsupportedType(w.dtype()))?;
        let row_bytes = w
            .dtype()
            .row_bytes(k)
            .ok_or(Error::UnsupportedType(w.dtype()))? as i64;
        let wp = wptr(w)? + (w_offset_rows as u64) * row_bytes as u64;
        let (ni, mi, ki) = (
            i32_of(n, "rows")?,
            i32_of(m, "outputs")?,
            i32_of(k, "width")?,
        );
        let warp = self.drv.warp_size();
        let grid = [blocks_for(m, MM_WARPS)?, blocks_for(n, MM_COLS)?, 1];
        self.launch(
            f,
            grid,
            [MM_WARPS * warp, 1, 1],
            &mut [
                a(&wp),
                a(&row_bytes),
                a(&x),
                a(&out),
                a(&ni),
                a(&mi),
                a(&ki),
            ],
        )
    }

    fn unary_scale(&self, x: DevPtr, n: usize, s: f32) -> Result<()> {
        let n64 = n as i64;
        self.elementwise(self.k.scale, n, &mut [a(&x), a(&s), a(&n64)])
    }
}

impl Backend for GpuBackend {
    fn name(&self) -> &str {
        self.drv.name()
    }

    fn describe(&self) -> String {
        self.drv.describe()
    }

    fn supports(&self, dtype: DType) -> bool {
        FORMATS.iter().any(|&(d, _)| d == dtype)
    }

    fn load_weight(
        &self,
        name: &str,
        dtype: DType,
        shape: &[usize],
        data: HostBytes,
    ) -> Result<Weight> {
        let sh = Shape::new(shape)?;
        let bytes = engine_core::tensor::tensor_bytes(dtype, &sh)?;
        check(data.len() >= bytes, || {
            format!("{name}: {} bytes for {dtype} {shape:?}", data.len())
        })?;
        let vector = shape.len() == 1 || !sh.cols().is_multiple_of(16);
        if vector && dtype != DType::F32 {
            // Not a matmul operand: keep it as f32 so the elementwise kernels can use it.
            let n = sh.numel();
            let vals = engine_core::quant::dequantize_to_vec(dtype, &data.as_slice()[..bytes], n)?;
            let buf = GpuBuf::new(&self.drv, n * 4)?;
            // SAFETY: f32 values viewed as bytes.
            let raw = unsafe { std::slice::from_raw_parts(vals.as_ptr() as *const u8, n * 4) };
            self.drv.upload(buf.ptr, raw)?;
            return Ok(Weight::from_buffer(name, DType::F32, sh, Arc::new(buf)));
        }
        if !vector && !self.supports(dtype) {
            return Err(Error::UnsupportedType(dtype));
        }
        let buf = GpuBuf::new(&self.drv, bytes)?;
        self.drv.upload(buf.ptr, &data.as_slice()[..bytes])?;
        Ok(Weight::from_buffer(name, dtype, sh, Arc::new(buf)))
    }

    fn alloc(&self, dtype: DType, shape: &[usize]) -> Result<Tensor> {
        let sh = Shape::new(shape)?;
        let bytes = engine_core::tensor::tensor_bytes(dtype, &sh)?;
        let buf = GpuBuf::new(&self.drv, bytes)?;
        self.drv.zero(buf.ptr, bytes)?;
        Tensor::from_buffer(dtype, sh, Box::new(buf))
    }

    fn write_f32(&self, dst: &mut Tensor, src: &[f32]) -> Result<()> {
        need_f32(dst, "write_f32 target")?;
        check(src.len() <= dst.buffer().capacity_bytes() / 4, || {
            format!("write of {} values into {:?}", src.len(), dst.shape())
        })?;
        // SAFETY: f32 values viewed as bytes.
        let raw = unsafe { std::slice::from_raw_parts(src.as_ptr() as *const u8, src.len() * 4) };
        self.drv.upload(tptr(dst)?, raw)
    }

    fn read_f32(&self, src: &Tensor, dst: &mut [f32]) -> Result<()> {
        need_f32(src, "read_f32 source")?;
        check(dst.len() <= src.buffer().capacity_bytes() / 4, || {
            format!("read of {} values from {:?}", dst.len(), src.shape())
        })?;
        // SAFETY: f32 values viewed as bytes.
        let raw =
            unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr() as *mut u8, dst.len() * 4) };
        self.drv.download(tptr(src)?, raw)
    }

    fn embed(&self, table: &Weight, ids: &[u32], out: &mut Tensor) -> Result<()> {
        let cols = table.cols();
        check(out.cols() == cols && out.rows() == ids.len(), || {
            format!(
                "embed into {:?} from {} ids of width {cols}",
                out.shape(),
                ids.len()
            )
        })?;
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= table.rows()) {
            return Err(Error::Shape(format!(
                "token id {bad} is outside the vocabulary of {}",
                table.rows()
            )));
        }
        check(cols.is_multiple_of(16), || {
            format!("embedding width {cols} is not a multiple of 16")
        })?;
        if ids.is_empty() {
            return Ok(());
        }
        let f = *self
            .k
            .embed
            .get(&table.dtype())
            .ok_or(Error::UnsupportedType(table.dtype()))?;
        let row_bytes = table
            .dtype()
            .row_bytes(cols)
            .ok_or(Error::UnsupportedType(table.dtype()))? as i64;
        let idp = self.stage(slot::IDS, ids)?;
        let (tp, op, k) = (wptr(table)?, tptr(out)?, i32_of(cols, "width")?);
        self.launch(
            f,
            [ids.len() as u32, 1, 1],
            [128, 1, 1],
            &mut [a(&tp), a(&row_bytes), a(&idp), a(&op), a(&k)],
        )
    }

    fn matmul_groups(
        &self,
        x: &Tensor,
        w: &Weight,
        out: &mut Tensor,
        groups: &[u32],
    ) -> Result<()> {
        let (n, k, m) = (x.rows(), x.cols(), w.rows());
        check(w.cols() == k && out.cols() == m && out.rows() == n, || {
            format!(
                "matmul {:?} x {}{:?}^T into {:?}",
                x.shape(),
                w.name(),
                w.shape(),
                out.shape()
            )
        })?;
        check(
            groups.iter().map(|&g| g as usize).sum::<usize>() == n,
            || format!("row groups {groups:?} do not partition {n} rows"),
        )?;
        check(k.is_multiple_of(16), || {
            format!("matmul width {k} is not a multiple of 16")
        })?;
        need_f32(x, "matmul input")?;
        if n == 0 {
            return Ok(());
        }
        // Each output is one row's dot product: grouping cannot change the numbers.
        self.matmul_raw(tptr(x)?, w, 0, tptr(out)?, n, m)
    }

    fn matmul_experts(
        &self,
        x: &Tensor,
        weights: &[Weight],
        biases: Option<&[Weight]>,
        spans: &[ExpertSpan],
        groups: &[u32],
        out: &mut Tensor,
    ) -> Result<()> {
        let n = x.rows();
        check(
            spans.iter().map(|s| s.rows as usize).sum::<usize>() == n
                && groups.iter().map(|&g| g as usize).sum::<usize>() == n,
            || format!("expert spans {spans:?} do not cover {n} rows"),
        )?;
        need_f32(x, "expert input")?;
        let (xp, op) = (tptr(x)?, tptr(out)?);
        let (k, m) = (x.cols(), out.cols());
        let mut r0 = 0usize;
        for s in spans {
            let e = s.expert as usize;
            let w = weights
                .get(e)
                .ok_or_else(|| Error::Shape(format!("expert {e} of {}", weights.len())))?;
            check(w.cols() == k && w.rows() == m, || {
                format!("expert {e} weight {:?} for {k} -> {m}", w.shape())
            })?;
            let rows = s.rows as usize;
            if rows > 0 {
                let xo = xp + (r0 * k * 4) as u64;
                let oo = op + (r0 * m * 4) as u64;
                self.matmul_raw(xo, w, 0, oo, rows, m)?;
                if let Some(b) = biases {
                    let bw = b.get(e).ok_or_else(|| {
                        Error::Shape(format!("bias of expert {e} of {}", b.len()))
                    })?;
                    let bp = f32_weight(bw, "expert bias")?;
                    let (cols, cnt) = (i32_of(m, "width")?, (rows * m) as i64);
                    self.elementwise(
                        self.k.add_bias,
                        rows * m,
                        &mut [a(&oo), a(&bp), a(&cols), a(&cnt)],
                    )?;
                }
            }
            r0 += rows;
        }
        Ok(())
    }

    fn add_bias(&self, x: &mut Tensor, bias: &Weight) -> Result<()> {
        check(bias.shape().numel() == x.cols(), || {
            format!("bias {:?} for rows of {}", bias.shape(), x.cols())
        })?;
        need_f32(x, "add_bias target")?;
        let (xp, bp) = (tptr(x)?, f32_weight(bias, "bias")?);
        let n = x.shape().numel();
        let (cols, cnt) = (i32_of(x.cols(), "width")?, n as i64);
        self.elementwise(self.k.add_bias, n, &mut [a(&xp), a(&bp), a(&cols), a(&cnt)])
    }

    fn rms_norm(&self, x: &Tensor, w: Option<&Weight>, eps: f32, out: &mut Tensor) -> Result<()> {
        check(x.shape().dims() == out.shape().dims(), || {
            format!("rms_norm {:?} into {:?}", x.shape(), out.shape())
        })?;
        need_f32(x, "rms_norm input")?;
        let wp = match w {
            Some(w) => {
                check(w.shape().numel() == x.cols(), || {
                    format!("norm weight {:?} for rows of {}", w.shape(), x.cols())
                })?;
                f32_weight(w, "norm weight")?
            }
            None => 0,
        };
        if x.rows() == 0 {
            return Ok(());
        }
        let (xp, op, cols) = (tptr(x)?, tptr(out)?, i32_of(x.cols(), "width")?);
        self.launch(
            self.k.rms_norm,
            [x.rows() as u32, 1, 1],
            [ROW_THREADS, 1, 1],
            &mut [a(&xp), a(&wp), a(&eps), a(&op), a(&cols)],
        )
    }

    fn rms_norm_inplace(&self, x: &mut Tensor, w: Option<&Weight>, eps: f32) -> Result<()> {
        // The kernel reads a row fully before writing it, within one block: in place is safe.
        let cols = x.cols();
        self.rms_norm_groups_inplace(x, w, cols, eps)
    }

    fn add(&self, dst: &mut Tensor, src: &Tensor) -> Result<()> {
        check(dst.shape().numel() == src.shape().numel(), || {
            format!("add {:?} to {:?}", src.shape(), dst.shape())
        })?;
        need_f32(dst, "add target")?;
        let n = dst.shape().numel();
        let (dp, sp, cnt) = (tptr(dst)?, tptr(src)?, n as i64);
        self.elementwise(self.k.add, n, &mut [a(&dp), a(&sp), a(&cnt)])
    }

    fn scale(&self, x: &mut Tensor, s: f32) -> Result<()> {
        need_f32(x, "scale target")?;
        self.unary_scale(tptr(x)?, x.shape().numel(), s)
    }

    fn glu(&self, act: Activation, gate: &mut Tensor, up: &Tensor) -> Result<()> {
        need_f32(gate, "glu gate")?;
        let n = gate.shape().numel();
        let (code, alpha, limit): (i32, f32, f32) = match act {
            Activation::Silu => (0, 0.0, 0.0),
            Activation::GeluTanh => (1, 0.0, 0.0),
            Activation::ReluSquared => (2, 0.0, 0.0),
            Activation::SwigluOai { alpha, limit } => (3, alpha, limit),
        };
        if code != 2 {
            check(up.shape().numel() == n, || {
                format!("glu up {:?} for gate {:?}", up.shape(), gate.shape())
            })?;
        }
        let (gp, upp, cnt) = (tptr(gate)?, tptr(up)?, n as i64);
        self.elementwise(
            self.k.glu,
            n,
            &mut [a(&code), a(&alpha), a(&limit), a(&gp), a(&upp), a(&cnt)],
        )
    }

    fn rope(&self, x: &mut Tensor, pos: &[u32], spec: &RopeSpec) -> Result<()> {
        let n = x.rows();
        check(
            pos.len() == n
                && x.cols() == spec.n_head * spec.head_dim
                && spec.n_rot <= spec.head_dim
                && spec.n_rot.is_multiple_of(2),
            || {
                format!(
                    "rope of {:?} with {} positions and {spec:?}",
                    x.shape(),
                    pos.len()
                )
            },
        )?;
        need_f32(x, "rope input")?;
        let half = spec.n_rot / 2;
        if n == 0 || half == 0 {
            return Ok(());
        }
        let fp = match spec.freq_factors {
            Some(f) => {
                check(f.shape().numel() >= half, || {
                    format!("{} rope factors for {half} pairs", f.shape().numel())
                })?;
                f32_weight(f, "rope factors")?
            }
            None => 0,
        };
        let corr = if spec.ext_factor != 0.0 {
            spec.yarn_corr_dims()
        } else {
            [0.0, 0.0]
        };
        let pp = self.stage(slot::POSITIONS, pos)?;
        let xp = tptr(x)?;
        let mode: i32 = match spec.mode {
            RopeMode::Norm => 0,
            RopeMode::Neox => 1,
        };
        let (nh, hd, nr, nt) = (
            spec.n_head as i32,
            spec.head_dim as i32,
            spec.n_rot as i32,
            n as i32,
        );
        let total = n * spec.n_head * half;
        self.elementwise(
            self.k.rope,
            total,
            &mut [
                a(&xp),
                a(&pp),
                a(&fp),
                a(&mode),
                a(&nh),
                a(&hd),
                a(&nr),
                a(&spec.freq_base),
                a(&spec.freq_scale),
                a(&spec.ext_factor),
                a(&spec.attn_factor),
                a(&corr[0]),
                a(&corr[1]),
                a(&nt),
            ],
        )
    }

    fn kv_store(&self, cache: &mut Tensor, src: &Tensor, rows: &[u32]) -> Result<()> {
        let cols = cache.cols();
        check(src.cols() == cols && src.rows() == rows.len(), || {
            format!(
                "kv_store {:?} into cache {:?} at {} rows",
                src.shape(),
                cache.shape(),
                rows.len()
            )
        })?;
        if let Some(&bad) = rows.iter().find(|&&r| r as usize >= cache.rows()) {
            return Err(Error::Shape(format!(
                "cache row {bad} past the cache's {} rows",
                cache.rows()
            )));
        }
        need_f32(src, "kv_store source")?;
        let f = match cache.dtype() {
            DType::F32 => self.k.kv_store_f32,
            DType::F16 => self.k.kv_store_f16,
            other => return Err(Error::UnsupportedType(other)),
        };
        if rows.is_empty() {
            return Ok(());
        }
        let rp = self.stage(slot::CACHE_ROWS, rows)?;
        let (cp, sp, c) = (tptr(cache)?, tptr(src)?, i32_of(cols, "width")?);
        self.launch(
            f,
            [rows.len() as u32, 1, 1],
            [ROW_THREADS, 1, 1],
            &mut [a(&cp), a(&sp), a(&rp), a(&c)],
        )
    }

    fn kv_copy(
        &self,
        cache: &mut Tensor,
        src_start: usize,
        dst_start: usize,
        n: usize,
    ) -> Result<()> {
        let row_bytes = cache
            .dtype()
            .row_bytes(cache.cols())
            .ok_or(Error::UnsupportedType(cache.dtype()))?;
        let rows = cache.rows();
        check(src_start + n <= rows && dst_start + n <= rows, || {
            format!("kv_copy {src_start}+{n} -> {dst_start} in {rows} rows")
        })?;
        if n == 0 || src_start == dst_start {
            return Ok(());
        }
        let base = tptr(cache)?;
        let (s, d) = (src_start * row_bytes, dst_start * row_bytes);
        let len = n * row_bytes;
        if s.max(d) < s.min(d) + len {
            // Overlapping ranges: go through a temporary copy.
            let tmp = GpuBuf::new(&self.drv, len)?;
            self.drv.copy(tmp.ptr, base + s as u64, len)?;
            self.drv.copy(base + d as u64, tmp.ptr, len)
        } else {
            self.drv.copy(base + d as u64, base + s as u64, len)
        }
    }

    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        spec: &AttentionSpec,
        out: &mut Tensor,
    ) -> Result<()> {
        let n = spec.queries.len();
        let (nh, nkv, hd, hv) = (spec.n_head, spec.n_kv_head, spec.head_dim, spec.head_dim_v);
        check(nkv > 0 && nh.is_multiple_of(nkv), || {
            format!("{nh} query heads over {nkv} kv heads")
        })?;
        check(
            q.rows() == n && q.cols() == nh * hd && out.rows() == n && out.cols() == nh * hv,
            || {
                format!(
                    "attention q {:?} out {:?} for {n} queries of {nh}x{hd}",
                    q.shape(),
                    out.shape()
                )
            },
        )?;
        check(k.cols() >= nkv * hd && v.cols() >= nkv * hv, || {
            format!("cache rows {:?}/{:?} for {nkv}x{hd}", k.shape(), v.shape())
        })?;
        let warp = self.drv.warp_size() as usize;
        check(hd.max(hv) <= ATT_MAX_PER_LANE * warp, || {
            format!(
                "head size {} above the GPU kernel's {}",
                hd.max(hv),
                ATT_MAX_PER_LANE * warp
            )
        })?;
        for qp in spec.queries {
            check(
                ((qp.kv_base + qp.pos) as usize) < k.rows().min(v.rows()),
                || {
                    format!(
                        "query at cache row {} past {} rows",
                        qp.kv_base + qp.pos,
                        k.rows()
                    )
                },
            )?;
        }
        need_f32(q, "attention queries")?;
        let f = match (k.dtype(), v.dtype()) {
            (DType::F32, DType::F32) => self.k.attention_f32,
            (DType::F16, DType::F16) => self.k.attention_f16,
            (a, b) => {
                return Err(Error::Backend(format!(
                    "attention over a {a}/{b} cache is not supported on the GPU"
                )))
            }
        };
        if n == 0 {
            return Ok(());
        }
        let words: Vec<u32> = spec
            .queries
            .iter()
            .flat_map(|p| [p.kv_base, p.pos])
            .collect();
        let qpp = self.stage(slot::QUERIES, &words)?;
        let sp = match spec.sinks {
            Some(s) => {
                check(s.shape().numel() >= nh, || {
                    format!("{} sinks for {nh} heads", s.shape().numel())
                })?;
                f32_weight(s, "attention sinks")?
            }
            None => 0,
        };
        let (qp, kp, vp, op) = (tptr(q)?, tptr(k)?, tptr(v)?, tptr(out)?);
        let (nhi, nkvi, hdi, hvi) = (nh as i32, nkv as i32, hd as i32, hv as i32);
        let window: u32 = spec.window.unwrap_or(0);
        let (sk, sv) = (k.cols() as i64, v.cols() as i64);
        self.launch(
            f,
            [n as u32, nh as u32, 1],
            [ATT_WARPS * warp as u32, 1, 1],
            &mut [
                a(&qp),
                a(&kp),
                a(&vp),
                a(&op),
                a(&qpp),
                a(&sp),
                a(&nhi),
                a(&nkvi),
                a(&hdi),
                a(&hvi),
                a(&spec.scale),
                a(&spec.softcap),
                a(&window),
                a(&sk),
                a(&sv),
            ],
        )
    }

    fn gather_rows(&self, src: &Tensor, rows: &[u32], dst: &mut Tensor) -> Result<()> {
        let cols = src.cols();
        check(dst.cols() == cols && dst.rows() == rows.len(), || {
            format!(
                "gather {} rows of {:?} into {:?}",
                rows.len(),
                src.shape(),
                dst.shape()
            )
        })?;
        if let Some(&bad) = rows.iter().find(|&&r| r as usize >= src.rows()) {
            return Err(Error::Shape(format!("row {bad} past {} rows", src.rows())));
        }
        self.move_rows(src, rows, dst, 0)
    }

    fn scatter_rows(&self, src: &Tensor, rows: &[u32], dst: &mut Tensor) -> Result<()> {
        let cols = src.cols();
        check(dst.cols() == cols && src.rows() == rows.len(), || {
            format!(
                "scatter {:?} to {} rows of {:?}",
                src.shape(),
                rows.len(),
                dst.shape()
            )
        })?;
        if let Some(&bad) = rows.iter().find(|&&r| r as usize >= dst.rows()) {
            return Err(Error::Shape(format!("row {bad} past {} rows", dst.rows())));
        }
        self.move_rows(src, rows, dst, 1)
    }

    fn scale_rows(&self, x: &mut Tensor, scales: &[f32]) -> Result<()> {
        check(scales.len() == x.rows(), || {
            format!("{} scales for {:?}", scales.len(), x.shape())
        })?;
        need_f32(x, "scale_rows target")?;
        let n = x.shape().numel();
        if n == 0 {
            return Ok(());
        }
        let spp = self.stage_f32(slot::SCALES, scales)?;
        let (xp, cols, cnt) = (tptr(x)?, i32_of(x.cols(), "width")?, n as i64);
        self.elementwise(
            self.k.scale_rows,
            n,
            &mut [a(&xp), a(&spp), a(&cols), a(&cnt)],
        )
    }

    fn weighted_row_sum(
        &self,
        src: &Tensor,
        weights: &[f32],
        k: usize,
        dst: &mut Tensor,
    ) -> Result<()> {
        let (n, cols) = (dst.rows(), dst.cols());
        check(
            k > 0 && src.rows() == n * k && src.cols() == cols && weights.len() == n * k,
            || {
                format!(
                    "weighted sum of {:?} by {} weights (k={k}) into {:?}",
                    src.shape(),
                    weights.len(),
                    dst.shape()
                )
            },
        )?;
        if n == 0 {
            return Ok(());
        }
        let wp = self.stage_f32(slot::SCALES, weights)?;
        let (sp, dp, ki, c) = (tptr(src)?, tptr(dst)?, k as i32, i32_of(cols, "width")?);
        self.launch(
            self.k.weighted_row_sum,
            [n as u32, 1, 1],
            [ROW_THREADS, 1, 1],
            &mut [a(&sp), a(&wp), a(&ki), a(&dp), a(&c)],
        )
    }

    fn rms_norm_groups_inplace(
        &self,
        x: &mut Tensor,
        w: Option<&Weight>,
        group: usize,
        eps: f32,
    ) -> Result<()> {
        let cols = x.cols();
        check(group > 0 && cols.is_multiple_of(group), || {
            format!("groups of {group} in rows of {cols}")
        })?;
        need_f32(x, "rms_norm input")?;
        let wp = match w {
            Some(w) => {
                check(w.shape().numel() == cols, || {
                    format!("norm weight {:?} for rows of {cols}", w.shape())
                })?;
                f32_weight(w, "norm weight")?
            }
            None => 0,
        };
        if x.rows() == 0 {
            return Ok(());
        }
        let (xp, g, c) = (tptr(x)?, group as i32, i32_of(cols, "width")?);
        self.launch(
            self.k.rms_norm_groups,
            [x.rows() as u32, (cols / group) as u32, 1],
            [
                ROW_THREADS.min((group as u32).next_multiple_of(32)).max(32),
                1,
                1,
            ],
            &mut [a(&xp), a(&wp), a(&g), a(&eps), a(&c)],
        )
    }

    fn ssm_conv(
        &self,
        x: &Tensor,
        w: &Weight,
        b: Option<&Weight>,
        state: &mut Tensor,
        runs: &[SeqRun],
        out: &mut Tensor,
    ) -> Result<()> {
        let (n, ch) = (x.rows(), x.cols());
        let dc = w.cols();
        check(w.rows() == ch && dc >= 2, || {
            format!("conv kernel {:?} for {ch} channels", w.shape())
        })?;
        check(out.rows() == n && out.cols() == ch, || {
            format!("conv of {:?} into {:?}", x.shape(), out.shape())
        })?;
        check(state.cols() == (dc - 1) * ch, || {
            format!("conv state rows of {} for {ch} channels", state.cols())
        })?;
        let words = run_words(runs, n, state.rows())?;
        let wp = f32_weight(w, "conv kernel")?;
        let bp = match b {
            Some(b) => f32_weight(b, "conv bias")?,
            None => 0,
        };
        if runs.is_empty() {
            return Ok(());
        }
        let rp = self.stage(slot::SSM_RUNS, &words)?;
        let (xp, sp, op) = (tptr(x)?, tptr(state)?, tptr(out)?);
        let (chi, dci) = (ch as i32, dc as i32);
        self.launch(
            self.k.ssm_conv,
            [runs.len() as u32, blocks_for(ch, 128)?, 1],
            [128, 1, 1],
            &mut [
                a(&xp),
                a(&wp),
                a(&bp),
                a(&sp),
                a(&rp),
                a(&op),
                a(&chi),
                a(&dci),
            ],
        )
    }

    fn ssm_scan(
        &self,
        xbc: &Tensor,
        dt: &Tensor,
        state: &mut Tensor,
        spec: &SsmScanSpec,
        y: &mut Tensor,
    ) -> Result<()> {
        let (nh, hd, ds, ng) = (spec.n_head, spec.head_dim, spec.d_state, spec.n_group);
        let n = xbc.rows();
        let d_inner = nh * hd;
        check(ng > 0 && nh > 0 && nh.is_multiple_of(ng), || {
            format!("{nh} SSM heads in {ng} groups")
        })?;
        check(
            xbc.cols() == d_inner + 2 * ng * ds
                && dt.rows() == n
                && dt.cols() == nh
                && y.rows() == n
                && y.cols() == d_inner
                && state.cols() == d_inner * ds,
            || {
                format!(
                    "scan of {:?} with dt {:?} into {:?}, state {:?}",
                    xbc.shape(),
                    dt.shape(),
                    y.shape(),
                    state.shape()
                )
            },
        )?;
        let ap = f32_weight(spec.a, "ssm_a")?;
        let dp = f32_weight(spec.d, "ssm_d")?;
        let bp = f32_weight(spec.dt_bias, "ssm_dt bias")?;
        let words = run_words(spec.runs, n, state.rows())?;
        if spec.runs.is_empty() {
            return Ok(());
        }
        let rp = self.stage(slot::SSM_RUNS, &words)?;
        let (xp, tp, sp, yp) = (tptr(xbc)?, tptr(dt)?, tptr(state)?, tptr(y)?);
        let (nhi, hdi, dsi, ngi, cols) = (
            nh as i32,
            hd as i32,
            ds as i32,
            ng as i32,
            xbc.cols() as i32,
        );
        self.launch(
            self.k.ssm_scan,
            [spec.runs.len() as u32, nh as u32, 1],
            [128, 1, 1],
            &mut [
                a(&xp),
                a(&tp),
                a(&sp),
                a(&rp),
                a(&ap),
                a(&dp),
                a(&bp),
                a(&yp),
                a(&nhi),
                a(&hdi),
                a(&dsi),
                a(&ngi),
                a(&cols),
            ],
        )
    }
}

impl GpuBackend {
    fn move_rows(&self, src: &Tensor, rows: &[u32], dst: &mut Tensor, scatter: i32) -> Result<()> {
        need_f32(src, "row source")?;
        need_f32(dst, "row target")?;
        if rows.is_empty() {
            return Ok(());
        }
        let rp = self.stage(slot::ROWS, rows)?;
        let (sp, dp, c) = (tptr(src)?, tptr(dst)?, i32_of(src.cols(), "width")?);
        self.launch(
            self.k.move_rows,
            [rows.len() as u32, 1, 1],
            [ROW_THREADS, 1, 1],
            &mut [a(&sp), a(&rp), a(&dp), a(&c), a(&scatter)],
        )
    }
}

/// `(slot, len, fresh, first row)` per run, after checking the runs cover `n` rows and use
/// distinct slots below `slots`.
fn run_words(runs: &[SeqRun], n: usize, slots: usize) -> Result<Vec<u32>> {
    let mut words = Vec::with_capacity(runs.len() * 4);
    let mut first = 0u32;
    for r in runs {
        check((r.slot as usize) < slots, || {
            format!("state slot {} past {slots}", r.slot)
        })?;
        words.extend_from_slice(&[r.slot, r.len, r.fresh as u32, first]);
        first += r.len;
    }
    check(first as usize == n, || {
        format!("sequence runs cover {first} of {n} rows")
    })?;
    let mut slots_seen: Vec<u32> = runs.iter().map(|r| r.slot).collect();
    slots_seen.sort_unstable();
    slots_seen.dedup();
    check(slots_seen.len() == runs.len(), || {
        "two runs share a state slot".to_string()
    })?;
    Ok(words)
}
