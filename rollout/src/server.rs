//! The HTTP server (in progress).
