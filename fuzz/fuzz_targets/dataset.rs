//! A received Part-10 file through ingest's checks: the File Meta
//! Information read for the instance it names, the data set checked as a
//! C-STORE's and a STOW-RS part's are, from the file ingest would store,
//! and a refused one's study looked up as the refusal does. Whatever the bytes, an answer: never a panic.

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use meridian_ingest::{dataset, stow};

fuzz_target!(init: common::abort_on_panics_ingest_does_not_catch(), |file: &[u8]| {
    let Ok(instance) = stow::instance_of(file) else { return };
    match dataset::read(&instance) {
        // What was accepted names the instance the command named.
        Ok(facts) => {
            assert_eq!(facts.sop_uid, instance.sop_instance);
            assert!(dataset::valid_uid(&facts.study_uid));
        }
        // A refusal looks for the study to file it under: that read must
        // cost no more than the check did (the run's memory limit says so).
        Err(_) => drop(dataset::study_of(&instance)),
    }
});
