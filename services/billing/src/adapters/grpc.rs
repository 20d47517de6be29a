//! `meridian.billing.v1.BillingService`: a tenant administrator reads the
//! tenant's ledger and previews its invoices. Every call resolves the
//! principal (the region's interceptor) and asks `authorize`.

use std::sync::Arc;

use meridian_auth::grpc::arrival_time;
use meridian_auth::grpc::{invalid_argument, permission_denied, principal};
use meridian_auth::{Action, Resource, authorize};
use meridian_proto::billing::v1 as pb;
use meridian_proto::billing::v1::billing_service_server::BillingService;
use meridian_proto::common::v1::Money;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::app::{Billing, Error};
use crate::domain::invoice::IssueRefused;
use crate::domain::ledger::What;

pub struct BillingGrpc {
    billing: Arc<Billing>,
}

impl BillingGrpc {
    pub fn new(billing: Arc<Billing>) -> BillingGrpc {
        BillingGrpc { billing }
    }
}

fn money(currency: &str, minor_units: i64) -> Option<Money> {
    Some(Money { currency_code: currency.to_owned(), minor_units })
}

/// The tenant and period a request names, once the caller may see them.
fn scope<T>(request: &Request<T>, tenant: &str, period: &str) -> Result<(String, String), Status> {
    scope_for(request, Action::ViewLedger, tenant, period)
}

/// The same, for `action`.
fn scope_for<T>(request: &Request<T>, action: Action, tenant: &str, period: &str) -> Result<(String, String), Status> {
    let p = principal(request)?;
    if tenant.is_empty() {
        return Err(invalid_argument("tenant", "name the tenant"));
    }
    authorize(p, action, &Resource::Tenant { tenant }).map_err(|d| permission_denied(&d))?;
    if !is_month(period) {
        return Err(invalid_argument("period", format!("{period:?} is not a month, expected like \"2026-11\"")));
    }
    Ok((tenant.to_owned(), period.to_owned()))
}

fn issued(i: &crate::domain::invoice::Issued) -> pb::IssuedInvoice {
    pb::IssuedInvoice {
        number: i.number.clone(),
        contract: i.contract.clone(),
        period: i.period.clone(),
        total: money(&i.currency, i.total),
        event_id: i.event_id.to_string(),
    }
}

/// "2026-11": a calendar month.
fn is_month(period: &str) -> bool {
    period.len() == 7
        && period.as_bytes()[4] == b'-'
        && period[..4].bytes().all(|b| b.is_ascii_digit())
        && matches!(period[5..].parse::<u8>(), Ok(1..=12))
}

