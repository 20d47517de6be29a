//! OpenID Connect issuers: a hospital's or a reading group's identity
//! provider signs tokens with ES256 or RS256 keys published as a JSON Web
//! Key Set. The set is read from a file (saved from the issuer's
//! `jwks_uri`; nothing is fetched), and read again when a token names a
//! key id not in it and the file changed, so a rotated key is taken
//! without a restart.
//!
//! An issuer speaks for the one tenant or reading group its configuration
//! names: the kind, tenant and group of its principals come from there,
//! never from the token, so one tenant's identity provider cannot mint
//! another's access or the platform's.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::RwLock;
use std::time::SystemTime;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use meridian_config::PrincipalKind;
use serde_json::Value;

use crate::principal::Principal;
use crate::refusal::Trail;
use crate::token::{AuthError, KeyError};

/// Where an issuer's key set is read from.
#[derive(Clone, Debug)]
pub enum JwksSource {
    /// A file, read again when a token names a key id not in it.
    File(PathBuf),
    /// The set itself (from an environment variable): fixed until restart.
    Fixed(Vec<u8>),
}

/// Whom an issuer's tokens speak for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum SpeaksFor {
    Tenant(String),
    Group(String),
}

/// The signature keys of a set, by key id.
#[derive(Default)]
struct Keys {
    modified: Option<SystemTime>,
    by_id: HashMap<String, (DecodingKey, Option<Algorithm>)>,
}

/// An identity provider whose tokens are accepted.
pub struct Issuer {
    issuer: String,
    audience: String,
    speaks_for: SpeaksFor,
    roles_claim: String,
    source: JwksSource,
    keys: RwLock<Keys>,
}

/// The algorithms accepted from an identity provider.
const ACCEPTED: [Algorithm; 2] = [Algorithm::ES256, Algorithm::RS256];

impl Issuer {
    /// Reads the key set now: a set that cannot be read or holds no usable
    /// key stops the start.
    pub fn new(config: &meridian_config::OidcIssuer, source: JwksSource) -> Result<Issuer, KeyError> {
        let speaks_for = match (&config.tenant, &config.group) {
            (Some(t), None) => SpeaksFor::Tenant(t.clone()),
            (None, Some(g)) => SpeaksFor::Group(g.clone()),
            _ => {
                return Err(KeyError {
                    id: config.issuer.clone(),
                    reason: "names neither one tenant nor one group".into(),
                });
            }
        };
        let issuer = Issuer {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            speaks_for,
            roles_claim: config.roles_claim.clone(),
            source,
            keys: RwLock::default(),
        };
        let keys = issuer.read().map_err(|reason| KeyError { id: config.issuer.clone(), reason })?;
        if keys.by_id.is_empty() {
            let reason = "the key set holds no ES256 or RS256 signature key with a key id".into();
            return Err(KeyError { id: config.issuer.clone(), reason });
        }
        *issuer.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner) = keys;
        Ok(issuer)
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The set as its source holds it now.
    fn read(&self) -> Result<Keys, String> {
        let (bytes, modified) = match &self.source {
            JwksSource::Fixed(bytes) => (bytes.clone(), None),
            JwksSource::File(path) => {
                let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
                let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
                (bytes, modified)
            }
        };
        let set: JwkSet = serde_json::from_slice(&bytes).map_err(|e| format!("not a JSON Web Key Set: {e}"))?;
        let mut by_id = HashMap::new();
        for jwk in &set.keys {
            // Signature keys of the accepted families only: an `oct` key
            // would turn a public set into a shared secret.
            let usable = matches!(jwk.algorithm, AlgorithmParameters::RSA(_) | AlgorithmParameters::EllipticCurve(_));
            let for_signing =
                jwk.common.public_key_use.as_ref().is_none_or(|u| *u == jsonwebtoken::jwk::PublicKeyUse::Signature);
            let (Some(kid), true, true) = (&jwk.common.key_id, usable, for_signing) else { continue };
            let algorithm = match jwk.common.key_algorithm {
                None => None,
                Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
                Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
                Some(_) => continue,
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {kid}: {e}"))?;
            by_id.insert(kid.clone(), (key, algorithm));
        }
        Ok(Keys { modified, by_id })
    }

    /// The key `kid`, reading the set again if it is not known and the
    /// file changed since it was read.
    fn key(&self, kid: &str) -> Result<(DecodingKey, Option<Algorithm>), AuthError> {
        let unknown = || AuthError::UnknownKey { kid: kid.to_owned() };
        if let Some(found) = self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner).by_id.get(kid) {
            return Ok(found.clone());
        }
        let JwksSource::File(path) = &self.source else { return Err(unknown()) };
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let mut keys = self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if modified != keys.modified {
            match self.read() {
                Ok(read) => *keys = read,
                // Half-written: the keys held so far still answer.
                Err(reason) => tracing::warn!(issuer = %self.issuer, %reason, "the changed key set does not read yet"),
            }
        }
        keys.by_id.get(kid).cloned().ok_or_else(unknown)
    }

