use meridian_events::{EventId, UnixMicros};
use proptest::prelude::*;
use uuid::Uuid;

use super::delivery::{Endpoint, Outcome, Policy, Standing};
use super::model::*;
use super::report::{Command, Error, Event, outcome};

/// Decides with no receivers (the delivery test names its own).
fn decide(state: &State, command: &Command, now: UnixMicros) -> Result<Vec<Event>, Error> {
    super::report::decide(state, &Policy::default(), command, now)
}

const NOW: UnixMicros = UnixMicros(1_796_000_000_000_000);
const STUDY: Uuid = Uuid::from_u128(7);

fn facts() -> StudyFacts {
    StudyFacts {
        tenant: "acme".into(),
        contract: "acme-atlantic".into(),
        facility: "acme-general".into(),
        jurisdiction: "US-NY".into(),
        modality: "CT".into(),
        body_part: "HEAD".into(),
        ..Default::default()
    }
}

fn licence(jurisdiction: &str, expires: UnixMicros) -> Licence {
    Licence { jurisdiction: jurisdiction.into(), expires }
}

/// A study whose `read_type` read `reader` holds; `reader` licensed in the US.
fn held(read_type: &str, reader: &str) -> State {
    let state = apply(State::default(), &Fact::Queued { study: STUDY, facts: facts(), read_type: read_type.into() });
    let state = apply(state, &Fact::Held { study: STUDY, reader: reader.into() });
    let later = UnixMicros(NOW.0 + 86_400_000_000);
    apply(state, &Fact::Licences { reader: reader.into(), group: None, licences: vec![licence("US", later)] })
}

/// Decides and folds what `command` decides (as the log would give it back).
fn run(state: State, command: &Command, now: UnixMicros) -> Result<(State, Vec<Event>), Error> {
    let events = decide(&state, command, now)?;
    let mut state = state;
    for (n, e) in events.iter().enumerate() {
        state = apply(state, &fact_of(e, n as u64));
    }
    Ok((state, events))
}

/// What folding an event back from the log gives.
fn fact_of(event: &Event, offset: u64) -> Fact {
    match event {
        Event::Requested(d) => Fact::Requested(d.clone()),
        Event::Delivered { delivery, .. } => Fact::Delivered { delivery: *delivery },
        Event::DeliveryFailed { delivery, attempt, error, permanent, retry_at, .. } => Fact::Failed {
            delivery: *delivery,
            attempt: *attempt,
            error: error.clone(),
            permanent: *permanent,
            retry_at: *retry_at,
        },
        Event::Drafted {
            study,
            report,
            version,
            read_type,
            author,
            findings,
            impression,
            saved_at,
            kind,
            fields,
            template,
            keyed,
            ..
        } => Fact::Saved {
            study: *study,
            report: *report,
            read_type: read_type.clone(),
            version: VersionRef {
                version: *version,
                author: author.clone(),
                saved_at: *saved_at,
                partition: 0,
                offset,
                has_impression: !impression.trim().is_empty(),
                kind: (*kind).to_owned(),
                fields: fields.keys().cloned().collect(),
                template: template.clone(),
                event: keyed.map_or(Uuid::from_u128(u128::from(offset) + 1_000), |k| k.as_uuid()),
                digest: text_digest(findings, impression, fields),
            },
        },
        Event::Amended { study, report, read_type, kind, version, reader, at, reason } => Fact::Amended {
            study: *study,
            report: *report,
            read_type: read_type.clone(),
            amendment: Amendment {
                kind: (*kind).to_owned(),
                version: *version,
                reader: reader.clone(),
                at: *at,
                reason: reason.clone(),
            },
        },
        Event::Peer(p) => Fact::Peer(p.clone()),
        Event::Signed { study, report, read_type, reader, version, signed_at, discrepancy } => Fact::Signed {
            study: *study,
            report: *report,
            read_type: read_type.clone(),
            signature: Signature {
                version: *version,
                reader: reader.clone(),
                at: *signed_at,
                discrepancy: discrepancy.clone(),
                event_id: EventId(Uuid::from_u128(u128::from(offset))),
            },
        },
    }
}

fn draft(reader: &str, impression: &str, base: u32) -> Command {
    Command::SaveDraft {
        key: String::new(),
        study: STUDY,
        reader: reader.into(),
        findings: "No acute intracranial abnormality.".into(),
        impression: impression.into(),
        fields: Default::default(),
        base_version: base,
    }
}

fn sign(reader: &str, read_type: &str, version: u32) -> Command {
    Command::Sign {
        study: STUDY,
        reader: reader.into(),
        read_type: read_type.into(),
        version,
        discrepancy: String::new(),
    }
}

