//! The FleetLock client: the reboot-coordination protocol Zincati speaks (coreos/zincati
//! `docs/development/fleetlock/protocol.md`), so an existing lock server (e.g. airlock, or the
//! Kubernetes-backed ones) limits how many Basalt nodes reboot at once.
//!
//! - before rebooting into a staged update: `POST <base>/v1/pre-reboot` (take a slot of the
//!   group's semaphore); only a `200` lets the node reboot;
//! - once the new boot is committed (or rolled back) and the node is back in service:
//!   `POST <base>/v1/steady-state` (release the slot); repeated until it succeeds.
//!
//! Both with the header `fleet-lock-protocol: true` and the body
//! `{"client_params":{"id":"<node id>","group":"<group>"}}`. A refusal's body is
//! `{"kind":"…","value":"…"}`, reported verbatim.
//!
//! The node id defaults to an application-specific id derived from `/etc/machine-id` (the
//! way `sd_id128_get_machine_app_specific(3)` does: HMAC-SHA256 keyed by the machine id over
//! an application id, truncated to 128 bits, UUID v4 bits set), so the lock server never sees
//! the machine id itself.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::FleetLockSettings;
use crate::httpc::{self, HttpError};

/// Basalt's application id for the node id (fixed; changing it changes every node's id).
pub const APP_ID: [u8; 16] = [
    0x6b, 0x1d, 0x2c, 0x9e, 0x41, 0x57, 0x4f, 0x0a, 0x93, 0x8e, 0x2b, 0x71, 0xc4, 0x05, 0xd6, 0x3f,
];

/// A request's timeout.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Why a lock operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetLockError {
    #[error("fleet-lock {step}: {source}")]
    Http {
        step: &'static str,
        #[source]
        source: HttpError,
    },
    /// The server answered, but not with 200.
    #[error("fleet-lock {step} refused by {url}: HTTP {status}{}", detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused {
        step: &'static str,
        url: String,
        status: u16,
        detail: Option<String>,
    },
    #[error("reading the machine id {path}: {detail}")]
    MachineId { path: String, detail: String },
}

#[derive(Debug, Serialize)]
struct Body<'a> {
    client_params: ClientParams<'a>,
}

#[derive(Debug, Serialize)]
struct ClientParams<'a> {
    id: &'a str,
    group: &'a str,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    kind: Option<String>,
    value: Option<String>,
}

/// The request body (also used by tests' lock servers to check what they got).
pub fn body(id: &str, group: &str) -> Vec<u8> {
    serde_json::to_vec(&Body {
        client_params: ClientParams { id, group },
    })
    .unwrap_or_default()
}

/// The app-specific node id from the machine id (32 lower-case hex digits, as `machine-id`).
pub fn node_id(machine_id: &str) -> Result<String, String> {
    let text = machine_id.trim();
    let raw = hex::decode(text).map_err(|e| format!("not hex: {e}"))?;
    if raw.len() != 16 {
        return Err(format!("{} bytes, expected 16", raw.len()));
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &raw);
    let tag = ring::hmac::sign(&key, &APP_ID);
    let mut id = [0u8; 16];
    id.copy_from_slice(&tag.as_ref()[..16]);
    // UUID version 4, variant 1 (as systemd does).
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    Ok(hex::encode(id))
}

/// A client for one lock server and group.
#[derive(Debug, Clone)]
pub struct FleetLock {
    base: String,
    group: String,
    id: String,
}

impl FleetLock {
    /// From the settings; the id from the settings or from `machine_id_path`.
    pub fn new(
        settings: &FleetLockSettings,
        machine_id_path: &str,
    ) -> Result<Self, FleetLockError> {
        let id = match &settings.id {
            Some(id) => id.clone(),
            None => {
                let text = std::fs::read_to_string(machine_id_path).map_err(|e| {
                    FleetLockError::MachineId {
                        path: machine_id_path.to_owned(),
                        detail: e.to_string(),
                    }
                })?;
                node_id(&text).map_err(|detail| FleetLockError::MachineId {
                    path: machine_id_path.to_owned(),
                    detail,
                })?
            }
        };
        Ok(Self {
            base: settings.url.trim_end_matches('/').to_owned(),
            group: settings.group.clone(),
            id,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Take a reboot slot. `Ok` only on HTTP 200.
    pub async fn pre_reboot(&self) -> Result<(), FleetLockError> {
        self.post("pre-reboot").await
    }

    /// Release the slot this node holds (idempotent on the server).
    pub async fn steady_state(&self) -> Result<(), FleetLockError> {
        self.post("steady-state").await
    }

    async fn post(&self, step: &'static str) -> Result<(), FleetLockError> {
        let url = format!("{}/v1/{step}", self.base);
        let resp = httpc::request(
            hyper::Method::POST,
            &url,
            &[("fleet-lock-protocol", "true")],
            Some(("application/json", body(&self.id, &self.group))),
            TIMEOUT,
        )
        .await
        .map_err(|source| FleetLockError::Http { step, source })?;
        if resp.status == 200 {
            tracing::info!(step, group = %self.group, "fleet-lock {step} granted");
            return Ok(());
        }
        let detail = serde_json::from_slice::<ErrorBody>(&resp.body)
            .ok()
            .map(|b| {
                format!(
                    "{}: {}",
                    b.kind.unwrap_or_default(),
                    b.value.unwrap_or_default()
                )
            });
        Err(FleetLockError::Refused {
            step,
            url,
            status: resp.status,
            detail,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_is_stable_uuid4_and_hides_the_machine_id() {
        let mid = "0123456789abcdef0123456789abcdef\n";
        let a = node_id(mid).unwrap();
        assert_eq!(a, node_id(mid).unwrap());
        assert_eq!(a.len(), 32);
        assert_ne!(a, mid.trim());
        assert_eq!(&a[12..13], "4", "{a}");
        assert!("89ab".contains(&a[16..17]), "{a}");
        let b = node_id("fedcba9876543210fedcba9876543210").unwrap();
        assert_ne!(a, b);
        assert!(node_id("xyz").is_err());
        assert!(node_id("0123").is_err());
    }

    #[test]
    fn body_is_the_protocol_shape() {
        let v: serde_json::Value = serde_json::from_slice(&body("n1", "workers")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"client_params": {"id": "n1", "group": "workers"}})
        );
    }
}
