//! Consent: the KDP token checks of personal-data calls.
//!
//! [`decide`] is the pure decision: for every subject a request names, one token among
//! those presented must verify with KDP's key, be for that subject, this caller and a
//! covering scope, be unexpired and not revoked. [`ConsentState`] holds what the decision
//! needs from KDP — the public key and the revocations — kept current by two background
//! tasks ([`spawn_kdp_tasks`]): the key fetcher (retrying until KDP answers, then refreshing)
//! and the revocation follower (`StreamRevocations`, first to the end, then in follow mode,
//! resuming by cursor after a break). Until the key is known, or when the revocation feed
//! has been lost longer than the configured bound, personal-data calls are refused
//! (fail closed).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use shep_consent::{Claims, Refusal, Verifier};
use shep_proto::kdp;
use shep_proto::kdp::consent_service_client::ConsentServiceClient;
use crate::upstream_client::UpstreamClient;

/// The revocations received from KDP that can still matter.
///
/// Bounded by time: a revocation at `t` applies only to tokens issued at or before `t`, and
/// the bus accepts no token living longer than `max_lifetime` seconds ([`decide`] refuses
/// it), so every token it could apply to has expired after `t + max_lifetime`; it is
/// dropped then (at the next [`RevocationSet::add`]). What is kept is at most the
/// revocations of the last `max_lifetime` seconds of the token clock.
#[derive(Debug, Clone)]
pub struct RevocationSet {
    /// Revoked token id → the time after which it is dropped.
    token_ids: HashMap<String, i64>,
    /// (subject, consumer, scope) → latest `revoked_at` (unix seconds).
    consents: HashMap<ConsentKey, i64>,
    /// What to drop when, earliest first (entries overtaken by a later revocation of the
    /// same key are skipped when they come up).
    expiry: BinaryHeap<Reverse<(i64, Expiring)>>,
    max_lifetime: i64,
}

type ConsentKey = (String, String, String);

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Expiring {
    Token(String),
    Consent(ConsentKey),
}

impl Default for RevocationSet {
    fn default() -> Self {
        RevocationSet::new(366 * 86_400)
    }
}

impl RevocationSet {
    /// An empty set for tokens living at most `max_lifetime_secs`.
    pub fn new(max_lifetime_secs: u64) -> Self {
        RevocationSet {
            token_ids: HashMap::new(),
            consents: HashMap::new(),
            expiry: BinaryHeap::new(),
            max_lifetime: i64::try_from(max_lifetime_secs).unwrap_or(i64::MAX),
        }
    }

    /// The longest token lifetime accepted, in seconds.
    pub fn max_lifetime(&self) -> i64 {
        self.max_lifetime
    }

    /// Records a revocation, then drops those that can no longer apply at `now` (unix
    /// seconds on the token clock). A revocation without `revoked_at` is kept for ever.
    pub fn add(&mut self, r: &kdp::Revocation, now: i64) {
        let at = r.revoked_at.as_ref().map(|t| t.seconds).unwrap_or(i64::MAX);
        let drop_after = at.saturating_add(self.max_lifetime);
        for id in &r.token_ids {
            let e = self.token_ids.entry(id.clone()).or_insert(drop_after);
            *e = (*e).max(drop_after);
            self.expiry
                .push(Reverse((drop_after, Expiring::Token(id.clone()))));
        }
        let key = (r.subject.clone(), r.consumer.clone(), r.scope.clone());
        let e = self.consents.entry(key.clone()).or_insert(at);
        *e = (*e).max(at);
        self.expiry
            .push(Reverse((drop_after, Expiring::Consent(key))));
        self.prune(now);
    }