#[test]
fn only_the_holder_drafts_and_each_save_is_a_new_version_from_the_latest() {
    let state = held("preliminary", "ortiz");
    let refused = decide(&state, &draft("nair", "Normal.", 0), NOW).unwrap_err();
    assert_eq!(refused.rule(), Some("ASSIGNMENT"));
    let (state, first) = run(state, &draft("ortiz", "", 0), NOW).unwrap();
    let (state, second) = run(state, &draft("ortiz", "Normal.", 1), NOW).unwrap();
    let versions: Vec<u32> = [&first[0], &second[0]]
        .iter()
        .map(|e| match e {
            Event::Drafted { version, .. } => *version,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(versions, [1, 2]);
    // Edited from version 1 while 2 was saved: refused, naming the latest.
    let stale = decide(&state, &draft("ortiz", "Normal.", 1), NOW).unwrap_err();
    assert_eq!(
        (stale.rule(), stale.to_string().as_str()),
        (Some("VERSION"), "version 2 was saved since version 1: edit the latest")
    );
    assert_eq!(
        decide(&State::default(), &draft("ortiz", "x", 0), NOW).unwrap_err(),
        Error::UnknownStudy { study: STUDY }
    );
}

#[test]
fn a_read_is_signed_by_its_holder_with_a_saved_version_that_has_an_impression() {
    let state = held("preliminary", "ortiz");
    assert_eq!(decide(&state, &sign("ortiz", "preliminary", 0), NOW).unwrap_err().rule(), Some("DRAFT"));
    let (state, _) = run(state, &draft("ortiz", "", 0), NOW).unwrap();
    assert_eq!(decide(&state, &sign("ortiz", "preliminary", 0), NOW).unwrap_err(), Error::NoImpression { version: 1 });
    let (state, _) = run(state, &draft("ortiz", "No acute findings.", 0), NOW).unwrap();
    assert_eq!(decide(&state, &sign("nair", "preliminary", 0), NOW).unwrap_err().rule(), Some("ASSIGNMENT"));
    assert_eq!(decide(&state, &sign("ortiz", "final", 0), NOW).unwrap_err().rule(), Some("READ_TYPE"));
    assert!(matches!(decide(&state, &sign("ortiz", "preliminary", 9), NOW), Err(Error::NoVersion { last: 2, .. })));
    let bad = Command::Sign {
        study: STUDY,
        reader: "ortiz".into(),
        read_type: "preliminary".into(),
        version: 0,
        discrepancy: "huge".into(),
    };
    assert_eq!(decide(&state, &bad, NOW).unwrap_err(), Error::Discrepancy { value: "huge".into() });

    let (state, signed) = run(state, &sign("ortiz", "preliminary", 0), NOW).unwrap();
    assert!(matches!(&signed[..], [Event::Signed { version: 2, .. }]), "{signed:?}");
    // Asked again: the same signature, nothing new; by another: refused.
    assert!(decide(&state, &sign("ortiz", "preliminary", 0), NOW).unwrap().is_empty());
    assert_eq!(decide(&state, &sign("nair", "preliminary", 0), NOW).unwrap_err().rule(), Some("SIGNED"));
    // The signed text is immutable: no more versions of that read.
    assert_eq!(decide(&state, &draft("ortiz", "Changed.", 0), NOW).unwrap_err().rule(), Some("SIGNED"));
}

#[test]
fn a_final_needs_a_licence_current_in_the_patients_jurisdiction() {
    let with = |licences: Vec<Licence>| {
        let state = held("final", "ortiz");
        let state = apply(state, &Fact::Licences { reader: "ortiz".into(), group: None, licences });
        run(state, &draft("ortiz", "Normal.", 0), NOW).unwrap().0
    };
    let year = 365 * 86_400_000_000;
    // A national licence covers the state; the state's covers itself.
    for ok in [vec![licence("US", UnixMicros(NOW.0 + year))], vec![licence("US-NY", UnixMicros(NOW.0 + year))]] {
        assert!(decide(&with(ok), &sign("ortiz", "final", 0), NOW).is_ok());
    }
    for refused in [
        vec![],
        vec![licence("US-CA", UnixMicros(NOW.0 + year))],
        vec![licence("GB", UnixMicros(NOW.0 + year))],
        // Expired at the moment of signing.
        vec![licence("US", NOW)],
    ] {
        let e = decide(&with(refused.clone()), &sign("ortiz", "final", 0), NOW).unwrap_err();
        assert_eq!(e, Error::Licence { reader: "ortiz".into(), jurisdiction: "US-NY".into() }, "{refused:?}");
    }
    // A preliminary needs none.
    let state =
        apply(held("preliminary", "ortiz"), &Fact::Licences { reader: "ortiz".into(), group: None, licences: vec![] });
    let state = run(state, &draft("ortiz", "Normal.", 0), NOW).unwrap().0;
    assert!(decide(&state, &sign("ortiz", "preliminary", 0), NOW).is_ok());
}

#[test]
fn routing_moves_the_read_and_reporting_follows() {
    let state = held("preliminary", "ortiz");
    let state = run(state, &draft("ortiz", "Normal.", 0), NOW).unwrap().0;
    // Released, then reassigned to nair: ortiz may no longer sign; nair
    // signs the versions saved so far.
    let state = apply(state, &Fact::Released { study: STUDY });
    assert_eq!(decide(&state, &sign("ortiz", "preliminary", 0), NOW).unwrap_err().rule(), Some("ASSIGNMENT"));
    let state = apply(state, &Fact::Held { study: STUDY, reader: "nair".into() });
    let state = run(state, &sign("nair", "preliminary", 0), NOW).unwrap().0;
    // Routing completes the preliminary and queues the final.
    let state = apply(state, &Fact::Completed { study: STUDY, read_type: "preliminary".into() });
    assert_eq!(state.studies[&STUDY].open, None);
    let state = apply(state, &Fact::Queued { study: STUDY, facts: facts(), read_type: "final".into() });
    let state = apply(state, &Fact::Held { study: STUDY, reader: "ortiz".into() });
    let (state, drafted) = run(state, &draft("ortiz", "Agree.", 0), NOW).unwrap();
    assert!(matches!(&drafted[..], [Event::Drafted { version: 1, read_type, .. }] if read_type == "final"));
    assert_eq!(state.studies[&STUDY].reports.len(), 2, "one report per read");
    assert_ne!(report_id(STUDY, "preliminary"), report_id(STUDY, "final"));
}

#[test]
fn signatures_and_text_fold_to_the_same_report_in_either_order() {
    // They are on two topics: a restart may fold the signature first.
    let state = run(held("preliminary", "ortiz"), &draft("ortiz", "Normal.", 0), NOW).unwrap().0;
    let signed = decide(&state, &sign("ortiz", "preliminary", 0), NOW).unwrap();
    let add = Command::AddAddendum {
        key: String::new(),
        study: STUDY,
        reader: "ortiz".into(),
        read_type: "preliminary".into(),
        text: "More.".into(),
    };
    let state = apply(state, &fact_of(&signed[0], 1));
    let amended = decide(&state, &add, NOW).unwrap();
    let facts: Vec<Fact> =
        [fact_of(&signed[0], 1), fact_of(&amended[0], 2), fact_of(&amended[1], 3)].into_iter().collect();
    let base = held("preliminary", "ortiz");
    let text = |e: &Event| fact_of(e, 0);
    let drafted = decide(&base, &draft("ortiz", "Normal.", 0), NOW).unwrap();
    // In decision order; then the operational facts before any text.
    let in_order = [text(&drafted[0]), facts[0].clone(), facts[1].clone(), facts[2].clone()];
    let ops_first = [facts[0].clone(), facts[2].clone(), text(&drafted[0]), facts[1].clone()];
    let fold = |order: &[Fact]| order.iter().fold(base.clone(), apply);
    let (a, b) = (fold(&in_order), fold(&ops_first));
    assert_eq!(a, b);
    let report = a.studies[&STUDY].report("preliminary").unwrap();
    assert_eq!((report.status(), report.versions.len()), ("appended", 2));
}

#[test]
fn a_signed_report_is_amended_by_its_signer_only_by_appending() {
    let state = held("preliminary", "ortiz");
    let addendum = |reader: &str| Command::AddAddendum {
        key: String::new(),
        study: STUDY,
        reader: reader.into(),
        read_type: "preliminary".into(),
        text: "Comparison with the prior CT: unchanged.".into(),
    };
    let state = run(state, &draft("ortiz", "Normal.", 0), NOW).unwrap().0;
    assert_eq!(decide(&state, &addendum("ortiz"), NOW).unwrap_err().rule(), Some("NOT_SIGNED"));
    let state = run(state, &sign("ortiz", "preliminary", 0), NOW).unwrap().0;
    let signed_text = state.studies[&STUDY].report("preliminary").unwrap().current().cloned();
    assert_eq!(decide(&state, &addendum("nair"), NOW).unwrap_err().rule(), Some("AUTHOR"));
    let empty = Command::AddAddendum {
        key: String::new(),
        study: STUDY,
        reader: "ortiz".into(),
        read_type: "preliminary".into(),
        text: " ".into(),
    };
    assert_eq!(
        decide(&state, &empty, NOW).unwrap_err(),
        Error::Empty { field: "text", what: "an addendum says something" }
    );

    let (state, events) = run(state, &addendum("ortiz"), NOW).unwrap();
    assert!(
        matches!(
            &events[..],
            [Event::Drafted { version: 2, kind: "addendum", .. }, Event::Amended { kind: "addendum", version: 2, .. }]
        ),
        "{events:?}"
    );
    let report = state.studies[&STUDY].report("preliminary").unwrap();
    assert_eq!(report.status(), "appended");
    assert_eq!(report.current().cloned(), signed_text, "the signed text stays the report");
    assert_eq!(report.addenda().map(|v| v.version).collect::<Vec<_>>(), [2]);

    // Corrected: a new current text; the signed one stays on record.
    let correct = Command::Correct {
        key: String::new(),
        study: STUDY,
        reader: "ortiz".into(),
        read_type: "preliminary".into(),
        findings: "Small left subdural haematoma.".into(),
        impression: "Acute left subdural haematoma.".into(),
        reason: "missed finding".into(),
    };
    let (state, _) = run(state, &correct, NOW).unwrap();
    let report = state.studies[&STUDY].report("preliminary").unwrap();
    assert_eq!((report.status(), report.current().map(|v| v.version)), ("corrected", Some(3)));
    assert_eq!(report.versions.len(), 3, "nothing replaced: every version stays");
    // Entered in error: the end of it.
    let wrong = Command::EnterInError {
        study: STUDY,
        reader: "ortiz".into(),
        read_type: "preliminary".into(),
        reason: "wrong patient".into(),
    };
    let (state, _) = run(state, &wrong, NOW).unwrap();
    assert_eq!(state.studies[&STUDY].report("preliminary").unwrap().status(), "entered-in-error");
    assert_eq!(decide(&state, &addendum("ortiz"), NOW).unwrap_err().rule(), Some("ENTERED_IN_ERROR"));
}

#[test]
fn a_signature_is_requested_for_each_receiver_that_takes_the_read_and_retried_until_taken() {
    let policy = Policy {
        endpoints: [(
            "acme".to_string(),
            vec![
                Endpoint { name: "ris".into(), kind: "hl7_mllp".into(), read_types: vec![] },
                Endpoint { name: "ehr".into(), kind: "fhir".into(), read_types: vec!["final".into()] },
            ],
        )]
        .into(),
        ..Policy::default()
    };
    let run_with = |state: State, command: &Command| {
        let events = super::report::decide(&state, &policy, command, NOW).unwrap();
        let state = events.iter().enumerate().fold(state, |s, (n, e)| apply(s, &fact_of(e, n as u64)));
        (state, events)
    };
    let state = run(held("preliminary", "ortiz"), &draft("ortiz", "Normal.", 0), NOW).unwrap().0;
    let (state, events) = run_with(state, &sign("ortiz", "preliminary", 0));
    let requested: Vec<(&str, &str)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Requested(d) => Some((d.endpoint.as_str(), d.status.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(requested, [("ris", "preliminary")], "the EHR takes finals only");
    // Signed again: nothing new, not even a request.
    assert!(super::report::decide(&state, &policy, &sign("ortiz", "preliminary", 0), NOW).unwrap().is_empty());
    let d = state.deliveries.values().next().unwrap().clone();
    assert_eq!(super::delivery::due(&state.deliveries, NOW, 10), std::slice::from_ref(&d));
    // Refused for now: due again after its backoff.
    let failed = outcome(&d, 1, Outcome::Failed { error: "AE: busy".into(), permanent: false }, NOW);
    let state = apply(state, &fact_of(&failed, 9));
    assert!(super::delivery::due(&state.deliveries, NOW, 10).is_empty());
    let later = UnixMicros(NOW.0 + super::delivery::backoff(1));
    assert_eq!(super::delivery::due(&state.deliveries, later, 10).len(), 1);
    // Taken: gone from the state.
    let taken = outcome(&state.deliveries[&d.id], 2, Outcome::Delivered("AA".into()), later);
    let state = apply(state, &fact_of(&taken, 10));
    assert!(state.deliveries.is_empty());
    // An addendum is requested again, as "appended", under its own id.
    let add = Command::AddAddendum {
        key: String::new(),
        study: STUDY,
        reader: "ortiz".into(),
        read_type: "preliminary".into(),
        text: "More.".into(),
    };
    let (state, events) = run_with(state, &add);
    let again: Vec<_> =
        events.iter().filter_map(|e| if let Event::Requested(d) = e { Some(d) } else { None }).collect();
    assert_eq!((again.len(), again[0].status.as_str()), (1, "appended"));
    assert_ne!(again[0].id, d.id);
    // Refused for good: a dead letter, never due.
    let dead = outcome(again[0], 1, Outcome::Failed { error: "AR: unknown patient".into(), permanent: true }, NOW);
    let state = apply(state, &fact_of(&dead, 11));
    assert_eq!(state.deliveries[&again[0].id].standing, Standing::Dead("AR: unknown patient".into()));
    assert!(super::delivery::due(&state.deliveries, UnixMicros(i64::MAX), 10).is_empty());
}

#[derive(Clone, Debug)]
enum Step {
    Hold(u8),
    Release,
    Complete,
    Queue(bool),
    Draft(u8, bool),
    Sign(u8, bool),
    Amend(u8, bool),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..3u8).prop_map(Step::Hold),
        Just(Step::Release),
        Just(Step::Complete),
        any::<bool>().prop_map(Step::Queue),
        (0..3u8, any::<bool>()).prop_map(|(r, i)| Step::Draft(r, i)),
        (0..3u8, any::<bool>()).prop_map(|(r, f)| Step::Sign(r, f)),
        (0..3u8, any::<bool>()).prop_map(|(r, f)| Step::Amend(r, f)),
    ]
}

proptest! {
    /// Whatever routing does in between: no signature without holding the
    /// open read of its type; a signed read's signature and versions never
    /// change after, and amendments only append.
    #[test]
    fn no_sign_without_the_open_read_and_signed_text_never_changes(steps in prop::collection::vec(step(), 1..60)) {
        let readers = ["ortiz", "nair", "lee"];
        let year = UnixMicros(NOW.0 + 365 * 86_400_000_000);
        let mut state = State::default();
        for r in readers {
            state = apply(state, &Fact::Licences { reader: r.into(), group: None, licences: vec![licence("US", year)] });
        }
        let mut frozen: Vec<(String, Report)> = Vec::new();
        for (n, s) in steps.iter().enumerate() {
            let now = UnixMicros(NOW.0 + n as i64);
            let before = state.clone();
            match s {
                Step::Hold(r) => state = apply(state, &Fact::Held { study: STUDY, reader: readers[*r as usize].into() }),
                Step::Release => state = apply(state, &Fact::Released { study: STUDY }),
                Step::Complete => {
                    let open = state.studies.get(&STUDY).and_then(|s| s.open.clone());
                    if let Some(o) = open {
                        state = apply(state, &Fact::Completed { study: STUDY, read_type: o.read_type });
                    }
                }
                Step::Queue(fin) => {
                    let read_type = if *fin { "final" } else { "preliminary" };
                    state = apply(state, &Fact::Queued { study: STUDY, facts: facts(), read_type: read_type.into() });
                }
                Step::Draft(r, impression) => {
                    let text = if *impression { "Normal." } else { "" };
                    if let Ok((next, _)) = run(state.clone(), &draft(readers[*r as usize], text, 0), now) {
                        state = next;
                    }
                }
                Step::Amend(r, fin) => {
                    let read_type = if *fin { "final" } else { "preliminary" };
                    let add = Command::AddAddendum {
                        key: String::new(),
                        study: STUDY,
                        reader: readers[*r as usize].into(),
                        read_type: read_type.into(),
                        text: "Addendum.".into(),
                    };
                    if let Ok((next, _)) = run(state.clone(), &add, now) {
                        state = next;
                    }
                }
                Step::Sign(r, fin) => {
                    let (reader, read_type) = (readers[*r as usize], if *fin { "final" } else { "preliminary" });
                    if let Ok((next, events)) = run(state.clone(), &sign(reader, read_type, 0), now)
                        && !events.is_empty()
                    {
                        let open = before.studies.get(&STUDY).and_then(|s| s.open.clone());
                        prop_assert_eq!(open, Some(OpenRead { read_type: read_type.into(), holder: Some(reader.into()) }));
                        state = next;
                    }
                }
            }
            if let Some(study) = state.studies.get(&STUDY) {
                for r in study.reports.iter().filter(|r| r.signed.is_some()) {
                    match frozen.iter_mut().find(|(t, _)| *t == r.read_type) {
                        // Signed: the signature and every version kept as
                        // they were; only amendments (and their text) added.
                        Some((_, then)) => {
                            prop_assert_eq!(&then.signed, &r.signed, "a signature changed");
                            prop_assert!(r.versions.starts_with(&then.versions), "a version changed");
                            prop_assert!(r.amendments.starts_with(&then.amendments), "an amendment changed");
                            let added = &r.versions[then.versions.len()..];
                            prop_assert!(added.iter().all(|v| v.kind != "draft"), "a draft after signing");
                            *then = r.clone();
                        }
                        None => frozen.push((r.read_type.clone(), r.clone())),
                    }
                }
            }
        }
    }
}

mod peer_review {
    use super::*;
    use crate::domain::peer_review::{PeerError, PeerEvent, Sample, arbitrate, concordance, score};

    fn sample(fraction: f64) -> Sample {
        Sample { fraction, seed: "acme-2026".into(), within: 30 * 86_400_000_000 }
    }

    fn policy(fraction: f64) -> Policy {
        Policy { samples: [("acme-atlantic".to_string(), sample(fraction))].into(), ..Policy::default() }
    }

    fn run_with(policy: &Policy, state: State, command: &Command, now: UnixMicros) -> (State, Vec<Event>) {
        let events = super::super::report::decide(&state, policy, command, now).unwrap();
        let state = events.iter().enumerate().fold(state, |s, (n, e)| apply(s, &fact_of(e, n as u64)));
        (state, events)
    }

    /// `STUDY`'s final signed by "nair" of atlantic-rads, drawn; then the
    /// peer review read queued and held by `reviewer`.
    fn under_review(reviewer: &str) -> State {
        let state = apply(
            held("final", "nair"),
            &Fact::Licences {
                reader: "nair".into(),
                group: Some("atlantic-rads".into()),
                licences: vec![licence("US", UnixMicros(NOW.0 + 86_400_000_000))],
            },
        );
        let state = run(state, &draft("nair", "Normal.", 0), NOW).unwrap().0;
        let (state, events) = run_with(&policy(1.0), state, &sign("nair", "final", 0), NOW);
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::Peer(PeerEvent::Requested { reviewed_reader, reviewed_group, .. })
                if reviewed_reader == "nair" && reviewed_group == "atlantic-rads")),
            "{events:?}"
        );
        // Routing completes the final and queues the review.
        let state = apply(state, &Fact::Completed { study: STUDY, read_type: "final".into() });
        let state = apply(state, &Fact::Queued { study: STUDY, facts: facts(), read_type: "peer_review".into() });
        apply(state, &Fact::Held { study: STUDY, reader: reviewer.into() })
    }

    #[test]
    fn the_sample_is_drawn_from_its_seed_alone() {
        let studies: Vec<Uuid> = (0..20_000u128).map(Uuid::from_u128).collect();
        let drawn = |s: &Sample| studies.iter().filter(|id| s.draws(**id)).count();
        // A twentieth, give or take what 20,000 draws give (3 sigma ≈ 92).
        let n = drawn(&sample(0.05));
        assert!((900..=1100).contains(&n), "{n} of 20000 drawn at 5%");
        assert_eq!(drawn(&sample(0.0)), 0);
        assert_eq!(drawn(&sample(1.0)), studies.len());
        // Another seed draws other studies.
        let other = Sample { seed: "acme-2027".into(), ..sample(0.05) };
        let same: usize = studies.iter().filter(|id| sample(0.05).draws(**id) && other.draws(**id)).count();
        assert!(same < n / 5, "{same} of {n} drawn by both seeds");
    }

    proptest! {
        #[test]
        fn a_draw_is_reproducible_and_grows_with_the_fraction(
            seed in "[a-z0-9-]{1,12}", study in any::<u128>(), low in 0.0f64..1.0, more in 0.0f64..1.0,
        ) {
            let a = Sample { fraction: low, seed: seed.clone(), within: 1 };
            let again = Sample { fraction: low, seed, within: 1 };
            let study = Uuid::from_u128(study);
            prop_assert_eq!(a.draws(study), again.draws(study));
            let wider = Sample { fraction: (low + more).min(1.0), ..a.clone() };
            prop_assert!(!a.draws(study) || wider.draws(study));
        }
    }

    #[test]
    fn only_finals_are_drawn_and_a_review_is_never_delivered() {
        let policy = Policy {
            endpoints: [(
                "acme".to_string(),
                vec![Endpoint { name: "ris".into(), kind: "hl7_mllp".into(), read_types: vec![] }],
            )]
            .into(),
            ..policy(1.0)
        };
        let state = run(held("preliminary", "ortiz"), &draft("ortiz", "Normal.", 0), NOW).unwrap().0;
        let (_, events) = run_with(&policy, state, &sign("ortiz", "preliminary", 0), NOW);
        assert!(!events.iter().any(|e| matches!(e, Event::Peer(_))), "a preliminary is not reviewed: {events:?}");
        let state = run(under_review("lee"), &draft("lee", "Small subdural haematoma.", 0), NOW).unwrap().0;
        let (state, events) = run_with(&policy, state, &sign("lee", "peer_review", 0), NOW);
        assert!(matches!(&events[..], [Event::Signed { .. }]), "a review is signed, never sent: {events:?}");
        assert!(state.studies[&STUDY].review.is_some());
    }

    #[test]
    fn the_reviewer_scores_after_their_blinded_read_and_an_admin_of_the_reviewed_group_arbitrates() {
        let state = under_review("lee");
        // Blinded read first.
        let e = score(&state, STUDY, "lee", "1", NOW).unwrap_err();
        assert_eq!(e.rule(), Some("REVIEWER"));
        let state = run(state, &draft("lee", "Small subdural haematoma.", 0), NOW).unwrap().0;
        let state = run(state, &sign("lee", "peer_review", 0), NOW).unwrap().0;
        assert_eq!(score(&state, STUDY, "ortiz", "1", NOW).unwrap_err().rule(), Some("REVIEWER"));
        assert_eq!(score(&state, STUDY, "lee", "4", NOW).unwrap_err(), PeerError::Score { score: "4".into() });
        assert_eq!(score(&state, Uuid::from_u128(99), "lee", "1", NOW).unwrap_err().rule(), None);
        let scored = score(&state, STUDY, "lee", "3b", NOW).unwrap();
        let state = scored.iter().fold(state, |s, e| apply(s, &Fact::Peer(e.clone())));
        // Asked again: the same answer; another score: refused.
        assert!(score(&state, STUDY, "lee", "3b", NOW).unwrap().is_empty());
        assert_eq!(score(&state, STUDY, "lee", "1", NOW).unwrap_err().rule(), Some("SCORED"));
        // Not standing until arbitrated; counted as awaiting.
        let review = state.studies[&STUDY].review.clone().unwrap();
        assert_eq!(review.standing(), None);
        let (readers, _) = concordance(&state, "acme", |_| true);
        assert_eq!(readers["nair"].awaiting_arbitration, 1);
        // Only the reviewed reader's group arbitrates.
        assert_eq!(arbitrate(&state, STUDY, "lotus", "admin", "2a", NOW).unwrap_err().rule(), Some("GROUP"));
        let settled = arbitrate(&state, STUDY, "atlantic-rads", "admin", "2a", NOW).unwrap();
        let state = settled.iter().fold(state, |s, e| apply(s, &Fact::Peer(e.clone())));
        assert_eq!(state.studies[&STUDY].review.as_ref().unwrap().standing(), Some("2a"));
        assert_eq!(
            arbitrate(&state, STUDY, "atlantic-rads", "admin", "3b", NOW).unwrap_err().rule(),
            Some("ARBITRATED")
        );
        let (readers, groups) = concordance(&state, "acme", |_| true);
        assert_eq!(readers["nair"].by_score, [("2a".to_string(), 1)].into());
        assert_eq!(groups["atlantic-rads"].concordant_per_mille(), Some(0));
        assert!(concordance(&state, "acme", |_| false).0.is_empty(), "scored outside the period");
    }

    #[test]
    fn a_concurring_score_stands_without_arbitration() {
        let state = run(under_review("lee"), &draft("lee", "Normal.", 0), NOW).unwrap().0;
        let state = run(state, &sign("lee", "peer_review", 0), NOW).unwrap().0;
        let state =
            score(&state, STUDY, "lee", "1", NOW).unwrap().iter().fold(state, |s, e| apply(s, &Fact::Peer(e.clone())));
        assert_eq!(
            arbitrate(&state, STUDY, "atlantic-rads", "admin", "1", NOW).unwrap_err().rule(),
            Some("ARBITRATION")
        );
        let (readers, _) = concordance(&state, "acme", |_| true);
        assert_eq!(readers["nair"].concordant_per_mille(), Some(1000));
    }
}

