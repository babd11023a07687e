//! The DICOM network: the receiver the scanner sends to ([`scp`]).

pub mod scp;
