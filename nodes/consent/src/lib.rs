//! KDP consent tokens.
//!
//! A token is `base64url(claims) + "." + base64url(signature)`: `claims` are the bytes of a
//! serialized `kz.gov.kdp.v1.ConsentToken`, `signature` the Ed25519 signature over exactly
//! those bytes (base64url without padding). KDP signs with [`Signer`]; anyone holding KDP's
//! public key verifies offline with [`Verifier`], then [`Claims::check`] applies what a
//! gateway requires of a call: subject, consumer, scope, expiry. Revocation is the
//! caller's list to consult (the bus follows KDP's revocation stream).

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message;
use shep_proto::kdp::ConsentToken;

/// The gRPC metadata key that carries a consent token.
pub const METADATA_KEY: &str = "x-kdp-token";
/// The ShEP envelope property that carries a consent token.
pub const ENVELOPE_PROPERTY: &str = "kdp-token";

/// The claims of a token, in plain types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub token_id: String,
    /// The data subject's IIN.
    pub subject: String,
    /// The consumer system id.
    pub consumer: String,
    /// The scope ("gbdfl.person.read"), or several separated by single spaces, as in
    /// OAuth 2.0's `scope` ("gbdfl.person.read zags.acts.read"): the token covers each.
    pub scope: String,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    pub key_id: String,
}

/// Why a token does not allow a call. [`Refusal::reason`] is the stable code put in the
/// ErrorInfo of a refusal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no consent token in metadata `{METADATA_KEY}`")]
    Missing,
    #[error("the consent token is malformed: {0}")]
    Malformed(String),
    #[error("the consent token's signature does not verify with KDP's key")]
    BadSignature,
    #[error("the consent token expired at {0} (unix seconds)")]
    Expired(i64),
    #[error("the consent token {0} was revoked")]
    Revoked(String),
    #[error("the consent token is for subject {token}, the request is about {request}")]
    SubjectMismatch { token: String, request: String },
    #[error("the consent token was issued to {token}, the caller is {caller}")]
    ConsumerMismatch { token: String, caller: String },
    #[error("the consent token's scope {token} does not cover {needed}")]
    ScopeNotCovered { token: String, needed: String },
}

impl Refusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Missing => "CONSENT_TOKEN_MISSING",
            Refusal::Malformed(_) => "CONSENT_TOKEN_MALFORMED",
            Refusal::BadSignature => "CONSENT_BAD_SIGNATURE",
            Refusal::Expired(_) => "CONSENT_EXPIRED",
            Refusal::Revoked(_) => "CONSENT_REVOKED",
            Refusal::SubjectMismatch { .. } => "CONSENT_SUBJECT_MISMATCH",
            Refusal::ConsumerMismatch { .. } => "CONSENT_CONSUMER_MISMATCH",
            Refusal::ScopeNotCovered { .. } => "CONSENT_SCOPE_NOT_COVERED",
        }
    }
}

impl Claims {
    /// Whether the token covers `scope`: one of its scopes is `scope` or `*`.
    pub fn covers(&self, scope: &str) -> bool {
        self.scope.split(' ').any(|s| s == scope || s == "*")
    }

    /// Checks the token against a call: subject, consumer, scope and expiry at `now`
    /// (unix seconds). A scope covers itself; `*` covers every scope.
    pub fn check(&self, subject: &str, caller: &str, scope: &str, now: i64) -> Result<(), Refusal> {
        if self.subject != subject {
            return Err(Refusal::SubjectMismatch { token: self.subject.clone(), request: subject.to_owned() });
        }
        if self.consumer != caller {
            return Err(Refusal::ConsumerMismatch { token: self.consumer.clone(), caller: caller.to_owned() });
        }
        if !self.covers(scope) {
            return Err(Refusal::ScopeNotCovered { token: self.scope.clone(), needed: scope.to_owned() });
        }
        if now >= self.expires_at {
            return Err(Refusal::Expired(self.expires_at));
        }
        Ok(())
    }

    fn to_proto(&self) -> ConsentToken {
        ConsentToken {
            token_id: self.token_id.clone(),
            subject: self.subject.clone(),
            consumer: self.consumer.clone(),
            scope: self.scope.clone(),
            issued_at: Some(prost_types::Timestamp { seconds: self.issued_at, nanos: 0 }),
            expires_at: Some(prost_types::Timestamp { seconds: self.expires_at, nanos: 0 }),
            key_id: self.key_id.clone(),
        }
    }

    fn from_proto(p: ConsentToken) -> Claims {
        Claims {
            token_id: p.token_id,
            subject: p.subject,
            consumer: p.consumer,
            scope: p.scope,
            issued_at: p.issued_at.map(|t| t.seconds).unwrap_or(0),
            expires_at: p.expires_at.map(|t| t.seconds).unwrap_or(0),
            key_id: p.key_id,
        }
    }

    /// The claims as the contract's message.
    pub fn into_proto(self) -> ConsentToken {
        self.to_proto()
    }
}

/// KDP's signing key.
pub struct Signer {
    key: Ed25519KeyPair,
    key_id: String,
}

#[derive(Debug, thiserror::Error)]
#[error("KDP signing key: {0}")]
pub struct KeyError(String);

