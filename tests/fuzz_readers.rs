//! Structured fuzzing of every file `ddpm` reads: valid files mutated (truncated, bits flipped,
//! header sizes inflated, numbers swapped for edge values, dtypes and shapes changed) and fed to
//! the reader in-process. Every case must end in `Ok` or a clear error — never a panic — and the
//! process's peak memory must stay bounded.
//!
//! `cargo test --release --test fuzz_readers` runs a fixed number of seeded cases per reader
//! (1,200 for each of the 9 readers: 10,800 in all); `FUZZ_CASES=N` changes the number per reader, and the ignored
//! `long_fuzz` test runs 25,000 per reader (`cargo test --release --test fuzz_readers -- --ignored`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use ddpm::config::RunConfig;
use ddpm::data::Split;
use ddpm::data::cifar::Cifar10;
use ddpm::data::folder::ImageFolder;
use ddpm::data::idx::{IdxImages, open_labels_dir};
use ddpm::run::state::TrainState;
use ddpm::store::tensors::{HostTensor, read_safetensors, to_safetensors};

/// SplitMix64: the cases are reproducible from the seed.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const EDGE_U32: [u32; 7] = [0, 1, 0xFF, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 60_000];
const EDGE_TEXT: [&str; 12] = [
    "0",
    "-1",
    "1e308",
    "-1e308",
    "nan",
    "inf",
    "1e15",
    "18446744073709551615",
    "9223372036854775808",
    "\"\"",
    "[]",
    "0.5",
];

/// One binary mutation of `valid`.
fn mutate_bytes(valid: &[u8], g: &mut Gen) -> Vec<u8> {
    let mut v = valid.to_vec();
    match g.below(6) {
        0 => v.truncate(g.below(valid.len() + 1)),
        1 => {
            for _ in 0..1 + g.below(8) {
                if !v.is_empty() {
                    let i = g.below(v.len());
                    v[i] ^= 1 << g.below(8);
                }
            }
        }
        2 => {
            // A header field (big- or little-endian) set to an edge value.
            if v.len() >= 4 {
                let i = g.below(v.len().min(64) - 3);
                let x = EDGE_U32[g.below(EDGE_U32.len())];
                let b = if g.below(2) == 0 {
                    x.to_be_bytes()
                } else {
                    x.to_le_bytes()
                };
                v[i..i + 4].copy_from_slice(&b);
            }
        }
        3 => {
            // Surplus data.
            let extra = 1 + g.below(4096);
            v.extend((0..extra).map(|_| g.next() as u8));
        }
        4 => {
            // A slice repeated (inflated content).
            if !v.is_empty() {
                let a = g.below(v.len());
                let b = a + g.below(v.len() - a);
                let copy = v[a..b].to_vec();
                for _ in 0..1 + g.below(4) {
                    v.extend_from_slice(&copy);
                }
            }
        }
        _ => v = (0..g.below(256)).map(|_| g.next() as u8).collect(),
    }
    v
}

/// One textual mutation: a number swapped for an edge value, a line deleted or doubled.
fn mutate_text(valid: &str, g: &mut Gen) -> String {
    let lines: Vec<&str> = valid.lines().collect();
    match g.below(4) {
        0 | 1 => {
            // Replace the k-th run of digits (with sign, dot and exponent) by an edge value.
            let bytes = valid.as_bytes();
            let mut runs = Vec::new();
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i].is_ascii_digit() {
                    let start = i;
                    while i < bytes.len()
                        && (bytes[i].is_ascii_digit() || b".eE+-".contains(&bytes[i]))
                    {
                        i += 1;
                    }
                    runs.push((start, i));
                } else {
                    i += 1;
                }
            }
            if runs.is_empty() {
                return valid.to_string();
            }
            let (a, b) = runs[g.below(runs.len())];
            format!(
                "{}{}{}",
                &valid[..a],
                EDGE_TEXT[g.below(EDGE_TEXT.len())],
                &valid[b..]
            )
        }
        2 => {
            let k = g.below(lines.len());
            lines
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != k)
                .map(|(_, l)| *l)
                .collect::<Vec<_>>()
                .join("\n")
        }
        _ => {
            let k = g.below(lines.len());
            let mut out: Vec<&str> = lines.clone();
            out.insert(k, lines[k]);
            out.join("\n")
        }
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn idx_images(n: u32, size: u32) -> Vec<u8> {
    let mut v = Vec::new();
    for x in [0x0803u32, n, size, size] {
        v.extend(x.to_be_bytes());
    }
    v.extend((0..n * size * size).map(|i| (i * 37 % 256) as u8));
    v
}

