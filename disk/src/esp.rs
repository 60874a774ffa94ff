//! The EFI system partition (ESP) behind one small trait, [`Esp`], with two implementations:
//!
//! - [`DirEsp`]: a mounted ESP (a node mounts it at `/boot` or `/efi`). Every mutation is
//!   durable when it returns: files are fsynced, directories are fsynced after a rename or
//!   removal, so [`Esp::write_atomic`] (temp file + fsync + rename + fsync dir) never leaves a
//!   half-written file under the final name.
//! - [`FatImageEsp`]: a FAT file system inside a disk image file at a byte offset and length,
//!   read and written with the `fatfs` crate, without mounting (the build host's kernel cannot
//!   see partitions or mount FAT). Used to assemble images ([`build_esp_image`]). FAT has no
//!   atomic replace: a rename onto an existing name removes the old file first. That is
//!   acceptable for image assembly; the running node uses [`DirEsp`].
//!
//! Paths are relative to the ESP root, `/`-separated (`loader/entries/x.conf`); a leading `/`
//! is ignored, `.`/`..` are refused. Names are compared as the implementation does (FAT:
//! case-insensitive).
//!
//! Owns: file access on the ESP, formatting a FAT ESP in an image. Does not own: what the
//! files mean (boot entries live in [`crate::bls`]).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::Error;

/// Where systemd-boot expects to be found by firmware without an NVRAM boot entry.
pub const DEFAULT_LOADER_PATH: &str = "EFI/BOOT/BOOTX64.EFI";
/// The systemd-boot binary shipped by Debian's `systemd-boot-efi` package.
pub const SYSTEMD_BOOT_EFI: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
/// Volumes of at least this size are formatted FAT32 (the UEFI specification's ESP file system;
/// smaller volumes get the FAT12/16 that fits, as mkfs.fat would choose).
pub const FAT32_MIN_LEN: u64 = 64 * 1024 * 1024;

/// One name in an ESP directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspDirEntry {
    /// File name as stored (the long name on FAT).
    pub name: String,
    pub is_dir: bool,
    /// Size in bytes (0 for directories).
    pub len: u64,
}

/// File access on an EFI system partition. Mutating methods are durable when they return
/// (as far as the implementation's medium allows: see the module docs).
pub trait Esp {
    /// The entries of directory `dir` (`""` is the root), or `None` when it does not exist.
    fn list(&self, dir: &str) -> Result<Option<Vec<EspDirEntry>>, Error>;
    /// The whole content of file `path`.
    fn read(&self, path: &str) -> Result<Vec<u8>, Error>;
    /// Whether a file or directory `path` exists.
    fn exists(&self, path: &str) -> Result<bool, Error>;
    /// Bytes available for new data.
    fn free_space(&self) -> Result<u64, Error>;
    /// Create directory `path` and its parents; existing ones are fine.
    fn create_dir(&mut self, path: &str) -> Result<(), Error>;
    /// Create or truncate `path`, write `data`, fsync the file. Not atomic: use
    /// [`Esp::write_atomic`] for anything a reader may see.
    fn write_new(&mut self, path: &str, data: &[u8]) -> Result<(), Error>;
    /// Rename `from` to `to`, replacing `to`; fsync the directory.
    fn rename(&mut self, from: &str, to: &str) -> Result<(), Error>;
    /// Remove file or empty directory `path`; fsync its directory. Absent is not an error.
    fn remove(&mut self, path: &str) -> Result<(), Error>;

    /// Write `path` so that a reader (or a crash) sees either the old or the new content:
    /// `.<name>.tmp` beside it, fsync, rename, fsync dir. Parents are created. An ESP without
    /// room gives [`Error::EspFull`] and leaves the previous `path` untouched.
    fn write_atomic(&mut self, path: &str, data: &[u8]) -> Result<(), Error> {
        let parts = split_path(path)?;
        let (name, parent) = match parts.split_last() {
            Some((name, parent)) => (*name, parent.join("/")),
            None => {
                return Err(Error::EspPath {
                    path: path.to_string(),
                    reason: "empty path",
                })
            }
        };
        if !parent.is_empty() {
            self.create_dir(&parent)?;
        }
        let tmp = join(&parent, &temp_name(name));
        let free = self.free_space()?;
        let needed = data.len() as u64;
        if needed > free {
            return Err(Error::EspFull {
                path: path.to_string(),
                needed,
                free,
            });
        }
        if let Err(e) = self.write_new(&tmp, data) {
            // Best effort: a failed write must not leave a temp file eating the space.
            let _ = self.remove(&tmp);
            return Err(match e {
                Error::EspIo { ref source, .. } if is_no_space(source) => Error::EspFull {
                    path: path.to_string(),
                    needed,
                    free: self.free_space().unwrap_or(0),
                },
                other => other,
            });
        }
        self.rename(&tmp, &join(&parent, name))
    }
}

