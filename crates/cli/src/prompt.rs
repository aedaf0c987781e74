//! Where the prompt of a run comes from: text, a file, or raw token ids.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use hlm_core::{TextTokenizer, TokenId};

/// The prompt, given exactly one way.
#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct PromptArgs {
    /// Prompt text, tokenised exactly as given (special tokens such as `<|im_start|>` are
    /// recognised; no BOS is added unless the model's metadata asks for it).
    #[arg(long, short = 'p')]
    pub prompt: Option<String>,
    /// Read the prompt text from a file (`-` for stdin).
    #[arg(long, value_name = "FILE")]
    pub prompt_file: Option<PathBuf>,
    /// Raw prompt token ids, comma separated (for models without a tokenizer).
    #[arg(long, value_name = "IDS", value_delimiter = ',')]
    pub prompt_ids: Option<Vec<TokenId>>,
}

impl PromptArgs {
    /// The prompt's token ids.
    pub fn token_ids(&self, tokenizer: Option<&dyn TextTokenizer>) -> Result<Vec<TokenId>> {
        if let Some(ids) = &self.prompt_ids {
            return Ok(ids.clone());
        }
        let text = match (&self.prompt, &self.prompt_file) {
            (Some(t), _) => t.clone(),
            (None, Some(p)) if p.as_os_str() == "-" => std::io::read_to_string(std::io::stdin())
                .context("cannot read the prompt from stdin")?,
            (None, Some(p)) => std::fs::read_to_string(p)
                .with_context(|| format!("cannot read prompt file {}", p.display()))?,
            (None, None) => bail!("give a prompt with --prompt, --prompt-file or --prompt-ids"),
        };
        let Some(tok) = tokenizer else {
            bail!(
                "the models of this pipeline carry no tokenizer, so a text prompt cannot be encoded; \
                 pass token ids with --prompt-ids"
            );
        };
        Ok(tok.encode(&text)?)
    }
}
