//! JSON Lines dumps of the simulation as its registries serve it now: one file per
//! registry, plus the SMS sent and the answers received. Lines are in a deterministic
//! order, so two simulations with the same seed give byte-identical files.
//!
//! One writer, [`export_to`], serialises a snapshot of the state into an [`ExportTarget`]:
//! a directory ([`DirTarget`], behind [`export_jsonl`]) or the chunks of
//! `kz.shep.sim.v1.Scenario/Export` ([`stream`]). [`receive`] writes such a stream into a
//! directory ([`receive_into`]: into any target), checking each file against the totals the
//! node sent, so that a live export and an offline one of the same state are the same bytes.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{Stream, StreamExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use shep_proto::elicense::{PermitStatus, holder, holder_name};
use shep_proto::gbdfl::{LegalCapacity, LifeStatus, MissingStatus, Sex};
use shep_proto::gbdul::{LegalForm, OrganizationStatus};
use shep_proto::shep::{Address, Date, FullName, LocalizedText};
use shep_proto::sim::ExportChunk;
use shep_proto::sim::export_chunk::Part;
use shep_proto::zags::ActKind;
use tonic::{Code, Status};

use crate::catalog::{CONSUMERS, SCOPES};
use crate::services::common::Feed;
use crate::sim::Simulation;
use crate::time::{Day, rfc3339};
use crate::views;

/// The files of an export, in the order they are written.
pub const FILES: [&str; 7] =
    ["gbd-ul.jsonl", "gbd-fl.jsonl", "zags.jsonl", "e-license.jsonl", "bmg.jsonl", "kdp.jsonl", "sms.jsonl"];

/// Bytes handed to the target at a time (whole lines, so a little more).
pub const CHUNK_BYTES: usize = 64 * 1024;

/// Chunks of a streamed export in flight between the writer and the connection.
const CHUNKS_IN_FLIGHT: usize = 4;

/// One file written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedFile {
    /// The file name ("gbd-fl.jsonl").
    pub name: String,
    pub lines: u64,
    pub bytes: u64,
    /// SHA-256 of the content, hex.
    pub sha256: String,
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    pub dir: PathBuf,
    pub files: Vec<ExportedFile>,
}

impl ExportSummary {
    /// One hash over every file (name and content hash), to compare two exports.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for f in &self.files {
            h.update(f.name.as_bytes());
            h.update(f.sha256.as_bytes());
        }
        hex(&h.finalize())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The totals of a file as its bytes go by: lines, bytes, SHA-256.
#[derive(Default)]
pub struct Tally {
    hash: Sha256,
    lines: u64,
    bytes: u64,
}

impl Tally {
    pub fn update(&mut self, bytes: &[u8]) {
        self.hash.update(bytes);
        self.lines += bytes.iter().filter(|b| **b == b'\n').count() as u64;
        self.bytes += bytes.len() as u64;
    }

    pub fn finish(self, name: &str) -> ExportedFile {
        ExportedFile { name: name.to_owned(), lines: self.lines, bytes: self.bytes, sha256: hex(&self.hash.finalize()) }
    }
}

/// Where an export goes: files one after another, each begun, written, then ended.
pub trait ExportTarget {
    /// Starts the file `name`.
    fn begin(&mut self, name: &str) -> std::io::Result<()>;
    /// The next bytes of the current file (whole lines).
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()>;
    /// The current file is complete.
    fn end(&mut self, file: &ExportedFile) -> std::io::Result<()>;
}

/// A directory that receives an export: each file is written as `NAME.part` and renamed to
/// `NAME` by [`DirTarget::commit`] once every file is complete. Dropped without a commit,
/// it removes its `.part` files, so a failed export leaves no half file posing as complete
/// (and leaves the files of an earlier export as they were).
pub struct DirTarget {
    dir: PathBuf,
    current: Option<(PathBuf, BufWriter<File>)>,
    /// Complete files: the part and the final name.
    done: Vec<(PathBuf, PathBuf)>,
    names: HashSet<String>,
}

