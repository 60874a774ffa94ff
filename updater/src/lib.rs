//! The Basalt update agent, as a library: everything `basalt-updated` (the on-node systemd
//! service) and `basaltctl` (its CLI) do, with time, randomness and I/O passed in so tests
//! control them. The binaries are thin wrappers.
//!
//! Owns: the update state machine and its persisted status, the fetch/apply pipeline (sources,
//! repository client, streaming install into the inactive slot, re-verification, staging), the
//! health gate, the daemon's D-Bus API and configuration. Does not own: the manifest format and
//! its verification rules (`basalt-manifest`), partitions, slots and boot entries
//! (`basalt-disk`), the verity format (`basalt-verity`), building or publishing releases
//! (`basalt`).
//!
//! [`http`] is the node's one HTTP(S) client (hyper + rustls/ring): the HTTP release source
//! (`source::http`), the FleetLock client and the HTTP health checks all use it.
//!
//! The seam between the daemon (state, D-Bus, timers) and the pipeline (disk and network I/O) is
//! the [`engine::Engine`] trait: blocking calls the daemon runs on a worker thread, one at a
//! time.

pub mod engine;
pub mod http;
pub mod source;
