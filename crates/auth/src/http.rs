//! HTTP (axum): a middleware that resolves the principal from the bearer
//! token, an extractor for handlers, and JSON errors (401 with
//! `WWW-Authenticate`, 403) that say what was wrong.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::certificate::PeerCertificate;
use crate::principal::{Denied, Principal};
use crate::token::{AuthError, Authenticator, wall_clock_seconds};

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": "UNAUTHENTICATED", "reason": self.reason(), "message": self.to_string()}});
        let mut response = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
        // RFC 6750 section 3.
        let challenge = if self == AuthError::Missing { "Bearer" } else { "Bearer error=\"invalid_token\"" };
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        response
    }
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "code": "PERMISSION_DENIED",
            "reason": "PERMISSION_DENIED",
            "message": self.to_string(),
            "action": self.action,
            "resource": self.resource,
        }});
        (StatusCode::FORBIDDEN, axum::Json(body)).into_response()
    }
}

/// `axum::middleware::from_fn_with_state(verifier, authenticate)`.
pub async fn authenticate(State(verifier): State<Arc<Authenticator>>, mut request: Request, next: Next) -> Response {
    let header = request.headers().get(header::AUTHORIZATION).map(|v| v.to_str().unwrap_or(""));
    let now = wall_clock_seconds();
    let peer = request.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0);
    let certificate = request.extensions().get::<PeerCertificate>().map(|c| &c.0);
    match verifier.authenticate(header, certificate, now, peer) {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(e) => e.into_response(),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Principal>().cloned().ok_or(AuthError::Missing)
    }
}
