//! The calls SDU makes, all through the bus on one mutual-TLS channel: prost types stay
//! here; the rest of the crate sees domain types ([`Iin`], [`Bin`], [`PersonFacts`] ...).
//!
//! Every personal-data call carries the subject's KDP token in the metadata key
//! [`shep_consent::METADATA_KEY`]. Every failure is a [`CallError`] that says whether trying
//! again may help and whether it was a refusal of consent (KDP's own, or the bus's).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use jiff::Timestamp;
use jiff::civil::Date;
use shep_domain::{Bin, Iin};
use shep_proto::elicense::permit_registry_client::PermitRegistryClient;
use shep_proto::gbdfl::person_registry_client::PersonRegistryClient;
use shep_proto::gbdul::organization_registry_client::OrganizationRegistryClient;
use shep_proto::kdp::consent_service_client::ConsentServiceClient;
use shep_proto::pep::portal_client::PortalClient;
use shep_proto::zags::civil_act_registry_client::CivilActRegistryClient;
use shep_proto::{elicense, gbdfl, gbdul, kdp, pep, shep, zags};
use tonic::transport::Channel;

use shep_runtime::batch::{Batcher, all_failed, append_distinct, each_of};
use crate::case::{PermitItem, PersonFacts, Subject, SubjectName};
use crate::dates::{from_proto_ts, to_proto_date};
use crate::pilot::Language;

/// A failed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    /// What failed and why, for the history.
    pub message: String,
    /// Trying again may help (UNAVAILABLE, DEADLINE_EXCEEDED, ...).
    pub retryable: bool,
    /// The call was refused for lack of consent: the scope or the reason.
    pub consent_refused: Option<String>,
}

impl CallError {
    fn from_status(method: &str, s: &tonic::Status) -> CallError {
        use tonic::Code::*;
        let reason = shep_runtime::status::reason(s);
        let transient = matches!(
            s.code(),
            Unavailable
                | DeadlineExceeded
                | ResourceExhausted
                | Aborted
                | Unknown
                | Internal
                | Cancelled
        );
        // A token that expired is no refusal of consent: a fresh one is asked for on the
        // next try. Neither is a bus that cannot check tokens for now (UNAVAILABLE,
        // CONSENT_KEY_UNAVAILABLE or CONSENT_REVOCATIONS_STALE): it fails closed, and the
        // call is tried again.
        let expired = reason == "CONSENT_EXPIRED";
        let consent_refused =
            (reason.starts_with("CONSENT_") && !transient && !expired).then(|| reason.clone());
        let retryable = transient || expired;
        let why = if reason.is_empty() {
            String::new()
        } else {
            format!(" [{reason}]")
        };
        CallError {
            message: format!("{method}: {:?}: {}{why}", s.code(), s.message()),
            retryable,
            consent_refused,
        }
    }

    /// A request of a batch left without its answer: worth another try.
    fn lost<T>(message: String) -> Result<T, CallError> {
        Err(CallError {
            message,
            retryable: true,
            consent_refused: None,
        })
    }

    fn bad_data(method: &str, what: String) -> CallError {
        CallError {
            message: format!("{method}: bad answer: {what}"),
            retryable: false,
            consent_refused: None,
        }
    }
}

/// A KDP consent token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token(pub String);

/// One entry of a diff stream: the cursor after it and, when it is a name change SDU
/// handles, the subject and its names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffItem {
    /// The stream cursor after this entry.
    pub cursor: String,
    /// The change, or `None` for an entry that is no change of name (or unusable data).
    pub change: Option<NameChange>,
}

/// A change of name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameChange {
    /// Whose.
    pub subject: Subject,
    /// Before.
    pub old_name: SubjectName,
    /// After.
    pub new_name: SubjectName,
    /// An organization's first head on the change date, as GBD UL gives it with the change
    /// (`None`: none given, or malformed; the case then asks GBD UL).
    pub head: Option<Iin>,
}

/// The result of PEP `Notify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notified {
    /// Sent.
    Sent {
        sms_id: String,
        sent_at: Option<Timestamp>,
    },
    /// No phone in BMG.
    NoPhone,
}

/// What PEP `Notify` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyRequest {
    pub case_id: String,
    pub attempt: u32,
    pub iin: Iin,
    pub pilot_id: String,
    pub permit_numbers: Vec<String>,
    pub holder_bin: Option<Bin>,
    pub holder_name: String,
    pub language: Language,
    pub text: String,
}

/// An SMS answer from PEP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerItem {
    /// The stream cursor after it.
    pub cursor: String,
    /// The case it answers.
    pub case_id: String,
    /// The attempt it answers.
    pub attempt: u32,
    /// The SMS it answers.
    pub sms_id: String,
    /// As typed.
    pub text: String,
    /// When PEP received it.
    pub received_at: Option<Timestamp>,
}

