//! Rebuild a Hugging Face `tokenizer.json` from the vocabulary stored in a GGUF file.
//!
//! A GGUF file carries no `tokenizer.json`: llama.cpp's converter stores the vocabulary as
//! metadata (`tokenizer.ggml.*`). This module turns that metadata back into the two files a
//! Hugging Face directory needs, `tokenizer.json` and `tokenizer_config.json`, for the two kinds of
//! vocabulary LLaMA-family files use (`tokenizer.ggml.model`):
//!
//! * `"llama"` — a SentencePiece BPE vocabulary (LLaMA-1/2, Mistral, TinyLlama): pieces, scores and
//!   types. It becomes what the published Llama-2 `tokenizer.json` (`LlamaTokenizerFast`) holds:
//!   a BPE model with `byte_fallback` and `fuse_unk`, merges recovered from the pieces and their
//!   scores, the normalizer `Prepend("▁")` + `Replace(" ", "▁")` (SentencePiece's dummy prefix and
//!   whitespace escaping), no pre-tokenizer, and the decoder `Replace("▁", " ")`, `ByteFallback`,
//!   `Fuse`, `Strip(1 leading space)`.
//!   On text without special-token spellings this gives exactly SentencePiece's ids (checked by
//!   `tests/gguf_tokenizer.rs` against SentencePiece itself). transformers 5 builds a different
//!   pipeline from a GGUF (`Metaspace` with `prepend_scheme = "first"`), which adds no "▁" before
//!   text that already starts with a space and so departs from SentencePiece there; we follow
//!   SentencePiece.
//! * `"gpt2"` — GPT-2-style byte-level BPE (SmolLM2, LLaMA-3, Qwen, StarCoder): tokens spelled in the
//!   byte-to-unicode alphabet plus the merge list. The pre-tokenizer depends on
//!   `tokenizer.ggml.pre`; see [`byte_level_split`] for the values understood. Unknown
//!   values are an error: a wrong split silently changes the ids.
//!
//! In both, tokens typed CONTROL (3) become special added tokens, USER_DEFINED (4) plain added
//! tokens, and BOS / EOS are added by a `TemplateProcessing` post-processor as
//! `tokenizer.ggml.add_bos_token` / `add_eos_token` say (llama.cpp's default when absent: BOS for
//! `"llama"`, nothing for `"gpt2"`).
//!
//! `tokenizer_config.json` names `PreTrainedTokenizerFast`, not `LlamaTokenizerFast`: transformers 5
//! rebuilds the pipeline of a `LlamaTokenizer(Fast)` or `GPT2Tokenizer` from its own defaults and
//! ignores the one in `tokenizer.json`, while `PreTrainedTokenizerFast` loads it as written (in
//! transformers 4 and 5 alike).

use std::collections::HashMap;

use candle_core::quantized::gguf_file::{Content, Value};
use serde_json::{json, Map, Value as Json};

use crate::bail;
use crate::error::Result;

