//! keyturn vault backend (in progress).