    /// Drops the revocations whose tokens have all expired at `now`.
    pub fn prune(&mut self, now: i64) {
        while let Some(Reverse((t, _))) = self.expiry.peek() {
            if *t >= now {
                break;
            }
            let Some(Reverse((t, what))) = self.expiry.pop() else {
                break;
            };
            match what {
                Expiring::Token(id) => {
                    if self.token_ids.get(&id) == Some(&t) {
                        self.token_ids.remove(&id);
                    }
                }
                Expiring::Consent(key) => {
                    if self
                        .consents
                        .get(&key)
                        .is_some_and(|at| at.saturating_add(self.max_lifetime) == t)
                    {
                        self.consents.remove(&key);
                    }
                }
            }
        }
    }

    /// True when the token is listed, or was issued at or before a revocation of the same
    /// subject, consumer and scope.
    pub fn is_revoked(&self, c: &Claims) -> bool {
        self.token_ids.contains_key(&c.token_id)
            || self
                .consents
                .get(&(c.subject.clone(), c.consumer.clone(), c.scope.clone()))
                .is_some_and(|&at| c.issued_at <= at)
    }

    /// Revoked token ids and revoked consents kept.
    pub fn len(&self) -> usize {
        self.token_ids.len() + self.consents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.token_ids.is_empty() && self.consents.is_empty()
    }
}

/// Why a personal-data call is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsentRefusal {
    /// A token problem (missing, forged, expired, revoked, wrong subject/consumer/scope).
    #[error("{0}")]
    Token(Refusal),
    /// KDP's public key is not known yet (KDP not reached since start).
    #[error("consent cannot be verified: KDP's public key is not known yet")]
    KeyUnavailable,
    /// The revocation feed is not caught up or was lost longer than the bound.
    #[error("consent cannot be verified: KDP's revocation feed is not current")]
    RevocationsStale,
}

impl ConsentRefusal {
    /// The ErrorInfo reason: [`Refusal::reason`] for token problems.
    pub fn reason(&self) -> &'static str {
        match self {
            ConsentRefusal::Token(r) => r.reason(),
            ConsentRefusal::KeyUnavailable => "CONSENT_KEY_UNAVAILABLE",
            ConsentRefusal::RevocationsStale => "CONSENT_REVOCATIONS_STALE",
        }
    }

    /// The gRPC code: UNAUTHENTICATED for a missing token (the call lacks a credential),
    /// UNAVAILABLE when the bus cannot verify (retry later), PERMISSION_DENIED otherwise.
    pub fn code(&self) -> tonic::Code {
        match self {
            ConsentRefusal::Token(Refusal::Missing) => tonic::Code::Unauthenticated,
            ConsentRefusal::Token(_) => tonic::Code::PermissionDenied,
            ConsentRefusal::KeyUnavailable | ConsentRefusal::RevocationsStale => {
                tonic::Code::Unavailable
            }
        }
    }
}

/// What [`decide`] needs to know about KDP.
pub struct KdpView<'a> {
    pub verifier: Option<&'a Verifier>,
    pub revocations: &'a RevocationSet,
    /// The revocation feed is caught up and not lost longer than the bound.
    pub feed_fresh: bool,
    /// Signatures already verified with this key (none: verify every time).
    pub cache: Option<&'a TokenCache>,
}

/// Tokens whose signature verified with the current key, by their text: a repeated token
/// costs a hash look-up instead of an Ed25519 verification. Only the signature is cached;
/// expiry, subject, consumer, scope and revocation are checked on every call. Emptied when
/// the key changes or when it reaches its capacity.
#[derive(Debug, Default)]
pub struct TokenCache {
    map: std::sync::Mutex<HashMap<String, Claims>>,
}

impl TokenCache {
    /// Most tokens kept.
    pub const CAPACITY: usize = 65_536;

    /// The claims of a token whose signature verifies with `v` (from the cache when seen).
    pub fn verify(&self, v: &Verifier, token: &str) -> Result<Claims, Refusal> {
        if let Some(c) = self.map.lock().expect("token cache").get(token) {
            return Ok(c.clone());
        }
        let c = v.verify(token)?;
        let mut m = self.map.lock().expect("token cache");
        if m.len() >= Self::CAPACITY {
            m.clear();
        }
        m.insert(token.to_owned(), c.clone());
        Ok(c)
    }