/// The two files of a Hugging Face tokenizer, plus the ids a model config needs.
#[derive(Debug, Clone)]
pub struct TokenizerFiles {
    /// A complete `tokenizer.json`, loadable by `tokenizers::Tokenizer::from_str`.
    pub tokenizer_json: Json,
    /// `tokenizer_config.json`.
    pub tokenizer_config: Json,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

/// llama.cpp's token types (`llama_token_type`), the same numbers as SentencePiece's piece types.
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;

/// The values `tokenizer.ggml.model` may take here.
const SUPPORTED_MODELS: &str = "\"llama\" (SentencePiece BPE) and \"gpt2\" (byte-level BPE)";

/// The values `tokenizer.ggml.pre` may take with `tokenizer.ggml.model = "gpt2"`.
const SUPPORTED_PRE: &str =
    "\"default\", \"gpt2\", \"gpt-2\" (or no key), \"smollm\", \"starcoder\", \
                             \"llama-bpe\", \"llama3\", \"llama-v3\", \"qwen2\"";

/// LLaMA-3's split regex (`tokenizer.json` of Meta-Llama-3; llama.cpp's "llama-bpe").
pub(crate) const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's split regex (`tokenizer.json` of Qwen2, Qwen2.5 and Qwen3; llama.cpp's "qwen2"): LLaMA-3's
/// with every number character alone.
pub(crate) const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Build `tokenizer.json` and `tokenizer_config.json` from a GGUF file's metadata.
pub fn tokenizer_files(content: &Content) -> Result<TokenizerFiles> {
    let meta = Meta(content);
    let model = meta.required_str("tokenizer.ggml.model")?;
    let tokens = meta.required_str_array("tokenizer.ggml.tokens")?;
    if tokens.is_empty() {
        bail!("GGUF metadata tokenizer.ggml.tokens is empty: the file has no vocabulary to build a tokenizer from");
    }
    let n = tokens.len();
    let types = match meta.int_array("tokenizer.ggml.token_type")? {
        Some(t) if t.len() != n => bail!(
            "GGUF metadata tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {n}: \
             the vocabulary is inconsistent; re-convert the model",
            t.len()
        ),
        Some(t) => t,
        None => vec![1; n],
    };
    let token_id = |key: &str| -> Result<Option<u32>> {
        match meta.u32(key)? {
            Some(id) if id as usize >= n => bail!(
                "GGUF metadata {key} = {id} is outside the vocabulary of {n} tokens (tokenizer.ggml.tokens)"
            ),
            other => Ok(other),
        }
    };
    let ids = SpecialIds {
        bos: token_id("tokenizer.ggml.bos_token_id")?,
        eos: token_id("tokenizer.ggml.eos_token_id")?,
        unk: token_id("tokenizer.ggml.unknown_token_id")?,
        pad: token_id("tokenizer.ggml.padding_token_id")?,
    };
    let sentencepiece = match model {
        "llama" => true,
        "gpt2" => false,
        other => bail!(
            "GGUF metadata tokenizer.ggml.model = {other:?} is not supported; supported: {SUPPORTED_MODELS}. \
             Convert the model from its Hugging Face directory instead, which has a tokenizer.json"
        ),
    };
    // llama.cpp adds BOS to a SentencePiece vocabulary that does not say otherwise, and to nothing else.
    let add_bos = meta
        .bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(sentencepiece);
    let add_eos = meta.bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    if add_bos && ids.bos.is_none() {
        bail!("GGUF metadata tokenizer.ggml.add_bos_token is true but tokenizer.ggml.bos_token_id is missing");
    }
    if add_eos && ids.eos.is_none() {
        bail!("GGUF metadata tokenizer.ggml.add_eos_token is true but tokenizer.ggml.eos_token_id is missing");
    }
    let with_spelling = |id: Option<u32>| id.map(|i| (tokens[i as usize], i));
    let post = Post {
        bos: if add_bos {
            with_spelling(ids.bos)
        } else {
            None
        },
        eos: if add_eos {
            with_spelling(ids.eos)
        } else {
            None
        },
    };

    let added_tokens = added_tokens(&tokens, &types, &ids, sentencepiece);
    let tokenizer_json = if sentencepiece {
        let add_prefix_space = meta
            .bool("tokenizer.ggml.add_space_prefix")?
            .unwrap_or(true);
        sentencepiece_bpe(&meta, &tokens, &ids, added_tokens, add_prefix_space, &post)?
    } else {
        let pre = meta.str("tokenizer.ggml.pre")?;
        byte_level_bpe(&meta, &tokens, pre, added_tokens, &post)?
    };

    let name = |id: Option<u32>| id.map_or(Json::Null, |i| json!(tokens[i as usize]));
    let mut config = Map::new();
    config.insert("add_bos_token".into(), json!(add_bos));
    config.insert("add_eos_token".into(), json!(add_eos));
    config.insert("bos_token".into(), name(ids.bos));
    config.insert("eos_token".into(), name(ids.eos));
    config.insert("unk_token".into(), name(ids.unk));
    if ids.pad.is_some() {
        config.insert("pad_token".into(), name(ids.pad));
    }
    if let Some(template) = meta.str("tokenizer.chat_template")? {
        config.insert("chat_template".into(), json!(template));
    }
    if let Some(arch) = meta.str("general.architecture")? {
        if let Some(ctx) = meta.u64(&format!("{arch}.context_length"))? {
            config.insert("model_max_length".into(), json!(ctx));
        }
    }
    config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    config.insert("clean_up_tokenization_spaces".into(), json!(false));

    Ok(TokenizerFiles {
        tokenizer_json,
        tokenizer_config: Json::Object(config),
        bos_token_id: ids.bos,
        eos_token_id: ids.eos,
    })
}