mod orders {
    use super::*;
    use crate::domain::order::{OrderEvent, OrderFact, OrderIn, due, receive};

    const KEY: Uuid = Uuid::from_u128(0xacc);

    fn order(priority: &str) -> OrderIn {
        OrderIn {
            tenant: "acme".into(),
            facility: "acme-general".into(),
            accession: "ACC-1".into(),
            priority: priority.into(),
            source: "hl7v2",
            ..OrderIn::default()
        }
    }

    /// What folding `events` back from the log gives.
    fn fold(state: State, events: &[OrderEvent]) -> State {
        events.iter().enumerate().fold(state, |s, (n, e)| {
            let fact = match e {
                OrderEvent::Received { key, order, received_at } => OrderFact::Received {
                    key: *key,
                    tenant: order.tenant.clone(),
                    priority: order.priority.clone(),
                    received_at: *received_at,
                    partition: 0,
                    offset: n as u64,
                },
                OrderEvent::Matched { study, key, .. } => OrderFact::Matched { study: *study, key: *key },
            };
            apply(s, &Fact::Order(fact))
        })
    }

    fn arrived(state: State) -> State {
        apply(state, &Fact::Arrived { study: STUDY, partition: 0, offset: 9, accession_key: Some(KEY) })
    }

    #[test]
    fn an_order_before_its_study_is_matched_when_the_study_arrives() {
        let events = receive(&State::default(), KEY, order("stat"), NOW);
        assert!(matches!(&events[..], [OrderEvent::Received { .. }]), "no study yet: {events:?}");
        let state = fold(State::default(), &events);
        assert!(due(&state, NOW).is_empty());
        let state = arrived(state);
        let matched = due(&state, NOW);
        assert_eq!(matched, [OrderEvent::Matched { study: STUDY, key: KEY, priority: "stat".into(), at: NOW }]);
        let state = fold(state, &matched);
        assert!(due(&state, NOW).is_empty(), "matched once");
        assert_eq!(state.studies[&STUDY].order, Some(KEY));
        // The same order sent again: nothing new.
        assert!(receive(&state, KEY, order("stat"), NOW).is_empty());
    }

