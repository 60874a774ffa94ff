//! `basalt-rollout`: the fleet side of Basalt. A server that node agents check in to and that
//! operators drive to roll a new node image across a pool (`pool upgrade --node-image-only`),
//! in waves, within max-unavailable / max-surge, maintenance windows, soak times, floors and
//! pins, halting by itself when upgraded nodes fail to come back healthy; it also speaks
//! FleetLock, so other agents share the same reboot slots.
//!
//! Owns: the rollout rules ([`policy`], pure functions of plan, fleet state, `now` and node
//! seeds), storage ([`store`]: SQLite by default, PostgreSQL for replicas, versioned
//! migrations), credentials ([`auth`]), the request logic ([`service`]), the HTTP server
//! ([`server`]: node protocol, FleetLock, operator API, the release repository with `Range`,
//! Prometheus metrics, the status page) and the operator CLI's client ([`client`]).
//! Does not own: the wire documents (`basalt-rollout-wire`, shared with the node agent, which
//! this crate never links), release signing (the server holds no signing key; it verifies
//! what it is given against the trust root with `basalt-manifest`), nor anything on a node.
//!
//! # Trust
//!
//! The server directs, it cannot forge: a release enters a channel only if it verifies
//! against the trusted keys, and a node verifies the envelope it is offered again, against
//! its own trust root and its own sequence and downgrade checks. A compromised server can
//! delay updates or stop a rollout; it cannot make a node install unsigned bytes.

pub mod api;
pub mod auth;
pub mod client;
pub mod clock;
pub mod error;
pub mod last_seen;
pub mod metrics;
pub mod policy;
pub mod server;
pub mod service;
pub mod sim;
pub mod store;
pub mod window;

pub use error::{Error, Result};
