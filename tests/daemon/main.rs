//! The daemon end to end, as a separate process, by theme. Each theme is a module; they share
//! [`harness`] (and the fixtures of `tests/common`).

#[path = "../common/mod.rs"]
mod common;
mod harness;

mod abuse;
mod admin;
mod crashes;
mod network;
mod operation;
mod series;
mod supervision;
mod tls;
