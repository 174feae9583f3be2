//! Inspection and replay.
