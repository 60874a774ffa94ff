//! The writes the engine makes, behind one small trait, so a test can kill or tear any of
//! them ([`NodeIo`]); production uses [`RealIo`].
//!
//! Every write of an update goes through here: the disk (slot data, verity, GPT — all via
//! [`NodeIo::open_rw`]), staged kernel and initrd files (also `open_rw`), state files (trust
//! roots, the journal: [`NodeIo::write_atomic`]) and the ESP ([`NodeIo::wrap_esp`]). Reads
//! that only verify (re-reading the written slot) open files directly.

use std::fs::File;
use std::io;
use std::path::Path;

use basalt_disk::esp::EspDirEntry;
use basalt_disk::gpt::DiskIo;
use basalt_disk::Esp;

/// A disk or file the engine writes: read, write, seek, `fdatasync`.
pub trait Disk: DiskIo + Send {}

impl<T: DiskIo + Send> Disk for T {}

impl DiskIo for Box<dyn Disk> {
    fn sync_data(&mut self) -> io::Result<()> {
        (**self).sync_data()
    }
}

/// An ESP behind a box (what the BLS backend is built on).
pub struct BoxedEsp(pub Box<dyn Esp + Send>);

impl std::fmt::Debug for BoxedEsp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BoxedEsp")
    }
}

impl Esp for BoxedEsp {
    fn list(&self, dir: &str) -> Result<Option<Vec<EspDirEntry>>, basalt_disk::Error> {
        self.0.list(dir)
    }
    fn read(&self, path: &str) -> Result<Vec<u8>, basalt_disk::Error> {
        self.0.read(path)
    }
    fn exists(&self, path: &str) -> Result<bool, basalt_disk::Error> {
        self.0.exists(path)
    }
    fn free_space(&self) -> Result<u64, basalt_disk::Error> {
        self.0.free_space()
    }
    fn create_dir(&mut self, path: &str) -> Result<(), basalt_disk::Error> {
        self.0.create_dir(path)
    }
    fn write_new(&mut self, path: &str, data: &[u8]) -> Result<(), basalt_disk::Error> {
        self.0.write_new(path, data)
    }
    fn rename(&mut self, from: &str, to: &str) -> Result<(), basalt_disk::Error> {
        self.0.rename(from, to)
    }
    fn remove(&mut self, path: &str) -> Result<(), basalt_disk::Error> {
        self.0.remove(path)
    }
}

/// Where the engine's writes go.
pub trait NodeIo: Send + Sync + std::fmt::Debug {
    /// Open `path` for reading and writing; `create` makes a missing regular file.
    fn open_rw(&self, path: &Path, create: bool) -> io::Result<Box<dyn Disk>>;
    /// Replace the small file `path` atomically (`basalt_fsutil::write_atomic`).
    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), basalt_fsutil::Error>;
    /// Remove a file; a missing one is fine.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Rename `from` to `to` (same filesystem; a directory too). The caller syncs the
    /// parent folder. Default: `rename(2)`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    /// The ESP the BLS backend writes (a test wraps it to record or fail writes).
    fn wrap_esp(&self, esp: BoxedEsp) -> BoxedEsp {
        esp
    }
}

/// The real thing: files and devices, `basalt_fsutil`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealIo;

/// How the engine opens what it writes: read + write, never truncated; `create` makes a
/// missing regular file. (Test `NodeIo`s wrap the file this returns.)
pub fn open_rw_file(path: &Path, create: bool) -> io::Result<File> {
    File::options()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
}

impl NodeIo for RealIo {
    fn open_rw(&self, path: &Path, create: bool) -> io::Result<Box<dyn Disk>> {
        Ok(Box::new(open_rw_file(path, create)?))
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), basalt_fsutil::Error> {
        basalt_fsutil::write_atomic(path, bytes, 0o644)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}
