//! Hugging Face directory → GGUF v3, so that a pruned and fine-tuned model runs in llama.cpp and
//! Ollama (densely there). The inverse of [`super::convert`]: llama.cpp's tensor names and
//! metadata keys, the q/k rows of the `llama` architecture permuted into llama.cpp's
//! adjacent-pair RoPE layout, LLaMA-3 rope scaling as a `rope_freqs` tensor, and the tokenizer
//! written as GGUF vocabulary metadata. One tensor is in memory at a time; the file is written
//! under a temporary name and renamed when complete.

use super::tokenizer::{LLAMA3_SPLIT, QWEN2_SPLIT};
use crate::bail;
use crate::error::{Error, IoContext, Result};
use crate::model::config::Family;
use crate::model::{DTypeChoice, LlamaConfig, StreamedModel};
use crate::outpath;
use crate::tokenizer::Tokenizer;
use candle_core::{DType, Device, Tensor};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::io::{BufWriter, Seek, Write};
use std::path::Path;

/// The type the 2-D weights are stored in; norms, biases and `rope_freqs` are always F32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Precision {
    F32,
    F16,
    BF16,
    Q8_0,
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "f32" => Precision::F32,
            "f16" => Precision::F16,
            "bf16" => Precision::BF16,
            "q8_0" | "q8" => Precision::Q8_0,
            other => bail!("unknown GGUF export type {other:?}: use f32, f16, bf16 or q8_0"),
        })
    }
}

/// GGML tensor types written here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q8_0 = 8,
    BF16 = 30,
}

impl GgmlType {
    fn bytes(self, n: usize) -> usize {
        match self {
            GgmlType::F32 => 4 * n,
            GgmlType::F16 | GgmlType::BF16 => 2 * n,
            GgmlType::Q8_0 => n / Q8_BLOCK * (2 + Q8_BLOCK),
        }
    }
}

const Q8_BLOCK: usize = 32;
const ALIGNMENT: usize = 32;

/// What an export wrote.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ExportReport {
    pub architecture: String,
    pub tensors: usize,
    pub bytes: u64,
    /// GGML tensor type → number of tensors of that type.
    pub tensor_types: BTreeMap<String, usize>,
    /// `tokenizer.ggml.model` and, for byte-level vocabularies, `tokenizer.ggml.pre`.
    pub tokenizer: String,
    pub pre_tokenizer: Option<String>,
    pub warnings: Vec<String>,
    pub seconds: f64,
}

impl ExportReport {
    /// The line `spp export gguf` prints for an export of `model` into `out`.
    pub fn line(&self, model: &Path, out: &Path) -> String {
        format!(
            "exported {} -> {}: {} architecture, {} tensors {:?}, tokenizer {}{}, {:.1} MB in {:.1} s\n",
            model.display(),
            out.display(),
            self.architecture,
            self.tensors,
            self.tensor_types,
            self.tokenizer,
            self.pre_tokenizer
                .as_deref()
                .map_or(String::new(), |p| format!(" ({p})")),
            self.bytes as f64 / 1e6,
            self.seconds
        )
    }
}

/// Q8_0 as ggml's reference quantiser makes it: per block of 32, the scale `max|x| / 127` as f16,
/// then `round(x / scale)` (half away from zero) as i8.
pub fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / Q8_BLOCK * (2 + Q8_BLOCK));
    for block in x.chunks_exact(Q8_BLOCK) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|v| (v * id).round() as i8 as u8));
    }
    out
}