/// The temp name [`Esp::write_atomic`] uses for `name`: hidden (systemd-boot skips names
/// starting with `.`) and not ending in `.conf`.
pub fn temp_name(name: &str) -> String {
    format!(".{name}.tmp")
}

/// Whether `name` is a temp file left by an interrupted [`Esp::write_atomic`].
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp") && name.len() > 5
}

/// Copy host file `src` to `dest` on the ESP with [`Esp::write_atomic`].
pub fn copy_in(esp: &mut dyn Esp, dest: &str, src: &Path) -> Result<(), Error> {
    let data = std::fs::read(src).map_err(|source| Error::Io {
        op: "read",
        path: src.to_path_buf(),
        source,
    })?;
    esp.write_atomic(dest, &data)
}

/// Join ESP path components.
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Split an ESP path into components, refusing anything that could leave the ESP root.
fn split_path(path: &str) -> Result<Vec<&str>, Error> {
    let bad = |reason| Error::EspPath {
        path: path.to_string(),
        reason,
    };
    let mut out = Vec::new();
    for part in path.split('/') {
        match part {
            "" => continue,
            "." | ".." => return Err(bad("`.` and `..` are not allowed")),
            p if p.contains(['\0', '\\']) => return Err(bad("NUL or backslash in a name")),
            p => out.push(p),
        }
    }
    Ok(out)
}

fn is_no_space(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC)
        || e.kind() == io::ErrorKind::StorageFull
        // fatfs reports a full volume as `ErrorKind::Other` with this text.
        || e.to_string().contains("No space left on device")
}

fn esp_io<'a>(op: &'static str, path: &'a str) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::EspIo {
        op,
        path: path.to_string(),
        source,
    }
}

// ---------------------------------------------------------------------------------------------
// A mounted ESP

/// An ESP mounted at a host directory.
#[derive(Debug, Clone)]
pub struct DirEsp {
    root: PathBuf,
}

impl DirEsp {
    /// The ESP mounted at `root` (e.g. `/boot` or `/efi`). Touches nothing.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirEsp { root: root.into() }
    }

    /// The mount point.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn host(&self, path: &str) -> Result<PathBuf, Error> {
        let mut p = self.root.clone();
        for part in split_path(path)? {
            p.push(part);
        }
        Ok(p)
    }

    fn sync_dir_of(&self, path: &str) -> Result<(), Error> {
        let host = self.host(path)?;
        let dir = host.parent().unwrap_or(&self.root);
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(esp_io("fsync dir of", path))
    }
}

impl Esp for DirEsp {
    fn list(&self, dir: &str) -> Result<Option<Vec<EspDirEntry>>, Error> {
        let rd = match std::fs::read_dir(self.host(dir)?) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(esp_io("list", dir)(e)),
        };
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(esp_io("list", dir))?;
            let meta = entry.metadata().map_err(esp_io("stat in", dir))?;
            out.push(EspDirEntry {
                name: entry.file_name().to_string_lossy().into_owned(),
                is_dir: meta.is_dir(),
                len: if meta.is_dir() { 0 } else { meta.len() },
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Some(out))
    }

    fn read(&self, path: &str) -> Result<Vec<u8>, Error> {
        std::fs::read(self.host(path)?).map_err(esp_io("read", path))
    }

