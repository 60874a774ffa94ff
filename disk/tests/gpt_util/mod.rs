//! Shared helpers of the `basalt-disk` integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{self, Cursor, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use basalt_disk::gpt::{DiskIo, Guid};
use basalt_disk::layout::{create_layout, LayoutSpec};
use basalt_disk::slots::{write_slot, SlotImage};
use basalt_disk::{RootHash, Slot};

/// Run a peer tool; fail (not skip) with the Debian package name when it is missing.
pub fn run(tool: &str, package: &str, args: &[&str]) -> Output {
    let out = Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!("{tool} not runnable ({e}); install the Debian package `{package}`")
    });
    out
}

/// Run a peer tool and require success; returns stdout.
pub fn run_ok(tool: &str, package: &str, args: &[&str]) -> String {
    let out = run(tool, package, args);
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deterministic GUID source for reproducible disks.
pub fn counter_guids(seed: u8) -> impl FnMut() -> Result<Guid, basalt_disk::Error> {
    let mut n = 0u8;
    move || {
        n += 1;
        let mut g = [seed; 16];
        g[15] = n;
        g[6] = 0x40 | (n & 0x0f);
        g[8] = 0x80;
        Ok(Guid(g))
    }
}

/// A tiny Basalt image file in `dir`.
pub fn tiny_image_file(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let spec = LayoutSpec::tiny();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    f.set_len(spec.disk_size).unwrap();
    create_layout(&mut f, &path, &spec, &mut counter_guids(0x11)).unwrap();
    path
}

/// A ≈600 KiB layout (4 KiB alignment) for in-memory tests that copy the disk a lot.
pub fn micro_spec() -> LayoutSpec {
    LayoutSpec {
        disk_size: 640 << 10,
        esp_size: 64 << 10,
        usr_size: 128 << 10,
        verity_size: 16 << 10,
        slot_reserve: 16 << 10,
        root_size: None,
        align: 4 << 10,
    }
}

/// A micro Basalt disk in memory.
pub fn tiny_disk_mem() -> Cursor<Vec<u8>> {
    let spec = micro_spec();
    let mut dev = Cursor::new(vec![0u8; spec.disk_size as usize]);
    create_layout(&mut dev, Path::new("mem"), &spec, &mut counter_guids(0x22)).unwrap();
    dev
}

/// A made-up root hash derived from `seed` (the table code never checks it against data).
pub fn fake_hash(seed: u8) -> RootHash {
    let mut h = [0u8; 32];
    for (i, b) in h.iter_mut().enumerate() {
        *b = seed.wrapping_mul(31).wrapping_add(i as u8).wrapping_add(1);
    }
    RootHash(h)
}

/// Write a small fake image (`seed`-filled) into `slot`.
pub fn put_image<D: DiskIo>(
    dev: &mut D,
    path: &Path,
    slot: Slot,
    version: &str,
    seed: u8,
    cmdline: Option<&str>,
) -> Result<RootHash, basalt_disk::Error> {
    let data = vec![seed; 64 << 10];
    let verity = vec![seed ^ 0xff; 8 << 10];
    let hash = fake_hash(seed);
    write_slot(
        dev,
        path,
        slot,
        cmdline,
        SlotImage {
            data: &mut &data[..],
            data_path: Path::new("data"),
            data_len: data.len() as u64,
            verity: &mut &verity[..],
            verity_path: Path::new("verity"),
            verity_len: verity.len() as u64,
            root_hash: hash,
            os: "basalt",
            version,
        },
    )?;
    Ok(hash)
}

/// One write the device saw, or a durability barrier.
#[derive(Debug, Clone)]
pub enum Event {
    Write(u64, Vec<u8>),
    Sync,
}

/// A `DiskIo` that records every write and sync on top of an in-memory disk.
#[derive(Debug)]
pub struct Recorder {
    pub inner: Cursor<Vec<u8>>,
    pub events: Vec<Event>,
}

impl Recorder {
    pub fn new(disk: Vec<u8>) -> Self {
        Recorder {
            inner: Cursor::new(disk),
            events: Vec::new(),
        }
    }
    pub fn writes(&self) -> Vec<(u64, Vec<u8>)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Write(o, d) => Some((*o, d.clone())),
                Event::Sync => None,
            })
            .collect()
    }
}

impl Read for Recorder {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl Seek for Recorder {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.inner.seek(to)
    }
}

impl Write for Recorder {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let pos = self.inner.position();
        let n = self.inner.write(buf)?;
        self.events.push(Event::Write(pos, buf[..n].to_vec()));
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl DiskIo for Recorder {
    fn sync_data(&mut self) -> io::Result<()> {
        self.events.push(Event::Sync);
        Ok(())
    }
}

/// SHA-free fingerprint of a file's bytes for "nothing changed" checks.
pub fn file_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}
