//! Bearer tokens: EdDSA (Ed25519) JWTs with claims `sub`, `kind`, `tenant`
//! or `group` (+ `facility`, `reader`), `roles`, `iss`, `aud`, `iat`, `exp`.
//!
//! Time is an argument: `verify(token, now)` checks `exp` and `iat`
//! against the caller's `now` (the adapters pass the wall clock).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use meridian_config::PrincipalKind;
use serde::{Deserialize, Serialize};

use rustls_pki_types::CertificateDer;

use crate::certificate::ClientCertificates;
use crate::oidc::Issuer;
use crate::principal::Principal;
use crate::refusal::{Refusal, Trail};

/// The wall clock in Unix seconds, for the adapters that verify a token
/// when a request arrives. Everything else takes the time as an argument.
#[allow(clippy::disallowed_methods)] // the edge: the request's arrival time
pub fn wall_clock_seconds() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Clock skew tolerated on `iat` and `exp`, in seconds.
const LEEWAY: i64 = 30;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    kind: PrincipalKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    facility: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reader: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    iss: String,
    aud: String,
    iat: i64,
    exp: i64,
}

/// Why a caller is not authenticated. Each maps to a machine-readable
/// reason in the rich error details.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token: send `authorization: Bearer <token>`")]
    Missing,
    #[error("the authorization header is not `Bearer <token>`")]
    NotBearer,
    #[error("the token is not a valid JWT: {0}")]
    Malformed(String),
    #[error("the token is signed with key {kid:?}, which is not a configured verifying key")]
    UnknownKey { kid: String },
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token expired at {exp} (now {now})")]
    Expired { exp: i64, now: i64 },
    #[error("the token's {claim} is {found:?}, expected {expected:?}")]
    WrongClaim { claim: &'static str, found: String, expected: String },
    #[error("the token's claims are inconsistent: {0}")]
    BadClaims(String),
    #[error("the client certificate (names {names:?}) is not one of auth.toml's client_certificates")]
    CertificateUnknown { names: Vec<String> },
    #[error("the client certificate cannot be read: {0}")]
    CertificateUnreadable(String),
}

impl AuthError {
    /// The machine-readable reason (`ErrorInfo.reason`).
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "TOKEN_MISSING",
            AuthError::NotBearer => "TOKEN_NOT_BEARER",
            AuthError::Malformed(_) => "TOKEN_MALFORMED",
            AuthError::UnknownKey { .. } => "TOKEN_UNKNOWN_KEY",
            AuthError::BadSignature => "TOKEN_BAD_SIGNATURE",
            AuthError::Expired { .. } => "TOKEN_EXPIRED",
            AuthError::WrongClaim { .. } => "TOKEN_WRONG_CLAIM",
            AuthError::BadClaims(_) => "TOKEN_BAD_CLAIMS",
            AuthError::CertificateUnknown { .. } => "CERTIFICATE_UNKNOWN",
            AuthError::CertificateUnreadable(_) => "CERTIFICATE_UNREADABLE",
        }
    }
}

/// Verifies callers: tokens against the configured keys, and client
/// certificates against `auth.toml`'s list.
#[derive(Clone)]
pub struct Authenticator {
    keys: HashMap<String, DecodingKey>,
    issuer: String,
    audience: String,
    /// Given to every principal verified, and where a refused token is
    /// recorded: the region's audit.
    trail: Trail,
    /// Tokens whose signature and claims were verified, by the token's
    /// text: a client sends one token on every call, and an Ed25519
    /// verification costs more than a small RPC. Only the clock is checked
    /// again. Bounded: emptied when it reaches [`VERIFIED_KEPT`].
    verified: Arc<Mutex<HashMap<String, Verified>>>,
    certificates: Arc<ClientCertificates>,
    /// Identity providers whose ES256/RS256 tokens are accepted too.
    issuers: Arc<Vec<Issuer>>,
}

/// A verified token's principal and the times it is good between.
#[derive(Clone)]
struct Verified {
    principal: Principal,
    iat: i64,
    exp: i64,
}

/// Verified tokens kept at most (a few MB).
const VERIFIED_KEPT: usize = 10_000;

/// A key that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("key {id}: {reason}")]
pub struct KeyError {
    pub id: String,
    pub reason: String,
}

impl Authenticator {
    /// `keys`: key id → SPKI PEM of an Ed25519 public key.
    pub fn new(issuer: &str, audience: &str, keys: &[(String, Vec<u8>)]) -> Result<Authenticator, KeyError> {
        let mut map = HashMap::new();
        for (id, pem) in keys {
            let key = DecodingKey::from_ed_pem(pem).map_err(|e| KeyError { id: id.clone(), reason: e.to_string() })?;
            map.insert(id.clone(), key);
        }
        Ok(Authenticator {
            keys: map,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            trail: Trail::default(),
            verified: Arc::default(),
            certificates: Arc::default(),
            issuers: Arc::default(),
        })
    }

