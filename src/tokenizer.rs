//! A model directory's tokenizer (`tokenizer.json`, with `tokenizer_config.json` and
//! `generation_config.json` when present) and its chat template.

use crate::bail;
use crate::error::{Error, IoContext, Result};
use crate::model::config::ids_of;
use crate::model::LlamaConfig;
use std::path::Path;

/// ChatML, used when a vocabulary has `<|im_start|>` but the directory ships no template.
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// The LLaMA-2 chat format (`<s>[INST] <<SYS>>…<</SYS>> user [/INST] answer </s>`).
const LLAMA2: &str = "{% if messages[0]['role'] == 'system' %}{% set sys = '<<SYS>>\n' + messages[0]['content'] + '\n<</SYS>>\n\n' %}{% set msgs = messages[1:] %}{% else %}{% set sys = '' %}{% set msgs = messages %}{% endif %}{% for message in msgs %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + (sys if loop.first else '') + message['content'] | trim + ' [/INST]' }}{% else %}{{ ' ' + message['content'] | trim + ' ' + eos_token }}{% endif %}{% endfor %}";

#[derive(Debug, Clone, serde::Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

pub struct Tokenizer {
    pub inner: tokenizers::Tokenizer,
    pub bos_id: Option<u32>,
    pub eos_ids: Vec<u32>,
    pub bos_token: String,
    pub eos_token: String,
    pub chat_template: Option<String>,
}

/// The text of a special token as tokenizer_config.json gives it: a string or `{"content": …}`.
pub(crate) fn token_text(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).at(path)?;
    Ok(Some(serde_json::from_str(&text).map_err(|e| {
        Error::Msg(format!("{}: invalid JSON ({e})", path.display()))
    })?))
}

impl Tokenizer {
    /// Loads the tokenizer of model directory `dir`.
    pub fn load(dir: &Path, cfg: &LlamaConfig) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            bail!(
                "{}: tokenizer.json is missing; copy it from the original model (spp convert gguf writes one)",
                dir.display()
            );
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| Error::Msg(format!("{}: cannot load tokenizer ({e})", path.display())))?;
        let tc = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or_default();
        let gc = read_json(&dir.join("generation_config.json"))?.unwrap_or_default();
        let id_of = |tok: &Option<String>| tok.as_ref().and_then(|t| inner.token_to_id(t));
        let bos_token = token_text(tc.get("bos_token"));
        let eos_token = token_text(tc.get("eos_token"));
        let bos_id = ids_of(gc.get("bos_token_id"))
            .first()
            .copied()
            .or_else(|| id_of(&bos_token))
            .or(cfg.bos_id());
        let mut eos_ids = ids_of(gc.get("eos_token_id"));
        if eos_ids.is_empty() {
            eos_ids = id_of(&eos_token)
                .map(|e| vec![e])
                .unwrap_or_else(|| cfg.eos_ids());
        }
        let name = |id: Option<u32>| id.and_then(|i| inner.id_to_token(i)).unwrap_or_default();
        let chat_template = match tc.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            _ => {
                let jinja = dir.join("chat_template.jinja");
                if jinja.exists() {
                    Some(std::fs::read_to_string(&jinja).at(&jinja)?)
                } else {
                    None
                }
            }
        };
        Ok(Self {
            bos_token: bos_token.unwrap_or_else(|| name(bos_id)),
            eos_token: eos_token.unwrap_or_else(|| name(eos_ids.first().copied())),
            inner,
            bos_id,
            eos_ids,
            chat_template,
        })
    }

    /// Token ids of `text`; `special` adds what the tokenizer's post-processor adds (e.g. BOS).
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, special)
            .map_err(|e| Error::Msg(format!("tokenizer: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::Msg(format!("tokenizer: {e}")))
    }

    /// The chat template in use: the model's own, else ChatML or LLaMA-2 by vocabulary.
    pub fn template(&self) -> &str {
        match &self.chat_template {
            Some(t) => t,
            None if self.inner.token_to_id("<|im_start|>").is_some() => CHATML,
            None => LLAMA2,
        }
    }

    /// Renders `messages` with the chat template, ending with the assistant's turn prompt.
    pub fn apply_chat(&self, messages: &[Message]) -> Result<String> {
        let mut env = minijinja::Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        let render = || -> std::result::Result<String, minijinja::Error> {
            env.template_from_str(self.template())?
                .render(minijinja::context! {
                    messages => messages,
                    add_generation_prompt => true,
                    bos_token => &self.bos_token,
                    eos_token => &self.eos_token,
                })
        };
        render().map_err(|e| Error::Msg(format!("chat template: {e}")))
    }
}
