//! The lecture's charts, drawn with plotters into PNG files, with an embedded font (DejaVu Sans,
//! `assets/`) so they render on machines without system fonts.

use std::path::Path;
use std::sync::Once;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::data::toy2d::Toy2d;
use crate::rng::Rng;
use crate::schedule::{BetaSchedule, NoiseSchedule};

const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
pub(super) const FAMILY: &str = "sans-serif";

static REGISTER: Once = Once::new();

fn font() {
    REGISTER.call_once(|| {
        if plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_err() {
            unreachable!("the embedded DejaVu Sans font parses");
        }
    });
}

pub(super) fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing failed: {e:?}")
}

/// Renders into an RGB buffer, then writes it atomically as PNG.
pub(super) fn render(
    path: &Path,
    w: u32,
    h: u32,
    draw: impl FnOnce(DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> Result<()>,
) -> Result<()> {
    font();
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        draw(root.clone())?;
        root.present().map_err(err)?;
    }
    let png = crate::viz::grid::encode_png(w as usize, h as usize, 3, &buf)?;
    crate::files::write_atomic(path, &png)
}

const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

type Points = Vec<(f64, f64)>;
type Series = (String, Points);

fn line_chart(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    xlabel: &str,
    ylabel: &str,
    series: &[Series],
) -> Result<()> {
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (_, pts) in series {
        for &(x, y) in pts.iter().filter(|p| p.1.is_finite()) {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
    }
    if x0 >= x1 {
        x1 = x0 + 1.0;
    }
    if y0 >= y1 {
        y1 = y0 + 1.0;
    }
    let pad = (y1 - y0) * 0.05;
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FAMILY, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(xlabel)
        .y_desc(ylabel)
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 16))
        .draw()
        .map_err(err)?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                pts.iter().copied().filter(|p| p.1.is_finite()),
                c.stroke_width(2),
            ))
            .map_err(err)?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font((FAMILY, 14))
        .draw()
        .map_err(err)?;
    Ok(())
}

/// β_t, ᾱ_t and log-SNR of the linear, quadratic, sigmoid, cosine and VDM linear-γ schedules
/// over T steps.
pub fn schedules(path: &Path, timesteps: usize, runs: Vec<(String, NoiseSchedule)>) -> Result<()> {
    let mut tables = Vec::new();
    for name in ["linear", "quadratic", "sigmoid", "cosine", "vdm-linear"] {
        let k = BetaSchedule::named(name, timesteps, None, None)?;
        tables.push((name.to_string(), NoiseSchedule::new(&k, timesteps, false)?));
    }
    tables.extend(runs);
    // A chain of another length is drawn over the same axis (its step i at (i + 1)·T/len).
    let series = |f: &dyn Fn(&NoiseSchedule, usize) -> f64| -> Vec<Series> {
        tables
            .iter()
            .map(|(n, s)| {
                let len = s.num_timesteps();
                let x = |i: usize| (i + 1) as f64 * timesteps as f64 / len as f64;
                (n.clone(), (0..len).map(|i| (x(i), f(s, i))).collect())
            })
            .collect()
    };
    render(path, 1500, 480, |root| {
        let areas = root.split_evenly((1, 3));
        line_chart(&areas[0], "β_t", "t", "β_t", &series(&|s, i| s.betas[i]))?;
        line_chart(
            &areas[1],
            "ᾱ_t = ∏ (1 − β_s)",
            "t",
            "ᾱ_t",
            &series(&|s, i| s.alphas_cumprod[i]),
        )?;
        let log_snr = series(&|s, i| s.snr[i].ln());
        line_chart(
            &areas[2],
            "log SNR(t) = log ᾱ_t/(1 − ᾱ_t)",
            "t",
            "log SNR",
            &log_snr,
        )?;
        Ok(())
    })
}

/// The 1-D mixture used by `plot diffusion --data toy:mixture-1d`: (weight, mean, sd).
pub const MIXTURE_1D: [(f64, f64, f64); 3] =
    [(0.3, -0.6, 0.08), (0.5, 0.1, 0.12), (0.2, 0.7, 0.05)];

