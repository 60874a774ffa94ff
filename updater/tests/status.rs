//! The status file: round trip, and every kind of bad file → a typed error, the file kept
//! aside, and a start from what the disk says.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::fs;
use std::path::Path;

use basalt_manifest::chrono::{TimeZone, Utc};
use basalt_updater::machine::{Machine, Snapshot, State};
use basalt_updater::status::{self, StatusError, StatusFile, MAX_STATUS_BYTES, STATUS_FORMAT};

fn sample() -> StatusFile {
    let s = Snapshot {
        pinned: true,
        current: Some("1.2.3".parse().unwrap()),
        last_check: Some(Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap()),
        ..Snapshot::default()
    };
    StatusFile::new(
        s,
        "0f1e",
        Some(b"envelope bytes"),
        Utc.with_ymd_and_hms(2026, 12, 2, 0, 0, 0).unwrap(),
    )
}

#[test]
fn round_trip_through_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(status::STATUS_FILE);
    assert!(
        status::load(&path).unwrap().is_none(),
        "missing = first start"
    );
    let f = sample();
    f.save(&path).unwrap();
    let back = status::load(&path).unwrap().unwrap();
    assert_eq!(back, f);
    assert_eq!(back.envelope().unwrap(), b"envelope bytes");
    assert_eq!(back.format, STATUS_FORMAT);
    // Only the file itself: no temporary left.
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
}

fn parse(bytes: &[u8]) -> Result<StatusFile, StatusError> {
    StatusFile::parse(bytes, Path::new("/var/lib/basalt/updater/status.json"))
}

#[test]
fn every_truncation_is_a_clear_error_never_a_panic() {
    let bytes = sample().to_bytes().unwrap();
    for n in 0..bytes.len() - 2 {
        let e = parse(&bytes[..n]).expect_err("a truncated file must not parse");
        assert!(matches!(e, StatusError::Corrupt { .. }), "{n}: {e:?}");
        assert!(e.to_string().contains("status.json"));
    }
}

#[test]
fn corrupt_unknown_format_unknown_fields_and_oversize_are_typed() {
    let good: serde_json::Value = serde_json::from_slice(&sample().to_bytes().unwrap()).unwrap();
    let mut newer = good.clone();
    newer["format"] = 2.into();
    let e = parse(&serde_json::to_vec(&newer).unwrap()).unwrap_err();
    assert!(
        matches!(e, StatusError::UnknownFormat { found: 2, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("format 2"), "{e}");

    let mut extra = good.clone();
    extra["machine"]["surprise"] = true.into();
    assert!(matches!(
        parse(&serde_json::to_vec(&extra).unwrap()),
        Err(StatusError::Corrupt { .. })
    ));

    let mut bad_state = good.clone();
    bad_state["machine"]["state"]["state"] = "exploding".into();
    assert!(matches!(
        parse(&serde_json::to_vec(&bad_state).unwrap()),
        Err(StatusError::Corrupt { .. })
    ));

    let mut bad_env = good.clone();
    bad_env["known_envelope"] = "%%%".into();
    let e = parse(&serde_json::to_vec(&bad_env).unwrap()).unwrap_err();
    assert!(e.to_string().contains("known_envelope"), "{e}");

    let mut no_format = good;
    no_format.as_object_mut().unwrap().remove("format");
    assert!(matches!(
        parse(&serde_json::to_vec(&no_format).unwrap()),
        Err(StatusError::Corrupt { .. })
    ));

    for junk in [
        &b"\x00\x01\x02"[..],
        b"[]",
        b"null",
        b"{\"format\": \"1\"}",
        b"\xff\xfe{}",
    ] {
        assert!(parse(junk).is_err(), "{junk:?}");
    }
    let big = vec![b' '; usize::try_from(MAX_STATUS_BYTES).unwrap() + 1];
    assert!(matches!(parse(&big), Err(StatusError::TooLarge { .. })));
}

#[test]
fn a_bad_file_is_set_aside_and_the_start_follows_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(status::STATUS_FILE);
    fs::write(&path, b"{\"format\": 1, \"machine\": {\"state\": ").unwrap();
    let e = status::load(&path).unwrap_err();
    assert!(matches!(e, StatusError::Corrupt { .. }));
    let now = Utc.with_ymd_and_hms(2026, 12, 2, 3, 4, 5).unwrap();
    let kept = status::set_aside(&path, now).unwrap();
    assert!(!path.exists());
    assert_eq!(
        fs::read(&kept).unwrap(),
        b"{\"format\": 1, \"machine\": {\"state\": "
    );
    assert!(kept
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("status.json.bad-20261202T030405"));
    // What the daemon does next: start with no snapshot (the disk decides).
    let facts = basalt_updater::daemon::boot_facts(None, None, false);
    let (m, effects) = Machine::start(None, &facts, now);
    assert_eq!(m.state(), &State::Idle);
    assert!(effects.is_empty());
    // The next load is a first start.
    assert!(status::load(&path).unwrap().is_none());
}

#[test]
fn an_unreadable_status_path_is_a_read_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(status::STATUS_FILE);
    fs::create_dir(&path).unwrap();
    let e = status::load(&path).unwrap_err();
    assert!(matches!(e, StatusError::Read { .. }), "{e:?}");
}

