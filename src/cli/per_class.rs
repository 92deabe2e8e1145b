//! `--per-class` of `eval fd` and `eval fid`: the distance of each class of the samples to the
//! same class of the reference, and its table.

use super::CliError;

/// The Fréchet distance of each class of the samples to the same class of the reference, from
/// the features of each (row-major, `d` wide, in item order) and the datasets they came from.
pub(super) fn per_class(
    samples: (&[f64], &dyn crate::data::Dataset),
    reference: (&[f64], &dyn crate::data::Dataset),
    d: usize,
) -> Result<Vec<crate::eval::frechet::ClassDistance>, CliError> {
    use crate::eval::frechet::{class_stats, per_class_distances};
    let usage = |e: anyhow::Error| CliError::Usage(format!("--per-class: {e:#}"));
    let stats = |(f, data): (&[f64], &dyn crate::data::Dataset), what: &str| {
        let names = crate::data::item_class_names(data, f.len() / d, what).map_err(usage)?;
        class_stats(f, &names, d).map_err(|e| usage(e.context(what.to_string())))
    };
    let s = stats(samples, "--samples")?;
    let r = stats(reference, "--reference")?;
    per_class_distances(&s, &r).map_err(usage)
}

/// Prints the per-class distances as a table.
pub(super) fn print_per_class(what: &str, rows: &[crate::eval::frechet::ClassDistance]) {
    println!("| class | {what} | samples | reference |");
    println!("|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.4} | {} | {} |",
            r.class, r.fd, r.n_samples, r.n_reference
        );
    }
}
