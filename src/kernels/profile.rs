//! Wall time per kernel call, summed by operation and shape: `ddpm bench --profile` turns it on
//! and prints where a step's time goes (convolutions, GroupNorms and attention blocks by shape;
//! the rest of the step is burn's own operations, the loss and the optimizer). Off by default:
//! then a call costs one relaxed atomic load.

use super::attention::AttnGeometry;
use super::conv::ConvGeometry;
use super::group_norm::NormGeometry;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// The prefix of the names under which `ddpm bench` times the phases of a whole step (forward,
/// backward, optimizer): they contain the kernels' times rather than add to them.
pub const STEP: &str = "step: ";

static ON: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<BTreeMap<String, Entry>> = Mutex::new(BTreeMap::new());

/// The calls of one operation and shape.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Entry {
    /// Calls.
    pub calls: u64,
    /// Wall time of all of them, seconds.
    pub seconds: f64,
}

/// Starts (or stops) timing kernel calls.
pub fn set_enabled(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// Forgets what was timed so far (after a warm-up).
pub fn reset() {
    totals().clear();
}

/// What was timed since the last [`reset`], longest total first.
pub fn report() -> Vec<(String, Entry)> {
    let mut v: Vec<(String, Entry)> = totals().iter().map(|(k, e)| (k.clone(), *e)).collect();
    v.sort_by(|a, b| b.1.seconds.total_cmp(&a.1.seconds));
    v
}

fn totals() -> std::sync::MutexGuard<'static, BTreeMap<String, Entry>> {
    // A panic inside `time` never holds the lock; recover the map if one did elsewhere.
    TOTALS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f`, adding its wall time under the name `what()` when profiling is on.
pub(crate) fn time<T>(what: impl FnOnce() -> String, f: impl FnOnce() -> T) -> T {
    if !ON.load(Ordering::Relaxed) {
        return f();
    }
    let start = std::time::Instant::now();
    let out = f();
    let seconds = start.elapsed().as_secs_f64();
    let mut t = totals();
    let e = t.entry(what()).or_default();
    e.calls += 1;
    e.seconds += seconds;
    out
}

/// "conv2d 3×3/1 32→64 28×28 `pass`": kernel, stride, channels, input size.
#[cfg_attr(not(feature = "flex"), allow(dead_code))] // named by the flex kernels
pub(crate) fn conv(g: &ConvGeometry, pass: &str) -> String {
    format!(
        "conv2d {}×{}/{} {}→{} {}×{} {pass}",
        g.kh, g.kw, g.stride[0], g.cin, g.cout, g.h, g.w
    )
}

/// "group_norm+silu 32ch/8 784px `pass`": channels / groups, pixels.
#[cfg_attr(not(feature = "flex"), allow(dead_code))] // named by the flex kernels
pub(crate) fn norm(g: &NormGeometry, silu: bool, pass: &str) -> String {
    let act = if silu { "+silu" } else { "" };
    format!(
        "group_norm{act} {}ch/{} {}px {pass}",
        g.channels, g.groups, g.spatial
    )
}

/// "attention 64ch 49px 1 head `pass`".
#[cfg_attr(not(feature = "flex"), allow(dead_code))] // named by the flex kernels
pub(crate) fn attention(g: &AttnGeometry, pass: &str) -> String {
    let heads = if g.heads == 1 { "head" } else { "heads" };
    format!(
        "attention {}ch {}px {} {heads} {pass}",
        g.channels, g.pixels, g.heads
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test touches the global switch, so that no other test sees it on.
    #[test]
    fn times_only_when_enabled_and_sums_by_name() {
        let key = || "profile test op".to_string();
        assert_eq!(time(key, || 7), 7);
        assert!(report().iter().all(|(k, _)| k != "profile test op"));
        set_enabled(true);
        for _ in 0..3 {
            time(key, || {
                std::thread::sleep(std::time::Duration::from_millis(2))
            });
        }
        set_enabled(false);
        let (_, e) = report()
            .into_iter()
            .find(|(k, _)| k == "profile test op")
            .expect("timed");
        assert_eq!(e.calls, 3);
        assert!(e.seconds >= 0.006, "{}", e.seconds);
        reset();
        assert!(report().is_empty());
    }
}