    fn exists(&self, path: &str) -> Result<bool, Error> {
        match std::fs::symlink_metadata(self.host(path)?) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(esp_io("stat", path)(e)),
        }
    }

    fn free_space(&self) -> Result<u64, Error> {
        statvfs_free(&self.root).map_err(esp_io("statvfs", ""))
    }

    fn create_dir(&mut self, path: &str) -> Result<(), Error> {
        let mut done = String::new();
        for part in split_path(path)? {
            done = join(&done, part);
            let host = self.host(&done)?;
            match std::fs::create_dir(&host) {
                Ok(()) => self.sync_dir_of(&done)?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && host.is_dir() => {}
                Err(e) => return Err(esp_io("create dir", path)(e)),
            }
        }
        Ok(())
    }

    fn write_new(&mut self, path: &str, data: &[u8]) -> Result<(), Error> {
        let mut f = File::create(self.host(path)?).map_err(esp_io("create", path))?;
        f.write_all(data).map_err(esp_io("write", path))?;
        f.sync_all().map_err(esp_io("fsync", path))
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), Error> {
        std::fs::rename(self.host(from)?, self.host(to)?).map_err(esp_io("rename", from))?;
        self.sync_dir_of(to)?;
        // A move across directories changes the source directory too.
        let (f, t) = (self.host(from)?, self.host(to)?);
        if f.parent() != t.parent() {
            self.sync_dir_of(from)?;
        }
        Ok(())
    }

    fn remove(&mut self, path: &str) -> Result<(), Error> {
        let host = self.host(path)?;
        let meta = match std::fs::symlink_metadata(&host) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(esp_io("stat", path)(e)),
        };
        let res = if meta.is_dir() {
            std::fs::remove_dir(&host)
        } else {
            std::fs::remove_file(&host)
        };
        match res {
            Ok(()) => self.sync_dir_of(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(esp_io("remove", path)(e)),
        }
    }
}

fn statvfs_free(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated string and `st` a properly sized out-parameter
    // that statvfs fully initialises on success (checked through the return code).
    let st = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return Err(io::Error::last_os_error());
        }
        st
    };
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

// ---------------------------------------------------------------------------------------------
// A FAT file system inside an image file

/// A byte range of an image file seen as a whole device (what `fatfs` reads and writes).
#[derive(Debug)]
struct Window {
    file: File,
    offset: u64,
    len: u64,
    pos: u64,
}

impl Read for Window {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len {
            return Ok(0);
        }
        let n = buf.len().min((self.len - self.pos) as usize);
        let got = self.file.read_at(&mut buf[..n], self.offset + self.pos)?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Write for Window {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.pos >= self.len {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the ESP range",
            ));
        }
        let n = buf.len().min((self.len - self.pos) as usize);
        let put = self.file.write_at(&buf[..n], self.offset + self.pos)?;
        self.pos += put as u64;
        Ok(put)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Window {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match new {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the ESP range",
            )),
        }
    }
}

type Fat = fatfs::FileSystem<Window>;

/// The time stamp of every file we write on a FAT image: 1980-01-01 00:00, the DOS epoch.
/// Fixed so images are reproducible; and a *valid* date on purpose: without a clock fatfs
/// writes day 0 of month 0, which UEFI's FAT driver rejects when systemd-boot renames an
/// entry (`SetInfo` → Invalid Parameter), silently breaking boot counting.
#[derive(Debug)]
struct FixedTime;

impl fatfs::TimeProvider for FixedTime {
    fn get_current_date(&self) -> fatfs::Date {
        fatfs::Date {
            year: 1980,
            month: 1,
            day: 1,
        }
    }

    fn get_current_date_time(&self) -> fatfs::DateTime {
        fatfs::DateTime {
            date: self.get_current_date(),
            time: fatfs::Time {
                hour: 0,
                min: 0,
                sec: 0,
                millis: 0,
            },
        }
    }
}

static FIXED_TIME: FixedTime = FixedTime;

/// A FAT ESP at `offset`..`offset + len` of an image file, accessed without mounting. Each
/// call opens the file system, does its work, unmounts (writing FSInfo) and fsyncs the image.
#[derive(Debug, Clone)]
pub struct FatImageEsp {
    image: PathBuf,
    offset: u64,
    len: u64,
}

impl FatImageEsp {
    /// Open the FAT file system at `offset`/`len` of `image`; fails if it is not FAT.
    pub fn open(image: impl Into<PathBuf>, offset: u64, len: u64) -> Result<Self, Error> {
        let esp = FatImageEsp {
            image: image.into(),
            offset,
            len,
        };
        esp.with_fs("open", "", |_| Ok(()))?;
        Ok(esp)
    }