struct SpecialIds {
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
}

/// The tokens a `TemplateProcessing` adds: (spelling, id).
struct Post<'a> {
    bos: Option<(&'a str, u32)>,
    eos: Option<(&'a str, u32)>,
}

/// CONTROL tokens (and, for SentencePiece, the unk / bos / eos / pad tokens whatever their type,
/// as `LlamaTokenizerFast` has them) are special added tokens: matched whole in the input and
/// skipped by `decode(.., skip_special_tokens = true)`. USER_DEFINED tokens are matched whole but
/// are not special. Every one is spelled as the vocabulary spells it, so it keeps its id.
fn added_tokens(
    tokens: &[&str],
    types: &[i64],
    ids: &SpecialIds,
    sentencepiece: bool,
) -> Vec<Json> {
    let named = [ids.unk, ids.bos, ids.eos, ids.pad];
    tokens
        .iter()
        .zip(types)
        .enumerate()
        .filter_map(|(id, (&token, &kind))| {
            let named = sentencepiece && named.contains(&Some(id as u32));
            let special = kind == TYPE_CONTROL || named;
            (special || kind == TYPE_USER_DEFINED).then(|| {
                json!({
                    "id": id,
                    "content": token,
                    "single_word": false,
                    "lstrip": false,
                    "rstrip": false,
                    "normalized": false,
                    "special": special,
                })
            })
        })
        .collect()
}

/// token -> id; a token spelled twice keeps its last id, as in llama.cpp and transformers.
fn vocab_map(tokens: &[&str]) -> Map<String, Json> {
    let mut vocab = Map::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        vocab.insert((*token).to_string(), json!(id));
    }
    vocab
}

fn post_processor(post: &Post) -> Json {
    let special = |(token, _): (&str, u32), type_id: u32| json!({"SpecialToken": {"id": token, "type_id": type_id}});
    let sequence = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    let mut single = vec![];
    let mut pair = vec![];
    for (seq, type_id) in [("A", 0), ("B", 1)] {
        let pieces = if seq == "A" { &mut single } else { &mut pair };
        pieces.extend(post.bos.map(|t| special(t, type_id)));
        pieces.push(sequence(seq, type_id));
        pieces.extend(post.eos.map(|t| special(t, type_id)));
    }
    let pair: Vec<Json> = single.iter().cloned().chain(pair).collect();
    let mut special_tokens = Map::new();
    for (token, id) in [post.bos, post.eos].into_iter().flatten() {
        special_tokens.insert(
            token.to_string(),
            json!({"id": token, "ids": [id], "tokens": [token]}),
        );
    }
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special_tokens})
}

fn tokenizer_json(
    added_tokens: Vec<Json>,
    normalizer: Json,
    pre_tokenizer: Json,
    post_processor: Json,
    decoder: Json,
    model: Json,
) -> Json {
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": decoder,
        "model": model,
    })
}