/// llama.cpp's q/k row order for the `llama` architecture (`[heads, 2, d/2]` → `[heads, d/2, 2]`):
/// the inverse of [`super::unpermute_rows`].
pub fn permute_rows(t: &Tensor, n_heads: usize) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let out = dims[0];
    if n_heads == 0 || !out.is_multiple_of(2 * n_heads) {
        bail!("cannot permute a tensor of {out} rows into {n_heads} heads");
    }
    let rest: usize = dims[1..].iter().product();
    Ok(t.reshape((n_heads, 2, out / n_heads / 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}

/// llama.cpp's architecture name for a family: Mistral and LLaMA 3 files use `llama`.
fn architecture(family: Family) -> &'static str {
    match family {
        Family::Llama | Family::Mistral => "llama",
        Family::Qwen2 => "qwen2",
        Family::Qwen3 => "qwen3",
    }
}

/// A metadata value.
enum Meta {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
    F32s(Vec<f32>),
}

fn put_str(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

impl Meta {
    fn write(&self, w: &mut impl Write) -> std::io::Result<()> {
        let (u32_, i32_, f32_, bool_, str_, arr) = (4u32, 5u32, 6u32, 7u32, 8u32, 9u32);
        let array = |w: &mut dyn Write, ty: u32, n: usize| -> std::io::Result<()> {
            w.write_all(&arr.to_le_bytes())?;
            w.write_all(&ty.to_le_bytes())?;
            w.write_all(&(n as u64).to_le_bytes())
        };
        match self {
            Meta::U32(v) => {
                w.write_all(&u32_.to_le_bytes())?;
                w.write_all(&v.to_le_bytes())
            }
            Meta::F32(v) => {
                w.write_all(&f32_.to_le_bytes())?;
                w.write_all(&v.to_le_bytes())
            }
            Meta::Bool(v) => {
                w.write_all(&bool_.to_le_bytes())?;
                w.write_all(&[*v as u8])
            }
            Meta::Str(s) => {
                w.write_all(&str_.to_le_bytes())?;
                put_str(w, s)
            }
            Meta::Strs(v) => {
                array(w, str_, v.len())?;
                v.iter().try_for_each(|s| put_str(w, s))
            }
            Meta::I32s(v) => {
                array(w, i32_, v.len())?;
                v.iter().try_for_each(|x| w.write_all(&x.to_le_bytes()))
            }
            Meta::F32s(v) => {
                array(w, f32_, v.len())?;
                v.iter().try_for_each(|x| w.write_all(&x.to_le_bytes()))
            }
        }
    }
}

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

/// The GGUF vocabulary metadata of a model directory's `tokenizer.json`.
struct Vocabulary {
    meta: Vec<(String, Meta)>,
    model: &'static str,
    pre: Option<&'static str>,
}

/// llama.cpp's pre-tokenizer type for a byte-level `tokenizer.json` whose pre-tokenizer is one of
/// those spp's GGUF import writes (and the models themselves ship); `None` for any other, which
/// llama.cpp would split differently.
fn pre_type(pre: &Json) -> Option<&'static str> {
    let byte_level = |p: &Json, regex: bool| {
        p["type"] == "ByteLevel" && p["use_regex"].as_bool().unwrap_or(true) == regex
    };
    if byte_level(pre, true) {
        return Some("gpt-2");
    }
    let parts = pre["pretokenizers"].as_array()?;
    match parts.as_slice() {
        [digits, bl] if digits["type"] == "Digits" && byte_level(bl, true) => Some("smollm"),
        [split, bl] if split["type"] == "Split" && byte_level(bl, false) => {
            match split["pattern"]["Regex"].as_str()? {
                r if r == LLAMA3_SPLIT => Some("llama-bpe"),
                r if r == QWEN2_SPLIT => Some("qwen2"),
                _ => None,
            }
        }
        _ => None,
    }
}

fn vocabulary(dir: &Path, cfg: &LlamaConfig) -> Result<Vocabulary> {
    let path = dir.join("tokenizer.json");
    let text = std::fs::read_to_string(&path).at(&path)?;
    let tj: Json = serde_json::from_str(&text)
        .map_err(|e| Error::Msg(format!("{}: invalid JSON ({e})", path.display())))?;
    let tok = Tokenizer::load(dir, cfg)?;
    let model = &tj["model"];
    if model["type"] != "BPE" {
        bail!(
            "{}: a {} vocabulary cannot be written as GGUF by spp (BPE vocabularies only: byte-level \
             like GPT-2 / LLaMA 3 / Qwen, or SentencePiece BPE like LLaMA 2)",
            path.display(),
            model["type"]
        );
    }
    let Some(vocab) = model["vocab"].as_object() else {
        bail!("{}: model.vocab is missing", path.display());
    };
    let mut tokens: BTreeMap<u32, (String, i32)> = BTreeMap::new();
    for (t, id) in vocab {
        let id = id.as_u64().ok_or_else(|| {
            Error::Msg(format!(
                "{}: the id of {t:?} is not a number",
                path.display()
            ))
        })?;
        let ty = if t.len() == 6 && t.starts_with("<0x") && t.ends_with('>') {
            BYTE
        } else {
            NORMAL
        };
        tokens.insert(id as u32, (t.clone(), ty));
    }
    for added in tj["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(content)) = (added["id"].as_u64(), added["content"].as_str()) else {
            bail!("{}: an added token lacks its id or content", path.display());
        };
        let ty = if added["special"].as_bool().unwrap_or(false) {
            CONTROL
        } else {
            USER_DEFINED
        };
        tokens.insert(id as u32, (content.to_string(), ty));
    }
    let tc_path = dir.join("tokenizer_config.json");
    let tc: Json = match std::fs::read_to_string(&tc_path) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| Error::Msg(format!("{}: invalid JSON ({e})", tc_path.display())))?,
        Err(_) => Json::Null,
    };
    let named = |key: &str| {
        crate::tokenizer::token_text(tc.get(key)).and_then(|t| tok.inner.token_to_id(&t))
    };
    let unk = model["unk_token"]
        .as_str()
        .and_then(|u| tok.inner.token_to_id(u))
        .or_else(|| named("unk_token"));
    let sentencepiece = model["byte_fallback"].as_bool().unwrap_or(false);
    // llama.cpp's SentencePiece vocabularies mark the unknown token UNKNOWN; byte-level ones keep
    // it CONTROL.
    if let Some(e) = unk
        .filter(|_| sentencepiece)
        .and_then(|u| tokens.get_mut(&u))
    {
        e.1 = UNKNOWN;
    }
    // llama.cpp takes the vocabulary size from the token list: a model whose embedding has more
    // rows than its tokenizer has tokens (padded for speed, as Qwen's) gets UNUSED placeholders,
    // as llama.cpp's converter adds them.
    let n = tokens
        .keys()
        .next_back()
        .map_or(0, |&k| k as usize + 1)
        .max(cfg.vocab_size);
    if n > cfg.vocab_size {
        bail!(
            "{}: the tokenizer has ids up to {} but the model's embedding has {} rows; they do not belong together",
            path.display(),
            n - 1,
            cfg.vocab_size
        );
    }
    let mut list = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    for id in 0..n as u32 {
        let (t, ty) = tokens
            .remove(&id)
            .unwrap_or_else(|| (format!("[PAD{id}]"), UNUSED));
        list.push(t);
        types.push(ty);
    }
    let merges: Vec<String> = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(p) if p.len() == 2 => Ok(format!(
                "{} {}",
                p[0].as_str().unwrap_or(""),
                p[1].as_str().unwrap_or("")
            )),
            other => Err(Error::Msg(format!(
                "{}: merge {other} is neither \"a b\" nor [a, b]",
                path.display()
            ))),
        })
        .collect::<Result<_>>()?;
    let (gmodel, pre) = if sentencepiece {
        ("llama", None)
    } else {
        let Some(pre) = pre_type(&tj["pre_tokenizer"]) else {
            bail!(
                "{}: its pre-tokenizer is not one llama.cpp is known to reproduce (GPT-2's byte-level \
                 split, SmolLM's, LLaMA 3's or Qwen2's); written as GGUF, text would be split into \
                 different tokens",
                path.display()
            );
        };
        ("gpt2", Some(pre))
    };
    let probe = tok
        .inner
        .encode("a", true)
        .map_err(|e| Error::Msg(format!("{}: {e}", path.display())))?;
    let add_bos = tok.bos_id.is_some() && probe.get_ids().first() == tok.bos_id.as_ref();
    let mut meta = vec![
        ("tokenizer.ggml.model".to_string(), Meta::Str(gmodel.into())),
        ("tokenizer.ggml.tokens".into(), Meta::Strs(list)),
        ("tokenizer.ggml.token_type".into(), Meta::I32s(types)),
    ];
    if sentencepiece {
        // llama.cpp's SentencePiece tokenizer merges the pair whose result scores best: the rank of
        // the first merge that makes a piece, negated, reproduces the merge order.
        let mut scores = vec![0f32; n];
        for (rank, m) in merges.iter().enumerate().rev() {
            if let Some(id) = tok.inner.token_to_id(&m.replacen(' ', "", 1)) {
                scores[id as usize] = -(rank as f32) - 1.0;
            }
        }
        meta.push(("tokenizer.ggml.scores".into(), Meta::F32s(scores)));
        let prefix = tj["normalizer"].to_string().contains("Prepend");
        meta.push(("tokenizer.ggml.add_space_prefix".into(), Meta::Bool(prefix)));
    }
    meta.push(("tokenizer.ggml.merges".into(), Meta::Strs(merges)));
    if let Some(pre) = pre {
        meta.push(("tokenizer.ggml.pre".into(), Meta::Str(pre.into())));
    }
    for (key, id) in [
        ("bos_token_id", tok.bos_id),
        ("eos_token_id", tok.eos_ids.first().copied()),
        ("unknown_token_id", unk),
    ] {
        if let Some(id) = id {
            meta.push((format!("tokenizer.ggml.{key}"), Meta::U32(id)));
        }
    }
    if let Some(pad) = named("pad_token") {
        meta.push(("tokenizer.ggml.padding_token_id".into(), Meta::U32(pad)));
    }
    meta.push(("tokenizer.ggml.add_bos_token".into(), Meta::Bool(add_bos)));
    if let Some(t) = &tok.chat_template {
        meta.push(("tokenizer.chat_template".into(), Meta::Str(t.clone())));
    }
    Ok(Vocabulary {
        meta,
        model: gmodel,
        pre,
    })
}