    #[test]
    fn an_order_after_its_study_is_matched_at_once_and_a_raised_one_again() {
        let state = arrived(State::default());
        let events = receive(&state, KEY, order("routine"), NOW);
        assert!(
            matches!(&events[..], [OrderEvent::Received { .. }, OrderEvent::Matched { priority, .. }] if priority == "routine")
        );
        let state = fold(state, &events);
        // Less urgent than before: a resend. More urgent: received and matched again.
        assert!(receive(&state, KEY, order("routine"), NOW).is_empty());
        let raised = receive(&state, KEY, order("stat"), NOW);
        assert!(
            matches!(&raised[..], [OrderEvent::Received { .. }, OrderEvent::Matched { priority, .. }] if priority == "stat")
        );
        let state = fold(state, &raised);
        assert!(receive(&state, KEY, order("urgent"), NOW).is_empty(), "never lowered");
        // Another accession of the same tenant meets no study.
        let other = receive(&state, Uuid::from_u128(0xbad), order("stat"), NOW);
        assert!(matches!(&other[..], [OrderEvent::Received { .. }]));
    }

    #[test]
    fn an_order_whose_study_never_comes_is_let_go_after_its_wait() {
        let lonely = Uuid::from_u128(0x10);
        let state = fold(State::default(), &receive(&State::default(), lonely, order("stat"), NOW));
        assert_eq!(state.orders.waiting.len(), 1);
        let later = UnixMicros(NOW.0 + crate::domain::order::ORDER_WAIT + 1);
        let state = fold(state.clone(), &receive(&state, KEY, order("routine"), later));
        assert!(!state.orders.orders.contains_key(&lonely), "let go");
        assert!(state.orders.orders.contains_key(&KEY) && state.orders.waiting.len() == 1);
        // An order matched is kept with its study.
        let state = arrived(state);
        assert!(state.orders.waiting.is_empty() && state.orders.unmatched.contains(&KEY));
    }
}

