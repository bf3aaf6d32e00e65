use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::dnslog::name;
use crate::dnslog::time::{Timestamp, parse_rfc3339_prefix};
use crate::dnslog::wrapper::unwrap;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/coredns");

fn fixture(name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap();
    text.lines().map(str::to_owned).collect()
}

fn query(line: &str) -> Query<'_> {
    match parse(line) {
        Ok(query) => query,
        Err(kind) => panic!("{line:?} was skipped as {kind}"),
    }
}

fn skip(line: &str) -> SkipKind {
    match parse(line) {
        Ok(query) => panic!("{line:?} parsed as {query:?}"),
        Err(kind) => kind,
    }
}

fn at(text: &str) -> Timestamp {
    parse_rfc3339_prefix(text).unwrap().0
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn common_fixture_classifies_every_line() {
    use SkipKind::*;
    let lines = fixture("common.log");
    let kinds: Vec<Option<SkipKind>> = lines.iter().map(|l| parse(l).err()).collect();
    let mut expected = vec![Some(Banner), Some(Banner), Some(Banner), Some(Reload)];
    expected.extend([None; 16]);
    expected.extend([
        Some(Reload),
        Some(Reload),
        Some(Reload),
        Some(Error),
        Some(Warning),
    ]);
    assert_eq!(kinds, expected);
}

#[test]
fn common_fixture_ipv6_loopback_query() {
    let lines = fixture("common.log");
    let q = query(&lines[4]);
    assert_eq!(q.client, ip("::1"));
    assert_eq!(q.port, Some(50759));
    assert_eq!(q.id, Some(29008));
    assert_eq!(q.qtype, "A");
    assert_eq!(q.qclass, "IN");
    assert_eq!(q.name, "example.org.");
    assert_eq!(q.proto, "udp");
    assert_eq!(q.request_bytes, 41);
    assert!(!q.dnssec_ok);
    assert_eq!(q.bufsize, 4096);
    assert_eq!(q.rcode, Some("NOERROR"));
    assert_eq!(
        q.flags.map(|f| f.to_string()).as_deref(),
        Some("qr,rd,ra,ad")
    );
    assert_eq!(q.response_bytes, Some(68));
    assert_eq!(q.duration, Some(Duration::from_nanos(37_990_251)));
    assert_eq!(q.opcode, None);
    assert_eq!(q.timestamp, None);
}

#[test]
fn common_fixture_https_and_svcb_types() {
    let lines = fixture("common.log");
    assert_eq!(query(&lines[7]).qtype, "HTTPS");
    assert_eq!(query(&lines[8]).qtype, "SVCB");
    assert_eq!(query(&lines[8]).rcode, Some("NXDOMAIN"));
}

#[test]
fn common_fixture_no_reply_dashes() {
    let lines = fixture("common.log");
    let q = query(&lines[14]);
    assert_eq!(q.rcode, None);
    assert_eq!(q.flags, None);
    assert_eq!(q.response_bytes, Some(0));
}

#[test]
fn common_fixture_timeout_without_flags() {
    let lines = fixture("common.log");
    let q = query(&lines[15]);
    assert_eq!(q.rcode, Some("NOERROR"));
    assert_eq!(q.flags, None);
    assert_eq!(q.duration, Some(Duration::from_nanos(5_000_450_902)));
}

#[test]
fn common_fixture_global_ipv6_client() {
    let lines = fixture("common.log");
    let q = query(&lines[16]);
    assert_eq!(q.client, ip("2001:db8:1c0:7d00:85e2:21c4:9b5a:3e11"));
    assert!(q.dnssec_ok);
}

#[test]
fn common_fixture_truncated_flag_and_badcookie() {
    let lines = fixture("common.log");
    assert!(query(&lines[17]).flags.unwrap().contains("tc"));
    assert_eq!(query(&lines[18]).rcode, Some("BADCOOKIE"));
}

#[test]
fn common_fixture_combined_format_opcode() {
    let lines = fixture("common.log");
    let q = query(&lines[19]);
    assert_eq!(q.opcode, Some(0));
    assert_eq!(q.id, Some(4712));
}

#[test]
fn malformed_fixture_classifies_every_line() {
    use SkipKind::*;
    let kinds: Vec<SkipKind> = fixture("malformed.log").iter().map(|l| skip(l)).collect();
    assert_eq!(
        kinds,
        [Truncated, Garbled, Blank, Garbled, Garbled, Garbled, Debug]
    );
}

#[test]
fn wrapped_fixture_parses_every_line() {
    let expected = [
        (
            "10.42.0.17",
            "grafana.monitoring.svc.cluster.local.",
            Some("2026-08-21T09:14:03.118349261Z"),
        ),
        (
            "10.42.0.17",
            "grafana.monitoring.svc.cluster.local.",
            Some("2026-08-21T09:14:03.118349261Z"),
        ),
        ("10.0.0.7", "nas.lan.", Some("2026-08-21T09:14:03.1Z")),
        ("203.0.113.245", "docs.example.ai.", None),
        (
            "10.42.0.18",
            "wiki.home.arpa.",
            Some("2026-08-21T09:14:05.000000001Z"),
        ),
        (
            "10.244.0.6",
            "kubernetes.default.svc.cluster.local.example.net.",
            Some("2020-09-14T19:12:38.340Z"),
        ),
    ];
    let lines = fixture("wrapped.log");
    assert_eq!(lines.len(), expected.len());
    for (line, (client, name, time)) in lines.iter().zip(expected) {
        let unwrapped = unwrap(line);
        let q = query(&unwrapped.body);
        assert_eq!(q.client, ip(client), "{line}");
        assert_eq!(q.name, name, "{line}");
        assert_eq!(unwrapped.timestamp, time.map(at), "{line}");
    }
}

#[test]
fn ipv6_zone_id_is_kept_apart() {
    let q = query(
        r#"[INFO] [fe80::1c2a:3bff:fe4d:5e6f%wlan0]:5353 - 1 "A IN printer.local. udp 30 false 512" NOERROR qr,aa 46 0.0001s"#,
    );
    assert_eq!(q.client, ip("fe80::1c2a:3bff:fe4d:5e6f"));
    assert_eq!(q.zone, Some("wlan0"));
    assert_eq!(q.port, Some(5353));
}

#[test]
fn v4_mapped_client_becomes_ipv4() {
    let q = query(
        r#"[INFO] [::ffff:192.0.2.10]:40000 - 2 "A IN example.org. udp 30 false 512" NOERROR qr,rd,ra 46 0.0001s"#,
    );
    assert_eq!(q.client, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)));
}

