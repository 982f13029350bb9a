"""Q8_0 blocks as the `gguf` package (llama.cpp's Python converter) quantises them, for the test of
spp's GGUF export (tests/gguf_export.rs).

Output: tests/data/gguf/q8_0_golden.json — `values` (f32, 4 blocks of 32: random normal, a block
of zeros, one whose scaled values land on .5, one with a single large outlier) and `bytes` (hex of
the Q8_0 encoding: per block an f16 scale, then 32 int8).

How it was run (from the repository root):

    /work/venv/bin/python scripts/golden/make_q8_0_golden.py

The versions used are written into the JSON.
"""

import importlib.metadata as im
import json
import os

import numpy as np
from gguf import GGMLQuantizationType, quants

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
rng = np.random.default_rng(7)
blocks = [
    rng.normal(0, 1, 32),
    np.zeros(32),
    np.arange(-16, 16) * 0.5 * (127.0 / 15.5) / 127.0,  # multiples of scale/2: the rounding ties
    np.concatenate([[40.0], rng.normal(0, 0.01, 31)]),
]
values = np.concatenate(blocks).astype(np.float32)
encoded = quants.quantize(values.reshape(1, -1), GGMLQuantizationType.Q8_0)
out = {
    "made_by": "scripts/golden/make_q8_0_golden.py",
    "versions": {"gguf": im.version("gguf"), "numpy": np.__version__},
    "values": [float(v) for v in values],
    "bytes": encoded.tobytes().hex(),
}
with open(os.path.join(ROOT, "tests/data/gguf/q8_0_golden.json"), "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")
print(len(values), "values ->", len(encoded.tobytes()), "bytes")
