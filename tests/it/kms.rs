//! Placeholder: filled in by the kms work.
