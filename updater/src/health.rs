//! The health gate: after the node booted a freshly staged slot, decide whether it is good.
//!
//! The gate passes when, in one round, every check passes: systemd reached
//! `boot-complete.target` (asked over D-Bus, `org.freedesktop.systemd1`), every configured unit
//! is `active`, every configured command exits 0 (within the time left), every configured URL
//! answers 2xx. Rounds repeat every `interval` until the `deadline`; at the deadline the first
//! check that failed in the last round is the verdict. The daemon then blesses the slot
//! (`Engine::mark_good`) or marks it bad and reboots into the previous slot.
//!
//! Why the image must mask `systemd-bless-boot.service`: systemd's own unit would bless the
//! boot entry as soon as `boot-complete.target` is reached, whatever our checks say (see
//! `dist/systemd/basalt-updated.service`).

use std::time::Duration;

use tokio::time::Instant;

use crate::config::HealthSettings;
use crate::reboot::BoxFuture;

/// One check.
pub trait Probe: Send + Sync {
    /// A short, stable description (`unit containerd.service`, `command /usr/bin/x`, `http URL`).
    fn name(&self) -> String;
    /// Run once, within `budget`: `Ok` when it passes now, else why not.
    fn probe(&self, budget: Duration) -> BoxFuture<'_, Result<(), String>>;
}

/// The verdict when the gate fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateFailure {
    pub check: String,
    pub detail: String,
}

/// Run the gate: `Ok` when a round passes before `deadline`.
pub async fn run_gate(
    probes: &[Box<dyn Probe>],
    deadline: Duration,
    interval: Duration,
) -> Result<(), GateFailure> {
    let end = Instant::now() + deadline;
    let mut round = 0u32;
    loop {
        round += 1;
        let mut failed = None;
        for p in probes {
            let left = end.saturating_duration_since(Instant::now());
            let budget = left.max(Duration::from_secs(1));
            if let Err(detail) = p.probe(budget).await {
                tracing::info!(check = %p.name(), round, "health check not passing yet: {detail}");
                failed = Some(GateFailure {
                    check: p.name(),
                    detail,
                });
                break;
            }
        }
        match failed {
            None => {
                tracing::info!(round, checks = probes.len(), "health gate passed");
                return Ok(());
            }
            Some(f) if Instant::now() + interval >= end => {
                tracing::warn!(check = %f.check, "health gate failed at its deadline: {}", f.detail);
                return Err(f);
            }
            Some(_) => tokio::time::sleep(interval).await,
        }
    }
}

/// A systemd unit that must be `active` (`boot-complete.target` included), asked over D-Bus.
#[derive(Debug, Clone)]
pub struct UnitActive {
    pub conn: zbus::Connection,
    pub unit: String,
}

impl Probe for UnitActive {
    fn name(&self) -> String {
        format!("unit {}", self.unit)
    }

    fn probe(&self, budget: Duration) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let ask = async {
                let reply = self
                    .conn
                    .call_method(
                        Some("org.freedesktop.systemd1"),
                        "/org/freedesktop/systemd1",
                        Some("org.freedesktop.systemd1.Manager"),
                        "LoadUnit",
                        &(self.unit.as_str(),),
                    )
                    .await
                    .map_err(|e| format!("systemd LoadUnit: {e}"))?;
                let path: zbus::zvariant::OwnedObjectPath = reply
                    .body()
                    .deserialize()
                    .map_err(|e| format!("systemd LoadUnit reply: {e}"))?;
                let reply = self
                    .conn
                    .call_method(
                        Some("org.freedesktop.systemd1"),
                        path.as_str(),
                        Some("org.freedesktop.DBus.Properties"),
                        "Get",
                        &("org.freedesktop.systemd1.Unit", "ActiveState"),
                    )
                    .await
                    .map_err(|e| format!("reading ActiveState: {e}"))?;
                let value: zbus::zvariant::OwnedValue = reply
                    .body()
                    .deserialize()
                    .map_err(|e| format!("ActiveState reply: {e}"))?;
                let state: String = value
                    .try_into()
                    .map_err(|e: zbus::zvariant::Error| format!("ActiveState type: {e}"))?;
                if state == "active" {
                    Ok(())
                } else {
                    Err(format!("{} is {state}", self.unit))
                }
            };
            match tokio::time::timeout(budget, ask).await {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "systemd did not answer within {} s",
                    budget.as_secs()
                )),
            }
        })
    }
}

/// A command that must exit 0. Killed when its time is up.
#[derive(Debug, Clone)]
pub struct CommandSucceeds {
    pub argv: Vec<String>,
}

impl Probe for CommandSucceeds {
    fn name(&self) -> String {
        format!("command {}", self.argv.join(" "))
    }

    fn probe(&self, budget: Duration) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let Some((program, args)) = self.argv.split_first() else {
                return Err("empty command".to_owned());
            };
            let child = tokio::process::Command::new(program)
                .args(args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("starting {program}: {e}"))?;
            match tokio::time::timeout(budget, child.wait_with_output()).await {
                Err(_) => Err(format!(
                    "still running after {} s (killed)",
                    budget.as_secs()
                )),
                Ok(Err(e)) => Err(format!("waiting for {program}: {e}")),
                Ok(Ok(out)) if out.status.success() => Ok(()),
                Ok(Ok(out)) => {
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    let tail: String = stderr
                        .trim()
                        .chars()
                        .rev()
                        .take(200)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect();
                    Err(format!(
                        "{}{}",
                        out.status,
                        if tail.is_empty() {
                            String::new()
                        } else {
                            format!(": {tail}")
                        }
                    ))
                }
            }
        })
    }
}

/// A URL that must answer 2xx to a GET.
#[derive(Debug, Clone)]
pub struct HttpAnswers {
    pub url: String,
}

impl Probe for HttpAnswers {
    fn name(&self) -> String {
        format!("http {}", self.url)
    }

    fn probe(&self, budget: Duration) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let resp = crate::httpc::request(
                hyper::Method::GET,
                &self.url,
                &[],
                None,
                budget.min(Duration::from_secs(30)),
            )
            .await
            .map_err(|e| e.to_string())?;
            if (200..300).contains(&resp.status) {
                Ok(())
            } else {
                Err(format!("HTTP {}", resp.status))
            }
        })
    }
}

/// The probes the settings ask for, `boot-complete.target` first.
pub fn probes(settings: &HealthSettings, systemd: &zbus::Connection) -> Vec<Box<dyn Probe>> {
    let mut out: Vec<Box<dyn Probe>> = Vec::new();
    if settings.boot_complete {
        out.push(Box::new(UnitActive {
            conn: systemd.clone(),
            unit: "boot-complete.target".into(),
        }));
    }
    for u in &settings.units {
        out.push(Box::new(UnitActive {
            conn: systemd.clone(),
            unit: u.clone(),
        }));
    }
    for argv in &settings.commands {
        out.push(Box::new(CommandSucceeds { argv: argv.clone() }));
    }
    for url in &settings.http {
        out.push(Box::new(HttpAnswers { url: url.clone() }));
    }
    out
}
