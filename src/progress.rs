//! Progress reporting and cancellation shared by the CLI and the GUI worker.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A cheap, clonable flag that long jobs check between steps.
#[derive(Clone, Default, Debug)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst)
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    pub fn check(&self) -> crate::Result<()> {
        if self.is_cancelled() {
            Err(crate::Error::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// One progress message of a long job.
#[derive(Clone, Debug, PartialEq)]
pub enum Progress {
    /// A stage started: name and the number of steps it has (0 when unknown).
    Stage { name: String, total: usize },
    /// `done` steps of the current stage are finished.
    Step { done: usize },
    /// An epoch of a training stage ended, with its mean loss.
    Epoch {
        stage: String,
        epoch: usize,
        epochs: usize,
        loss: f64,
    },
    /// A file was skipped, with the reason (already names the file).
    Skipped { message: String },
    /// Free text for the log.
    Info(String),
}

/// Where progress goes: the CLI prints it, the GUI sends it over a channel.
pub trait ProgressSink: Send + Sync {
    fn report(&self, p: Progress);
}

/// Discards everything (tests, library use).
pub struct NoProgress;
impl ProgressSink for NoProgress {
    fn report(&self, _p: Progress) {}
}

impl<F: Fn(Progress) + Send + Sync> ProgressSink for F {
    fn report(&self, p: Progress) {
        self(p)
    }
}
