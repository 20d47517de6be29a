//! Sign-in through an OpenID Connect provider: the authorization code flow
//! with PKCE (RFC 7636, S256), a `state` bound to the browser by a
//! short-lived cookie (a code from someone else's sign-in is refused), a
//! `nonce` checked in the ID token. The access token the provider issues
//! stays in the room's session: the platform verifies it as it verifies
//! any token of that issuer (`auth.toml`'s `[[oidc_issuers]]`), and a
//! refresh token, when the provider gives one, renews it before it ends.
//!
//! Endpoints come from the issuer's discovery document, read at the first
//! sign-in (so the platform starts while the provider is down), and kept.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::page::query_part;

/// A provider the room signs readers in through.
#[derive(Clone, Debug)]
pub struct Provider {
    /// `iss`, and where the discovery document is.
    pub issuer: String,
    /// The sign-in button's words.
    pub label: String,
    pub client_id: String,
    /// A confidential client's secret; none for a public client.
    pub client_secret: Option<String>,
    /// Scopes beside `openid`.
    pub scopes: Vec<String>,
}

/// A sign-in begun: what the callback needs to finish it.
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    pub provider: usize,
    pub verifier: String,
    pub nonce: String,
    pub redirect_uri: String,
    pub at: i64,
}

/// A sign-in not finished in this long is forgotten.
pub const PENDING_SECONDS: i64 = 600;
/// At most this many sign-ins under way at once; the oldest goes first.
const MOST_PENDING: usize = 10_000;

/// The provider's endpoints, from its discovery document.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Endpoints {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    /// RP-Initiated Logout 1.0: where signing out of the room also ends
    /// the reader's session at the provider, when it offers one.
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
}

/// What the token endpoint answers.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Tokens {
    pub access_token: String,
    #[serde(default)]
    pub id_token: Option<String>,
    #[serde(default)]
    pub refresh_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<i64>,
}

/// An access token's lifetime when the provider does not say.
const DEFAULT_LIFETIME: i64 = 300;

impl Tokens {
    /// When the access token ends (Unix seconds).
    pub fn expires_at(&self, now: i64) -> i64 {
        now + self.expires_in.filter(|s| *s > 0).unwrap_or(DEFAULT_LIFETIME)
    }
}

/// Sign-ins under way and the endpoints read so far.
#[derive(Default)]
pub(crate) struct Logins {
    pending: Mutex<HashMap<String, Pending>>,
    endpoints: Mutex<HashMap<usize, Endpoints>>,
}

impl Logins {
    pub fn begin(&self, state: &str, pending: Pending) {
        let mut map = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = pending.at;
        map.retain(|_, p| now - p.at < PENDING_SECONDS);
        if map.len() >= MOST_PENDING
            && let Some(oldest) = map.iter().min_by_key(|(_, p)| p.at).map(|(s, _)| s.clone())
        {
            map.remove(&oldest);
        }
        map.insert(state.to_owned(), pending);
    }

    /// The sign-in `state` names, once: a replayed callback finds nothing.
    pub fn finish(&self, state: &str, now: i64) -> Option<Pending> {
        let mut map = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.remove(state).filter(|p| now - p.at < PENDING_SECONDS)
    }

    pub fn endpoints(&self, provider: usize) -> Option<Endpoints> {
        self.endpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&provider).cloned()
    }

    pub fn keep_endpoints(&self, provider: usize, endpoints: Endpoints) {
        self.endpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(provider, endpoints);
    }
}

/// PKCE's S256 challenge of a verifier.
pub fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Where the browser is sent to sign in.
pub(crate) fn authorization_url(endpoints: &Endpoints, provider: &Provider, pending: &Pending, state: &str) -> String {
    let scope = std::iter::once("openid").chain(provider.scopes.iter().map(String::as_str)).collect::<Vec<_>>();
    let separator = if endpoints.authorization_endpoint.contains('?') { '&' } else { '?' };
    format!(
        "{}{separator}response_type=code&client_id={}&redirect_uri={}&scope={}&state={}&nonce={}\
         &code_challenge={}&code_challenge_method=S256",
        endpoints.authorization_endpoint,
        query_part(&provider.client_id),
        query_part(&pending.redirect_uri),
        query_part(&scope.join(" ")),
        query_part(state),
        query_part(&pending.nonce),
        query_part(&challenge(&pending.verifier)),
    )
}

/// Reads the issuer's discovery document; its `issuer` must be the one
/// configured (OpenID Connect Discovery 1.0, section 4.3).
pub(crate) async fn discover(http: &reqwest::Client, issuer: &str) -> Result<Endpoints, String> {
    let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
    let answer = http.get(&url).send().await.map_err(|e| format!("{url}: {e}"))?;
    if !answer.status().is_success() {
        return Err(format!("{url}: answered {}", answer.status()));
    }
    let bytes = answer.bytes().await.map_err(|e| format!("{url}: {e}"))?;
    let endpoints: Endpoints =
        serde_json::from_slice(&bytes).map_err(|e| format!("{url}: not a discovery document: {e}"))?;
    if endpoints.issuer != issuer {
        return Err(format!("{url}: names issuer {:?}, not {issuer:?}", endpoints.issuer));
    }
    Ok(endpoints)
}

