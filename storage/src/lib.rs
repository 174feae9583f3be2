//! Durable storage of flowai.
