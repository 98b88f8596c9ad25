//! The journal: the append-only files a commit writes its records to, before the
//! maintenance thread moves them into the SQLite archive.
//!
//! A commit is one `write` of its group of records to the open journal file (and, with
//! `synchronous = full`, one `fdatasync`): no page of a B-tree, no lock of SQLite's
//! WAL-index, which together cost a third of the latency the bus added to a call. Files
//! are numbered (`<archive>.journal.0000000001`, ...); the maintenance thread switches the
//! writer to a new file (created beforehand, off the commit path), moves the closed ones
//! into the archive in one transaction, and deletes them. Opening the log moves whatever
//! files a stopped or killed bus left.
//!
//! A record is its hashed content (see [`AuditRecord::content`]) followed by its
//! `prev_hash` and `hash`, every field length-prefixed (`len:value\n`), and one more
//! `\n`. A write cut short (a crash in the middle of one) leaves a torn record at the end of
//! the last file, which belonged to a call never answered: it is ignored. Anything else
//! that does not parse or does not chain is damage, reported with the file and the record.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{AuditRecord, Decision, Phase};

/// Fields of a record in a journal: the 17 of its content, then `prev_hash` and `hash`.
const FIELDS: usize = 19;

/// Appends `s` as one field: its length in decimal, `:`, the bytes, `\n`.
pub(super) fn put(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(s.as_bytes());
    out.push(b'\n');
}

/// Appends `r` in the journal's format.
pub(super) fn encode(r: &AuditRecord, out: &mut Vec<u8>) {
    r.content_into(out);
    put(out, &r.prev_hash);
    put(out, &r.hash);
    out.push(b'\n');
}

/// What reading a journal's bytes found.
#[derive(Debug, Default)]
pub(super) struct Parsed {
    pub records: Vec<AuditRecord>,
    /// Bytes after the last whole record that do not make one (a write cut short).
    pub torn: bool,
    /// Where the bytes stop making records: (byte offset, what is wrong).
    pub damage: Option<(usize, String)>,
}

/// Parses a journal's bytes. A record that runs past the end is `torn`; one that cannot
/// be a record is `damage` (the records before it are kept).
pub(super) fn parse(bytes: &[u8]) -> Parsed {
    let mut p = Parsed::default();
    let mut at = 0;
    while at < bytes.len() {
        match record_at(bytes, at) {
            Ok(Some((r, next))) => {
                p.records.push(r);
                at = next;
            }
            Ok(None) => {
                p.torn = true;
                break;
            }
            Err(why) => {
                p.damage = Some((at, why));
                break;
            }
        }
    }
    p
}

/// The record starting at `at` and where the next one starts; `None` when the bytes end
/// inside it.
fn record_at(b: &[u8], mut at: usize) -> Result<Option<(AuditRecord, usize)>, String> {
    let mut f: Vec<&str> = Vec::with_capacity(FIELDS);
    for i in 0..FIELDS {
        let Some(colon) = b[at..].iter().take(12).position(|&c| c == b':') else {
            return if b.len() - at < 12 && b[at..].iter().all(u8::is_ascii_digit) {
                Ok(None)
            } else {
                Err(format!("field {} has no length", i + 1))
            };
        };
        let len: usize = std::str::from_utf8(&b[at..at + colon])
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("field {} has a bad length", i + 1))?;
        let start = at + colon + 1;
        let end = start + len;
        if end >= b.len() {
            return Ok(None);
        }
        if b[end] != b'\n' {
            return Err(format!("field {} is not terminated", i + 1));
        }
        f.push(std::str::from_utf8(&b[start..end]).map_err(|_| format!("field {} is not UTF-8", i + 1))?);
        at = end + 1;
    }
    match b.get(at) {
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err("a record does not end where its fields do".into()),
    }
    let num = |i: usize| -> Result<i64, String> {
        f[i].parse().map_err(|_| format!("field {} is not a number: {:?}", i + 1, f[i]))
    };
    let unsigned = |i: usize| -> Result<u64, String> {
        f[i].parse().map_err(|_| format!("field {} is not a number: {:?}", i + 1, f[i]))
    };
    let r = AuditRecord {
        seq: unsigned(0)?,
        phase: Phase::parse(f[1]),
        call_seq: unsigned(2)?,
        message_id: f[3].into(),
        correlation_id: f[4].into(),
        caller: f[5].into(),
        method: f[6].into(),
        subject: f[7].into(),
        token_ids: f[8].into(),
        decision: Decision::parse(f[9]),
        reason: f[10].into(),
        grpc_status: num(11)? as i32,
        received_at_us: num(12)?,
        duration_us: unsigned(13)?,
        request_bytes: unsigned(14)?,
        response_bytes: unsigned(15)?,
        trace_id: f[16].into(),
        prev_hash: f[17].into(),
        hash: f[18].into(),
    };
    Ok(Some((r, at + 1)))
}

/// The file beside `archive` whose name is the archive's followed by `suffix`.
fn beside(archive: &Path, suffix: &str) -> PathBuf {
    let mut name = archive.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    archive.with_file_name(name)
}

/// Journal file number `number` of the archive at `archive`.
pub(super) fn file_of(archive: &Path, number: u64) -> PathBuf {
    beside(archive, &format!(".journal.{number:010}"))
}

