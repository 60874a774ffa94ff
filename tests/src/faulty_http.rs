//! A small, deliberately misbehaving HTTP/1.1 server for tests: it serves a folder on
//! 127.0.0.1 like a static web server (GET/HEAD, single `Range: bytes=A-B` / `bytes=A-`,
//! 404 for missing files, `Connection: close` after every reply) unless a [`Fault`] is
//! programmed for the path — for every request to it, or only for its N-th request.
//!
//! ```no_run
//! # use basalt_tests::faulty_http::{FaultyServer, Fault};
//! let server = FaultyServer::start("/srv/repo")?;
//! server.on("blobs/sha256/ab12", Fault::DropAfter(4096));          // every request
//! server.on_nth("blobs/sha256/ab12", 2, Fault::StallAfter(0));      // only the 2nd
//! let url = server.url();                                           // http://127.0.0.1:PORT/
//! // … run the client …
//! let log = server.requests();        // path, Range, status, body bytes sent, per request
//! # Ok::<(), basalt_tests::Error>(())
//! ```
//!
//! Any method is answered like GET (HEAD without a body), so a POST client (FleetLock) can be
//! tested too: the request body is logged ([`Logged::body`]) and the reply is the file at the
//! path, or the programmed status.
//!
//! Several faults may apply to one request; they combine where that makes sense (e.g.
//! `FlipByte` + `IgnoreRange`). Paths are given relative to the served folder, without the
//! leading `/`.
//!
//! Bounds, so a broken test cannot hang or flood the machine: at most [`MAX_CONNECTIONS`]
//! connections at once (more are closed at once), request heads of at most 16 KiB read within
//! 10 s, a stall (ours, or a client that stops reading) lasts until the client hangs up, the
//! server is dropped, or [`MAX_STALL`] passes. Dropping the server stops the accept loop and
//! every connection thread and joins them.

use std::collections::HashMap;
use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// Connections served at once; more are closed without a reply.
pub const MAX_CONNECTIONS: usize = 32;
/// The longest a [`Fault::StallAfter`] or [`Fault::Silent`] connection is held open.
pub const MAX_STALL: Duration = Duration::from_secs(120);

const MAX_HEAD: usize = 16 << 10;
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);

/// A misbehaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Send the head and this many body bytes, then close the connection.
    DropAfter(u64),
    /// Send the head and this many body bytes, then send nothing more (connection held).
    StallAfter(u64),
    /// Send this many extra bytes (`X`) after the body; `Content-Length` stays honest.
    ExtraBytes(u64),
    /// Announce this `Content-Length`, send the true body, close.
    ContentLength(u64),
    /// No `Content-Length`: the body ends when the connection closes (HTTP/1.0 style).
    NoContentLength,
    /// `Transfer-Encoding: chunked` (16 KiB chunks), no `Content-Length`.
    Chunked,
    /// Invert the byte at this file offset (wherever it falls in the reply).
    FlipByte(u64),
    /// Serve the file as if it were only its first N bytes (`Content-Length` agrees).
    Truncate(u64),
    /// Ignore `Range`: `200` and the whole file.
    IgnoreRange,
    /// Answer a range request with this `Content-Range` value (the body is still the range
    /// that was asked).
    ContentRange(String),
    /// Redirect: this status and `Location` value (relative or absolute), empty body.
    Redirect { status: u16, location: String },
    /// Answer with this status and a short text body (e.g. 404, 429, 500, 503).
    Status(u16),
    /// Send the head one byte at a time, this long apart (slowloris).
    SlowHeaders(Duration),
    /// Read the request, never answer (connection held).
    Silent,
    /// Add this header to the reply.
    Header(String, String),
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// 1-based count of requests to this path (what [`FaultyServer::on_nth`] matches).
    pub nth: usize,
    pub method: String,
    /// Path without the leading `/`, percent-decoding not applied, query removed.
    pub path: String,
    /// The raw request target.
    pub target: String,
    /// The `Range` header, when sent.
    pub range: Option<String>,
    /// Every request header, names in lower case.
    pub headers: Vec<(String, String)>,
    /// Status sent (0 when none was: `Silent`).
    pub status: u16,
    /// Body bytes actually written to the socket.
    pub body_bytes: u64,
    /// The request body (read when it has a `Content-Length` of at most 1 MiB).
    pub body: Vec<u8>,
}

