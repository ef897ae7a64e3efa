//! The library's error type. Every variant names the file or setting it is about,
//! so the CLI and the GUI can show it to the user as is.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot decode image: {reason}")]
    Image { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("{path}: model file version {found} is not supported by this flowspect (expects version {expected}); retrain or re-export the model")]
    Version {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("{0}")]
    Data(String),
    #[error("invalid setting: {0}")]
    Config(String),
    #[error("device: {0}")]
    Device(String),
    #[error("cancelled")]
    Cancelled,
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn bad_file(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::BadFile {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
