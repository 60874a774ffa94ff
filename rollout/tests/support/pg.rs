//! A private PostgreSQL cluster for one test: Debian's server binaries, `initdb` into a
//! temporary folder owned by `postgres` (it refuses to run as root), its own port on
//! 127.0.0.1 and its own socket folder; stopped (`pg_ctl -m immediate`) when dropped. A
//! missing server is an error naming the package, never a skip.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Pg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.flatten()
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").is_file())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!("PostgreSQL server binaries not found under /usr/lib/postgresql: apt-get install postgresql")
    })
}

fn run(what: &str, command: &mut Command) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e} (apt-get install postgresql)"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Pg {
    pub fn start() -> Pg {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("basalt-pg-")
            .tempdir()
            .expect("tempdir");
        run(
            "chown",
            Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path()),
        );
        let data = dir.path().join("data");
        run(
            "initdb",
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(bin.join("initdb"))
                .args(["-A", "trust", "-U", "basalt", "--no-sync", "-D"])
                .arg(&data),
        );
        let port = free_port();
        let pg = Pg { dir, bin, port };
        run(
            "pg_ctl start",
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(pg.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-o")
                .arg(format!(
                    "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
                    pg.dir.path().display()
                ))
                .arg("-l")
                .arg(pg.dir.path().join("log"))
                .args(["-w", "-t", "60", "start"]),
        );
        pg
    }

    pub fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=basalt dbname=postgres connect_timeout=10",
            self.port
        )
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}
