//! Progress bars for the terminal.
use flowspect::progress::{Progress, ProgressSink};
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Mutex;

pub struct CliProgress {
    bar: Mutex<Option<ProgressBar>>,
}

impl CliProgress {
    pub fn new() -> Self {
        Self { bar: Mutex::new(None) }
    }
    pub fn finish(&self) {
        if let Ok(mut b) = self.bar.lock() {
            if let Some(b) = b.take() {
                b.finish_and_clear();
            }
        }
    }
}

impl ProgressSink for CliProgress {
    fn report(&self, p: Progress) {
        let Ok(mut bar) = self.bar.lock() else { return };
        match p {
            Progress::Stage { name, total } => {
                if let Some(b) = bar.take() {
                    b.finish_and_clear();
                }
                let b = if total > 0 { ProgressBar::new(total as u64) } else { ProgressBar::new_spinner() };
                if let Ok(style) = ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} {elapsed_precise} eta {eta}") {
                    b.set_style(style.progress_chars("=> "));
                }
                b.set_message(name);
                *bar = Some(b);
            }
            Progress::Step { done } => {
                if let Some(b) = bar.as_ref() {
                    b.set_position(done as u64);
                }
            }
            Progress::Epoch { .. } => {}
            Progress::Skipped { message } => say(bar.as_ref(), format!("skipped: {message}")),
            Progress::Info(m) => say(bar.as_ref(), m),
        }
    }
}

/// Prints above the bar, or plainly when there is no terminal to draw it on.
fn say(bar: Option<&ProgressBar>, m: String) {
    match bar {
        Some(b) if !b.is_hidden() => b.println(m),
        _ => eprintln!("{m}"),
    }
}
