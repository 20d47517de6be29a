//! Things only one region writes, folded where copies of other regions'
//! topics arrive too.
//!
//! A reader's events are written by the region they sit in; every other
//! region folds the replicator's copies of them. A region's log may also
//! hold its own older copies of a foreign reader (registered from
//! configuration in every region before readers were registered only
//! where they sit). Those count until the reader's own region's events
//! arrive; from then on only that region's do. A copy of another region's
//! copy is never taken.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnRegionWins {
    /// Each one's region, as its latest registration taken said.
    regions: BTreeMap<String, String>,
    /// Those whose own region's events were folded.
    heard: BTreeSet<String>,
}

impl OwnRegionWins {
    /// Whether to fold an event about `id` written by `writer` (the
    /// envelope's home region); `registered_in` is the region a
    /// registration says it belongs to (`None` for other events: the one
    /// known is used), `copied` whether the record is another region's copy.
    pub fn takes(&mut self, id: &str, registered_in: Option<&str>, writer: &str, copied: bool) -> bool {
        let sits_in = registered_in.or_else(|| self.regions.get(id).map(String::as_str));
        let take = if sits_in == Some(writer) {
            self.heard.insert(id.to_owned());
            true
        } else {
            !copied && !self.heard.contains(id)
        };
        if let (true, Some(region)) = (take, registered_in) {
            self.regions.insert(id.to_owned(), region.to_owned());
        }
        take
    }

    /// The region `id` belongs to, as the registrations taken say.
    pub fn region(&self, id: &str) -> Option<&str> {
        self.regions.get(id).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_regions_events_win_over_a_local_copy_and_copies_of_copies_never_count() {
        let mut w = OwnRegionWins::default();
        // us-east's old local registration of a reader who sits in in-south.
        assert!(w.takes("dr-rao", Some("in-south"), "us-east", false));
        assert!(w.takes("dr-rao", None, "us-east", false), "local changes count until in-south's arrive");
        // eu-west's copy of its own old registration, copied here: never.
        assert!(!w.takes("dr-rao", Some("in-south"), "eu-west", true));
        // in-south's own events, copied here: taken, and from then on only they are.
        assert!(w.takes("dr-rao", Some("in-south"), "in-south", true));
        assert!(w.takes("dr-rao", None, "in-south", true));
        assert!(!w.takes("dr-rao", None, "us-east", false));
        // A reader who sits here: their region's own topic.
        assert!(w.takes("dr-lee", Some("us-east"), "us-east", false));
        assert!(w.takes("dr-lee", None, "us-east", false));
        assert!(!w.takes("dr-lee", None, "in-south", true));
        assert_eq!(w.region("dr-rao"), Some("in-south"));
    }
}
