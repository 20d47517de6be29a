//! Who is calling, and may they.
//!
//! Three kinds of [`Principal`]: tenant-scoped (a facility system, a tenant
//! admin), group-scoped (a reader or group admin of a reading group, acting
//! on a tenant's studies only through a contract and an assignment), and
//! platform (SRE). Every handler calls the one [`authorize`].
//!
//! # Layout
//! - [`principal`]: principals, actions, resources and [`authorize`].
//! - [`token`]: the [`Authenticator`]; EdDSA (Ed25519) JWTs: verifying
//!   against configured keys, minting for `meridian dev`, generating dev
//!   key pairs.
//! - [`oidc`]: OpenID Connect issuers' ES256/RS256 tokens, keys from a
//!   JSON Web Key Set file, each issuer speaking for one tenant or group.
//! - [`certificate`]: client certificates as principals (systems that
//!   cannot hold a token).
//! - [`grpc`]: the tonic interceptor and rich `Status` errors.
//! - [`http`]: the axum layer and JSON errors.
//! - [`refusal`]: the trail every refusal is recorded in (AccessDenied).
//! - [`dimse`]: the principal of a DICOM association (called AE + calling
//!   AE + source network), or the A-ASSOCIATE-RJ reason.
//!
//! Missing or bad credentials are UNAUTHENTICATED (HTTP 401); a principal
//! acting outside its tenant, group or roles is PERMISSION_DENIED (403).

#![forbid(unsafe_code)]

pub mod certificate;
pub mod dimse;
pub mod grpc;
pub mod http;
pub mod oidc;
pub mod principal;
pub mod refusal;
pub mod token;

pub use certificate::{ClientCertificates, PeerCertificate, PresentedCertificate};
pub use principal::{Action, Denied, Principal, Resource, authorize};
pub use refusal::{Refusal, RefusalSink, Trail};
pub use token::{AuthError, Authenticator, TokenSigner};

/// The error domain in rich error details.
pub const ERROR_DOMAIN: &str = "auth.meridian";
