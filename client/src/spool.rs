//! The durable spool: an append-only file of accepted events, written before `enqueue()`
//! returns and read back by the delivery task, so a crash of the calling process or a long
//! outage loses nothing.
//!
//! `spool.jsonl` holds one record per line; `spool.ack` holds the byte offset up to which
//! every record is settled (delivered, rejected or dead-lettered). A record past that offset
//! is sent again on start with its original idempotency key, so the server stores it once.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::event::Event;

/// Compact the file once this much of it is settled.
const COMPACT_AT: u64 = 16 << 20;

/// One line of the spool.
#[derive(Serialize)]
struct RecordOut<'a> {
    at: DateTime<Utc>,
    event: &'a Event,
}

#[derive(Deserialize)]
struct RecordIn {
    at: DateTime<Utc>,
    event: Event,
}

/// A record read back: the event, when it was accepted, and where its line ends.
pub(crate) struct Spooled {
    pub event: Event,
    pub accepted_at: DateTime<Utc>,
    pub end: u64,
}

/// Records `read` could not parse.
#[derive(Default)]
pub(crate) struct Unreadable {
    pub count: u64,
    /// Where the last of them ends.
    pub end: u64,
}

struct Files {
    log: File,
    ack: File,
    /// Bytes written to `log`.
    written: u64,
    /// What compactions took off the front: offsets outside this module are counted from
    /// the spool's start, so they never move; the file's own start from here.
    base: u64,
    /// Offset up to which every record is settled.
    acked: u64,
}

