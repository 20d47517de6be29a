//! `meridian.billing.v1.BillingService`: a tenant administrator reads the
//! tenant's ledger and previews its invoices. Every call resolves the
//! principal (the region's interceptor) and asks `authorize`.

use std::sync::Arc;

use meridian_auth::grpc::arrival_time;
use meridian_auth::grpc::{failed_precondition, invalid_argument, month_argument, permission_denied, principal};
use meridian_auth::{Action, Principal, Resource, authorize};
use meridian_proto::billing::v1 as pb;
use meridian_proto::billing::v1::billing_service_server::BillingService;
use meridian_proto::common::v1::Money;
use tonic::{Request, Response, Status};

use crate::app::{Billing, Error};
use crate::domain::credit_note::{Ask, CreditNote, CreditRefused};
use crate::domain::invoice::{InvoiceLine, IssueRefused};
use crate::domain::ledger::What;

/// Refuses a principal who may take `action` for no tenant at all (on its
/// own tenant, or for a platform principal any): asked before an invoice
/// is looked up, so that its existence is not told to who may not see it.
fn own_tenant(p: &Principal, action: Action) -> Result<(), Status> {
    let own = Resource::Tenant { tenant: p.tenant.as_deref().unwrap_or_default() };
    authorize(p, action, &own).map_err(|d| permission_denied(&d))
}

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
    month_argument("period", period)?;
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

fn line(currency: &str, l: &InvoiceLine) -> pb::InvoiceLine {
    pb::InvoiceLine {
        line: l.line.clone(),
        quantity: l.quantity,
        unit_price: money(currency, l.unit),
        amount: money(currency, l.amount),
        event_ids: l.events.iter().map(ToString::to_string).collect(),
        period: l.period.clone(),
    }
}

fn credit_note(n: &CreditNote) -> pb::CreditNote {
    pb::CreditNote {
        number: n.number.clone(),
        invoice_number: n.invoice.clone(),
        lines: n
            .lines
            .iter()
            .map(|l| pb::CreditNoteLine {
                invoice_line: l.invoice_line,
                line: l.line.clone(),
                period: l.period.clone(),
                quantity: l.quantity,
                unit_price: money(&n.currency, l.unit),
                amount: money(&n.currency, l.amount),
            })
            .collect(),
        total: money(&n.currency, n.total),
        reason: n.reason.clone(),
        event_id: n.event_id.to_string(),
        issued_at: Some(n.issued_at.to_timestamp()),
    }
}

