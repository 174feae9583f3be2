//! The flowai runtime.
pub mod providers;
