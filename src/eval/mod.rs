//! Evaluation protocols. Every number carries the protocol that produced it.

pub mod perplexity;
pub mod tasks;
pub mod zeroshot;