    /// The image file.
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// Byte offset of the ESP in the image.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Length of the ESP in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the ESP range is empty (never true for an opened ESP).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The FAT variant of the file system (FAT32 for ESPs of [`FAT32_MIN_LEN`] and more).
    pub fn fat_type(&self) -> Result<fatfs::FatType, Error> {
        self.with_fs("open", "", |fs| Ok(fs.fat_type()))
    }

    fn image_error(&self, reason: String) -> Error {
        Error::EspImage {
            image: self.image.clone(),
            offset: self.offset,
            len: self.len,
            reason,
        }
    }

    fn window(&self) -> Result<Window, Error> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.image)
            .map_err(|source| Error::Io {
                op: "open ESP image",
                path: self.image.clone(),
                source,
            })?;
        Ok(Window {
            file,
            offset: self.offset,
            len: self.len,
            pos: 0,
        })
    }

    /// Run `f` on a freshly opened file system, then unmount and fsync the image.
    fn with_fs<R>(
        &self,
        op: &'static str,
        path: &str,
        f: impl FnOnce(&Fat) -> io::Result<R>,
    ) -> Result<R, Error> {
        let window = self.window()?;
        let sync = window.file.try_clone().map_err(|source| Error::Io {
            op: "dup ESP image",
            path: self.image.clone(),
            source,
        })?;
        let options = fatfs::FsOptions::new().time_provider(&FIXED_TIME);
        let fs = fatfs::FileSystem::new(window, options)
            .map_err(|e| self.image_error(format!("not a FAT file system: {e}")))?;
        let out = f(&fs).map_err(esp_io(op, path));
        let unmounted = fs.unmount().map_err(esp_io("unmount", path));
        let synced = sync.sync_all().map_err(|source| Error::Io {
            op: "fsync ESP image",
            path: self.image.clone(),
            source,
        });
        let out = out?;
        unmounted?;
        synced?;
        Ok(out)
    }
}

