//! PEP: `Portal` — notifies a recipient by SMS (phone from BMG, read with a KDP token),
//! the citizens' answers, the outbox.
//!
//! PEP reaches BMG and KDP through gRPC channels handed to it ([`PepLinks`]): the bus in
//! production, the nodes themselves in tests. The SMS gateway is the in-memory outbox of
//! the simulation; simulated citizens answer by `crate::citizens`.

use std::sync::Arc;
use std::time::Duration;

use std::sync::OnceLock;

use shep_proto::bmg::mobile_registry_client::MobileRegistryClient;
use shep_proto::bmg::{GetMobileNumberRequest, GetMobileNumberResponse, GetMobileNumbersRequest, mobile_number_result};
use shep_proto::kdp::consent_service_client::ConsentServiceClient;
use shep_proto::kdp::{IssueTokensRequest, token_result};
use shep_runtime::batch::{Batcher, all_failed, append_distinct, each_of};
use shep_proto::pep::portal_server::Portal;
use shep_proto::pep::{
    Answer, Language, ListOutboxRequest, NotifyError, NotifyManyRequest, NotifyManyResponse, NotifyRequest,
    NotifyResponse, NotifyResult, OutboxSms, StreamAnswersRequest, notify_result,
};
use shep_runtime::status::{error, invalid_field, parse_bin, parse_iin, reason};
use tonic::{Code, Request, Response, Status};

use super::common::{Feed, batch_size, required, tail};
use crate::catalog::{self, Lang};
use crate::citizens;
use crate::cursor;
use crate::sim::Simulation;
use crate::state::sms::{Notified, Sms};
use crate::time::ts;

const ANSWERS: &str = "pep.answers";
const OUTBOX: &str = "pep.outbox";

/// The consumer id PEP asks KDP tokens for, and the scope of reading a phone.
pub const PEP_CONSUMER: &str = "pep";
pub const PHONE_SCOPE: &str = "bmg.phone.read";

/// How long PEP waits for KDP or BMG.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(10);

/// PEP's channels to BMG and KDP (both the bus in production, `https://127.0.0.1:7000`).
#[derive(Clone, Debug)]
pub struct PepLinks {
    pub bmg: tonic::transport::Channel,
    pub kdp: tonic::transport::Channel,
}

/// The PEP simulator.
pub struct Pep {
    pub sim: Arc<Simulation>,
    pub links: Option<PepLinks>,
    /// Its phone look-ups in batches, started on first use.
    pub batches: OnceLock<PhoneBatches>,
}

/// Most subjects in one of PEP's batch look-ups (each token travels in the call's headers).
const PHONE_BATCH: usize = 32;

/// PEP's phone look-ups, coalesced: the tokens (KDP `IssueTokens`) and the numbers (BMG
/// `GetMobileNumbers`) that SMS sent at the same time need go in batch calls, each subject
/// with its own token. A lone SMS still makes its calls at once.
pub struct PhoneBatches {
    tokens: Batcher<String, Result<String, Status>>,
    numbers: Batcher<(String, String), Result<GetMobileNumberResponse, Status>>,
}

impl PhoneBatches {
    fn new(links: &PepLinks) -> PhoneBatches {
        let (kdp, bmg) = (links.kdp.clone(), links.bmg.clone());
        PhoneBatches {
            tokens: Batcher::new("kdp.IssueTokens", PHONE_BATCH, 1, lost, move |subjects| {
                issue_tokens(ConsentServiceClient::new(kdp.clone()), subjects)
            }),
            numbers: Batcher::new("bmg.GetMobileNumbers", PHONE_BATCH, 1, lost, move |qs| {
                numbers(MobileRegistryClient::new(bmg.clone()), qs)
            }),
        }
    }
}

fn lost<T>(why: String) -> Result<T, Status> {
    Err(Status::unavailable(why))
}

