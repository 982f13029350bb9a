//! GGUF (v2/v3) llama-architecture files → Hugging Face directories.
//!
//! Tensors are dequantised by candle (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the
//! K-quants Q2_K…Q8_K) to f32 and then cast to the requested dtype. llama.cpp's converter
//! permutes the rows of `attn_q`/`attn_k` so that RoPE rotates adjacent pairs; we undo that so the
//! result uses Hugging Face's `rotate_half` layout. The tokenizer is rebuilt from the GGUF
//! vocabulary (see [`tokenizer`]).

pub mod tokenizer;

use crate::bail;
use crate::error::{Error, IoContext, Result};
use crate::model::checkpoint::{torch_dtype_name, write_config, write_dir_atomically, write_json};
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

/// `config.json` for the model a GGUF file describes.
pub fn config_from_gguf(c: &Content) -> Result<LlamaConfig> {
    let arch = match meta(c, "general.architecture") {
        Some(Value::String(s)) => s.clone(),
        _ => bail!("GGUF metadata general.architecture is missing"),
    };
    if arch != "llama" {
        bail!("GGUF architecture {arch:?} is not supported: spp converts llama-architecture files (LLaMA 1/2/3, SmolLM, Mistral)");
    }
    let p = "llama";
    let hidden = required(c, &format!("{p}.embedding_length"))?;
    let heads = required(c, &format!("{p}.attention.head_count"))?;
    let kv = meta_usize(c, &format!("{p}.attention.head_count_kv"))?.unwrap_or(heads);
    let vocab = match c.tensor_infos.get("token_embd.weight") {
        Some(t) => t.shape.dims()[0],
        None => bail!("GGUF file has no token_embd.weight tensor"),
    };
    let head_dim = meta_usize(c, &format!("{p}.attention.key_length"))?;
    let rope_scaling = match meta(c, &format!("{p}.rope.scaling.type")) {
        Some(Value::String(t)) if t == "linear" => Some(serde_json::json!({
            "rope_type": "linear",
            "factor": meta_f64(c, &format!("{p}.rope.scaling.factor"))?.unwrap_or(1.0)
        })),
        Some(Value::String(t)) if t == "none" => None,
        Some(other) => bail!(
            "GGUF rope scaling {other:?} is not supported (spp supports none and linear from GGUF)"
        ),
        None => None,
    };
    if c.tensor_infos.contains_key("rope_freqs.weight") {
        bail!(
            "this GGUF carries rope_freqs (LLaMA-3.1-style rope scaling), which spp cannot map back to \
             config.json parameters yet; convert the original Hugging Face checkpoint instead"
        );
    }
    let ids = |k: &str| -> Result<Option<usize>> { meta_usize(c, &format!("tokenizer.ggml.{k}")) };
    let mut cfg = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": required(c, &format!("{p}.feed_forward_length"))?,
        "num_hidden_layers": required(c, &format!("{p}.block_count"))?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "rms_norm_eps": meta_f64(c, &format!("{p}.attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
        "rope_theta": meta_f64(c, &format!("{p}.rope.freq_base"))?.unwrap_or(10000.0),
        "max_position_embeddings": meta_usize(c, &format!("{p}.context_length"))?.unwrap_or(2048),
        "tie_word_embeddings": !c.tensor_infos.contains_key("output.weight"),
        "attention_bias": c.tensor_infos.contains_key("blk.0.attn_q.bias"),
        "mlp_bias": c.tensor_infos.contains_key("blk.0.ffn_up.bias"),
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
    let cfg: LlamaConfig = serde_json::from_value(cfg)
        .map_err(|e| Error::Msg(format!("GGUF metadata gives an invalid config: {e}")))?;
    cfg.validate()?;
    Ok(cfg)
}

/// The Hugging Face name of a llama.cpp tensor name, if it is one spp uses.
fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    let hf = match module {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
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

/// All tensors of the file under Hugging Face names, dequantised and cast to `dtype`.
pub fn hf_tensors(
    c: &Content,
    file: &mut std::fs::File,
    cfg: &LlamaConfig,
    dtype: DType,
) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    let mut names: Vec<&String> = c.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let Some(hf) = hf_name(name) else {
            bail!("GGUF tensor {name} has no Hugging Face LLaMA counterpart: this file is not a plain llama model");
        };
        let q = c
            .tensor(file, name, &Device::Cpu)
            .map_err(|e| Error::Msg(format!("GGUF tensor {name}: {e}")))?;
        let mut t = q.dequantize(&Device::Cpu)?;
        if name.contains(".attn_q.") {
            t = unpermute_rows(&t, cfg.num_attention_heads)?;
        } else if name.contains(".attn_k.") {
            t = unpermute_rows(&t, cfg.num_kv_heads())?;
        }
        out.insert(hf, t.to_dtype(dtype)?);
    }
    Ok(out)
}

/// The tensors of a GGUF file under their Hugging Face names, dequantised when asked for, with
/// the rows of `attn_q` / `attn_k` un-permuted.
pub struct GgufSource {
    file: std::sync::Mutex<std::fs::File>,
    content: Content,
    /// Hugging Face name → GGUF name.
    names: HashMap<String, String>,
    heads: (usize, usize),
    path: std::path::PathBuf,
}

impl GgufSource {
    pub fn new(
        path: &Path,
        content: Content,
        file: std::fs::File,
        cfg: &LlamaConfig,
    ) -> Result<Self> {
        let mut names = HashMap::new();
        for name in content.tensor_infos.keys() {
            let Some(hf) = hf_name(name) else {
                bail!("{}: GGUF tensor {name} has no Hugging Face LLaMA counterpart: this file is not a plain llama model", path.display());
            };
            names.insert(hf, name.clone());
        }
        Ok(Self {
            file: std::sync::Mutex::new(file),
            content,
            names,
            heads: (cfg.num_attention_heads, cfg.num_kv_heads()),
            path: path.to_path_buf(),
        })
    }
}

impl crate::model::TensorSource for GgufSource {
    fn get(&self, hf: &str) -> Result<Option<Tensor>> {
        let Some(name) = self.names.get(hf) else {
            return Ok(None);
        };
        let q = {
            let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
            self.content
                .tensor(&mut *file, name, &Device::Cpu)
                .map_err(|e| {
                    Error::Msg(format!("{}: GGUF tensor {name}: {e}", self.path.display()))
                })?
        };
        let mut t = q.dequantize(&Device::Cpu)?;
        if name.contains(".attn_q.") {
            t = unpermute_rows(&t, self.heads.0)?;
        } else if name.contains(".attn_k.") {
            t = unpermute_rows(&t, self.heads.1)?;
        }
        Ok(Some(t))
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
    let (content, file) = read_header(path)?;
    let cfg =
        config_from_gguf(&content).map_err(|e| Error::Msg(format!("{}: {e}", path.display())))?;
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
