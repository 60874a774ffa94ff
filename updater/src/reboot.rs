//! Rebooting the node, behind a trait so tests see the request instead of a reboot.
//!
//! Production: [`SystemdReboot`] asks systemd over the system bus to start `reboot.target`
//! with mode `replace-irreversibly` (what `systemctl reboot` does): an orderly shutdown that
//! cannot be cancelled by a later job. The caller records the reason (status file, journal)
//! *before* asking.

use std::future::Future;
use std::pin::Pin;

/// A boxed future (the traits here are used as trait objects).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a reboot request failed.
#[derive(Debug, thiserror::Error)]
#[error("asking systemd to reboot: {0}")]
pub struct RebootError(pub String);

/// Something that reboots the node.
pub trait Reboot: Send + Sync {
    /// Ask for a reboot; returns once the request was accepted (the system then goes down).
    fn reboot<'a>(&'a self, reason: &'a str) -> BoxFuture<'a, Result<(), RebootError>>;
}

/// `org.freedesktop.systemd1.Manager.StartUnit("reboot.target", "replace-irreversibly")`.
#[derive(Debug, Clone)]
pub struct SystemdReboot {
    conn: zbus::Connection,
}

impl SystemdReboot {
    /// On a connection to the system bus (or a test bus with a systemd stand-in).
    pub fn new(conn: zbus::Connection) -> Self {
        Self { conn }
    }
}

impl Reboot for SystemdReboot {
    fn reboot<'a>(&'a self, reason: &'a str) -> BoxFuture<'a, Result<(), RebootError>> {
        Box::pin(async move {
            tracing::warn!(reason, "rebooting: {reason}");
            self.conn
                .call_method(
                    Some("org.freedesktop.systemd1"),
                    "/org/freedesktop/systemd1",
                    Some("org.freedesktop.systemd1.Manager"),
                    "StartUnit",
                    &("reboot.target", "replace-irreversibly"),
                )
                .await
                .map(|_| ())
                .map_err(|e| RebootError(e.to_string()))
        })
    }
}
