//! Reporting: the reader who holds a read drafts its report and signs it,
//! in the study's home region (report text is PHI). What a signature needs
//! to know (who holds which read, the reader's licences, the patient's
//! jurisdiction) is folded from routing's events, never asked of routing;
//! routing folds ReportSigned back and completes the read.
//!
//! `domain` is pure (`decide`/`apply`, time as an argument); `app` runs it
//! on the region's log; `adapters` map events and serve gRPC; `serve` is
//! the opener `meridian serve reporting` and `meridian dev` run.
//!
//! Not built yet (issue 17 continues): addenda, corrections and
//! entered-in-error, templates and languages, critical results, peer
//! review, orders in (HL7 ORM/OMI, FHIR ServiceRequest), delivery out
//! (FHIR R4 DiagnosticReport, HL7v2 ORU^R01 over MLLP), KPIs.

pub mod adapters;
pub mod app;
pub mod domain;
pub mod serve;
