//! Progress reporting for long work: a bar on a terminal, nothing otherwise.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar that draws only when stderr is a terminal and `enabled`.
#[derive(Clone, Debug)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar of `len` steps (drawn on a terminal only).
    pub fn new(len: u64, enabled: bool) -> Self {
        let bar = if enabled {
            ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
        {
            bar.set_style(style);
        }
        Progress { bar }
    }
    /// A bar that never draws.
    pub fn hidden() -> Self {
        Progress::new(0, false)
    }
    /// Advances by `n` steps.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }
    /// Sets the text beside the bar.
    pub fn message(&self, msg: String) {
        self.bar.set_message(msg);
    }
    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