#[tonic::async_trait]
impl BillingService for BillingGrpc {
    async fn issue_invoice(
        &self,
        request: Request<pb::IssueInvoiceRequest>,
    ) -> Result<Response<pb::IssueInvoiceResponse>, Status> {
        let (tenant, period) =
            scope_for(&request, Action::IssueInvoice, &request.get_ref().tenant, &request.get_ref().period)?;
        match self.billing.issue(&tenant, &period, arrival_time()).await {
            Ok(done) => Ok(Response::new(pb::IssueInvoiceResponse { invoices: done.iter().map(issued).collect() })),
            Err(Error::Refused(why)) => {
                let mut details = ErrorDetails::new();
                let (kind, subject) = match &why {
                    IssueRefused::Open { ends, .. } => ("PERIOD_OPEN", ends.clone()),
                    IssueRefused::Blocked { fields, .. } => ("PRICE_MISSING", fields.join(", ")),
                    IssueRefused::Period { period } => ("NOT_A_PERIOD", period.clone()),
                };
                details.add_precondition_failure_violation(kind, subject, why.to_string());
                Err(Status::with_error_details(Code::FailedPrecondition, why.to_string(), details))
            }
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }

    async fn list_payouts(
        &self,
        request: Request<pb::ListPayoutsRequest>,
    ) -> Result<Response<pb::ListPayoutsResponse>, Status> {
        let p = principal(&request)?;
        let (group, period) = (&request.get_ref().reading_group, &request.get_ref().period);
        if group.is_empty() {
            return Err(invalid_argument("reading_group", "name the reading group"));
        }
        authorize(p, Action::ViewPayouts, &Resource::ReadingGroup { group }).map_err(|d| permission_denied(&d))?;
        if !is_month(period) {
            return Err(invalid_argument("period", format!("{period:?} is not a month, expected like \"2026-11\"")));
        }
        let totals = self.billing.totals(&format!("group:{group}")).await;
        let prefix = format!("{period}/");
        let payouts = totals
            .iter()
            .filter_map(|(k, t)| k.strip_prefix(&prefix).map(|currency| (currency, t)))
            .map(|(currency, t)| pb::GroupPayout { amount: money(currency, t.payouts), reads: t.paid_reads })
            .collect();
        Ok(Response::new(pb::ListPayoutsResponse { payouts }))
    }

    async fn list_invoices(
        &self,
        request: Request<pb::ListInvoicesRequest>,
    ) -> Result<Response<pb::ListInvoicesResponse>, Status> {
        let (tenant, period) = scope(&request, &request.get_ref().tenant, &request.get_ref().period)?;
        let done = self.billing.invoices(&tenant, &period).await;
        Ok(Response::new(pb::ListInvoicesResponse { invoices: done.iter().map(issued).collect() }))
    }

    async fn get_ledger(
        &self,
        request: Request<pb::GetLedgerRequest>,
    ) -> Result<Response<pb::GetLedgerResponse>, Status> {
        let (tenant, period) = scope(&request, &request.get_ref().tenant, &request.get_ref().period)?;
        let entries = self
            .billing
            .read(|l| {
                let currency = |contract: &str| l.pricebook.contracts.get(contract).map_or("", |c| c.currency.as_str());
                l.entries
                    .get(&format!("{tenant}/{period}"))
                    .map(|entries| {
                        entries
                            .iter()
                            .filter_map(|e| {
                                let base = pb::LedgerEntry {
                                    event_id: e.id.to_string(),
                                    study_id: e.study.to_string(),
                                    carried: l.carried(&tenant, &period, e),
                                    ..Default::default()
                                };
                                Some(match &e.what {
                                    What::Charged(c) => pb::LedgerEntry {
                                        kind: "charge".into(),
                                        contract: c.read.contract.clone(),
                                        read_type: c.read.read_type.clone(),
                                        modality: c.read.modality.clone(),
                                        amount: money(&c.currency, c.amount),
                                        included: c.included,
                                        ..base
                                    },
                                    What::Credited(c) => pb::LedgerEntry {
                                        kind: "credit".into(),
                                        contract: c.contract.clone(),
                                        read_type: c.read_type.clone(),
                                        amount: money(&c.currency, c.amount),
                                        ..base
                                    },
                                    What::Unpriced(u) => pb::LedgerEntry {
                                        kind: "unpriced".into(),
                                        contract: u.read.contract.clone(),
                                        read_type: u.read.read_type.clone(),
                                        modality: u.read.modality.clone(),
                                        amount: money(currency(&u.read.contract), 0),
                                        missing: u.missing.clone(),
                                        ..base
                                    },
                                    What::Accrued(_) => return None,
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .await;
        Ok(Response::new(pb::GetLedgerResponse { entries }))
    }

    async fn preview_invoice(
        &self,
        request: Request<pb::PreviewInvoiceRequest>,
    ) -> Result<Response<pb::PreviewInvoiceResponse>, Status> {
        let (tenant, period) = scope(&request, &request.get_ref().tenant, &request.get_ref().period)?;
        let previews = self.billing.preview(&tenant, &period).await;
        let invoices = previews
            .into_iter()
            .map(|p| pb::InvoicePreview {
                contract: p.contract.clone(),
                lines: p
                    .lines
                    .iter()
                    .map(|l| pb::InvoiceLine {
                        line: l.line.clone(),
                        quantity: l.quantity,
                        unit_price: money(&p.currency, l.unit),
                        amount: money(&p.currency, l.amount),
                        event_ids: l.events.iter().map(ToString::to_string).collect(),
                        period: l.period.clone(),
                    })
                    .collect(),
                charges: money(&p.currency, p.charges),
                credits: money(&p.currency, p.credits),
                total: money(&p.currency, p.total),
                blocking: p.blocking,
            })
            .collect();
        Ok(Response::new(pb::PreviewInvoiceResponse { invoices }))
    }
}