/// Why a credit note was refused, as a status with its details.
fn credit_refused(why: &CreditRefused) -> Status {
    let message = why.to_string();
    match why {
        CreditRefused::UnknownInvoice { .. } => Status::not_found(message),
        CreditRefused::NoLines => invalid_argument("lines", message),
        CreditRefused::NoReason => invalid_argument("reason", message),
        CreditRefused::NoKey | CreditRefused::KeyReused { .. } => invalid_argument("idempotency_key", message),
        CreditRefused::NoSuchLine { .. } => invalid_argument("lines.invoice_line", message),
        CreditRefused::NotACharge { index, .. }
        | CreditRefused::FullyCredited { index, .. }
        | CreditRefused::Exceeds { index, .. } => {
            failed_precondition("NOTHING_LEFT_TO_CREDIT", format!("line {index}"), message)
        }
    }
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
                let (kind, subject) = match &why {
                    IssueRefused::Open { ends, .. } => ("PERIOD_OPEN", ends.clone()),
                    IssueRefused::Blocked { fields, .. } => ("PRICE_MISSING", fields.join(", ")),
                    IssueRefused::Period { period } => ("NOT_A_PERIOD", period.clone()),
                };
                Err(failed_precondition(kind, subject, why.to_string()))
            }
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }

    async fn get_invoice(
        &self,
        request: Request<pb::GetInvoiceRequest>,
    ) -> Result<Response<pb::GetInvoiceResponse>, Status> {
        let p = principal(&request)?;
        let number = &request.get_ref().number;
        // Who may see no tenant's ledger is refused before the invoice is looked up.
        own_tenant(p, Action::ViewLedger)?;
        let missing = || Status::not_found(format!("no invoice {number:?} was issued in this region"));
        let Some((issued, notes)) = self.billing.invoice(number).await else {
            return Err(missing());
        };
        // Another tenant's invoice answers as a missing one (the refusal is
        // audited all the same): numbers run in sequence per series, so
        // telling "not yours" from "none" would tell another tenant's count.
        if authorize(p, Action::ViewLedger, &Resource::Tenant { tenant: &issued.tenant }).is_err() {
            return Err(missing());
        }
        let document = self.billing.document(&issued).await.map_err(|e| Status::unavailable(e.to_string()))?;
        let currency = issued.currency.as_str();
        let invoice = pb::Invoice {
            number: document.number.clone(),
            issuer: document.issuer.clone(),
            tenant: document.tenant.clone(),
            period: document.period.clone(),
            contract: document.contract.clone(),
            lines: crate::adapters::events::invoice_lines(&document).iter().map(|l| line(currency, l)).collect(),
            charges: document.charges.clone(),
            credits: document.credits.clone(),
            total: document.total.clone(),
            issued_at: document.issued_at,
            event_id: issued.event_id.to_string(),
            credit_notes: notes.iter().map(credit_note).collect(),
            rounding: document.rounding.clone(),
        };
        Ok(Response::new(pb::GetInvoiceResponse { invoice: Some(invoice) }))
    }

    async fn issue_credit_note(
        &self,
        request: Request<pb::IssueCreditNoteRequest>,
    ) -> Result<Response<pb::IssueCreditNoteResponse>, Status> {
        let p = principal(&request)?;
        let r = request.get_ref();
        // Who may issue for no tenant is refused before the invoice is looked up.
        own_tenant(p, Action::IssueInvoice)?;
        let unknown = || credit_refused(&CreditRefused::UnknownInvoice { number: r.invoice_number.clone() });
        let Some((issued, _)) = self.billing.invoice(&r.invoice_number).await else {
            return Err(unknown());
        };
        // As GetInvoice: another tenant's invoice is one that does not exist.
        if authorize(p, Action::IssueInvoice, &Resource::Tenant { tenant: &issued.tenant }).is_err() {
            return Err(unknown());
        }
        let ask = Ask {
            invoice: r.invoice_number.clone(),
            lines: r.lines.iter().map(|l| (l.invoice_line, l.quantity)).collect(),
            reason: r.reason.clone(),
            key: r.idempotency_key.clone(),
        };
        let now = arrival_time();
        match self.billing.credit(&ask, now).await {
            Ok(note) => Ok(Response::new(pb::IssueCreditNoteResponse { credit_note: Some(credit_note(&note)) })),
            Err(Error::CreditRefused(why)) => Err(credit_refused(&why)),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }

    async fn explain_charge(
        &self,
        request: Request<pb::ExplainChargeRequest>,
    ) -> Result<Response<pb::ExplainChargeResponse>, Status> {
        use meridian_events::payload::Payload;
        use pb::explain_charge_response::Fact;
        let p = principal(&request)?;
        let (text, tenant) = (&request.get_ref().event_id, &request.get_ref().tenant);
        if tenant.is_empty() {
            return Err(invalid_argument("tenant", "name the tenant"));
        }
        // Before looking: a search of the topic is for those who may see it.
        authorize(p, Action::ViewLedger, &Resource::Tenant { tenant }).map_err(|d| permission_denied(&d))?;
        let id: meridian_events::EventId =
            text.parse().map_err(|_| invalid_argument("event_id", format!("{text:?} is not an event id")))?;
        let not_found = || Status::not_found(format!("{tenant} has no charge, credit or unpriced read {id} here"));
        let explained = self.billing.explain(id).await.map_err(|e| Status::unavailable(e.to_string()))?;
        let explained = explained.filter(|e| &e.tenant == tenant).ok_or_else(not_found)?;
        let fact = match explained.payload {
            Payload::ChargePosted(c) => Fact::Charge(c),
            Payload::CreditPosted(c) => Fact::Credit(c),
            Payload::ChargeUnpriced(u) => Fact::Unpriced(u),
            _ => return Err(not_found()),
        };
        Ok(Response::new(pb::ExplainChargeResponse {
            tenant: explained.tenant,
            fact: Some(fact),
            invoiced: explained.invoiced,
            carried: explained.carried,
        }))
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
        month_argument("period", period)?;
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
                lines: p.lines.iter().map(|l| line(&p.currency, l)).collect(),
                charges: money(&p.currency, p.charges),
                credits: money(&p.currency, p.credits),
                total: money(&p.currency, p.total),
                blocking: p.blocking,
                rounding: p.rounding.to_owned(),
            })
            .collect();
        Ok(Response::new(pb::PreviewInvoiceResponse { invoices }))
    }
}