/// Writes the model in `dir` as one GGUF file `out`.
pub fn export(dir: &Path, out: &Path, precision: Precision, force: bool) -> Result<ExportReport> {
    let start = std::time::Instant::now();
    outpath::check(out, outpath::OutKind::File, force, &[dir])?;
    let sm = StreamedModel::open(dir, DTypeChoice::F32, &Device::Cpu)?;
    let cfg = sm.cfg().clone();
    let family = cfg.family()?;
    let arch = architecture(family);
    let mut warnings = Vec::new();
    let windows: Vec<usize> = (0..cfg.num_hidden_layers)
        .filter_map(|i| cfg.sliding_window(i))
        .collect();
    if let Some(w) = windows.first() {
        warnings.push(format!(
            "{} blocks have a sliding window of {w}: llama.cpp's `{arch}` architecture attends to \
             every earlier token, so beyond the window its outputs differ from spp's and transformers'",
            windows.len()
        ));
    }
    if let Some(rs) = cfg
        .rope_scaling
        .as_ref()
        .filter(|r| r.rope_type != "llama3" && r.rope_type != "linear" && r.rope_type != "default")
    {
        bail!(
            "rope_scaling of type {:?} has no GGUF form spp writes",
            rs.rope_type
        );
    }
    let vocab = vocabulary(dir, &cfg)?;

    let key = |k: &str| format!("{arch}.{k}");
    let mut meta: Vec<(String, Meta)> = vec![
        ("general.architecture".into(), Meta::Str(arch.into())),
        (
            "general.name".into(),
            Meta::Str(
                dir.file_name()
                    .map_or("model".into(), |n| n.to_string_lossy().into_owned()),
            ),
        ),
        (
            "general.file_type".into(),
            Meta::U32(match precision {
                Precision::F32 => 0,
                Precision::F16 => 1,
                Precision::Q8_0 => 7,
                Precision::BF16 => 32,
            }),
        ),
        ("general.alignment".into(), Meta::U32(ALIGNMENT as u32)),
        (
            key("context_length"),
            Meta::U32(cfg.max_position_embeddings as u32),
        ),
        (key("embedding_length"), Meta::U32(cfg.hidden_size as u32)),
        (key("block_count"), Meta::U32(cfg.num_hidden_layers as u32)),
        (
            key("feed_forward_length"),
            Meta::U32(cfg.intermediate_size as u32),
        ),
        (
            key("attention.head_count"),
            Meta::U32(cfg.num_attention_heads as u32),
        ),
        (
            key("attention.head_count_kv"),
            Meta::U32(cfg.num_kv_heads() as u32),
        ),
        (
            key("attention.layer_norm_rms_epsilon"),
            Meta::F32(cfg.rms_norm_eps as f32),
        ),
        (key("rope.freq_base"), Meta::F32(cfg.rope_theta as f32)),
        (
            key("rope.dimension_count"),
            Meta::U32(cfg.head_dim() as u32),
        ),
        (key("vocab_size"), Meta::U32(cfg.vocab_size as u32)),
    ];
    if let Some(d) = cfg.head_dim {
        meta.push((key("attention.key_length"), Meta::U32(d as u32)));
        meta.push((key("attention.value_length"), Meta::U32(d as u32)));
    }
    if let Some(rs) = cfg
        .rope_scaling
        .as_ref()
        .filter(|r| r.rope_type == "linear")
    {
        meta.push((key("rope.scaling.type"), Meta::Str("linear".into())));
        meta.push((
            key("rope.scaling.factor"),
            Meta::F32(rs.factor.unwrap_or(1.0) as f32),
        ));
    }
    // LLaMA-3 scaling travels as rope_freqs; its original context (which llama.cpp reads only for
    // YaRN) lets `convert gguf` recover the config from the frequencies.
    if let Some(rs) = cfg
        .rope_scaling
        .as_ref()
        .filter(|r| r.rope_type == "llama3")
    {
        let original = rs.original_max_position_embeddings.unwrap_or(8192) as u32;
        meta.push((
            key("rope.scaling.original_context_length"),
            Meta::U32(original),
        ));
    }
    if precision == Precision::Q8_0 {
        meta.push(("general.quantization_version".into(), Meta::U32(2)));
    }
    meta.extend(vocab.meta);

    // The tensors, in checkpoint order, each with its GGUF name, dims (innermost first) and type.
    struct Entry {
        hf: Option<String>,
        name: String,
        dims: Vec<usize>,
        ty: GgmlType,
    }
    let mut entries = Vec::new();
    // LLaMA-3 scaling is a per-frequency divisor in llama.cpp (`rope_freqs`).
    let rope_freqs = cfg
        .rope_scaling
        .as_ref()
        .filter(|r| r.rope_type == "llama3")
        .map(|_| crate::model::rope::frequency_divisors(&cfg));
    if let Some(f) = &rope_freqs {
        entries.push(Entry {
            hf: None,
            name: "rope_freqs.weight".into(),
            dims: vec![f.len()],
            ty: GgmlType::F32,
        });
    }
    for (hf, shape) in crate::model::stream::layout(&cfg) {
        let Some(name) = super::gguf_name(&hf) else {
            bail!("internal: tensor {hf} has no GGUF name");
        };
        let ty = match (shape.len(), precision) {
            (1, _) | (_, Precision::F32) => GgmlType::F32,
            (_, Precision::F16) => GgmlType::F16,
            (_, Precision::BF16) => GgmlType::BF16,
            (_, Precision::Q8_0) if shape[shape.len() - 1].is_multiple_of(Q8_BLOCK) => {
                GgmlType::Q8_0
            }
            (_, Precision::Q8_0) => GgmlType::F16,
        };
        entries.push(Entry {
            hf: Some(hf),
            name,
            dims: shape.iter().rev().copied().collect(),
            ty,
        });
    }

    let parent = outpath::parent_of(out);
    std::fs::create_dir_all(&parent).at(&parent)?;
    let tmp = tempfile::Builder::new()
        .prefix(&outpath::partial_prefix(out))
        .tempfile_in(&parent)
        .at(&parent)?;
    let mut w = BufWriter::new(tmp.as_file());
    let io = |e: std::io::Error| Error::Msg(format!("{}: {e}", out.display()));
    w.write_all(b"GGUF").map_err(io)?;
    w.write_all(&3u32.to_le_bytes()).map_err(io)?;
    w.write_all(&(entries.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(&(meta.len() as u64).to_le_bytes())
        .map_err(io)?;
    for (k, v) in &meta {
        put_str(&mut w, k).map_err(io)?;
        v.write(&mut w).map_err(io)?;
    }
    let mut offset = 0usize;
    for e in &entries {
        put_str(&mut w, &e.name).map_err(io)?;
        w.write_all(&(e.dims.len() as u32).to_le_bytes())
            .map_err(io)?;
        for d in &e.dims {
            w.write_all(&(*d as u64).to_le_bytes()).map_err(io)?;
        }
        w.write_all(&(e.ty as u32).to_le_bytes()).map_err(io)?;
        w.write_all(&(offset as u64).to_le_bytes()).map_err(io)?;
        offset +=
            e.ty.bytes(e.dims.iter().product())
                .next_multiple_of(ALIGNMENT);
    }
    let pad = |w: &mut BufWriter<&std::fs::File>| -> Result<()> {
        let at = w.stream_position().map_err(io)? as usize;
        w.write_all(&vec![0u8; at.next_multiple_of(ALIGNMENT) - at])
            .map_err(io)
    };
    pad(&mut w)?;
    let mut tensor_types = BTreeMap::new();
    for e in &entries {
        let values: Vec<f32> = match &e.hf {
            None => rope_freqs.clone().unwrap_or_default(),
            Some(hf) => {
                let mut t = sm.tensor(hf)?;
                if arch == "llama" && hf.contains(".q_proj.") {
                    t = permute_rows(&t, cfg.num_attention_heads)?;
                } else if arch == "llama" && hf.contains(".k_proj.") {
                    t = permute_rows(&t, cfg.num_kv_heads())?;
                }
                t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?
            }
        };
        let bytes = match e.ty {
            GgmlType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            GgmlType::F16 => values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
            GgmlType::BF16 => values
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
            GgmlType::Q8_0 => quantize_q8_0(&values),
        };
        w.write_all(&bytes).map_err(io)?;
        pad(&mut w)?;
        *tensor_types.entry(format!("{:?}", e.ty)).or_insert(0) += 1;
    }
    w.flush().map_err(io)?;
    drop(w);
    let bytes = tmp.as_file().metadata().at(out)?.len();
    tmp.as_file().sync_all().at(out)?;
    tmp.persist(out)
        .map_err(|e| Error::Msg(format!("{}: {e}", out.display())))?;
    Ok(ExportReport {
        architecture: arch.into(),
        tensors: entries.len(),
        bytes,
        tensor_types,
        tokenizer: vocab.model.into(),
        pre_tokenizer: vocab.pre.map(String::from),
        warnings,
        seconds: start.elapsed().as_secs_f64(),
    })
}