impl Logged {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone)]
struct Rule {
    path: String,
    nth: Option<usize>,
    fault: Fault,
}

#[derive(Debug, Default)]
struct Shared {
    root: PathBuf,
    rules: Mutex<Vec<Rule>>,
    log: Mutex<Vec<Logged>>,
    counts: Mutex<HashMap<String, usize>>,
    stop: AtomicBool,
    active: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking connection thread must not take the fixture down with it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The server; stops when dropped.
#[derive(Debug)]
pub struct FaultyServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl FaultyServer {
    /// Serve `root` on 127.0.0.1 (a free port).
    pub fn start(root: impl AsRef<Path>) -> Result<FaultyServer> {
        Self::start_on(root, "127.0.0.1:0")
    }

    /// Serve `root` on a loopback address (`127.0.0.1:0`, `[::1]:0`; anything else is
    /// refused: tests never listen beyond this machine).
    pub fn start_on(root: impl AsRef<Path>, bind: &str) -> Result<FaultyServer> {
        let socket = |what: &str| {
            let what = what.to_string();
            move |source| Error::Socket { what, source }
        };
        let addr = bind
            .parse::<SocketAddr>()
            .ok()
            .filter(|a| a.ip().is_loopback())
            .ok_or_else(|| Error::Socket {
                what: format!("{bind:?} is not a loopback socket address"),
                source: std::io::Error::from(ErrorKind::InvalidInput),
            })?;
        let listener = TcpListener::bind(addr).map_err(socket(&format!("binding {addr}")))?;
        listener
            .set_nonblocking(true)
            .map_err(socket("making the listener non-blocking"))?;
        let addr = listener
            .local_addr()
            .map_err(socket("reading the listener's address"))?;
        let shared = Arc::new(Shared {
            root: root.as_ref().to_path_buf(),
            ..Shared::default()
        });
        let accept = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("faulty-http".into())
                .spawn(move || accept_loop(&listener, &shared))
                .map_err(socket("starting the accept thread"))?
        };
        Ok(FaultyServer {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// `http://127.0.0.1:PORT/` (or `http://[::1]:PORT/`).
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Apply `fault` to every request for `path`.
    pub fn on(&self, path: &str, fault: Fault) -> &Self {
        self.push(path, None, fault)
    }

    /// Apply `fault` to the `nth` (1-based) request for `path` only.
    pub fn on_nth(&self, path: &str, nth: usize, fault: Fault) -> &Self {
        self.push(path, Some(nth), fault)
    }

    fn push(&self, path: &str, nth: Option<usize>, fault: Fault) -> &Self {
        lock(&self.shared.rules).push(Rule {
            path: path.trim_start_matches('/').to_string(),
            nth,
            fault,
        });
        self
    }

    /// Connections being served right now (a client that leaks connections keeps this up).
    pub fn open_connections(&self) -> usize {
        self.shared.active.load(Ordering::SeqCst)
    }

    /// Wait up to `timeout` for every connection to end; returns how many remain.
    pub fn wait_idle(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        while self.open_connections() > 0 && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        self.open_connections()
    }

    /// Forget every fault (the request log and counts stay).
    pub fn clear_faults(&self) {
        lock(&self.shared.rules).clear();
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Logged> {
        lock(&self.shared.log).clone()
    }

    /// The requests for `path` so far.
    pub fn requests_for(&self, path: &str) -> Vec<Logged> {
        let path = path.trim_start_matches('/');
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }
}

impl Drop for FaultyServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                workers.retain(|w| !w.is_finished());
                if shared.active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                    let _ = stream.shutdown(Shutdown::Both);
                    continue;
                }
                shared.active.fetch_add(1, Ordering::SeqCst);
                let conn_shared = Arc::clone(shared);
                let spawned = std::thread::Builder::new()
                    .name("faulty-http-conn".into())
                    .spawn(move || {
                        serve(stream, &conn_shared);
                        conn_shared.active.fetch_sub(1, Ordering::SeqCst);
                    });
                match spawned {
                    Ok(handle) => workers.push(handle),
                    Err(_) => {
                        shared.active.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(_) => std::thread::sleep(POLL),
        }
    }
    for w in workers {
        let _ = w.join();
    }
}

/// The parsed request head.
struct Head {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    /// Bytes read past the head (the start of the body).
    rest: Vec<u8>,
}

fn read_head(stream: &mut TcpStream, stop: &AtomicBool) -> Option<Head> {
    let deadline = Instant::now() + HEAD_TIMEOUT;
    let mut buf = Vec::with_capacity(1024);
    let mut byte = [0u8; 1024];
    let _ = stream.set_read_timeout(Some(POLL * 5));
    let rest = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            buf.truncate(end);
            break rest;
        }
        if buf.len() > MAX_HEAD || Instant::now() > deadline || stop.load(Ordering::SeqCst) {
            return None;
        }
        match stream.read(&mut byte) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&byte[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return None,
        }
    };
    let text = String::from_utf8_lossy(&buf);
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_string();
    let target = request_line.next()?.to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(Head {
        method,
        target,
        headers,
        rest,
    })
}

