//! The DICOM network: the receiver the scanner sends to ([`scp`]) and the sender of results to
//! the PACS ([`export`]), over the DIMSE command sets of [`dimse`]. Failures on the wire are one
//! [`Error`] type whose kind says whether trying again later can help.

pub mod dimse;
pub mod export;
pub mod scp;
pub mod tls;

/// What went wrong with a DICOM peer. The message names the peer and the step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No connection or no association (refused, rejected, timed out): the peer may be down.
    #[error("{0}")]
    Unreachable(String),
    /// The association broke while in use (I/O error, abort, no response).
    #[error("{0}")]
    Link(String),
    /// The peer is out of resources (status A7xx): it may take the object later.
    #[error("{0}")]
    Busy(String),
    /// The peer's configuration refuses it (SOP class or transfer syntax not accepted, a
    /// failure status for C-ECHO): waiting does not help until someone changes it.
    #[error("{0}")]
    Refused(String),
    /// The peer broke the protocol (malformed PDU or command set, messages out of order).
    #[error("{0}")]
    Protocol(String),
}

impl Error {
    /// The same kind of error, its message prefixed with `what` (the peer, the step).
    pub fn with_context(self, what: &str) -> Error {
        let f = |m: String| format!("{what}: {m}");
        match self {
            Error::Unreachable(m) => Error::Unreachable(f(m)),
            Error::Link(m) => Error::Link(f(m)),
            Error::Busy(m) => Error::Busy(f(m)),
            Error::Refused(m) => Error::Refused(f(m)),
            Error::Protocol(m) => Error::Protocol(f(m)),
        }
    }

    /// Whether the same request may succeed later without anyone changing anything (an
    /// exporter backs off and tries again soon; otherwise it waits its longest back-off).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unreachable(_) | Error::Link(_) | Error::Busy(_))
    }
}
