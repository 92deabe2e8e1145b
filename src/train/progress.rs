//! What a run reports while it trains: `log.jsonl` (one line every `log_every` steps: the mean
//! loss, the loss by quarter of the chain, the gradient norm, the learning rate, throughput), the
//! same lines to a caller's function, and the progress bar.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

/// One line of `log.jsonl`: the steps since the previous line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepReport {
    /// The step the line ends at.
    pub step: u64,
    /// The mean loss (for VDM the whole bound in bits/dim).
    pub loss: f64,
    /// The mean loss of the examples in each quarter of the chain, t ≤ T/4 first.
    pub loss_by_quartile: [Option<f64>; 4],
    /// The last step's gradient norm before clipping.
    pub grad_norm: f64,
    /// The last step's learning rate.
    pub lr: f64,
    /// Training throughput.
    pub img_per_s: f64,
    /// Seconds since this invocation started.
    pub elapsed_s: f64,
    /// With several ranks: the seconds per step spent summing gradients across them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allreduce_s: Option<f64>,
}

/// A caller's function that sees each log line.
pub type OnLog<'a> = Box<dyn FnMut(&StepReport) + 'a>;

/// The log, the bar and the running sums of the current log window.
pub struct Progress<'a> {
    log: Option<(std::fs::File, PathBuf)>,
    bar: Option<indicatif::ProgressBar>,
    start: Instant,
    window_start: Instant,
    window_images: usize,
    loss_sum: f64,
    loss_n: usize,
    q_sum: [f64; 4],
    q_n: [usize; 4],
    step_loss: f64,
    allreduce_s: f64,
    /// The last step's loss.
    pub last_loss: f64,
    on_log: Option<OnLog<'a>>,
}

impl<'a> Progress<'a> {
    /// Appends to `run/log.jsonl` when `write` (rank 0); a bar over `total` steps from `done`
    /// unless `quiet`.
    pub fn open(
        run: &Path,
        write: bool,
        total: u64,
        done: u64,
        quiet: bool,
        on_log: Option<OnLog<'a>>,
    ) -> Result<Self> {
        let path = run.join("log.jsonl");
        let log = if write {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("cannot open {} for appending", path.display()))?;
            Some((file, path))
        } else {
            None
        };
        Ok(Self {
            log,
            bar: progress_bar(total, done, quiet),
            start: Instant::now(),
            window_start: Instant::now(),
            window_images: 0,
            loss_sum: 0.0,
            loss_n: 0,
            q_sum: [0.0; 4],
            q_n: [0; 4],
            step_loss: 0.0,
            allreduce_s: 0.0,
            last_loss: f64::NAN,
            on_log,
        })
    }

    /// Seconds since the run (this invocation) started.
    pub fn elapsed_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Records a micro-batch's examples: their chain steps of `n_t` and losses, each `1/count`
    /// of the step's loss.
    pub fn record(&mut self, steps: &[usize], losses: &[f64], n_t: usize, count: usize) {
        for (&t, &l) in steps.iter().zip(losses) {
            let q = (t * 4 / n_t).min(3);
            self.q_sum[q] += l;
            self.q_n[q] += 1;
            self.step_loss += l / count as f64;
        }
    }

    /// Adds the seconds a step spent summing gradients across ranks.
    pub fn add_allreduce(&mut self, secs: f64) {
        self.allreduce_s += secs;
    }

    /// Ends `step` of `images` images; writes a log line when `log_now`.
    pub fn end_step(
        &mut self,
        step: u64,
        images: usize,
        (grad_norm, lr): (f64, f64),
        log_now: bool,
        distributed: bool,
    ) -> Result<()> {
        let step_loss = std::mem::take(&mut self.step_loss);
        self.loss_sum += step_loss;
        self.loss_n += 1;
        self.window_images += images;
        self.last_loss = step_loss;
        if let Some(b) = &self.bar {
            b.set_position(step);
            b.set_message(format!("loss {step_loss:.4}"));
        }
        if !log_now {
            return Ok(());
        }
        let secs = self.window_start.elapsed().as_secs_f64();
        let n = self.loss_n.max(1) as f64;
        let line = StepReport {
            step,
            loss: self.loss_sum / n,
            loss_by_quartile: std::array::from_fn(|i| {
                (self.q_n[i] > 0).then(|| self.q_sum[i] / self.q_n[i] as f64)
            }),
            grad_norm,
            lr,
            img_per_s: self.window_images as f64 / secs.max(1e-9),
            elapsed_s: self.elapsed_s(),
            allreduce_s: distributed.then(|| self.allreduce_s / n),
        };
        if let Some((file, path)) = self.log.as_mut() {
            writeln!(file, "{}", serde_json::to_string(&line)?)
                .with_context(|| format!("cannot append to {}", path.display()))?;
        }
        if let Some(f) = self.on_log.as_mut() {
            f(&line);
        }
        if let Some(b) = &self.bar {
            b.set_message(format!(
                "loss {:.4} | {:.1} img/s",
                line.loss, line.img_per_s
            ));
        }
        self.window_start = Instant::now();
        self.window_images = 0;
        self.loss_sum = 0.0;
        self.loss_n = 0;
        self.q_sum = [0.0; 4];
        self.q_n = [0; 4];
        self.allreduce_s = 0.0;
        Ok(())
    }

    /// Ends the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}

fn progress_bar(total: u64, pos: u64, quiet: bool) -> Option<indicatif::ProgressBar> {
    if quiet {
        return None;
    }
    let b = indicatif::ProgressBar::new(total);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps | {msg} | {elapsed} elapsed, ETA {eta}",
        )
        .expect("template"),
    );
    b.set_position(pos);
    // Ticks while a step is still running (a GPU backend compiling its kernels).
    b.enable_steady_tick(std::time::Duration::from_millis(500));
    Some(b)
}