/// The lock file of the log whose archive is `archive`.
pub(super) fn lock_file(archive: &Path) -> PathBuf {
    beside(archive, ".lock")
}

/// The journal files of `archive`, oldest first.
pub(super) fn list(archive: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let dir = match archive.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let prefix = format!("{}.journal.", archive.file_name().unwrap_or_default().to_string_lossy());
    let mut out = vec![];
    let entries = match std::fs::read_dir(&dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        r => r?,
    };
    for e in entries {
        let e = e?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if let Some(number) = name.strip_prefix(&prefix).and_then(|g| g.parse::<u64>().ok()) {
            out.push((number, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The open journal file a commit appends to.
pub(super) struct Journal {
    file: File,
    pub number: u64,
    /// Bytes written and acknowledged.
    pub len: u64,
    /// Set when a failed append could not be undone: the file may end in a torn record,
    /// so nothing more is appended to it.
    broken: bool,
}

impl Journal {
    /// Creates journal file `number`. With `durable`, its directory entry is synced too, so
    /// that a power cut cannot lose the file whose records were acknowledged.
    pub fn create(archive: &Path, number: u64, durable: bool) -> io::Result<Journal> {
        let path = file_of(archive, number);
        let file = OpenOptions::new().create_new(true).append(true).open(&path)?;
        if durable
            && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        {
            File::open(dir)?.sync_all()?;
        }
        Ok(Journal { file, number, len: 0, broken: false })
    }

    /// Waits until what was written is on disk.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Appends a group of encoded records in one write; with `durable`, waits until they are
    /// on disk. On failure the file is cut back to where it was, so that it never holds a
    /// record that was not acknowledged in front of one that was.
    pub fn append(&mut self, bytes: &[u8], durable: bool) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::other("an earlier write failed and could not be undone"));
        }
        let r = self
            .file
            .write_all(bytes)
            .and_then(|()| if durable { self.file.sync_data() } else { Ok(()) });
        match r {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                if self.file.set_len(self.len).is_err() {
                    self.broken = true;
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::GENESIS;

    fn record(seq: u64, prev: &str) -> AuditRecord {
        let e = crate::audit::Entry {
            message_id: format!("m{seq}"),
            caller: "sdu".into(),
            method: "/kz.gov.gbdfl.v1.PersonRegistry/GetPerson".into(),
            subject: "900515300018,800101300019".into(),
            token_ids: "t:1".into(),
            allowed: true,
            reason: "COMPLETED\nwith: a colon".into(),
            grpc_status: 0,
            received_at_us: -5,
            duration_us: 7,
            whole: true,
            ..Default::default()
        };
        AuditRecord::from_entry(e, seq, prev)
    }

    fn two() -> (Vec<AuditRecord>, Vec<u8>) {
        let a = record(1, GENESIS);
        let b = record(2, &a.hash);
        let mut bytes = vec![];
        encode(&a, &mut bytes);
        encode(&b, &mut bytes);
        (vec![a, b], bytes)
    }

    #[test]
    fn records_read_back_as_written() {
        let (recs, bytes) = two();
        let p = parse(&bytes);
        assert_eq!(p.records, recs);
        assert!(!p.torn && p.damage.is_none());
    }

    #[test]
    fn a_write_cut_short_is_torn_not_damage() {
        let (recs, bytes) = two();
        let first_len = {
            let mut b = vec![];
            encode(&recs[0], &mut b);
            b.len()
        };
        for cut in first_len + 1..bytes.len() {
            let p = parse(&bytes[..cut]);
            assert_eq!(p.records, recs[..1], "cut at {cut}");
            assert!(p.torn && p.damage.is_none(), "cut at {cut}: {:?}", p.damage);
        }
    }

    #[test]
    fn bytes_that_are_no_record_are_damage() {
        let (recs, mut bytes) = two();
        let second = bytes.len() - {
            let mut b = vec![];
            encode(&recs[1], &mut b);
            b.len()
        };
        bytes[second + 1] = b'x';
        let p = parse(&bytes);
        assert_eq!(p.records, recs[..1]);
        let (at, why) = p.damage.unwrap();
        assert_eq!(at, second);
        assert!(why.contains("length"), "{why}");
    }

    #[test]
    fn files_are_listed_in_order_and_appends_undo_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.sqlite");
        let mut j = Journal::create(&archive, 2, true).unwrap();
        Journal::create(&archive, 10, false).unwrap();
        std::fs::write(dir.path().join("a.sqlite.journal.x"), b"").unwrap();
        std::fs::write(dir.path().join("b.sqlite.journal.0000000001"), b"").unwrap();
        let gens: Vec<u64> = list(&archive).unwrap().into_iter().map(|(g, _)| g).collect();
        assert_eq!(gens, vec![2, 10]);
        assert!(Journal::create(&archive, 2, false).is_err(), "a file is never reused");
        j.append(b"abc", true).unwrap();
        assert_eq!(j.len, 3);
        // A file that refuses writes: the append fails and the length stays.
        let ro = File::open(file_of(&archive, 10)).unwrap();
        let mut bad = Journal { file: ro, number: 10, len: 0, broken: false };
        assert!(bad.append(b"abc", false).is_err());
        assert_eq!(bad.len, 0);
    }
}
