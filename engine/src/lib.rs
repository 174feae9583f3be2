//! The flowai runtime.
