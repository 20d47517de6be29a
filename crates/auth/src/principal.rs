//! Principals, actions, resources, and the one place that decides.

use meridian_config::{PrincipalKind, roles_for};
use serde::{Deserialize, Serialize};

use crate::refusal::{Refusal, Trail};

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// Stable name of the caller (token `sub`, or `dimse:<tenant>/<facility>`).
    pub subject: String,
    pub kind: PrincipalKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facility: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reader: Option<String>,
    pub roles: Vec<String>,
    /// Where this principal's refusals are recorded: its region's audit.
    #[serde(skip)]
    pub trail: Trail,
}

impl From<&meridian_config::ExamplePrincipal> for Principal {
    fn from(p: &meridian_config::ExamplePrincipal) -> Self {
        Principal {
            subject: p.name.clone(),
            kind: p.kind,
            tenant: p.tenant.clone(),
            facility: p.facility.clone(),
            group: p.group.clone(),
            reader: p.reader.clone(),
            roles: p.roles.clone(),
            trail: Trail::default(),
        }
    }
}

impl Principal {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Records `denied` in the principal's trail and returns it: for a
    /// refusal decided outside [`authorize`].
    pub fn refuse(&self, denied: Denied) -> Denied {
        self.refuse_on(denied, None)
    }

    /// [`refuse`](Self::refuse), of a resource of `resource_tenant` (whose
    /// audit shows the refusal).
    pub fn refuse_on(&self, denied: Denied, resource_tenant: Option<&str>) -> Denied {
        self.trail.record(Refusal {
            subject: denied.subject.clone(),
            principal_kind: self.kind.as_str().to_owned(),
            tenant: self.tenant.clone(),
            group: self.group.clone(),
            action: denied.action.to_owned(),
            resource_kind: denied.resource_kind.to_owned(),
            resource: denied.resource.clone(),
            resource_tenant: resource_tenant.map(str::to_owned),
            reason: denied.reason.clone(),
            code: "PERMISSION_DENIED".to_owned(),
            network_access_point: None,
        });
        denied
    }

    /// Roles not valid for the principal's kind are dropped: a token cannot
    /// grant a tenant principal the SRE role.
    pub fn sanitised(mut self) -> Principal {
        let allowed = roles_for(self.kind);
        self.roles.retain(|r| allowed.contains(&r.as_str()));
        self
    }
}

/// What a caller wants to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send studies in (DIMSE C-STORE, STOW-RS, gRPC upload). Facility systems.
    SendStudy,
    /// Verify connectivity (C-ECHO). Facility systems.
    Echo,
    /// List the tenant's rejected instances and the studies no contract takes.
    ViewRejections,
    /// Change the tenant's settings and users.
    ManageTenant,
    /// See a reading group's worklist.
    ViewWorklist,
    /// Claim a study from the worklist.
    ClaimStudy,
    /// View a study's images (QIDO-RS/WADO-RS).
    ReadImages,
    /// Draft and sign a report.
    SignReport,
    /// Read a study's reports (text is PHI: audited).
    ReadReport,
    /// See the tenant's report deliveries not yet taken, and send one again.
    ManageDeliveries,
    /// Score a peer review (the reader who made its blinded read).
    ScorePeerReview,
    /// Send an order for imaging (HL7 v2 over MLLP, FHIR ServiceRequest).
    /// Facility systems.
    SubmitOrder,
    /// Settle a peer review score that needs it (the reviewed reader's
    /// group admin).
    Arbitrate,
    /// See the tenant's reporting figures (turnaround, SLA, critical results).
    ViewKpis,
    /// Register and update readers of a group.
    ManageReaders,
    /// Reassign a group's work.
    Reassign,
    /// Read a region's event log (metadata; never PHI payloads).
    TailLog,
    /// Rebuild a projection.
    RebuildProjection,
    /// Produce the residency report.
    ReadResidencyReport,
    /// See the tenant's ledger, invoice previews and issued invoices (its
    /// administrator; the platform's billing role).
    ViewLedger,
    /// Issue a tenant's invoices (the platform's billing role).
    IssueInvoice,
    /// Turn AI models on and off (the platform's SRE).
    ManageModels,
    /// See which AI models a region runs (the platform's SRE, a tenant's
    /// administrator).
    ViewModels,
    /// See what a reading group is paid.
    ViewPayouts,
    /// Export a tenant's audit trail (its administrator; the platform's
    /// SRE, for a covered entity's request): opaque ids, never PHI.
    ExportAudit,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::SendStudy => "send_study",
            Action::Echo => "echo",
            Action::ViewRejections => "view_rejections",
            Action::ManageTenant => "manage_tenant",
            Action::ViewWorklist => "view_worklist",
            Action::ClaimStudy => "claim_study",
            Action::ReadImages => "read_images",
            Action::SignReport => "sign_report",
            Action::ReadReport => "read_report",
            Action::ManageDeliveries => "manage_deliveries",
            Action::ScorePeerReview => "score_peer_review",
            Action::SubmitOrder => "submit_order",
            Action::Arbitrate => "arbitrate",
            Action::ViewKpis => "view_kpis",
            Action::ManageReaders => "manage_readers",
            Action::Reassign => "reassign",
            Action::TailLog => "tail_log",
            Action::RebuildProjection => "rebuild_projection",
            Action::ReadResidencyReport => "read_residency_report",
            Action::ViewLedger => "view_ledger",
            Action::IssueInvoice => "issue_invoice",
            Action::ManageModels => "manage_models",
            Action::ViewModels => "view_models",
            Action::ViewPayouts => "view_payouts",
            Action::ExportAudit => "export_audit",
        }
    }
}

