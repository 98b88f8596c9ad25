//! JSON Lines dumps of the simulation as its registries serve it now: one file per
//! registry, plus the SMS sent and the answers received. Lines are in a deterministic
//! order, so two simulations with the same seed give byte-identical files.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use shep_proto::elicense::{PermitStatus, holder, holder_name};
use shep_proto::gbdfl::{LegalCapacity, LifeStatus, MissingStatus, Sex};
use shep_proto::gbdul::{LegalForm, OrganizationStatus};
use shep_proto::shep::{Address, Date, FullName, LocalizedText};
use shep_proto::zags::ActKind;

use crate::catalog::{CONSUMERS, SCOPES};
use crate::sim::Simulation;
use crate::time::rfc3339;
use crate::views;

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

/// What [`export_jsonl`] wrote.
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
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

struct Sink {
    name: String,
    out: BufWriter<File>,
    hash: Sha256,
    lines: u64,
    bytes: u64,
}

impl Sink {
    fn create(dir: &Path, name: &str) -> std::io::Result<Sink> {
        let out = BufWriter::new(File::create(dir.join(name))?);
        Ok(Sink { name: name.to_owned(), out, hash: Sha256::new(), lines: 0, bytes: 0 })
    }

    fn line(&mut self, v: &Value) -> std::io::Result<()> {
        let mut s = serde_json::to_string(v).map_err(std::io::Error::other)?;
        s.push('\n');
        self.out.write_all(s.as_bytes())?;
        self.hash.update(s.as_bytes());
        self.lines += 1;
        self.bytes += s.len() as u64;
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<ExportedFile> {
        self.out.flush()?;
        Ok(ExportedFile {
            name: self.name,
            lines: self.lines,
            bytes: self.bytes,
            sha256: self.hash.finalize().iter().map(|b| format!("{b:02x}")).collect(),
        })
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
/// sent and every answer received by the simulated time now).
pub fn export_jsonl(sim: &Simulation, dir: &Path) -> std::io::Result<ExportSummary> {
    std::fs::create_dir_all(dir)?;
    let c = sim.country();
    let now = sim.now();
    let today = sim.current_day();
    let mut files = Vec::new();

    let mut f = Sink::create(dir, "gbd-ul.jsonl")?;
    for o in 0..c.orgs().len() as u32 {
        let org = views::organization(c, &sim.state(), o);
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

    let mut f = Sink::create(dir, "gbd-fl.jsonl")?;
    for p in 0..c.persons().len() as u32 {
        let x = views::person(c, &sim.state(), p, today);
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

    let mut f = Sink::create(dir, "zags.jsonl")?;
    let acts = {
        let st = sim.state();
        views::acts_in(c, &st, crate::time::Day(i32::MIN), crate::time::Day(i32::MAX))
    };
    for (_, i) in acts {
        let Some(a) = views::act(c, &sim.state(), i) else { continue };
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

    let mut f = Sink::create(dir, "e-license.jsonl")?;
    let total = c.permits().len() + sim.state().permits.new_count();
    for i in 0..total as u32 {
        let Some(p) = views::permit(c, &sim.state(), i) else { continue };
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
    let notes: Vec<Value> = {
        let st = sim.state();
        st.permits
            .all_notes()
            .iter()
            .map(|n| {
                json!({
                    "type": "cabinet_notification",
                    "id": n.id,
                    "holder": views::holder(c, n.holder).id.map(|id| match id { holder::Id::Bin(b) => b, holder::Id::Iin(i) => i }),
                    "created_at": rfc3339(n.created_at),
                    "title": n.title,
                    "text": n.text,
                    "permit_number": n.permit_number,
                })
            })
            .collect()
    };
    for n in &notes {
        f.line(n)?;
    }
    files.push(f.finish()?);

    let mut f = Sink::create(dir, "bmg.jsonl")?;
    for (i, p) in c.persons().iter().enumerate() {
        if let Some(ph) = c.phone_of(i as u32) {
            f.line(&json!({"iin": p.iin.to_string(), "phone": ph.number, "registered_at": rfc3339(ph.registered_at)}))?;
        }
    }
    files.push(f.finish()?);

    let mut f = Sink::create(dir, "kdp.jsonl")?;
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
    let (changes, revocations) = {
        let st = sim.state();
        (st.consents.changes(), st.consents.revocations().to_vec())
    };
    for (s, consumer, scope, granted, at, until) in changes {
        f.line(&json!({"type": "change", "subject": s.to_string(), "consumer": consumer, "scope": scope, "granted": granted, "at": rfc3339(at), "valid_until": until.map(rfc3339)}))?;
    }
    for r in revocations {
        f.line(&json!({"type": "revocation", "subject": r.subject.to_string(), "consumer": r.consumer, "scope": r.scope, "token_ids": r.token_ids, "revoked_at": rfc3339(r.revoked_at)}))?;
    }
    files.push(f.finish()?);

    let mut f = Sink::create(dir, "sms.jsonl")?;
    let (outbox, received) = {
        let mut st = sim.state();
        st.sms.deliver_due(now);
        (st.sms.outbox().to_vec(), st.sms.received().to_vec())
    };
    for s in &outbox {
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
    for a in &received {
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

    Ok(ExportSummary { dir: dir.to_owned(), files })
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