/// The spool directory, shared by the callers' tasks (appending) and the delivery task
/// (reading, acknowledging, compacting).
pub(crate) struct Spool {
    dir: PathBuf,
    files: Mutex<Files>,
    sync: bool,
    max_bytes: u64,
    compact_at: u64,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`; also says how many records it holds that
    /// are not settled (left by an earlier run).
    pub fn open(dir: &Path, sync: bool, max_bytes: u64) -> Result<(Self, u64)> {
        fs::create_dir_all(dir).map_err(spool_error)?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(dir.join("spool.jsonl"))
            .map_err(spool_error)?;
        let ack = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(dir.join("spool.ack"))
            .map_err(spool_error)?;
        // A record torn by a crash mid-write (its enqueue() never returned) is cut off, so
        // the next record starts on a line of its own.
        let written = whole_lines(&log, log.metadata().map_err(spool_error)?.len())?;
        log.set_len(written).map_err(spool_error)?;
        let text = fs::read_to_string(dir.join("spool.ack")).unwrap_or_default();
        // A missing, torn or stale offset (past the end, left by a crash mid-compaction)
        // means "replay everything": the server drops what it already has.
        let acked = text
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|&a| a <= written)
            .unwrap_or(0);
        let backlog = count_lines(&log, acked, written)?;
        let spool = Spool {
            dir: dir.to_owned(),
            files: Mutex::new(Files {
                log,
                ack,
                written,
                acked,
                base: 0,
            }),
            sync,
            max_bytes,
            compact_at: COMPACT_AT,
        };
        Ok((spool, backlog))
    }

    /// Where replay starts: the first record not known to be settled.
    pub fn acked(&self) -> u64 {
        let files = self.lock();
        files.base + files.acked
    }

    /// One record as a line, made before taking the lock.
    pub fn encode(event: &Event, at: DateTime<Utc>, line: &mut Vec<u8>) -> Result<()> {
        line.clear();
        serde_json::to_writer(&mut *line, &RecordOut { at, event })
            .map_err(|e| Error::Spool(e.to_string()))?;
        line.push(b'\n');
        Ok(())
    }

    /// Appends one encoded record; `BufferFull` when the unsettled spool would outgrow its
    /// bound.
    pub fn append(&self, line: &[u8]) -> Result<()> {
        let mut files = self.lock();
        if files.written.saturating_sub(files.acked) + line.len() as u64 > self.max_bytes {
            return Err(Error::BufferFull);
        }
        let written = files.written;
        let result = files.log.write_all(line).and_then(|()| match self.sync {
            true => files.log.sync_data(),
            false => Ok(()),
        });
        if let Err(e) = result {
            // A record half written (a full disk) is cut off, so the next one starts whole.
            let _ = files.log.set_len(written);
            return Err(spool_error(e));
        }
        files.written += line.len() as u64;
        Ok(())
    }

    /// Reads the records between `from` and what is written now, at most `max` of them,
    /// and says how many unreadable ones it passed over (and where the last ended).
    pub fn read(&self, from: u64, max: usize) -> Result<(Vec<Spooled>, Unreadable)> {
        // The handle is the file as it is now: a compaction meanwhile renames a new file in
        // its place and leaves this one, and its offsets, as they were.
        let (file, end, base) = {
            let files = self.lock();
            let file = files.log.try_clone().map_err(spool_error)?;
            (file, files.written, files.base)
        };
        let mut offset = from.saturating_sub(base);
        let mut reader = BufReader::new(file);
        reader.seek(SeekFrom::Start(offset)).map_err(spool_error)?;
        let mut records = Vec::new();
        let mut unreadable = Unreadable::default();
        let mut line = String::new();
        while offset < end && records.len() < max {
            line.clear();
            let n = reader.read_line(&mut line).map_err(spool_error)?;
            if n == 0 || !line.ends_with('\n') {
                break; // the file was cut short under us: nothing more to read
            }
            offset += n as u64;
            match serde_json::from_str::<RecordIn>(&line) {
                Ok(record) => records.push(Spooled {
                    event: record.event,
                    accepted_at: record.at,
                    end: base + offset,
                }),
                Err(e) => {
                    tracing::error!(offset, record = %line.trim_end(), "an unreadable spool record is lost: {e}");
                    unreadable.count += 1;
                    unreadable.end = base + offset;
                }
            }
        }
        Ok((records, unreadable))
    }

    /// Marks every record before `offset` settled.
    pub fn ack(&self, offset: u64) -> Result<()> {
        let mut files = self.lock();
        let acked = offset.saturating_sub(files.base).min(files.written);
        if acked <= files.acked {
            return Ok(()); // an acknowledgement overtaken by a later one
        }
        files.acked = acked;
        if files.acked == files.written {
            // Drained: start over. The offset is cleared first, so a crash in between
            // replays (harmlessly) instead of skipping.
            write_ack(&files.ack, 0, self.sync)?;
            files.log.set_len(0).map_err(spool_error)?;
            files.base += files.written;
            files.written = 0;
            files.acked = 0;
            return Ok(());
        }
        // Only once the settled part outweighs the tail, so each byte is copied a bounded
        // number of times however long the backlog.
        if files.acked >= self.compact_at && files.acked >= files.written - files.acked {
            return self.compact(&mut files);
        }
        write_ack(&files.ack, files.acked, self.sync)
    }

    /// Keeps only the unsettled tail of a long file: written to a new file (synced, with
    /// `sync`), the offset cleared, then renamed over the old one. The handle appends go to is
    /// the new file's own, so it stays right after the rename.
    fn compact(&self, files: &mut Files) -> Result<()> {
        let mut tail = vec![0; (files.written - files.acked) as usize];
        files
            .log
            .read_exact_at(&mut tail, files.acked)
            .map_err(spool_error)?;
        let fresh = self.dir.join("spool.jsonl.new");
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&fresh)
            .map_err(spool_error)?;
        log.set_len(0).map_err(spool_error)?; // left by a compaction that failed
        log.write_all(&tail).map_err(spool_error)?;
        if self.sync {
            log.sync_all().map_err(spool_error)?;
        }
        write_ack(&files.ack, 0, self.sync)?;
        fs::rename(&fresh, self.dir.join("spool.jsonl")).map_err(spool_error)?;
        files.log = log;
        files.base += files.acked;
        files.written -= files.acked;
        files.acked = 0;
        if self.sync {
            File::open(&self.dir)
                .and_then(|dir| dir.sync_all())
                .map_err(spool_error)?;
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Files> {
        self.files
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Where the last complete line of the first `len` bytes ends.
fn whole_lines(file: &File, len: u64) -> Result<u64> {
    let mut chunk = vec![0; 1 << 16];
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let part = &mut chunk[..(end - start) as usize];
        file.read_exact_at(part, start).map_err(spool_error)?;
        if let Some(i) = part.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// Records between two offsets, read a chunk at a time.
fn count_lines(file: &File, mut from: u64, to: u64) -> Result<u64> {
    let mut chunk = vec![0; 1 << 20];
    let mut lines = 0;
    while from < to {
        let len = chunk.len().min((to - from) as usize);
        file.read_exact_at(&mut chunk[..len], from)
            .map_err(spool_error)?;
        lines += chunk[..len].iter().filter(|&&b| b == b'\n').count() as u64;
        from += len as u64;
    }
    Ok(lines)
}

fn write_ack(file: &File, offset: u64, sync: bool) -> Result<()> {
    // Fixed width, so a shorter number never leaves digits of a longer one behind.
    file.write_all_at(format!("{offset:020}\n").as_bytes(), 0)
        .map_err(spool_error)?;
    if sync {
        file.sync_data().map_err(spool_error)?;
    }
    Ok(())
}

fn spool_error(e: std::io::Error) -> Error {
    Error::Spool(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Actor;

    fn event(i: usize) -> Event {
        Event::new(Actor::user(format!("u-{i}")), "project.created")
    }

    fn add(spool: &Spool, i: usize) -> Result<()> {
        let mut line = Vec::new();
        Spool::encode(&event(i), Utc::now(), &mut line)?;
        spool.append(&line)
    }

    fn ids(records: &[Spooled]) -> Vec<String> {
        records.iter().map(|r| r.event.actor.id.clone()).collect()
    }

    #[test]
    fn settled_records_are_compacted_away_and_the_rest_replays() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut spool, backlog) = Spool::open(dir.path(), false, 1 << 20).expect("opens");
        assert_eq!(backlog, 0);
        spool.compact_at = 1;
        for i in 0..10 {
            add(&spool, i).expect("appends");
        }
        let records = spool.read(0, 100).expect("reads").0;
        assert_eq!(
            ids(&records),
            (0..10).map(|i| format!("u-{i}")).collect::<Vec<_>>()
        );
        assert_eq!(ids(&spool.read(0, 3).expect("reads").0).len(), 3);

        // Four settled: the file keeps the other six, and offsets stay what they were.
        spool.ack(records[3].end).expect("acks");
        assert_eq!(spool.acked(), records[3].end);
        let rest = spool.read(records[3].end, 100).expect("reads").0;
        assert_eq!(rest[0].end, records[4].end);
        assert_eq!(
            ids(&rest),
            (4..10).map(|i| format!("u-{i}")).collect::<Vec<_>>()
        );

        // A restart replays the six; a torn last line (a crash mid-write) is cut off, and
        // the next record is whole.
        drop(spool);
        let mut log = OpenOptions::new()
            .append(true)
            .open(dir.path().join("spool.jsonl"))
            .expect("opens");
        log.write_all(b"{\"at\":").expect("writes");
        let (spool, backlog) = Spool::open(dir.path(), false, 1 << 20).expect("reopens");
        assert_eq!(backlog, 6);
        add(&spool, 10).expect("appends");
        let replay = spool.read(spool.acked(), 100).expect("reads").0;
        assert_eq!(
            ids(&replay),
            (4..11).map(|i| format!("u-{i}")).collect::<Vec<_>>()
        );

        // All settled: the file starts over.
        let end = replay.last().expect("records").end;
        spool.ack(end).expect("acks");
        assert_eq!(spool.read(end, 100).expect("reads").0.len(), 0);
        add(&spool, 11).expect("appends");
        let after = spool.read(end, 100).expect("reads").0;
        assert_eq!(ids(&after), ["u-11"]);
    }

    #[test]
    fn a_full_spool_refuses_records() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (spool, _) = Spool::open(dir.path(), true, 300).expect("opens");
        add(&spool, 1).expect("fits");
        let full = add(&spool, 2).and(add(&spool, 3));
        assert!(matches!(full, Err(Error::BufferFull)), "{full:?}");
    }
}
