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
//! Built: drafts and signatures, amendments (addenda, corrections, entered
//! in error), critical results, delivery to a tenant's receivers (HL7 v2
//! ORU^R01 over MLLP, FHIR R4 DiagnosticReport) with retries and dead
//! letters, a viewer's entry to the study. Not built yet (issue 17
//! continues): templates and languages, peer review, orders in (HL7
//! ORM/OMI, FHIR ServiceRequest), KPIs.

pub mod adapters;
pub mod app;
pub mod domain;
pub mod serve;
