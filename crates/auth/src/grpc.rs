//! gRPC: an interceptor that resolves the principal of every request from
//! its bearer token, and the rich `Status` errors of the auth layer
//! (google.rpc.ErrorInfo, ResourceInfo through tonic-types).

use std::collections::HashMap;
use std::sync::Arc;

use tonic::{Code, Request, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::ERROR_DOMAIN;
use crate::principal::{Denied, Principal};
use crate::token::{AuthError, TokenVerifier, wall_clock_seconds};

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
    verifier: Arc<TokenVerifier>,
}

impl Authenticate {
    pub fn new(verifier: Arc<TokenVerifier>) -> Authenticate {
        Authenticate { verifier }
    }
}

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = request.metadata().get("authorization").map(|v| v.to_str().unwrap_or(""));
        let principal = self.verifier.verify_header(header, wall_clock_seconds()).map_err(|e| unauthenticated(&e))?;
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

/// The principal the interceptor resolved.
pub fn principal<T>(request: &Request<T>) -> Result<&Principal, Status> {
    request.extensions().get::<Principal>().ok_or_else(|| unauthenticated(&AuthError::Missing))
}
