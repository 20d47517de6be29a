//! The principal of a DICOM association: the called AE title names the
//! tenant (each tenant has its own in each region), the calling AE title
//! (and, where configured, the source network) names the facility.
//!
//! A refusal carries the A-ASSOCIATE-RJ reason of PS3.8 section 9.3.4
//! (result 1 "rejected-permanent", source 1 "DICOM UL service-user").

use std::net::IpAddr;

use meridian_config::{Platform, PrincipalKind};

use rustls_pki_types::CertificateDer;

use crate::certificate::ClientCertificates;
use crate::principal::Principal;
use crate::refusal::{Refusal, Trail};
use crate::token::Authenticator;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AssociationRejected {
    #[error("called AE title {called:?} is not a tenant's in region {region}")]
    CalledAeNotRecognized { called: String, region: String },
    #[error("calling AE title {calling:?} is not a facility of tenant {tenant}")]
    CallingAeNotRecognized { calling: String, tenant: String },
    #[error("calling AE title {calling:?} of tenant {tenant} may not connect from {peer}")]
    SourceNotAllowed { calling: String, tenant: String, peer: IpAddr },
    #[error("calling AE title {calling:?} of tenant {tenant} must present its facility's client certificate over TLS")]
    CertificateRequired { calling: String, tenant: String },
    #[error("calling AE title {calling:?} of tenant {tenant}: {reason}")]
    CertificateNotOfFacility { calling: String, tenant: String, reason: String },
}

impl AssociationRejected {
    /// The A-ASSOCIATE-RJ reason/diag for a service-user rejection:
    /// 7 "called-AE-title-not-recognized", 3 "calling-AE-title-not-recognized".
    pub fn reason_code(&self) -> u8 {
        match self {
            AssociationRejected::CalledAeNotRecognized { .. } => 7,
            AssociationRejected::CallingAeNotRecognized { .. }
            | AssociationRejected::SourceNotAllowed { .. }
            | AssociationRejected::CertificateRequired { .. }
            | AssociationRejected::CertificateNotOfFacility { .. } => 3,
        }
    }

    /// The machine-readable reason, as the audit records it.
    pub fn code(&self) -> &'static str {
        match self {
            AssociationRejected::CalledAeNotRecognized { .. } => "CALLED_AE_NOT_RECOGNIZED",
            AssociationRejected::CallingAeNotRecognized { .. } => "CALLING_AE_NOT_RECOGNIZED",
            AssociationRejected::SourceNotAllowed { .. } => "SOURCE_NOT_ALLOWED",
            AssociationRejected::CertificateRequired { .. } => "CERTIFICATE_REQUIRED",
            AssociationRejected::CertificateNotOfFacility { .. } => "CERTIFICATE_NOT_OF_FACILITY",
        }
    }

    /// The tenant whose facility was claimed, when the called AE named one.
    fn tenant(&self) -> Option<&str> {
        match self {
            AssociationRejected::CalledAeNotRecognized { .. } => None,
            AssociationRejected::CallingAeNotRecognized { tenant, .. }
            | AssociationRejected::SourceNotAllowed { tenant, .. }
            | AssociationRejected::CertificateRequired { tenant, .. }
            | AssociationRejected::CertificateNotOfFacility { tenant, .. } => Some(tenant),
        }
    }
}

/// Who is asking for an association: its AE titles, its address, and
/// the client certificate its TLS handshake presented.
#[derive(Clone, Copy, Debug)]
pub struct Caller<'a> {
    pub called_ae: &'a str,
    pub calling_ae: &'a str,
    pub peer: IpAddr,
    pub certificate: Option<&'a CertificateDer<'a>>,
}

/// Resolves the principal of an association to `region` from its AE
/// titles, the peer's address and its certificate (which, when presented,
/// must be one of the calling facility's); a rejection is recorded in the
/// authenticator's trail, and the principal carries it.
pub fn resolve_association(
    platform: &Platform,
    region: &str,
    caller: Caller<'_>,
    authenticator: &Authenticator,
) -> Result<Principal, AssociationRejected> {
    let trail = authenticator.trail();
    let resolved = resolve(platform, region, caller, authenticator.certificates());
    let principal = resolved.inspect_err(|rejected| {
        trail.record(Refusal {
            subject: String::new(),
            principal_kind: "anonymous".into(),
            tenant: rejected.tenant().map(str::to_owned),
            group: None,
            action: "associate".into(),
            resource_kind: "region".into(),
            resource: format!("region {region}"),
            resource_tenant: None,
            reason: rejected.to_string(),
            code: rejected.code().into(),
            network_access_point: Some(caller.peer.to_string()),
        })
    })?;
    Ok(Principal { trail: trail.clone(), ..principal })
}