mod templates {
    use std::collections::BTreeMap;

    use super::*;
    use crate::domain::template::{Field, Template};

    fn policy() -> Policy {
        let field = |name: &str, values: &[&str], required: bool| Field {
            name: name.into(),
            titles: BTreeMap::new(),
            values: values.iter().map(|v| v.to_string()).collect(),
            required,
        };
        Policy {
            templates: vec![Template {
                name: "ct-head".into(),
                modalities: vec!["CT".into()],
                body_parts: vec!["HEAD".into()],
                titles: [("en".to_string(), "CT Head".to_string())].into(),
                findings: BTreeMap::new(),
                impression: BTreeMap::new(),
                fields: vec![
                    field("haemorrhage", &["absent", "present"], true),
                    field("laterality", &["left", "right"], false),
                ],
            }],
            languages: [("acme-atlantic".to_string(), "en-IE".to_string())].into(),
            ..Policy::default()
        }
    }

    fn draft_with(fields: &[(&str, &str)]) -> Command {
        let fields = fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        match draft("ortiz", "Normal.", 0) {
            Command::SaveDraft { study, reader, findings, impression, base_version, .. } => {
                Command::SaveDraft { study, reader, findings, impression, fields, base_version, key: String::new() }
            }
            other => other,
        }
    }

