//! The crate's one error type. Every variant names what went wrong and where
//! (file, line, field, tensor key), so a user can fix the input without a debugger.

use std::path::PathBuf;

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Typed errors of the library. Binaries and examples wrap them in `anyhow`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem operation failed on `path`.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A JSON document (or one line of a JSONL file) did not parse.
    #[error("{path}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Json {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },

    /// A configuration value is missing, malformed or out of range.
    #[error("config {}field `{field}`: {message}", source_file.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    Config {
        source_file: Option<PathBuf>,
        field: String,
        message: String,
    },

    /// The model architecture in config.json is not one we implement.
    #[error("{path}: unsupported architecture `{architecture}` (supported: {supported})")]
    UnsupportedArchitecture {
        path: PathBuf,
        architecture: String,
        supported: String,
    },

    /// A weight file is missing a tensor the model needs.
    #[error("{path}: missing tensor `{key}` (expected shape {expected:?})")]
    MissingTensor {
        path: PathBuf,
        key: String,
        expected: Vec<usize>,
    },

    /// A weight file holds a tensor the model does not have.
    #[error("{path}: unexpected tensor `{key}` with shape {shape:?}")]
    UnexpectedTensor {
        path: PathBuf,
        key: String,
        shape: Vec<usize>,
    },

    /// A tensor in a weight file has the wrong shape.
    #[error("{path}: tensor `{key}` has shape {found:?}, the model expects {expected:?}")]
    TensorShape {
        path: PathBuf,
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// A safetensors file is malformed or uses an unsupported dtype.
    #[error("{path}: {message}")]
    Safetensors { path: PathBuf, message: String },

    /// Tokenizer loading or encoding failed.
    #[error("tokenizer{}: {message}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Tokenizer {
        path: Option<PathBuf>,
        message: String,
    },

    /// A data row is malformed (`line` is 1-based).
    #[error("{path}:{line}: {message}")]
    Data {
        path: PathBuf,
        line: usize,
        message: String,
    },

    /// The sandbox itself failed (not the program it ran).
    #[error("sandbox ({executor}): {message}")]
    Sandbox { executor: String, message: String },

    /// Invalid arguments to a library function (shapes, ranges, empty batches).
    #[error("invalid argument `{name}`: {message}")]
    InvalidArgument { name: String, message: String },

    /// A checkpoint is incomplete or inconsistent.
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },

    /// A collective operation between data-parallel workers failed (usually because another
    /// worker stopped with an error of its own, which is reported instead when known).
    #[error("worker {rank}: collective {operation} failed: {message}")]
    Collective {
        rank: usize,
        operation: String,
        message: String,
    },
}

impl Error {
    /// Shorthand for [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(name: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            name: name.into(),
            message: message.into(),
        }
    }

    /// Shorthand for [`Error::Config`] without a source file.
    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            source_file: None,
            field: field.into(),
            message: message.into(),
        }
    }
}