/// A stream of results.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, CallError>> + Send>>;

/// Ends a stream with a retryable error when no item comes for `idle` (a peer that went
/// silent must not stall a reader forever).
fn idle_bounded<T: Send + 'static>(
    s: BoxStream<T>,
    idle: Duration,
    method: &'static str,
) -> BoxStream<T> {
    Box::pin(futures::stream::unfold(Some(s), move |state| async move {
        let mut s = state?;
        match tokio::time::timeout(idle, s.next()).await {
            Ok(Some(item)) => Some((item, Some(s))),
            Ok(None) => None,
            Err(_) => Some((
                Err(CallError {
                    message: format!("{method}: nothing received for {} ms", idle.as_millis()),
                    retryable: true,
                    consent_refused: None,
                }),
                None,
            )),
        }
    }))
}

/// The clients of every service SDU calls, over one channel to the bus.
#[derive(Clone)]
pub struct Upstream {
    gbdul: OrganizationRegistryClient<Channel>,
    gbdfl: PersonRegistryClient<Channel>,
    zags: CivilActRegistryClient<Channel>,
    elicense: PermitRegistryClient<Channel>,
    pep: PortalClient<Channel>,
    kdp: ConsentServiceClient<Channel>,
    consumer: String,
    timeout: Duration,
    /// The batchers of the look-ups that have a batch form; `None`: one call per subject.
    batches: Option<Arc<Batches>>,
}

/// A person's look-up: the IIN and the tokens for GBD FL and ZAGS.
type PersonQuery = (Iin, Token, Token);

/// The look-ups made in batches (see [`shep_runtime::batch`]).
struct Batches {
    /// KDP `IssueTokens`: (subject, scope).
    tokens: Batcher<(Iin, String), Result<Token, CallError>>,
    /// GBD FL `GetPersons` with ZAGS `GetActsOfPersons`.
    persons: Batcher<PersonQuery, Result<PersonFacts, CallError>>,
    /// e-license `ReissueOrganizationPermits`: the new permit's number.
    reissues: Batcher<elicense::OrganizationReissue, Result<String, CallError>>,
    /// PEP `NotifyMany`: each notification with its recipient's token.
    notifies: Batcher<(NotifyRequest, Token), Result<Notified, CallError>>,
}

/// Most subjects in one batch look-up: each brings its consent token (about 300 bytes) in
/// the call's metadata, and HTTP/2 servers take 16 KiB of headers by default.
pub const MAX_CALL_BATCH: usize = 32;

/// Batch calls of one kind out at a time; meanwhile the next batch fills.
const BATCHES_IN_FLIGHT: usize = 1;

fn org_name(t: Option<&shep::LocalizedText>) -> SubjectName {
    let t = t.cloned().unwrap_or_default();
    SubjectName::Organization { ru: t.ru, kk: t.kk }
}

fn person_name(n: Option<&shep::FullName>) -> Option<SubjectName> {
    let n = n?;
    Some(SubjectName::Person {
        surname: n.surname.clone(),
        name: n.name.clone(),
        patronymic: n.patronymic.clone(),
    })
}

fn holder(subject: &Subject) -> elicense::Holder {
    elicense::Holder {
        id: Some(match subject {
            Subject::Organization(b) => elicense::holder::Id::Bin(b.to_string()),
            Subject::Individual(i) => elicense::holder::Id::Iin(i.to_string()),
        }),
    }
}

/// Most BINs in one e-license `ListPermitsByBins` call.
pub const MAX_BINS: usize = 1000;

/// The ACTIVE permits of the given services, as the items of a case.
fn active_items(permits: Vec<elicense::Permit>, services: &[String]) -> Vec<PermitItem> {
    permits
        .into_iter()
        .filter(|p| {
            p.status() == elicense::PermitStatus::Active && services.contains(&p.service_code)
        })
        .map(|p| PermitItem {
            number: p.number,
            service_code: p.service_code,
            new_number: None,
        })
        .collect()
}

/// The four criteria from a person's GBD FL record and ZAGS acts.
fn facts(iin: Iin, p: &gbdfl::Person, a: &zags::GetPersonActsResponse) -> PersonFacts {
    let me = iin.to_string();
    PersonFacts {
        dead: p.life_status() == gbdfl::LifeStatus::Dead,
        declared_missing_or_dead: matches!(
            p.missing_status(),
            gbdfl::MissingStatus::Missing | gbdfl::MissingStatus::DeclaredDead
        ),
        death_act: a
            .acts
            .iter()
            .any(|x| x.kind() == zags::ActKind::Death && x.subject_iin == me),
        abroad: p.residence.as_ref().is_some_and(|r| r.permanent_abroad),
        incapable: p.legal_capacity() == gbdfl::LegalCapacity::Incapable,
        imprisoned: p.imprisonment.as_ref().is_some_and(|i| i.imprisoned),
    }
}