/// The diffused distributions q(x_t) at several t (the lecture's "Diffused Data
/// Distributions"): 2-D data as scatter plots of x_t ~ q(x_t) (ancestral sampling: x0 ~ data,
/// then q(x_t|x0)); the 1-D mixture as a histogram with the exact density
/// q(x_t) = Σ π_k N(√ᾱ_t μ_k, ᾱ_t s_k² + 1 − ᾱ_t) drawn over it.
pub fn diffusion(
    path: &Path,
    data: &str,
    ts: &[usize],
    schedule: &NoiseSchedule,
    seed: u64,
) -> Result<()> {
    let mut rng = crate::rng::streams::plot_noise(seed);
    let n = 4000;
    let panels = ts.len().max(1) as u32;
    if let Some(name) = data.strip_prefix("toy:")
        && name != "mixture-1d"
    {
        let kind: Toy2d = name
            .parse()
            .map_err(|e: String| anyhow!("--data {data}: {e}"))?;
        let x0: Vec<[f64; 2]> = (0..n).map(|_| kind.sample(&mut rng)).collect();
        return render(path, 360 * panels, 400, |root| {
            let areas = root.split_evenly((1, ts.len()));
            for (area, &t) in areas.iter().zip(ts) {
                let ab = schedule.alphas_cumprod[t];
                let pts: Vec<(f64, f64)> = x0
                    .iter()
                    .map(|p| {
                        let a = ab.sqrt();
                        let b = (1.0 - ab).sqrt();
                        (a * p[0] + b * rng.normal(), a * p[1] + b * rng.normal())
                    })
                    .collect();
                let mut chart = ChartBuilder::on(area)
                    .caption(format!("q(x_t), t = {}", t + 1), (FAMILY, 18))
                    .margin(8)
                    .x_label_area_size(30)
                    .y_label_area_size(40)
                    .build_cartesian_2d(-3.0..3.0, -3.0..3.0)
                    .map_err(err)?;
                chart
                    .configure_mesh()
                    .label_style((FAMILY, 12))
                    .draw()
                    .map_err(err)?;
                chart
                    .draw_series(
                        pts.iter()
                            .map(|&p| Circle::new(p, 1, COLORS[0].mix(0.5).filled())),
                    )
                    .map_err(err)?;
            }
            Ok(())
        });
    }
    if data != "toy:mixture-1d" {
        return Err(anyhow!(
            "--data {data}: expected toy:swiss-roll, toy:two-moons, toy:8-gaussians, toy:checkerboard or toy:mixture-1d"
        ));
    }
    let draw_x0 = |rng: &mut Rng| {
        let u = rng.uniform();
        let mut acc = 0.0;
        for (p, m, s) in MIXTURE_1D {
            acc += p;
            if u < acc {
                return m + s * rng.normal();
            }
        }
        let (_, m, s) = MIXTURE_1D[2];
        m + s * rng.normal()
    };
    let x0: Vec<f64> = (0..n).map(|_| draw_x0(&mut rng)).collect();
    render(path, 360 * panels, 400, |root| {
        let areas = root.split_evenly((1, ts.len()));
        for (area, &t) in areas.iter().zip(ts) {
            let ab = schedule.alphas_cumprod[t];
            let xs: Vec<f64> = x0
                .iter()
                .map(|x| ab.sqrt() * x + (1.0 - ab).sqrt() * rng.normal())
                .collect();
            let bins = 60;
            let (lo, hi) = (-3.0, 3.0);
            let w = (hi - lo) / bins as f64;
            let mut counts = vec![0usize; bins];
            for x in &xs {
                if *x >= lo && *x < hi {
                    counts[((x - lo) / w) as usize] += 1;
                }
            }
            let density = |x: f64| -> f64 {
                MIXTURE_1D
                    .iter()
                    .map(|(p, m, s)| {
                        let v = ab * s * s + 1.0 - ab;
                        p * (-(x - ab.sqrt() * m).powi(2) / (2.0 * v)).exp()
                            / (2.0 * std::f64::consts::PI * v).sqrt()
                    })
                    .sum()
            };
            let ymax = (0..=300)
                .map(|i| density(lo + (hi - lo) * i as f64 / 300.0))
                .fold(0.0, f64::max)
                .max(
                    counts
                        .iter()
                        .map(|&c| c as f64 / (n as f64 * w))
                        .fold(0.0, f64::max),
                )
                * 1.1;
            let mut chart = ChartBuilder::on(area)
                .caption(format!("q(x_t), t = {}", t + 1), (FAMILY, 18))
                .margin(8)
                .x_label_area_size(30)
                .y_label_area_size(45)
                .build_cartesian_2d(lo..hi, 0.0..ymax)
                .map_err(err)?;
            chart
                .configure_mesh()
                .label_style((FAMILY, 12))
                .draw()
                .map_err(err)?;
            chart
                .draw_series(counts.iter().enumerate().map(|(i, &c)| {
                    let x = lo + i as f64 * w;
                    Rectangle::new(
                        [(x, 0.0), (x + w, c as f64 / (n as f64 * w))],
                        COLORS[0].mix(0.4).filled(),
                    )
                }))
                .map_err(err)?;
            chart
                .draw_series(LineSeries::new(
                    (0..=300).map(|i| {
                        let x = lo + (hi - lo) * i as f64 / 300.0;
                        (x, density(x))
                    }),
                    COLORS[3].stroke_width(2),
                ))
                .map_err(err)?;
        }
        Ok(())
    })
}