impl Signer {
    /// A fresh random key.
    pub fn generate(key_id: &str) -> Result<Signer, KeyError> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|e| KeyError(e.to_string()))?;
        Signer::from_pkcs8(pkcs8.as_ref(), key_id)
    }

    /// A key from its PKCS#8 document, so that KDP keeps its key across restarts.
    pub fn from_pkcs8(der: &[u8], key_id: &str) -> Result<Signer, KeyError> {
        let key = Ed25519KeyPair::from_pkcs8(der).map_err(|e| KeyError(e.to_string()))?;
        Ok(Signer { key, key_id: key_id.to_owned() })
    }

    /// A key derived from a 32-byte seed: the same seed gives the same key (simulations).
    pub fn from_seed(seed: &[u8; 32], key_id: &str) -> Result<Signer, KeyError> {
        let key = Ed25519KeyPair::from_seed_unchecked(seed).map_err(|e| KeyError(e.to_string()))?;
        Ok(Signer { key, key_id: key_id.to_owned() })
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The raw 32-byte Ed25519 public key.
    pub fn public_key(&self) -> Vec<u8> {
        self.key.public_key().as_ref().to_vec()
    }

    pub fn verifier(&self) -> Verifier {
        Verifier::new(self.public_key())
    }

    /// Signs claims into a compact token. The `key_id` of the claims is set to this key's.
    pub fn sign(&self, claims: &Claims) -> String {
        let mut p = claims.to_proto();
        p.key_id = self.key_id.clone();
        let bytes = p.encode_to_vec();
        let sig = self.key.sign(&bytes);
        format!("{}.{}", URL_SAFE_NO_PAD.encode(&bytes), URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}

/// Verifies tokens offline with KDP's public key.
#[derive(Clone, Debug)]
pub struct Verifier {
    public_key: Vec<u8>,
}

impl Verifier {
    pub fn new(public_key: Vec<u8>) -> Verifier {
        Verifier { public_key }
    }

    /// Checks the signature and decodes the claims; the claims still need [`Claims::check`].
    pub fn verify(&self, token: &str) -> Result<Claims, Refusal> {
        let (claims_b64, sig_b64) =
            token.split_once('.').ok_or_else(|| Refusal::Malformed("expected two parts separated by '.'".into()))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(claims_b64)
            .map_err(|e| Refusal::Malformed(format!("claims are not base64url: {e}")))?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig_b64)
            .map_err(|e| Refusal::Malformed(format!("signature is not base64url: {e}")))?;
        UnparsedPublicKey::new(&signature::ED25519, &self.public_key)
            .verify(&bytes, &sig)
            .map_err(|_| Refusal::BadSignature)?;
        let p = ConsentToken::decode(bytes.as_slice())
            .map_err(|e| Refusal::Malformed(format!("claims do not decode: {e}")))?;
        Ok(Claims::from_proto(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            token_id: "t-1".into(),
            subject: "900515301234".into(),
            consumer: "sdu".into(),
            scope: "gbdfl.person.read".into(),
            issued_at: 1_000,
            expires_at: 2_000,
            key_id: String::new(),
        }
    }

    #[test]
    fn signs_and_verifies() {
        let s = Signer::generate("kdp-1").unwrap();
        let token = s.sign(&claims());
        let c = s.verifier().verify(&token).unwrap();
        assert_eq!(c.key_id, "kdp-1");
        assert_eq!(c.subject, "900515301234");
        assert_eq!(c.check("900515301234", "sdu", "gbdfl.person.read", 1_500), Ok(()));
    }

    #[test]
    fn refusals_name_the_reason() {
        let s = Signer::from_seed(&[7; 32], "k").unwrap();
        let token = s.sign(&claims());
        let other = Signer::from_seed(&[8; 32], "k").unwrap();
        assert_eq!(other.verifier().verify(&token), Err(Refusal::BadSignature));
        // Tamper with the claims: the signature no longer matches.
        let mut c = claims();
        c.subject = "900515301235".into();
        let forged = format!("{}.{}", s.sign(&c).split('.').next().unwrap(), token.split('.').nth(1).unwrap());
        assert_eq!(s.verifier().verify(&forged), Err(Refusal::BadSignature));
        assert_eq!(s.verifier().verify("nodot").unwrap_err().reason(), "CONSENT_TOKEN_MALFORMED");
        let c = s.verifier().verify(&token).unwrap();
        assert_eq!(c.check("111111111111", "sdu", "gbdfl.person.read", 1).unwrap_err().reason(), "CONSENT_SUBJECT_MISMATCH");
        assert_eq!(c.check("900515301234", "pep", "gbdfl.person.read", 1).unwrap_err().reason(), "CONSENT_CONSUMER_MISMATCH");
        assert_eq!(c.check("900515301234", "sdu", "bmg.phone.read", 1).unwrap_err().reason(), "CONSENT_SCOPE_NOT_COVERED");
        assert_eq!(c.check("900515301234", "sdu", "gbdfl.person.read", 2_000).unwrap_err().reason(), "CONSENT_EXPIRED");
    }

    #[test]
    fn a_token_of_several_scopes_covers_each_and_no_other() {
        let mut c = claims();
        c.scope = "gbdfl.person.read zags.acts.read".into();
        assert_eq!(c.check("900515301234", "sdu", "gbdfl.person.read", 1_500), Ok(()));
        assert_eq!(c.check("900515301234", "sdu", "zags.acts.read", 1_500), Ok(()));
        assert_eq!(c.check("900515301234", "sdu", "zags.acts", 1_500).unwrap_err().reason(), "CONSENT_SCOPE_NOT_COVERED");
        assert_eq!(c.check("900515301234", "sdu", "gbdfl.person.read zags.acts.read", 1_500).unwrap_err().reason(), "CONSENT_SCOPE_NOT_COVERED");
        c.scope = "*".into();
        assert!(c.covers("anything"));
    }

    #[test]
    fn same_seed_same_key() {
        let a = Signer::from_seed(&[1; 32], "k").unwrap();
        let b = Signer::from_seed(&[1; 32], "k").unwrap();
        assert_eq!(a.public_key(), b.public_key());
    }
}
