//! The operator CLI client (in progress).