/// What the action is on.
#[derive(Clone, Copy, Debug)]
pub enum Resource<'a> {
    Tenant {
        tenant: &'a str,
    },
    /// A study, with what reaches it from the reading side: the reading
    /// groups its tenant's contract names, and the reader it is assigned to.
    Study {
        tenant: &'a str,
        contract_groups: &'a [String],
        assigned_reader: Option<&'a str>,
    },
    ReadingGroup {
        group: &'a str,
    },
    Region {
        region: &'a str,
    },
}

impl Resource<'_> {
    pub fn describe(&self) -> String {
        match self {
            Resource::Tenant { tenant } => format!("tenant {tenant}"),
            Resource::Study { tenant, .. } => format!("a study of tenant {tenant}"),
            Resource::ReadingGroup { group } => format!("reading group {group}"),
            Resource::Region { region } => format!("region {region}"),
        }
    }

    /// The tenant whose data or settings the resource is, if any.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Resource::Tenant { tenant } | Resource::Study { tenant, .. } => Some(*tenant).filter(|t| !t.is_empty()),
            Resource::ReadingGroup { .. } | Resource::Region { .. } => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Resource::Tenant { .. } => "tenant",
            Resource::Study { .. } => "study",
            Resource::ReadingGroup { .. } => "reading_group",
            Resource::Region { .. } => "region",
        }
    }
}

/// Why an action was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{subject} may not {action} on {resource}: {reason}")]
pub struct Denied {
    pub subject: String,
    pub action: &'static str,
    pub resource: String,
    pub resource_kind: &'static str,
    pub reason: String,
}

fn needs_role(p: &Principal, any_of: &[&str]) -> Result<(), String> {
    if any_of.iter().any(|r| p.has_role(r)) { Ok(()) } else { Err(format!("needs role {}", any_of.join(" or "))) }
}

fn same(what: &str, mine: Option<&str>, theirs: &str) -> Result<(), String> {
    match mine {
        Some(m) if m == theirs => Ok(()),
        Some(m) => Err(format!("the principal's {what} is {m}, not {theirs}")),
        None => Err(format!("the principal has no {what}")),
    }
}

/// The one decision every handler asks for. A refusal is recorded in the
/// principal's trail (its region's audit) before it is returned.
pub fn authorize(p: &Principal, action: Action, resource: &Resource<'_>) -> Result<(), Denied> {
    decide(p, action, resource).map_err(|reason| {
        p.refuse_on(
            Denied {
                subject: p.subject.clone(),
                action: action.as_str(),
                resource: resource.describe(),
                resource_kind: resource.kind(),
                reason,
            },
            resource.tenant(),
        )
    })
}

