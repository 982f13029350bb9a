"""Make GGUF golden files for the Rust GGUF reader / dequantiser / HF-layout loader tests.

Output (tests/data/gguf/):
  quants.gguf                        one 4 x 512 tensor per GGML type (random but valid blocks)
  quants_expected.safetensors        f32 [4, 512] per tensor, from gguf.quants.dequantize
  llama2_tiny_expected.safetensors   tensors of ../shared/data/models/llama-2-tiny-random.gguf,
                                     dequantised to f32 in GGUF layout (+ what transformers loads)
  llama2_tiny_meta.json              that file's metadata, tensor list and the HF config
                                     transformers derives from it
  README.md                          what is where, versions

How it was run (from the repository root, CPU only, deterministic):

    /work/venv/bin/python scripts/golden/make_gguf_golden.py

Versions used when the committed files were made: gguf 0.19.0, transformers 5.24.0
(+ accelerate 1.15.0, which transformers requires to load a GGUF), torch 2.15.0+cu132,
numpy 2.4.6, safetensors 0.8.0. The script prints the versions it runs with and writes them into
README.md, the safetensors metadata and the JSON.

Layout conventions: a GGUF tensor with dims ne = [ne0, ne1] (ne0 = contiguous row length) is
stored here as a row-major [ne1, ne0] array (PyTorch / numpy order), i.e. the GGUF data read
as-is.  For quants.gguf every tensor has ne = [512, 4] -> [4, 512].
"""

import importlib.metadata as im
import json
import os
import platform
import shutil
import sys
import tempfile

import numpy as np
import safetensors
import torch
import transformers
import gguf
from gguf import GGMLQuantizationType as T, GGUFReader, GGUFWriter
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize
from safetensors.numpy import save_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "data", "gguf")
SHARED = os.environ.get("SPP_DATA_DIR", os.path.join(ROOT, "..", "shared", "data"))
TINY_GGUF = os.path.join(SHARED, "models", "llama-2-tiny-random.gguf")

ROWS, COLS = 4, 512
MiB = 1 << 20


def versions():
    v = {
        "python": platform.python_version(),
        "gguf": im.version("gguf"),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "safetensors": safetensors.__version__,
    }
    try:
        v["accelerate"] = im.version("accelerate")
    except im.PackageNotFoundError:
        pass
    return v


VERSIONS = versions()


def st_meta(layout):
    # one key only: safetensors writes several metadata keys in hash order, which would make
    # the file bytes differ from run to run
    return {"golden": json.dumps({"versions": VERSIONS, "script": "scripts/golden/make_gguf_golden.py",
                                  "layout": layout}, sort_keys=True)}

# --------------------------------------------------------------------------------------------
# (a) one tensor per type
# --------------------------------------------------------------------------------------------

# byte offsets of the f16 scale fields inside one block, per type (see gguf/quants.py)
F16_FIELDS = {
    T.Q8_0: [0],  # d, qs[32] (int8)
    T.Q4_0: [0],  # d, qs[16]
    T.Q4_1: [0, 2],  # d, m, qs[16]
    T.Q5_0: [0],  # d, qh[4], qs[16]
    T.Q5_1: [0, 2],  # d, m, qh[4], qs[16]
    T.Q2_K: [80, 82],  # scales[16], qs[64], d, dmin
    T.Q3_K: [108],  # hmask[32], qs[64], scales[12], d
    T.Q4_K: [0, 2],  # d, dmin, scales[12], qs[128]
    T.Q5_K: [0, 2],  # d, dmin, scales[12], qh[32], qs[128]
    T.Q6_K: [208],  # ql[128], qh[64], scales[16] (int8), d
}

# the types asked for, then a few extra ones that candle also reads
QUANT_TYPES = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q4_K, T.Q5_K, T.Q6_K,
               T.Q5_0, T.Q5_1, T.Q2_K, T.Q3_K]


def moderate_f16(rng, n):
    """n f16 values, random sign, magnitude uniform in [0.01, 1]."""
    mag = rng.uniform(0.01, 1.0, size=n)
    sign = rng.choice([-1.0, 1.0], size=n)
    return (sign * mag).astype(np.float16)


