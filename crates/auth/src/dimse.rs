//! The principal of a DICOM association: the called AE title names the
//! tenant (each tenant has its own in each region), the calling AE title
//! (and, where configured, the source network) names the facility.
//!
//! A refusal carries the A-ASSOCIATE-RJ reason of PS3.8 section 9.3.4
//! (result 1 "rejected-permanent", source 1 "DICOM UL service-user").

use std::net::IpAddr;

use meridian_config::{Platform, PrincipalKind};

use crate::principal::Principal;
use crate::refusal::{Refusal, Trail};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AssociationRejected {
    #[error("called AE title {called:?} is not a tenant's in region {region}")]
    CalledAeNotRecognized { called: String, region: String },
    #[error("calling AE title {calling:?} is not a facility of tenant {tenant}")]
    CallingAeNotRecognized { calling: String, tenant: String },
    #[error("calling AE title {calling:?} of tenant {tenant} may not connect from {peer}")]
    SourceNotAllowed { calling: String, tenant: String, peer: IpAddr },
}

impl AssociationRejected {
    /// The A-ASSOCIATE-RJ reason/diag for a service-user rejection:
    /// 7 "called-AE-title-not-recognized", 3 "calling-AE-title-not-recognized".
    pub fn reason_code(&self) -> u8 {
        match self {
            AssociationRejected::CalledAeNotRecognized { .. } => 7,
            AssociationRejected::CallingAeNotRecognized { .. } | AssociationRejected::SourceNotAllowed { .. } => 3,
        }
    }

    /// The machine-readable reason, as the audit records it.
    pub fn code(&self) -> &'static str {
        match self {
            AssociationRejected::CalledAeNotRecognized { .. } => "CALLED_AE_NOT_RECOGNIZED",
            AssociationRejected::CallingAeNotRecognized { .. } => "CALLING_AE_NOT_RECOGNIZED",
            AssociationRejected::SourceNotAllowed { .. } => "SOURCE_NOT_ALLOWED",
        }
    }
}

/// Resolves the principal of an association to `region` from its AE titles
/// and the peer's address; a rejection is recorded in `trail`, and the
/// principal carries it.
pub fn resolve_association(
    platform: &Platform,
    region: &str,
    called_ae: &str,
    calling_ae: &str,
    peer: IpAddr,
    trail: &Trail,
) -> Result<Principal, AssociationRejected> {
    let resolved = resolve(platform, region, called_ae, calling_ae, peer);
    let principal = resolved.inspect_err(|rejected| {
        trail.record(Refusal {
            subject: String::new(),
            principal_kind: "anonymous".into(),
            tenant: match rejected {
                AssociationRejected::CalledAeNotRecognized { .. } => None,
                AssociationRejected::CallingAeNotRecognized { tenant, .. }
                | AssociationRejected::SourceNotAllowed { tenant, .. } => Some(tenant.clone()),
            },
            group: None,
            action: "associate".into(),
            resource_kind: "region".into(),
            resource: format!("region {region}"),
            resource_tenant: None,
            reason: rejected.to_string(),
            code: rejected.code().into(),
            network_access_point: Some(peer.to_string()),
        })
    })?;
    Ok(Principal { trail: trail.clone(), ..principal })
}

/// The principal of an association, or why there is none.
fn resolve(
    platform: &Platform,
    region: &str,
    called_ae: &str,
    calling_ae: &str,
    peer: IpAddr,
) -> Result<Principal, AssociationRejected> {
    let (called, calling) = (called_ae.trim(), calling_ae.trim());
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

    use super::*;

    fn platform() -> Platform {
        Platform::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/dev")).unwrap()
    }

    #[test]
    fn called_and_calling_ae_titles_resolve_tenant_and_facility() {
        let p = platform();
        let trail = Trail::default();
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let principal = resolve_association(&p, "us-east", "MERIDIAN_ACME ", "ACME_CT1", local, &trail).unwrap();
        assert_eq!(principal.tenant.as_deref(), Some("acme"));
        assert_eq!(principal.facility.as_deref(), Some("acme-general"));
        assert_eq!(principal.roles, ["facility"]);
    }

    #[test]
    fn unknown_titles_and_networks_are_rejected_with_the_ps3_8_reason_and_each_rejection_recorded() {
        let p = platform();
        let kept = std::sync::Arc::new(crate::refusal::tests::Kept::default());
        let trail = Trail::new(kept.clone());
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let e = resolve_association(&p, "us-east", "NOBODY", "ACME_CT1", local, &trail).unwrap_err();
        assert_eq!(e.reason_code(), 7);
        // A tenant's called AE belongs to its home region only.
        assert_eq!(
            resolve_association(&p, "eu-west", "MERIDIAN_ACME", "ACME_CT1", local, &trail).unwrap_err().reason_code(),
            7
        );
        let e = resolve_association(&p, "us-east", "MERIDIAN_ACME", "STRANGER", local, &trail).unwrap_err();
        assert_eq!(e.reason_code(), 3);
        assert_eq!(e.to_string(), "calling AE title \"STRANGER\" is not a facility of tenant acme");
        // acme-imaging-center only from 127.0.0.0/8 and 10.20.0.0/16.
        assert!(resolve_association(&p, "us-east", "MERIDIAN_ACME", "ACMEIC_PACS", local, &trail).is_ok());
        let far: IpAddr = "192.0.2.7".parse().unwrap();
        let e = resolve_association(&p, "us-east", "MERIDIAN_ACME", "ACMEIC_PACS", far, &trail).unwrap_err();
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
}
