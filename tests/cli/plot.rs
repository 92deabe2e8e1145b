//! `ddpm plot`: every chart is written as a PNG of the expected size that is not blank.

use std::path::Path;
use std::process::Command;

fn ddpm(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .args(args)
        .output()
        .expect("run ddpm")
}

/// (width, height, number of distinct pixel values).
fn inspect(path: &Path) -> (u32, u32, usize) {
    let img = image::open(path).unwrap().to_rgb8();
    let mut seen = std::collections::HashSet::new();
    for p in img.pixels() {
        seen.insert(p.0);
    }
    (img.width(), img.height(), seen.len())
}

#[test]
fn every_plot_writes_a_readable_picture() {
    let tmp = tempfile::tempdir().unwrap();
    let out = |n: &str| tmp.path().join(n).display().to_string();
    let cases: Vec<(Vec<String>, (u32, u32))> = vec![
        (
            vec![
                "plot".into(),
                "schedules".into(),
                "--out".into(),
                out("s.png"),
            ],
            (1500, 480),
        ),
        (
            vec![
                "plot".into(),
                "diffusion".into(),
                "--data".into(),
                "toy:two-moons".into(),
                "--t".into(),
                "0,500".into(),
                "--out".into(),
                out("d.png"),
            ],
            (720, 400),
        ),
        (
            vec![
                "plot".into(),
                "diffusion".into(),
                "--data".into(),
                "toy:mixture-1d".into(),
                "--t".into(),
                "0,100,999".into(),
                "--out".into(),
                out("m.png"),
            ],
            (1080, 400),
        ),
    ];
    for (args, (w, h)) in cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = ddpm(&a);
        assert!(
            o.status.success(),
            "{a:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let path = a.last().unwrap();
        let (iw, ih, colors) = inspect(Path::new(path));
        assert_eq!((iw, ih), (w, h), "{path}");
        assert!(colors > 20, "{path} looks blank ({colors} colours)");
    }
    // Forward process of a real image.
    let img = image::RgbImage::from_fn(16, 12, |x, y| {
        image::Rgb([(x * 15) as u8, (y * 20) as u8, 128])
    });
    let src = tmp.path().join("in.png");
    img.save(&src).unwrap();
    let o = ddpm(&[
        "plot",
        "forward",
        "--image",
        src.to_str().unwrap(),
        "--t",
        "0,999",
        "--out",
        &out("f.png"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (w, h, colors) = inspect(&tmp.path().join("f.png"));
    // Labelled panels: 90 px of row labels, 60 of title and column labels, the 16×12 image
    // drawn 7× (112 / 16) with 8-pixel gaps.
    assert_eq!((w, h), (90 + 2 * (7 * 16 + 8) + 8, 60 + (7 * 12 + 8) + 8));
    assert!(colors > 20);
    // Loss curves from a log.
    let run = tmp.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let log: String = (1..=20)
        .map(|s| {
            format!(
                "{{\"step\":{s},\"loss\":{},\"loss_by_quartile\":[{},{},null,0.1]}}\n",
                1.0 / s as f64,
                2.0 / s as f64,
                0.5
            )
        })
        .collect();
    std::fs::write(run.join("log.jsonl"), log).unwrap();
    let o = ddpm(&[
        "plot",
        "loss",
        "--run",
        run.to_str().unwrap(),
        "--out",
        &out("l.png"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (w, h, colors) = inspect(&tmp.path().join("l.png"));
    assert_eq!((w, h), (1000, 520));
    assert!(colors > 20);
    // Bad input.
    let o = ddpm(&[
        "plot",
        "diffusion",
        "--data",
        "toy:spiral",
        "--out",
        &out("x.png"),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let o = ddpm(&[
        "plot",
        "loss",
        "--run",
        tmp.path().join("none").to_str().unwrap(),
        "--out",
        &out("x.png"),
    ]);
    assert_eq!(o.status.code(), Some(2));
}