/// Refuses anything but a plain file name ending in `.jsonl` (a stream could name any path).
fn check_file_name(name: &str) -> std::io::Result<()> {
    let plain = name.strip_suffix(".jsonl").is_some_and(|stem| {
        !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    });
    if plain {
        Ok(())
    } else {
        Err(std::io::Error::new(ErrorKind::InvalidInput, format!("{name:?} is not an export file name")))
    }
}

impl DirTarget {
    /// Creates `dir` when missing.
    pub fn create(dir: &Path) -> std::io::Result<DirTarget> {
        std::fs::create_dir_all(dir)?;
        Ok(DirTarget { dir: dir.to_owned(), current: None, done: Vec::new(), names: HashSet::new() })
    }

    fn part(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.part"))
    }

    /// Renames every complete file to its name.
    pub fn commit(mut self) -> std::io::Result<()> {
        if let Some((part, _)) = &self.current {
            return Err(std::io::Error::other(format!("{} was not ended", part.display())));
        }
        for (part, path) in std::mem::take(&mut self.done) {
            std::fs::rename(&part, &path)?;
        }
        Ok(())
    }
}

impl ExportTarget for DirTarget {
    fn begin(&mut self, name: &str) -> std::io::Result<()> {
        check_file_name(name)?;
        if self.current.is_some() {
            return Err(std::io::Error::other(format!("{name} begun before the previous file ended")));
        }
        if !self.names.insert(name.to_owned()) {
            return Err(std::io::Error::other(format!("{name} twice in one export")));
        }
        let part = self.part(name);
        let out = BufWriter::new(File::create(&part)?);
        self.current = Some((part, out));
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.current {
            Some((_, out)) => out.write_all(bytes),
            None => Err(std::io::Error::other("bytes outside a file")),
        }
    }

    fn end(&mut self, file: &ExportedFile) -> std::io::Result<()> {
        let Some((part, out)) = self.current.take() else {
            return Err(std::io::Error::other(format!("{} ended but not begun", file.name)));
        };
        let written = out.into_inner().map_err(|e| e.into_error())?;
        written.sync_all()?;
        self.done.push((part, self.dir.join(&file.name)));
        Ok(())
    }
}

impl Drop for DirTarget {
    fn drop(&mut self) {
        let current = self.current.take().map(|(part, _)| part);
        for part in current.into_iter().chain(self.done.drain(..).map(|(part, _)| part)) {
            let _ = std::fs::remove_file(part);
        }
    }
}

/// One file being serialised: lines are gathered into chunks of about [`CHUNK_BYTES`].
struct FileWriter<'t, T: ExportTarget + ?Sized> {
    target: &'t mut T,
    name: &'static str,
    buf: Vec<u8>,
    tally: Tally,
}

impl<'t, T: ExportTarget + ?Sized> FileWriter<'t, T> {
    fn begin(target: &'t mut T, name: &'static str) -> std::io::Result<Self> {
        target.begin(name)?;
        Ok(FileWriter { target, name, buf: Vec::with_capacity(CHUNK_BYTES + 4096), tally: Tally::default() })
    }

    fn line(&mut self, v: &Value) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.buf, v).map_err(std::io::Error::other)?;
        self.buf.push(b'\n');
        if self.buf.len() >= CHUNK_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.tally.update(&self.buf);
            self.target.write(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<ExportedFile> {
        self.flush()?;
        let file = std::mem::take(&mut self.tally).finish(self.name);
        self.target.end(&file)?;
        Ok(file)
    }
}

fn date(d: &Option<Date>) -> Value {
    match d {
        Some(d) => json!(format!("{:04}-{:02}-{:02}", d.year, d.month, d.day)),
        None => Value::Null,
    }
}

fn name(n: &Option<FullName>) -> Value {
    match n {
        Some(n) => json!({"surname": n.surname, "name": n.name, "patronymic": n.patronymic}),
        None => Value::Null,
    }
}

