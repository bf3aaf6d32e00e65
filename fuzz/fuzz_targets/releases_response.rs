//! Decodes arbitrary bytes as a page of a GitHub-compatible releases list, then picks a
//! build candidate from what decoded, with and without pre-releases.

#![no_main]

use almagest::builder::releases::parse_page;
use almagest::builder::select::{Filter, select_candidate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(page) = parse_page(data) else {
        return;
    };
    for include_prereleases in [false, true] {
        let filter = Filter {
            include_prereleases,
            ..Filter::default()
        };
        let _ = select_candidate(&page.releases, &filter);
    }
});
