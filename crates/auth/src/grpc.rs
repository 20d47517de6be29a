//! gRPC: an interceptor that resolves the principal of every request from
//! its bearer token, and the rich `Status` errors of the auth layer
//! (google.rpc.ErrorInfo, ResourceInfo through tonic-types).

use std::collections::HashMap;
use std::sync::Arc;

use tonic::{Code, Request, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::ERROR_DOMAIN;
use crate::principal::{Denied, Principal};
use crate::token::{AuthError, Authenticator, wall_clock_seconds};

/// UNAUTHENTICATED with an ErrorInfo whose reason says what was wrong.
pub fn unauthenticated(e: &AuthError) -> Status {
    let details = ErrorDetails::with_error_info(e.reason(), ERROR_DOMAIN, HashMap::new());
    Status::with_error_details(Code::Unauthenticated, e.to_string(), details)
}

/// PERMISSION_DENIED with an ErrorInfo (action) and a ResourceInfo.
/// INVALID_ARGUMENT with a BadRequest naming the field and what is wrong.
pub fn invalid_argument(field: &str, description: impl Into<String>) -> Status {
    let description = description.into();
    let details = ErrorDetails::with_bad_request_violation(field, description.clone());
    Status::with_error_details(Code::InvalidArgument, format!("{field}: {description}"), details)
}

/// FAILED_PRECONDITION with a PreconditionFailure naming the rule broken
/// (`kind`, e.g. "ASSIGNMENT") and what it is about (`subject`).
pub fn failed_precondition(kind: &str, subject: impl Into<String>, description: impl Into<String>) -> Status {
    let description = description.into();
    let mut details = ErrorDetails::new();
    details.add_precondition_failure_violation(kind, subject, description.clone());
    Status::with_error_details(Code::FailedPrecondition, description, details)
}

/// `text` as a calendar month ("2026-11"), or INVALID_ARGUMENT naming `field`.
pub fn month_argument(field: &str, text: &str) -> Result<(), Status> {
    let month = text.len() == 7
        && text.as_bytes()[4] == b'-'
        && text[..4].bytes().all(|b| b.is_ascii_digit())
        && matches!(text[5..].parse::<u8>(), Ok(1..=12));
    if month {
        Ok(())
    } else {
        Err(invalid_argument(field, format!("{text:?} is not a month, expected like \"2026-11\"")))
    }
}

/// The edge: when a request arrived, on the wall clock, for the domain
/// code that takes time as an argument.
#[allow(clippy::disallowed_methods)]
pub fn arrival_time() -> meridian_events::UnixMicros {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    meridian_events::UnixMicros(d.as_micros() as i64)
}

pub fn permission_denied(d: &Denied) -> Status {
    let metadata =
        HashMap::from([("action".to_owned(), d.action.to_owned()), ("subject".to_owned(), d.subject.clone())]);
    let mut details = ErrorDetails::with_error_info("PERMISSION_DENIED", ERROR_DOMAIN, metadata);
    details.set_resource_info(d.resource_kind, d.resource.clone(), "", d.reason.clone());
    Status::with_error_details(Code::PermissionDenied, d.to_string(), details)
}

/// Resolves the principal and puts it in the request's extensions. Apply
/// to every Meridian service; health and reflection stay open.
#[derive(Clone)]
pub struct Authenticate {
    verifier: Arc<Authenticator>,
}

impl Authenticate {
    pub fn new(verifier: Arc<Authenticator>) -> Authenticate {
        Authenticate { verifier }
    }
}

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = request.metadata().get("authorization").map(|v| v.to_str().unwrap_or(""));
        // Verified against the region's client CA by the handshake.
        let certificates = request.peer_certs();
        let certificate = certificates.as_deref().and_then(|chain| chain.first());
        let principal = self
            .verifier
            .authenticate(header, certificate, wall_clock_seconds(), request.remote_addr())
            .map_err(|e| unauthenticated(&e))?;
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

/// The principal the interceptor resolved.
pub fn principal<T>(request: &Request<T>) -> Result<&Principal, Status> {
    request.extensions().get::<Principal>().ok_or_else(|| unauthenticated(&AuthError::Missing))
}

#[cfg(test)]
mod tests {
    use tonic::Code;
    use tonic_types::StatusExt;

    use super::*;

    #[test]
    fn a_month_is_checked_and_a_broken_rule_named() {
        assert!(month_argument("period", "2026-11").is_ok());
        for bad in ["2026-13", "2026-1", "26-11-01", "2026/11", "november"] {
            let refused = month_argument("period", bad).unwrap_err();
            assert_eq!(refused.code(), Code::InvalidArgument, "{bad}");
            let violations = refused.get_details_bad_request().unwrap().field_violations;
            assert_eq!(violations[0].field, "period");
            assert!(violations[0].description.contains(bad));
        }
        let refused = failed_precondition("ASSIGNMENT", "study", "ortiz does not hold it");
        assert_eq!((refused.code(), refused.message()), (Code::FailedPrecondition, "ortiz does not hold it"));
        let failure = refused.get_details_precondition_failure().unwrap();
        assert_eq!(
            (failure.violations[0].r#type.as_str(), failure.violations[0].subject.as_str()),
            ("ASSIGNMENT", "study")
        );
    }
}
