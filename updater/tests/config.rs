//! Configuration drop-ins: systemd override semantics, merge order, validation, and an error
//! naming file and key for each kind of bad input.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::fs;
use std::path::{Path, PathBuf};

use basalt_manifest::chrono::{FixedOffset, NaiveTime, Weekday};
use basalt_updater::config::{
    self, BootBackend, ConfigError, MetricsListen, RebootStrategy, RepositoryLocation,
};

struct Dirs {
    _tmp: tempfile::TempDir,
    dirs: Vec<PathBuf>,
}

impl Dirs {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = config::default_dirs(Some(tmp.path()));
        for d in &dirs {
            fs::create_dir_all(d).unwrap();
        }
        Dirs { _tmp: tmp, dirs }
    }

    /// 0 = /usr/lib, 1 = /etc, 2 = /run.
    fn write(&self, level: usize, name: &str, text: &str) -> PathBuf {
        let p = self.dirs[level].join(name);
        fs::write(&p, text).unwrap();
        p
    }

    fn load(&self) -> Result<config::Settings, ConfigError> {
        config::load(&self.dirs)
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

#[test]
fn no_files_gives_the_built_in_defaults() {
    let d = Dirs::new();
    let s = d.load().unwrap();
    assert_eq!(s.repository, None);
    assert_eq!(s.check.interval_secs, 3600);
    assert_eq!(s.check.jitter_secs, 300);
    assert!(s.update.auto_apply && s.update.auto_download);
    assert_eq!(s.update.tries, 3);
    assert_eq!(s.reboot, RebootStrategy::Immediate);
    assert_eq!(s.health.deadline_secs, 300);
    assert!(s.health.boot_complete);
    assert_eq!(s.boot.backend, BootBackend::Bls);
    assert_eq!(
        s.metrics,
        MetricsListen::Tcp("127.0.0.1:9259".parse().unwrap())
    );
}

#[test]
fn the_shipped_defaults_file_equals_the_built_in_defaults() {
    let d = Dirs::new();
    let shipped = fs::read_to_string(repo_root().join("dist/updater.d/00-defaults.toml")).unwrap();
    d.write(0, "00-defaults.toml", &shipped);
    let with_file = d.load().unwrap();
    let empty = Dirs::new().load().unwrap();
    assert_eq!(with_file.files.len(), 1);
    assert_eq!(
        config::Settings {
            files: Vec::new(),
            ..with_file
        },
        empty,
        "dist/updater.d/00-defaults.toml and the code disagree"
    );
}

#[test]
fn later_directories_replace_same_names_and_lexical_order_applies() {
    let d = Dirs::new();
    d.write(
        0,
        "00-defaults.toml",
        "[check]\ninterval_secs = 600\njitter_secs = 10\n",
    );
    d.write(
        0,
        "50-vendor.toml",
        "[repository]\nurl = \"https://vendor.example/repo\"\nchannel = \"beta\"\n",
    );
    // /etc replaces /usr/lib's 50-vendor.toml entirely: its channel is gone.
    d.write(1, "50-vendor.toml", "[repository]\nurl = \"/srv/repo\"\n");
    // 60 applies after 50 (lexical), whatever the directory.
    d.write(0, "60-late.toml", "[update]\ntries = 5\n");
    d.write(
        2,
        "55-runtime.toml",
        "[update]\ntries = 2\nauto_apply = false\n",
    );
    let s = d.load().unwrap();
    let r = s.repository.unwrap();
    assert_eq!(r.location, RepositoryLocation::Folder("/srv/repo".into()));
    assert_eq!(r.channel, "stable");
    assert_eq!(s.check.interval_secs, 600);
    assert_eq!(s.update.tries, 5);
    assert!(!s.update.auto_apply);
    let names: Vec<_> = s
        .files
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        [
            "00-defaults.toml",
            "50-vendor.toml",
            "55-runtime.toml",
            "60-late.toml"
        ]
    );
    assert!(s.files[1].starts_with(&d.dirs[1]));
}

#[test]
fn dev_null_symlinks_and_empty_files_mask() {
    let d = Dirs::new();
    d.write(0, "10-x.toml", "[update]\ntries = 7\n");
    d.write(0, "20-y.toml", "[update]\nauto_apply = false\n");
    std::os::unix::fs::symlink("/dev/null", d.dirs[1].join("10-x.toml")).unwrap();
    d.write(2, "20-y.toml", "");
    let s = d.load().unwrap();
    assert_eq!(s.update.tries, 3);
    assert!(s.update.auto_apply);
    // Non-.toml files and hidden files are ignored.
    d.write(1, "README", "not toml at all [[[");
    d.write(1, ".30-z.toml", "garbage = [");
    d.load().unwrap();
}