    pub fn clear(&self) {
        self.map.lock().expect("token cache").clear();
    }

    pub fn len(&self) -> usize {
        self.map.lock().expect("token cache").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Decides whether `tokens` allow `caller` to touch every one of `subjects` under `scope`
/// at `now` (unix seconds). Returns the ids of the tokens used, one per subject (in the
/// subjects' order, without duplicates). No subject: allowed, no token needed.
///
/// When no token fits a subject, the refusal reported is that of a token issued for that
/// subject if there is one (expired, revoked, scope...), else the first other problem.
pub fn decide(
    subjects: &[String],
    tokens: &[&str],
    caller: &str,
    scope: &str,
    now: i64,
    kdp: &KdpView<'_>,
) -> Result<Vec<String>, ConsentRefusal> {
    if subjects.is_empty() {
        return Ok(vec![]);
    }
    let verifier = kdp.verifier.ok_or(ConsentRefusal::KeyUnavailable)?;
    if !kdp.feed_fresh {
        return Err(ConsentRefusal::RevocationsStale);
    }
    if tokens.is_empty() {
        return Err(ConsentRefusal::Token(Refusal::Missing));
    }
    let verified: Vec<Result<Claims, Refusal>> = tokens
        .iter()
        .map(|t| match kdp.cache {
            Some(c) => c.verify(verifier, t),
            None => verifier.verify(t),
        })
        .map(|r| {
            r.and_then(|c| {
                let max = kdp.revocations.max_lifetime();
                if c.expires_at.saturating_sub(c.issued_at) > max {
                    return Err(Refusal::Malformed(format!(
                        "token {} lives {} s, longer than the bus accepts ({max} s, bus.consent.max_token_lifetime_secs)",
                        c.token_id,
                        c.expires_at.saturating_sub(c.issued_at)
                    )));
                }
                Ok(c)
            })
        })
        .collect();
    let mut used = vec![];
    for subject in subjects {
        let mut best: Option<(u8, Refusal)> = None;
        let mut found = None;
        for v in &verified {
            let outcome = v.clone().and_then(|c| {
                c.check(subject, caller, scope, now)?;
                if kdp.revocations.is_revoked(&c) {
                    return Err(Refusal::Revoked(c.token_id.clone()));
                }
                Ok(c)
            });
            match outcome {
                Ok(c) => {
                    found = Some(c.token_id);
                    break;
                }
                Err(r) => {
                    // Prefer what is wrong with a token for this subject over "wrong subject".
                    let rank = if matches!(r, Refusal::SubjectMismatch { .. }) {
                        0
                    } else {
                        1
                    };
                    if best.as_ref().is_none_or(|(b, _)| rank > *b) {
                        best = Some((rank, r));
                    }
                }
            }
        }
        match found {
            Some(id) => {
                if !used.contains(&id) {
                    used.push(id)
                }
            }
            None => {
                return Err(ConsentRefusal::Token(
                    best.map(|(_, r)| r).unwrap_or(Refusal::Missing),
                ));
            }
        }
    }
    Ok(used)
}

#[derive(Debug)]
struct Feed {
    caught_up: bool,
    connected: bool,
    lost_since: Instant,
}

#[derive(Debug)]
struct Inner {
    verifier: Option<Verifier>,
    public_key: Vec<u8>,
    cache: TokenCache,
    key_id: String,
    revocations: RevocationSet,
    feed: Feed,
}

/// What the bus knows from KDP, shared by the request path and the background tasks.
#[derive(Clone)]
pub struct ConsentState {
    inner: Arc<RwLock<Inner>>,
    stale_after: Duration,
    /// The clock revocations are aged by (the token clock).
    clock: crate::gate::TokenClock,
}

impl std::fmt::Debug for ConsentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsentState")
            .field("inner", &self.inner)
            .field("stale_after", &self.stale_after)
            .finish_non_exhaustive()
    }
}