def random_raw(qtype, rng):
    """Returns (array to hand to GGUFWriter.add_tensor, raw_shape or None, raw_dtype or None)."""
    if qtype == T.F32:
        return rng.standard_normal((ROWS, COLS)).astype(np.float32), None, None
    if qtype == T.F16:
        return rng.standard_normal((ROWS, COLS)).astype(np.float16), None, None
    if qtype == T.BF16:
        # truncate f32 normals to their top 16 bits (always finite)
        f = rng.standard_normal((ROWS, COLS)).astype(np.float32)
        b = (f.view(np.uint32) >> 16).astype(np.uint16)
        raw = b.view(np.uint8).reshape(ROWS, COLS * 2)
        return raw, raw.shape, T.BF16
    block, tsize = GGML_QUANT_SIZES[qtype]
    nblocks = ROWS * COLS // block
    blocks = rng.integers(0, 256, size=(nblocks, tsize), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        blocks[:, off : off + 2] = moderate_f16(rng, nblocks).view(np.uint8).reshape(nblocks, 2)
    raw = blocks.reshape(ROWS, COLS // block * tsize)
    return raw, raw.shape, qtype


def independent_check(qtype, raw, deq):
    """Hand-written decoders for the simplest block types, as a cross-check of the layout."""
    if qtype == T.Q8_0:
        b = raw.reshape(-1, 34)
        d = b[:, :2].copy().view(np.float16).astype(np.float32)
        q = b[:, 2:].view(np.int8).astype(np.float32)
        assert np.array_equal((d * q).reshape(ROWS, COLS), deq)
    elif qtype == T.Q4_0:
        b = raw.reshape(-1, 18)
        d = b[:, :2].copy().view(np.float16).astype(np.float32)
        qs = b[:, 2:]
        q = np.concatenate([qs & 0xF, qs >> 4], axis=1).astype(np.float32) - 8  # low nibbles = 0..15
        assert np.array_equal((d * q).reshape(ROWS, COLS), deq)
    elif qtype == T.Q4_1:
        b = raw.reshape(-1, 20)
        d = b[:, :2].copy().view(np.float16).astype(np.float32)
        m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
        qs = b[:, 4:]
        q = np.concatenate([qs & 0xF, qs >> 4], axis=1).astype(np.float32)
        assert np.allclose((d * q + m).reshape(ROWS, COLS), deq, rtol=0, atol=1e-6)


def make_quants():
    rng = np.random.default_rng(20240601)
    path = os.path.join(OUT, "quants.gguf")
    w = GGUFWriter(path, "llama")
    w.add_name("spp quant golden")
    w.add_description("random but valid blocks, one 4x512 tensor per GGML type")
    expected = {}
    info = []
    for qt in QUANT_TYPES:
        name = qt.name.lower()
        arr, raw_shape, raw_dtype = random_raw(qt, rng)
        if raw_dtype is None:
            w.add_tensor(name, arr)
            deq = dequantize(arr, qt).astype(np.float32)
        else:
            w.add_tensor(name, arr, raw_shape=raw_shape, raw_dtype=raw_dtype)
            deq = dequantize(arr, qt)
        deq = np.ascontiguousarray(deq.reshape(ROWS, COLS).astype(np.float32))
        assert np.isfinite(deq).all(), name
        independent_check(qt, arr, deq)
        expected[name] = deq
        info.append((name, qt.name, arr.nbytes, float(np.abs(deq).max())))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    # re-read and check
    r = GGUFReader(path)
    got = {t.name: t for t in r.tensors}
    assert list(got) == list(expected)
    for name, exp in expected.items():
        t = got[name]
        assert t.shape.tolist() == [COLS, ROWS], (name, t.shape)  # GGUF ne order
        assert t.tensor_type.name.lower() == name
        re = dequantize(t.data, t.tensor_type).reshape(ROWS, COLS)
        assert np.array_equal(re, exp), name

    save_file(expected, os.path.join(OUT, "quants_expected.safetensors"),
              metadata=st_meta("[ne1, ne0] row-major = GGUF data as-is; GGUF ne = [512, 4]"))
    for row in info:
        print("quants: %-5s %-5s %5d bytes, |x|max %.3f" % row)
    return info


# --------------------------------------------------------------------------------------------
# (b) the tiny llama-2 GGUF from shared/
# --------------------------------------------------------------------------------------------

def field_value(f):
    v = f.contents()
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    return v


def reverse_permute(w, n_head):
    # what transformers does (modeling_gguf_pytorch_utils.py, from llama.cpp's convert script)
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def make_llama2_tiny():
    assert os.path.exists(TINY_GGUF), TINY_GGUF
    r = GGUFReader(TINY_GGUF)
    meta = {"source": "../shared/data/models/llama-2-tiny-random.gguf (not copied here)",
            "versions": VERSIONS, "script": "scripts/golden/make_gguf_golden.py"}
    kv = {}
    kv_types = {}
    for k, f in r.fields.items():
        kv_types[k] = [t.name for t in f.types]
        if k in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
            kv[k + "[0:16]"] = [x.item() if hasattr(x, "item") else x for x in f.contents()[:16]]
            kv[k + ".len"] = len(f.data)
            continue
        if k.startswith(("llama.", "general.", "tokenizer.ggml.", "GGUF.")):
            kv[k] = field_value(f)
    meta["gguf_metadata"] = kv
    meta["gguf_metadata_types"] = kv_types
    meta["tensors"] = [
        {"name": t.name, "type": t.tensor_type.name, "ne": t.shape.tolist(),
         "torch_shape": list(reversed(t.shape.tolist())), "n_bytes": int(t.n_bytes),
         "file_offset": int(t.data_offset)}
        for t in r.tensors
    ]

    out = {}
    tens = {t.name: t for t in r.tensors}
    for name, t in tens.items():
        torch_shape = tuple(reversed(t.shape.tolist()))
        deq = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(torch_shape)
        if name in ("token_embd.weight", "output.weight"):
            out[f"{name}[0:8]"] = np.ascontiguousarray(deq[0:8])
        else:
            out[name] = np.ascontiguousarray(deq)

    # what transformers makes of it
    tmp = tempfile.mkdtemp()
    try:
        fname = os.path.basename(TINY_GGUF)
        os.symlink(os.path.abspath(TINY_GGUF), os.path.join(tmp, fname))
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=fname, dtype=torch.float32).eval()
    finally:
        shutil.rmtree(tmp)
    cfg = model.config.to_dict()
    cfg["_name_or_path"] = "<dir holding the .gguf>"  # was a temporary directory
    meta["hf_model_class"] = type(model).__name__
    meta["hf_config"] = cfg
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    meta["hf_state_dict"] = {k: list(v.shape) for k, v in sd.items()}
    meta["hf_name_map"] = {
        "token_embd.weight": "model.embed_tokens.weight",
        "blk.N.attn_q.weight": "model.layers.N.self_attn.q_proj.weight (rows un-permuted, n_head)",
        "blk.N.attn_k.weight": "model.layers.N.self_attn.k_proj.weight (rows un-permuted, n_head_kv)",
        "blk.N.attn_v.weight": "model.layers.N.self_attn.v_proj.weight",
        "blk.N.attn_output.weight": "model.layers.N.self_attn.o_proj.weight",
        "blk.N.ffn_gate.weight": "model.layers.N.mlp.gate_proj.weight",
        "blk.N.ffn_up.weight": "model.layers.N.mlp.up_proj.weight",
        "blk.N.ffn_down.weight": "model.layers.N.mlp.down_proj.weight",
        "blk.N.attn_norm.weight": "model.layers.N.input_layernorm.weight",
        "blk.N.ffn_norm.weight": "model.layers.N.post_attention_layernorm.weight",
        "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight",
    }

    out["hf.model.layers.0.self_attn.q_proj.weight"] = sd["model.layers.0.self_attn.q_proj.weight"]
    out["hf.model.layers.0.self_attn.k_proj.weight"] = sd["model.layers.0.self_attn.k_proj.weight"]
    out["hf.model.embed_tokens.weight[0:8]"] = np.ascontiguousarray(sd["model.embed_tokens.weight"][0:8])
    out["hf.lm_head.weight[0:8]"] = np.ascontiguousarray(sd["lm_head.weight"][0:8])

    # checks: HF q/k = un-permuted GGUF q/k; everything else is the GGUF tensor unchanged
    n_head = cfg["num_attention_heads"]
    n_kv = cfg["num_key_value_heads"]
    q, k = out["blk.0.attn_q.weight"], out["blk.0.attn_k.weight"]
    assert np.array_equal(reverse_permute(q, n_head), out["hf.model.layers.0.self_attn.q_proj.weight"])
    assert np.array_equal(reverse_permute(k, n_kv), out["hf.model.layers.0.self_attn.k_proj.weight"])
    meta["q_k_differ_from_gguf_layout"] = bool(not np.array_equal(q, out["hf.model.layers.0.self_attn.q_proj.weight"]))
    direct = {
        "blk.0.attn_v.weight": "model.layers.0.self_attn.v_proj.weight",
        "blk.0.attn_output.weight": "model.layers.0.self_attn.o_proj.weight",
        "blk.0.ffn_gate.weight": "model.layers.0.mlp.gate_proj.weight",
        "blk.0.ffn_up.weight": "model.layers.0.mlp.up_proj.weight",
        "blk.0.ffn_down.weight": "model.layers.0.mlp.down_proj.weight",
        "blk.0.attn_norm.weight": "model.layers.0.input_layernorm.weight",
        "blk.0.ffn_norm.weight": "model.layers.0.post_attention_layernorm.weight",
        "output_norm.weight": "model.norm.weight",
    }
    for g, h in direct.items():
        assert np.array_equal(out[g], sd[h]), (g, h)
    assert np.array_equal(out["token_embd.weight[0:8]"], out["hf.model.embed_tokens.weight[0:8]"])
    assert np.array_equal(out["output.weight[0:8]"], out["hf.lm_head.weight[0:8]"])

    # a small end-to-end forward of the HF model (logits truncated to the first 512 vocab
    # entries to stay small), and how much the q/k un-permutation matters
    ids = torch.tensor([[1, 450, 7483, 310, 3444, 338, 3681, 29889]], dtype=torch.int64)
    with torch.no_grad():
        o = model(input_ids=ids, use_cache=False, output_hidden_states=True)
        logits = o.logits.float()
        wrong = type(model)(model.config).eval()
        wsd = dict(model.state_dict())
        wsd["model.layers.0.self_attn.q_proj.weight"] = torch.from_numpy(q)
        wsd["model.layers.0.self_attn.k_proj.weight"] = torch.from_numpy(k)
        wrong.load_state_dict(wsd)
        wl = wrong(input_ids=ids, use_cache=False).logits.float()
    out["hf.input_ids"] = ids.numpy()
    out["hf.logits[..., 0:512]"] = np.ascontiguousarray(logits[..., 0:512].numpy())
    out["hf.last_hidden_state"] = np.ascontiguousarray(o.hidden_states[-1].float().numpy())
    meta["hf_forward"] = {
        "input_ids": ids.tolist(),
        "logits_absmax": float(logits.abs().max()),
        "maxdiff_if_q_k_not_unpermuted": float((wl - logits).abs().max()),
        "argmax_last": int(logits[0, -1].argmax()),
        "note": "hf.logits[..., 0:512] are the first 512 of 32000 vocab columns; "
                "hf.last_hidden_state is after the final RMSNorm (input to lm_head)",
    }

    # sizes: everything non-embedding is tiny here (hidden 8), so all of it is kept in full
    for k_, v in out.items():
        assert v.nbytes < MiB, k_
    st_path = os.path.join(OUT, "llama2_tiny_expected.safetensors")
    save_file(out, st_path, metadata=st_meta("GGUF tensors: [ne1, ne0] row-major (data as-is); "
                                             "hf.*: as transformers loads them"))
    meta["expected_safetensors"] = {k_: [str(v.dtype), list(v.shape)] for k_, v in out.items()}
    with open(os.path.join(OUT, "llama2_tiny_meta.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=False, default=str)
        f.write("\n")
    print("llama2 tiny: hf config", json.dumps({k_: cfg[k_] for k_ in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_parameters", "max_position_embeddings",
        "tie_word_embeddings", "bos_token_id", "eos_token_id") if k_ in cfg}))
    print("llama2 tiny: forward", meta["hf_forward"])
    return meta


README = """# GGUF golden files

Made by `scripts/golden/make_gguf_golden.py` (run from the repo root with
`/work/venv/bin/python scripts/golden/make_gguf_golden.py`; CPU, deterministic).

Versions: {versions}

Layout: a GGUF tensor with dims `ne = [ne0, ne1]` (ne0 contiguous) is stored as a row-major
`[ne1, ne0]` array, i.e. PyTorch order, the GGUF data read as-is.

## `quants.gguf` + `quants_expected.safetensors`

`quants.gguf` (GGUF v3, `general.architecture = "llama"`, `general.name`, `general.description`,
no other metadata) holds one tensor per type, each `ne = [512, 4]` (4 rows of 512), named by
the lower-case type name: {types}. The first nine were asked for; q5_0, q5_1, q2_k and q3_k
are extras. Block bytes are random, except the f16 scale fields (`d`, and
`m`/`dmin` where the type has them), which are set to random-sign values of magnitude
0.01..1. F32/F16 are standard normals; BF16 is the top 16 bits of f32 standard normals.

`quants_expected.safetensors` holds, under the same names, f32 `[4, 512]` =
`gguf.quants.dequantize(raw, type)`. The script re-reads the GGUF with `GGUFReader` and checks it
dequantises to exactly these values; q8_0, q4_0 and q4_1 are also checked against a hand-written
decoder. Exact equality is expected from a correct f32 implementation (all products are of an
f16-exact scale and a small integer, plus one f32 add for the affine types; allow ~1 ulp if the
Rust side fuses or reorders the multiply-add).

{qtable}

## `llama2_tiny_expected.safetensors` + `llama2_tiny_meta.json`

From `../shared/data/models/llama-2-tiny-random.gguf` (not copied here): 1 layer, hidden 8,
2 heads (head_dim 4, rope dim 4), 2 KV heads, FFN 32, vocab 32000, F16 matrices, F32 norms.

- every tensor except `token_embd.weight` / `output.weight`, dequantised to f32 in the GGUF's
  own layout (`[ne1, ne0]`), in full (they are all tiny);
- `token_embd.weight[0:8]`, `output.weight[0:8]`: the first 8 rows (token ids 0..7);
- as transformers {tf} loads the GGUF (`AutoModelForCausalLM.from_pretrained(dir,
  gguf_file=..., dtype=torch.float32)`): `hf.model.layers.0.self_attn.q_proj.weight`,
  `hf.model.layers.0.self_attn.k_proj.weight` (rows un-permuted for rotate_half RoPE:
  `w.reshape(n_head, head_dim/2, 2, ne0).swapaxes(1, 2).reshape(ne1, ne0)`, with n_head =
  head_count for q and head_count_kv for k), `hf.model.embed_tokens.weight[0:8]`,
  `hf.lm_head.weight[0:8]`;
- a forward pass of that HF model on `hf.input_ids` ([1, 8]): `hf.logits[..., 0:512]` (the first
  512 of 32000 vocab columns, [1, 8, 512]) and `hf.last_hidden_state` (after the final norm,
  [1, 8, 8]).

The script asserts that every other HF weight equals the GGUF tensor unchanged, and that q/k
equal the un-permuted GGUF q/k. `llama2_tiny_meta.json` has the GGUF metadata (all `llama.*`,
`general.*` and `tokenizer.ggml.*` scalar keys, the first 16 tokens/scores/types with the list
lengths), the tensor list (name, type, `ne`, torch shape, bytes, offset), the HF config
transformers derives (`model.config.to_dict()`), the GGUF -> HF name map, and forward stats
(e.g. how far the logits move if q/k are *not* un-permuted).

Caveat: this model's weights are small (logits |max| ~0.25), so its forward pass barely tells
a right from a wrong q/k layout (`hf_forward.maxdiff_if_q_k_not_unpermuted` in the JSON is
~1e-4). Test the un-permutation on the weights (`hf.*q_proj/k_proj` vs `blk.0.attn_q/k`), not on
these logits; the tests in `../tiny/` are the sensitive forward-pass checks.

Notes: the GGUF has no `llama.rope.freq_base`; transformers fills in rope_theta 10000 (its
default). `head_dim` = 8 / 2 = 4. `tie_word_embeddings` is false (there is an `output.weight`).

## Sizes
{sizes}
"""


def main():
    print("versions:", VERSIONS)
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    info = make_quants()
    meta = make_llama2_tiny()

    files = ["quants.gguf", "quants_expected.safetensors", "llama2_tiny_expected.safetensors",
             "llama2_tiny_meta.json"]
    sizes = {f: os.path.getsize(os.path.join(OUT, f)) for f in files}
    for f, s in sizes.items():
        assert s < MiB, (f, s)
        print(f"{f}: {s} bytes")
    qtable = "| tensor | type | raw bytes | max abs value |\n|---|---|---|---|\n" + "\n".join(
        f"| `{n}` | {t} | {b} | {m:.3f} |" for n, t, b, m in info)
    with open(os.path.join(OUT, "README.md"), "w") as f:
        f.write(README.format(
            versions=", ".join(f"{k} {v}" for k, v in VERSIONS.items()),
            types=", ".join(f"`{n}`" for n, *_ in info),
            qtable=qtable,
            tf=transformers.__version__,
            sizes="\n".join(f"- `{k}`: {v} bytes" for k, v in sizes.items()),
        ))
    print("wrote", os.path.join(OUT, "README.md"))


if __name__ == "__main__":
    sys.exit(main())