#[test]
fn save_into_a_missing_directory_fails_and_names_it() {
    let e = sample()
        .save(Path::new("/nonexistent-basalt/status.json"))
        .unwrap_err();
    assert!(e.to_string().contains("/nonexistent-basalt"), "{e}");
}

/// The fuzz seeds of `updater/fuzz` (status_file) are real status files of this format; they
/// are rewritten with BASALT_UPDATE_GOLDEN=1 and must always parse.
#[test]
fn the_fuzz_seeds_are_current_status_files() {
    use basalt_updater::engine::ErrorClass;
    use basalt_updater::machine::{
        envelope_digest, Failure, JobError, Operation, Outcome, Release, Target,
    };
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/status_file");
    let release = Release {
        version: "2.0.0".parse().unwrap(),
        sequence: 7,
        envelope_sha256: envelope_digest(b"envelope"),
        downgrade: false,
        node_image_only: None,
    };
    let at = Utc.with_ymd_and_hms(2026, 12, 2, 0, 0, 0).unwrap();
    let mut staged = Snapshot {
        current: Some("1.0.0".parse().unwrap()),
        known: Some(release.clone()),
        state: State::Staged {
            target: Target {
                release: release.clone(),
                slot: basalt_disk::Slot::B,
                usr_hash: envelope_digest(b"usr"),
            },
        },
        ..Snapshot::default()
    };
    staged.history.push_back(Outcome {
        at,
        kind: "cancelled".into(),
        from: None,
        to: Some("2.0.0".parse().unwrap()),
        detail: String::new(),
    });
    staged.recorded = 1;
    let failure = Failure {
        operation: Operation::Download,
        error: JobError {
            class: ErrorClass::Network,
            name: "Timeout".into(),
            message: "timed out".into(),
        },
    };
    let failed = Snapshot {
        last_error: Some(failure.clone()),
        state: State::Failed { failure },
        ..Snapshot::default()
    };
    for (name, snap) in [("staged.json", staged), ("failed.json", failed)] {
        let file = StatusFile::new(snap, "5e0c", Some(b"envelope"), at);
        let path = seeds.join(name);
        if std::env::var_os("BASALT_UPDATE_GOLDEN").is_some() {
            fs::create_dir_all(&seeds).unwrap();
            fs::write(&path, file.to_bytes().unwrap()).unwrap();
        }
        let bytes = fs::read(&path).unwrap_or_else(|e| {
            panic!("{}: {e} (BASALT_UPDATE_GOLDEN=1 writes it)", path.display())
        });
        assert_eq!(parse(&bytes).unwrap(), file, "{name} drifted");
    }
}
