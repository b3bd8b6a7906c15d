//! keyturn kms backend (in progress).
