//! Placeholder: filled in by the openbao backend work.
