//! The viewer: OHIF (the `@ohif/app` npm package's built `dist/`),
//! served by the room from the same origin under `/room/viewer/`, its
//! DICOMweb data sources pointed at the room's own proxy,
//! `/room/dicomweb/<region>/…`, which calls that region's DICOMweb with
//! the session's token. So every image request rides on the reader's
//! session and is authorised and audited (PhiAccessed, as the reader) by
//! the region that holds the images, as any DICOMweb request is.
//!
//! OHIF is not in the repository: `scripts/install-viewer` puts its
//! `dist/` into a cache, moved under `/room/viewer/` (its index's links and
//! webpack's public path), and the room is told where it is.

use std::path::{Component, Path, PathBuf};

/// The pinned OHIF release `scripts/install-viewer` installs.
pub const OHIF_VERSION: &str = "3.13.2";

/// Where the viewer is served from.
pub const BASE: &str = "/room/viewer";

/// OHIF's configuration: one DICOMweb data source per region, named by the
/// region, each through the room's proxy. A study opens at
/// `/room/viewer/viewer/<region>?StudyInstanceUIDs=<uid>`.
pub fn app_config(regions: &[&str]) -> String {
    let sources: Vec<String> = regions
        .iter()
        .map(|region| {
            let root = format!("/room/dicomweb/{region}");
            format!(
                r#"{{"namespace":"@ohif/extension-default.dataSourcesModule.dicomweb","sourceName":{name},"configuration":{{"friendlyName":{friendly},"name":{name},"wadoUriRoot":{root},"qidoRoot":{root},"wadoRoot":{root},"qidoSupportsIncludeField":false,"imageRendering":"wadors","thumbnailRendering":"wadors","enableStudyLazyLoad":true,"supportsFuzzyMatching":false,"supportsWildcard":false,"staticWado":false,"singlepart":"bulkdata,video","omitQuotationForMultipartRequest":true,"bulkDataURI":{{"enabled":true}}}}}}"#,
                name = json_string(region),
                friendly = json_string(&format!("Meridian {region}")),
                root = json_string(&root),
            )
        })
        .collect();
    let default = regions.first().map(|r| format!(",\"defaultDataSourceName\":{}", json_string(r))).unwrap_or_default();
    format!(
        "// Written by Meridian's reading room: OHIF's data sources are the room's DICOMweb proxy.\n\
         window.config = {{\"routerBasename\":\"{BASE}\",\"showStudyList\":false,\"showWarningMessageForCrossOrigin\":false,\
         \"showCPUFallbackMessage\":true,\"strictZSpacingForVolumeViewport\":true,\"extensions\":[],\"modes\":[],\
         \"investigationalUseDialog\":{{\"option\":\"never\"}},\"dataSources\":[{}]{default}}};\n",
        sources.join(",")
    )
}

pub fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '<' => out.push_str("\\u003c"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The file under `dist` a request path names, if it names one inside it.
pub fn file_in(dist: &Path, path: &str) -> Option<PathBuf> {
    let relative = Path::new(path.trim_start_matches('/'));
    if relative.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    let file = dist.join(relative);
    file.is_file().then_some(file)
}

/// The content type by extension.
pub fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or_default() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "wasm" => "application/wasm",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "ttf" => "font/ttf",
        "xml" => "application/xml",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_inside_dist_are_served() {
        let dist = tempfile_dir();
        std::fs::write(dist.join("app.js"), "x").unwrap();
        assert_eq!(file_in(&dist, "/app.js"), Some(dist.join("app.js")));
        assert_eq!(file_in(&dist, "/../etc/passwd"), None);
        assert_eq!(file_in(&dist, "/missing.js"), None);
        std::fs::remove_dir_all(&dist).unwrap();
    }

    #[test]
    fn each_region_is_a_data_source_through_the_rooms_proxy() {
        let config = app_config(&["us-east", "in-south"]);
        assert!(
            config.contains(r#""sourceName":"us-east""#) && config.contains(r#""qidoRoot":"/room/dicomweb/in-south""#)
        );
        assert!(config.contains(r#""routerBasename":"/room/viewer""#), "{config}");
        assert!(config.contains(r#""defaultDataSourceName":"us-east""#), "{config}");
        assert_eq!(json_string("a\"</script>"), r#""a\"\u003c/script>""#);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("meridian-viewer-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
