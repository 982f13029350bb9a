//! The case table of `bad_inputs.rs`, by what is broken.

pub mod artifacts;
pub mod invocations;
