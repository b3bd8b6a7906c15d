//! Placeholder: filled in by the systemd work.
