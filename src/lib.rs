//! ctsentry: the software of an edge inference box in a CT scanner room.
//!
//! # Layout
//!
//! Layers, lowest first; a module imports only from layers below its own (and from modules
//! listed before it in its own layer). `scripts/layers.py` measures this on every CI run: no
//! import circles, no upward imports, no source file over 800 lines.
//!
//! 1. Foundations: [`durable`] (atomic files, moves, the state folder's lock and names, the
//!    clock), [`failpoint`] (fault injection for tests), [`alloc_guard`], [`logging`].
//! 2. [`ingest`]: DICOM and NIfTI files to axial CT slices in Hounsfield units, ordered in series.
//! 3. [`config`]: the one TOML file an admin edits: raw, diagnosed, validated, located, split for
//!    reload.
//! 4. [`preprocess`]: HU to the classifier's input tensor, lung segmentation (CPU; CUDA kernels
//!    behind the `cuda` feature).
//! 5. [`model`] (the bundle: ONNX + manifest, validated), [`engine`] (inference engines behind
//!    one trait: tract, OpenVINO, onnxruntime, TensorRT).
//! 6. [`decide`] (the slice threshold and the series rule), [`drift`] (recent series against a
//!    reference), [`report`] (PNG pictures).
//! 7. [`score`]: a series from slices to a verdict, as every command and the daemon score it.
//! 8. Views and peripherals: [`output`] (typed JSON lines and result files), [`alert`] (serial
//!    line, LEDs), [`net`] (DICOM receiver and PACS export), [`inspect`], [`prep`], [`status`]
//!    (the daemon's snapshot), [`page`] (the admin's page), [`metrics`] (Prometheus text,
//!    `/healthz`, the page's server).
//! 9. Commands: [`eval`] (the reference work's evaluation), [`commission`] (a site checks the box
//!    on its own studies against the manifest's claims), [`bench`](mod@bench), [`doctor`].
//! 10. [`daemon`]: the unattended control loop that composes all of the above.
//!
//! `src/main.rs` is the CLI only: it parses arguments, calls these, and prints.

#![warn(missing_docs)]

pub mod alert;
pub mod alloc_guard;
pub mod bench;
pub mod commission;
pub mod config;
pub mod daemon;
pub mod decide;
pub mod doctor;
pub mod drift;
pub mod durable;
pub mod engine;
pub mod eval;
pub mod failpoint;
pub mod ingest;
pub mod inspect;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod net;
pub mod output;
pub mod page;
pub mod prep;
pub mod preprocess;
pub mod report;
pub mod score;
pub mod status;

// The allocator is the binary's choice (`src/main.rs` installs [`alloc_guard::GuardedAlloc`]);
// the library's own tests install it too.
#[cfg(test)]
#[global_allocator]
static GLOBAL: alloc_guard::GuardedAlloc = alloc_guard::GuardedAlloc;