fn decide(p: &Principal, action: Action, resource: &Resource<'_>) -> Result<(), String> {
    use Action::*;
    match (p.kind, action, resource) {
        // Platform principals operate the platform; they never see PHI.
        (PrincipalKind::Platform, ManageModels | ViewModels, Resource::Region { .. }) => needs_role(p, &["sre"]),
        (PrincipalKind::Tenant, ViewModels, Resource::Region { .. }) => needs_role(p, &["tenant-admin"]),
        (PrincipalKind::Platform, TailLog | RebuildProjection | ReadResidencyReport, Resource::Region { .. }) => {
            needs_role(p, &["sre"])
        }
        // Invoices carry amounts and opaque ids, never PHI.
        (PrincipalKind::Platform, IssueInvoice | ViewLedger, Resource::Tenant { .. }) => needs_role(p, &["billing"]),
        // The audit trail names principals and opaque ids only.
        (PrincipalKind::Platform, ExportAudit, Resource::Tenant { .. }) => needs_role(p, &["sre"]),
        (PrincipalKind::Platform, _, _) => {
            Err("platform principals operate regions and never act on patient data".into())
        }

        // Tenant principals act on their own tenant only.
        (PrincipalKind::Tenant, SendStudy | Echo | SubmitOrder, Resource::Tenant { tenant }) => {
            same("tenant", p.tenant.as_deref(), tenant)?;
            needs_role(p, &["facility"])
        }
        (PrincipalKind::Tenant, ViewRejections, Resource::Tenant { tenant }) => {
            same("tenant", p.tenant.as_deref(), tenant)?;
            needs_role(p, &["facility", "tenant-admin"])
        }
        (PrincipalKind::Tenant, ViewLedger, Resource::Tenant { tenant }) => {
            same("tenant", p.tenant.as_deref(), tenant)?;
            needs_role(p, &["tenant-admin"])
        }
        (
            PrincipalKind::Tenant,
            ManageTenant | ManageDeliveries | ViewKpis | ExportAudit,
            Resource::Tenant { tenant },
        ) => {
            same("tenant", p.tenant.as_deref(), tenant)?;
            needs_role(p, &["tenant-admin"])
        }
        (PrincipalKind::Tenant, ReadReport, Resource::Tenant { tenant }) => {
            same("tenant", p.tenant.as_deref(), tenant)?;
            needs_role(p, &["facility", "tenant-admin"])
        }
        (PrincipalKind::Tenant, ReadImages | ReadReport, Resource::Study { tenant, .. }) => {
            same("tenant", p.tenant.as_deref(), tenant)?;
            needs_role(p, &["facility", "tenant-admin"])
        }

        // Group principals: their own group, and a tenant's studies only
        // through a contract (and, for images and reports, an assignment).
        (PrincipalKind::Group, ViewWorklist, Resource::ReadingGroup { group }) => {
            same("reading group", p.group.as_deref(), group)?;
            needs_role(p, &["reader", "group-admin"])
        }
        (
            PrincipalKind::Group,
            ManageReaders | Reassign | ViewPayouts | Arbitrate,
            Resource::ReadingGroup { group },
        ) => {
            same("reading group", p.group.as_deref(), group)?;
            needs_role(p, &["group-admin"])
        }
        (
            PrincipalKind::Group,
            ClaimStudy | ReadImages | SignReport | ReadReport | ScorePeerReview,
            Resource::Study { tenant, contract_groups, assigned_reader },
        ) => {
            needs_role(p, &["reader"])?;
            let group = p.group.as_deref().ok_or("the principal has no reading group")?;
            if !contract_groups.iter().any(|g| g == group) {
                return Err(format!("no contract of tenant {tenant} names reading group {group}"));
            }
            if action == ClaimStudy {
                return Ok(());
            }
            match (assigned_reader, p.reader.as_deref()) {
                (Some(a), Some(r)) if *a == r => Ok(()),
                (Some(_), _) => Err("the study is assigned to another reader".into()),
                (None, _) => Err("the study is not assigned to this reader".into()),
            }
        }
        (kind, action, resource) => {
            Err(format!("{} principals cannot {} on a {}", kind.as_str(), action.as_str(), resource.kind()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(
        kind: PrincipalKind,
        tenant: Option<&str>,
        group: Option<&str>,
        reader: Option<&str>,
        roles: &[&str],
    ) -> Principal {
        Principal {
            subject: "t".into(),
            kind,
            tenant: tenant.map(Into::into),
            facility: None,
            group: group.map(Into::into),
            reader: reader.map(Into::into),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            trail: Trail::default(),
        }
    }

    #[test]
    fn every_refusal_is_recorded_in_the_principals_trail_and_an_allowed_call_in_none() {
        let kept = std::sync::Arc::new(crate::refusal::tests::Kept::default());
        let mut admin = p(PrincipalKind::Tenant, Some("acme"), None, None, &["tenant-admin"]);
        admin.trail = Trail::new(kept.clone());
        assert!(authorize(&admin, Action::ViewKpis, &Resource::Tenant { tenant: "acme" }).is_ok());
        assert!(kept.0.lock().unwrap().is_empty());
        let denied = authorize(&admin, Action::ViewKpis, &Resource::Tenant { tenant: "globex" }).unwrap_err();
        let manual = admin.refuse(Denied {
            subject: admin.subject.clone(),
            action: "act_for_reader",
            resource: "reader r".into(),
            resource_kind: "reader",
            reason: "not theirs".into(),
        });
        let kept = kept.0.lock().unwrap();
        assert_eq!(kept.len(), 2);
        let first = &kept[0];
        assert_eq!(
            (first.subject.as_str(), first.principal_kind.as_str(), first.tenant.as_deref()),
            ("t", "tenant", Some("acme"))
        );
        assert_eq!((first.action.as_str(), first.resource_kind.as_str()), ("view_kpis", "tenant"));
        assert_eq!(
            (first.resource.as_str(), first.reason.as_str()),
            (denied.resource.as_str(), denied.reason.as_str())
        );
        assert_eq!(first.code, "PERMISSION_DENIED");
        assert_eq!((kept[1].action.as_str(), kept[1].reason.as_str()), (manual.action, "not theirs"));
    }

    #[test]
    fn the_platforms_sre_turns_models_on_and_off_and_a_tenant_admin_only_sees_them() {
        let region = Resource::Region { region: "us-east" };
        let sre = p(PrincipalKind::Platform, None, None, None, &["sre"]);
        assert!(authorize(&sre, Action::ManageModels, &region).is_ok());
        let billing = p(PrincipalKind::Platform, None, None, None, &["billing"]);
        assert!(authorize(&billing, Action::ManageModels, &region).is_err());
        let admin = p(PrincipalKind::Tenant, Some("acme"), None, None, &["tenant-admin"]);
        assert!(authorize(&admin, Action::ViewModels, &region).is_ok());
        assert!(authorize(&admin, Action::ManageModels, &region).is_err());
    }

    #[test]
    fn a_group_admin_arbitrates_their_own_groups_reviews_and_a_reader_scores_what_they_reviewed() {
        let admin = p(PrincipalKind::Group, None, Some("atlantic"), None, &["group-admin"]);
        assert!(authorize(&admin, Action::Arbitrate, &Resource::ReadingGroup { group: "atlantic" }).is_ok());
        let e = authorize(&admin, Action::Arbitrate, &Resource::ReadingGroup { group: "lotus" }).unwrap_err();
        assert_eq!(e.reason, "the principal's reading group is atlantic, not lotus");
        let reader = p(PrincipalKind::Group, None, Some("atlantic"), Some("lee"), &["reader"]);
        assert!(authorize(&reader, Action::Arbitrate, &Resource::ReadingGroup { group: "atlantic" }).is_err());
        let groups = ["atlantic".to_string()];
        let reviewed = |by| Resource::Study { tenant: "acme", contract_groups: &groups, assigned_reader: by };
        assert!(authorize(&reader, Action::ScorePeerReview, &reviewed(Some("lee"))).is_ok());
        assert!(authorize(&reader, Action::ScorePeerReview, &reviewed(Some("nair"))).is_err());
        let tenant = p(PrincipalKind::Tenant, Some("acme"), None, None, &["tenant-admin"]);
        assert!(authorize(&tenant, Action::ScorePeerReview, &reviewed(None)).is_err());
    }

    #[test]
    fn tenants_act_on_their_own_tenant_with_the_right_role() {
        let pacs = p(PrincipalKind::Tenant, Some("acme"), None, None, &["facility"]);
        assert!(authorize(&pacs, Action::SendStudy, &Resource::Tenant { tenant: "acme" }).is_ok());
        let e = authorize(&pacs, Action::SendStudy, &Resource::Tenant { tenant: "northwind" }).unwrap_err();
        assert_eq!(e.reason, "the principal's tenant is acme, not northwind");
        let e = authorize(&pacs, Action::ManageTenant, &Resource::Tenant { tenant: "acme" }).unwrap_err();
        assert_eq!(e.reason, "needs role tenant-admin");
        // The ledger is the tenant administrator's, and only their tenant's.
        assert!(authorize(&pacs, Action::ViewLedger, &Resource::Tenant { tenant: "acme" }).is_err());
        let admin = p(PrincipalKind::Tenant, Some("acme"), None, None, &["tenant-admin"]);
        assert!(authorize(&admin, Action::ViewLedger, &Resource::Tenant { tenant: "acme" }).is_ok());
        let e = authorize(&admin, Action::ViewLedger, &Resource::Tenant { tenant: "northwind" }).unwrap_err();
        assert_eq!(e.reason, "the principal's tenant is acme, not northwind");
        // Issuing is the platform's billing role, not the tenant's.
        assert!(authorize(&admin, Action::IssueInvoice, &Resource::Tenant { tenant: "acme" }).is_err());
        let clerk = p(PrincipalKind::Platform, None, None, None, &["billing"]);
        assert!(authorize(&clerk, Action::IssueInvoice, &Resource::Tenant { tenant: "acme" }).is_ok());
        // The clerk who issues reads what is issued and what is to be.
        assert!(authorize(&clerk, Action::ViewLedger, &Resource::Tenant { tenant: "acme" }).is_ok());
        let sre = p(PrincipalKind::Platform, None, None, None, &["sre"]);
        assert_eq!(
            authorize(&sre, Action::IssueInvoice, &Resource::Tenant { tenant: "acme" }).unwrap_err().reason,
            "needs role billing"
        );
        // A group's payouts are its admin's to see, its own only.
        let group_admin = p(PrincipalKind::Group, None, Some("atlantic-rads"), None, &["group-admin"]);
        let group = |g| Resource::ReadingGroup { group: g };
        assert!(authorize(&group_admin, Action::ViewPayouts, &group("atlantic-rads")).is_ok());
        assert!(authorize(&group_admin, Action::ViewPayouts, &group("lotus-teleradiology")).is_err());
        let reader = p(PrincipalKind::Group, None, Some("atlantic-rads"), Some("dr-ana-ortiz"), &["reader"]);
        assert!(authorize(&reader, Action::ViewPayouts, &group("atlantic-rads")).is_err());
    }

    #[test]
    fn readers_reach_studies_only_through_a_contract_and_an_assignment() {
        let groups = vec!["atlantic-rads".to_string()];
        let reader = p(PrincipalKind::Group, None, Some("atlantic-rads"), Some("dr-ana-ortiz"), &["reader"]);
        let study = |assigned| Resource::Study { tenant: "acme", contract_groups: &groups, assigned_reader: assigned };
        assert!(authorize(&reader, Action::ClaimStudy, &study(None)).is_ok());
        assert!(authorize(&reader, Action::ReadImages, &study(Some("dr-ana-ortiz"))).is_ok());
        assert!(authorize(&reader, Action::ReadImages, &study(Some("dr-ben-cole"))).is_err());
        assert!(authorize(&reader, Action::SignReport, &study(None)).is_err());
        let outsider = p(PrincipalKind::Group, None, Some("lotus-teleradiology"), Some("dr-priya-nair"), &["reader"]);
        let e = authorize(&outsider, Action::ClaimStudy, &study(None)).unwrap_err();
        assert_eq!(e.reason, "no contract of tenant acme names reading group lotus-teleradiology");
    }

    #[test]
    fn platform_principals_operate_but_never_see_patient_data() {
        let sre = p(PrincipalKind::Platform, None, None, None, &["sre"]);
        assert!(authorize(&sre, Action::TailLog, &Resource::Region { region: "us-east" }).is_ok());
        let groups = vec![];
        let e = authorize(
            &sre,
            Action::ReadImages,
            &Resource::Study { tenant: "acme", contract_groups: &groups, assigned_reader: None },
        )
        .unwrap_err();
        assert!(e.to_string().contains("never act on patient data"), "{e}");
        let tenant_admin = p(PrincipalKind::Tenant, Some("acme"), None, None, &["tenant-admin"]);
        assert!(authorize(&tenant_admin, Action::TailLog, &Resource::Region { region: "us-east" }).is_err());
    }

    #[test]
    fn roles_that_do_not_fit_the_kind_are_dropped() {
        let sneaky = p(PrincipalKind::Tenant, Some("acme"), None, None, &["facility", "sre"]).sanitised();
        assert_eq!(sneaky.roles, ["facility"]);
    }
}