/// A token for "pep" to read each subject's phone; each result as `IssueToken` gives it.
async fn issue_tokens(
    mut kdp: ConsentServiceClient<tonic::transport::Channel>,
    subjects: Vec<String>,
) -> Vec<Result<String, Status>> {
    let n = subjects.len();
    let mut req = Request::new(IssueTokensRequest {
        subjects,
        consumer: PEP_CONSUMER.into(),
        scope: PHONE_SCOPE.into(),
    });
    req.set_timeout(UPSTREAM_TIMEOUT);
    let results = match kdp.issue_tokens(req).await {
        Ok(r) => r.into_inner().results,
        Err(s) => return all_failed(n, s),
    };
    each_of(results, n)
        .enumerate()
        .map(|(i, r)| match r.and_then(|r| r.result) {
            Some(token_result::Result::Token(t)) => Ok(t.token),
            Some(token_result::Result::Refusal(f)) if f.code == Code::FailedPrecondition as i32 => Err(error(
                Code::FailedPrecondition,
                f.message,
                crate::services::kdp::NO_CONSENT,
                [("consumer", PEP_CONSUMER.to_owned()), ("scope", f.scope)],
            )),
            Some(token_result::Result::Refusal(f)) => Err(Status::new(Code::from_i32(f.code), f.message)),
            None => Err(Status::internal(format!("KDP gave no result for subject {i}"))),
        })
        .collect()
}

/// The numbers of (IIN, token) pairs; each result as `GetMobileNumber` gives it. A batch
/// refused as a whole for a reason that does not pass (one subject's consent revoked
/// meanwhile, say) is asked again one subject at a time.
async fn numbers(
    mut bmg: MobileRegistryClient<tonic::transport::Channel>,
    qs: Vec<(String, String)>,
) -> Vec<Result<GetMobileNumberResponse, Status>> {
    let mut req = Request::new(GetMobileNumbersRequest { iins: qs.iter().map(|(i, _)| i.clone()).collect() });
    req.set_timeout(UPSTREAM_TIMEOUT);
    append_distinct(req.metadata_mut(), shep_consent::METADATA_KEY, qs.iter().map(|(_, t)| t.as_str()));
    let results = match bmg.get_mobile_numbers(req).await {
        Ok(r) => r.into_inner().results,
        Err(s) if transient(s.code()) || qs.len() == 1 => return all_failed(qs.len(), s),
        Err(_) => return futures::future::join_all(qs.iter().map(|(i, t)| number(bmg.clone(), i, t))).await,
    };
    each_of(results, qs.len())
        .enumerate()
        .map(|(i, r)| match r.and_then(|r| r.result) {
            Some(mobile_number_result::Result::Number(n)) => Ok(n),
            Some(mobile_number_result::Result::Error(e)) => Err(Status::new(Code::from_i32(e.code), e.message)),
            None => Err(Status::internal(format!("BMG gave no result for IIN {i}"))),
        })
        .collect()
}

/// BMG `GetMobileNumber` of one person, with the token.
async fn number(
    mut bmg: MobileRegistryClient<tonic::transport::Channel>,
    iin: &str,
    token: &str,
) -> Result<GetMobileNumberResponse, Status> {
    let mut req = Request::new(GetMobileNumberRequest { iin: iin.to_owned() });
    req.set_timeout(UPSTREAM_TIMEOUT);
    let value = token
        .parse()
        .map_err(|_| error(Code::Internal, "KDP issued a token that is not valid metadata", "BAD_TOKEN", []))?;
    req.metadata_mut().insert(shep_consent::METADATA_KEY, value);
    Ok(bmg.get_mobile_number(req).await?.into_inner())
}

/// Whether a failed upstream call may succeed when retried.
fn transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Internal
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Cancelled
    )
}

/// An upstream failure as PEP answers it: transient ones become UNAVAILABLE (safe to
/// retry), the others (a refusal of consent, of access) are passed on as they are.
fn upstream(what: &str, s: Status) -> Status {
    if transient(s.code()) {
        error(
            Code::Unavailable,
            format!("{what} cannot be reached: {}", s.message()),
            "UPSTREAM_UNAVAILABLE",
            [("upstream", what.to_owned()), ("code", format!("{:?}", s.code()))],
        )
    } else {
        s
    }
}

fn language(lang: Lang) -> Language {
    match lang {
        Lang::Ru => Language::Ru,
        Lang::Kk => Language::Kk,
    }
}

fn respond(n: &Notified, outbox: &[Sms], replayed: bool) -> NotifyResponse {
    let sms = n.sms.and_then(|i| outbox.get(i));
    NotifyResponse {
        outcome: n.outcome as i32,
        sms_id: sms.map(|s| s.id.clone()).unwrap_or_default(),
        sent_at: sms.map(|s| ts(s.sent_at)),
        replayed,
    }
}