impl ConsentState {
    /// Knows nothing yet: every personal-data call is refused until the key and the
    /// revocations arrive. Tokens living longer than `max_token_lifetime_secs` are refused;
    /// revocations are aged by `clock` (see [`RevocationSet`]).
    pub fn new(
        stale_after: Duration,
        max_token_lifetime_secs: u64,
        clock: crate::gate::TokenClock,
    ) -> Self {
        ConsentState {
            inner: Arc::new(RwLock::new(Inner {
                verifier: None,
                public_key: vec![],
                cache: TokenCache::default(),
                key_id: String::new(),
                revocations: RevocationSet::new(max_token_lifetime_secs),
                feed: Feed {
                    caught_up: false,
                    connected: false,
                    lost_since: Instant::now(),
                },
            })),
            stale_after,
            clock,
        }
    }

    /// Runs [`decide`] with the current key and revocations at `now` / `now_instant`.
    pub fn decide(
        &self,
        subjects: &[String],
        tokens: &[&str],
        caller: &str,
        scope: &str,
        now: i64,
        now_instant: Instant,
    ) -> Result<Vec<String>, ConsentRefusal> {
        let g = self.inner.read().expect("consent lock");
        let feed_fresh = g.feed.caught_up
            && (g.feed.connected
                || now_instant.saturating_duration_since(g.feed.lost_since) <= self.stale_after);
        decide(
            subjects,
            tokens,
            caller,
            scope,
            now,
            &KdpView {
                verifier: g.verifier.as_ref(),
                revocations: &g.revocations,
                feed_fresh,
                cache: Some(&g.cache),
            },
        )
    }

    /// Sets KDP's public key.
    pub fn set_key(&self, public_key: Vec<u8>, key_id: String) {
        let mut g = self.inner.write().expect("consent lock");
        if g.public_key != public_key {
            g.cache.clear();
            g.verifier = Some(Verifier::new(public_key.clone()));
            g.public_key = public_key;
        }
        g.key_id = key_id;
    }

    /// Whether the key is known.
    pub fn has_key(&self) -> bool {
        self.inner.read().expect("consent lock").verifier.is_some()
    }

    /// Records a revocation (dropping those that can no longer apply).
    pub fn revoke(&self, r: &kdp::Revocation) {
        let now = (self.clock)();
        self.inner
            .write()
            .expect("consent lock")
            .revocations
            .add(r, now);
    }

    /// Revoked token ids and consents kept.
    pub fn revocations_kept(&self) -> usize {
        self.inner.read().expect("consent lock").revocations.len()
    }

    fn set_feed(&self, caught_up: Option<bool>, connected: bool) {
        let mut g = self.inner.write().expect("consent lock");
        if let Some(c) = caught_up {
            g.feed.caught_up = c;
        }
        if g.feed.connected && !connected {
            g.feed.lost_since = Instant::now();
        }
        g.feed.connected = connected;
    }

    /// Whether the revocation feed is followed live now.
    pub fn feed_connected(&self) -> bool {
        let g = self.inner.read().expect("consent lock");
        g.feed.caught_up && g.feed.connected
    }
}

