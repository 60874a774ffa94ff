//! Shared pieces of the daemon tests: the daemon's parts around the in-memory engine, a
//! recording reboot, switchable health probes, a fixed random source, a tiny FleetLock server.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use basalt_manifest::chrono::{DateTime, TimeZone, Utc};
use basalt_updater::config::{self, Settings};
use basalt_updater::daemon::{Clock, Parts, Paths};
use basalt_updater::health::Probe;
use basalt_updater::memory::{MemoryEngine, MemoryWorld};
use basalt_updater::metrics::Metrics;
use basalt_updater::notify::Notifier;
use basalt_updater::reboot::{BoxFuture, Reboot, RebootError};
use basalt_updater::schedule::Random;

/// Wednesday 2026-12-02 12:00 UTC.
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 2, 12, 0, 0).unwrap()
}

/// Settings from one drop-in's text, through the real loader.
pub fn settings(toml: &str) -> Settings {
    let dir = tempfile::tempdir().unwrap();
    let dirs = config::default_dirs(Some(dir.path()));
    std::fs::create_dir_all(&dirs[1]).unwrap();
    std::fs::write(dirs[1].join("50-test.toml"), toml).unwrap();
    config::load(&dirs).unwrap()
}

/// Returns the numbers given, then zeros.
pub struct FixedRandom(pub Vec<u64>);

impl Random for FixedRandom {
    fn up_to(&mut self, max: u64) -> u64 {
        if self.0.is_empty() {
            0
        } else {
            self.0.remove(0).min(max)
        }
    }
}

/// A reboot request as the test saw it: when, why, and the status file at that moment.
#[derive(Debug, Clone)]
pub struct RebootSeen {
    pub at: DateTime<Utc>,
    pub reason: String,
    pub status: String,
}

#[derive(Clone)]
pub struct RecordingReboot {
    pub seen: Arc<Mutex<Vec<RebootSeen>>>,
    pub clock: Arc<dyn Clock>,
    pub status_path: PathBuf,
}

impl Reboot for RecordingReboot {
    fn reboot<'a>(&'a self, reason: &'a str) -> BoxFuture<'a, Result<(), RebootError>> {
        Box::pin(async move {
            let status = std::fs::read_to_string(&self.status_path).unwrap_or_default();
            self.seen.lock().unwrap().push(RebootSeen {
                at: self.clock.now(),
                reason: reason.to_owned(),
                status,
            });
            Ok(())
        })
    }
}

/// A probe whose verdict the test sets.
#[derive(Clone)]
pub struct SwitchProbe {
    pub name: String,
    pub passing: Arc<AtomicBool>,
}

impl Probe for SwitchProbe {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn probe(&self, _budget: Duration) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            if self.passing.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("switched off by the test".to_owned())
            }
        })
    }
}

/// Everything a test needs to build, restart and inspect a daemon.
pub struct Rig {
    pub dir: tempfile::TempDir,
    pub world: MemoryWorld,
    pub reboots: Arc<Mutex<Vec<RebootSeen>>>,
    pub health: Arc<AtomicBool>,
    pub metrics: Metrics,
}

impl Rig {
    pub fn new(version: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("boot_id"), "boot-1\n").unwrap();
        Rig {
            dir,
            world: MemoryWorld::new(version),
            reboots: Arc::new(Mutex::new(Vec::new())),
            health: Arc::new(AtomicBool::new(true)),
            metrics: Metrics::new(),
        }
    }

    pub fn paths(&self) -> Paths {
        Paths {
            state_dir: self.dir.path().join("state"),
            boot_env: self.dir.path().join("boot.env"),
            boot_id: self.dir.path().join("boot_id"),
            machine_id: self.dir.path().join("machine-id"),
        }
    }

    pub fn status_path(&self) -> PathBuf {
        self.paths().status_file()
    }

    /// Reboot the simulated node: boot_id changes, boot.env names what came up.
    pub fn reboot_node(&self, n: u32) {
        self.world.reboot();
        std::fs::write(self.dir.path().join("boot_id"), format!("boot-{n}\n")).unwrap();
        let hash = self.world.booted_hash().unwrap();
        std::fs::write(
            self.dir.path().join("boot.env"),
            format!("BASALT_USRHASH={hash}\nBASALT_DISK=/dev/vda\n"),
        )
        .unwrap();
    }

    pub fn parts(
        &self,
        settings: Settings,
        clock: Arc<dyn Clock>,
        random: Vec<u64>,
    ) -> Parts<MemoryEngine> {
        self.parts_with(settings, clock, random, None, Notifier::default(), None)
    }

    pub fn parts_with(
        &self,
        settings: Settings,
        clock: Arc<dyn Clock>,
        random: Vec<u64>,
        fleet_lock: Option<basalt_updater::fleetlock::FleetLock>,
        notifier: Notifier,
        watchdog: Option<Duration>,
    ) -> Parts<MemoryEngine> {
        let probe = SwitchProbe {
            name: "unit test.service".into(),
            passing: self.health.clone(),
        };
        Parts {
            engine: self.world.engine(),
            settings,
            paths: self.paths(),
            clock: clock.clone(),
            random: Box::new(FixedRandom(random)),
            reboot: Arc::new(RecordingReboot {
                seen: self.reboots.clone(),
                clock,
                status_path: self.status_path(),
            }),
            probes: vec![Box::new(probe)],
            fleet_lock,
            notifier,
            metrics: self.metrics.clone(),
            watchdog,
            retry: Duration::from_millis(300),
        }
    }
}

/// One request a lock server received.
#[derive(Debug, Clone)]
pub struct LockRequest {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// A FleetLock server on 127.0.0.1: answers each `pre-reboot` with the next status of `script`
/// (then 200) and everything else with 200; records what it got. Stops when dropped (the accept loop polls a flag).
pub struct LockServer {
    pub url: String,
    pub seen: Arc<Mutex<Vec<LockRequest>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LockServer {
    pub fn start(script: Vec<u16>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut script = script;
            // Bounded: at most 10 minutes, or until dropped.
            let deadline = std::time::Instant::now() + Duration::from_secs(600);
            while !stop2.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                match listener.accept() {
                    Ok((s, _)) => {
                        if let Some(req) = serve_one(s, &mut script) {
                            seen2.lock().unwrap().push(req);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        LockServer {
            url,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    pub fn paths(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.path.clone())
            .collect()
    }
}

impl Drop for LockServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_one(s: TcpStream, script: &mut Vec<u16>) -> Option<LockRequest> {
    s.set_nonblocking(false).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len.min(65536)];
    r.read_exact(&mut body).ok()?;
    let status = if path.ends_with("pre-reboot") && !script.is_empty() {
        script.remove(0)
    } else {
        200
    };
    let answer = if status == 200 {
        String::new()
    } else {
        "{\"kind\":\"failed_lock\",\"value\":\"semaphore full\"}".to_owned()
    };
    let mut w = s;
    let _ = write!(
        w,
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
    Some(LockRequest {
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
