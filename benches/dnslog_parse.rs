//! Throughput of the CoreDNS query log parser alone, on a generated log.
//!
//! ```text
//! cargo bench --bench dnslog_parse -- generate target/bench/dnslog.log 1000000
//! cargo bench --bench dnslog_parse -- parse target/bench/dnslog.log
//! ```
//!
//! `bench/dnslog-parse.sh` runs both next to `wc -l` and `grep -c INFO` on the same file.
//! `parse` reads the file line by line as the file source does, removes wrappers, parses
//! each line, and prints lines per second and its peak resident memory.

use std::fs::File;
use std::hint::black_box;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::time::Instant;

use almagest::dnslog::parse::{SkipCounts, parse};
use almagest::dnslog::wrapper::unwrap;

fn main() -> io::Result<()> {
    // `cargo bench` appends `--bench`; everything else is ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["generate", path] => generate(path, 1_000_000),
        ["generate", path, lines] => generate(path, lines.parse().map_err(io::Error::other)?),
        ["parse", path] => parse_file(path),
        // `cargo bench` without arguments (as in a whole-suite run) measures a small log.
        [] => {
            let path = std::env::temp_dir().join("almagest-dnslog-bench.log");
            let path = path.to_str().ok_or_else(|| io::Error::other("temp path"))?;
            generate(path, 100_000)?;
            parse_file(path)
        }
        _ => Err(io::Error::other(
            "usage: dnslog_parse generate PATH [LINES] | parse PATH",
        )),
    }
}

fn parse_file(path: &str) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(256 * 1024, File::open(path)?);
    let mut line = String::new();
    let mut queries = 0u64;
    let mut skipped = SkipCounts::default();
    let mut bytes = 0u64;
    let started = Instant::now();
    loop {
        line.clear();
        let read = reader.read_line(&mut line)?;
        if read == 0 {
            break;
        }
        bytes += read as u64;
        let unwrapped = unwrap(&line);
        match parse(&unwrapped.body) {
            Ok(query) => {
                black_box(&query);
                queries += 1;
            }
            Err(kind) => skipped.add(kind),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let lines = queries + skipped.total();
    println!(
        "parsed {lines} lines ({queries} queries, {} skipped) in {elapsed:.3} s: {:.0} lines/s, {:.0} MB/s",
        skipped.total(),
        lines as f64 / elapsed,
        bytes as f64 / elapsed / 1e6,
    );
    for (kind, count) in skipped.iter() {
        println!("  skipped {kind}: {count}");
    }
    println!("peak RSS: {} KiB", peak_rss_kib().unwrap_or(0));
    Ok(())
}

/// Returns `VmHWM` from `/proc/self/status`: the peak resident set size.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A xorshift generator: deterministic, so every run measures the same file.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A number below `n`, small ones far more often, as name popularity is.
    fn skewed(&mut self, n: u64) -> u64 {
        let x = self.below(1 << 20) as f64 / f64::from(1 << 20);
        ((x * x * x) * n as f64) as u64
    }
}

/// Writes a query log shaped like a household's: 25 clients, a few thousand names, mostly
/// A and AAAA, some NXDOMAIN, and about 3% lines that are not queries.
fn generate(path: &str, lines: u64) -> io::Result<()> {
    if let Some(dir) = std::path::Path::new(path).parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    let clients: Vec<String> = (0..20)
        .map(|i| format!("192.168.1.{}", 10 + i))
        .chain((0..5).map(|i| format!("[2001:db8:1:2:{:x}::{:x}]", 0xa000 + i, i + 1)))
        .collect();
    let zones = [
        "example.com",
        "example.net",
        "cdn.example.org",
        "home.arpa",
        "example.io",
    ];
    for _ in 0..lines {
        let roll = random.below(1000);
        if roll < 30 {
            write_other_line(&mut out, &mut random)?;
            continue;
        }
        let client = &clients[random.below(clients.len() as u64) as usize];
        let name_id = random.skewed(3000);
        let zone = zones[(name_id % zones.len() as u64) as usize];
        let name = match roll {
            30..=31 => format!("My\\ Printer\\032{name_id}._ipp._tcp.local."),
            32..=40 => format!("WWW{name_id}.{zone}."),
            _ => format!("host{name_id}.{zone}."),
        };
        let qtype = match random.below(100) {
            0..=44 => "A",
            45..=84 => "AAAA",
            85..=94 => "HTTPS",
            95..=97 => "PTR",
            98 => "TXT",
            _ => "TYPE65534",
        };
        let (rcode, flags) = match random.below(100) {
            0..=84 => ("NOERROR", "qr,rd,ra"),
            85..=96 => ("NXDOMAIN", "qr,aa,rd"),
            97..=98 => ("SERVFAIL", "qr,rd"),
            _ => ("-", "-"),
        };
        let port = 1024 + random.below(64_000);
        let id = random.below(65_536);
        let duration = random.below(50_000_000);
        write!(
            out,
            "[INFO] {client}:{port} - {id} \"{qtype} IN {name} udp {} false 1232\" {rcode} {flags} {} 0.{duration:09}s",
            30 + name.len(),
            60 + random.below(200),
        )?;
        if roll >= 990 {
            out.write_all(b" \"0\"")?;
        }
        out.write_all(b"\n")?;
    }
    out.flush()
}

fn write_other_line(out: &mut impl Write, random: &mut Random) -> io::Result<()> {
    let line = match random.below(6) {
        0 => "[INFO] Reloading",
        1 => "[INFO] plugin/reload: Running configuration SHA512 = 5d1f0c3e9a7b",
        2 => {
            "[ERROR] plugin/errors: 2 example.org. A: read udp 10.244.0.5:41219->192.0.2.53:53: i/o timeout"
        }
        3 => "[WARNING] 3 errors like '^read udp .* i/o timeout$' occurred in last 30s",
        4 => "CoreDNS-1.11.3",
        _ => "[INFO] 192.168.1.42:61022 - 4711 \"A IN www.exa",
    };
    writeln!(out, "{line}")
}
