//! Placeholder: filled in by the moto backend work.