/// The request body announced by `Content-Length` (at most 1 MiB, read within the head
/// timeout); what arrived when it is cut short.
fn read_body(stream: &mut TcpStream, head: &Head) -> Vec<u8> {
    let len = head
        .headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0)
        .min(1 << 20);
    let mut body = head.rest.clone();
    let deadline = Instant::now() + HEAD_TIMEOUT;
    let mut buf = [0u8; 4096];
    while body.len() < len && Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => body.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    body.truncate(len);
    body
}

/// The path a request target names: origin form or absolute form, query dropped.
fn target_path(target: &str) -> String {
    let path = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    path.trim_start_matches('/').to_string()
}

/// `bytes=A-B` / `bytes=A-` → (first, inclusive last or None). Anything else: not a range we
/// serve (the whole file is sent, as RFC 9110 allows).
fn parse_range(value: &str) -> Option<(u64, Option<u64>)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let first = a.parse().ok()?;
    let last = if b.is_empty() {
        None
    } else {
        Some(b.parse().ok()?)
    };
    if last.is_some_and(|l| l < first) {
        return None;
    }
    Some((first, last))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        410 => "Gone",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// The reply being built for one request.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    /// The file and the byte span of it that is the body.
    file: Option<(File, u64, u64)>,
    /// A small body when there is no file.
    text: Vec<u8>,
}

fn serve(mut stream: TcpStream, shared: &Shared) {
    // Accepted sockets do not inherit the listener's O_NONBLOCK on Linux; make sure. A client
    // that stops reading cannot block a writer for longer than MAX_STALL.
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(MAX_STALL));
    let Some(head) = read_head(&mut stream, &shared.stop) else {
        return;
    };
    let body = read_body(&mut stream, &head);
    let path = target_path(&head.target);
    let nth = {
        let mut counts = lock(&shared.counts);
        let n = counts.entry(path.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let faults: Vec<Fault> = lock(&shared.rules)
        .iter()
        .filter(|r| r.path == path && r.nth.is_none_or(|n| n == nth))
        .map(|r| r.fault.clone())
        .collect();
    let range = head
        .headers
        .iter()
        .find(|(n, _)| n == "range")
        .map(|(_, v)| v.clone());
    let index = {
        let mut log = lock(&shared.log);
        log.push(Logged {
            nth,
            method: head.method.clone(),
            path: path.clone(),
            target: head.target.clone(),
            range: range.clone(),
            headers: head.headers.clone(),
            status: 0,
            body_bytes: 0,
            body,
        });
        log.len() - 1
    };
    if faults.contains(&Fault::Silent) {
        hold(&mut stream, &shared.stop);
        return;
    }
    let reply = build_reply(&shared.root, &path, range.as_deref(), &faults);
    lock(&shared.log)[index].status = reply.status;
    let sent = send(&mut stream, reply, &head.method, &faults, &shared.stop);
    lock(&shared.log)[index].body_bytes = sent;
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
    // Let the client read everything before the socket closes (no RST on unread input).
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 512];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
}

