//! Fork (API.md §9.4).