/// Starts the key fetcher and the revocation follower on the channel to `kdp_system` (the
/// current one at each attempt, so that a rotated certificate is used). They stop when
/// `shutdown` triggers.
pub fn spawn_kdp_tasks(
    upstreams: crate::upstreams::Upstreams,
    kdp_system: String,
    state: ConsentState,
    key_refresh: Duration,
    retry_max: Duration,
    shutdown: shep_runtime::Shutdown,
) -> Vec<tokio::task::JoinHandle<()>> {
    let key_task = {
        let (ups, sys, st, sd) = (
            upstreams.clone(),
            kdp_system.clone(),
            state.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            let mut backoff = Backoff::new(retry_max);
            loop {
                let fetched = match ups.get(&sys) {
                    Some(ch) => ConsentServiceClient::new(ch)
                        .get_public_key(kdp::GetPublicKeyRequest {})
                        .await
                        .map_err(|e| (e.message().to_owned(), e.code())),
                    None => Err((format!("no channel to {sys}"), tonic::Code::Unavailable)),
                };
                let wait = match fetched {
                    Ok(r) => {
                        let r = r.into_inner();
                        if !st.has_key() {
                            tracing::info!(key_id = %r.key_id, "KDP public key fetched: personal-data calls can be verified");
                        }
                        st.set_key(r.public_key, r.key_id);
                        backoff.reset();
                        key_refresh
                    }
                    Err((error, code)) => {
                        if !st.has_key() {
                            tracing::warn!(%error, ?code, "KDP unreachable: personal-data calls are refused until its key is fetched");
                        }
                        backoff.next_delay()
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = sd.wait() => return,
                }
            }
        })
    };
    let feed_task = {
        let sd = shutdown.clone();
        tokio::spawn(async move {
            let mut cursor = String::new();
            let mut caught_up = false;
            let mut backoff = Backoff::new(retry_max);
            loop {
                let Some(channel) = upstreams.get(&kdp_system) else {
                    return;
                };
                let run = follow_once(&channel, &state, &mut cursor, &mut caught_up, &mut backoff);
                let r = tokio::select! {
                    r = run => r,
                    _ = sd.wait() => return,
                };
                state.set_feed(None, false);
                if let Err(e) = r {
                    tracing::warn!(error = %e, "KDP revocation feed lost; reconnecting");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = sd.wait() => return,
                }
            }
        })
    };
    vec![key_task, feed_task]
}

async fn follow_once(
    channel: &UpstreamClient,
    state: &ConsentState,
    cursor: &mut String,
    caught_up: &mut bool,
    backoff: &mut Backoff,
) -> Result<(), String> {
    let mut client = ConsentServiceClient::new(channel.clone());
    if !*caught_up {
        // Everything revoked so far, to the end, before any token is accepted.
        let mut s = client
            .stream_revocations(kdp::StreamRevocationsRequest {
                cursor: cursor.clone(),
                follow: false,
            })
            .await
            .map_err(|e| e.message().to_owned())?
            .into_inner();
        while let Some(r) = s.message().await.map_err(|e| e.message().to_owned())? {
            state.revoke(&r);
            *cursor = r.cursor;
        }
        *caught_up = true;
        state.set_feed(Some(true), false);
    }
    let mut s = client
        .stream_revocations(kdp::StreamRevocationsRequest {
            cursor: cursor.clone(),
            follow: true,
        })
        .await
        .map_err(|e| e.message().to_owned())?
        .into_inner();
    state.set_feed(Some(true), true);
    backoff.reset();
    tracing::info!(cursor = %cursor, "following KDP's revocation feed");
    while let Some(r) = s.message().await.map_err(|e| e.message().to_owned())? {
        tracing::info!(subject = %r.subject, consumer = %r.consumer, scope = %r.scope, tokens = r.token_ids.len(), "consent revoked");
        state.revoke(&r);
        *cursor = r.cursor;
    }
    Err("the revocation stream ended".into())
}