    /// The same verifier, accepting these identity providers' tokens too.
    pub fn with_issuers(self, issuers: Vec<Issuer>) -> Authenticator {
        Authenticator { issuers: Arc::new(issuers), ..self }
    }

    /// The same verifier, taking these client certificates as principals.
    pub fn with_certificates(self, certificates: ClientCertificates) -> Authenticator {
        Authenticator { certificates: Arc::new(certificates), ..self }
    }

    pub fn certificates(&self) -> &ClientCertificates {
        &self.certificates
    }

    /// The same verifier, recording in `trail` (one region's audit).
    pub fn with_trail(&self, trail: Trail) -> Authenticator {
        Authenticator { trail, ..self.clone() }
    }

    pub fn trail(&self) -> &Trail {
        &self.trail
    }

    /// The caller at an edge: its token when it sends one (people), else
    /// the client certificate its TLS handshake presented (systems). A
    /// refusal is recorded in the trail with where it came from.
    pub fn authenticate(
        &self,
        header: Option<&str>,
        certificate: Option<&CertificateDer<'_>>,
        now: i64,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<Principal, AuthError> {
        let resolved = match (header, certificate) {
            (None, Some(certificate)) => {
                self.certificates.principal(certificate).map(|p| Principal { trail: self.trail.clone(), ..p })
            }
            _ => self.verify_header(header, now),
        };
        resolved.inspect_err(|e| {
            self.trail.record(Refusal {
                subject: String::new(),
                principal_kind: "anonymous".into(),
                tenant: None,
                group: None,
                action: "authenticate".into(),
                resource_kind: "region".into(),
                resource: String::new(),
                resource_tenant: None,
                reason: e.to_string(),
                code: e.reason().into(),
                network_access_point: peer.map(|p| p.to_string()),
            })
        })
    }

    /// The token in an `authorization` header value.
    pub fn verify_header(&self, header: Option<&str>, now: i64) -> Result<Principal, AuthError> {
        let value = header.ok_or(AuthError::Missing)?;
        let token =
            value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")).ok_or(AuthError::NotBearer)?;
        self.verify(token.trim(), now)
    }

    pub fn verify(&self, token: &str, now: i64) -> Result<Principal, AuthError> {
        let kept = self.verified.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(token).cloned();
        let verified = match kept {
            Some(v) => v,
            None => {
                let v = self.verify_signed(token)?;
                let mut verified = self.verified.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if verified.len() >= VERIFIED_KEPT {
                    verified.clear();
                }
                verified.insert(token.to_owned(), v.clone());
                v
            }
        };
        if verified.exp + LEEWAY < now {
            return Err(AuthError::Expired { exp: verified.exp, now });
        }
        if verified.iat - LEEWAY > now {
            return Err(AuthError::BadClaims(format!("issued in the future (iat {}, now {now})", verified.iat)));
        }
        Ok(Principal { trail: self.trail.clone(), ..verified.principal })
    }

    /// The signature and every claim but the times: Meridian's own
    /// (EdDSA), or an identity provider's, found by the token's `iss`.
    fn verify_signed(&self, token: &str) -> Result<Verified, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        if header.alg != Algorithm::EdDSA {
            // Which issuer's keys to verify with: read before verifying,
            // trusted only once that issuer's key verifies the signature.
            let unverified: serde_json::Value = jsonwebtoken::dangerous::insecure_decode_claims(token)
                .map_err(|e| AuthError::Malformed(e.to_string()))?;
            let iss = unverified.get("iss").and_then(serde_json::Value::as_str).unwrap_or_default();
            let Some(issuer) = self.issuers.iter().find(|i| i.issuer() == iss) else {
                return Err(AuthError::WrongClaim {
                    claim: "alg",
                    found: format!("{:?} from {iss:?}", header.alg),
                    expected: "EdDSA, or ES256 or RS256 from a configured identity provider".into(),
                });
            };
            let (principal, iat, exp) = issuer.verify(token, &header)?;
            return Ok(Verified { principal, iat, exp });
        }
        let kid = header.kid.unwrap_or_default();
        let key = self.keys.get(&kid).ok_or(AuthError::UnknownKey { kid })?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        // Checked below against the caller's clock, not jsonwebtoken's.
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => AuthError::BadSignature,
            _ => AuthError::Malformed(e.to_string()),
        })?;
        let c = data.claims;
        if c.iss != self.issuer {
            return Err(AuthError::WrongClaim { claim: "iss", found: c.iss, expected: self.issuer.clone() });
        }
        if c.aud != self.audience {
            return Err(AuthError::WrongClaim { claim: "aud", found: c.aud, expected: self.audience.clone() });
        }
        match c.kind {
            PrincipalKind::Tenant if c.tenant.is_none() => {
                return Err(AuthError::BadClaims("a tenant principal needs `tenant`".into()));
            }
            PrincipalKind::Group if c.group.is_none() => {
                return Err(AuthError::BadClaims("a group principal needs `group`".into()));
            }
            _ => {}
        }
        let principal = Principal {
            subject: c.sub,
            kind: c.kind,
            tenant: c.tenant.filter(|_| c.kind == PrincipalKind::Tenant),
            facility: c.facility.filter(|_| c.kind == PrincipalKind::Tenant),
            group: c.group.filter(|_| c.kind == PrincipalKind::Group),
            reader: c.reader.filter(|_| c.kind == PrincipalKind::Group),
            roles: c.roles,
            trail: Trail::default(),
        }
        .sanitised();
        Ok(Verified { principal, iat: c.iat, exp: c.exp })
    }
}