fn sentencepiece_bpe(
    meta: &Meta,
    tokens: &[&str],
    ids: &SpecialIds,
    added_tokens: Vec<Json>,
    add_prefix_space: bool,
    post: &Post,
) -> Result<Json> {
    let merges = match meta.str_array("tokenizer.ggml.merges")? {
        Some(merges) => split_merges(&merges)?,
        None => {
            let Some(scores) = meta.f32_array("tokenizer.ggml.scores")? else {
                bail!(
                    "GGUF metadata tokenizer.ggml.scores is missing: a SentencePiece (tokenizer.ggml.model = \"llama\") \
                     vocabulary without tokenizer.ggml.merges needs one score per token to recover its merges"
                )
            };
            if scores.len() != tokens.len() {
                bail!(
                    "GGUF metadata tokenizer.ggml.scores has {} entries but tokenizer.ggml.tokens has {}: \
                     the vocabulary is inconsistent; re-convert the model",
                    scores.len(),
                    tokens.len()
                );
            }
            if let Some(i) = scores.iter().position(|x| x.is_nan()) {
                bail!(
                    "GGUF metadata tokenizer.ggml.scores[{i}] (token {:?}) is NaN: the vocabulary is corrupt; re-download or re-convert the model",
                    tokens[i]
                );
            }
            sentencepiece_merges(tokens, &scores)
        }
    };
    check_merges(tokens, &merges)?;

    let mut normalizers = vec![];
    if add_prefix_space {
        normalizers.push(json!({"type": "Prepend", "prepend": "▁"}));
    }
    normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}));
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_prefix_space {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let unk = ids.unk.map_or(Json::Null, |i| json!(tokens[i as usize]));
    let model = json!({
        "type": "BPE",
        "dropout": null,
        "unk_token": unk,
        "continuing_subword_prefix": null,
        "end_of_word_suffix": null,
        "fuse_unk": true,
        "byte_fallback": true,
        "ignore_merges": false,
        "vocab": vocab_map(tokens),
        "merges": merges_json(&merges),
    });
    Ok(tokenizer_json(
        added_tokens,
        json!({"type": "Sequence", "normalizers": normalizers}),
        Json::Null,
        post_processor(post),
        json!({"type": "Sequence", "decoders": decoders}),
        model,
    ))
}

/// The merges a SentencePiece BPE vocabulary implies, ordered as transformers orders them
/// (`tokenization_utils_base.generate_merges`, used by its SentencePiece and GGUF converters):
/// every split of a piece into two pieces of the vocabulary is a merge; splits of one piece are
/// ordered by (left id, right id); then all merges by the score of the merged piece, best first,
/// ties broken by the longer left part, then the longer right part, then that earlier order.
/// SentencePiece merges the pair whose merged piece scores best, so this rank order reproduces it.
fn sentencepiece_merges(tokens: &[&str], scores: &[f32]) -> Vec<(String, String)> {
    // token -> (last id, last score), iterated in order of first appearance (a Python dict's order).
    let mut index: HashMap<&str, (usize, f32)> = HashMap::with_capacity(tokens.len());
    let mut order = Vec::with_capacity(tokens.len());
    for (id, (&token, &score)) in tokens.iter().zip(scores).enumerate() {
        if index.insert(token, (id, score)).is_none() {
            order.push(token);
        }
    }
    struct Merge<'a> {
        left: &'a str,
        right: &'a str,
        score: f32,
        left_chars: usize,
        right_chars: usize,
    }
    let mut merges: Vec<Merge> = vec![];
    for piece in order {
        let score = index[piece].1;
        let mut local: Vec<(usize, usize, Merge)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let (left, right) = piece.split_at(at);
                let (&(l, _), &(r, _)) = (index.get(left)?, index.get(right)?);
                let merge = Merge {
                    left,
                    right,
                    score,
                    left_chars: left.chars().count(),
                    right_chars: right.chars().count(),
                };
                Some((l, r, merge))
            })
            .collect();
        local.sort_by_key(|&(l, r, _)| (l, r));
        merges.extend(local.into_iter().map(|(_, _, m)| m));
    }
    // Stable sort, descending: equal keys keep their order, as Python's `sorted(reverse=True)` does.
    // `partial_cmp` treats -0.0 and 0.0 as equal, as Python does.
    merges.sort_by(|a, b| {
        b.score
            .partial_cmp(&a.score)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(b.left_chars.cmp(&a.left_chars))
            .then(b.right_chars.cmp(&a.right_chars))
    });
    merges
        .into_iter()
        .map(|m| (m.left.to_string(), m.right.to_string()))
        .collect()
}

fn split_merges(merges: &[&str]) -> Result<Vec<(String, String)>> {
    merges
        .iter()
        .enumerate()
        .map(|(i, merge)| {
            let mut parts = merge.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(left), Some(right), None) if !left.is_empty() && !right.is_empty() => {
                    Ok((left.to_string(), right.to_string()))
                }
                _ => bail!(
                    "GGUF metadata tokenizer.ggml.merges[{i}] = {merge:?} is not two tokens separated by one space; \
                     the file is damaged or was written by an unknown converter"
                ),
            }
        })
        .collect()
}