    /// Verifies the signature and every claim but the times; returns the
    /// principal with `iat` and `exp`.
    pub(crate) fn verify(&self, token: &str, header: &Header) -> Result<(Principal, i64, i64), AuthError> {
        if !ACCEPTED.contains(&header.alg) {
            return Err(AuthError::WrongClaim {
                claim: "alg",
                found: format!("{:?}", header.alg),
                expected: "ES256 or RS256".into(),
            });
        }
        let kid = header.kid.clone().unwrap_or_default();
        let (key, algorithm) = self.key(&kid)?;
        if algorithm.is_some_and(|a| a != header.alg) {
            return Err(AuthError::WrongClaim {
                claim: "alg",
                found: format!("{:?}", header.alg),
                expected: format!("{algorithm:?} (key {kid})"),
            });
        }
        let mut validation = Validation::new(header.alg);
        // Times against the caller's clock, audience below.
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => AuthError::BadSignature,
            _ => AuthError::Malformed(e.to_string()),
        })?;
        self.principal(&data.claims)
    }

    fn principal(&self, claims: &Value) -> Result<(Principal, i64, i64), AuthError> {
        let text = |name: &str| claims.get(name).and_then(Value::as_str);
        let time = |name: &'static str| {
            claims.get(name).and_then(Value::as_i64).ok_or_else(|| AuthError::BadClaims(format!("no numeric `{name}`")))
        };
        let iss = text("iss").unwrap_or_default();
        if iss != self.issuer {
            return Err(AuthError::WrongClaim { claim: "iss", found: iss.into(), expected: self.issuer.clone() });
        }
        let audiences: Vec<&str> = match claims.get("aud") {
            Some(Value::String(a)) => vec![a.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !audiences.contains(&self.audience.as_str()) {
            return Err(AuthError::WrongClaim {
                claim: "aud",
                found: audiences.join(" "),
                expected: self.audience.clone(),
            });
        }
        let sub = text("sub").filter(|s| !s.is_empty()).ok_or_else(|| AuthError::BadClaims("no `sub`".into()))?;
        let (iat, exp) = (time("iat")?, time("exp")?);
        let roles = match claims.get(&self.roles_claim) {
            None => Vec::new(),
            Some(Value::Array(roles)) => roles.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            Some(_) => return Err(AuthError::BadClaims(format!("`{}` is not an array of roles", self.roles_claim))),
        };
        // A token may repeat whom it speaks for, never claim another.
        let (kind, own, claimed) = match &self.speaks_for {
            SpeaksFor::Tenant(t) => (PrincipalKind::Tenant, t, text("tenant")),
            SpeaksFor::Group(g) => (PrincipalKind::Group, g, text("group")),
        };
        if let Some(claimed) = claimed.filter(|c| c != own) {
            return Err(AuthError::WrongClaim {
                claim: "tenant or group",
                found: claimed.into(),
                expected: own.clone(),
            });
        }
        let principal = Principal {
            subject: format!("oidc:{own}:{sub}"),
            kind,
            tenant: (kind == PrincipalKind::Tenant).then(|| own.clone()),
            facility: text("facility").filter(|_| kind == PrincipalKind::Tenant).map(str::to_owned),
            group: (kind == PrincipalKind::Group).then(|| own.clone()),
            reader: text("reader").filter(|_| kind == PrincipalKind::Group).map(str::to_owned),
            roles,
            trail: Trail::default(),
        }
        .sanitised();
        Ok((principal, iat, exp))
    }
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair};
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::json;

    use super::*;
    use crate::token::Authenticator;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn ec_key() -> EcdsaKeyPair {
        EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap()
    }

    fn ec_jwk(kid: &str, key: &EcdsaKeyPair) -> Value {
        // An uncompressed point: 0x04, x, y.
        let point = key.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65]),
               "kid": kid, "use": "sig", "alg": "ES256"})
    }

    fn rsa_jwk(kid: &str, key: &aws_lc_rs::rsa::KeyPair) -> Value {
        let public = key.public_key();
        json!({"kty": "RSA", "n": b64(public.modulus().big_endian_without_leading_zero()),
               "e": b64(public.exponent().big_endian_without_leading_zero()), "kid": kid, "use": "sig"})
    }

    fn signing_input(alg: &str, kid: &str, claims: &Value) -> String {
        let header = json!({"alg": alg, "typ": "JWT", "kid": kid});
        format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()))
    }

    fn es256(key: &EcdsaKeyPair, kid: &str, claims: &Value) -> String {
        let input = signing_input("ES256", kid, claims);
        let signature = key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", b64(signature.as_ref()))
    }

    fn rs256(key: &aws_lc_rs::rsa::KeyPair, kid: &str, claims: &Value) -> String {
        let input = signing_input("RS256", kid, claims);
        let mut signature = vec![0; key.public_modulus_len()];
        key.sign(&signature::RSA_PKCS1_SHA256, &SystemRandom::new(), input.as_bytes(), &mut signature).unwrap();
        format!("{input}.{}", b64(&signature))
    }

    fn claims(iss: &str, sub: &str, extra: Value) -> Value {
        let mut c = json!({"iss": iss, "sub": sub, "aud": ["account", "meridian"], "iat": 1_000, "exp": 1_600,
                           "roles": ["tenant-admin", "sre"]});
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        c
    }

    fn issuer_config(issuer: &str, tenant: Option<&str>, group: Option<&str>) -> meridian_config::OidcIssuer {
        meridian_config::OidcIssuer {
            issuer: issuer.into(),
            audience: "meridian".into(),
            jwks: meridian_config::SecretRef::File("unused".into()),
            tenant: tenant.map(str::to_owned),
            group: group.map(str::to_owned),
            roles_claim: "roles".into(),
            room: None,
        }
    }

    fn write_set(path: &std::path::Path, keys: &[Value]) {
        // A new modification time even within the file system's tick.
        let previous = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        std::fs::write(path, json!({"keys": keys}).to_string()).unwrap();
        if let Some(previous) = previous {
            let later = previous + std::time::Duration::from_secs(1);
            std::fs::File::options().write(true).open(path).unwrap().set_modified(later).unwrap();
        }
    }

    #[test]
    fn es256_and_rs256_tokens_verify_to_the_tenant_or_group_their_issuer_speaks_for() {
        let dir = tempfile::TempDir::new().unwrap();
        let (ec, rsa) = (ec_key(), aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap());
        let acme_set = dir.path().join("acme.jwks.json");
        write_set(&acme_set, &[ec_jwk("acme-1", &ec), json!({"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"})]);
        let group_set = dir.path().join("atlantic.jwks.json");
        write_set(&group_set, &[rsa_jwk("atl-1", &rsa)]);
        let acme =
            Issuer::new(&issuer_config("https://sso.acme.example", Some("acme"), None), JwksSource::File(acme_set))
                .unwrap();
        let atlantic = Issuer::new(
            &issuer_config("https://id.atlantic.example", None, Some("atlantic-rads")),
            JwksSource::Fixed(std::fs::read(&group_set).unwrap()),
        )
        .unwrap();
        let verifier = Authenticator::new("meridian-dev", "meridian", &[]).unwrap().with_issuers(vec![acme, atlantic]);

        let token =
            es256(&ec, "acme-1", &claims("https://sso.acme.example", "u-17", json!({"facility": "acme-general"})));
        let p = verifier.verify(&token, 1_100).unwrap();
        assert_eq!(
            (p.subject.as_str(), p.kind, p.tenant.as_deref(), p.facility.as_deref(), p.group.as_deref()),
            ("oidc:acme:u-17", PrincipalKind::Tenant, Some("acme"), Some("acme-general"), None)
        );
        assert_eq!(p.roles, ["tenant-admin"], "a tenant's identity provider grants no platform role");
        assert_eq!(verifier.verify(&token, 2_000).unwrap_err().reason(), "TOKEN_EXPIRED");

        let token = rs256(
            &rsa,
            "atl-1",
            &claims("https://id.atlantic.example", "ana", json!({"reader": "dr-ana-ortiz", "roles": ["reader"]})),
        );
        let p = verifier.verify(&token, 1_100).unwrap();
        assert_eq!(
            (p.kind, p.group.as_deref(), p.reader.as_deref(), p.roles.clone()),
            (PrincipalKind::Group, Some("atlantic-rads"), Some("dr-ana-ortiz"), vec!["reader".to_owned()])
        );

        // Claiming another tenant, another audience, an unknown issuer.
        let other = es256(&ec, "acme-1", &claims("https://sso.acme.example", "u-17", json!({"tenant": "northwind"})));
        let refused = verifier.verify(&other, 1_100).unwrap_err();
        assert_eq!(refused.reason(), "TOKEN_WRONG_CLAIM", "{refused}");
        assert!(refused.to_string().contains("northwind"), "{refused}");
        let elsewhere = es256(&ec, "acme-1", &claims("https://sso.acme.example", "u-17", json!({"aud": "grafana"})));
        assert!(verifier.verify(&elsewhere, 1_100).unwrap_err().to_string().contains("aud"));
        let stranger = es256(&ec, "acme-1", &claims("https://sso.evil.example", "u-17", json!({})));
        assert_eq!(verifier.verify(&stranger, 1_100).unwrap_err().reason(), "TOKEN_WRONG_CLAIM");
    }

    #[test]
    fn a_forged_signature_a_confused_algorithm_and_a_shared_secret_key_are_refused() {
        let dir = tempfile::TempDir::new().unwrap();
        let ec = ec_key();
        let set = dir.path().join("acme.jwks.json");
        write_set(&set, &[ec_jwk("acme-1", &ec), json!({"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"})]);
        let acme =
            Issuer::new(&issuer_config("https://sso.acme.example", Some("acme"), None), JwksSource::File(set)).unwrap();
        let verifier = Authenticator::new("meridian-dev", "meridian", &[]).unwrap().with_issuers(vec![acme]);
        let c = claims("https://sso.acme.example", "u-17", json!({}));
        // Another key under the same key id.
        let forged = es256(&ec_key(), "acme-1", &c);
        assert_eq!(verifier.verify(&forged, 1_100).unwrap_err(), AuthError::BadSignature);
        // HS256 with the `oct` key's bytes: that key is never a verifying key.
        let input = signing_input("HS256", "hmac", &c);
        let mac = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, b"secret"),
            input.as_bytes(),
        );
        let hs256 = format!("{input}.{}", b64(mac.as_ref()));
        assert_eq!(verifier.verify(&hs256, 1_100).unwrap_err().reason(), "TOKEN_WRONG_CLAIM");
        // RS256 named on the EC key.
        let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let confused = rs256(&rsa, "acme-1", &c);
        assert_eq!(verifier.verify(&confused, 1_100).unwrap_err().reason(), "TOKEN_WRONG_CLAIM");
        // A set of nothing but a shared secret is no issuer at all.
        let only_secret = dir.path().join("secret.jwks.json");
        write_set(&only_secret, &[json!({"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"})]);
        let config = issuer_config("https://sso.acme.example", Some("acme"), None);
        assert!(Issuer::new(&config, JwksSource::File(only_secret)).is_err());
    }

    #[test]
    fn a_key_rotated_into_the_file_is_taken_without_a_restart() {
        let dir = tempfile::TempDir::new().unwrap();
        let (first, second) = (ec_key(), ec_key());
        let set = dir.path().join("acme.jwks.json");
        write_set(&set, &[ec_jwk("acme-1", &first)]);
        let config = issuer_config("https://sso.acme.example", Some("acme"), None);
        let acme = Issuer::new(&config, JwksSource::File(set.clone())).unwrap();
        let verifier = Authenticator::new("meridian-dev", "meridian", &[]).unwrap().with_issuers(vec![acme]);
        let c = claims("https://sso.acme.example", "u-17", json!({}));
        let next = es256(&second, "acme-2", &c);
        assert_eq!(verifier.verify(&next, 1_100).unwrap_err().reason(), "TOKEN_UNKNOWN_KEY");
        // The identity provider publishes its next key beside the current.
        write_set(&set, &[ec_jwk("acme-1", &first), ec_jwk("acme-2", &second)]);
        assert!(verifier.verify(&next, 1_100).is_ok());
        assert!(verifier.verify(&es256(&first, "acme-1", &c), 1_100).is_ok());
        // And retires the old one.
        write_set(&set, &[ec_jwk("acme-2", &second)]);
        let old = es256(&first, "acme-1", &claims("https://sso.acme.example", "u-18", json!({})));
        // The set is read again for a key id it does not know, and the
        // first key leaves with it.
        let unknown = es256(&first, "acme-3", &c);
        assert_eq!(verifier.verify(&unknown, 1_100).unwrap_err().reason(), "TOKEN_UNKNOWN_KEY");
        assert_eq!(verifier.verify(&old, 1_100).unwrap_err().reason(), "TOKEN_UNKNOWN_KEY");
    }
}
