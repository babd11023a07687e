//! ctsentry: the software of an edge inference box in a CT scanner room.
//!
//! Layers, lower ones free of imports from upper ones:
//! - [`config`]: the one TOML file an admin edits, parsed and validated.
//! - [`ingest`]: DICOM and NIfTI files to axial CT slices in Hounsfield units, ordered in series.
//! - [`preprocess`]: HU to the classifier's input tensor, lung segmentation.
//! - [`inspect`]: what ingest sees, as the `inspect` command reports it.
//! - [`bench`], [`doctor`]: throughput per stage; what is usable on this machine and why not.
//! - [`prep`]: the `prep` command, tensors for training.
//! - [`report`]: PNG pictures.
//! - [`model`]: the model bundle (ONNX + manifest), validated.
//! - [`engine`]: inference engines behind one trait (tract on the CPU).
//! - [`decide`], [`metrics`]: the decision rule; the evaluation table and ROC.
//! - [`logging`]: terminal or journald logging.

pub mod alloc_guard;
pub mod alert;
pub mod bench;
pub mod doctor;
pub mod config;
pub mod daemon;
pub mod decide;
pub mod durable;
pub mod failpoint;
pub mod ingest;
pub mod prep;
pub mod preprocess;
pub mod report;
pub mod score;
pub mod status;
pub mod inspect;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod net;
pub mod output;
pub mod engine;
pub mod exposition;

// The allocator is the binary's choice (`src/main.rs` installs [`alloc_guard::GuardedAlloc`]);
// the library's own tests install it too.
#[cfg(test)]
#[global_allocator]
static GLOBAL: alloc_guard::GuardedAlloc = alloc_guard::GuardedAlloc;