/// Asks the token endpoint: `grant` is the grant's own fields (the code
/// and verifier, or the refresh token).
pub(crate) async fn tokens(
    http: &reqwest::Client,
    endpoints: &Endpoints,
    provider: &Provider,
    grant: &[(&str, &str)],
) -> Result<Tokens, String> {
    let mut form: Vec<(&str, &str)> = grant.to_vec();
    let mut request = http.post(&endpoints.token_endpoint).header(reqwest::header::ACCEPT, "application/json");
    match &provider.client_secret {
        // client_secret_basic: the id and secret form-encoded, then Basic.
        Some(secret) => request = request.basic_auth(query_part(&provider.client_id), Some(query_part(secret))),
        None => form.push(("client_id", &provider.client_id)),
    }
    let answer = request.form(&form).send().await.map_err(|e| format!("the token endpoint: {e}"))?;
    let status = answer.status();
    let bytes = answer.bytes().await.map_err(|e| format!("the token endpoint: {e}"))?;
    if !status.is_success() {
        // RFC 6749 5.2: `error` and perhaps `error_description`.
        let said: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let error = said["error"].as_str().unwrap_or("no error code");
        let description = said["error_description"].as_str().unwrap_or_default();
        return Err(format!("the token endpoint answered {status}: {error} {description}").trim_end().to_owned());
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("the token endpoint's answer: {e}"))
}

/// Where the browser is sent to end its session at the provider too, then
/// back to `back` (RP-Initiated Logout 1.0: the ID token as the hint, the
/// client id, the address registered for the client).
pub(crate) fn end_session_url(end_session: &str, provider: &Provider, id_token: &str, back: &str) -> String {
    let separator = if end_session.contains('?') { '&' } else { '?' };
    format!(
        "{end_session}{separator}id_token_hint={}&client_id={}&post_logout_redirect_uri={}",
        query_part(id_token),
        query_part(&provider.client_id),
        query_part(back)
    )
}

/// The `nonce` of an ID token received straight from the token endpoint
/// over the channel its discovery named (OpenID Connect Core 3.1.3.7:
/// TLS authenticates the issuer there); the access token itself is
/// verified against the issuer's keys.
pub(crate) fn nonce_of(id_token: &str) -> Option<String> {
    let payload = id_token.split('.').nth(1)?;
    let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    claims["nonce"].as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_challenge_is_rfc_7636s_example() {
        // RFC 7636, appendix B.
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn a_sign_in_is_finished_once_and_not_after_ten_minutes() {
        let logins = Logins::default();
        let pending = |at| Pending {
            provider: 0,
            verifier: "v".into(),
            nonce: "n".into(),
            redirect_uri: "http://127.0.0.1/room/oidc/callback".into(),
            at,
        };
        logins.begin("s1", pending(0));
        assert!(logins.finish("s1", 10).is_some());
        assert!(logins.finish("s1", 11).is_none(), "a replayed callback");
        logins.begin("s2", pending(0));
        assert!(logins.finish("s2", PENDING_SECONDS).is_none(), "too late");
        assert!(logins.finish("forged", 0).is_none());
    }

    #[test]
    fn the_authorization_url_carries_pkce_state_and_nonce() {
        let endpoints = Endpoints {
            issuer: "https://sso.example".into(),
            authorization_endpoint: "https://sso.example/auth".into(),
            token_endpoint: "https://sso.example/token".into(),
            end_session_endpoint: None,
        };
        let provider = Provider {
            issuer: "https://sso.example".into(),
            label: "SSO".into(),
            client_id: "room one".into(),
            client_secret: None,
            scopes: vec!["offline_access".into()],
        };
        let pending = Pending {
            provider: 0,
            verifier: "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into(),
            nonce: "n-1".into(),
            redirect_uri: "https://room.example/room/oidc/callback".into(),
            at: 0,
        };
        let url = authorization_url(&endpoints, &provider, &pending, "st");
        assert_eq!(
            url,
            "https://sso.example/auth?response_type=code&client_id=room%20one\
             &redirect_uri=https%3A%2F%2Froom.example%2Froom%2Foidc%2Fcallback&scope=openid%20offline_access\
             &state=st&nonce=n-1&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256"
        );
    }

    #[test]
    fn the_nonce_is_read_from_an_id_tokens_claims() {
        let claims = URL_SAFE_NO_PAD.encode(br#"{"iss":"x","nonce":"abc"}"#);
        assert_eq!(nonce_of(&format!("h.{claims}.s")).as_deref(), Some("abc"));
        assert_eq!(nonce_of("not a token"), None);
        assert_eq!(nonce_of("h.!!!.s"), None);
    }
}
