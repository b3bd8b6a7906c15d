//! Placeholder: filled in by the vault work.
