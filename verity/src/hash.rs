//! Hashing one level of the tree on several threads.
//!
//! The input (data blocks, or the blocks of the level below) is cut into chunks of
//! [`CHUNK_BLOCKS`] blocks; each chunk's digests fill exactly `CHUNK_BLOCKS / 128` output hash
//! blocks, so the output buffer splits into disjoint `&mut` chunks handed out through a
//! mutex-guarded iterator (dynamic load balancing, no unsafe). Input is either already in
//! memory (an upper level: hashed in place) or read with `pread` into one 256 KiB buffer per
//! worker: memory is bounded by the tree plus one buffer
//! per thread, never by the data.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use ring::digest::{Context, SHA256};

use crate::error::Result;
use crate::geometry::{BLOCK_SIZE, DIGEST_SIZE, HASHES_PER_BLOCK};

/// Input blocks per work item (2 MiB): large enough to make the queue lock rare, small enough
/// to balance two to a few dozen threads on small trees.
pub(crate) const CHUNK_BLOCKS: u64 = 512;

/// Blocks per read: 256 KiB, small enough that what a read copies from the page cache is still
/// in the core's L2 cache when it is hashed (a 2 MiB read would be evicted to L3 first).
const READ_BLOCKS: u64 = 64;

/// Reads `buf.len() / 4096` consecutive input blocks starting at block `first`.
pub(crate) type ReadBlocks<'a> = dyn Fn(u64, &mut [u8]) -> Result<()> + Sync + 'a;

/// Number of worker threads for a request of `threads` (0 = one per available core).
pub(crate) fn thread_count(threads: usize) -> usize {
    if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    }
}

/// Bytes of output (whole hash blocks) holding the digests of `input_blocks` blocks.
pub(crate) fn level_bytes(input_blocks: u64) -> usize {
    (input_blocks.div_ceil(HASHES_PER_BLOCK) * BLOCK_SIZE) as usize
}

/// A SHA-256 context with the salt already absorbed (format version 1: salt first).
pub(crate) fn salted(salt: &[u8]) -> Context {
    let mut ctx = Context::new(&SHA256);
    ctx.update(salt);
    ctx
}

/// `sha256(salt || block)`.
pub(crate) fn digest_block(salted: &Context, block: &[u8]) -> [u8; DIGEST_SIZE] {
    let mut ctx = salted.clone();
    ctx.update(block);
    let mut out = [0u8; DIGEST_SIZE];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Where the input blocks come from.
pub(crate) enum Input<'a> {
    /// All input blocks, contiguous in memory (an upper level of the tree).
    Memory(&'a [u8]),
    /// Positional reads into a per-worker buffer.
    Read(&'a ReadBlocks<'a>),
}

/// Fill `out` (zeroed, [`level_bytes`]`(input_blocks)` long) with the salted digests of the
/// `input_blocks` blocks of `input`, packed 32 bytes apart; unused tail bytes stay zero.
pub(crate) fn hash_level(
    input_blocks: u64,
    out: &mut [u8],
    salt: &[u8],
    threads: usize,
    input: &Input<'_>,
) -> Result<()> {
    debug_assert_eq!(out.len(), level_bytes(input_blocks));
    if let Input::Memory(mem) = input {
        debug_assert!(mem.len() as u64 >= input_blocks * BLOCK_SIZE);
    }
    let chunk_out = CHUNK_BLOCKS as usize * DIGEST_SIZE;
    let chunks = input_blocks.div_ceil(CHUNK_BLOCKS);
    let threads = thread_count(threads).min(chunks as usize).max(1);
    let base = salted(salt);
    let queue = Mutex::new(out.chunks_mut(chunk_out).enumerate());
    let failed = AtomicBool::new(false);
    let bs = BLOCK_SIZE as usize;

    let hash_into = |blocks: &[u8], slots: &mut [u8]| {
        for (block, slot) in blocks
            .chunks_exact(bs)
            .zip(slots.chunks_exact_mut(DIGEST_SIZE))
        {
            slot.copy_from_slice(&digest_block(&base, block));
        }
    };
    let worker = || -> Result<()> {
        let mut buf = match input {
            Input::Memory(_) => Vec::new(),
            Input::Read(_) => vec![0u8; READ_BLOCKS as usize * bs],
        };
        loop {
            if failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            // A poisoned lock means another worker panicked; its panic propagates from
            // the scope, so the iterator state is still fine to use here.
            let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
            let Some((index, out_chunk)) = next else {
                return Ok(());
            };
            let first = index as u64 * CHUNK_BLOCKS;
            let count = CHUNK_BLOCKS.min(input_blocks - first);
            match input {
                Input::Memory(mem) => {
                    let start = first as usize * bs;
                    hash_into(&mem[start..start + count as usize * bs], out_chunk);
                }
                Input::Read(read) => {
                    let mut done = 0u64;
                    while done < count {
                        let n = READ_BLOCKS.min(count - done);
                        let blocks = &mut buf[..n as usize * bs];
                        if let Err(e) = read(first + done, blocks) {
                            failed.store(true, Ordering::Relaxed);
                            return Err(e);
                        }
                        hash_into(blocks, &mut out_chunk[done as usize * DIGEST_SIZE..]);
                        done += n;
                    }
                }
            }
        }
    };

    if threads == 1 {
        return worker();
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(worker)).collect();
        let mut first_err = None;
        for h in handles {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        first_err.map_or(Ok(()), Err)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_equals_serial_and_plain_sha256() {
        // 1,300 blocks: several chunks, a partial last chunk and a partial last hash block.
        let blocks = 1300u64;
        let input: Vec<u8> = (0..blocks * BLOCK_SIZE)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let salt = b"salty";
        let mut serial = vec![0u8; level_bytes(blocks)];
        let mut parallel = serial.clone();
        let mem = Input::Memory(&input);
        hash_level(blocks, &mut serial, salt, 1, &mem).expect("serial");
        hash_level(blocks, &mut parallel, salt, 3, &mem).expect("parallel");
        assert_eq!(serial, parallel);
        // Through positional reads (several 256 KiB reads per chunk, a short last one).
        let read = |first: u64, buf: &mut [u8]| -> Result<()> {
            let start = (first * BLOCK_SIZE) as usize;
            buf.copy_from_slice(&input[start..start + buf.len()]);
            Ok(())
        };
        let mut by_read = vec![0u8; level_bytes(blocks)];
        hash_level(blocks, &mut by_read, salt, 2, &Input::Read(&read)).expect("read");
        assert_eq!(serial, by_read);
        // Entry 1299 is sha256(salt || block 1299), computed with one-shot ring::digest.
        let mut cat = salt.to_vec();
        cat.extend_from_slice(&input[1299 * 4096..1300 * 4096]);
        let expect = ring::digest::digest(&SHA256, &cat);
        assert_eq!(&serial[1299 * 32..1300 * 32], expect.as_ref());
        assert!(serial[1300 * 32..].iter().all(|&b| b == 0));
    }
}