/// Training loss over steps, overall and by t-quartile, from a run's `log.jsonl`.
pub fn loss(path: &Path, log: &Path) -> Result<()> {
    let text = crate::files::read_text_capped(log, crate::files::LOG_MAX)
        .map_err(|e| anyhow!("cannot read {}: {e}", log.display()))?;
    let mut total = Vec::new();
    let mut quart: [Vec<(f64, f64)>; 4] = Default::default();
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| anyhow!("{} line {}: {e}", log.display(), i + 1))?;
        let step = v["step"].as_f64().unwrap_or(0.0);
        if let Some(l) = v["loss"].as_f64() {
            total.push((step, l));
        }
        if let Some(qs) = v["loss_by_quartile"].as_array() {
            for (q, x) in qs.iter().enumerate().take(4) {
                if let Some(x) = x.as_f64() {
                    quart[q].push((step, x));
                }
            }
        }
    }
    if total.is_empty() {
        return Err(anyhow!("{} holds no loss values", log.display()));
    }
    let mut series = vec![("loss".to_string(), total)];
    let names = [
        "t in 1st quarter",
        "t in 2nd quarter",
        "t in 3rd quarter",
        "t in 4th quarter",
    ];
    for (q, pts) in quart.into_iter().enumerate() {
        series.push((names[q].to_string(), pts));
    }
    render(path, 1000, 520, |root| {
        line_chart(&root, "Training loss", "step", "loss", &series)
    })
}

/// The guidance trade-off: the classifier's accuracy on the requested classes, the classifier
/// Fréchet distance and the Inception-style score, each against the guidance weight w (one line
/// per classifier scale), or against the classifier scale s when only it varies.
pub fn guidance_tradeoff(path: &Path, rows: &[crate::eval::guidance::GuidanceRow]) -> Result<()> {
    type Row = crate::eval::guidance::GuidanceRow;
    // Along the classifier scale when only it varies; else along w, one line per scale.
    let by_scale =
        rows.iter().any(|r| r.classifier_scale.is_some()) && rows.iter().all(|r| r.w == rows[0].w);
    let mut scales: Vec<Option<f64>> = Vec::new();
    for r in rows {
        if !scales.contains(&r.classifier_scale) {
            scales.push(r.classifier_scale);
        }
    }
    let lines = |f: fn(&Row) -> f64| -> Vec<Series> {
        if by_scale {
            let pts = rows
                .iter()
                .map(|r| (r.classifier_scale.unwrap_or(0.0), f(r)))
                .collect();
            return vec![(String::new(), pts)];
        }
        scales
            .iter()
            .map(|s| {
                let pts = rows
                    .iter()
                    .filter(|r| r.classifier_scale == *s)
                    .map(|r| (r.w, f(r)))
                    .collect();
                (s.map_or(String::new(), |s| format!("s = {s}")), pts)
            })
            .collect()
    };
    let xlabel = if by_scale {
        "classifier scale s"
    } else {
        "guidance weight w"
    };
    let panels: [(&str, &str, Vec<Series>); 3] = [
        (
            "Accuracy on the requested class",
            "accuracy",
            lines(|r| r.accuracy),
        ),
        ("Classifier Fréchet distance", "FD", lines(|r| r.fd)),
        (
            "Classifier Inception score",
            "IS",
            lines(|r| r.inception_score),
        ),
    ];
    render(path, 1500, 460, |root| {
        let areas = root.split_evenly((1, 3));
        for (area, (title, y, mut pts)) in areas.iter().zip(panels) {
            if let [(name, _)] = pts.as_mut_slice()
                && name.is_empty()
            {
                *name = y.to_string();
            }
            line_chart(area, title, xlabel, y, &pts)?;
        }
        Ok(())
    })
}
