//! The DICOM network: the receiver the scanner sends to ([`scp`]) and the sender of results to
//! the PACS ([`export`]), over the DIMSE command sets of [`dimse`].

pub mod dimse;
pub mod export;
pub mod scp;
