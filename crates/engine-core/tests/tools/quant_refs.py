#!/usr/bin/env python3
"""Reference data for the block codecs, made with the `gguf` package's numpy (de)quantizers.

Writes one GGUF file (path = argv[1]) holding, for every type:
  <TYPE>.rand      random block bytes (scale fields kept finite) stored raw as <TYPE>
  <TYPE>.rand.f32  gguf-py's dequantization of those blocks
and, for the types gguf-py can encode:
  <TYPE>.src       random f32 input
  <TYPE>.q         gguf-py's encoding of .src
  <TYPE>.q.f32     gguf-py's dequantization of .q
"""
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

DECODE = [T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K,
          T.Q5_K, T.Q6_K, T.IQ4_NL, T.IQ4_XS, T.MXFP4]
ENCODE = [T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.MXFP4]
# byte offsets of f16 scale fields inside a block, kept finite in random blocks
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
    T.IQ4_NL: [0], T.IQ4_XS: [0],
}
N_BLOCKS = 96


def random_blocks(rng, t):
    bs, ts = gguf.GGML_QUANT_SIZES[t]
    if t in (T.F16, T.BF16):
        vals = (rng.standard_normal(N_BLOCKS * 32) * 3).astype(np.float32)
        if t == T.F16:
            return vals.astype(np.float16).view(np.uint8)
        return quantize(vals, T.BF16).view(np.uint8).reshape(-1)
    raw = rng.integers(0, 256, size=(N_BLOCKS, ts), dtype=np.uint8)
    for off in F16_FIELDS.get(t, []):
        scales = (rng.standard_normal(N_BLOCKS) * 0.05).astype(np.float16)
        raw[:, off:off + 2] = scales.view(np.uint8).reshape(N_BLOCKS, 2)
    return raw.reshape(-1)


def source_values(rng, t):
    bs = max(gguf.GGML_QUANT_SIZES[t][0], 32)
    x = rng.standard_normal((N_BLOCKS, bs)).astype(np.float32)
    x *= rng.uniform(0.001, 20.0, size=(N_BLOCKS, 1)).astype(np.float32)
    x[0] = 0.0                      # an all-zero block
    x[1, 5] = 1e4                   # an outlier
    x[2] = np.abs(x[2])             # all positive
    x[3] = -np.abs(x[3])            # all negative
    return x.reshape(-1)


def main():
    out = sys.argv[1]
    rng = np.random.default_rng(20261123)
    w = gguf.GGUFWriter(out, "quant-refs")
    for t in DECODE:
        raw = random_blocks(rng, t)
        deq = dequantize(raw.reshape(1, -1), t).reshape(-1).astype(np.float32)
        w.add_tensor(f"{t.name}.rand", raw.reshape(1, -1), raw_dtype=t)
        w.add_tensor(f"{t.name}.rand.f32", deq)
    for t in ENCODE:
        src = source_values(rng, t)
        q = quantize(src.reshape(1, -1), t).reshape(-1)
        deq = dequantize(q.reshape(1, -1), t).reshape(-1).astype(np.float32)
        w.add_tensor(f"{t.name}.src", src)
        w.add_tensor(f"{t.name}.q", q.reshape(1, -1), raw_dtype=t)
        w.add_tensor(f"{t.name}.q.f32", deq)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