#[test]
fn window_and_fleet_lock_strategies() {
    let d = Dirs::new();
    d.write(0, "10.toml", "[reboot]\nstrategy = \"window\"\n[reboot.window]\ndays = [\"sat\", \"Sunday\", \"sat\"]\nstart = \"02:30\"\nlength_minutes = 90\ntime_zone = \"+01:00\"\n");
    match d.load().unwrap().reboot {
        RebootStrategy::Window(w) => {
            assert_eq!(w.days, [Weekday::Sat, Weekday::Sun]);
            assert_eq!(w.start, NaiveTime::from_hms_opt(2, 30, 0).unwrap());
            assert_eq!(w.length_minutes, 90);
            assert_eq!(
                w.zone,
                config::Zone::Fixed(FixedOffset::east_opt(3600).unwrap())
            );
        }
        other => panic!("{other:?}"),
    }
    let d = Dirs::new();
    d.write(0, "10.toml", "[reboot]\nstrategy = \"window\"\n[reboot.window]\ndays = [\"sun\"]\nstart = \"03:00\"\nlength_minutes = 60\ntime_zone = \"Europe/Berlin\"\n");
    match d.load().expect("tzdata: apt-get install tzdata").reboot {
        RebootStrategy::Window(w) => match w.zone {
            config::Zone::Named { name, .. } => assert_eq!(name, "Europe/Berlin"),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    let d = Dirs::new();
    d.write(0, "10.toml", "[reboot]\nstrategy = \"fleet-lock\"\n[reboot.fleet_lock]\nurl = \"http://127.0.0.1:8080/\"\n");
    match d.load().unwrap().reboot {
        RebootStrategy::FleetLock(l) => {
            assert_eq!(l.group, "default");
            assert_eq!(l.id, None);
        }
        other => panic!("{other:?}"),
    }
}

/// (file text, key the error must name, words it must contain)
const BAD: &[(&str, &str, &str)] = &[
    ("[update]\ntries = 0\n", "update.tries", "outside"),
    ("[update]\ntries = 16\n", "update.tries", "outside"),
    ("[update]\nauto_download = false\n", "update.auto_download", "auto_apply"),
    ("[update]\nauto_download = false\nauto_apply = true\n", "update.auto_apply", "auto_download"),
    ("[check]\ninterval_secs = 10\n", "check.interval_secs", "outside"),
    ("[check]\ninterval_secs = 600\njitter_secs = 601\n", "check.jitter_secs", "larger"),
    ("[check]\ninitial_delay_secs = 100000\n", "check.initial_delay_secs", "day"),
    ("[repository]\nurl = \"ftp://x/y\"\n", "repository.url", "expected"),
    ("[repository]\nurl = \"file://relative\"\n", "repository.url", "absolute"),
    ("[repository]\nurl = \"https://\"\n", "repository.url", "no host"),
    ("[repository]\nurl = \"https://a b\"\n", "repository.url", "not a URL"),
    ("[repository]\nurl = \"/r\"\nchannel = \"Stable!\"\n", "repository.channel", "lower-case"),
    ("[repository]\nurl = \"/r\"\nca_file = \"ca.pem\"\n", "repository.ca_file", "absolute"),
    ("[reboot]\nstrategy = \"sometimes\"\n", "reboot.strategy", "expected"),
    ("[reboot]\nstrategy = \"window\"\n[reboot.window]\ndays = []\nstart = \"02:00\"\nlength_minutes = 5\ntime_zone = \"UTC\"\n", "reboot.window.days", "no day"),
    ("[reboot]\nstrategy = \"window\"\n[reboot.window]\ndays = [\"funday\"]\nstart = \"02:00\"\nlength_minutes = 5\ntime_zone = \"UTC\"\n", "reboot.window.days", "weekday"),
    ("[reboot]\nstrategy = \"window\"\n[reboot.window]\ndays = [\"mon\"]\nstart = \"25:00\"\nlength_minutes = 5\ntime_zone = \"UTC\"\n", "reboot.window.start", "HH:MM"),
    ("[reboot]\nstrategy = \"window\"\n[reboot.window]\ndays = [\"mon\"]\nstart = \"02:00\"\nlength_minutes = 0\ntime_zone = \"UTC\"\n", "reboot.window.length_minutes", "outside"),
    ("[reboot]\nstrategy = \"window\"\n[reboot.window]\ndays = [\"mon\"]\nstart = \"02:00\"\nlength_minutes = 5\ntime_zone = \"Europe/Atlantis\"\n", "reboot.window.time_zone", "reading /usr/share/zoneinfo/Europe/Atlantis"),
    ("[reboot]\nstrategy = \"window\"\n[reboot.window]\ndays = [\"mon\"]\nstart = \"02:00\"\nlength_minutes = 5\ntime_zone = \"../../etc/passwd\"\n", "reboot.window.time_zone", "not a time zone"),
    ("[reboot]\nstrategy = \"window\"\n[reboot.window]\ndays = [\"mon\"]\nstart = \"02:00\"\nlength_minutes = 5\ntime_zone = \"/etc/localtime\"\n", "reboot.window.time_zone", "not a time zone"),
    ("[reboot]\nstrategy = \"window\"\n[reboot.window]\ndays = [\"mon\"]\nstart = \"02:00\"\nlength_minutes = 5\ntime_zone = \"Europe\"\n", "reboot.window.time_zone", "Europe"),
    ("[reboot]\nstrategy = \"window\"\n[reboot.window]\ndays = [\"mon\"]\nstart = \"02:00\"\nlength_minutes = 5\ntime_zone = \"+15:00\"\n", "reboot.window.time_zone", "range"),
    ("[reboot]\nstrategy = \"window\"\n[reboot.window]\ndays = [\"mon\"]\nstart = \"02:00\"\nlength_minutes = 5\n", "reboot.window.time_zone", "required"),
    ("[reboot]\nstrategy = \"fleet-lock\"\n", "reboot.fleet_lock.url", "required"),
    ("[reboot]\nstrategy = \"fleet-lock\"\n[reboot.fleet_lock]\nurl = \"lock:8080\"\n", "reboot.fleet_lock.url", "http"),
    ("[reboot]\nstrategy = \"fleet-lock\"\n[reboot.fleet_lock]\nurl = \"http://l\"\ngroup = \"A B\"\n", "reboot.fleet_lock.group", "lower-case"),
    ("[reboot]\nstrategy = \"fleet-lock\"\n[reboot.fleet_lock]\nurl = \"http://l\"\nid = \"\"\n", "reboot.fleet_lock.id", "printable"),
    ("[health]\ndeadline_secs = 5\n", "health.deadline_secs", "outside"),
    ("[health]\ninterval_secs = 0\n", "health.interval_secs", "1 ..="),
    ("[health]\nunits = [\"containerd\"]\n", "health.units", "unit name"),
    ("[health]\nunits = [\"a;b.service\"]\n", "health.units", "unit name"),
    ("[health]\ncommands = [[\"true\"]]\n", "health.commands", "absolute"),
    ("[health]\ncommands = [[]]\n", "health.commands", "absolute"),
    ("[health]\nhttp = [\"localhost/healthz\"]\n", "health.http", "http"),
    ("[boot]\nbackend = \"grub\"\n", "boot.backend", "gptprio"),
    ("[boot]\ndisk = \"vda\"\n", "boot.disk", "absolute"),
    ("[metrics]\nlisten = \"0.0.0.0:9259\"\n", "metrics.listen", "loopback"),
    ("[metrics]\nlisten = \"unix:relative.sock\"\n", "metrics.listen", "absolute"),
    ("[metrics]\nlisten = \"9259\"\n", "metrics.listen", "expected"),
];

#[test]
fn each_bad_value_is_refused_naming_file_and_key() {
    for (text, key, words) in BAD {
        let d = Dirs::new();
        d.write(0, "00-defaults.toml", "[update]\ntries = 3\n");
        let path = d.write(1, "50-admin.toml", text);
        let e = d.load().expect_err(text).to_string();
        assert!(e.contains(key), "{text:?}: {e}");
        assert!(e.contains(words), "{text:?}: {e}");
        if !e.contains("required") {
            assert!(
                e.contains(&path.display().to_string()),
                "{text:?} must name the file: {e}"
            );
        }
    }
}

#[test]
fn unknown_keys_tables_and_wrong_types_are_refused_with_the_file() {
    for (text, words) in [
        ("[update]\ntry = 3\n", "try"),
        ("[updates]\ntries = 3\n", "updates"),
        ("[update]\ntries = \"3\"\n", "tries"),
        ("[update]\ntries = -1\n", "tries"),
        ("[reboot.window]\nday = [\"mon\"]\n", "day"),
        ("top = 1\n", "top"),
        ("[update\n", "update"),
        ("[update]\ntries = 3\ntries = 4\n", "tries"),
    ] {
        let d = Dirs::new();
        let path = d.write(2, "90-x.toml", text);
        let e = d.load().expect_err(text);
        assert!(matches!(e, ConfigError::Parse { .. }), "{text:?}: {e:?}");
        let msg = e.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(words), "{text:?}: {msg}");
    }
}

#[test]
fn oversized_and_unreadable_files_are_refused() {
    let d = Dirs::new();
    let p = d.write(1, "99-big.toml", &format!("# {}\n", "x".repeat(70_000)));
    let e = d.load().unwrap_err();
    assert!(matches!(e, ConfigError::TooLarge { .. }), "{e:?}");
    assert!(e.to_string().contains(&p.display().to_string()));
    fs::remove_file(&p).unwrap();
    // A directory named like a drop-in.
    fs::create_dir(d.dirs[1].join("98-dir.toml")).unwrap();
    let e = d.load().unwrap_err();
    assert!(e.to_string().contains("98-dir.toml"), "{e}");
}

#[test]
fn a_later_file_fixes_an_earlier_bad_value() {
    // Validation runs after the merge: an override may repair a vendor value.
    let d = Dirs::new();
    d.write(0, "10.toml", "[update]\ntries = 99\n");
    d.write(1, "20.toml", "[update]\ntries = 4\n");
    assert_eq!(d.load().unwrap().update.tries, 4);
}
