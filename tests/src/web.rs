//! Real web peers for the HTTP tests, each started by the test with its own generated
//! configuration on 127.0.0.1 and killed by PID when dropped (and by the kernel when the
//! thread that started it ends: `PR_SET_PDEATHSIG`):
//!
//! - [`Nginx`]: Debian's nginx serving a folder over HTTP or HTTPS, one process
//!   (`master_process off`, `daemon off`), its pid file, error log, access log and temp
//!   folders in the work folder. The access log has one line per request with the status, the
//!   body bytes sent and the `Range` header ([`Nginx::access_log`]).
//! - [`TestPki`]: a throwaway CA and a server certificate for `localhost` (no IP address in
//!   it, so `https://127.0.0.1/` is a name mismatch), made with the `openssl` CLI.
//! - [`Tinyproxy`]: Debian's tinyproxy as the forward proxy (absolute-form HTTP and `CONNECT`),
//!   optionally requiring Basic credentials; its log names every request it relayed.
//!
//! A missing peer is an error naming the Debian package, never a skip.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::tool::{NGINX, OPENSSL, TINYPROXY};
use crate::{Error, Result};

/// How long a server may take to accept connections after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(15);

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).map_err(|source| Error::WriteFile {
        path: path.to_path_buf(),
        source,
    })
}

fn mkdir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(|source| Error::CreateDir {
        path: path.to_path_buf(),
        source,
    })
}

/// A free TCP port on 127.0.0.1 (bound, read, released; the server binds it next).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|source| Error::Socket {
        what: "binding 127.0.0.1:0 to find a free port".into(),
        source,
    })?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|source| Error::Socket {
            what: "reading a bound port".into(),
            source,
        })
}

/// The last `n` lines of a log file, for errors.
pub(crate) fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Spawn `command` so that it dies with the calling thread.
pub(crate) fn spawn(server: &'static str, mut command: Command) -> Result<Child> {
    command.stdin(Stdio::null());
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    command.spawn().map_err(|e| Error::ServerStart {
        server,
        detail: e.to_string(),
    })
}

