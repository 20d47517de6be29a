//! What the DICOM targets share.

/// libFuzzer's hook aborts on every panic, caught or not. Ingest catches
/// one panic on purpose: dicom-rs's lazy reader panics on an item header
/// with no sequence open, and the length walk refuses that data set
/// (`meridian_ingest::dataset::declared_lengths_fit`). That panic unwinds
/// to ingest's catch; every other one still aborts and is a finding.
pub fn abort_on_panics_ingest_does_not_catch() {
    let abort = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let caught_by_ingest = info.location().is_some_and(|l| {
            l.file().contains("dicom-parser") && l.file().ends_with("lazy_read.rs")
        });
        if !caught_by_ingest {
            abort(info);
        }
    }));
}
