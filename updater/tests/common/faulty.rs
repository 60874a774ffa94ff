//! A fault-injecting [`Source`] wrapper: it forwards to a real source and, for the opens of
//! a path that match, damages the body the way a hostile network or a broken server would.
//! It deliberately does *not* pass `expected_len` on to the inner source when it fakes a
//! length fault, so the pipeline's own checks are what catch it.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{self, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use basalt_updater::source::{ByteRange, Source, SourceError};

/// What to do to a matching body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A connection reset after this many body bytes.
    DropAfter(u64),
    /// XOR `0x40` into the byte at this offset of the *file* (not of the range).
    FlipAt(u64),
    /// End the body (clean EOF) after this many bytes.
    TruncateAt(u64),
    /// Append this many bytes after the real body.
    Extra(u64),
    /// Answer 404.
    NotFound,
    /// Cancel `flag` after this many body bytes (then keep serving).
    CancelAfter(u64),
}

/// One recorded open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub path: String,
    pub range: Option<ByteRange>,
    pub faulted: bool,
}

#[derive(Debug)]
pub struct FaultySource {
    pub inner: Box<dyn Source>,
    /// (path substring, fault, how many more opens to damage)
    rule: Mutex<Option<(String, Fault, usize)>>,
    pub log: Arc<Mutex<Vec<Opened>>>,
    pub cancel: Option<basalt_updater::engine::CancelFlag>,
    /// Body bytes served (all opens).
    pub served: Arc<AtomicUsize>,
}

impl FaultySource {
    pub fn new(inner: impl Source + 'static) -> Self {
        FaultySource {
            inner: Box::new(inner),
            rule: Mutex::new(None),
            log: Arc::new(Mutex::new(Vec::new())),
            cancel: None,
            served: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Damage the next `times` opens whose path contains `path`.
    pub fn fault(self, path: &str, fault: Fault, times: usize) -> Self {
        *self.rule.lock().unwrap() = Some((path.to_owned(), fault, times));
        self
    }

    pub fn with_cancel(mut self, flag: basalt_updater::engine::CancelFlag) -> Self {
        self.cancel = Some(flag);
        self
    }

    pub fn opens(&self) -> Vec<Opened> {
        self.log.lock().unwrap().clone()
    }
}

struct Damaged {
    inner: Box<dyn Read + Send>,
    fault: Option<Fault>,
    /// Offset of the body's first byte in the file.
    base: u64,
    pos: u64,
    location: String,
    extra_left: u64,
    cancel: Option<basalt_updater::engine::CancelFlag>,
    served: Arc<AtomicUsize>,
}

impl Read for Damaged {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut limit = buf.len();
        match self.fault {
            Some(Fault::DropAfter(n)) => {
                if self.pos >= n {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        SourceError::Transport {
                            location: self.location.clone(),
                            detail: "connection reset by peer".into(),
                        },
                    ));
                }
                limit = limit.min((n - self.pos) as usize);
            }
            Some(Fault::TruncateAt(n)) => {
                if self.pos >= n {
                    return Ok(0);
                }
                limit = limit.min((n - self.pos) as usize);
            }
            Some(Fault::CancelAfter(n)) if self.pos >= n => {
                if let Some(c) = &self.cancel {
                    c.cancel();
                }
            }
            _ => {}
        }
        let got = self.inner.read(&mut buf[..limit])?;
        if got == 0 {
            if let Some(Fault::Extra(_)) = self.fault {
                let n = (self.extra_left as usize).min(buf.len());
                buf[..n].fill(0x5a);
                self.extra_left -= n as u64;
                return Ok(n);
            }
            return Ok(0);
        }
        if let Some(Fault::FlipAt(at)) = self.fault {
            let (start, end) = (self.base + self.pos, self.base + self.pos + got as u64);
            if (start..end).contains(&at) {
                buf[(at - start) as usize] ^= 0x40;
            }
        }
        self.pos += got as u64;
        self.served.fetch_add(got, Ordering::Relaxed);
        Ok(got)
    }
}

impl Source for FaultySource {
    fn open(
        &self,
        path: &str,
        range: Option<ByteRange>,
        expected_len: Option<u64>,
    ) -> Result<Box<dyn Read + Send>, SourceError> {
        let fault = {
            let mut rule = self.rule.lock().unwrap();
            match rule.as_mut() {
                Some((p, f, n)) if *n > 0 && path.contains(p.as_str()) => {
                    *n -= 1;
                    Some(*f)
                }
                _ => None,
            }
        };
        self.log.lock().unwrap().push(Opened {
            path: path.to_owned(),
            range,
            faulted: fault.is_some(),
        });
        if fault == Some(Fault::NotFound) {
            return Err(SourceError::NotFound {
                location: self.location(path),
            });
        }
        // Length faults must get past the inner source's own length checks.
        let pass_expected = match fault {
            Some(Fault::TruncateAt(_)) | Some(Fault::Extra(_)) => None,
            _ => expected_len,
        };
        let inner = self.inner.open(path, range, pass_expected)?;
        Ok(Box::new(Damaged {
            inner,
            fault,
            base: range.map_or(0, |r| r.offset),
            pos: 0,
            location: self.location(path),
            extra_left: match fault {
                Some(Fault::Extra(n)) => n,
                _ => 0,
            },
            cancel: self.cancel.clone(),
            served: self.served.clone(),
        }))
    }

    fn location(&self, path: &str) -> String {
        self.inner.location(path)
    }
}
