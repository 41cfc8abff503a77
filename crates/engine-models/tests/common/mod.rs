//! Shared test support: a backend decorator that records which weights every matmul reads,
//! and rewriting a GGUF file into a derived model.
#![allow(dead_code)]

use std::path::Path;
use std::sync::{Arc, Mutex};

use engine_core::{
    Activation, AttentionSpec, Backend, DType, ExpertSpan, HostBytes, Result, RopeSpec, SeqRun,
    SsmScanSpec, Tensor, Weight,
};
use engine_gguf::{GgufModel, GgufWriter};

/// One matmul: the weight's name, its bytes and the activation rows multiplied.
#[derive(Clone, Debug)]
pub struct MatmulCall {
    pub weight: String,
    pub bytes: usize,
    pub rows: usize,
}

/// Forwards everything to `inner` and records every matmul (an expert matmul as one call per
/// expert it multiplies).
pub struct CountingBackend {
    pub inner: Arc<dyn Backend>,
    pub calls: Mutex<Vec<MatmulCall>>,
}

impl CountingBackend {
    pub fn new(inner: Arc<dyn Backend>) -> Arc<CountingBackend> {
        Arc::new(CountingBackend {
            inner,
            calls: Mutex::new(vec![]),
        })
    }

    /// Takes the calls recorded so far.
    pub fn take(&self) -> Vec<MatmulCall> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

impl Backend for CountingBackend {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn supports(&self, dtype: DType) -> bool {
        self.inner.supports(dtype)
    }
    fn load_weight(
        &self,
        name: &str,
        dtype: DType,
        shape: &[usize],
        data: HostBytes,
    ) -> Result<Weight> {
        self.inner.load_weight(name, dtype, shape, data)
    }
    fn alloc(&self, dtype: DType, shape: &[usize]) -> Result<Tensor> {
        self.inner.alloc(dtype, shape)
    }
    fn write_f32(&self, dst: &mut Tensor, src: &[f32]) -> Result<()> {
        self.inner.write_f32(dst, src)
    }
    fn read_f32(&self, src: &Tensor, dst: &mut [f32]) -> Result<()> {
        self.inner.read_f32(src, dst)
    }
    fn embed(&self, table: &Weight, ids: &[u32], out: &mut Tensor) -> Result<()> {
        self.inner.embed(table, ids, out)
    }
    fn matmul_groups(
        &self,
        x: &Tensor,
        w: &Weight,
        out: &mut Tensor,
        groups: &[u32],
    ) -> Result<()> {
        self.calls.lock().unwrap().push(MatmulCall {
            weight: w.name().to_string(),
            bytes: w.dtype().row_bytes(w.cols()).unwrap_or(0) * w.rows(),
            rows: x.rows(),
        });
        self.inner.matmul_groups(x, w, out, groups)
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
        let mut calls = self.calls.lock().unwrap();
        for s in spans {
            let w = &weights[s.expert as usize];
            calls.push(MatmulCall {
                weight: w.name().to_string(),
                bytes: w.dtype().row_bytes(w.cols()).unwrap_or(0) * w.rows(),
                rows: s.rows as usize,
            });
        }
        drop(calls);
        self.inner
            .matmul_experts(x, weights, biases, spans, groups, out)
    }
    fn add_bias(&self, x: &mut Tensor, bias: &Weight) -> Result<()> {
        self.inner.add_bias(x, bias)
    }
    fn rms_norm(&self, x: &Tensor, w: Option<&Weight>, eps: f32, out: &mut Tensor) -> Result<()> {
        self.inner.rms_norm(x, w, eps, out)
    }
    fn rms_norm_inplace(&self, x: &mut Tensor, w: Option<&Weight>, eps: f32) -> Result<()> {
        self.inner.rms_norm_inplace(x, w, eps)
    }
    fn add(&self, dst: &mut Tensor, src: &Tensor) -> Result<()> {
        self.inner.add(dst, src)
    }
    fn scale(&self, x: &mut Tensor, s: f32) -> Result<()> {
        self.inner.scale(x, s)
    }
    fn glu(&self, act: Activation, gate: &mut Tensor, up: &Tensor) -> Result<()> {
        self.inner.glu(act, gate, up)
    }
    fn rope(&self, x: &mut Tensor, pos: &[u32], spec: &RopeSpec) -> Result<()> {
        self.inner.rope(x, pos, spec)
    }
    fn kv_store(&self, cache: &mut Tensor, src: &Tensor, rows: &[u32]) -> Result<()> {
        self.inner.kv_store(cache, src, rows)
    }
    fn kv_copy(
        &self,
        cache: &mut Tensor,
        src_start: usize,
        dst_start: usize,
        n: usize,
    ) -> Result<()> {
        self.inner.kv_copy(cache, src_start, dst_start, n)
    }
    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        spec: &AttentionSpec,
        out: &mut Tensor,
    ) -> Result<()> {
        self.inner.attention(q, k, v, spec, out)
    }
    fn gather_rows(&self, src: &Tensor, rows: &[u32], dst: &mut Tensor) -> Result<()> {
        self.inner.gather_rows(src, rows, dst)
    }
    fn scatter_rows(&self, src: &Tensor, rows: &[u32], dst: &mut Tensor) -> Result<()> {
        self.inner.scatter_rows(src, rows, dst)
    }
    fn scale_rows(&self, x: &mut Tensor, scales: &[f32]) -> Result<()> {
        self.inner.scale_rows(x, scales)
    }
    fn weighted_row_sum(
        &self,
        src: &Tensor,
        weights: &[f32],
        k: usize,
        dst: &mut Tensor,
    ) -> Result<()> {
        self.inner.weighted_row_sum(src, weights, k, dst)
    }
    fn rms_norm_groups_inplace(
        &self,
        x: &mut Tensor,
        w: Option<&Weight>,
        group: usize,
        eps: f32,
    ) -> Result<()> {
        self.inner.rms_norm_groups_inplace(x, w, group, eps)
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
        self.inner.ssm_conv(x, w, b, state, runs, out)
    }
    fn ssm_scan(
        &self,
        xbc: &Tensor,
        dt: &Tensor,
        state: &mut Tensor,
        spec: &SsmScanSpec,
        y: &mut Tensor,
    ) -> Result<()> {
        self.inner.ssm_scan(xbc, dt, state, spec, y)
    }
}