fn fat_list(dir: &fatfs::Dir<'_, Window>) -> io::Result<Vec<EspDirEntry>> {
    let mut out = Vec::new();
    for e in dir.iter() {
        let e = e?;
        let name = e.file_name();
        if name == "." || name == ".." {
            continue;
        }
        out.push(EspDirEntry {
            is_dir: e.is_dir(),
            len: if e.is_dir() { 0 } else { e.len() },
            name,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn fat_lookup(fs: &Fat, parts: &[&str]) -> io::Result<Option<EspDirEntry>> {
    let Some((name, parent)) = parts.split_last() else {
        return Ok(Some(EspDirEntry {
            name: String::new(),
            is_dir: true,
            len: 0,
        }));
    };
    let mut dir = fs.root_dir();
    for p in parent {
        match fat_list(&dir)?
            .into_iter()
            .find(|e| e.name.eq_ignore_ascii_case(p))
        {
            Some(e) if e.is_dir => dir = dir.open_dir(&e.name)?,
            _ => return Ok(None),
        }
    }
    Ok(fat_list(&dir)?
        .into_iter()
        .find(|e| e.name.eq_ignore_ascii_case(name)))
}

impl Esp for FatImageEsp {
    fn list(&self, dir: &str) -> Result<Option<Vec<EspDirEntry>>, Error> {
        let parts = split_path(dir)?;
        self.with_fs("list", dir, |fs| match fat_lookup(fs, &parts)? {
            Some(e) if e.is_dir => {
                let d = if parts.is_empty() {
                    fs.root_dir()
                } else {
                    fs.root_dir().open_dir(&parts.join("/"))?
                };
                fat_list(&d).map(Some)
            }
            _ => Ok(None),
        })
    }

    fn read(&self, path: &str) -> Result<Vec<u8>, Error> {
        let p = split_path(path)?.join("/");
        self.with_fs("read", path, |fs| {
            let mut f = fs.root_dir().open_file(&p)?;
            let mut out = Vec::new();
            f.read_to_end(&mut out)?;
            Ok(out)
        })
    }

    fn exists(&self, path: &str) -> Result<bool, Error> {
        let parts = split_path(path)?;
        self.with_fs("stat", path, |fs| Ok(fat_lookup(fs, &parts)?.is_some()))
    }

    fn free_space(&self) -> Result<u64, Error> {
        self.with_fs("stat", "", |fs| {
            let st = fs.stats()?;
            Ok(u64::from(st.free_clusters()) * u64::from(st.cluster_size()))
        })
    }

    fn create_dir(&mut self, path: &str) -> Result<(), Error> {
        let parts = split_path(path)?;
        let created = self.with_fs("create dir", path, |fs| {
            let mut dir = fs.root_dir();
            let mut created = false;
            for p in parts {
                dir = match fat_list(&dir)?
                    .into_iter()
                    .find(|e| e.name.eq_ignore_ascii_case(p))
                {
                    Some(e) if e.is_dir => dir.open_dir(&e.name)?,
                    Some(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            format!("{p} exists and is not a directory"),
                        ))
                    }
                    None => {
                        created = true;
                        dir.create_dir(p)?
                    }
                };
            }
            Ok(created)
        })?;
        if created {
            let w = self.window()?;
            fix_dot_entries(&w.file, self.offset).map_err(esp_io("fix dot entries of", path))?;
            w.file.sync_all().map_err(esp_io("fsync", path))?;
        }
        Ok(())
    }

    fn write_new(&mut self, path: &str, data: &[u8]) -> Result<(), Error> {
        let p = split_path(path)?.join("/");
        self.with_fs("write", path, |fs| {
            let mut f = fs.root_dir().create_file(&p)?;
            f.truncate()?;
            f.write_all(data)?;
            f.flush()
        })
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), Error> {
        let (f, t) = (split_path(from)?.join("/"), split_path(to)?);
        self.with_fs("rename", from, |fs| {
            let root = fs.root_dir();
            // FAT has no atomic replace: drop the destination first (see module docs). FAT
            // names are case-insensitive, so a case-only rename is a plain rename.
            if let Some(e) = fat_lookup(fs, &t)? {
                if !e.is_dir
                    && !e
                        .name
                        .eq_ignore_ascii_case(f.rsplit('/').next().unwrap_or(""))
                {
                    root.remove(&t.join("/"))?;
                }
            }
            root.rename(&f, &root, &t.join("/"))
        })
    }

    fn remove(&mut self, path: &str) -> Result<(), Error> {
        let parts = split_path(path)?;
        self.with_fs("remove", path, |fs| {
            if fat_lookup(fs, &parts)?.is_none() {
                return Ok(());
            }
            fs.root_dir().remove(&parts.join("/"))
        })
    }
}

/// fatfs 0.3 writes a long-name entry before the `.` and `..` entries of a new directory;
/// `fsck.fat` (and the FAT specification) want `.` and `..` as the first two entries. This
/// rewrites every such directory start in place: `.`, `..`, then two deleted slots.
///
/// Candidates are clusters ending a chain (a new directory is one cluster); a candidate is
/// only rewritten when its `.` entry points at the cluster itself, so file data cannot match.
fn fix_dot_entries(file: &File, offset: u64) -> io::Result<u32> {
    let mut bpb = [0u8; 512];
    file.read_exact_at(&mut bpb, offset)?;
    let u16_at = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let bps = u64::from(u16_at(&bpb, 11));
    let spc = u64::from(bpb[13]);
    let reserved = u64::from(u16_at(&bpb, 14));
    let fats = u64::from(bpb[16]);
    let root_entries = u64::from(u16_at(&bpb, 17));
    let total = match u16_at(&bpb, 19) {
        0 => u64::from(u32_at(&bpb, 32)),
        n => u64::from(n),
    };
    let spf = match u16_at(&bpb, 22) {
        0 => u64::from(u32_at(&bpb, 36)),
        n => u64::from(n),
    };
    if bps == 0 || spc == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "bad BPB"));
    }
    let root_sectors = (root_entries * 32).div_ceil(bps);
    let first_data = reserved + fats * spf + root_sectors;
    let clusters = total.saturating_sub(first_data) / spc;
    let fat_len = spf * bps;
    let entries_needed = clusters + 2;
    let fat_bytes_needed = if clusters < 4085 {
        entries_needed * 3 / 2 + 2
    } else if clusters < 65525 {
        entries_needed * 2
    } else {
        entries_needed * 4
    };
    // Never trust sizes from disk for an allocation or an index: the FAT must fit the
    // volume and cover every cluster.
    let volume = total * bps;
    if fat_len > volume || fat_len < fat_bytes_needed || first_data >= total {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "inconsistent BPB",
        ));
    }
    let mut fat = vec![0u8; fat_len as usize];
    file.read_exact_at(&mut fat, offset + reserved * bps)?;
    let entry = |c: u64| -> u64 {
        let c = c as usize;
        if clusters < 4085 {
            let v = u16_at(&fat, c + c / 2);
            u64::from(if c % 2 == 0 { v & 0xfff } else { v >> 4 })
        } else if clusters < 65525 {
            u64::from(u16_at(&fat, c * 2))
        } else {
            u64::from(u32_at(&fat, c * 4) & 0x0fff_ffff)
        }
    };
    let eoc = if clusters < 4085 {
        0xff8
    } else if clusters < 65525 {
        0xfff8
    } else {
        0x0fff_fff8
    };
    let mut fixed = 0;
    for c in 2..clusters + 2 {
        if entry(c) < eoc {
            continue;
        }
        let at = offset + (first_data + (c - 2) * spc) * bps;
        let mut head = [0u8; 128];
        file.read_exact_at(&mut head, at)?;
        let (lfn1, dot, lfn2, dotdot) =
            (&head[0..32], &head[32..64], &head[64..96], &head[96..128]);
        let cluster_of = |e: &[u8]| u64::from(u16_at(e, 20)) << 16 | u64::from(u16_at(e, 26));
        if lfn1[11] == 0x0f
            && lfn2[11] == 0x0f
            && &dot[..11] == b".          "
            && &dotdot[..11] == b"..         "
            && cluster_of(dot) == c
        {
            let mut out = [0u8; 128];
            out[0..32].copy_from_slice(dot);
            out[32..64].copy_from_slice(dotdot);
            // `..` of a directory in the root says cluster 0, not the FAT32 root cluster.
            if clusters >= 65525 && cluster_of(dotdot) == u64::from(u32_at(&bpb, 44)) {
                out[32 + 20..32 + 22].fill(0);
                out[32 + 26..32 + 28].fill(0);
            }
            out[64] = 0xe5;
            out[96] = 0xe5;
            file.write_all_at(&out, at)?;
            fixed += 1;
        }
    }
    Ok(fixed)
}

