//! Shared harness of the integration tests in `filters/tests/`.

pub mod redis;
