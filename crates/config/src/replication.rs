//! Which regions' operational events cross to which, and why: a fact of
//! the configuration (contracts, their reading groups' regions, their
//! de-identification destinations), read by the replicator that copies
//! them and by the services that fold the copies.

use std::collections::BTreeMap;

use crate::Platform;

/// One direction events cross in, with the configuration that needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub source: String,
    pub destination: String,
    /// Why, by file: "contracts/acme-atlantic.toml: group lotus-teleradiology reads from in-south".
    pub because: Vec<String>,
}

/// Every direction the configuration needs, in name order:
/// - a tenant homed in S whose contract names a reading group with a
///   reader in D: S → D (the studies for D's readers' worklists) and
///   D → S (the readers' own events, which only D writes, for S's routing);
/// - a contract's de-identification destination D of a tenant homed in S:
///   S → D (DerivativeCreated and ObjectPurged, for D to serve and purge).
pub fn routes(platform: &Platform) -> Vec<Route> {
    let mut needed: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut need = |source: &str, destination: &str, why: String| {
        if source != destination {
            let reasons = needed.entry((source.to_owned(), destination.to_owned())).or_default();
            if !reasons.contains(&why) {
                reasons.push(why);
            }
        }
    };
    for (name, contract) in &platform.contracts {
        let Some(tenant) = platform.tenants.get(&contract.tenant) else { continue };
        for home in &tenant.home_regions {
            for group in contract.reading_groups.iter().filter_map(|g| platform.groups.get(g)) {
                for reader in &group.readers {
                    let reads = format!("contracts/{name}.toml: group {} reads from {}", group.name, reader.region);
                    need(home, &reader.region, reads.clone());
                    need(&reader.region, home, format!("{reads} (its readers' events)"));
                }
            }
            for destination in &contract.deidentification_destinations {
                let why = format!("contracts/{name}.toml: de-identified derivatives go to {destination}");
                need(home, destination, why);
            }
        }
    }
    needed.into_iter().map(|((source, destination), because)| Route { source, destination, because }).collect()
}

/// The regions whose operational topics are copied into `region`'s log.
pub fn sources_into(platform: &Platform, region: &str) -> Vec<String> {
    routes(platform).into_iter().filter(|r| r.destination == region).map(|r| r.source).collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn dev() -> Platform {
        Platform::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/dev")).unwrap()
    }

    fn pairs(routes: &[Route]) -> Vec<(&str, &str)> {
        routes.iter().map(|r| (r.source.as_str(), r.destination.as_str())).collect()
    }

    #[test]
    fn the_dev_example_reaches_every_region_from_every_other_and_says_why() {
        let routes = routes(&dev());
        assert_eq!(
            pairs(&routes),
            [
                ("eu-west", "in-south"),
                ("eu-west", "us-east"),
                ("in-south", "eu-west"),
                ("in-south", "us-east"),
                ("us-east", "eu-west"),
                ("us-east", "in-south"),
            ]
        );
        let to_in_south = &routes[0].because;
        assert!(
            to_in_south
                .contains(&"contracts/northwind-lotus.toml: group lotus-teleradiology reads from in-south".into()),
            "{to_in_south:?}"
        );
        assert!(
            to_in_south.contains(&"contracts/northwind-lotus.toml: de-identified derivatives go to in-south".into()),
            "{to_in_south:?}"
        );
        let back = &routes[2].because;
        assert!(back.iter().all(|b| b.ends_with("(its readers' events)")), "{back:?}");
    }

    #[test]
    fn a_tenant_read_at_home_crosses_nowhere() {
        let mut platform = dev();
        platform.contracts.retain(|name, _| name == "northwind-lotus");
        let contract = platform.contracts.get_mut("northwind-lotus").unwrap();
        contract.deidentification_destinations.clear();
        contract.reading_groups = vec!["lotus-teleradiology".into()];
        assert_eq!(pairs(&routes(&platform)), [("eu-west", "in-south"), ("in-south", "eu-west")]);
        platform
            .groups
            .get_mut("lotus-teleradiology")
            .unwrap()
            .readers
            .iter_mut()
            .for_each(|r| r.region = "eu-west".into());
        assert!(routes(&platform).is_empty());
    }

    #[test]
    fn a_region_receives_from_the_regions_routed_to_it() {
        assert_eq!(sources_into(&dev(), "us-east"), ["eu-west", "in-south"]);
    }
}
