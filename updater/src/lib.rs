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
//! time. [`pipeline::NodeEngine`] is the production engine (trust walk, channel head checks,
//! resumable streaming into the inactive slot, re-verification, staging); releases come from a
//! [`source::Source`] (a folder, or HTTP(S)).
//!
//! Daemon modules, from the inside out: [`machine`] (pure state machine) → [`status`] (its
//! persisted form) → [`config`] (drop-ins → settings) → [`schedule`] (check times with jitter,
//! maintenance windows) → [`health`], [`reboot`], [`fleetlock`], [`metrics`], [`notify`],
//! [`bootfail`] (the daemon's I/O edges, each behind a trait or a plain function) → [`daemon`]
//! (the owning task and the engine worker) → [`dbus`] (`org.basalt.Updater1`, server and client
//! proxy). [`agent`] assembles the production parts (engine configuration, source, HTTP
//! clients) from the settings and the node's own files; `basalt-updated` is `agent` + `dbus`.
//! [`memory`] is an in-memory engine for tests.

pub mod agent;
pub mod bootfail;
pub mod config;
pub mod daemon;
pub mod dbus;
pub mod engine;
pub mod envfile;
pub mod extensions;
pub mod fleet;
pub mod fleetlock;
pub mod health;
pub mod http;
pub mod machine;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod pipeline;
pub mod reboot;
pub mod schedule;
pub mod source;
pub mod status;