fn text_reply(status: u16, headers: Vec<(String, String)>, text: &str) -> Reply {
    Reply {
        status,
        headers,
        file: None,
        text: text.as_bytes().to_vec(),
    }
}

fn build_reply(root: &Path, path: &str, range: Option<&str>, faults: &[Fault]) -> Reply {
    let mut extra: Vec<(String, String)> = faults
        .iter()
        .filter_map(|f| match f {
            Fault::Header(n, v) => Some((n.clone(), v.clone())),
            _ => None,
        })
        .collect();
    for fault in faults {
        match fault {
            Fault::Status(status) => {
                return text_reply(*status, extra, &format!("status {status}\n"));
            }
            Fault::Redirect { status, location } => {
                extra.push(("Location".into(), location.clone()));
                return text_reply(*status, extra, "");
            }
            _ => {}
        }
    }
    let safe = Path::new(path)
        .components()
        .all(|c| matches!(c, Component::Normal(_)));
    let full = root.join(path);
    let opened = if safe && !path.is_empty() {
        File::open(&full)
            .ok()
            .filter(|f| f.metadata().is_ok_and(|m| m.is_file()))
    } else {
        None
    };
    let Some(file) = opened else {
        return text_reply(404, extra, "not found\n");
    };
    let mut len = file.metadata().map(|m| m.len()).unwrap_or(0);
    for fault in faults {
        if let Fault::Truncate(n) = fault {
            len = len.min(*n);
        }
    }
    let ignore_range = faults.contains(&Fault::IgnoreRange);
    let wanted = range.filter(|_| !ignore_range).and_then(parse_range);
    let (status, first, last) = match wanted {
        None => (200, 0, len.checked_sub(1)),
        Some((first, _)) if first >= len => {
            extra.push(("Content-Range".into(), format!("bytes */{len}")));
            return text_reply(416, extra, "");
        }
        Some((first, last)) => {
            let last = last.map_or(len - 1, |l| l.min(len - 1));
            let content_range = faults
                .iter()
                .find_map(|f| match f {
                    Fault::ContentRange(v) => Some(v.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| format!("bytes {first}-{last}/{len}"));
            extra.push(("Content-Range".into(), content_range));
            (206, first, Some(last))
        }
    };
    let body_len = last.map_or(0, |l| l + 1 - first);
    extra.push(("Accept-Ranges".into(), "bytes".into()));
    Reply {
        status,
        headers: extra,
        file: Some((file, first, body_len)),
        text: Vec::new(),
    }
}

/// Write the reply with the faults; returns the body bytes written.
fn send(
    stream: &mut TcpStream,
    reply: Reply,
    method: &str,
    faults: &[Fault],
    stop: &AtomicBool,
) -> u64 {
    let body_len = match &reply.file {
        Some((_, _, len)) => *len,
        None => reply.text.len() as u64,
    };
    let chunked = faults.contains(&Fault::Chunked);
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nServer: basalt-faulty-http\r\nConnection: close\r\n",
        reply.status,
        reason(reply.status)
    );
    let announced = faults.iter().find_map(|f| match f {
        Fault::ContentLength(n) => Some(*n),
        _ => None,
    });
    if chunked {
        head.push_str("Transfer-Encoding: chunked\r\n");
    } else if !faults.contains(&Fault::NoContentLength) {
        head.push_str(&format!(
            "Content-Length: {}\r\n",
            announced.unwrap_or(body_len)
        ));
    }
    for (n, v) in &reply.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let slow = faults.iter().find_map(|f| match f {
        Fault::SlowHeaders(d) => Some(*d),
        _ => None,
    });
    let head_ok = match slow {
        Some(gap) => head.as_bytes().iter().all(|b| {
            if stop.load(Ordering::SeqCst) {
                return false;
            }
            let ok = stream.write_all(&[*b]).is_ok();
            std::thread::sleep(gap);
            ok
        }),
        None => stream.write_all(head.as_bytes()).is_ok(),
    };
    if !head_ok || method == "HEAD" {
        return 0;
    }
    let drop_after = faults.iter().find_map(|f| match f {
        Fault::DropAfter(n) => Some(*n),
        _ => None,
    });
    let stall_after = faults.iter().find_map(|f| match f {
        Fault::StallAfter(n) => Some(*n),
        _ => None,
    });
    let flips: Vec<u64> = faults
        .iter()
        .filter_map(|f| match f {
            Fault::FlipByte(k) => Some(*k),
            _ => None,
        })
        .collect();
    let cut = [drop_after, stall_after].into_iter().flatten().min();
    let mut sent = 0u64;
    let mut write = |stream: &mut TcpStream, data: &[u8]| -> bool {
        let data = match cut {
            Some(c) if sent + data.len() as u64 > c => &data[..(c - sent) as usize],
            _ => data,
        };
        let ok = if chunked && !data.is_empty() {
            stream
                .write_all(format!("{:x}\r\n", data.len()).as_bytes())
                .and_then(|()| stream.write_all(data))
                .and_then(|()| stream.write_all(b"\r\n"))
                .is_ok()
        } else {
            stream.write_all(data).is_ok()
        };
        if ok {
            sent += data.len() as u64;
        }
        ok && cut.is_none_or(|c| sent < c)
    };
    let mut complete = true;
    match reply.file {
        Some((mut file, first, len)) => {
            if file.seek(SeekFrom::Start(first)).is_err() {
                return 0;
            }
            let mut buf = vec![0u8; 16 << 10];
            let mut offset = first;
            let end = first + len;
            while offset < end {
                let want = buf.len().min((end - offset) as usize);
                let n = match file.read(&mut buf[..want]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                for k in &flips {
                    if (offset..offset + n as u64).contains(k) {
                        buf[(k - offset) as usize] ^= 0xff;
                    }
                }
                offset += n as u64;
                if !write(stream, &buf[..n]) {
                    complete = false;
                    break;
                }
            }
        }
        None => {
            if !reply.text.is_empty() {
                complete = write(stream, &reply.text);
            }
        }
    }
    if complete && cut.is_none_or(|c| sent < c) {
        if chunked {
            let _ = stream.write_all(b"0\r\n\r\n");
        }
        let extra = faults.iter().find_map(|f| match f {
            Fault::ExtraBytes(n) => Some(*n),
            _ => None,
        });
        if let Some(n) = extra {
            let junk = vec![b'X'; n as usize];
            if stream.write_all(&junk).is_ok() {
                sent += n;
            }
        }
    }
    if stall_after.is_some() && drop_after.is_none_or(|d| stall_after < Some(d)) {
        let _ = stream.flush();
        hold(stream, stop);
    }
    sent
}

/// Keep the connection open without sending anything until the client closes it, the server
/// stops, or [`MAX_STALL`] passes.
fn hold(stream: &mut TcpStream, stop: &AtomicBool) {
    let deadline = Instant::now() + MAX_STALL;
    let _ = stream.set_read_timeout(Some(POLL * 5));
    let mut sink = [0u8; 512];
    while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
        match stream.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_paths() {
        assert_eq!(target_path("/a/b?x=1"), "a/b");
        assert_eq!(target_path("http://h:1/a/b#f"), "a/b");
        assert_eq!(target_path("http://h:1"), "");
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=5-"), Some((5, None)));
        assert_eq!(parse_range("bytes=5-9"), Some((5, Some(9))));
        assert_eq!(parse_range("bytes=9-5"), None);
        assert_eq!(parse_range("bytes=-5"), None);
        assert_eq!(parse_range("items=1-2"), None);
    }
}