    fn run_with(state: State, command: &Command) -> Result<(State, Vec<Event>), Error> {
        let events = super::super::report::decide(&state, &policy(), command, NOW)?;
        let state = events.iter().enumerate().fold(state, |s, (n, e)| apply(s, &fact_of(e, n as u64)));
        Ok((state, events))
    }

    #[test]
    fn a_drafts_fields_are_the_templates_with_values_from_its_lists() {
        let state = held("preliminary", "ortiz");
        let field_of = |r: Result<(State, Vec<Event>), Error>| match r {
            Err(Error::Field(f)) => f.field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field_of(run_with(state.clone(), &draft_with(&[("laterality", "up")]))), "fields.laterality");
        assert_eq!(field_of(run_with(state.clone(), &draft_with(&[("mass", "yes")]))), "fields.mass");
        let (state, events) = run_with(state, &draft_with(&[("laterality", "left")])).unwrap();
        match &events[..] {
            [Event::Drafted { template, language, fields, .. }] => {
                assert_eq!((template.as_str(), language.as_str()), ("ct-head", "en-IE"));
                assert_eq!(fields.get("laterality").map(String::as_str), Some("left"));
            }
            other => panic!("{other:?}"),
        }
        // Signed only once the required field is there.
        let e = run_with(state.clone(), &sign("ortiz", "preliminary", 0)).unwrap_err();
        assert_eq!(field_of(Err(e)), "fields.haemorrhage");
        let (state, _) = run_with(state, &draft_with(&[("haemorrhage", "absent"), ("laterality", "left")])).unwrap();
        assert!(run_with(state, &sign("ortiz", "preliminary", 0)).is_ok());
    }