/// The principal of an association, or why there is none.
fn resolve(
    platform: &Platform,
    region: &str,
    caller: Caller<'_>,
    certificates: &ClientCertificates,
) -> Result<Principal, AssociationRejected> {
    let (called, calling, peer) = (caller.called_ae.trim(), caller.calling_ae.trim(), caller.peer);
    let tenant = platform.called_ae_titles(region).get(called).copied().ok_or_else(|| {
        AssociationRejected::CalledAeNotRecognized { called: called.to_owned(), region: region.to_owned() }
    })?;
    let facility =
        tenant.facilities.iter().find(|f| f.calling_ae_titles.iter().any(|ae| ae.0 == calling)).ok_or_else(|| {
            AssociationRejected::CallingAeNotRecognized { calling: calling.to_owned(), tenant: tenant.name.clone() }
        })?;
    if !facility.source_networks.is_empty() && !facility.source_networks.iter().any(|n| n.contains(&peer)) {
        return Err(AssociationRejected::SourceNotAllowed {
            calling: calling.to_owned(),
            tenant: tenant.name.clone(),
            peer,
        });
    }
    let not_of_facility = |reason: String| AssociationRejected::CertificateNotOfFacility {
        calling: calling.to_owned(),
        tenant: tenant.name.clone(),
        reason,
    };
    match caller.certificate {
        None if facility.client_certificate_required => {
            return Err(AssociationRejected::CertificateRequired {
                calling: calling.to_owned(),
                tenant: tenant.name.clone(),
            });
        }
        None => {}
        Some(certificate) => {
            let holder = certificates.principal(certificate).map_err(|e| not_of_facility(e.to_string()))?;
            if holder.tenant.as_deref() != Some(&tenant.name) || holder.facility.as_deref() != Some(&facility.name) {
                return Err(not_of_facility(format!(
                    "its client certificate ({}) is not of facility {}",
                    holder.subject, facility.name
                )));
            }
        }
    }
    Ok(Principal {
        subject: format!("dimse:{}/{}", tenant.name, facility.name),
        kind: PrincipalKind::Tenant,
        tenant: Some(tenant.name.clone()),
        facility: Some(facility.name.clone()),
        group: None,
        reader: None,
        roles: vec!["facility".into()],
        trail: Trail::default(),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use rustls_pki_types::pem::PemObject;

    use super::*;

    fn platform() -> Platform {
        Platform::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/dev")).unwrap()
    }

    fn caller<'a>(called_ae: &'a str, calling_ae: &'a str, peer: &str) -> Caller<'a> {
        Caller { called_ae, calling_ae, peer: peer.parse().unwrap(), certificate: None }
    }

    /// An authenticator that keeps what it refuses.
    fn authenticator(platform: &Platform) -> (Authenticator, Arc<crate::refusal::tests::Kept>) {
        let kept = Arc::new(crate::refusal::tests::Kept::default());
        let authenticator = Authenticator::new("meridian-dev", "meridian", &[])
            .unwrap()
            .with_trail(Trail::new(kept.clone()))
            .with_certificates(ClientCertificates::new(&platform.auth.client_certificates));
        (authenticator, kept)
    }

    fn fixture(name: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)).unwrap()
    }

    #[test]
    fn called_and_calling_ae_titles_resolve_tenant_and_facility() {
        let p = platform();
        let (a, _) = authenticator(&p);
        let principal =
            resolve_association(&p, "us-east", caller("MERIDIAN_ACME ", "ACME_CT1", "127.0.0.1"), &a).unwrap();
        assert_eq!(principal.tenant.as_deref(), Some("acme"));
        assert_eq!(principal.facility.as_deref(), Some("acme-general"));
        assert_eq!(principal.roles, ["facility"]);
    }

    #[test]
    fn unknown_titles_and_networks_are_rejected_with_the_ps3_8_reason_and_each_rejection_recorded() {
        let p = platform();
        let (a, kept) = authenticator(&p);
        let e = resolve_association(&p, "us-east", caller("NOBODY", "ACME_CT1", "127.0.0.1"), &a).unwrap_err();
        assert_eq!(e.reason_code(), 7);
        // A tenant's called AE belongs to its home region only.
        let e = resolve_association(&p, "eu-west", caller("MERIDIAN_ACME", "ACME_CT1", "127.0.0.1"), &a).unwrap_err();
        assert_eq!(e.reason_code(), 7);
        let e = resolve_association(&p, "us-east", caller("MERIDIAN_ACME", "STRANGER", "127.0.0.1"), &a).unwrap_err();
        assert_eq!(e.reason_code(), 3);
        assert_eq!(e.to_string(), "calling AE title \"STRANGER\" is not a facility of tenant acme");
        // acme-imaging-center only from 127.0.0.0/8 and 10.20.0.0/16.
        assert!(resolve_association(&p, "us-east", caller("MERIDIAN_ACME", "ACMEIC_PACS", "127.0.0.1"), &a).is_ok());
        let e =
            resolve_association(&p, "us-east", caller("MERIDIAN_ACME", "ACMEIC_PACS", "192.0.2.7"), &a).unwrap_err();
        assert!(matches!(e, AssociationRejected::SourceNotAllowed { .. }));
        let kept = kept.0.lock().unwrap();
        let recorded: Vec<_> =
            kept.iter().map(|r| (r.code.as_str(), r.tenant.as_deref(), r.network_access_point.as_deref())).collect();
        assert_eq!(
            recorded,
            [
                ("CALLED_AE_NOT_RECOGNIZED", None, Some("127.0.0.1")),
                ("CALLED_AE_NOT_RECOGNIZED", None, Some("127.0.0.1")),
                ("CALLING_AE_NOT_RECOGNIZED", Some("acme"), Some("127.0.0.1")),
                ("SOURCE_NOT_ALLOWED", Some("acme"), Some("192.0.2.7")),
            ]
        );
        assert_eq!(kept[2].reason, "calling AE title \"STRANGER\" is not a facility of tenant acme");
    }

    #[test]
    fn a_presented_certificate_must_be_the_calling_facilitys_and_a_facility_may_require_one() {
        let mut p = platform();
        let (a, kept) = authenticator(&p);
        let ct = fixture("acme-general-ct.pem");
        let engine = fixture("acme-interface-engine.pem");
        let with = |called, calling, certificate| Caller {
            certificate: Some(certificate),
            ..caller(called, calling, "127.0.0.1")
        };
        // acme-general's own certificate, from acme-general's AE title.
        let principal = resolve_association(&p, "us-east", with("MERIDIAN_ACME", "ACME_CT1", &ct), &a).unwrap();
        assert_eq!(principal.facility.as_deref(), Some("acme-general"));
        // The same certificate claiming acme-imaging-center's AE title.
        let e = resolve_association(&p, "us-east", with("MERIDIAN_ACME", "ACMEIC_PACS", &ct), &a).unwrap_err();
        assert_eq!((e.reason_code(), e.code()), (3, "CERTIFICATE_NOT_OF_FACILITY"));
        assert!(
            e.to_string().contains("certificate:ct1.acme-general.acme.example) is not of facility acme-imaging-center"),
            "{e}"
        );
        // A certificate listed nowhere, though its CA is trusted.
        let e = resolve_association(&p, "us-east", with("MERIDIAN_ACME", "ACME_CT1", &engine), &a).unwrap_err();
        assert_eq!((e.reason_code(), e.code()), (3, "CERTIFICATE_NOT_OF_FACILITY"));
        assert!(e.to_string().contains("urn://acme/interface-engine"), "{e}");
        // A facility that requires a certificate refuses an association without one.
        let facility =
            p.tenants.get_mut("acme").unwrap().facilities.iter_mut().find(|f| f.name == "acme-general").unwrap();
        facility.client_certificate_required = true;
        let e = resolve_association(&p, "us-east", caller("MERIDIAN_ACME", "ACME_CT1", "127.0.0.1"), &a).unwrap_err();
        assert_eq!((e.reason_code(), e.code()), (3, "CERTIFICATE_REQUIRED"));
        assert!(resolve_association(&p, "us-east", with("MERIDIAN_ACME", "ACME_CT1", &ct), &a).is_ok());
        let codes: Vec<_> = kept.0.lock().unwrap().iter().map(|r| r.code.clone()).collect();
        assert_eq!(codes, ["CERTIFICATE_NOT_OF_FACILITY", "CERTIFICATE_NOT_OF_FACILITY", "CERTIFICATE_REQUIRED"]);
    }
}