/// Format a FAT ESP at `offset`/`len` of `image` (created or extended as needed, sparse):
/// FAT32 from [`FAT32_MIN_LEN`] up, label `ESP`, a fixed volume id so images are reproducible.
pub fn format_esp(image: &Path, offset: u64, len: u64) -> Result<FatImageEsp, Error> {
    let fail = |reason: String| Error::EspImage {
        image: image.to_path_buf(),
        offset,
        len,
        reason,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(image)
        .map_err(|source| Error::Io {
            op: "open ESP image",
            path: image.to_path_buf(),
            source,
        })?;
    let end = offset
        .checked_add(len)
        .ok_or_else(|| fail("offset + length overflows".into()))?;
    let cur = file
        .metadata()
        .map_err(|source| Error::Io {
            op: "stat ESP image",
            path: image.to_path_buf(),
            source,
        })?
        .len();
    if cur < end {
        file.set_len(end).map_err(|source| Error::Io {
            op: "extend ESP image",
            path: image.to_path_buf(),
            source,
        })?;
    }
    // Zero the first MiB so no stale FAT or partition signature survives a re-format.
    let head = vec![0u8; len.min(1 << 20) as usize];
    file.write_all_at(&head, offset)
        .map_err(|source| Error::Io {
            op: "clear ESP head",
            path: image.to_path_buf(),
            source,
        })?;
    let mut opts = fatfs::FormatVolumeOptions::new()
        .volume_label(*b"ESP        ")
        .volume_id(0x4241_5341); // "ASAB": fixed for reproducible images
    if len >= FAT32_MIN_LEN {
        opts = opts.fat_type(fatfs::FatType::Fat32);
    }
    let window = Window {
        file,
        offset,
        len,
        pos: 0,
    };
    let sync = window.file.try_clone().map_err(|source| Error::Io {
        op: "dup ESP image",
        path: image.to_path_buf(),
        source,
    })?;
    fatfs::format_volume(window, opts).map_err(|e| fail(format!("format: {e}")))?;
    sync.sync_all().map_err(|source| Error::Io {
        op: "fsync ESP image",
        path: image.to_path_buf(),
        source,
    })?;
    FatImageEsp::open(image, offset, len)
}

/// Format a FAT ESP inside `image` and copy `files` (`(destination on the ESP, host source)`)
/// into it, e.g. `(DEFAULT_LOADER_PATH, SYSTEMD_BOOT_EFI)`. Returns the ESP for further
/// writes (boot entries: [`crate::bls::install_boot_esp`] does the whole boot set-up).
pub fn build_esp_image(
    image: &Path,
    offset: u64,
    len: u64,
    files: &[(&str, &Path)],
) -> Result<FatImageEsp, Error> {
    let mut esp = format_esp(image, offset, len)?;
    for (dest, src) in files {
        copy_in(&mut esp, dest, src)?;
    }
    Ok(esp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_confined_to_the_esp() {
        assert_eq!(
            split_path("/loader//entries/").unwrap(),
            ["loader", "entries"]
        );
        assert!(matches!(split_path("a/../b"), Err(Error::EspPath { .. })));
        assert!(matches!(split_path("a/./b"), Err(Error::EspPath { .. })));
        assert!(matches!(split_path("a\\b"), Err(Error::EspPath { .. })));
        assert_eq!(join("", "x"), "x");
        assert_eq!(join("a/b", "x"), "a/b/x");
    }

    #[test]
    fn temp_names_are_hidden_and_not_conf() {
        let t = temp_name("basalt-1.0+3.conf");
        assert!(is_temp_name(&t));
        assert!(t.starts_with('.') && !t.ends_with(".conf"));
        assert!(!is_temp_name("basalt-1.0+3.conf"));
    }

    fn exercise(esp: &mut dyn Esp) {
        assert_eq!(esp.list("loader").unwrap(), None);
        esp.write_atomic("loader/entries/a.conf", b"one").unwrap();
        esp.write_atomic("loader/entries/a.conf", b"two!").unwrap();
        assert_eq!(esp.read("loader/entries/a.conf").unwrap(), b"two!");
        let names = esp.list("loader/entries").unwrap().unwrap();
        assert_eq!(names.len(), 1, "no temp file left: {names:?}");
        assert_eq!(names[0].len, 4);
        esp.rename("loader/entries/a.conf", "loader/entries/b+3.conf")
            .unwrap();
        assert!(!esp.exists("loader/entries/a.conf").unwrap());
        assert!(esp.exists("loader/entries/b+3.conf").unwrap());
        esp.remove("loader/entries/b+3.conf").unwrap();
        esp.remove("loader/entries/b+3.conf").unwrap();
        esp.remove("loader/entries").unwrap();
        assert_eq!(esp.list("loader").unwrap().unwrap(), vec![]);
        assert!(esp.free_space().unwrap() > 0);
    }

    #[test]
    fn dir_esp_basics() {
        let dir = tempfile::tempdir().unwrap();
        exercise(&mut DirEsp::new(dir.path()));
    }

    #[test]
    fn fat_esp_basics_fat16_and_fat32() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        let mut small = format_esp(&img, 1 << 20, 16 << 20).unwrap();
        assert_eq!(small.fat_type().unwrap(), fatfs::FatType::Fat16);
        exercise(&mut small);
        let mut big = format_esp(&img, 1 << 20, 64 << 20).unwrap();
        assert_eq!(big.fat_type().unwrap(), fatfs::FatType::Fat32);
        exercise(&mut big);
    }

    #[test]
    fn full_fat_esp_is_a_typed_error_and_keeps_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        let mut esp = format_esp(&img, 0, 2 << 20).unwrap();
        esp.write_atomic("keep.conf", b"keep").unwrap();
        let err = esp
            .write_atomic("keep.conf", &vec![7u8; 3 << 20])
            .unwrap_err();
        assert!(matches!(err, Error::EspFull { .. }), "{err}");
        assert_eq!(esp.read("keep.conf").unwrap(), b"keep");
        let names: Vec<_> = esp
            .list("")
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["keep.conf"]);
    }
}
