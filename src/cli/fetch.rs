//! `ddpm fetch`: a Hugging Face Hub model into the local cache.

use clap::Args;

use super::{CliError, CliResult};

#[derive(Args)]
#[command(
    after_help = "The cache is $DDPM_CACHE (else $XDG_CACHE_HOME/ddpm, else ~/.cache/ddpm); HF_ENDPOINT chooses another Hub, HF_TOKEN authenticates for gated or private repos. Fetched repos are then named directly: --checkpoint google/ddpm-cifar10-32 (or owner/name@revision).\n\nExamples:\n  ddpm fetch google/ddpm-cifar10-32\n  ddpm sample --checkpoint google/ddpm-cifar10-32 --n 16 --sampler ddim --steps 50 --out s/"
)]
pub struct FetchArgs {
    /// The Hub repo id (owner/name).
    repo: String,
    /// Branch, tag or commit.
    #[arg(long, default_value = "main")]
    revision: String,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

pub fn run(a: FetchArgs) -> CliResult {
    let mut bar: Option<(String, indicatif::ProgressBar)> = None;
    let quiet = a.quiet;
    let snap = crate::hub::fetch_repo(&a.repo, &a.revision, |file, done, total| {
        if quiet {
            return;
        }
        if bar.as_ref().is_none_or(|(f, _)| f != file) {
            if let Some((_, b)) = bar.take() {
                b.finish();
            }
            let b = super::progress(total.unwrap_or(0), "bytes", true);
            b.set_message(file.to_string());
            bar = Some((file.to_string(), b));
        }
        if let Some((_, b)) = &bar {
            b.set_position(done);
        }
    })
    .map_err(|e| CliError::Usage(format!("{e:#}")))?;
    if let Some((_, b)) = bar {
        b.finish();
    }
    println!("{} at {}", a.repo, snap.display());
    Ok(())
}
