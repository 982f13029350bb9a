//! GGUF (v2/v3) files of the llama.cpp architectures `llama` (LLaMA 1/2/3, SmolLM, Mistral),
//! `qwen2` (Qwen2, Qwen2.5) and `qwen3` → Hugging Face directories.
//!
//! Tensors are dequantised by candle (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the
//! K-quants Q2_K…Q8_K) to f32 and then cast to the requested dtype. For `llama` files llama.cpp's
//! converter permutes the rows of `attn_q`/`attn_k` (and their biases) so that RoPE rotates
//! adjacent pairs; we undo that so the result uses Hugging Face's `rotate_half` layout. Qwen
//! files keep the Hugging Face rows. LLaMA-3.1-style `rope_freqs` become `rope_scaling` (see
//! [`config_from_gguf`]). The tokenizer is rebuilt from the GGUF vocabulary (see [`tokenizer`]).

pub mod export;
pub mod tokenizer;

use crate::bail;
use crate::error::{Error, IoContext, Result};
use crate::fsio::{write_dir_atomically, write_json};
use crate::model::checkpoint::{torch_dtype_name, write_config};
use crate::model::config::{Family, RopeScaling};
use crate::model::{LlamaConfig, ShardWriter, StreamedModel};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// What a conversion did.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ConvertReport {
    pub tensors: usize,
    pub parameters: usize,
    /// GGUF tensor type → number of tensors of that type.
    pub source_types: BTreeMap<String, usize>,
    pub tied_embeddings: bool,
    pub tokenizer: String,
    pub dtype: String,
}

/// Reads the header (metadata and tensor index) of a GGUF file.
pub fn read_header(path: &Path) -> Result<(Content, std::fs::File)> {
    let mut file = std::fs::File::open(path).at(path)?;
    let content = Content::read(&mut file).map_err(|e| {
        Error::Msg(format!(
            "{}: not a readable GGUF file ({e}). spp reads GGUF v2/v3 with tensor types F32, F16, BF16, \
             Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K–Q8_K; the file may be truncated or corrupt",
            path.display()
        ))
    })?;
    Ok((content, file))
}

fn meta<'a>(c: &'a Content, key: &str) -> Option<&'a Value> {
    c.metadata.get(key)
}

fn meta_usize(c: &Content, key: &str) -> Result<Option<usize>> {
    match meta(c, key) {
        None => Ok(None),
        Some(v) => {
            let n = match v {
                Value::U8(x) => *x as i64,
                Value::U16(x) => *x as i64,
                Value::U32(x) => *x as i64,
                Value::U64(x) => *x as i64,
                Value::I8(x) => *x as i64,
                Value::I16(x) => *x as i64,
                Value::I32(x) => *x as i64,
                Value::I64(x) => *x,
                other => bail!("GGUF metadata {key} should be an integer, found {other:?}"),
            };
            if n < 0 {
                bail!("GGUF metadata {key} is negative ({n})");
            }
            Ok(Some(n as usize))
        }
    }
}

fn meta_f64(c: &Content, key: &str) -> Result<Option<f64>> {
    match meta(c, key) {
        None => Ok(None),
        Some(Value::F32(x)) => Ok(Some(*x as f64)),
        Some(Value::F64(x)) => Ok(Some(*x)),
        Some(_) => Ok(meta_usize(c, key)?.map(|x| x as f64)),
    }
}

fn required(c: &Content, key: &str) -> Result<usize> {
    meta_usize(c, key)?.ok_or_else(|| {
        Error::Msg(format!(
            "GGUF metadata key {key} is missing: cannot build config.json"
        ))
    })
}

/// The llama.cpp architectures (`general.architecture`) spp converts, and the family each one
/// becomes. llama.cpp writes Mistral and LLaMA 3.x files as `llama`.
const ARCHITECTURES: [(&str, Family); 3] = [
    ("llama", Family::Llama),
    ("qwen2", Family::Qwen2),
    ("qwen3", Family::Qwen3),
];

/// The file's `general.architecture`, if spp converts it.
fn architecture(c: &Content) -> Result<(&'static str, Family)> {
    let arch = match meta(c, "general.architecture") {
        Some(Value::String(s)) => s,
        _ => bail!("GGUF metadata general.architecture is missing"),
    };
    match ARCHITECTURES.iter().find(|(a, _)| a == arch) {
        Some(&found) => Ok(found),
        None => bail!(
            "GGUF architecture {arch:?} is not supported: spp converts {} files (LLaMA 1/2/3, SmolLM, \
             Mistral, Qwen2/2.5, Qwen3)",
            ARCHITECTURES.map(|(a, _)| format!("{a:?}")).join(", ")
        ),
    }
}

