//! The error of the library's entry points: what went wrong as a kind a caller can act on, with
//! the message and its chain of causes for people.
//!
//! Inside the crate errors are `anyhow` chains; the places that know what kind of failure they
//! meet raise it as one of the typed causes below ([`Refused`]), and [`Error`] finds the kind
//! in the chain. The messages are the ones the command line prints.

use std::fmt;

/// What kind of failure an [`Error`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A configuration value that cannot be used (the message names the key or flag).
    Config,
    /// A model path that is not a run, a checkpoint, a diffusers folder or a fetched Hub repo.
    NotFound,
    /// The work would need more memory than the machine has (the message gives the estimate).
    OutOfMemory,
    /// Training diverged: a non-finite loss, gradient norm or weight (nothing was saved).
    Diverged,
    /// Sampling gave non-finite values.
    NonFinite,
    /// Anything else: unreadable or damaged files, data that does not fit the model, I/O.
    Other,
}

/// A typed cause raised where the kind of failure is known; its message is the whole message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The kind.
    pub kind: ErrorKind,
    /// The message.
    pub message: String,
}

impl Refused {
    /// An `anyhow` error of `kind` saying `message`.
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Self {
            kind,
            message: message.into(),
        })
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refused {}

/// The error of the library's entry points.
///
/// ```
/// use ddpm::{ErrorKind, ImagePipeline};
///
/// let e = ImagePipeline::load("no/such/run").err().expect("not a run");
/// assert_eq!(e.kind(), ErrorKind::NotFound);
/// assert!(e.to_string().contains("no/such/run"));
///
/// let config = ddpm::RunConfig { steps: 0, ..Default::default() };
/// let e = ddpm::train_auto(&config, false, true).err().expect("no steps");
/// assert_eq!(e.kind(), ErrorKind::Config);
/// assert!(e.to_string().contains("--steps"));
/// ```
pub struct Error {
    kind: ErrorKind,
    source: anyhow::Error,
}

impl Error {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The underlying chain of causes.
    pub fn chain(&self) -> &anyhow::Error {
        &self.source
    }

    /// The chain of causes, to add context to or to return from an `anyhow` function.
    pub fn into_anyhow(self) -> anyhow::Error {
        self.source
    }
}

impl From<anyhow::Error> for Error {
    fn from(source: anyhow::Error) -> Self {
        let kind = source
            .chain()
            .find_map(|c| c.downcast_ref::<Refused>().map(|r| r.kind))
            .unwrap_or(ErrorKind::Other);
        Self { kind, source }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.source)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {:#}", self.kind, self.source)
    }
}

impl std::error::Error for Error {}

/// The result of the library's entry points.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_is_found_under_context_and_the_message_is_kept() {
        let e: anyhow::Error = Refused::error(ErrorKind::OutOfMemory, "needs 9 GiB, has 2")
            .context("--batch-size 512");
        let e = Error::from(e);
        assert_eq!(e.kind(), ErrorKind::OutOfMemory);
        assert_eq!(e.to_string(), "--batch-size 512: needs 9 GiB, has 2");
        let other = Error::from(anyhow::anyhow!("disk full"));
        assert_eq!(
            (other.kind(), other.to_string()),
            (ErrorKind::Other, "disk full".into())
        );
    }
}
