//! Release verification: signatures against the trust root, then the node's policy.
//!
//! Order of checks (the first failure is reported): size cap, envelope JSON/base64, payload
//! type, signatures and threshold, trust root expiry, manifest schema, OS / architecture /
//! channel, expiry, issue time, sequence, version.
//!
//! Decisions:
//! - expiry is strict (`now >= expires_at` refuses, no skew); only the issue time gets
//!   `max_clock_skew`, to tolerate a signer clock slightly ahead of the node's;
//! - the sequence must be strictly above the highest already seen: an equal sequence is a
//!   replay, a lower one a rollback or freeze;
//! - an equal version (semver precedence, build metadata ignored) with a higher sequence is
//!   accepted and reported as [`VersionChange::Same`]: that is a re-signed release (e.g. a
//!   new expiry); the updater decides whether there is anything to install;
//! - a lower version is refused unless `allow_downgrade`; an allowed downgrade is logged with
//!   `tracing::warn!` and reported in [`VerifiedRelease::downgrade_override`].

use std::cmp::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use semver::Version;

use crate::error::{Document, Error, Result};
use crate::keys::KeyId;
use crate::manifest::Manifest;
use crate::trust::TrustRoot;

/// DSSE payload type of release manifest envelopes.
pub const RELEASE_PAYLOAD_TYPE: &str = "application/vnd.basalt.release.v1+json";

/// Release envelopes larger than this (1 MiB) are refused before parsing. A manifest with a
/// handful of artifacts is a few KiB; the cap leaves room for many sysexts.
pub const MAX_RELEASE_BYTES: usize = 1024 * 1024;

/// Default allowed clock skew for the issue time: 5 minutes.
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// What a node accepts. `None` for an expectation means "not checked": the updater always sets
/// `os`, `arch` and `channel`; the build-side `basalt manifest verify` may leave them out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The current time (a parameter, so tests and offline checks control it).
    pub now: DateTime<Utc>,
    /// The installed OS version, if any.
    pub installed_version: Option<Version>,
    /// The highest manifest sequence already accepted, if any.
    pub highest_sequence_seen: Option<u64>,
    /// Expected OS name.
    pub os: Option<String>,
    /// Expected architecture.
    pub arch: Option<String>,
    /// Expected channel.
    pub channel: Option<String>,
    /// Tolerance for an issue time in the future.
    pub max_clock_skew: Duration,
    /// Explicit operator override to accept an older version.
    pub allow_downgrade: bool,
}

impl Policy {
    /// A policy that checks signatures, times and nothing node-specific.
    pub fn new(now: DateTime<Utc>) -> Self {
        Self {
            now,
            installed_version: None,
            highest_sequence_seen: None,
            os: None,
            arch: None,
            channel: None,
            max_clock_skew: DEFAULT_MAX_CLOCK_SKEW,
            allow_downgrade: false,
        }
    }
}

/// How the release's version relates to the installed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionChange {
    /// No installed version was given.
    Unknown,
    /// Newer than installed.
    Upgrade,
    /// Same version (re-signed release).
    Same,
    /// Older than installed, accepted because of the explicit override.
    Downgrade,
}

/// A release that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRelease {
    /// The manifest.
    pub manifest: Manifest,
    /// The distinct keys whose signatures counted, sorted.
    pub signed_by: Vec<KeyId>,
    /// Generation of the trust root that verified it.
    pub trust_generation: u64,
    /// Relation to the installed version.
    pub version_change: VersionChange,
    /// True when the release is older than installed and `allow_downgrade` let it through.
    pub downgrade_override: bool,
}

fn expect_field(
    expected: &Option<String>,
    found: &str,
    err: fn(String, String) -> Error,
) -> Result<()> {
    match expected {
        Some(expected) if expected != found => Err(err(expected.clone(), found.to_owned())),
        _ => Ok(()),
    }
}

/// Verifies a signed release envelope against `root` and `policy`.
pub fn verify_release(bytes: &[u8], root: &TrustRoot, policy: &Policy) -> Result<VerifiedRelease> {
    let (payload, signed_by) = root.verify_envelope(
        bytes,
        MAX_RELEASE_BYTES,
        RELEASE_PAYLOAD_TYPE,
        Document::Release,
    )?;
    root.check_not_expired(policy.now)?;
    let manifest = Manifest::from_json(&payload)?;

    expect_field(&policy.os, &manifest.os, |expected, found| Error::WrongOs {
        expected,
        found,
    })?;
    expect_field(&policy.arch, &manifest.arch, |expected, found| {
        Error::WrongArch { expected, found }
    })?;
    expect_field(&policy.channel, &manifest.channel, |expected, found| {
        Error::WrongChannel { expected, found }
    })?;

    let now = policy.now;
    if now >= manifest.expires_at {
        return Err(Error::Expired {
            version: manifest.version.clone(),
            sequence: manifest.sequence,
            expires_at: manifest.expires_at,
            now,
        });
    }
    // A skew too large for chrono saturates to "any issue time is fine".
    let latest_issue = chrono::TimeDelta::from_std(policy.max_clock_skew)
        .ok()
        .and_then(|skew| now.checked_add_signed(skew));
    if latest_issue.is_some_and(|latest| manifest.issued_at > latest) {
        return Err(Error::IssuedInFuture {
            version: manifest.version.clone(),
            issued_at: manifest.issued_at,
            now,
            max_skew_secs: policy.max_clock_skew.as_secs(),
        });
    }
    if let Some(highest_seen) = policy.highest_sequence_seen {
        if manifest.sequence <= highest_seen {
            return Err(Error::SequenceNotNewer {
                version: manifest.version.clone(),
                sequence: manifest.sequence,
                highest_seen,
            });
        }
    }

    let (version_change, downgrade_override) = match &policy.installed_version {
        None => (VersionChange::Unknown, false),
        Some(installed) => match manifest.version.cmp_precedence(installed) {
            Ordering::Greater => (VersionChange::Upgrade, false),
            Ordering::Equal => (VersionChange::Same, false),
            Ordering::Less if policy.allow_downgrade => {
                tracing::warn!(
                    installed = %installed,
                    offered = %manifest.version,
                    sequence = manifest.sequence,
                    "downgrade accepted because of the explicit override"
                );
                (VersionChange::Downgrade, true)
            }
            Ordering::Less => {
                return Err(Error::Downgrade {
                    installed: installed.clone(),
                    offered: manifest.version.clone(),
                })
            }
        },
    };

    Ok(VerifiedRelease {
        manifest,
        signed_by,
        trust_generation: root.generation(),
        version_change,
        downgrade_override,
    })
}