/// Query and key heads whose `attn_q` / `attn_k` rows llama.cpp permuted. Its converter does
/// that for `llama` only, where its RoPE rotates adjacent pairs; Qwen files use the NeoX
/// (`rotate_half`) RoPE and keep the Hugging Face rows.
fn permuted_heads(c: &Content, cfg: &LlamaConfig) -> Result<Option<(usize, usize)>> {
    let (arch, _) = architecture(c)?;
    Ok((arch == "llama").then(|| (cfg.num_attention_heads, cfg.num_kv_heads())))
}

/// `config.json` for the model a GGUF file describes. `file` is read only for `rope_freqs`.
pub fn config_from_gguf(c: &Content, file: &mut std::fs::File) -> Result<LlamaConfig> {
    let (p, family) = architecture(c)?;
    let has = |t: &str| c.tensor_infos.contains_key(t);
    let hidden = required(c, &format!("{p}.embedding_length"))?;
    let heads = required(c, &format!("{p}.attention.head_count"))?;
    let kv = meta_usize(c, &format!("{p}.attention.head_count_kv"))?.unwrap_or(heads);
    let vocab = match c.tensor_infos.get("token_embd.weight") {
        Some(t) => t.shape.dims()[0],
        None => bail!("GGUF file has no token_embd.weight tensor"),
    };
    // Written when config.json had `head_dim` (Qwen3's is not hidden / heads). transformers'
    // Qwen attention takes a `"head_dim": null` in config.json for the head size itself, so Qwen
    // configs always get the number.
    let head_dim = meta_usize(c, &format!("{p}.attention.key_length"))?.or_else(|| {
        matches!(family, Family::Qwen2 | Family::Qwen3)
            .then(|| hidden.checked_div(heads))
            .flatten()
    });
    // Mistral's window; llama.cpp's converter does not write it today (it runs Mistral as
    // LLaMA), but a file that has it describes a Mistral model.
    let window = meta_usize(c, &format!("{p}.attention.sliding_window"))?.filter(|&w| w > 0);
    let family = match (family, window) {
        (Family::Llama, Some(_)) if has("blk.0.attn_q.bias") => bail!(
            "GGUF file has a sliding window (Mistral) and attention biases, which Mistral does not have"
        ),
        (Family::Llama, Some(_)) => Family::Mistral,
        (f, _) => f,
    };
    let rope_scaling = match meta(c, &format!("{p}.rope.scaling.type")) {
        Some(Value::String(t)) if t == "linear" => Some(serde_json::json!({
            "rope_type": "linear",
            "factor": meta_f64(c, &format!("{p}.rope.scaling.factor"))?.unwrap_or(1.0)
        })),
        Some(Value::String(t)) if t == "none" => None,
        Some(other) => bail!(
            "GGUF rope scaling {other:?} is not supported (spp supports none and linear from GGUF, \
             and LLaMA-3 scaling from rope_freqs)"
        ),
        None => None,
    };
    let ids = |k: &str| -> Result<Option<usize>> { meta_usize(c, &format!("tokenizer.ggml.{k}")) };
    let mut cfg = serde_json::json!({
        "architectures": [family.architecture()],
        "model_type": family.model_type(),
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": required(c, &format!("{p}.feed_forward_length"))?,
        "num_hidden_layers": required(c, &format!("{p}.block_count"))?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "rms_norm_eps": meta_f64(c, &format!("{p}.attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
        "rope_theta": meta_f64(c, &format!("{p}.rope.freq_base"))?.unwrap_or(10000.0),
        "max_position_embeddings": meta_usize(c, &format!("{p}.context_length"))?.unwrap_or(2048),
        "tie_word_embeddings": !has("output.weight"),
        // Qwen2's q/k/v biases are implied by its family, not by this key.
        "attention_bias": family != Family::Qwen2 && has("blk.0.attn_q.bias"),
        "mlp_bias": has("blk.0.ffn_up.bias"),
        "hidden_act": "silu",
        "bos_token_id": ids("bos_token_id")?,
        "eos_token_id": ids("eos_token_id")?,
    });
    if let Some(hd) = head_dim {
        cfg["head_dim"] = hd.into();
    }
    if let Some(rs) = rope_scaling {
        cfg["rope_scaling"] = rs;
    }
    if let Some(w) = window {
        cfg["sliding_window"] = w.into();
    }
    let mut cfg: LlamaConfig = serde_json::from_value(cfg)
        .map_err(|e| Error::Msg(format!("GGUF metadata gives an invalid config: {e}")))?;
    cfg.validate()?;
    if let Some(rot) = meta_usize(c, &format!("{p}.rope.dimension_count"))? {
        if rot != cfg.head_dim() {
            bail!(
                "GGUF {p}.rope.dimension_count = {rot} rotates part of each head (head_dim {}); \
                 spp's models rotate whole heads",
                cfg.head_dim()
            );
        }
    }
    if has("rope_freqs.weight") {
        if p != "llama" || cfg.rope_scaling.is_some() {
            bail!(
                "GGUF file carries rope_freqs.weight with architecture {p:?}{}: spp maps rope_freqs \
                 back to LLaMA-3 rope scaling only",
                if cfg.rope_scaling.is_some() { " and a rope scaling type" } else { "" }
            );
        }
        let freqs = c
            .tensor(file, "rope_freqs.weight", &Device::Cpu)
            .and_then(|q| q.dequantize(&Device::Cpu))
            .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
            .map_err(|e| Error::Msg(format!("GGUF tensor rope_freqs.weight: {e}")))?;
        cfg.rope_scaling = Some(llama3_scaling(c, &cfg, &freqs)?);
        cfg.validate()?;
    }
    Ok(cfg)
}

/// The LLaMA-3 `rope_scaling` whose frequency factors are the file's `rope_freqs`.
///
/// llama.cpp's converter keeps only the per-frequency divisors (`rope_freqs.weight`, one per
/// rotated pair) and no parameter. They are recomputed, the way transformers computes LLaMA-3
/// frequencies, for candidate parameters: `factor` from metadata if a writer put it there, else
/// the file's largest divisor (it is `factor` itself whenever some wavelength is past the low
/// band, as in every released LLaMA 3.x), else 8 (LLaMA 3.1, 3.3) or 32 (3.2); low/high 1 and 4
/// and the original context 8192 (llama.cpp always computes with 8192 unless config.json has a
/// top-level `original_max_position_embeddings`, which Meta's do not). A candidate is accepted
/// only if every divisor matches to float precision, so a model is never given a frequency
/// table other than its own.
fn llama3_scaling(c: &Content, cfg: &LlamaConfig, freqs: &[f32]) -> Result<RopeScaling> {
    let pairs = cfg.head_dim() / 2;
    if freqs.len() != pairs {
        bail!(
            "GGUF rope_freqs.weight has {} values but head_dim {} has {pairs} rotated pairs",
            freqs.len(),
            cfg.head_dim()
        );
    }
    let largest = freqs.iter().copied().fold(f32::NAN, f32::max) as f64;
    let factors = [
        meta_f64(c, "llama.rope.scaling.factor")?,
        Some(largest).filter(|f| f.is_finite() && *f >= 1.0),
        Some(8.0),
        Some(32.0),
    ];
    let originals = [
        meta_usize(c, "llama.rope.scaling.original_context_length")?,
        Some(8192),
    ];
    let mut tried = vec![];
    for factor in factors.into_iter().flatten() {
        for original in originals.into_iter().flatten() {
            let scaling = RopeScaling {
                rope_type: "llama3".into(),
                factor: Some(factor),
                low_freq_factor: Some(1.0),
                high_freq_factor: Some(4.0),
                original_max_position_embeddings: Some(original),
                extra: Default::default(),
            };
            let candidate = LlamaConfig {
                rope_scaling: Some(scaling.clone()),
                ..cfg.clone()
            };
            let divisors = crate::model::rope::frequency_divisors(&candidate);
            let same = divisors.iter().zip(freqs).all(|(&got, want)| {
                let got = got as f64;
                (got - *want as f64).abs() <= ROPE_FREQS_TOLERANCE * got.abs()
            });
            if same {
                return Ok(scaling);
            }
            tried.push(format!("factor {factor} with original context {original}"));
        }
    }
    bail!(
        "GGUF rope_freqs.weight {freqs:?} matches no LLaMA-3 rope scaling (low_freq_factor 1, \
         high_freq_factor 4; tried {}): spp cannot write a config.json that reproduces these \
         frequencies; convert the original Hugging Face checkpoint instead",
        tried.join(", ")
    )
}

/// How far a recomputed rope divisor may be from the stored f32 one: a few f32 roundings.
const ROPE_FREQS_TOLERANCE: f64 = 1e-6;

/// The Hugging Face name of a llama.cpp tensor name, if it is one spp uses.
fn hf_name(gguf: &str) -> Option<String> {
    translate(gguf, true)
}

/// llama.cpp's names of the tensors outside the blocks and of each block's modules, beside the
/// Hugging Face ones.
const NAMES: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];
const BLOCK_NAMES: [(&str, &str); 11] = [
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// A tensor name in the other convention: llama.cpp → Hugging Face with `to_hf`, else the reverse.
fn translate(name: &str, to_hf: bool) -> Option<String> {
    type Pair = (&'static str, &'static str);
    // (from, to) for this direction.
    let orient = |(gguf, hf): Pair| if to_hf { (gguf, hf) } else { (hf, gguf) };
    if let Some((_, to)) = NAMES
        .into_iter()
        .map(orient)
        .find(|(from, _)| *from == name)
    {
        return Some(to.to_string());
    }
    let (prefix, other) = orient(("blk.", "model.layers."));
    let (layer, rest) = name.strip_prefix(prefix)?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    let (_, to) = BLOCK_NAMES
        .into_iter()
        .map(orient)
        .find(|(from, _)| *from == module)?;
    Some(format!("{other}{layer}.{to}.{kind}"))
}

/// The llama.cpp name of a Hugging Face tensor name.
pub fn gguf_name(hf: &str) -> Option<String> {
    translate(hf, false)
}

/// Undoes llama.cpp's row permutation of q/k (`[heads, 2, d/2]` → `[heads, d/2, 2]` on disk):
/// the result is laid out for `rotate_half` RoPE. Works for weights `[out, in]` and biases `[out]`.
pub fn unpermute_rows(t: &Tensor, n_heads: usize) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let out = dims[0];
    if n_heads == 0 || !out.is_multiple_of(2 * n_heads) {
        bail!("cannot un-permute a tensor of {out} rows into {n_heads} heads");
    }
    let rest: usize = dims[1..].iter().product();
    let half = out / n_heads / 2;
    Ok(t.reshape((n_heads, half, 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}

/// Tensors that describe the model but are no weight of it: LLaMA-3's `rope_freqs`, which
/// [`config_from_gguf`] turns into `rope_scaling`.
const NOT_WEIGHTS: [&str; 1] = ["rope_freqs.weight"];

/// The file's weights: Hugging Face name → GGUF name.
fn weight_names(c: &Content) -> Result<HashMap<String, String>> {
    let mut names = HashMap::new();
    for name in c.tensor_infos.keys() {
        if NOT_WEIGHTS.contains(&name.as_str()) {
            continue;
        }
        let Some(hf) = hf_name(name) else {
            bail!("GGUF tensor {name} has no Hugging Face LLaMA-family counterpart: this file is not a plain llama/qwen2/qwen3 model");
        };
        names.insert(hf, name.clone());
    }
    Ok(names)
}

/// One tensor dequantised to f32, its q/k rows un-permuted where llama.cpp permuted them
/// (`heads` = query and key heads, from [`permuted_heads`]).
fn read_weight(
    c: &Content,
    file: &mut std::fs::File,
    name: &str,
    heads: Option<(usize, usize)>,
) -> Result<Tensor> {
    let q = c
        .tensor(file, name, &Device::Cpu)
        .map_err(|e| Error::Msg(format!("GGUF tensor {name}: {e}")))?;
    let t = q.dequantize(&Device::Cpu)?;
    // Biases of q/k were permuted with their rows, so they are un-permuted the same way.
    match heads {
        Some((q_heads, _)) if name.contains(".attn_q.") => unpermute_rows(&t, q_heads),
        Some((_, k_heads)) if name.contains(".attn_k.") => unpermute_rows(&t, k_heads),
        _ => Ok(t),
    }
}

/// All weights of the file under Hugging Face names, dequantised and cast to `dtype`.
pub fn hf_tensors(
    c: &Content,
    file: &mut std::fs::File,
    cfg: &LlamaConfig,
    dtype: DType,
) -> Result<HashMap<String, Tensor>> {
    let heads = permuted_heads(c, cfg)?;
    let mut out = HashMap::new();
    for (hf, name) in weight_names(c)? {
        let t = read_weight(c, file, &name, heads)?;
        out.insert(hf, t.to_dtype(dtype)?);
    }
    Ok(out)
}

/// The weights of a GGUF file under their Hugging Face names, dequantised when asked for, with
/// the rows of `attn_q` / `attn_k` un-permuted where llama.cpp permuted them.
pub struct GgufSource {
    file: std::sync::Mutex<std::fs::File>,
    content: Content,
    /// Hugging Face name → GGUF name.
    names: HashMap<String, String>,
    heads: Option<(usize, usize)>,
    path: std::path::PathBuf,
}

impl GgufSource {
    pub fn new(
        path: &Path,
        content: Content,
        file: std::fs::File,
        cfg: &LlamaConfig,
    ) -> Result<Self> {
        let in_file = |e: Error| Error::Msg(format!("{}: {e}", path.display()));
        Ok(Self {
            names: weight_names(&content).map_err(in_file)?,
            heads: permuted_heads(&content, cfg).map_err(in_file)?,
            file: std::sync::Mutex::new(file),
            content,
            path: path.to_path_buf(),
        })
    }
}

impl crate::model::TensorSource for GgufSource {
    fn get(&self, hf: &str) -> Result<Option<Tensor>> {
        let Some(name) = self.names.get(hf) else {
            return Ok(None);
        };
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        read_weight(&self.content, &mut file, name, self.heads)
            .map(Some)
            .map_err(|e| Error::Msg(format!("{}: {e}", self.path.display())))
    }
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// Converts a GGUF file into a Hugging Face directory at `out` (written atomically), one block
/// in memory at a time, in shards of at most `max_shard_bytes`.
pub fn convert(
    path: &Path,
    out: &Path,
    dtype: DType,
    force: bool,
    max_shard_bytes: u64,
) -> Result<ConvertReport> {
    let (content, mut file) = read_header(path)?;
    let cfg = config_from_gguf(&content, &mut file)
        .map_err(|e| Error::Msg(format!("{}: {e}", path.display())))?;
    let tok = tokenizer::tokenizer_files(&content)
        .map_err(|e| Error::Msg(format!("{}: {e}", path.display())))?;
    let mut source_types = BTreeMap::new();
    for info in content.tensor_infos.values() {
        *source_types
            .entry(format!("{:?}", info.ggml_dtype))
            .or_insert(0) += 1;
    }
    let tokenizer_kind = match content.metadata.get("tokenizer.ggml.model") {
        Some(Value::String(s)) => s.clone(),
        _ => "unknown".into(),
    };
    let src = GgufSource::new(path, content, file, &cfg)?;
    let used = crate::model::stream::layout(&cfg);
    if let Some(extra) = src
        .names
        .keys()
        .find(|n| !used.iter().any(|(u, _)| u == *n))
    {
        bail!(
            "{}: tensor {extra} is not part of the model config.json describes ({} layers, tied head {})",
            path.display(),
            cfg.num_hidden_layers,
            cfg.tie_word_embeddings
        );
    }
    let model = StreamedModel::from_source(
        cfg.clone(),
        std::sync::Arc::new(src),
        dtype,
        &Device::Cpu,
        path,
    )?;
    let generation = serde_json::json!({
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
    });
    write_dir_atomically(out, force, |tmp| {
        write_config(tmp, &cfg, dtype)?;
        let mut w = ShardWriter::for_model(tmp, &cfg, dtype, max_shard_bytes)?;
        model.write_head_tensors(&mut w)?;
        let mut blocks = model.blocks();
        for i in 0..model.n_layers() {
            w.write_block(i, &blocks.next_block()?)?;
        }
        model.write_tail_tensors(&mut w)?;
        w.finish()?;
        write_json(&tmp.join("tokenizer.json"), &tok.tokenizer_json)?;
        write_json(&tmp.join("tokenizer_config.json"), &tok.tokenizer_config)?;
        write_json(&tmp.join("generation_config.json"), &generation)?;
        Ok(())
    })?;
    Ok(ConvertReport {
        tensors: used.len(),
        parameters: used.iter().map(|(_, s)| s.iter().product::<usize>()).sum(),
        source_types,
        tied_embeddings: cfg.tie_word_embeddings,
        tokenizer: tokenizer_kind,
        dtype: torch_dtype_name(dtype).into(),
    })
}
