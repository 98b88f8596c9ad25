//! KDP: `ConsentService` — consents, signed consent tokens, revocations.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use shep_consent::Claims;
use shep_proto::kdp::consent_service_server::ConsentService;
use shep_proto::kdp::{
    Consent, GetPublicKeyRequest, GetPublicKeyResponse, GrantConsentRequest, GrantConsentResponse, IssueTokenRequest,
    IssueTokenResponse, IssueTokensRequest, IssueTokensResponse, Revocation, RevokeConsentRequest, RevokeConsentResponse, StreamRevocationsRequest,
    TokenRefusal, TokenResult, token_result,
};
use shep_runtime::status::{error, invalid_field, parse_iin};
use tonic::{Code, Request, Response, Status};

use super::common::{Feed, each, required, tail};
use crate::cursor;
use crate::sim::Simulation;
use crate::time::ts;

const FEED: &str = "kdp.revocations";

/// The KDP simulator.
pub struct Kdp {
    pub sim: Arc<Simulation>,
}

/// The reason of a refusal for lack of consent.
pub const NO_CONSENT: &str = "NO_CONSENT";

fn token_id(seed: u64, n: u64) -> String {
    let mut h = Sha256::new();
    h.update(b"kdp token");
    h.update(seed.to_le_bytes());
    h.update(n.to_le_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    uuid::Builder::from_random_bytes(b).into_uuid().to_string()
}

impl Kdp {
    /// A token for `subject` (the request field `field`), `consumer` and `scope` (one or
    /// several separated by spaces: one token covering each, issued only when every one is
    /// consented to).
    fn issue(&self, field: &str, subject: &str, consumer: &str, scope: &str) -> Result<IssueTokenResponse, Status> {
        let iin = parse_iin(field, subject)?;
        let scopes: Vec<&str> = scope.split_whitespace().collect();
        let scope = scopes.join(" ");
        let c = self.sim.country();
        let now = self.sim.now();
        let ttl = self.sim.settings().token_ttl_secs as i64;
        let mut st = self.sim.state();
        let mut expires_at = now + ttl;
        for s in &scopes {
            let Some(consent) = st.consents.in_force(c, iin, consumer, s, now) else {
                return Err(error(
                    Code::FailedPrecondition,
                    format!("{subject} has not consented to {s} for {consumer}"),
                    NO_CONSENT,
                    [("subject", subject.to_owned()), ("consumer", consumer.to_owned()), ("scope", (*s).to_owned())],
                ));
            };
            expires_at = consent.valid_until.map_or(expires_at, |v| v.min(expires_at));
        }
        let n = st.consents.next_token_number();
        let signer = self.sim.signer();
        let claims = Claims {
            token_id: token_id(self.sim.settings().seed, n),
            subject: iin.to_string(),
            consumer: consumer.to_owned(),
            scope,
            issued_at: now,
            expires_at,
            key_id: signer.key_id().to_owned(),
        };
        // Withdrawing any of its scopes revokes the token.
        for s in &scopes {
            st.consents.remember_token(iin, consumer, s, claims.token_id.clone(), expires_at, now);
        }
        drop(st);
        let token = signer.sign(&claims);
        Ok(IssueTokenResponse { token, claims: Some(claims.into_proto()) })
    }
}

#[tonic::async_trait]
impl ConsentService for Kdp {
    async fn issue_token(&self, req: Request<IssueTokenRequest>) -> Result<Response<IssueTokenResponse>, Status> {
        let r = req.into_inner();
        parse_iin("subject", &r.subject)?;
        required("consumer", &r.consumer)?;
        required("scope", &r.scope)?;
        self.issue("subject", &r.subject, &r.consumer, &r.scope).map(Response::new)
    }

    async fn issue_tokens(&self, req: Request<IssueTokensRequest>) -> Result<Response<IssueTokensResponse>, Status> {
        let r = req.into_inner();
        required("consumer", &r.consumer)?;
        required("scope", &r.scope)?;
        let results = each("subjects", r.subjects, |f, s| self.issue(f, s, &r.consumer, &r.scope))?
            .into_iter()
            .map(|(subject, issued)| {
                let result = match issued {
                    Ok(t) => token_result::Result::Token(t),
                    Err(s) => {
                        use tonic_types::StatusExt;
                        let scope = s
                            .get_error_details()
                            .error_info()
                            .and_then(|e| e.metadata.get("scope").cloned())
                            .unwrap_or_default();
                        token_result::Result::Refusal(TokenRefusal {
                            code: s.code() as i32,
                            message: s.message().to_owned(),
                            scope,
                        })
                    }
                };
                TokenResult { subject, result: Some(result) }
            })
            .collect();
        Ok(Response::new(IssueTokensResponse { results }))
    }

    async fn get_public_key(
        &self,
        _req: Request<GetPublicKeyRequest>,
    ) -> Result<Response<GetPublicKeyResponse>, Status> {
        let s = self.sim.signer();
        Ok(Response::new(GetPublicKeyResponse {
            algorithm: "Ed25519".into(),
            public_key: s.public_key(),
            key_id: s.key_id().to_owned(),
        }))
    }

    async fn grant_consent(&self, req: Request<GrantConsentRequest>) -> Result<Response<GrantConsentResponse>, Status> {
        let r = req.into_inner();
        let subject = parse_iin("subject", &r.subject)?;
        required("consumer", &r.consumer)?;
        required("scope", &r.scope)?;
        let now = self.sim.now();
        let valid_until = r.valid_until.map(|t| t.seconds);
        if valid_until.is_some_and(|v| v <= now) {
            return Err(invalid_field("valid_until", "is in the past", "IN_THE_PAST"));
        }
        let g = self.sim.state().consents.grant(subject, &r.consumer, &r.scope, now, valid_until);
        Ok(Response::new(GrantConsentResponse {
            consent: Some(Consent {
                subject: subject.to_string(),
                consumer: r.consumer,
                scope: r.scope,
                granted_at: Some(ts(g.granted_at)),
                valid_until: g.valid_until.map(ts),
            }),
        }))
    }

    async fn revoke_consent(
        &self,
        req: Request<RevokeConsentRequest>,
    ) -> Result<Response<RevokeConsentResponse>, Status> {
        let r = req.into_inner();
        let subject = parse_iin("subject", &r.subject)?;
        required("consumer", &r.consumer)?;
        required("scope", &r.scope)?;
        let now = self.sim.now();
        let revoked = self.sim.state().consents.revoke(self.sim.country(), subject, &r.consumer, &r.scope, now);
        self.sim.announce();
        Ok(Response::new(RevokeConsentResponse {
            revoked: revoked.is_some(),
            revoked_at: revoked.map(|r| ts(r.revoked_at)),
        }))
    }

    type StreamRevocationsStream = Feed<Revocation>;

    async fn stream_revocations(
        &self,
        req: Request<StreamRevocationsRequest>,
    ) -> Result<Response<Self::StreamRevocationsStream>, Status> {
        let r = req.into_inner();
        let mut next = cursor::next_index(FEED, &r.cursor, "cursor")?;
        Ok(Response::new(tail(self.sim.clone(), r.follow, move |sim| {
            let st = sim.state();
            let all = st.consents.revocations();
            let out: Vec<Revocation> = all
                .iter()
                .enumerate()
                .skip(next)
                .map(|(i, x)| Revocation {
                    cursor: cursor::encode(FEED, &[i as i64]),
                    token_ids: x.token_ids.clone(),
                    subject: x.subject.to_string(),
                    consumer: x.consumer.clone(),
                    scope: x.scope.clone(),
                    revoked_at: Some(ts(x.revoked_at)),
                })
                .collect();
            next = next.max(all.len());
            out
        })))
    }
}
