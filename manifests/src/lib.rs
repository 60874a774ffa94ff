//! Signed release manifests for Basalt.
//!
//! Owns: the release manifest schema, the DSSE signature envelope, trust roots (keys,
//! threshold, rotation chain) and the verification policy (expiry, sequence, downgrade).
//! Does not own: fetching manifests (the updater) or building artifacts (`basalt`).
