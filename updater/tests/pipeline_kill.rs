//! A real `kill -9` in the middle of a download: a child process (this test binary, running
//! the ignored `child_download` entry point) streams a release through a slowed-down source
//! into slot B; once its journal shows durable progress the parent kills it by PID
//! (SIGKILL), checks that slot A is untouched and slot B unbootable, and resumes: the frames
//! the child wrote are re-read, re-hashed and kept, the rest is fetched with a range.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use basalt_disk::{Slot, SlotState};
use basalt_manifest::chrono::Utc;
use basalt_updater::engine::{CancelFlag, CheckOutcome, CheckRequest, Engine};
use basalt_updater::pipeline::{BackendKind, EngineConfig, EspLocation, NodeEngine};
use basalt_updater::source::{ByteRange, FileSource, Source, SourceError};
use common::{quiet, EspKind, Node, World, MIB};

/// A source that sleeps before every read of a blob (a slow link).
#[derive(Debug)]
struct Slow(FileSource);

struct SlowReader(Box<dyn Read + Send>);

impl Read for SlowReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        std::thread::sleep(Duration::from_millis(40));
        let n = buf.len().min(64 << 10);
        self.0.read(&mut buf[..n])
    }
}

impl Source for Slow {
    fn open(
        &self,
        path: &str,
        range: Option<ByteRange>,
        expected_len: Option<u64>,
    ) -> Result<Box<dyn Read + Send>, SourceError> {
        let inner = self.0.open(path, range, expected_len)?;
        if path.starts_with("blobs/") {
            Ok(Box::new(SlowReader(inner)))
        } else {
            Ok(inner)
        }
    }
    fn location(&self, path: &str) -> String {
        self.0.location(path)
    }
}

fn request() -> CheckRequest {
    CheckRequest {
        now: Utc::now(),
        installed_version: Some("1.0.0".parse().unwrap()),
        last_seen: None,
        allow_downgrade: false,
    }
}

/// The node's engine configuration, rebuilt from its folder (what the child knows).
fn config(node_dir: &Path, world_dir: &Path) -> EngineConfig {
    let mut c = EngineConfig::new(node_dir.join("disk.img"), "basalt", "x86_64", "stable");
    c.esp = EspLocation::Partition;
    c.state_dir = node_dir.join("state");
    c.trust_root = world_dir.join("trust.json");
    c.kernel_options = "console=ttyS0".into();
    c.cmdline = node_dir.join("cmdline");
    c.boot_env = node_dir.join("boot.env");
    c.checkpoint_bytes = 512 << 10;
    c
}

/// The child: download through the slow source until killed. Only meaningful when the
/// parent test starts it (it is `#[ignore]`d, and refuses to run without its inputs).
#[test]
#[ignore = "entry point of the child process of `kill_9_mid_download_then_resume`"]
fn child_download() {
    let node_dir = PathBuf::from(std::env::var("BASALT_KILL_NODE").unwrap());
    let world_dir = PathBuf::from(std::env::var("BASALT_KILL_WORLD").unwrap());
    let source = Slow(FileSource::new(world_dir.join("repo")));
    let mut engine = NodeEngine::new(config(&node_dir, &world_dir), Box::new(source));
    let CheckOutcome::Available(c) = engine.check(&request()).unwrap() else {
        panic!("no update")
    };
    engine
        .download(&c, &mut quiet(), &CancelFlag::new())
        .unwrap();
    panic!("the child finished before it was killed");
}

#[test]
fn kill_9_mid_download_then_resume() {
    let world = World::new();
    let node = Node::new(&world, "killed", BackendKind::Bls, EspKind::Fat);
    let v2 = world.release("2.0.0", 6 * MIB);
    world.publish(&v2, None);
    let before = node.snapshot();
    assert_eq!(config(&node.dir, &world.dir), node.config);

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child_download", "--nocapture"])
        .env("BASALT_KILL_NODE", &node.dir)
        .env("BASALT_KILL_WORLD", &world.dir)
        .spawn()
        .unwrap();
    // Wait (bounded) until the journal records durable frames, then SIGKILL by PID.
    let journal = node.config.journal_path();
    let deadline = Instant::now() + Duration::from_secs(120);
    let claimed = loop {
        assert!(Instant::now() < deadline, "the child made no progress");
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the child exited on its own: {status}");
        }
        let done = std::fs::read(&journal)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|j| j["frames_done"]["usr.img"].as_u64())
            .unwrap_or(0);
        if done >= 4 {
            break done;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap(); // SIGKILL to the process we started
    let status = child.wait().unwrap();
    assert!(!status.success());

    node.assert_safe(&before, "after kill -9");
    assert_eq!(node.state(Slot::B), SlotState::Installing);

    let mut engine = node.engine(Box::new(world.source()));
    let CheckOutcome::Available(c) = engine.check(&request()).unwrap() else {
        panic!("no update")
    };
    let d = engine
        .download(&c, &mut quiet(), &CancelFlag::new())
        .unwrap();
    let frame = u64::from(world.frame_len);
    assert!(
        d.reused >= claimed * frame,
        "kept {} bytes, the journal claimed {claimed} frames",
        d.reused
    );
    assert!(d.fetched > 0);
    node.assert_safe(&before, "after the resume");
    node.veritysetup_verify(Slot::B, &v2.root_hash);
}