    #[test]
    fn a_study_with_no_template_takes_no_fields() {
        let mut state = held("preliminary", "ortiz");
        state.studies.get_mut(&STUDY).unwrap().facts.modality = "MG".into();
        let e = run_with(state.clone(), &draft_with(&[("laterality", "left")])).unwrap_err();
        assert!(matches!(&e, Error::Field(f) if f.field == "fields.laterality"), "{e:?}");
        let (state, _) = run_with(state, &draft_with(&[])).unwrap();
        assert!(run_with(state, &sign("ortiz", "preliminary", 0)).is_ok());
    }
}

#[test]
fn a_keyed_addendum_retried_is_the_one_added() {
    let state = run(held("preliminary", "ortiz"), &draft("ortiz", "Normal.", 0), NOW).unwrap().0;
    let state = run(state, &sign("ortiz", "preliminary", 0), NOW).unwrap().0;
    let addendum = |text: &str| Command::AddAddendum {
        key: "add-1".into(),
        study: STUDY,
        reader: "ortiz".into(),
        read_type: "preliminary".into(),
        text: text.into(),
    };
    let (state, events) = run(state, &addendum("Compared with the prior: stable."), NOW).unwrap();
    assert_eq!(events.len(), 2, "its text and the amendment: {events:?}");
    let (state, again) = run(state, &addendum("Compared with the prior: stable."), NOW).unwrap();
    assert!(again.is_empty(), "a retry adds nothing: {again:?}");
    assert_eq!(state.studies[&STUDY].report("preliminary").unwrap().amendments.len(), 1);
    assert_eq!(
        decide(&state, &addendum("Something else."), NOW).unwrap_err(),
        Error::KeyReused { key: "add-1".into() }
    );
}

