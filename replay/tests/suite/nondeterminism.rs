//! Non-determinism.