/// Mints tokens (for `meridian dev` and tests).
pub struct TokenSigner {
    kid: String,
    key: EncodingKey,
    issuer: String,
    audience: String,
}

impl TokenSigner {
    /// `private_pem`: PKCS#8 PEM of an Ed25519 private key.
    pub fn new(kid: &str, private_pem: &[u8], issuer: &str, audience: &str) -> Result<TokenSigner, KeyError> {
        let key = EncodingKey::from_ed_pem(private_pem)
            .map_err(|e| KeyError { id: kid.to_owned(), reason: e.to_string() })?;
        Ok(TokenSigner { kid: kid.to_owned(), key, issuer: issuer.to_owned(), audience: audience.to_owned() })
    }

    pub fn mint(&self, p: &Principal, now: i64, ttl_seconds: i64) -> Result<String, KeyError> {
        let claims = Claims {
            sub: p.subject.clone(),
            kind: p.kind,
            tenant: p.tenant.clone(),
            facility: p.facility.clone(),
            group: p.group.clone(),
            reader: p.reader.clone(),
            roles: p.roles.clone(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now,
            exp: now + ttl_seconds,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| KeyError { id: self.kid.clone(), reason: e.to_string() })
    }
}

/// A fresh Ed25519 key pair as (PKCS#8 private PEM, SPKI public PEM).
pub fn generate_ed25519() -> Result<(String, String), KeyError> {
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
    let err = |reason: String| KeyError { id: "new".into(), reason };
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| err(e.to_string()))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| err(e.to_string()))?;
    // SubjectPublicKeyInfo for Ed25519 (RFC 8410): a fixed prefix and the 32-byte key.
    let mut spki = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    spki.extend_from_slice(pair.public_key().as_ref());
    let private = pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec()));
    let public = pem::encode(&pem::Pem::new("PUBLIC KEY", spki));
    Ok((private, public))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn pair() -> (TokenSigner, Authenticator) {
        let (private, public) = generate_ed25519().unwrap();
        let signer = TokenSigner::new("k1", private.as_bytes(), "iss", "aud").unwrap();
        let verifier = Authenticator::new("iss", "aud", &[("k1".into(), public.into_bytes())]).unwrap();
        (signer, verifier)
    }

    pub(crate) fn reader() -> Principal {
        Principal {
            subject: "dr-nair".into(),
            kind: PrincipalKind::Group,
            tenant: None,
            facility: None,
            group: Some("lotus-teleradiology".into()),
            reader: Some("dr-priya-nair".into()),
            roles: vec!["reader".into()],
            trail: Trail::default(),
        }
    }

    #[test]
    fn a_refused_token_is_recorded_with_its_reason_and_peer_and_a_verified_principal_carries_the_trail() {
        let (signer, verifier) = pair();
        let kept = std::sync::Arc::new(crate::refusal::tests::Kept::default());
        let verifier = verifier.with_trail(Trail::new(kept.clone()));
        let token = signer.mint(&reader(), 1_000, 60).unwrap();
        let peer: std::net::SocketAddr = "192.0.2.7:50100".parse().unwrap();
        let principal = verifier.authenticate(Some(&format!("Bearer {token}")), None, 1_010, Some(peer)).unwrap();
        assert!(principal.trail.is_kept());
        assert!(kept.0.lock().unwrap().is_empty());
        let late = verifier.authenticate(Some(&format!("Bearer {token}")), None, 5_000, Some(peer)).unwrap_err();
        verifier.authenticate(None, None, 5_000, None).unwrap_err();
        let kept = kept.0.lock().unwrap();
        let codes: Vec<_> = kept.iter().map(|r| (r.code.as_str(), r.network_access_point.as_deref())).collect();
        assert_eq!(codes, [("TOKEN_EXPIRED", Some("192.0.2.7:50100")), ("TOKEN_MISSING", None)]);
        assert_eq!((kept[0].principal_kind.as_str(), kept[0].reason.clone()), ("anonymous", late.to_string()));
    }

    #[test]
    fn a_listed_client_certificate_is_its_facilitys_principal_and_a_token_beside_it_wins() {
        use rustls_pki_types::pem::PemObject;
        let fixture = |name: &str| {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
            CertificateDer::from_pem_file(path).unwrap()
        };
        let listed = meridian_config::ClientCertificate {
            name: "ct1.acme-general.acme.example".into(),
            tenant: "acme".into(),
            facility: "acme-general".into(),
            roles: vec!["facility".into(), "sre".into()],
        };
        let (signer, verifier) = pair();
        let kept = std::sync::Arc::new(crate::refusal::tests::Kept::default());
        let verifier =
            verifier.with_trail(Trail::new(kept.clone())).with_certificates(ClientCertificates::new(&[listed]));
        let (ct, engine) = (fixture("acme-general-ct.pem"), fixture("acme-interface-engine.pem"));
        let system = verifier.authenticate(None, Some(&ct), 1_000, None).unwrap();
        assert_eq!(
            (system.subject.as_str(), system.tenant.as_deref(), system.facility.as_deref()),
            ("certificate:ct1.acme-general.acme.example", Some("acme"), Some("acme-general"))
        );
        // A tenant principal holds no platform role, whatever is listed.
        assert_eq!(system.roles, ["facility"]);
        assert!(system.trail.is_kept());
        // A person at a workstation that holds a certificate: the token speaks.
        let token = signer.mint(&reader(), 1_000, 60).unwrap();
        let person = verifier.authenticate(Some(&format!("Bearer {token}")), Some(&ct), 1_000, None).unwrap();
        assert_eq!(person.subject, "dr-nair");
        let unknown = verifier.authenticate(None, Some(&engine), 1_000, None).unwrap_err();
        assert_eq!(unknown, AuthError::CertificateUnknown { names: vec!["urn://acme/interface-engine".into()] });
        let codes: Vec<_> = kept.0.lock().unwrap().iter().map(|r| r.code.clone()).collect();
        assert_eq!(codes, ["CERTIFICATE_UNKNOWN"]);
    }

    #[test]
    fn a_minted_token_verifies_to_the_same_principal() {
        let (signer, verifier) = pair();
        let token = signer.mint(&reader(), 1_000, 3_600).unwrap();
        assert_eq!(verifier.verify(&token, 1_100).unwrap(), reader());
        assert_eq!(verifier.verify_header(Some(&format!("Bearer {token}")), 1_100).unwrap(), reader());
    }

    #[test]
    fn bad_tokens_say_why() {
        let (signer, verifier) = pair();
        let token = signer.mint(&reader(), 1_000, 60).unwrap();
        assert_eq!(verifier.verify(&token, 5_000).unwrap_err().reason(), "TOKEN_EXPIRED");
        // Verified once and kept, a token is still refused once it expires.
        assert!(verifier.verify(&token, 1_010).is_ok());
        assert_eq!(verifier.verify(&token, 5_000).unwrap_err().reason(), "TOKEN_EXPIRED");
        assert_eq!(verifier.verify_header(None, 0).unwrap_err(), AuthError::Missing);
        assert_eq!(verifier.verify_header(Some("Basic abc"), 0).unwrap_err(), AuthError::NotBearer);
        assert_eq!(verifier.verify("not.a.jwt", 0).unwrap_err().reason(), "TOKEN_MALFORMED");
        // Signed by another key with the same kid.
        let (other, _) = pair();
        let forged = other.mint(&reader(), 1_000, 60).unwrap();
        assert_eq!(verifier.verify(&forged, 1_000).unwrap_err(), AuthError::BadSignature);
        // Tampered payload.
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = parts[1].chars().rev().collect();
        assert!(verifier.verify(&parts.join("."), 1_000).is_err());
        // Another issuer.
        let (private, public) = generate_ed25519().unwrap();
        let wrong =
            TokenSigner::new("k1", private.as_bytes(), "evil", "aud").unwrap().mint(&reader(), 1_000, 60).unwrap();
        let v = Authenticator::new("iss", "aud", &[("k1".into(), public.into_bytes())]).unwrap();
        assert_eq!(v.verify(&wrong, 1_000).unwrap_err().reason(), "TOKEN_WRONG_CLAIM");
    }
}
