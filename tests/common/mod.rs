//! Shared test helpers: the devices to run each test body on, and tiny random models built in code.
#![allow(dead_code)]

use candle_core::Device;

/// CPU always; CUDA too when built with `--features cuda` and a GPU is present.
pub fn devices() -> Vec<Device> {
    let mut d = vec![Device::Cpu];
    if let Ok(c) = Device::new_cuda(0) {
        d.push(c);
    }
    d
}
