//! Feeds arbitrary input to the query log parser, line by line through the wrapper
//! assembler, and checks that every parsed query survives printing and parsing again.

#![no_main]

use almagest::dnslog::parse::parse;
use almagest::dnslog::wrapper::Assembler;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut assembler = Assembler::new();
    for raw in text.split('\n') {
        if let Some(Ok(line)) = assembler.push(raw) {
            check_line(&line.text);
        }
    }
    for line in assembler.finish().into_iter().flatten() {
        check_line(&line.text);
    }
});

fn check_line(text: &str) {
    let Ok(query) = parse(text) else {
        return;
    };
    let printed = query.to_string();
    assert_eq!(parse(&printed).as_ref(), Ok(&query), "printed as {printed:?}");
}