fn png(size: u32, seed: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, size, size);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().unwrap();
    let px: Vec<u8> = (0..size * size)
        .map(|i| (i as u8).wrapping_mul(seed))
        .collect();
    w.write_image_data(&px).unwrap();
    w.finish().unwrap();
    out
}

/// A checkpoint-like safetensors file with a few tensors.
fn safetensors_file() -> Vec<u8> {
    let mut m = BTreeMap::new();
    m.insert(
        "down.0.conv.weight".to_string(),
        HostTensor {
            shape: vec![4, 1, 3, 3],
            data: (0..36).map(|i| i as f32 * 0.01).collect(),
        },
    );
    m.insert(
        "down.0.conv.bias".to_string(),
        HostTensor {
            shape: vec![4],
            data: vec![0.5; 4],
        },
    );
    to_safetensors(&m).unwrap()
}

/// Mutates the JSON header of a safetensors file: dtype, shape or offsets changed.
fn mutate_safetensors_header(valid: &[u8], g: &mut Gen) -> Vec<u8> {
    let n = u64::from_le_bytes(valid[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&valid[8..8 + n]).unwrap();
    let new = match g.below(3) {
        0 => {
            let dt = ["F64", "BF16", "I32", "U8", "F16", "BOOL"][g.below(6)];
            header.replacen("\"F32\"", &format!("\"{dt}\""), 1)
        }
        _ => mutate_text(header, g),
    };
    let mut out = (new.len() as u64).to_le_bytes().to_vec();
    out.extend(new.as_bytes());
    out.extend(&valid[8 + n..]);
    out
}

fn fid_stats_file(dir: &Path) -> Vec<u8> {
    let p = dir.join("seed-stats.safetensors");
    let d = 3;
    let mean: Vec<f64> = vec![0.1, -0.2, 0.3];
    let mut cov = vec![0.0; d * d];
    for i in 0..d {
        cov[i * d + i] = 1.0 + i as f64;
    }
    let stats = ddpm::eval::frechet::FeatureStats {
        mean: nalgebra::DVector::from_vec(mean),
        cov: nalgebra::DMatrix::from_row_slice(d, d, &cov),
        n: 10,
    };
    ddpm::eval::fid::save_stats(&stats, &p).unwrap();
    std::fs::read(&p).unwrap()
}

fn state_json() -> String {
    let mut rng = ddpm::rng::Rng::new(1);
    let state = TrainState {
        step: 3,
        rng_t: rng.fork(1),
        rng_noise: rng.fork(2),
        data: ddpm::data::loader::Position {
            epoch: 1,
            offset: 2,
        },
        t_sampler: ddpm::diffusion::timestep_sampler::TimestepSampler::loss_second_moment(4),
        adam_step: 3,
        ema_updates: 3,
        checksums: Default::default(),
    };
    serde_json::to_string_pretty(&state).unwrap()
}

/// Runs `cases` mutations of one reader; returns (ok, err) counts. Panics are counted globally.
fn fuzz(
    name: &str,
    cases: usize,
    seed: u64,
    mut case: impl FnMut(&mut Gen) -> Result<(), String>,
) -> (usize, usize) {
    let mut g = Gen(seed);
    let (mut ok, mut err) = (0, 0);
    for i in 0..cases {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(&mut g)));
        match r {
            Ok(Ok(())) => ok += 1,
            Ok(Err(e)) => {
                assert!(
                    !e.trim().is_empty(),
                    "{name} case {i}: an empty error message"
                );
                err += 1
            }
            Err(_) => {
                PANICS.fetch_add(1, Ordering::SeqCst);
                eprintln!("{name}: case {i} (seed {seed}) panicked");
            }
        }
    }
    eprintln!("{name}: {cases} cases, {ok} read, {err} clear errors");
    (ok, err)
}