impl Pep {
    /// Reads the recipient's phone from BMG with a KDP token for "pep" (in batches with the
    /// other SMS of the moment, see [`PhoneBatches`]).
    async fn phone(&self, iin: &str) -> Result<Option<String>, Status> {
        let links = self.links.as_ref().ok_or_else(|| {
            error(
                Code::Unavailable,
                "PEP has no link to BMG and KDP",
                "UPSTREAM_UNAVAILABLE",
                [("upstream", "bmg".into())],
            )
        })?;
        let b = self.batches.get_or_init(|| PhoneBatches::new(links));
        let token = b.tokens.call(iin.to_owned()).await.map_err(|s| upstream("kdp", s))?;
        let r = b.numbers.call((iin.to_owned(), token)).await.map_err(|s| upstream("bmg", s))?;
        Ok(r.registered.then_some(r.phone).filter(|p| !p.is_empty()))
    }

    /// `Notify` of one request; `at` prefixes the fields named in its errors ("items[3].",
    /// or "" for the single method).
    async fn notify_one(&self, at: &str, r: NotifyRequest) -> Result<NotifyResponse, Status> {
        let field = |f: &str| format!("{at}{f}");
        let iin = parse_iin(&field("iin"), &r.iin)?;
        required(&field("case_id"), &r.case_id)?;
        if r.attempt == 0 {
            return Err(invalid_field(
                &field("attempt"),
                "must be 1 for the first SMS, 2 for the repeat",
                "INVALID_ATTEMPT",
            ));
        }
        if !r.holder_bin.is_empty() {
            parse_bin(&field("holder_bin"), &r.holder_bin)?;
        }
        let pilot = catalog::pilot(&r.pilot_id);
        let text = if !r.text.trim().is_empty() {
            r.text.clone()
        } else if let Some(p) = pilot {
            catalog::sms_text(p, &r.holder_name, &r.permit_numbers)
        } else {
            return Err(invalid_field(
                &field("text"),
                "required unless pilot_id names a pilot with an SMS text",
                "MISSING_FIELD",
            ));
        };
        let lang = match Language::try_from(r.language) {
            Ok(l) if l != Language::Unspecified => l,
            _ => pilot.map(|p| language(p.lang)).unwrap_or(Language::Ru),
        };

        // One notification of a (case, attempt) at a time, so that a repeat never sends twice.
        let lock = self.sim.notify_lock(&r.case_id, r.attempt);
        let _guard = lock.lock().await;
        {
            let st = self.sim.state();
            if let Some(n) = st.sms.notified(&r.case_id, r.attempt) {
                if n.iin != iin || n.text != text {
                    return Err(error(
                        Code::AlreadyExists,
                        format!("case {} attempt {} was notified with another recipient or text", r.case_id, r.attempt),
                        "NOTIFICATION_CONFLICT",
                        [("case_id", r.case_id.clone()), ("attempt", r.attempt.to_string())],
                    ));
                }
                return Ok(respond(n, st.sms.outbox(), true));
            }
        }

        let phone = self.phone(&r.iin).await?;
        let now = self.sim.now();
        let mut st = self.sim.state();
        let n = match phone {
            None => st.sms.record_no_phone(&r.case_id, r.attempt, iin, text, now),
            Some(phone) => {
                let reply =
                    citizens::reply(self.sim.settings().seed, &self.sim.settings().answers, &r.case_id, r.attempt, now)
                        .map(|x| (x.text, x.at));
                let sms = Sms {
                    id: st.sms.next_sms_id(),
                    case_id: r.case_id.clone(),
                    attempt: r.attempt,
                    iin,
                    phone,
                    language: lang,
                    text,
                    sent_at: now,
                };
                tracing::info!(sms = %sms.id, case = %r.case_id, attempt = r.attempt, "SMS sent");
                st.sms.send(sms, reply)
            }
        };
        let resp = respond(&n, st.sms.outbox(), false);
        drop(st);
        self.sim.announce();
        Ok(resp)
    }
}

#[tonic::async_trait]
impl Portal for Pep {
    async fn notify(&self, req: Request<NotifyRequest>) -> Result<Response<NotifyResponse>, Status> {
        self.notify_one("", req.into_inner()).await.map(Response::new)
    }

