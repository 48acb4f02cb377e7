//! Shared harness for the black-box tests in `tests/` and the fuzz targets
//! in `fuzz/`: the reference model of the store and an operation runner.

pub mod model;
pub mod support;