fn text(t: &Option<LocalizedText>) -> Value {
    match t {
        Some(t) => json!({"ru": t.ru, "kk": t.kk}),
        None => Value::Null,
    }
}

fn address(a: &Option<Address>) -> Value {
    match a {
        Some(a) => {
            json!({"country": a.country, "region": a.region, "locality": a.locality, "street": a.street, "postal_code": a.postal_code})
        }
        None => Value::Null,
    }
}

fn enum_name<E: TryFrom<i32>>(v: i32, f: impl Fn(&E) -> &'static str) -> &'static str {
    E::try_from(v).map(|e| f(&e)).unwrap_or("UNKNOWN")
}

/// Writes the dumps into `dir` (created when missing): `gbd-ul.jsonl`, `gbd-fl.jsonl`,
/// `zags.jsonl`, `e-license.jsonl` (permits and cabinet notifications), `bmg.jsonl`,
/// `kdp.jsonl` (consents in force, changes and revocations) and `sms.jsonl` (every SMS
/// sent and every answer received by the simulated time now). The files appear only once
/// all of them are complete (see [`DirTarget`]).
pub fn export_jsonl(sim: &Simulation, dir: &Path) -> std::io::Result<ExportSummary> {
    let mut target = DirTarget::create(dir)?;
    let files = export_to(sim, &mut target)?;
    target.commit()?;
    Ok(ExportSummary { dir: dir.to_owned(), files })
}

/// Serialises the simulation into `target`, the files of [`FILES`] in that order. The state
/// is copied once under the lock (the changes only, not the generated country), with the
/// answers due by the simulated time now delivered first; the lock is not held while writing.
pub fn export_to<T: ExportTarget + ?Sized>(sim: &Simulation, target: &mut T) -> std::io::Result<Vec<ExportedFile>> {
    let c = sim.country();
    let now = sim.now();
    let today = Day::of_unix(now);
    let st = {
        let mut st = sim.state();
        st.sms.deliver_due(now);
        st.clone()
    };
    let mut files = Vec::new();

    let mut f = FileWriter::begin(target, FILES[0])?;
    for o in 0..c.orgs().len() as u32 {
        let org = views::organization(c, &st, o);
        let history: Vec<Value> = org
            .name_history
            .iter()
            .map(|h| json!({"date": date(&h.change_date), "old": text(&h.old_name), "new": text(&h.new_name)}))
            .collect();
        f.line(&json!({
            "bin": org.bin,
            "name": text(&org.name),
            "legal_form": enum_name(org.legal_form, LegalForm::as_str_name),
            "status": enum_name(org.status, OrganizationStatus::as_str_name),
            "status_date": date(&org.status_date),
            "registration_date": date(&org.registration_date),
            "address": address(&org.address),
            "first_head": org.first_head.as_ref().map(|h| json!({"iin": h.iin, "full_name": name(&h.full_name), "since": date(&h.since)})),
            "name_history": history,
        }))?;
    }
    files.push(f.finish()?);

    let mut f = FileWriter::begin(target, FILES[1])?;
    for p in 0..c.persons().len() as u32 {
        let x = views::person(c, &st, p, today);
        let court = |d: &Option<shep_proto::gbdfl::CourtDecision>| {
            d.as_ref().map(|d| {
                json!({"court": d.court, "number": d.decision_number, "date": date(&d.decision_date), "effective": date(&d.effective_date)})
            })
        };
        let residence = x
            .residence
            .as_ref()
            .filter(|r| r.permanent_abroad)
            .map(|r| json!({"country": r.country, "since": date(&r.since)}));
        let prison =
            x.imprisonment.as_ref().filter(|i| i.imprisoned).map(|i| json!({"from": date(&i.from), "to": date(&i.to)}));
        f.line(&json!({
            "iin": x.iin,
            "full_name": name(&x.full_name),
            "birth_date": date(&x.birth_date),
            "sex": enum_name(x.sex, Sex::as_str_name),
            "citizenship": x.citizenship,
            "life_status": enum_name(x.life_status, LifeStatus::as_str_name),
            "death_date": date(&x.death_date),
            "missing_status": enum_name(x.missing_status, MissingStatus::as_str_name),
            "missing_decision": court(&x.missing_decision),
            "legal_capacity": enum_name(x.legal_capacity, LegalCapacity::as_str_name),
            "capacity_decision": court(&x.capacity_decision),
            "abroad": residence,
            "imprisonment": prison,
            "address": address(&x.address),
        }))?;
    }
    files.push(f.finish()?);

    let mut f = FileWriter::begin(target, FILES[2])?;
    for (_, i) in views::acts_in(c, &st, Day(i32::MIN), Day(i32::MAX)) {
        let Some(a) = views::act(c, &st, i) else { continue };
        f.line(&json!({
            "act_id": a.act_id,
            "kind": enum_name(a.kind, ActKind::as_str_name),
            "registration_date": date(&a.registration_date),
            "subject_iin": a.subject_iin,
            "old_name": name(&a.old_name),
            "new_name": name(&a.new_name),
            "death_date": date(&a.death_date),
            "spouse_iin": a.spouse_iin,
            "parent_iin": a.parent_iin,
            "registry_office": a.registry_office,
        }))?;
    }
    files.push(f.finish()?);

    let mut f = FileWriter::begin(target, FILES[3])?;
    let total = c.permits().len() + st.permits.new_count();
    for i in 0..total as u32 {
        let Some(p) = views::permit(c, &st, i) else { continue };
        let (bin, iin) = match p.holder.as_ref().and_then(|h| h.id.as_ref()) {
            Some(holder::Id::Bin(b)) => (b.clone(), String::new()),
            Some(holder::Id::Iin(i)) => (String::new(), i.clone()),
            None => (String::new(), String::new()),
        };
        let hn = match p.holder_name.as_ref().and_then(|h| h.name.as_ref()) {
            Some(holder_name::Name::Organization(t)) => text(&Some(t.clone())),
            Some(holder_name::Name::Person(n)) => name(&Some(n.clone())),
            None => Value::Null,
        };
        f.line(&json!({
            "type": "permit",
            "number": p.number,
            "service_code": p.service_code,
            "holder_bin": bin,
            "holder_iin": iin,
            "holder_name": hn,
            "status": enum_name(p.status, PermitStatus::as_str_name),
            "issue_date": date(&p.issue_date),
            "valid_until": date(&p.valid_until),
            "replaces": p.replaces,
            "replaced_by": p.replaced_by,
        }))?;
    }
    for n in st.permits.all_notes() {
        f.line(&json!({
            "type": "cabinet_notification",
            "id": n.id,
            "holder": views::holder(c, n.holder).id.map(|id| match id { holder::Id::Bin(b) => b, holder::Id::Iin(i) => i }),
            "created_at": rfc3339(n.created_at),
            "title": n.title,
            "text": n.text,
            "permit_number": n.permit_number,
        }))?;
    }
    files.push(f.finish()?);

    let mut f = FileWriter::begin(target, FILES[4])?;
    for (i, p) in c.persons().iter().enumerate() {
        if let Some(ph) = c.phone_of(i as u32) {
            f.line(&json!({"iin": p.iin.to_string(), "phone": ph.number, "registered_at": rfc3339(ph.registered_at)}))?;
        }
    }
    files.push(f.finish()?);

    let mut f = FileWriter::begin(target, FILES[5])?;
    for (i, p) in c.persons().iter().enumerate() {
        for consumer in CONSUMERS {
            let granted: Vec<(&str, i64)> =
                SCOPES.iter().filter_map(|s| c.base_consent(i as u32, consumer, s).map(|t| (*s, t))).collect();
            if let Some(&(_, at)) = granted.first() {
                let scopes: Vec<&str> = granted.iter().map(|g| g.0).collect();
                f.line(&json!({"type": "consent", "subject": p.iin.to_string(), "consumer": consumer, "scopes": scopes, "granted_at": rfc3339(at)}))?;
            }
        }
    }
    for (s, consumer, scope, granted, at, until) in st.consents.changes() {
        f.line(&json!({"type": "change", "subject": s.to_string(), "consumer": consumer, "scope": scope, "granted": granted, "at": rfc3339(at), "valid_until": until.map(rfc3339)}))?;
    }
    for r in st.consents.revocations() {
        f.line(&json!({"type": "revocation", "subject": r.subject.to_string(), "consumer": r.consumer, "scope": r.scope, "token_ids": r.token_ids, "revoked_at": rfc3339(r.revoked_at)}))?;
    }
    files.push(f.finish()?);

    let mut f = FileWriter::begin(target, FILES[6])?;
    let outbox = st.sms.outbox();
    for s in outbox {
        f.line(&json!({
            "type": "sms",
            "sms_id": s.id,
            "case_id": s.case_id,
            "attempt": s.attempt,
            "iin": s.iin.to_string(),
            "phone": s.phone,
            "language": s.language.as_str_name(),
            "text": s.text,
            "sent_at": rfc3339(s.sent_at),
        }))?;
    }
    for a in st.sms.received() {
        let sms = outbox.get(a.sms);
        f.line(&json!({
            "type": "answer",
            "sms_id": sms.map(|s| s.id.clone()),
            "case_id": sms.map(|s| s.case_id.clone()),
            "attempt": sms.map(|s| s.attempt),
            "iin": sms.map(|s| s.iin.to_string()),
            "text": a.text,
            "received_at": rfc3339(a.received_at),
        }))?;
    }
    files.push(f.finish()?);

    Ok(files)
}

/// The chunks of `Scenario/Export` as [`export_to`] writes them, through a bounded channel.
struct ChunkSender {
    sim: Arc<Simulation>,
    tx: tokio::sync::mpsc::Sender<Result<ExportChunk, Status>>,
    file: String,
}

impl ChunkSender {
    fn send(&self, part: Part) -> std::io::Result<()> {
        if self.sim.is_closing() {
            return Err(std::io::Error::other("the node is shutting down"));
        }
        let chunk = ExportChunk { file: self.file.clone(), part: Some(part) };
        self.tx.blocking_send(Ok(chunk)).map_err(|_| std::io::Error::new(ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl ExportTarget for ChunkSender {
    fn begin(&mut self, name: &str) -> std::io::Result<()> {
        name.clone_into(&mut self.file);
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.send(Part::Data(bytes.to_vec()))
    }

    fn end(&mut self, f: &ExportedFile) -> std::io::Result<()> {
        self.send(Part::End(shep_proto::sim::ExportedFile { lines: f.lines, bytes: f.bytes, sha256: f.sha256.clone() }))
    }
}

/// The answer of `Scenario/Export`: [`export_to`] runs on a blocking thread and hands its
/// chunks over a channel of a few chunks, so memory stays bounded whatever the scale and a
/// slow client slows the writer down. The writer stops when the client goes away or the
/// node shuts down (UNAVAILABLE, `NODE_SHUTTING_DOWN`).
pub fn stream(sim: Arc<Simulation>) -> Feed<ExportChunk> {
    let (tx, rx) = tokio::sync::mpsc::channel(CHUNKS_IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        let mut target = ChunkSender { sim: sim.clone(), tx: tx.clone(), file: String::new() };
        let started = std::time::Instant::now();
        let status = match export_to(&sim, &mut target) {
            Ok(files) => {
                let bytes: u64 = files.iter().map(|f| f.bytes).sum();
                tracing::info!(bytes, ms = started.elapsed().as_millis() as u64, "export sent");
                return;
            }
            Err(e) if e.kind() == ErrorKind::BrokenPipe => {
                tracing::info!("export abandoned by the client");
                return;
            }
            Err(_) if sim.is_closing() => shep_runtime::status::error(
                Code::Unavailable,
                "the node is shutting down; the export is incomplete",
                "NODE_SHUTTING_DOWN",
                [],
            ),
            Err(e) => {
                tracing::error!(error = %e, "export failed");
                shep_runtime::status::error(Code::Internal, format!("export failed: {e}"), "EXPORT_FAILED", [])
            }
        };
        let _ = tx.blocking_send(Err(status));
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Why a live export could not be received.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The node refused or failed the call.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] Status),
    /// Writing the files.
    #[error("writing the export: {0}")]
    Io(#[from] std::io::Error),
    /// The stream broke the contract (a file's bytes disagree with its totals, a file cut off).
    #[error("the node sent a broken export: {0}")]
    Broken(String),
}

/// Writes the chunks of `Scenario/Export` into `dir` through a [`DirTarget`]: checks each
/// file against the totals the node sent, and commits only a whole export.
pub async fn receive<S>(chunks: S, dir: &Path) -> Result<ExportSummary, ReceiveError>
where
    S: Stream<Item = Result<ExportChunk, Status>> + Unpin,
{
    let mut target = DirTarget::create(dir)?;
    let files = receive_into(chunks, &mut target).await?;
    target.commit()?;
    Ok(ExportSummary { dir: dir.to_owned(), files })
}

/// Hands the chunks of `Scenario/Export` to `target`, checking each file against the totals
/// the node sent; an error as soon as the stream breaks the contract.
pub async fn receive_into<S, T>(mut chunks: S, target: &mut T) -> Result<Vec<ExportedFile>, ReceiveError>
where
    S: Stream<Item = Result<ExportChunk, Status>> + Unpin,
    T: ExportTarget + ?Sized,
{
    let mut current: Option<(String, Tally)> = None;
    let mut files = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let ExportChunk { file, part } = chunk?;
        let same = current.as_ref().map(|(name, _)| *name == file);
        if same == Some(false) {
            let open = current.map(|c| c.0).unwrap_or_default();
            return Err(ReceiveError::Broken(format!("{file} began before {open} ended")));
        }
        if same.is_none() {
            target.begin(&file)?;
        }
        let (_, tally) = current.get_or_insert_with(|| (file.clone(), Tally::default()));
        match part {
            Some(Part::Data(bytes)) => {
                tally.update(&bytes);
                target.write(&bytes)?;
            }
            Some(Part::End(sent)) => {
                let (name, tally) = current.take().expect("a file is open");
                let got = tally.finish(&name);
                if (got.lines, got.bytes, got.sha256.as_str()) != (sent.lines, sent.bytes, sent.sha256.as_str()) {
                    return Err(ReceiveError::Broken(format!(
                        "{name}: received {} lines, {} bytes, sha256 {}; the node counted {} lines, {} bytes, sha256 {}",
                        got.lines, got.bytes, got.sha256, sent.lines, sent.bytes, sent.sha256
                    )));
                }
                target.end(&got)?;
                files.push(got);
            }
            None => return Err(ReceiveError::Broken(format!("a chunk of {file} without data or end"))),
        }
    }
    if let Some((name, _)) = current {
        return Err(ReceiveError::Broken(format!("the stream ended inside {name}")));
    }
    if files.is_empty() {
        return Err(ReceiveError::Broken("the stream ended without a file".into()));
    }
    Ok(files)
}

impl std::fmt::Display for ExportSummary {
    /// A table: file, lines, bytes, SHA-256; then the digest of the whole export.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{:<16} {:>10} {:>12}  sha256", "file", "lines", "bytes")?;
        for x in &self.files {
            writeln!(f, "{:<16} {:>10} {:>12}  {}", x.name, x.lines, x.bytes, x.sha256)?;
        }
        write!(f, "digest {}", self.digest())
    }
}
