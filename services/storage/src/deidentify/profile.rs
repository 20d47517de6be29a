//! PS3.15 Table E.1-1 as rules, and what a contract's options make of
//! each: the action one attribute gets.

use std::collections::HashMap;
use std::sync::LazyLock;

use dicom_core::Tag;
pub use meridian_config::DeidentificationOption as ProfileOption;

use super::table::TABLE_E1_1;

/// A cell of Table E.1-1 (PS3.15 E.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Replace with a non-zero length dummy value consistent with the VR.
    D,
    /// Replace with a zero length value (or a dummy).
    Z,
    /// Remove.
    X,
    /// Keep.
    K,
    /// Clean: keep, with identifying information removed or modified.
    C,
    /// Replace with a UID internally consistent within the instances.
    U,
    /// Z unless D is needed for IOD conformance (Type 2 versus Type 1).
    ZD,
    /// X unless Z is needed (Type 3 versus Type 2).
    XZ,
    /// X unless D is needed (Type 3 versus Type 1).
    XD,
    /// X unless Z or D is needed (Type 3, 2, 1).
    XZD,
    /// X unless Z, or replacing the contained instance UIDs, is needed.
    XZUStar,
}

/// One row of Table E.1-1: the attribute (with `mask` bits of the tag that
/// must match, for the 50xx and 60xx repeating groups), its Basic Profile
/// action, and the cells of the options that change it.
#[derive(Debug)]
pub struct Rule {
    pub tag: (u16, u16),
    pub mask: (u16, u16),
    pub basic: Action,
    pub options: &'static [(ProfileOption, Action)],
    pub name: &'static str,
}

impl Rule {
    fn matches(&self, tag: Tag) -> bool {
        tag.group() & self.mask.0 == self.tag.0 && tag.element() & self.mask.1 == self.tag.1
    }
}

struct Lookup {
    exact: HashMap<Tag, &'static Rule>,
    masked: Vec<&'static Rule>,
}

static LOOKUP: LazyLock<Lookup> = LazyLock::new(|| {
    let (mut exact, mut masked) = (HashMap::new(), Vec::new());
    for rule in TABLE_E1_1 {
        if rule.mask == (0xFFFF, 0xFFFF) {
            exact.insert(Tag(rule.tag.0, rule.tag.1), rule);
        } else {
            masked.push(rule);
        }
    }
    Lookup { exact, masked }
});

/// The row of Table E.1-1 naming `tag`, if any.
pub fn rule(tag: Tag) -> Option<&'static Rule> {
    let lookup = &*LOOKUP;
    lookup.exact.get(&tag).copied().or_else(|| lookup.masked.iter().copied().find(|r| r.matches(tag)))
}

/// What is done to one attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Treatment {
    /// Kept; a sequence's items are de-identified in turn.
    Keep,
    Remove,
    /// Zero length (a sequence: no items).
    Empty,
    /// A dummy value of the VR (a sequence: every value in it dummied).
    Dummy,
    /// Each UID replaced by its keyed hash.
    ReplaceUid,
    /// Dates moved back by the patient's offset (Retain Longitudinal
    /// Temporal Information with Modified Dates).
    ShiftDates,
    /// A sequence kept with its items de-identified (which replaces the
    /// instance UIDs they contain); any other value emptied.
    KeepReferences,
}

/// The treatment of the attribute `tag` under the Basic Profile and `options`.
///
/// The compound actions need the attribute's type in the IOD, which the
/// table does not give: Meridian takes the alternative that conforms for
/// every type (Z/D, X/D and X/Z/D dummy the value, X/Z empties it, X/Z/U*
/// keeps a sequence's references under new UIDs). No identifying
/// information survives either way.
pub fn treatment(tag: Tag, options: &[ProfileOption]) -> Treatment {
    let Some(rule) = rule(tag) else {
        return Treatment::Keep;
    };
    let cells = || rule.options.iter().filter(|(o, _)| options.contains(o));
    if cells().any(|(_, a)| *a == Action::K) {
        return Treatment::Keep;
    }
    if cells().any(|(o, a)| *a == Action::C && *o == ProfileOption::RetainLongitudinalModifiedDates) {
        return Treatment::ShiftDates;
    }
    // Other cleaning (of patient characteristics) needs free-text
    // inspection: the Basic Profile's action stands.
    let action = cells().map(|(_, a)| *a).find(|a| *a != Action::C).unwrap_or(rule.basic);
    match action {
        Action::K | Action::C => Treatment::Keep,
        Action::X => Treatment::Remove,
        Action::Z | Action::XZ => Treatment::Empty,
        Action::D | Action::ZD | Action::XD | Action::XZD => Treatment::Dummy,
        Action::U => Treatment::ReplaceUid,
        Action::XZUStar => Treatment::KeepReferences,
    }
}

