//! `ddpm eval fid-stats` / `ddpm eval fid` end to end with stand-in (synthetic) Inception
//! weights, and their bad inputs.

use std::path::Path;
use std::process::Command;

fn ddpm(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .args(args)
        .output()
        .expect("run ddpm")
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `n` grayscale `size`×`size` PNGs with different contents.
fn write_pngs(dir: &Path, n: usize, size: u32, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = ddpm::rng::Rng::new(seed);
    for i in 0..n {
        let img = image::GrayImage::from_fn(size, size, |_, _| {
            image::Luma([(rng.uniform() * 255.0) as u8])
        });
        img.save(dir.join(format!("{i:03}.png"))).unwrap();
    }
}

#[test]
fn fid_of_a_folder_against_itself_is_zero_and_against_others_is_positive() {
    let tmp = tempfile::tempdir().unwrap();
    let weights = tmp.path().join("inception.safetensors");
    ddpm::eval::inception::write_synthetic_weights(&weights).unwrap();
    let w = weights.to_str().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    write_pngs(&a, 6, 28, 1);
    write_pngs(&b, 6, 28, 2);
    let stats = tmp.path().join("a.safetensors");
    let o = ddpm(&[
        "eval",
        "fid-stats",
        "--data",
        a.to_str().unwrap(),
        "--inception",
        w,
        "--out",
        stats.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("rank-deficient"), "{}", stderr(&o));
    let fid = |samples: &Path, reference: &str| -> f64 {
        let o = ddpm(&[
            "eval",
            "fid",
            "--samples",
            samples.to_str().unwrap(),
            "--reference",
            reference,
            "--inception",
            w,
            "--json",
            "--quiet",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["n_samples"], 6);
        v["fid"].as_f64().unwrap()
    };
    let same = fid(&a, stats.to_str().unwrap());
    // Zero up to the rounding of two 2048×2048 eigendecompositions.
    assert!(
        same.abs() < 1e-4,
        "FID of a set against its own statistics: {same}"
    );
    let other = fid(&b, stats.to_str().unwrap());
    assert!(other > 1e-3, "{other}");
    // A folder as the reference gives the same number as its cached statistics.
    let direct = fid(&b, &format!("folder:{}", a.display()));
    assert!(
        (direct - other).abs() < 1e-6 * other.max(1.0),
        "{direct} vs {other}"
    );
}

#[test]
fn bad_fid_inputs_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    write_pngs(&good, 3, 28, 3);
    let weights = tmp.path().join("w.safetensors");
    ddpm::eval::inception::write_synthetic_weights(&weights).unwrap();
    let w = weights.to_str().unwrap();
    let run = |samples: &str, inception: &str| {
        ddpm(&[
            "eval",
            "fid",
            "--samples",
            samples,
            "--reference",
            good.to_str().unwrap(),
            "--inception",
            inception,
            "--quiet",
        ])
    };
    // Mixed sizes.
    let mixed = tmp.path().join("mixed");
    write_pngs(&mixed, 2, 28, 4);
    image::GrayImage::new(32, 32)
        .save(mixed.join("big.png"))
        .unwrap();
    let o = run(mixed.to_str().unwrap(), w);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("mixed sizes"), "{}", stderr(&o));
    // A file that is not an image.
    let junk = tmp.path().join("junk");
    write_pngs(&junk, 2, 28, 5);
    std::fs::write(junk.join("notes.txt"), "hello").unwrap();
    let o = run(junk.to_str().unwrap(), w);
    assert!(stderr(&o).contains("not an image"), "{}", stderr(&o));
    // One sample is too few for a covariance.
    let one = tmp.path().join("one");
    write_pngs(&one, 1, 28, 6);
    let o = run(one.to_str().unwrap(), w);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("at least 2"), "{}", stderr(&o));
    // Weights of the wrong shapes, and no weights at all.
    let wrong = tmp.path().join("wrong.safetensors");
    let mut t = std::collections::BTreeMap::new();
    t.insert(
        "Conv2d_1a_3x3.conv.weight".to_string(),
        ddpm::store::tensors::HostTensor {
            shape: vec![32, 3, 5, 5],
            data: vec![0.0; 32 * 75],
        },
    );
    std::fs::write(&wrong, ddpm::store::tensors::to_safetensors(&t).unwrap()).unwrap();
    let o = run(good.to_str().unwrap(), wrong.to_str().unwrap());
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("has shape [32, 3, 5, 5]"),
        "{}",
        stderr(&o)
    );
    let o = run(
        good.to_str().unwrap(),
        tmp.path().join("missing.pth").to_str().unwrap(),
    );
    assert!(stderr(&o).contains("no such file"), "{}", stderr(&o));
}

/// Serves `body` at any path, `times` times, from 127.0.0.1; returns the base URL.
fn serve_file(body: Vec<u8>, times: usize) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in listener.incoming().take(times) {
            let Ok(mut s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        }
    });
    url
}

#[test]
fn without_inception_the_weights_are_downloaded_once_and_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let weights = tmp.path().join("w.safetensors");
    ddpm::eval::inception::write_synthetic_weights(&weights).unwrap();
    let bytes = std::fs::read(&weights).unwrap();
    let sha = ddpm::hub::sha256_file(&weights).unwrap();
    let a = tmp.path().join("a");
    write_pngs(&a, 3, 28, 1);
    let cache = tmp.path().join("cache");
    let stats = |url: &str, out: &str| {
        Command::new(env!("CARGO_BIN_EXE_ddpm"))
            .args([
                "eval",
                "fid-stats",
                "--data",
                a.to_str().unwrap(),
                "--quiet",
                "--out",
            ])
            .arg(tmp.path().join(out))
            .env("DDPM_CACHE", &cache)
            .env("DDPM_FID_WEIGHTS_URL", url)
            .output()
            .unwrap()
    };
    let base = serve_file(bytes.clone(), 1);
    let url = format!("{base}/inception-{}.safetensors", &sha[..8]);
    let o = stats(&url, "s1.safetensors");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        cache
            .join("files")
            .join(format!("inception-{}.safetensors", &sha[..8]))
            .is_file()
    );
    // Cached: the same URL works with nothing serving it.
    let o = stats(&url.replace(&base, "http://127.0.0.1:9"), "s2.safetensors");
    assert!(o.status.success(), "{}", stderr(&o));
    // A file whose hash does not match its name is refused and not kept.
    let base = serve_file(bytes, 1);
    let o = stats(
        &format!("{base}/inception-00000000.safetensors"),
        "s3.safetensors",
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("SHA-256"), "{}", stderr(&o));
    assert!(!cache.join("files/inception-00000000.safetensors").exists());
    // Offline with nothing cached: what to do instead.
    let o = stats(
        "http://127.0.0.1:9/pt_inception-2015-12-05-6726825d.pth",
        "s4.safetensors",
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--inception PATH"), "{}", stderr(&o));
}