/// The `tokenizers` BPE builder rejects a merge whose parts or result are not in the vocabulary;
/// say which one here, where the file can be named.
fn check_merges(tokens: &[&str], merges: &[(String, String)]) -> Result<()> {
    let vocab: std::collections::HashSet<&str> = tokens.iter().copied().collect();
    for (i, (left, right)) in merges.iter().enumerate() {
        let merged = format!("{left}{right}");
        for part in [left.as_str(), right.as_str(), merged.as_str()] {
            if !vocab.contains(part) {
                bail!(
                    "GGUF tokenizer merge #{i} ({left:?} + {right:?}) uses {part:?}, which is not in \
                     tokenizer.ggml.tokens: the vocabulary and merges do not belong together; re-convert the model"
                );
            }
        }
    }
    Ok(())
}

fn merges_json(merges: &[(String, String)]) -> Json {
    Json::Array(merges.iter().map(|(l, r)| json!([l, r])).collect())
}

/// How a byte-level vocabulary splits text before BPE, as the model's own `tokenizer.json` has it.
struct ByteLevelSplit {
    normalizer: Json,
    pre_tokenizer: Json,
    /// Take a pre-token that is already a whole token as is (LLaMA-3's BPE).
    ignore_merges: bool,
}

/// The split for a byte-level vocabulary, from `tokenizer.ggml.pre` (llama.cpp's pre-tokenizer
/// type):
///
/// * absent, `"default"`, `"gpt2"`, `"gpt-2"`: GPT-2's `ByteLevel` regex split;
/// * `"smollm"`, `"starcoder"`: every number character alone (`Digits`), then GPT-2's split —
///   SmolLM2's and StarCoder's `tokenizer.json`, and llama.cpp's `\p{N}` + GPT-2 regexes;
/// * `"llama-bpe"`, `"llama3"`, `"llama-v3"`: LLaMA-3's regex split, then `ByteLevel` without its
///   own regex, and `ignore_merges`;
/// * `"qwen2"` (Qwen1.5, Qwen2, Qwen2.5, Qwen3): NFC, then Qwen2's regex split (LLaMA-3's with
///   single digits), then `ByteLevel` without its own regex.
fn byte_level_split(pre: Option<&str>) -> Result<ByteLevelSplit> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let regex_then_bytes = |regex: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            byte_level(false),
        ]})
    };
    let split = |normalizer: Json, pre_tokenizer: Json, ignore_merges: bool| ByteLevelSplit {
        normalizer,
        pre_tokenizer,
        ignore_merges,
    };
    Ok(match pre {
        None | Some("default" | "gpt2" | "gpt-2") => split(Json::Null, byte_level(true), false),
        Some("smollm" | "starcoder") => split(
            Json::Null,
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(true),
            ]}),
            false,
        ),
        Some("llama-bpe" | "llama3" | "llama-v3") => {
            split(Json::Null, regex_then_bytes(LLAMA3_SPLIT), true)
        }
        Some("qwen2") => split(
            json!({"type": "NFC"}),
            regex_then_bytes(QWEN2_SPLIT),
            false,
        ),
        Some(other) => bail!(
            "GGUF metadata tokenizer.ggml.pre = {other:?} names a pre-tokenizer this converter does not know; \
             supported: {SUPPORTED_PRE}. Splitting text the wrong way would silently change the token ids: \
             use the model's Hugging Face tokenizer.json instead"
        ),
    })
}

fn byte_level_bpe(
    meta: &Meta,
    tokens: &[&str],
    pre: Option<&str>,
    added_tokens: Vec<Json>,
    post: &Post,
) -> Result<Json> {
    let split = byte_level_split(pre)?;
    let Some(merges) = meta.str_array("tokenizer.ggml.merges")? else {
        bail!(
            "GGUF metadata tokenizer.ggml.merges is missing: a byte-level BPE (tokenizer.ggml.model = \"gpt2\") \
             vocabulary cannot be used without its merges; re-convert the model with llama.cpp's converter"
        )
    };
    let merges = split_merges(&merges)?;
    check_merges(tokens, &merges)?;
    let model = json!({
        "type": "BPE",
        "dropout": null,
        "unk_token": null,
        "continuing_subword_prefix": null,
        "end_of_word_suffix": null,
        "fuse_unk": false,
        "byte_fallback": false,
        "ignore_merges": split.ignore_merges,
        "vocab": vocab_map(tokens),
        "merges": merges_json(&merges),
    });
    // ByteLevel first only fixes offsets (as in LLaMA-3's tokenizer.json); it changes no id.
    let post_processor = json!({"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        post_processor(post),
    ]});
    let decoder = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
    Ok(tokenizer_json(
        added_tokens,
        split.normalizer,
        split.pre_tokenizer,
        post_processor,
        decoder,
        model,
    ))
}

