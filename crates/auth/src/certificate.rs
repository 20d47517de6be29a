//! Client certificates as principals: a PACS or an interface engine that
//! cannot hold a token presents a certificate instead. The TLS handshake
//! checks that it chains to the region's `tls.client_ca`; here its subject
//! alternative names (DNS or URI) are looked up in `auth.toml`'s
//! `client_certificates`, which say the tenant and facility it speaks for.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use meridian_config::PrincipalKind;
use rustls_pki_types::CertificateDer;

use crate::principal::Principal;
use crate::refusal::Trail;
use crate::token::AuthError;

/// The end-entity certificate a TLS client presented (already verified
/// against the client CA by the handshake), as a request extension.
#[derive(Clone, Debug)]
pub struct PeerCertificate(pub CertificateDer<'static>);

/// Filled by a DICOM port's handshake with the certificate the peer
/// presented, read when the association is negotiated after it.
pub type PresentedCertificate = Arc<OnceLock<CertificateDer<'static>>>;

/// The configured client certificates, by name.
#[derive(Clone, Debug, Default)]
pub struct ClientCertificates {
    by_name: HashMap<String, Principal>,
}

impl ClientCertificates {
    pub fn new(listed: &[meridian_config::ClientCertificate]) -> ClientCertificates {
        let by_name = listed
            .iter()
            .map(|c| {
                let principal = Principal {
                    subject: format!("certificate:{}", c.name),
                    kind: PrincipalKind::Tenant,
                    tenant: Some(c.tenant.clone()),
                    facility: Some(c.facility.clone()),
                    group: None,
                    reader: None,
                    roles: c.roles.clone(),
                    trail: Trail::default(),
                }
                .sanitised();
                (c.name.clone(), principal)
            })
            .collect();
        ClientCertificates { by_name }
    }

    /// The principal of the first of the certificate's names that is
    /// listed; an unlisted certificate is refused with its names (which
    /// name a system, never a patient).
    pub fn principal(&self, certificate: &CertificateDer<'_>) -> Result<Principal, AuthError> {
        let names = names(certificate)?;
        names.iter().find_map(|n| self.by_name.get(n)).cloned().ok_or(AuthError::CertificateUnknown { names })
    }
}

/// A certificate's DNS and URI subject alternative names.
pub fn names(certificate: &CertificateDer<'_>) -> Result<Vec<String>, AuthError> {
    let cert =
        webpki::EndEntityCert::try_from(certificate).map_err(|e| AuthError::CertificateUnreadable(format!("{e:?}")))?;
    Ok(cert.valid_dns_names().chain(cert.valid_uri_names()).map(str::to_owned).collect())
}