static PANICS: AtomicUsize = AtomicUsize::new(0);

fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let l = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(l.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

fn run_all(cases: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let e = |r: anyhow::Result<()>| r.map_err(|e| format!("{e:#}"));
    let mut total = 0;
    let mut reader = |name: &str, f: &mut dyn FnMut(&mut Gen) -> Result<(), String>| {
        let seed = name
            .bytes()
            .fold(17u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
        let (ok, err) = fuzz(name, cases, seed, f);
        total += ok + err;
    };

    // IDX images and labels, raw and gzipped (mutated before or after compression).
    let idx_dir = dir.join("idx");
    std::fs::create_dir_all(&idx_dir).unwrap();
    let images = idx_images(3, 8);
    reader("idx images", &mut |g| {
        let _ = std::fs::remove_file(idx_dir.join("train-images-idx3-ubyte"));
        let _ = std::fs::remove_file(idx_dir.join("train-images-idx3-ubyte.gz"));
        let (name, bytes) = match g.below(3) {
            0 => ("train-images-idx3-ubyte", mutate_bytes(&images, g)),
            1 => (
                "train-images-idx3-ubyte.gz",
                gzip(&mutate_bytes(&images, g)),
            ),
            _ => (
                "train-images-idx3-ubyte.gz",
                mutate_bytes(&gzip(&images), g),
            ),
        };
        std::fs::write(idx_dir.join(name), bytes).unwrap();
        e(IdxImages::open_dir(&idx_dir, Split::Train).map(|d| {
            use ddpm::data::Dataset;
            let mut out = vec![0.0; 64];
            for i in 0..d.len() {
                d.get(
                    i,
                    &mut out[..d.item_shape().iter().product::<usize>().min(64)],
                );
            }
        }))
    });
    let mut labels = Vec::new();
    for x in [0x0801u32, 5] {
        labels.extend(x.to_be_bytes());
    }
    labels.extend([1, 2, 3, 4, 5]);
    reader("idx labels", &mut |g| {
        let bytes = if g.below(2) == 0 {
            mutate_bytes(&labels, g)
        } else {
            gzip(&mutate_bytes(&labels, g))
        };
        std::fs::write(idx_dir.join("t10k-labels-idx1-ubyte"), bytes).unwrap();
        e(open_labels_dir(&idx_dir, Split::Test).map(|_| ()))
    });

    // CIFAR-10 binary batches (two records).
    let cifar_dir = dir.join("cifar");
    std::fs::create_dir_all(&cifar_dir).unwrap();
    let record: Vec<u8> = (0..2 * 3073)
        .map(|i| if i % 3073 == 0 { 3 } else { (i % 251) as u8 })
        .collect();
    reader("cifar batches", &mut |g| {
        std::fs::write(cifar_dir.join("test_batch.bin"), mutate_bytes(&record, g)).unwrap();
        e(Cifar10::open_dir(&cifar_dir, Split::Test).map(|_| ()))
    });

    // A folder of PNG and JPEG images.
    let folder = dir.join("folder");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("a.png"), png(8, 3)).unwrap();
    let good_png = png(10, 7);
    let jpeg = {
        let img = image::GrayImage::from_fn(9, 9, |x, y| image::Luma([(x * 20 + y) as u8]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
        out.into_inner()
    };
    reader("image folder", &mut |g| {
        let _ = std::fs::remove_file(folder.join("b.png"));
        let _ = std::fs::remove_file(folder.join("b.jpg"));
        if g.below(2) == 0 {
            std::fs::write(folder.join("b.png"), mutate_bytes(&good_png, g)).unwrap();
        } else {
            std::fs::write(folder.join("b.jpg"), mutate_bytes(&jpeg, g)).unwrap();
        }
        e(ImageFolder::open(&folder, 1, 8).map(|_| ()))
    });

    // Safetensors checkpoints (model, EMA, optimizer files).
    let st = safetensors_file();
    let st_path = dir.join("model.safetensors");
    reader("safetensors checkpoint", &mut |g| {
        let bytes = if g.below(2) == 0 {
            mutate_bytes(&st, g)
        } else {
            mutate_safetensors_header(&st, g)
        };
        std::fs::write(&st_path, bytes).unwrap();
        e(read_safetensors(&st_path).map(|_| ()))
    });

    // FID statistics.
    let stats = fid_stats_file(dir);
    let stats_path = dir.join("stats.safetensors");
    reader("fid statistics", &mut |g| {
        let bytes = if g.below(2) == 0 {
            mutate_bytes(&stats, g)
        } else {
            mutate_safetensors_header(&stats, g)
        };
        std::fs::write(&stats_path, bytes).unwrap();
        e(ddpm::eval::fid::load_stats(&stats_path).map(|_| ()))
    });

    // state.json, checked as --resume checks it.
    let state = state_json();
    let ckpt = dir.join("step-00000003");
    std::fs::create_dir_all(&ckpt).unwrap();
    let state_path = ckpt.join("state.json");
    reader("state.json", &mut |g| {
        let text = if g.below(4) == 0 {
            String::from_utf8_lossy(&mutate_bytes(state.as_bytes(), g)).to_string()
        } else {
            mutate_text(&state, g)
        };
        let parsed: Result<TrainState, _> = serde_json::from_str(&text);
        match parsed {
            Err(err) => Err(format!("not a valid training state: {err}")),
            Ok(s) => e(ddpm::train::resume::check_state(
                &s,
                &ckpt,
                4,
                10,
                4,
                &state_path,
            )),
        }
    });

    // config.toml, parsed and validated as `ddpm train --config` does.
    let config = RunConfig {
        model: Some(ddpm::model::UNetConfig::preset("tiny").unwrap()),
        ..RunConfig::default()
    }
    .to_toml()
    .unwrap();
    reader("config.toml", &mut |g| {
        let text = if g.below(4) == 0 {
            String::from_utf8_lossy(&mutate_bytes(config.as_bytes(), g)).to_string()
        } else {
            mutate_text(&config, g)
        };
        e(RunConfig::from_toml(&text, "config.toml").and_then(|c| {
            c.validate()?;
            c.unet_config()?
                .validate()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            c.to_toml().map(|_| ())
        }))
    });

    // β files for --schedule file:PATH.
    let betas = "# betas\n0.0001, 0.0002\n0.0005\n0.001\n0.02\n";
    let betas_path = dir.join("betas.txt");
    reader("beta file", &mut |g| {
        let text = if g.below(4) == 0 {
            String::from_utf8_lossy(&mutate_bytes(betas.as_bytes(), g)).to_string()
        } else {
            mutate_text(betas, g)
        };
        std::fs::write(&betas_path, text).unwrap();
        ddpm::schedule::read_betas_file(&betas_path)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });

    assert!(total >= 9 * cases, "{total} cases");
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "readers panicked");
    if let Some(peak) = peak_rss_bytes() {
        assert!(
            peak < 1 << 30,
            "peak RSS {} MiB: a reader allocated far beyond its input",
            peak >> 20
        );
    }
}

fn quiet_panics() {
    std::panic::set_hook(Box::new(|_| {}));
}

#[test]
fn every_reader_survives_mutated_files() {
    quiet_panics();
    let cases = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_200);
    run_all(cases);
}

#[test]
#[ignore = "long: 25,000 cases per reader"]
fn long_fuzz() {
    quiet_panics();
    run_all(25_000);
}
