//! The one total order that decides both push assignment and pull claims.
//!
//! For a (study, reader) pair, lower ranks first, comparing in turn:
//! 1. the study's SLA deadline, earliest first;
//! 2. its priority, STAT first;
//! 3. whether the reader has the study's subspecialty (a match first);
//! 4. the reader's open load in work RVUs, lightest first (not study counts);
//! 5. whether the reader already holds a concurrent study of the same
//!    patient (keeping a patient's studies with one reader first);
//! 6. for hybrid service, onshore before remote;
//! 7. the study's arrival order, then the reader id: a stable tie-break.
//!
//! Push takes the lowest eligible pair; `ClaimNext` takes the lowest
//! eligible pair for the claiming reader.

use meridian_events::UnixMicros;
use uuid::Uuid;

use super::model::{DeliveryModel, Priority, Reader, ServiceType, Study};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rank<'r> {
    pub deadline: UnixMicros,
    pub priority: Priority,
    pub subspecialty_mismatch: bool,
    pub load_rvu_milli: u64,
    pub patient_elsewhere: bool,
    pub remote_in_hybrid: bool,
    pub sequence: u64,
    pub study: Uuid,
    pub reader: &'r str,
}

/// What the order needs to know of the reader's situation.
pub struct ReaderSituation {
    pub load_rvu_milli: u64,
    /// The reader holds an open assignment for the same patient.
    pub holds_patient: bool,
    pub delivery_model: DeliveryModel,
}

pub fn rank<'r>(study: &Study, reader: &'r Reader, situation: &ReaderSituation) -> Rank<'r> {
    Rank {
        deadline: study.deadline,
        priority: study.priority,
        subspecialty_mismatch: study.subspecialty.as_ref().is_some_and(|s| !reader.subspecialties.contains(s)),
        load_rvu_milli: situation.load_rvu_milli,
        patient_elsewhere: !situation.holds_patient,
        remote_in_hybrid: study.service_type == ServiceType::Hybrid
            && situation.delivery_model != DeliveryModel::Onshore,
        sequence: study.sequence,
        study: study.id,
        reader: &reader.id,
    }
}