fn to_proto_notify(n: NotifyRequest) -> pep::NotifyRequest {
    pep::NotifyRequest {
        case_id: n.case_id,
        attempt: n.attempt,
        iin: n.iin.to_string(),
        pilot_id: n.pilot_id,
        permit_numbers: n.permit_numbers,
        holder_bin: n.holder_bin.map(|b| b.to_string()).unwrap_or_default(),
        holder_name: n.holder_name,
        language: match n.language {
            Language::Ru => pep::Language::Ru as i32,
            Language::Kk => pep::Language::Kk as i32,
        },
        text: n.text,
    }
}

/// PEP's answer to a notification (`method`'s).
fn notified(method: &str, r: pep::NotifyResponse) -> Result<Notified, CallError> {
    match r.outcome() {
        pep::NotifyOutcome::Sent => Ok(Notified::Sent {
            sms_id: r.sms_id,
            sent_at: r.sent_at.as_ref().and_then(from_proto_ts),
        }),
        pep::NotifyOutcome::NoPhone => Ok(Notified::NoPhone),
        other => Err(CallError::bad_data(method, format!("outcome {other:?}"))),
    }
}

/// An item of a batch that failed, as its single call would have failed: the status `code`,
/// `message` and ErrorInfo `reason` the single method answers with.
fn item_failed(method: &str, code: i32, message: String, reason: &str) -> CallError {
    let code = tonic::Code::from_i32(code);
    let status = if reason.is_empty() {
        tonic::Status::new(code, message)
    } else {
        shep_runtime::status::error(code, message, reason, [])
    };
    CallError::from_status(method, &status)
}

impl Upstream {
    /// Clients over `channel`; `consumer` is SDU's system id (for KDP), `timeout` the deadline
    /// of each unary call.
    pub fn new(channel: Channel, consumer: &str, timeout: Duration) -> Self {
        Upstream {
            gbdul: OrganizationRegistryClient::new(channel.clone()),
            gbdfl: PersonRegistryClient::new(channel.clone()),
            zags: CivilActRegistryClient::new(channel.clone()),
            elicense: PermitRegistryClient::new(channel.clone()),
            pep: PortalClient::new(channel.clone()),
            kdp: ConsentServiceClient::new(channel),
            consumer: consumer.to_owned(),
            timeout,
            batches: None,
        }
    }

    /// With `batch` above 1, tokens and person checks asked for at the same time go in
    /// batch calls of up to `batch` subjects (KDP `IssueTokens`, GBD FL `GetPersons`, ZAGS
    /// `GetActsOfPersons`), each subject with its own token, and so do the notifications
    /// (PEP `NotifyMany`, each recipient with its own token, each item idempotent per case
    /// and attempt) and the re-issues of organizations' permits (e-license
    /// `ReissueOrganizationPermits`, each item idempotent by its own key). Starts the
    /// batching tasks on the current Tokio runtime.
    pub fn batching(mut self, batch: usize) -> Self {
        if batch <= 1 {
            self.batches = None;
            return self;
        }
        let batch = batch.min(MAX_CALL_BATCH);
        let (up1, up2, up3, up4) = (self.clone(), self.clone(), self.clone(), self.clone());
        self.batches = Some(Arc::new(Batches {
            tokens: Batcher::new("kdp.IssueTokens", batch, BATCHES_IN_FLIGHT, CallError::lost, move |qs| {
                let up = up1.clone();
                async move { up.issue_tokens(qs).await }
            }),
            persons: Batcher::new("gbdfl.GetPersons", batch, BATCHES_IN_FLIGHT, CallError::lost, move |qs| {
                let up = up2.clone();
                async move { up.persons_facts(qs).await }
            }),
            reissues: Batcher::new(
                "elicense.ReissueOrganizationPermits",
                batch,
                BATCHES_IN_FLIGHT,
                CallError::lost,
                move |qs| {
                    let up = up3.clone();
                    async move { up.reissue_organizations(qs).await }
                },
            ),
            notifies: Batcher::new("pep.NotifyMany", batch, BATCHES_IN_FLIGHT, CallError::lost, move |qs| {
                let up = up4.clone();
                async move { up.notify_many(qs).await }
            }),
        }));
        self
    }

