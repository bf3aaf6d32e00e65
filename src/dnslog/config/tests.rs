use super::*;

#[derive(Deserialize)]
struct File {
    dnslog: RawDnslogConfig,
}

fn raw(text: &str) -> RawDnslogConfig {
    toml::from_str::<File>(text).unwrap().dnslog
}

fn problems(text: &str) -> Vec<ConfigProblem> {
    match raw(text).validate() {
        Ok(config) => panic!("expected problems, got {config:?}"),
        Err(problems) => problems,
    }
}

fn keys(problems: &[ConfigProblem]) -> Vec<&str> {
    problems.iter().map(|p| p.key.as_str()).collect()
}

#[test]
fn empty_section_uses_defaults() {
    let config = raw("[dnslog]").validate().unwrap();
    assert!(config.sources.is_empty());
    assert!(config.devices.is_empty());
    assert_eq!(config.retention_days, DEFAULT_RETENTION_DAYS);
    assert_eq!(config.max_names_per_day, DEFAULT_MAX_NAMES_PER_DAY);
}

#[test]
fn module_example_is_valid() {
    let example: String = include_str!("../config.rs")
        .lines()
        .skip_while(|line| !line.starts_with("//! ```toml"))
        .skip(1)
        .take_while(|line| !line.starts_with("//! ```"))
        .map(|line| line.trim_start_matches("//!").trim_start_matches(' '))
        .collect::<Vec<_>>()
        .join("\n");
    let config = raw(&example).validate().unwrap();
    assert_eq!(config.sources.len(), 2);
    assert_eq!(config.devices[0].networks.len(), 2);
    assert_eq!(
        config.devices[0].ignore_domains,
        ["icloud.com.", "push.apple.com."]
    );
}

#[test]
fn sources_of_each_kind() {
    let config = raw(r#"
        [dnslog]
        sources = [
            { file = "/var/log/coredns.log", start_at = "beginning" },
            { stdin = true },
            { command = ["kubectl", "logs", "-f"], env = ["KUBECONFIG"], name = "cluster" },
        ]
    "#)
    .validate()
    .unwrap();
    let kinds: Vec<&SourceKind> = config.sources.iter().map(|s| &s.kind).collect();
    assert_eq!(
        kinds,
        [
            &SourceKind::File {
                path: "/var/log/coredns.log".into(),
                start_at: StartAt::Beginning
            },
            &SourceKind::Stdin,
            &SourceKind::Command {
                argv: vec!["kubectl".into(), "logs".into(), "-f".into()],
                env: vec!["KUBECONFIG".into()]
            },
        ]
    );
    let names: Vec<&str> = config.sources.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["file:/var/log/coredns.log", "stdin", "cluster"]);
}

#[test]
fn source_needs_exactly_one_kind() {
    let found = problems(
        r#"
        [dnslog]
        sources = [{ file = "/a", stdin = true }, { stdin = false }, {}]
    "#,
    );
    assert_eq!(
        keys(&found),
        [
            "dnslog.sources[0]",
            "dnslog.sources[1]",
            "dnslog.sources[2]"
        ]
    );
    assert!(found[0].message.contains("exactly one of"));
}

#[test]
fn almagest_variables_never_passed() {
    let found = problems(
        r#"
        [dnslog]
        sources = [{ command = ["kubectl"], env = ["PATH", "ALMAGEST__REDIS__URL", "bad-name"] }]
    "#,
    );
    assert_eq!(
        keys(&found),
        ["dnslog.sources[0].env[1]", "dnslog.sources[0].env[2]"]
    );
    assert!(found[0].message.contains("never passed"));
}

#[test]
fn empty_command_rejected() {
    let found = problems(
        r#"
        [dnslog]
        sources = [{ command = [] }]
    "#,
    );
    assert_eq!(keys(&found), ["dnslog.sources[0].command"]);
}

#[test]
fn duplicate_source_names_and_two_stdins() {
    let found = problems(
        r#"
        [dnslog]
        sources = [{ file = "/a" }, { file = "/a" }, { stdin = true }, { stdin = true, name = "other" }]
    "#,
    );
    assert_eq!(
        keys(&found),
        ["dnslog.sources[1].name", "dnslog.sources[3]"]
    );
}

#[test]
fn bad_start_at_named() {
    let found = problems(
        r#"
        [dnslog]
        sources = [{ file = "/a", start_at = "middle" }, { stdin = true, start_at = "end" }]
    "#,
    );
    assert_eq!(
        keys(&found),
        ["dnslog.sources[0].start_at", "dnslog.sources[1].start_at"]
    );
    assert!(found[0].message.contains("\"middle\""));
}

