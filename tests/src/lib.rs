//! Black-box integration tests for dedupstore live in `tests/`.