    async fn notify_many(&self, req: Request<NotifyManyRequest>) -> Result<Response<NotifyManyResponse>, Status> {
        let items = req.into_inner().items;
        batch_size("items", items.len())?;
        // At the same time, so that their phone look-ups share batch calls.
        let results = futures::future::join_all(items.into_iter().enumerate().map(|(i, r)| async move {
            let (case_id, attempt) = (r.case_id.clone(), r.attempt);
            let result = match self.notify_one(&format!("items[{i}]."), r).await {
                Ok(n) => notify_result::Result::Notified(n),
                Err(s) => notify_result::Result::Error(NotifyError {
                    code: s.code() as i32,
                    message: s.message().to_owned(),
                    reason: reason(&s),
                }),
            };
            NotifyResult { case_id, attempt, result: Some(result) }
        }))
        .await;
        Ok(Response::new(NotifyManyResponse { results }))
    }

    type StreamAnswersStream = Feed<Answer>;

    async fn stream_answers(
        &self,
        req: Request<StreamAnswersRequest>,
    ) -> Result<Response<Self::StreamAnswersStream>, Status> {
        let r = req.into_inner();
        let mut next = cursor::next_index(ANSWERS, &r.cursor, "cursor")?;
        Ok(Response::new(tail(self.sim.clone(), r.follow, move |sim| {
            let now = sim.now();
            let mut st = sim.state();
            st.sms.deliver_due(now);
            let outbox = st.sms.outbox();
            let received = st.sms.received();
            let out: Vec<Answer> = received
                .iter()
                .enumerate()
                .skip(next)
                .filter_map(|(i, a)| {
                    let sms = outbox.get(a.sms)?;
                    Some(Answer {
                        cursor: cursor::encode(ANSWERS, &[i as i64]),
                        sms_id: sms.id.clone(),
                        case_id: sms.case_id.clone(),
                        attempt: sms.attempt,
                        iin: sms.iin.to_string(),
                        text: a.text.clone(),
                        received_at: Some(ts(a.received_at)),
                    })
                })
                .collect();
            next = next.max(received.len());
            out
        })))
    }

    type ListOutboxStream = Feed<OutboxSms>;

    async fn list_outbox(&self, req: Request<ListOutboxRequest>) -> Result<Response<Self::ListOutboxStream>, Status> {
        let r = req.into_inner();
        let next = cursor::next_index(OUTBOX, &r.cursor, "cursor")?;
        let take = if r.limit == 0 { usize::MAX } else { r.limit as usize };
        let items: Vec<OutboxSms> = {
            let st = self.sim.state();
            st.sms
                .outbox()
                .iter()
                .enumerate()
                .skip(next)
                .take(take)
                .map(|(i, s)| OutboxSms {
                    cursor: cursor::encode(OUTBOX, &[i as i64]),
                    sms_id: s.id.clone(),
                    case_id: s.case_id.clone(),
                    attempt: s.attempt,
                    iin: s.iin.to_string(),
                    phone: s.phone.clone(),
                    language: s.language as i32,
                    text: s.text.clone(),
                    sent_at: Some(ts(s.sent_at)),
                })
                .collect()
        };
        Ok(Response::new(super::common::feed(items)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shep_proto::pep::NotifyOutcome;

    #[test]
    fn upstream_errors_are_mapped() {
        assert_eq!(upstream("bmg", Status::unavailable("down")).code(), Code::Unavailable);
        assert_eq!(upstream("bmg", Status::internal("x")).code(), Code::Unavailable);
        assert_eq!(upstream("kdp", Status::failed_precondition("no consent")).code(), Code::FailedPrecondition);
        assert_eq!(upstream("bmg", Status::permission_denied("no")).code(), Code::PermissionDenied);
        let n = Notified {
            iin: shep_domain::Iin::parse("900515301234").unwrap(),
            text: "t".into(),
            outcome: NotifyOutcome::NoPhone,
            sms: None,
            at: 0,
        };
        let r = respond(&n, &[], true);
        assert_eq!(r.outcome, NotifyOutcome::NoPhone as i32);
        assert!(r.sms_id.is_empty() && r.sent_at.is_none() && r.replayed);
    }
}