/// Typed, erroring access to GGUF metadata: a key of the wrong type is an error naming the key,
/// the type it has and the type expected; a missing key is `None` (or an error for required keys).
struct Meta<'a>(&'a Content);

fn type_name(v: &Value) -> String {
    match v {
        Value::Array(items) => match items.first() {
            Some(first) => format!("array of {}", type_name(first)),
            None => "empty array".to_string(),
        },
        other => format!("{:?}", other.value_type()).to_lowercase(),
    }
}

fn as_int(v: &Value) -> Option<i128> {
    Some(match *v {
        Value::U8(x) => x.into(),
        Value::I8(x) => x.into(),
        Value::U16(x) => x.into(),
        Value::I16(x) => x.into(),
        Value::U32(x) => x.into(),
        Value::I32(x) => x.into(),
        Value::U64(x) => x.into(),
        Value::I64(x) => x.into(),
        _ => return None,
    })
}

impl<'a> Meta<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.0.metadata.get(key)
    }

    fn wrong_type<T>(&self, key: &str, v: &Value, expected: &str) -> Result<T> {
        bail!(
            "GGUF metadata {key} is a {} but should be {expected}; the file is damaged or was written by an \
             unknown converter",
            type_name(v)
        )
    }

    fn str(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => self.wrong_type(key, v, "a string"),
        }
    }

    fn required_str(&self, key: &str) -> Result<&'a str> {
        match self.str(key)? {
            Some(s) => Ok(s),
            None => bail!(
                "GGUF metadata has no {key}: the file carries no tokenizer; use the model's Hugging Face \
                 tokenizer files instead"
            ),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => self.wrong_type(key, v, "a bool"),
        }
    }

    fn u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match as_int(v).and_then(|i| u64::try_from(i).ok()) {
                Some(i) => Ok(Some(i)),
                None if as_int(v).is_some() => {
                    bail!("GGUF metadata {key} is negative; it should be a count")
                }
                None => self.wrong_type(key, v, "an unsigned integer"),
            },
        }
    }

    fn u32(&self, key: &str) -> Result<Option<u32>> {
        match self.u64(key)? {
            None => Ok(None),
            Some(i) => match u32::try_from(i) {
                Ok(i) => Ok(Some(i)),
                Err(_) => bail!("GGUF metadata {key} = {i} is too large for a token id"),
            },
        }
    }

    fn array(&self, key: &str) -> Result<Option<&'a [Value]>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items.as_slice())),
            Some(v) => self.wrong_type(key, v, "an array"),
        }
    }

    fn str_array(&self, key: &str) -> Result<Option<Vec<&'a str>>> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                other => self.wrong_type(key, other, "an array of strings"),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn required_str_array(&self, key: &str) -> Result<Vec<&'a str>> {
        match self.str_array(key)? {
            Some(items) => Ok(items),
            None => bail!(
                "GGUF metadata has no {key}: the file carries no vocabulary; use the model's Hugging Face \
                 tokenizer files instead"
            ),
        }
    }

    fn int_array(&self, key: &str) -> Result<Option<Vec<i64>>> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .map(|v| match as_int(v).and_then(|i| i64::try_from(i).ok()) {
                Some(i) => Ok(i),
                None => self.wrong_type(key, v, "an array of integers"),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn f32_array(&self, key: &str) -> Result<Option<Vec<f32>>> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .map(|v| match *v {
                Value::F32(x) => Ok(x),
                Value::F64(x) => Ok(x as f32),
                ref other => self.wrong_type(key, other, "an array of floats"),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}