#[test]
fn device_addresses_of_each_kind() {
    let config = raw(r#"
        [dnslog]
        [[dnslog.devices]]
        name = "phone"
        ip = ["192.168.1.42", "::ffff:192.168.1.43"]
        cidr = "10.8.0.0/24"
        ipv6_prefix = "2001:db8:1:2::/64"
        away_after_secs = 600
        notify_arrivals = false
    "#)
    .validate()
    .unwrap();
    let device = &config.devices[0];
    let networks: Vec<String> = device.networks.iter().map(ToString::to_string).collect();
    assert_eq!(
        networks,
        [
            "192.168.1.42/32",
            "192.168.1.43/32",
            "10.8.0.0/24",
            "2001:db8:1:2::/64"
        ]
    );
    assert_eq!(device.away_after_secs, 600);
    assert!(!device.notify_arrivals);
    assert_eq!(device.owner, None);
}

#[test]
fn device_defaults() {
    let config = raw(r#"
        [dnslog]
        [[dnslog.devices]]
        name = "phone"
        owner = "Sam"
        ip = "192.168.1.42"
    "#)
    .validate()
    .unwrap();
    let device = &config.devices[0];
    assert_eq!(device.away_after_secs, DEFAULT_AWAY_AFTER_SECS);
    assert!(device.notify_arrivals);
    assert_eq!(device.owner.as_deref(), Some("Sam"));
}

#[test]
fn bad_device_values_named_with_index() {
    let found = problems(
        r#"
        [dnslog]
        [[dnslog.devices]]
        name = "a"
        ip = "192.168.1.1"
        [[dnslog.devices]]
        name = "b"
        ip = ["192.168.1.2", "192.168.1.256"]
        [[dnslog.devices]]
        name = "c"
        cidr = "192.168.1.5/24"
        ipv6_prefix = "10.0.0.0/8"
        away_after_secs = 0
    "#,
    );
    assert_eq!(
        keys(&found),
        [
            "dnslog.devices[1].ip[1]",
            "dnslog.devices[2].cidr",
            "dnslog.devices[2].ipv6_prefix",
            "dnslog.devices[2].away_after_secs",
        ]
    );
    assert!(found[0].message.contains("\"192.168.1.256\""));
    assert!(found[1].message.contains("did you mean 192.168.1.0/24"));
    assert!(found[2].message.contains("2001:db8:1:2::/64"));
}

#[test]
fn device_needs_name_and_address() {
    let found = problems(
        r#"
        [dnslog]
        [[dnslog.devices]]
        owner = "Sam"
        [[dnslog.devices]]
        name = "twin"
        ip = "10.0.0.1"
        [[dnslog.devices]]
        name = "twin"
        ip = "10.0.0.2"
    "#,
    );
    assert_eq!(
        keys(&found),
        [
            "dnslog.devices[0].name",
            "dnslog.devices[0]",
            "dnslog.devices[2].name"
        ]
    );
}

#[test]
fn ignore_domains_normalised() {
    let config = raw(r#"
        [dnslog]
        [[dnslog.devices]]
        name = "phone"
        ip = "10.0.0.1"
        ignore_domains = ["iCloud.com", "push.apple.com."]
    "#)
    .validate()
    .unwrap();
    assert_eq!(
        config.devices[0].ignore_domains,
        ["icloud.com.", "push.apple.com."]
    );
}

#[test]
fn bad_ignore_domain_named() {
    let found = problems(
        r#"
        [dnslog]
        [[dnslog.devices]]
        name = "phone"
        ip = "10.0.0.1"
        ignore_domains = ["ok.example", "two..dots", ""]
    "#,
    );
    assert_eq!(
        keys(&found),
        [
            "dnslog.devices[0].ignore_domains[1]",
            "dnslog.devices[0].ignore_domains[2]"
        ]
    );
}

#[test]
fn section_limits_checked() {
    let found = problems("[dnslog]\nretention_days = 0\nmax_names_per_day = 0");
    assert_eq!(
        keys(&found),
        ["dnslog.retention_days", "dnslog.max_names_per_day"]
    );
}

#[test]
fn problem_displays_key_and_message() {
    let problem = ConfigProblem {
        key: "dnslog.devices[2].cidr".into(),
        message: "invalid network".into(),
    };
    assert_eq!(
        problem.to_string(),
        "dnslog.devices[2].cidr: invalid network"
    );
}