/// A tensor of a GGUF file as f32 values (F32 tensors only) with its row-major shape.
pub fn tensor_f32(g: &GgufModel, name: &str) -> (Vec<f32>, Vec<usize>) {
    let t = g.tensor(name).unwrap_or_else(|| panic!("{name} missing"));
    assert_eq!(t.dtype, DType::F32, "{name}");
    let data = g.tensor_data(t);
    let v = data
        .as_slice()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (v, t.shape())
}

/// Little-endian bytes of f32 values.
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes a copy of `src` to `dst`: every metadata entry (through `meta`, which may rename
/// or change it, or drop it by returning `None`) and every tensor (through `tensor`, which
/// returns the tensors to write in its place), then `extra_meta`.
pub fn rewrite_gguf(
    src: &Path,
    dst: &Path,
    mut meta: impl FnMut(&str, &engine_gguf::Value) -> Option<(String, engine_gguf::Value)>,
    mut tensor: impl FnMut(&GgufModel, &str) -> Vec<(String, DType, Vec<usize>, Vec<u8>)>,
    extra_meta: &[(&str, engine_gguf::Value)],
) {
    let g = GgufModel::open(src, false).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata() {
        if let Some((k, v)) = meta(k, v) {
            w.set(&k, v);
        }
    }
    for (k, v) in extra_meta {
        w.set(k, v.clone());
    }
    let names: Vec<String> = g.tensors().iter().map(|t| t.name.clone()).collect();
    for n in names {
        for (name, dtype, shape, data) in tensor(&g, &n) {
            w.add_tensor(&name, dtype, &shape, data).unwrap();
        }
    }
    w.write_to(dst).unwrap();
}

/// The original tensor, unchanged, for [`rewrite_gguf`].
pub fn keep(g: &GgufModel, name: &str) -> Vec<(String, DType, Vec<usize>, Vec<u8>)> {
    let t = g.tensor(name).unwrap();
    vec![(
        name.to_string(),
        t.dtype,
        t.shape(),
        g.tensor_data(t).as_slice().to_vec(),
    )]
}

/// A fresh temporary directory for this test process.
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("engine-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