#[test]
fn client_address_ending_in_zero() {
    let q = query(
        r#"[INFO] 172.29.17.0:15439 - 50129 "AAAA IN server.cluster.local. tcp 54 false 65535" NXDOMAIN qr,aa,rd 147 0.000046555s"#,
    );
    assert_eq!(q.client, ip("172.29.17.0"));
    assert_eq!(q.proto, "tcp");
}

#[test]
fn presentation_escapes_in_name() {
    let q = query(
        r#"[INFO] 10.0.0.5:5353 - 3 "TXT IN My\ Printer\"s\032Office\059x._ipp._tcp.local. udp 60 false 512" NOERROR qr,aa 80 0.0002s"#,
    );
    assert_eq!(q.name, r#"my printer"s office;x._ipp._tcp.local."#);
}

#[test]
fn escaped_dot_in_label_stays_escaped() {
    let q = query(
        r#"[INFO] 10.0.0.5:5353 - 4 "PTR IN a\.b.example. udp 30 false 512" NOERROR qr 30 0.1s"#,
    );
    assert_eq!(q.name, r"a\.b.example.");
}

#[test]
fn names_compare_case_insensitively() {
    let upper = query(
        r#"[INFO] 10.0.0.5:1 - 5 "A IN WWW.Example.COM. udp 30 false 512" NOERROR qr 30 0.1s"#,
    );
    let lower = query(
        r#"[INFO] 10.0.0.5:1 - 5 "A IN www.example.com. udp 30 false 512" NOERROR qr 30 0.1s"#,
    );
    assert_eq!(upper.name, lower.name);
}

#[test]
fn unknown_type_and_chaos_class() {
    let q = query(
        r#"[INFO] 10.0.0.5:1 - 6 "TYPE65534 CH version.bind. udp 30 false 512" REFUSED qr 30 0.1s"#,
    );
    assert_eq!(q.qtype, "TYPE65534");
    assert_eq!(q.qclass, "CH");
}

#[test]
fn rcode_by_number() {
    let q = query(r#"[INFO] 10.0.0.5:1 - 7 "A IN example.org. udp 30 false 512" 3841 qr 30 0.1s"#);
    assert_eq!(q.rcode, Some("3841"));
}

#[test]
fn rcode_number_out_of_range_is_garbled() {
    assert_eq!(
        skip(r#"[INFO] 10.0.0.5:1 - 7 "A IN example.org. udp 30 false 512" 5000 qr 30 0.1s"#),
        SkipKind::Garbled
    );
}

#[test]
fn empty_flags_field() {
    let q = query(r#"[INFO] 10.0.0.5:1 - 8 "A IN example.org. udp 30 false 512" REFUSED  30 0.1s"#);
    assert_eq!(q.flags, Some(Flags::default()));
    assert_eq!(q.response_bytes, Some(30));
}

#[test]
fn unknown_flag_is_garbled() {
    assert_eq!(
        skip(r#"[INFO] 10.0.0.5:1 - 8 "A IN example.org. udp 30 false 512" NOERROR qr,xx 30 0.1s"#),
        SkipKind::Garbled
    );
}

#[test]
fn whole_second_duration() {
    let q = query(r#"[INFO] 10.0.0.5:1 - 9 "A IN example.org. udp 30 false 512" NOERROR qr 30 5s"#);
    assert_eq!(q.duration, Some(Duration::from_secs(5)));
}

#[test]
fn legacy_format_with_date_and_microseconds() {
    let q = query(
        r#"10.0.0.1:53211 - [24/Jan/2018:10:10:10 +0000] 4242 "A IN example.org. udp 29 false 512" NOERROR qr,rd,ra 68 870.123µs"#,
    );
    assert_eq!(q.timestamp, Some(at("2018-01-24T10:10:10Z")));
    assert_eq!(q.id, Some(4242));
    assert_eq!(q.duration, Some(Duration::from_nanos(870_123)));
}

#[test]
fn legacy_format_with_milliseconds_and_info_level() {
    let q = query(
        r#"[INFO] 172.17.0.1:56942 - [18/Jul/2018:08:47:27 +0200] 10587 "A IN google.com. udp 28 false 512" NOERROR qr,rd,ra 88 12.345ms"#,
    );
    assert_eq!(q.timestamp, Some(at("2018-07-18T06:47:27Z")));
    assert_eq!(q.duration, Some(Duration::from_nanos(12_345_000)));
}

#[test]
fn legacy_greek_mu_and_minutes() {
    let mu = query(
        r#"10.0.0.1:1 - [24/Jan/2018:10:10:10 +0000] 1 "A IN a. udp 29 false 512" NOERROR qr 68 15μs"#,
    );
    assert_eq!(mu.duration, Some(Duration::from_micros(15)));
    let minutes = query(
        r#"10.0.0.1:1 - [24/Jan/2018:10:10:10 +0000] 1 "A IN a. udp 29 false 512" NOERROR qr 68 1m2.5s"#,
    );
    assert_eq!(minutes.duration, Some(Duration::from_millis(62_500)));
}

#[test]
fn oldest_format_without_id_or_port() {
    let q = query(
        r#"10.244.0.1 - [28/Jun/2017:14:14:53 +0000] "A IN kubernetes.default.svc.cluster.local. udp 54 false 512" NOERROR qr,aa,rd,ra 106 159.283µs"#,
    );
    assert_eq!(q.client, ip("10.244.0.1"));
    assert_eq!(q.port, None);
    assert_eq!(q.id, None);
    assert_eq!(q.name, "kubernetes.default.svc.cluster.local.");
}

#[test]
fn oldest_format_bare_ipv6() {
    let q = query(
        r#"::1 - [28/Jun/2017:14:14:53 +0000] "A IN example.org. udp 54 false 512" NOERROR qr,aa 106 159ns"#,
    );
    assert_eq!(q.client, IpAddr::V6(Ipv6Addr::LOCALHOST));
    assert_eq!(q.duration, Some(Duration::from_nanos(159)));
}

#[test]
fn banner_variants() {
    for line in [
        ".:53",
        "example.org.:53",
        "dns://.:53",
        "tls://.:853",
        "https://example.org.:443",
        "CoreDNS-1.11.3",
        "linux/amd64, go1.22.5, 1a2b3c4",
        "[INFO] CoreDNS-1.2.2",
        "[INFO] linux/amd64, go1.11, 756749c",
    ] {
        assert_eq!(skip(line), SkipKind::Banner, "{line}");
    }
}

#[test]
fn reload_variants() {
    for line in [
        "[INFO] Reloading",
        "[INFO] Reloading complete",
        "[INFO] plugin/reload: Running configuration MD5 = 24e6c59e83ce706f07bcc82c31b1ea1c",
    ] {
        assert_eq!(skip(line), SkipKind::Reload, "{line}");
    }
}

#[test]
fn other_levels_and_info() {
    assert_eq!(
        skip("[INFO] SIGTERM: Shutting down servers then terminating"),
        SkipKind::Info
    );
    assert_eq!(
        skip("[INFO] plugin/health: Going into lameduck mode for 5s"),
        SkipKind::Info
    );
    assert_eq!(
        skip(r#"[INFO] plugin/ready: Still waiting on: "kubernetes""#),
        SkipKind::Info
    );
    assert_eq!(
        skip("[FATAL] plugin/loop: Loop (127.0.0.1:55953 -> :53) detected"),
        SkipKind::Fatal
    );
    assert_eq!(skip("[WARN] something"), SkipKind::Warning);
}

#[test]
fn panic_and_stack_trace() {
    for line in [
        "panic: runtime error: invalid memory address or nil pointer dereference",
        "[signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x1c0f5a8]",
        "goroutine 1127 [running]:",
        "github.com/coredns/coredns/plugin/forward.(*Forward).ServeDNS(0xc000452000, {0x2a1c1d0, 0xc0009a2f00}, {0x2a2a5f8, 0xc000a04040}, 0xc0009ca000)",
        "\t/go/src/github.com/coredns/coredns/plugin/forward/forward.go:96 +0x5a8",
        "created by github.com/miekg/dns.(*Server).serveUDP in goroutine 51",
        "main.main()",
        "fatal error: concurrent map writes",
        "exit status 2",
    ] {
        assert_eq!(skip(line), SkipKind::Panic, "{line}");
    }
}

#[test]
fn klog_lines_by_severity() {
    let line = "E0821 09:14:03.118349       1 reflector.go:138] pkg/mod/k8s.io/client-go: Failed to watch *v1.Endpoints";
    assert_eq!(skip(line), SkipKind::Error);
    let line = "W0821 09:14:03.118349       1 warnings.go:70] v1 Endpoints is deprecated";
    assert_eq!(skip(line), SkipKind::Warning);
}

#[test]
fn truncated_inside_fields() {
    for line in [
        "[INFO] 192.168.",
        "[INFO] [2001:db8::",
        "[INFO] [fe80::1%wl",
        "[INFO] 192.168.1.42:61022 -",
        "[INFO] 192.168.1.42:61022 - 47",
        "[INFO] 10.0.0.1:1 - [24/Jan/2018:10:1",
        r#"[INFO] 10.0.0.1:1 - 7 "A IN exa\0"#,
        r#"[INFO] 10.0.0.1:1 - 7 "A IN example.org. udp 30 false 512" NOERROR qr 30"#,
        r#"[INFO] 10.0.0.1:1 - 7 "A IN example.org. udp 30 false 512" NOERROR qr 30 0.00"#,
        r#"[INFO] 10.0.0.1:1 - 7 "A IN example.org. udp 30 false 512" NOERROR qr 30 0.1s ""#,
    ] {
        assert_eq!(skip(line), SkipKind::Truncated, "{line}");
    }
}

#[test]
fn garbled_fields() {
    for line in [
        r#"[INFO] 10.0.0.1:99999 - 7 "A IN x. udp 30 false 512" NOERROR qr 30 0.1s"#,
        r#"[INFO] 10.0.0.1:1 - 70000 "A IN x. udp 30 false 512" NOERROR qr 30 0.1s"#,
        r#"[INFO] 10.0.0.1:1 - 7 "a IN x. udp 30 false 512" NOERROR qr 30 0.1s"#,
        r#"[INFO] 10.0.0.1:1 - 7 "A IN x. udp 30 maybe 512" NOERROR qr 30 0.1s"#,
        r#"[INFO] 10.0.0.1:1 - 7 "A IN x. udp 30 false 512 9" NOERROR qr 30 0.1s"#,
        r#"[INFO] 10.0.0.1:1 - 7 "A IN x\300. udp 30 false 512" NOERROR qr 30 0.1s"#,
        r#"[INFO] 10.0.0.1:1 - 7 "A IN x. udp 30 false 512" NOERROR qr 30 0.1s "99""#,
        r#"[INFO] 10.0.0.1:1 - 7 "A IN x. udp 30 false 512" NOERROR qr 30 0.1s trailing"#,
        r#"[INFO] 10.0.0.1:1 - [32/Jan/2018:10:10:10 +0000] 7 "A IN x. udp 30 false 512" NOERROR qr 30 1ms"#,
        r#"Gateway: 10.0.0.1:1 - 7 "A IN x. udp 30 false 512" NOERROR qr 30 0.1s"#,
    ] {
        assert_eq!(skip(line), SkipKind::Garbled, "{line}");
    }
}

#[test]
fn skip_counts_by_kind() {
    let mut counts = SkipCounts::default();
    counts.add(SkipKind::Banner);
    counts.add(SkipKind::Banner);
    counts.add(SkipKind::Garbled);
    assert_eq!(counts.get(SkipKind::Banner), 2);
    assert_eq!(counts.total(), 3);
    assert_eq!(
        counts.iter().collect::<Vec<_>>(),
        [(SkipKind::Banner, 2), (SkipKind::Garbled, 1)]
    );
}

#[test]
fn go_duration_forms() {
    let cases = [
        ("0s", 0),
        ("1.5s", 1_500_000_000),
        ("2h", 7_200_000_000_000),
        ("1h2m3.004005006s", 3_723_004_005_006),
        ("750us", 750_000),
        ("0.000000001s", 1),
        ("0.0000000019s", 1),
    ];
    for (text, nanos) in cases {
        assert_eq!(
            parse_duration(text),
            Some(Duration::from_nanos(nanos)),
            "{text}"
        );
    }
    for text in [
        "",
        "s",
        "1",
        "1x",
        ".s",
        "1.2.3s",
        "-1s",
        "99999999999999999999h",
    ] {
        assert_eq!(parse_duration(text), None, "{text}");
    }
}

// Property tests: no input panics, every query survives printing and parsing again, and
// every cut-off query line is counted as truncated.

/// Canonical names of labels made of arbitrary bytes, written in presentation format and
/// decoded.
fn canonical_name() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 1..10), 0..4).prop_map(|labels| {
        let mut presented = name::present(&labels);
        if presented.is_empty() {
            presented.push('.');
        }
        name::decode(&presented).unwrap().into_owned()
    })
}

fn client_address() -> impl Strategy<Value = (IpAddr, Option<String>)> {
    prop_oneof![
        any::<Ipv4Addr>().prop_map(|v4| (IpAddr::V4(v4), None)),
        (any::<Ipv6Addr>(), prop::option::of("[a-z][a-z0-9]{0,7}")).prop_map(|(v6, zone)| {
            match IpAddr::V6(v6).to_canonical() {
                v4 @ IpAddr::V4(_) => (v4, None),
                v6 => (v6, zone),
            }
        }),
    ]
}

#[derive(Clone, Debug)]
struct OwnedQuery {
    client: (IpAddr, Option<String>),
    port: Option<u16>,
    id: Option<u16>,
    qtype: String,
    qclass: String,
    name: String,
    proto: String,
    request_bytes: u32,
    dnssec_ok: bool,
    bufsize: u32,
    rcode: Option<String>,
    flags: Option<u8>,
    response_bytes: Option<u32>,
    duration_nanos: Option<u64>,
    opcode: Option<u8>,
    timestamp_secs: Option<i64>,
}

impl OwnedQuery {
    fn as_query(&self) -> Query<'_> {
        Query {
            client: self.client.0,
            zone: self.client.1.as_deref(),
            port: self.port,
            id: self.id,
            qtype: &self.qtype,
            qclass: &self.qclass,
            name: self.name.as_str().into(),
            proto: &self.proto,
            request_bytes: self.request_bytes,
            dnssec_ok: self.dnssec_ok,
            bufsize: self.bufsize,
            rcode: self.rcode.as_deref(),
            flags: self.flags.map(Flags::from_bits),
            response_bytes: self.response_bytes,
            duration: self.duration_nanos.map(Duration::from_nanos),
            opcode: self.opcode,
            timestamp: self.timestamp_secs.map(Timestamp::from_unix_secs),
        }
    }
}

prop_compose! {
    fn any_query()(
        client in client_address(),
        port in prop::option::of(any::<u16>()),
        id in prop::option::of(any::<u16>()),
        qtype in "[A-Z][A-Z0-9-]{0,15}",
        qclass in "[A-Z][A-Z0-9-]{0,15}",
        name in canonical_name(),
        proto in "[a-z]{1,8}",
        request_bytes in any::<u32>(),
        dnssec_ok in any::<bool>(),
        bufsize in any::<u32>(),
        rcode in prop::option::of(prop_oneof!["[A-Z][A-Z0-9]{0,11}", (0u16..4096).prop_map(|n| n.to_string())]),
        flags in prop::option::of(any::<u8>()),
        response_bytes in prop::option::of(any::<u32>()),
        duration_nanos in prop::option::of(0u64..100_000_000_000_000),
        opcode in prop::option::of(0u8..16),
        // 1970 to 2200, whole seconds as the bracketed date has them.
        timestamp_secs in prop::option::of(0i64..7_258_118_400),
    ) -> OwnedQuery {
        OwnedQuery {
            client, port, id, qtype, qclass, name, proto, request_bytes, dnssec_ok, bufsize,
            rcode, flags, response_bytes, duration_nanos, opcode, timestamp_secs,
        }
    }
}

proptest! {
    #[test]
    fn parse_never_panics(line in "\\PC{0,200}") {
        let _ = parse(&line);
    }

    #[test]
    fn parse_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let line = String::from_utf8_lossy(&bytes);
        let _ = parse(&unwrap(&line).body);
    }

    #[test]
    fn query_round_trips(owned in any_query()) {
        let original = owned.as_query();
        let line = original.to_string();
        let parsed = parse(&line);
        prop_assert_eq!(parsed, Ok(original), "{}", line);
    }

    #[test]
    fn mutated_query_never_panics(owned in any_query(), position in any::<prop::sample::Index>(), insert in "\\PC{0,4}", cut in any::<bool>()) {
        let mut line = owned.as_query().to_string();
        let mut at = position.index(line.len() + 1);
        while !line.is_char_boundary(at) {
            at -= 1;
        }
        if cut {
            line.truncate(at);
        } else {
            line.insert_str(at, &insert);
        }
        let _ = parse(&line);
    }

    #[test]
    fn cut_query_line_is_truncated(owned in any_query(), position in any::<prop::sample::Index>()) {
        // A Go duration cut inside its unit (`1.5ms` to `1.5m`) is a valid, different
        // duration, so only the seconds form CoreDNS prints since 1.2.6 has this property.
        let line = owned.as_query().to_string();
        let body_start = "[INFO] ".len();
        let mut at = body_start + 1 + position.index(line.len() - body_start - 1);
        while !line.is_char_boundary(at) {
            at -= 1;
        }
        let cut = &line[..at];
        let without_opcode = owned.opcode.map(|_| line.rfind(" \"").unwrap());
        if cut.trim_end().len() < line.len() && Some(cut.trim_end().len()) != without_opcode {
            prop_assert_eq!(parse(cut).err(), Some(SkipKind::Truncated), "{}", cut);
        }
    }
}