/// Wait until `port` accepts connections, or the child exits, or the start timeout passes.
pub(crate) fn wait_listening(
    server: &'static str,
    child: &mut Child,
    port: u16,
    log: &Path,
) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Error::ServerStart {
                server,
                detail: format!("exited ({status}): {}", tail(log, 20)),
            });
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            kill(child);
            return Err(Error::ServerStart {
                server,
                detail: format!(
                    "not listening on port {port} after {START_TIMEOUT:?}: {}",
                    tail(log, 20)
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILL by PID, then reap.
fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A throwaway certificate authority and a server certificate it signed.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA certificate (PEM): what a client pins.
    pub ca: PathBuf,
    /// The server certificate (PEM), valid for DNS name `localhost` only.
    pub server_cert: PathBuf,
    /// Its private key (PEM).
    pub server_key: PathBuf,
}

impl TestPki {
    /// Make a CA named `name` and a `localhost` server certificate in `dir`, with `openssl`.
    pub fn generate(dir: &Path, name: &str) -> Result<TestPki> {
        mkdir(dir)?;
        let ca_key = dir.join("ca.key");
        let ca = dir.join("ca.pem");
        let server_key = dir.join("server.key");
        let csr = dir.join("server.csr");
        let server_cert = dir.join("server.pem");
        let ext = dir.join("server.ext");
        write(
            &ext,
            "subjectAltName=DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )?;
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let run = |args: &[&str]| -> Result<()> {
            let mut command = OPENSSL.command()?;
            command.current_dir(dir).args(args);
            OPENSSL.run(&mut command)?;
            Ok(())
        };
        let p = |p: &Path| p.display().to_string();
        let subject = format!("/CN={name}");
        run(&[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                &p(&ca_key),
                "-out",
                &p(&ca),
                "-days",
                "2",
                "-subj",
                &subject,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat())?;
        run(&[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                &p(&server_key),
                "-out",
                &p(&csr),
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat())?;
        run(&[
            "x509",
            "-req",
            "-in",
            &p(&csr),
            "-CA",
            &p(&ca),
            "-CAkey",
            &p(&ca_key),
            "-CAcreateserial",
            "-out",
            &p(&server_cert),
            "-days",
            "2",
            "-extfile",
            &p(&ext),
        ])?;
        Ok(TestPki {
            ca,
            server_cert,
            server_key,
        })
    }
}

/// One line of nginx's access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub status: u16,
    /// Body bytes sent (`$body_bytes_sent`).
    pub body_bytes: u64,
    /// The `Range` request header, `None` when absent.
    pub range: Option<String>,
    /// The request line (`GET /x HTTP/1.1`).
    pub request: String,
    /// The `User-Agent` header.
    pub user_agent: String,
}

/// Options for [`Nginx::start`].
#[derive(Debug, Clone, Default)]
pub struct NginxOptions {
    /// Serve HTTPS with this PKI's server certificate instead of plain HTTP.
    pub tls: Option<TestPki>,
    /// Extra directives inside the `server { }` block (e.g. `location = /x { return 302 …; }`).
    pub server_extra: String,
}

/// A running nginx; killed when dropped.
#[derive(Debug)]
pub struct Nginx {
    child: Child,
    port: u16,
    tls: bool,
    dir: PathBuf,
}

impl Nginx {
    /// Serve `root` over plain HTTP; `dir` (e.g. a scenario folder) holds config and logs.
    pub fn start(dir: &Path, root: &Path) -> Result<Nginx> {
        Self::start_with(dir, root, &NginxOptions::default())
    }

    /// Serve `root` with `options`.
    pub fn start_with(dir: &Path, root: &Path, options: &NginxOptions) -> Result<Nginx> {
        let binary = NGINX.locate()?;
        mkdir(dir)?;
        let mut last = None;
        // The port is free when picked but another process may take it first: retry.
        for _ in 0..5 {
            match Self::try_start(&binary, dir, root, options) {
                Ok(nginx) => return Ok(nginx),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(Error::ServerStart {
            server: "nginx",
            detail: "no attempt".into(),
        }))
    }

    fn try_start(binary: &Path, dir: &Path, root: &Path, options: &NginxOptions) -> Result<Nginx> {
        let port = free_port()?;
        let temp = dir.join("temp");
        mkdir(&temp)?;
        let d = |name: &str| dir.join(name).display().to_string();
        let t = |name: &str| temp.join(name).display().to_string();
        let (listen, tls_lines) = match &options.tls {
            Some(pki) => (
                format!("127.0.0.1:{port} ssl"),
                format!(
                    "ssl_certificate {};\n        ssl_certificate_key {};\n",
                    pki.server_cert.display(),
                    pki.server_key.display()
                ),
            ),
            None => (format!("127.0.0.1:{port}"), String::new()),
        };
        let config = format!(
            r#"# Generated by basalt_tests::web for one test run.
daemon off;
master_process off;
worker_processes 1;
pid {pid};
error_log {error_log} info;
events {{ worker_connections 64; }}
http {{
    log_format basalt '$status $body_bytes_sent "$http_range" "$request" "$http_user_agent"';
    access_log {access_log} basalt;
    client_body_temp_path {body};
    proxy_temp_path {proxy};
    fastcgi_temp_path {fastcgi};
    uwsgi_temp_path {uwsgi};
    scgi_temp_path {scgi};
    default_type application/octet-stream;
    sendfile on;
    keepalive_timeout 10;
    server {{
        listen {listen};
        server_name localhost;
        root {root};
        {tls_lines}
        {extra}
    }}
}}
"#,
            pid = d("nginx.pid"),
            error_log = d("error.log"),
            access_log = d("access.log"),
            body = t("body"),
            proxy = t("proxy"),
            fastcgi = t("fastcgi"),
            uwsgi = t("uwsgi"),
            scgi = t("scgi"),
            root = root.display(),
            extra = options.server_extra,
        );
        let conf = dir.join("nginx.conf");
        write(&conf, &config)?;
        let _ = fs::remove_file(dir.join("access.log"));
        let mut command = Command::new(binary);
        // -e: the error log before the config is read (the default path is not writable
        // for everyone).
        command
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = spawn("nginx", command)?;
        wait_listening("nginx", &mut child, port, &dir.join("error.log"))?;
        Ok(Nginx {
            child,
            port,
            tls: options.tls.is_some(),
            dir: dir.to_path_buf(),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://127.0.0.1:PORT/`, or `https://localhost:PORT/` with TLS (the certificate's
    /// name).
    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}/", self.port)
        } else {
            format!("http://127.0.0.1:{}/", self.port)
        }
    }

    /// The access log so far (nginx writes each line when the request ends).
    pub fn access_log(&self) -> Result<Vec<Access>> {
        let path = self.dir.join("access.log");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(Error::ReadFile { path, source }),
        };
        Ok(text.lines().filter_map(parse_access).collect())
    }

    /// The error log's path.
    pub fn error_log(&self) -> PathBuf {
        self.dir.join("error.log")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// `STATUS BYTES "RANGE" "REQUEST" "UA"` (nginx writes `-` for an absent header).
fn parse_access(line: &str) -> Option<Access> {
    let (status, rest) = line.split_once(' ')?;
    let (bytes, rest) = rest.split_once(' ')?;
    let quoted: Vec<&str> = rest.split('"').collect();
    // ["", range, " ", request, " ", ua, ""]
    let range = (*quoted.get(1)?).to_string();
    Some(Access {
        status: status.parse().ok()?,
        body_bytes: bytes.parse().ok()?,
        range: (range != "-").then_some(range),
        request: (*quoted.get(3)?).to_string(),
        user_agent: (*quoted.get(5)?).to_string(),
    })
}

/// A running tinyproxy; killed when dropped.
#[derive(Debug)]
pub struct Tinyproxy {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Tinyproxy {
    /// A forward proxy on 127.0.0.1, allowing only loopback clients; with `credentials`
    /// (`user`, `password`) it requires Basic proxy authentication.
    pub fn start(dir: &Path, credentials: Option<(&str, &str)>) -> Result<Tinyproxy> {
        let binary = TINYPROXY.locate()?;
        mkdir(dir)?;
        let mut last = None;
        for _ in 0..5 {
            match Self::try_start(&binary, dir, credentials) {
                Ok(p) => return Ok(p),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(Error::ServerStart {
            server: "tinyproxy",
            detail: "no attempt".into(),
        }))
    }

    fn try_start(
        binary: &Path,
        dir: &Path,
        credentials: Option<(&str, &str)>,
    ) -> Result<Tinyproxy> {
        let port = free_port()?;
        let log = dir.join("tinyproxy.log");
        let _ = fs::remove_file(&log);
        let auth = credentials
            .map(|(u, p)| format!("BasicAuth {u} {p}\n"))
            .unwrap_or_default();
        // No ConnectPort line: CONNECT is allowed to any port (the test servers' ports are
        // random). Root may run it: `User`/`Group` keep it as root inside the test.
        let config = format!(
            "# Generated by basalt_tests::web for one test run.\n\
             Port {port}\nListen 127.0.0.1\nBindSame no\nTimeout 30\n\
             User root\nGroup root\n\
             LogFile \"{log}\"\nLogLevel Info\nPidFile \"{pid}\"\n\
             MaxClients 16\nAllow 127.0.0.1\nDisableViaHeader yes\n{auth}",
            log = log.display(),
            pid = dir.join("tinyproxy.pid").display(),
        );
        let conf = dir.join("tinyproxy.conf");
        write(&conf, &config)?;
        let mut command = Command::new(binary);
        command
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = spawn("tinyproxy", command)?;
        wait_listening("tinyproxy", &mut child, port, &log)?;
        Ok(Tinyproxy { child, port, log })
    }

    /// `http://127.0.0.1:PORT` (with `user:password@` when given).
    pub fn url(&self, credentials: Option<(&str, &str)>) -> String {
        match credentials {
            Some((u, p)) => format!("http://{u}:{p}@127.0.0.1:{}", self.port),
            None => format!("http://127.0.0.1:{}", self.port),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The proxy's log so far (it names each request and `CONNECT` it relayed).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_access_lines() {
        let a = parse_access(r#"206 100 "bytes=5-104" "GET /f HTTP/1.1" "basalt-updated/0.1.0""#)
            .unwrap();
        assert_eq!(a.status, 206);
        assert_eq!(a.body_bytes, 100);
        assert_eq!(a.range.as_deref(), Some("bytes=5-104"));
        assert_eq!(a.request, "GET /f HTTP/1.1");
        assert_eq!(a.user_agent, "basalt-updated/0.1.0");
        let a = parse_access(r#"404 153 "-" "GET /missing HTTP/1.1" "-""#).unwrap();
        assert_eq!(a.range, None);
    }
}