#[cfg(test)]
mod tests {
    use dicom_dictionary_std::tags;

    use super::*;
    use ProfileOption::*;

    #[test]
    fn the_table_has_the_current_edition_and_no_attribute_twice() {
        assert!(TABLE_E1_1.len() >= 650, "{} rows", TABLE_E1_1.len());
        let mut seen = std::collections::HashSet::new();
        for r in TABLE_E1_1 {
            assert!(seen.insert((r.tag, r.mask)), "{} twice", r.name);
        }
    }

    #[test]
    fn basic_profile_actions() {
        assert_eq!(treatment(tags::PATIENT_NAME, &[]), Treatment::Empty);
        assert_eq!(treatment(tags::PATIENT_ID, &[]), Treatment::Dummy);
        assert_eq!(treatment(tags::STUDY_INSTANCE_UID, &[]), Treatment::ReplaceUid);
        assert_eq!(treatment(tags::ACCESSION_NUMBER, &[]), Treatment::Empty);
        assert_eq!(treatment(tags::INSTITUTION_NAME, &[]), Treatment::Dummy);
        assert_eq!(treatment(tags::PATIENT_BIRTH_DATE, &[]), Treatment::Empty);
        assert_eq!(treatment(tags::OTHER_PATIENT_I_DS_SEQUENCE, &[]), Treatment::Remove);
        assert_eq!(treatment(tags::REFERENCED_IMAGE_SEQUENCE, &[]), Treatment::KeepReferences);
        // Not in the table: kept.
        assert_eq!(treatment(tags::SOP_CLASS_UID, &[]), Treatment::Keep);
        assert_eq!(treatment(tags::ROWS, &[]), Treatment::Keep);
        // The repeating groups, by mask.
        assert_eq!(treatment(Tag(0x6002, 0x3000), &[]), Treatment::Remove);
        assert_eq!(treatment(Tag(0x5010, 0x0005), &[]), Treatment::Remove);
        assert_eq!(treatment(Tag(0x6000, 0x0010), &[]), Treatment::Keep);
    }

    #[test]
    fn options_change_their_columns_only() {
        let dates = [RetainLongitudinalModifiedDates];
        assert_eq!(treatment(tags::STUDY_DATE, &dates), Treatment::ShiftDates);
        assert_eq!(treatment(tags::ACQUISITION_DATE_TIME, &dates), Treatment::ShiftDates);
        assert_eq!(treatment(tags::STUDY_DATE, &[RetainLongitudinalFullDates]), Treatment::Keep);
        assert_eq!(treatment(tags::PATIENT_NAME, &dates), Treatment::Empty);
        assert_eq!(treatment(tags::STUDY_INSTANCE_UID, &[RetainUids]), Treatment::Keep);
        assert_eq!(treatment(tags::DEVICE_SERIAL_NUMBER, &[RetainDeviceIdentity]), Treatment::Keep);
        assert_eq!(treatment(tags::INSTITUTION_NAME, &[RetainInstitutionIdentity]), Treatment::Keep);
        assert_eq!(treatment(tags::PATIENT_SEX, &[RetainPatientCharacteristics]), Treatment::Keep);
        assert_eq!(treatment(tags::PATIENT_SEX, &[]), Treatment::Empty);
        // Allergies are cleaned under that option: free text, so removed.
        assert_eq!(treatment(tags::ALLERGIES, &[RetainPatientCharacteristics]), Treatment::Remove);
    }
}