    fn req<T>(&self, msg: T, token: Option<&Token>) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(self.timeout);
        if let Some(Ok(v)) = token.map(|t| t.0.parse()) {
            r.metadata_mut().insert(shep_consent::METADATA_KEY, v);
        }
        r
    }

    /// Renamed organizations registered on `date`, from `cursor` on (GBD UL `StreamNameChanges`).
    pub async fn name_changes(
        &self,
        date: Date,
        cursor: Option<String>,
    ) -> Result<BoxStream<DiffItem>, CallError> {
        const M: &str = "gbdul.StreamNameChanges";
        let d = to_proto_date(date);
        let req = gbdul::StreamNameChangesRequest {
            range: Some(shep::DateRange {
                from: Some(d),
                to: Some(d),
            }),
            cursor: cursor.unwrap_or_default(),
            limit: 0,
        };
        let mut r = tonic::Request::new(req);
        r.set_timeout(Duration::from_secs(24 * 3600));
        let s = self
            .gbdul
            .clone()
            .stream_name_changes(r)
            .await
            .map_err(|s| CallError::from_status(M, &s))?
            .into_inner();
        let items: BoxStream<DiffItem> = Box::pin(s.map(|r| {
            let c = r.map_err(|s| CallError::from_status(M, &s))?;
            let change = Bin::parse(&c.bin).ok().map(|bin| NameChange {
                subject: Subject::Organization(bin),
                old_name: org_name(c.old_name.as_ref()),
                new_name: org_name(c.new_name.as_ref()),
                head: (!c.head_iin.is_empty())
                    .then(|| Iin::parse(&c.head_iin).ok())
                    .flatten(),
            });
            if change.is_none() {
                tracing::warn!(bin = %c.bin, "GBD UL name change with a malformed BIN skipped");
            }
            Ok(DiffItem {
                cursor: c.cursor,
                change,
            })
        }));
        Ok(idle_bounded(items, self.timeout, "gbdul.StreamNameChanges"))
    }

    /// Changes of ФИО registered on `date` (ZAGS `StreamActs` of NAME_CHANGE, MARRIAGE and
    /// DIVORCE), from `cursor` on. Acts that leave the name as it was are not changes.
    pub async fn name_acts(
        &self,
        date: Date,
        cursor: Option<String>,
    ) -> Result<BoxStream<DiffItem>, CallError> {
        const M: &str = "zags.StreamActs";
        let d = to_proto_date(date);
        let req = zags::StreamActsRequest {
            range: Some(shep::DateRange {
                from: Some(d),
                to: Some(d),
            }),
            kinds: vec![
                zags::ActKind::NameChange as i32,
                zags::ActKind::Marriage as i32,
                zags::ActKind::Divorce as i32,
            ],
            cursor: cursor.unwrap_or_default(),
            limit: 0,
        };
        let mut r = tonic::Request::new(req);
        r.set_timeout(Duration::from_secs(24 * 3600));
        let s = self
            .zags
            .clone()
            .stream_acts(r)
            .await
            .map_err(|s| CallError::from_status(M, &s))?
            .into_inner();
        let items: BoxStream<DiffItem> = Box::pin(s.map(|r| {
            let a = r.map_err(|s| CallError::from_status(M, &s))?;
            let names = person_name(a.old_name.as_ref()).zip(person_name(a.new_name.as_ref()));
            let change = match (Iin::parse(&a.subject_iin), names) {
                (Ok(iin), Some((old, new))) if old != new => Some(NameChange {
                    subject: Subject::Individual(iin),
                    old_name: old,
                    new_name: new,
                    head: None,
                }),
                _ => None,
            };
            Ok(DiffItem {
                cursor: a.cursor,
                change,
            })
        }));
        Ok(idle_bounded(items, self.timeout, "zags.StreamActs"))
    }

    /// The ACTIVE permits of `subject` of the given services (e-license `ListPermits`).
    pub async fn list_permits(
        &self,
        subject: &Subject,
        services: &[String],
        token: Option<&Token>,
    ) -> Result<Vec<PermitItem>, CallError> {
        const M: &str = "elicense.ListPermits";
        let req = elicense::ListPermitsRequest {
            holder: Some(holder(subject)),
            service_codes: services.to_vec(),
        };
        let res = self
            .elicense
            .clone()
            .list_permits(self.req(req, token))
            .await
            .map_err(|s| CallError::from_status(M, &s))?;
        Ok(active_items(res.into_inner().permits, services))
    }

    /// The ACTIVE permits of the given services of several organizations at once (e-license
    /// `ListPermitsByBins`, at most [`MAX_BINS`] of them), one entry per BIN in the order of
    /// `bins`: what [`Upstream::list_permits`] gives for each. An answer that does not
    /// match the request BIN for BIN is a (non-retryable) bad answer.
    pub async fn list_permits_by_bins(
        &self,
        bins: &[Bin],
        services: &[String],
    ) -> Result<Vec<(Bin, Vec<PermitItem>)>, CallError> {
        const M: &str = "elicense.ListPermitsByBins";
        if bins.len() > MAX_BINS {
            return Err(CallError {
                message: format!("{M}: {} BINs, at most {MAX_BINS} in one call", bins.len()),
                retryable: false,
                consent_refused: None,
            });
        }
        let req = elicense::ListPermitsByBinsRequest {
            bins: bins.iter().map(|b| b.to_string()).collect(),
            service_codes: services.to_vec(),
        };
        let holders = self
            .elicense
            .clone()
            .list_permits_by_bins(self.req(req, None))
            .await
            .map_err(|s| CallError::from_status(M, &s))?
            .into_inner()
            .holders;
        if holders.len() != bins.len() {
            return Err(CallError::bad_data(
                M,
                format!("{} entries for {} BINs", holders.len(), bins.len()),
            ));
        }
        bins.iter()
            .zip(holders)
            .enumerate()
            .map(|(i, (bin, h))| {
                if h.bin != bin.to_string() {
                    return Err(CallError::bad_data(
                        M,
                        format!("entry {i} is for BIN {:?}, {bin} was asked", h.bin),
                    ));
                }
                Ok((*bin, active_items(h.permits, services)))
            })
            .collect()
    }

    /// The first head of an organization (GBD UL `GetOrganization`); `None` when none is
    /// registered.
    pub async fn first_head(&self, bin: Bin) -> Result<Option<Iin>, CallError> {
        const M: &str = "gbdul.GetOrganization";
        let req = gbdul::GetOrganizationRequest {
            bin: bin.to_string(),
        };
        let org = self
            .gbdul
            .clone()
            .get_organization(self.req(req, None))
            .await
            .map_err(|s| CallError::from_status(M, &s))?;
        match org.into_inner().first_head {
            None => Ok(None),
            Some(h) if h.iin.is_empty() => Ok(None),
            Some(h) => Iin::parse(&h.iin)
                .map(Some)
                .map_err(|e| CallError::bad_data(M, format!("first head IIN {:?}: {e}", h.iin))),
        }
    }

    /// A KDP token for (subject, SDU, scope); `scope` may name several scopes separated by
    /// spaces, and the one token then covers each. A refusal is a [`CallError`] with
    /// `consent_refused` set to the scope KDP names as not consented to (its ErrorInfo
    /// metadata `scope`), or to `scope` when it names none.
    pub async fn issue_token(&self, subject: Iin, scope: &str) -> Result<Token, CallError> {
        if let Some(b) = &self.batches {
            return b.tokens.call((subject, scope.to_owned())).await;
        }
        self.issue_token_alone(subject, scope).await
    }

    /// KDP `IssueTokens` for the requests of a batch (one call per distinct scope); each
    /// result as [`Upstream::issue_token`] would give it.
    async fn issue_tokens(&self, qs: Vec<(Iin, String)>) -> Vec<Result<Token, CallError>> {
        const M: &str = "kdp.IssueTokens";
        let mut out: Vec<Option<Result<Token, CallError>>> = vec![None; qs.len()];
        let mut scopes: Vec<&str> = qs.iter().map(|(_, s)| s.as_str()).collect();
        scopes.sort_unstable();
        scopes.dedup();
        for scope in scopes {
            let idx: Vec<usize> = (0..qs.len()).filter(|&i| qs[i].1 == scope).collect();
            let req = kdp::IssueTokensRequest {
                subjects: idx.iter().map(|&i| qs[i].0.to_string()).collect(),
                consumer: self.consumer.clone(),
                scope: scope.to_owned(),
            };
            let results = match self.kdp.clone().issue_tokens(self.req(req, None)).await {
                Ok(r) => r.into_inner().results,
                Err(s) => {
                    let e = CallError::from_status(M, &s);
                    for &i in &idx {
                        out[i] = Some(Err(e.clone()));
                    }
                    continue;
                }
            };
            for (&i, r) in idx.iter().zip(each_of(results, idx.len())) {
                let r = match r.and_then(|r| r.result) {
                    Some(kdp::token_result::Result::Token(t)) => Ok(Token(t.token)),
                    Some(kdp::token_result::Result::Refusal(f))
                        if f.code == tonic::Code::FailedPrecondition as i32 =>
                    {
                        let refused = if f.scope.is_empty() { scope.to_owned() } else { f.scope };
                        Err(CallError {
                            message: format!("{M}: {refused}: {}", f.message),
                            retryable: false,
                            consent_refused: Some(refused),
                        })
                    }
                    Some(kdp::token_result::Result::Refusal(f)) => Err(item_failed(M, f.code, f.message, "")),
                    None => Err(CallError::bad_data(M, format!("no result for subject {}", qs[i].0))),
                };
                out[i] = Some(r);
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(CallError::bad_data(M, "a subject without a result".into()))))
            .collect()
    }

    /// KDP `IssueToken` for one subject.
    async fn issue_token_alone(&self, subject: Iin, scope: &str) -> Result<Token, CallError> {
        const M: &str = "kdp.IssueToken";
        let req = kdp::IssueTokenRequest {
            subject: subject.to_string(),
            consumer: self.consumer.clone(),
            scope: scope.to_owned(),
        };
        match self.kdp.clone().issue_token(self.req(req, None)).await {
            Ok(r) => Ok(Token(r.into_inner().token)),
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                use tonic_types::StatusExt;
                let refused = s
                    .get_error_details()
                    .error_info()
                    .and_then(|i| i.metadata.get("scope").cloned())
                    .unwrap_or_else(|| scope.to_owned());
                Err(CallError {
                    message: format!("{M}: {refused}: {}", s.message()),
                    retryable: false,
                    consent_refused: Some(refused),
                })
            }
            Err(s) => Err(CallError::from_status(M, &s)),
        }
    }

    /// GBD FL `GetPerson` and ZAGS `GetPersonActs`, reduced to the four criteria.
    pub async fn person_facts(
        &self,
        iin: Iin,
        person_token: &Token,
        acts_token: &Token,
    ) -> Result<PersonFacts, CallError> {
        if let Some(b) = &self.batches {
            return b
                .persons
                .call((iin, person_token.clone(), acts_token.clone()))
                .await;
        }
        self.person_facts_alone(iin, person_token, acts_token).await
    }

    /// GBD FL `GetPersons` and ZAGS `GetActsOfPersons` for the requests of a batch, each
    /// subject's token in the metadata; each result as [`Upstream::person_facts`] would
    /// give it. A batch refused as a whole for a reason that is not passing (one subject's
    /// consent revoked meanwhile, say) is asked again one subject at a time, so that the
    /// refusal is that subject's alone.
    async fn persons_facts(&self, qs: Vec<PersonQuery>) -> Vec<Result<PersonFacts, CallError>> {
        let iins: Vec<String> = qs.iter().map(|(i, _, _)| i.to_string()).collect();
        let mut p = tonic::Request::new(gbdfl::GetPersonsRequest { iins: iins.clone() });
        let mut a = tonic::Request::new(zags::GetActsOfPersonsRequest { iins });
        p.set_timeout(self.timeout);
        a.set_timeout(self.timeout);
        let key = shep_consent::METADATA_KEY;
        append_distinct(p.metadata_mut(), key, qs.iter().map(|(_, t, _)| t.0.as_str()));
        append_distinct(a.metadata_mut(), key, qs.iter().map(|(_, _, t)| t.0.as_str()));
        let (mut gbdfl, mut zags) = (self.gbdfl.clone(), self.zags.clone());
        let (p, a) = futures::join!(
            async {
                let s = gbdfl.get_persons(p).await?.into_inner();
                s.collect::<Vec<_>>().await.into_iter().collect::<Result<Vec<_>, _>>()
            },
            async {
                let s = zags.get_acts_of_persons(a).await?.into_inner();
                s.collect::<Vec<_>>().await.into_iter().collect::<Result<Vec<_>, _>>()
            }
        );
        let whole = match (p, a) {
            (Ok(p), Ok(a)) => Ok((p, a)),
            (Err(s), _) => Err(CallError::from_status("gbdfl.GetPersons", &s)),
            (_, Err(s)) => Err(CallError::from_status("zags.GetActsOfPersons", &s)),
        };
        let (persons, acts) = match whole {
            Ok(x) => x,
            Err(e) if e.retryable || qs.len() == 1 => return all_failed(qs.len(), e),
            Err(_) => {
                let alone = qs.iter().map(|(i, p, a)| self.person_facts_alone(*i, p, a));
                return futures::future::join_all(alone).await;
            }
        };
        let n = qs.len();
        qs.iter()
            .zip(each_of(persons, n).zip(each_of(acts, n)))
            .map(|((iin, _, _), (person, acts))| {
                const P: &str = "gbdfl.GetPersons";
                const A: &str = "zags.GetActsOfPersons";
                let person = match person.and_then(|r| r.result) {
                    Some(gbdfl::person_result::Result::Person(p)) => p,
                    Some(gbdfl::person_result::Result::Error(e)) => return Err(item_failed(P, e.code, e.message, "")),
                    None => return Err(CallError::bad_data(P, format!("no result for {iin}"))),
                };
                let acts = match acts.and_then(|r| r.result) {
                    Some(zags::person_acts_result::Result::Acts(a)) => a,
                    Some(zags::person_acts_result::Result::Error(e)) => return Err(item_failed(A, e.code, e.message, "")),
                    None => return Err(CallError::bad_data(A, format!("no result for {iin}"))),
                };
                Ok(facts(*iin, &person, &acts))
            })
            .collect()
    }

    /// GBD FL `GetPerson` and ZAGS `GetPersonActs` for one subject.
    async fn person_facts_alone(
        &self,
        iin: Iin,
        person_token: &Token,
        acts_token: &Token,
    ) -> Result<PersonFacts, CallError> {
        let mut gbdfl = self.gbdfl.clone();
        let mut zags = self.zags.clone();
        let p = gbdfl.get_person(self.req(
            gbdfl::GetPersonRequest {
                iin: iin.to_string(),
            },
            Some(person_token),
        ));
        let a = zags.get_person_acts(self.req(
            zags::GetPersonActsRequest {
                iin: iin.to_string(),
            },
            Some(acts_token),
        ));
        let (p, a) = futures::join!(p, a);
        let p = p
            .map_err(|s| CallError::from_status("gbdfl.GetPerson", &s))?
            .into_inner();
        let a = a
            .map_err(|s| CallError::from_status("zags.GetPersonActs", &s))?
            .into_inner();
        Ok(facts(iin, &p, &a))
    }

    /// PEP `Notify` (idempotent per case and attempt).
    pub async fn notify(&self, n: NotifyRequest, token: &Token) -> Result<Notified, CallError> {
        if let Some(b) = &self.batches {
            return b.notifies.call((n, token.clone())).await;
        }
        self.notify_alone(to_proto_notify(n), token).await
    }

    /// PEP `Notify` of one request.
    async fn notify_alone(&self, req: pep::NotifyRequest, token: &Token) -> Result<Notified, CallError> {
        const M: &str = "pep.Notify";
        let r = self
            .pep
            .clone()
            .notify(self.req(req, Some(token)))
            .await
            .map_err(|s| CallError::from_status(M, &s))?
            .into_inner();
        notified(M, r)
    }

    /// PEP `NotifyMany` for the notifications of a batch, each recipient's token in the
    /// metadata; each result as [`Upstream::notify`] would give it. A batch refused as a
    /// whole for a reason that is not passing (one recipient's consent revoked meanwhile)
    /// is sent again one notification at a time, so that the refusal is that one's alone
    /// (each is idempotent per case and attempt: nothing is sent twice).
    async fn notify_many(&self, qs: Vec<(NotifyRequest, Token)>) -> Vec<Result<Notified, CallError>> {
        const M: &str = "pep.NotifyMany";
        let n = qs.len();
        let (items, tokens): (Vec<pep::NotifyRequest>, Vec<Token>) =
            qs.into_iter().map(|(q, t)| (to_proto_notify(q), t)).unzip();
        // The items are kept to be sent again one by one if the batch is refused as a whole.
        let mut req = tonic::Request::new(pep::NotifyManyRequest { items: items.clone() });
        req.set_timeout(self.timeout);
        append_distinct(req.metadata_mut(), shep_consent::METADATA_KEY, tokens.iter().map(|t| t.0.as_str()));
        let results = match self.pep.clone().notify_many(req).await {
            Ok(r) => r.into_inner().results,
            Err(s) => {
                let e = CallError::from_status(M, &s);
                if e.retryable || n == 1 {
                    return all_failed(n, e);
                }
                let alone = items.into_iter().zip(&tokens).map(|(q, t)| self.notify_alone(q, t));
                return futures::future::join_all(alone).await;
            }
        };
        each_of(results, n)
            .zip(&items)
            .map(|(r, q)| match r.and_then(|r| r.result) {
                Some(pep::notify_result::Result::Notified(r)) => notified(M, r),
                Some(pep::notify_result::Result::Error(e)) => Err(item_failed(M, e.code, e.message, &e.reason)),
                None => Err(CallError::bad_data(M, format!("no result for case {}", q.case_id))),
            })
            .collect()
    }

    /// e-license `ReissuePermit` (idempotent by key); the new permit's number.
    pub async fn reissue(
        &self,
        permit: &str,
        subject: &Subject,
        new_name: &SubjectName,
        idempotency_key: &str,
        reason: String,
        token: Option<&Token>,
    ) -> Result<String, CallError> {
        const M: &str = "elicense.ReissuePermit";
        if let (Some(b), Subject::Organization(bin), SubjectName::Organization { ru, kk }, None) =
            (&self.batches, subject, new_name, token)
        {
            let item = elicense::OrganizationReissue {
                permit_number: permit.to_owned(),
                holder_bin: bin.to_string(),
                new_name: Some(shep::LocalizedText {
                    ru: ru.clone(),
                    kk: kk.clone(),
                }),
                idempotency_key: idempotency_key.to_owned(),
                reason,
            };
            return b.reissues.call(item).await;
        }
        let name = match new_name {
            SubjectName::Organization { ru, kk } => {
                elicense::holder_name::Name::Organization(shep::LocalizedText {
                    ru: ru.clone(),
                    kk: kk.clone(),
                })
            }
            SubjectName::Person {
                surname,
                name,
                patronymic,
            } => elicense::holder_name::Name::Person(shep::FullName {
                surname: surname.clone(),
                name: name.clone(),
                patronymic: patronymic.clone(),
            }),
        };
        let req = elicense::ReissuePermitRequest {
            permit_number: permit.to_owned(),
            holder: Some(holder(subject)),
            new_holder_name: Some(elicense::HolderName { name: Some(name) }),
            idempotency_key: idempotency_key.to_owned(),
            reason,
        };
        let r = self
            .elicense
            .clone()
            .reissue_permit(self.req(req, token))
            .await
            .map_err(|s| CallError::from_status(M, &s))?;
        match r.into_inner().new_permit {
            Some(p) if !p.number.is_empty() => Ok(p.number),
            _ => Err(CallError::bad_data(M, "no new permit".into())),
        }
    }

    /// e-license `ReissueOrganizationPermits` for the re-issues of a batch; each result as
    /// [`Upstream::reissue`] would give it (the new permit's number, or the error
    /// `ReissuePermit` would have answered, with its reason).
    async fn reissue_organizations(
        &self,
        items: Vec<elicense::OrganizationReissue>,
    ) -> Vec<Result<String, CallError>> {
        const M: &str = "elicense.ReissueOrganizationPermits";
        let n = items.len();
        let req = elicense::ReissueOrganizationPermitsRequest { items };
        let results = match self
            .elicense
            .clone()
            .reissue_organization_permits(self.req(req, None))
            .await
        {
            Ok(r) => r.into_inner().results,
            Err(s) => return all_failed(n, CallError::from_status(M, &s)),
        };
        each_of(results, n)
            .enumerate()
            .map(|(i, r)| match r.and_then(|r| r.result) {
                Some(elicense::reissue_result::Result::Reissued(r)) => match r.new_permit {
                    Some(p) if !p.number.is_empty() => Ok(p.number),
                    _ => Err(CallError::bad_data(M, "no new permit".into())),
                },
                Some(elicense::reissue_result::Result::Error(e)) => Err(item_failed(M, e.code, e.message, &e.reason)),
                None => Err(CallError::bad_data(M, format!("no result for item {i}"))),
            })
            .collect()
    }

    /// PEP `StreamAnswers` from `cursor`; with `follow` the stream stays open.
    pub async fn answers(
        &self,
        cursor: Option<String>,
        follow: bool,
    ) -> Result<BoxStream<AnswerItem>, CallError> {
        const M: &str = "pep.StreamAnswers";
        let req = pep::StreamAnswersRequest {
            cursor: cursor.unwrap_or_default(),
            follow,
        };
        let mut r = tonic::Request::new(req);
        if !follow {
            r.set_timeout(self.timeout);
        }
        let s = self
            .pep
            .clone()
            .stream_answers(r)
            .await
            .map_err(|s| CallError::from_status(M, &s))?
            .into_inner();
        let items: BoxStream<AnswerItem> = Box::pin(s.map(|r| {
            let a = r.map_err(|s| CallError::from_status(M, &s))?;
            Ok(AnswerItem {
                cursor: a.cursor,
                case_id: a.case_id,
                attempt: a.attempt,
                sms_id: a.sms_id,
                text: a.text,
                received_at: a.received_at.as_ref().and_then(from_proto_ts),
            })
        }));
        // Following, silence is normal; a plain read ends, or stalls only on a stuck peer.
        Ok(if follow {
            items
        } else {
            idle_bounded(items, self.timeout, M)
        })
    }

    /// The deadline of one call (client side too: a peer that never answers must not hold a
    /// case forever).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        let e = CallError::from_status("m", &tonic::Status::unavailable("down"));
        assert!(e.retryable && e.consent_refused.is_none());
        let e = CallError::from_status("m", &tonic::Status::not_found("no"));
        assert!(!e.retryable);
        let refused = shep_runtime::status::error(
            tonic::Code::PermissionDenied,
            "revoked",
            "CONSENT_REVOKED",
            [],
        );
        let e = CallError::from_status("m", &refused);
        assert_eq!(e.consent_refused.as_deref(), Some("CONSENT_REVOKED"));
        assert!(!e.retryable);
        assert!(e.message.contains("CONSENT_REVOKED"));
        let expired = shep_runtime::status::error(
            tonic::Code::PermissionDenied,
            "expired",
            "CONSENT_EXPIRED",
            [],
        );
        let e = CallError::from_status("m", &expired);
        assert!(e.retryable && e.consent_refused.is_none(), "{e:?}");
        let stale = shep_runtime::status::error(
            tonic::Code::Unavailable,
            "stale",
            "CONSENT_REVOCATIONS_STALE",
            [],
        );
        let e = CallError::from_status("m", &stale);
        assert!(e.retryable && e.consent_refused.is_none(), "{e:?}");
    }
}