/// Exponential back-off from 50 ms to a maximum.
#[derive(Debug)]
pub struct Backoff {
    cur: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(max: Duration) -> Self {
        Backoff {
            cur: Duration::from_millis(50),
            max: max.max(Duration::from_millis(50)),
        }
    }
    pub fn next_delay(&mut self) -> Duration {
        let d = self.cur;
        self.cur = (self.cur * 2).min(self.max);
        d
    }
    pub fn reset(&mut self) {
        self.cur = Duration::from_millis(50);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shep_consent::Signer;

    const A: &str = "900515300018";
    const B: &str = "850101400021";

    fn claims(id: &str, subject: &str) -> Claims {
        Claims {
            token_id: id.into(),
            subject: subject.into(),
            consumer: "sdu".into(),
            scope: "gbdfl.person.read".into(),
            issued_at: 1_000,
            expires_at: 2_000,
            key_id: String::new(),
        }
    }

    fn view<'a>(v: &'a Verifier, r: &'a RevocationSet) -> KdpView<'a> {
        KdpView {
            verifier: Some(v),
            revocations: r,
            feed_fresh: true,
            cache: None,
        }
    }

    #[test]
    fn one_token_per_subject() {
        let s = Signer::from_seed(&[3; 32], "k").unwrap();
        let v = s.verifier();
        let r = RevocationSet::default();
        let ta = s.sign(&claims("ta", A));
        let tb = s.sign(&claims("tb", B));
        let subj = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let d = |subjects: &[&str], tokens: &[&str]| {
            decide(
                &subj(subjects),
                tokens,
                "sdu",
                "gbdfl.person.read",
                1_500,
                &view(&v, &r),
            )
        };
        assert_eq!(d(&[], &[]), Ok(vec![]));
        assert_eq!(d(&[A], &[&ta]), Ok(vec!["ta".into()]));
        assert_eq!(d(&[A, B], &[&tb, &ta]), Ok(vec!["ta".into(), "tb".into()]));
        assert_eq!(d(&[A, A], &[&ta]), Ok(vec!["ta".into()]));
        assert_eq!(d(&[A], &[]).unwrap_err().reason(), "CONSENT_TOKEN_MISSING");
        assert_eq!(
            d(&[A], &[]).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            d(&[A], &[&tb]).unwrap_err().reason(),
            "CONSENT_SUBJECT_MISMATCH"
        );
        assert_eq!(
            d(&[A, B], &[&ta]).unwrap_err().reason(),
            "CONSENT_SUBJECT_MISMATCH"
        );
        // A wrong-consumer token for the subject says so, even beside one for another subject.
        let mut other = claims("tc", A);
        other.consumer = "pep".into();
        let tc = s.sign(&other);
        assert_eq!(
            d(&[A], &[&tb, &tc]).unwrap_err().reason(),
            "CONSENT_CONSUMER_MISMATCH"
        );
        let forged = Signer::from_seed(&[4; 32], "k")
            .unwrap()
            .sign(&claims("tf", A));
        assert_eq!(
            d(&[A], &[&forged]).unwrap_err().reason(),
            "CONSENT_BAD_SIGNATURE"
        );
        assert_eq!(
            d(&[A], &[&forged]).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        let at_expiry = decide(
            &subj(&[A]),
            &[&ta],
            "sdu",
            "gbdfl.person.read",
            2_000,
            &view(&v, &r),
        );
        assert_eq!(at_expiry.unwrap_err().reason(), "CONSENT_EXPIRED");
        let scope = decide(
            &subj(&[A]),
            &[&ta],
            "sdu",
            "zags.acts.read",
            1_500,
            &view(&v, &r),
        );
        assert_eq!(scope.unwrap_err().reason(), "CONSENT_SCOPE_NOT_COVERED");
    }

    #[test]
    fn revocations_by_id_and_by_consent() {
        let s = Signer::from_seed(&[3; 32], "k").unwrap();
        let v = s.verifier();
        let ta = s.sign(&claims("ta", A));
        let mut r = RevocationSet::default();
        let subj = vec![A.to_string()];
        let d = |r: &RevocationSet, t: &str| {
            decide(&subj, &[t], "sdu", "gbdfl.person.read", 1_500, &view(&v, r))
        };
        assert!(d(&r, &ta).is_ok());
        r.add(
            &kdp::Revocation {
                token_ids: vec!["ta".into()],
                ..Default::default()
            },
            1_500,
        );
        assert_eq!(d(&r, &ta).unwrap_err().reason(), "CONSENT_REVOKED");

        // By consent: tokens issued at or before `revoked_at` are refused, later ones pass.
        let mut r = RevocationSet::default();
        r.add(
            &kdp::Revocation {
                subject: A.into(),
                consumer: "sdu".into(),
                scope: "gbdfl.person.read".into(),
                revoked_at: Some(prost_types::Timestamp {
                    seconds: 1_000,
                    nanos: 0,
                }),
                ..Default::default()
            },
            1_500,
        );
        assert_eq!(d(&r, &ta).unwrap_err().reason(), "CONSENT_REVOKED");
        let mut later = claims("tl", A);
        later.issued_at = 1_001;
        assert!(d(&r, &s.sign(&later)).is_ok());
    }

    fn revocation(ids: &[&str], subject: &str, at: i64) -> kdp::Revocation {
        kdp::Revocation {
            token_ids: ids.iter().map(|s| s.to_string()).collect(),
            subject: subject.into(),
            consumer: "sdu".into(),
            scope: "gbdfl.person.read".into(),
            revoked_at: Some(prost_types::Timestamp {
                seconds: at,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn revocations_are_dropped_once_every_token_they_cover_expired() {
        // Tokens live at most 1000 s: a revocation at t is kept until t + 1000.
        let mut r = RevocationSet::new(1_000);
        r.add(&revocation(&["t1"], A, 1_000), 1_000);
        r.add(&revocation(&["t2", "t3"], B, 1_500), 1_500);
        assert_eq!(r.len(), 5, "3 token ids and 2 consents");
        let mut c = claims("t1", A);
        c.issued_at = 500;
        c.expires_at = 1_500;
        assert!(r.is_revoked(&c));
        // At 2000 the first revocation still applies (a token issued at 1000 may live to 2000).
        r.prune(2_000);
        assert!(r.is_revoked(&c));
        assert_eq!(r.len(), 5);
        // A newer revocation of the same consent keeps it past the first one's end.
        r.add(&revocation(&[], A, 1_900), 2_000);
        r.prune(2_001);
        assert_eq!(
            r.len(),
            4,
            "t1 dropped; t2, t3, A's consent (revoked again at 1900) and B's kept"
        );
        assert!(!r.token_ids.contains_key("t1"));
        assert!(
            r.is_revoked(&c),
            "still covered by the consent revoked at 1900"
        );
        // Once every revocation is older than the longest lifetime, nothing is kept.
        r.add(&revocation(&["t9"], B, 10_000), 10_000);
        assert_eq!(r.len(), 2, "only the revocation at 10000 is left");
        assert_eq!(r.expiry.len(), 2);
        r.prune(11_001);
        assert!(r.is_empty());
        assert!(r.expiry.is_empty());
        // However many revocations pass, the set holds only the last lifetime's worth.
        let mut r = RevocationSet::new(100);
        for t in 0..10_000i64 {
            r.add(&revocation(&[&format!("id{t}")], A, t), t);
        }
        assert!(r.len() <= 2 * 102, "{} kept", r.len());
        assert!(r.expiry.len() <= 2 * 102, "{} queued", r.expiry.len());
    }

    #[test]
    fn tokens_living_longer_than_the_bound_are_refused() {
        let s = Signer::from_seed(&[3; 32], "k").unwrap();
        let v = s.verifier();
        let subj = vec![A.to_string()];
        let t = s.sign(&claims("ta", A)); // lives 1000 s
        let within = RevocationSet::new(1_000);
        assert!(
            decide(
                &subj,
                &[&t],
                "sdu",
                "gbdfl.person.read",
                1_500,
                &view(&v, &within)
            )
            .is_ok()
        );
        let shorter = RevocationSet::new(999);
        let e = decide(
            &subj,
            &[&t],
            "sdu",
            "gbdfl.person.read",
            1_500,
            &view(&v, &shorter),
        )
        .unwrap_err();
        assert_eq!(e.reason(), "CONSENT_TOKEN_MALFORMED");
        assert!(e.to_string().contains("max_token_lifetime_secs"), "{e}");
    }

    #[test]
    fn fails_closed_without_key_or_feed() {
        let s = Signer::from_seed(&[3; 32], "k").unwrap();
        let r = RevocationSet::default();
        let ta = s.sign(&claims("ta", A));
        let subj = vec![A.to_string()];
        let no_key = KdpView {
            verifier: None,
            revocations: &r,
            feed_fresh: true,
            cache: None,
        };
        let e = decide(&subj, &[&ta], "sdu", "gbdfl.person.read", 1_500, &no_key).unwrap_err();
        assert_eq!(
            (e.reason(), e.code()),
            ("CONSENT_KEY_UNAVAILABLE", tonic::Code::Unavailable)
        );
        let v = s.verifier();
        let stale = KdpView {
            verifier: Some(&v),
            revocations: &r,
            feed_fresh: false,
            cache: None,
        };
        let e = decide(&subj, &[&ta], "sdu", "gbdfl.person.read", 1_500, &stale).unwrap_err();
        assert_eq!(e.reason(), "CONSENT_REVOCATIONS_STALE");
        // No subject, no consent needed, whatever KDP's state.
        assert_eq!(decide(&[], &[], "sdu", "x", 0, &no_key), Ok(vec![]));
    }

    #[test]
    fn state_is_stale_until_caught_up_and_after_the_bound() {
        let st = ConsentState::new(Duration::from_millis(500), 366 * 86_400, Arc::new(|| 0));
        let s = Signer::from_seed(&[3; 32], "k").unwrap();
        st.set_key(s.public_key(), "k".into());
        let ta = s.sign(&claims("ta", A));
        let subj = vec![A.to_string()];
        let now = Instant::now();
        let d = |at: Instant| st.decide(&subj, &[&ta], "sdu", "gbdfl.person.read", 1_500, at);
        assert_eq!(d(now).unwrap_err().reason(), "CONSENT_REVOCATIONS_STALE");
        st.set_feed(Some(true), true);
        assert!(d(now).is_ok());
        assert!(
            d(now + Duration::from_secs(3600)).is_ok(),
            "connected: fresh however long"
        );
        st.set_feed(None, false);
        let lost = Instant::now();
        assert!(
            d(lost + Duration::from_millis(400)).is_ok(),
            "within the bound"
        );
        assert_eq!(
            d(lost + Duration::from_millis(600)).unwrap_err().reason(),
            "CONSENT_REVOCATIONS_STALE"
        );
    }

    #[test]
    fn the_signature_cache_follows_the_key() {
        let st = ConsentState::new(Duration::from_secs(60), 366 * 86_400, Arc::new(|| 0));
        st.set_feed(Some(true), true);
        let k1 = Signer::from_seed(&[1; 32], "k1").unwrap();
        st.set_key(k1.public_key(), "k1".into());
        let subj = vec![A.to_string()];
        let t = k1.sign(&claims("t1", A));
        let now = Instant::now();
        for _ in 0..3 {
            assert!(
                st.decide(&subj, &[&t], "sdu", "gbdfl.person.read", 1_500, now)
                    .is_ok()
            );
        }
        // Cached or not, expiry is checked on every call.
        let e = st
            .decide(&subj, &[&t], "sdu", "gbdfl.person.read", 2_000, now)
            .unwrap_err();
        assert_eq!(e.reason(), "CONSENT_EXPIRED");
        assert_eq!(st.inner.read().unwrap().cache.len(), 1);
        // A new key: tokens of the old one no longer pass.
        let k2 = Signer::from_seed(&[2; 32], "k2").unwrap();
        st.set_key(k2.public_key(), "k2".into());
        let e = st
            .decide(&subj, &[&t], "sdu", "gbdfl.person.read", 1_500, now)
            .unwrap_err();
        assert_eq!(e.reason(), "CONSENT_BAD_SIGNATURE");
    }
}
