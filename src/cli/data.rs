//! `ddpm data`: fetch the standard datasets.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{CliError, CliResult};

#[derive(Subcommand)]
pub enum DataCommand {
    /// Download mnist, fashion-mnist or cifar10 from the usual public mirrors, with checksums.
    Fetch(FetchArgs),
}

#[derive(Args)]
#[command(
    after_help = "Examples:\n  ddpm data fetch mnist --dir data/mnist\n  ddpm train --data idx:data/mnist\n  ddpm data fetch cifar10 --dir data/cifar10 && ddpm train --preset cifar10 --data cifar10:data/cifar10"
)]
pub struct FetchArgs {
    /// mnist, fashion-mnist or cifar10.
    dataset: String,
    /// Destination directory (default data/NAME).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// A mirror to use instead of the usual ones (a base URL ending in /).
    #[arg(long)]
    mirror: Option<String>,
}

pub fn run(cmd: DataCommand) -> CliResult {
    match cmd {
        DataCommand::Fetch(a) => {
            let mut remote = crate::data::fetch::known(&a.dataset)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            if let Some(m) = a.mirror {
                remote.mirrors = vec![if m.ends_with('/') { m } else { format!("{m}/") }];
            }
            let dir = a
                .dir
                .unwrap_or_else(|| PathBuf::from("data").join(&a.dataset));
            let files = crate::data::fetch::fetch(&remote, &dir, |m| eprintln!("{m}"))?;
            println!(
                "{} files of {} in {}",
                files.len(),
                a.dataset,
                dir.display()
            );
            Ok(())
        }
    }
}