#[test]
fn a_patients_studies_are_kept_by_tenant_and_key_and_survive_a_snapshot() {
    let with_key = |tenant: &str, key: &str| StudyFacts { tenant: tenant.into(), patient_key: key.into(), ..facts() };
    let (first, second, other, unknown) =
        (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3), Uuid::from_u128(4));
    let mut state = State::default();
    for (study, facts) in [
        (first, with_key("acme", "p1")),
        (second, with_key("acme", "p1")),
        // The same key in another tenant is another patient.
        (other, with_key("northwind", "p1")),
        // No Patient ID: no priors.
        (unknown, with_key("acme", "")),
    ] {
        state = apply(state, &Fact::Queued { study, facts, read_type: "final".into() });
    }
    // A second read queued again is the same study.
    state = apply(state, &Fact::Queued { study: first, facts: with_key("acme", "p1"), read_type: "final".into() });
    assert_eq!(state.patients["acme"]["p1"], [first, second].into());
    assert_eq!(state.patients["northwind"]["p1"], [other].into());
    assert_eq!(state.patients["acme"].len(), 1, "{:?}", state.patients);
    // Snapshots are JSON: the index must write and read back.
    let json = serde_json::to_string(&state).unwrap();
    let back: State = serde_json::from_str(&json).unwrap();
    assert_eq!(back.patients, state.patients);
}
