//! The builder's releases client and build steps against local fakes of the GitHub and
//! Kubernetes APIs, with real files, archives and commands.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use almagest::builder::build::{self, BuildContext, BuildFailure, Step};
use almagest::builder::config::{BuilderConfig, TargetConfig};
use almagest::builder::kube::RESTARTED_AT;
use almagest::builder::poll::{PollOutcome, Poller};
use almagest::builder::releases::{Listing, Release, ReleasesClient, ReleasesError, http_client};
use almagest::builder::select::{Filter, select_candidate};
use almagest::builder::state::{Decision, TargetState, decide};

use crate::support::fake_github::{FakeGithub, FakeRelease};
use crate::support::fake_kube::FakeKube;
use crate::support::parse_config;

// ----- helpers -----

/// Entries of a crafted tarball. Names and link targets are written into the header as they
/// are, so hostile archives can be built.
pub(super) enum Entry<'a> {
    File(&'a str, &'a [u8]),
    Executable(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
}

pub(super) fn tar_gz(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        let (name, data, kind, mode, link): (&str, &[u8], _, u32, Option<&str>) = match entry {
            Entry::File(name, data) => (name, data, tar::EntryType::Regular, 0o644, None),
            Entry::Executable(name, data) => (name, data, tar::EntryType::Regular, 0o755, None),
            Entry::Symlink(name, target) => {
                (name, &[], tar::EntryType::Symlink, 0o777, Some(target))
            }
        };
        let gnu = header.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(link) = link {
            gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    let tar = builder.into_inner().unwrap();
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(&tar).unwrap();
    encoder.finish().unwrap()
}

pub(crate) fn site(version: &str) -> Vec<u8> {
    let page = format!("<h1>{version}</h1>");
    tar_gz(&[
        Entry::File("./index.html", page.as_bytes()),
        Entry::File("./docs/guide.html", b"guide"),
        Entry::Symlink("./start.html", "index.html"),
        Entry::Executable("./bin/reindex", b"#!/bin/sh\n"),
    ])
}

/// Publishes release `tag`, dated midnight UTC of `date`, with the asset `site-<tag>.tar.gz`.
pub(crate) fn publish_site_release(github: &FakeGithub, tag: &str, date: &str) {
    let asset = format!("site-{tag}.tar.gz");
    github.publish(FakeRelease::new(tag, &format!("{date}T00:00:00Z")).asset(&asset, site(tag)));
}

/// A `[[builder.targets]]` entry `wiki` that builds `site-*.tar.gz` releases of `github`
/// into `volume`, polling every second.
pub(crate) fn volume_target_section(github: &FakeGithub, volume: &std::path::Path) -> String {
    format!(
        "[[builder.targets]]\nname = \"wiki\"\nrepo = \"acme/wiki\"\napi_base = \"{}\"\n\
         asset_pattern = \"site-*.tar.gz\"\nvolume = {:?}\npoll_interval_secs = 1\n",
        github.api_base(),
        volume.display().to_string()
    )
}

struct Setup {
    github: FakeGithub,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn new() -> Self {
        Setup {
            github: FakeGithub::start().await,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn volume(&self) -> PathBuf {
        self.dir.path().join("volume")
    }

    /// Builds a target with a volume and the asset pattern `site-*.tar.gz`, plus the TOML keys
    /// in `extra`.
    fn target(&self, extra: &str) -> TargetConfig {
        self.target_for("site-*.tar.gz", extra)
    }

    fn target_for(&self, asset_pattern: &str, extra: &str) -> TargetConfig {
        fs::create_dir_all(self.volume()).unwrap();
        let toml_text = format!(
            "[[targets]]\nname = \"wiki\"\nrepo = \"acme/wiki\"\napi_base = \"{}\"\n\
             asset_pattern = \"{asset_pattern}\"\nvolume = \"{}\"\n{extra}",
            self.github.api_base(),
            self.volume().display()
        );
        parse_target(&toml_text)
    }

    fn client(&self) -> ReleasesClient {
        let target = self.target("");
        ReleasesClient::new(target.api_base, target.repo, None).unwrap()
    }

    /// Returns the newest release the fake lists for `target`.
    async fn newest(&self, target: &TargetConfig) -> Release {
        let releases = list_all(&mut self.client()).await;
        let filter = Filter::default();
        let found = select_candidate(&releases, &filter).cloned();
        found.unwrap_or_else(|| panic!("no candidate in {releases:?} for {}", target.name))
    }

    fn current(&self) -> Option<PathBuf> {
        fs::read_link(self.volume().join("current")).ok()
    }
}

/// Loads the builder section of a config whose builder tables are written without the
/// `builder.` prefix.
fn parse_builder(toml_text: &str) -> BuilderConfig {
    let text = format!(
        "[builder]\n{}",
        toml_text
            .replace("[[targets]]", "[[builder.targets]]")
            .replace("[kubernetes]", "[builder.kubernetes]")
    );
    parse_config(&text).builder.unwrap()
}

fn parse_target(toml_text: &str) -> TargetConfig {
    parse_builder(toml_text).targets.remove(0)
}

/// A build context whose Kubernetes API is a closed port: tests that restart a Deployment
/// start a fake.
fn context() -> BuildContext {
    let kubernetes = parse_builder("[kubernetes]\napi_base = \"http://127.0.0.1:9\"").kubernetes;
    BuildContext {
        http: http_client(None).unwrap(),
        kubernetes,
    }
}

async fn list_all(client: &mut ReleasesClient) -> Vec<Release> {
    match client.list(|_| false).await.unwrap() {
        Listing::Modified { releases, .. } => releases,
        other => panic!("expected a listing, got {other:?}"),
    }
}

/// Lists every file and link name below `dir`, for checking that nothing was written.
fn tree(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in fs::read_dir(&next).into_iter().flatten().flatten() {
            let path = entry.path();
            names.push(path.strip_prefix(dir).unwrap().display().to_string());
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            }
        }
    }
    names.sort();
    names
}

fn env_names(file: &Path) -> Vec<String> {
    fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter_map(|line| line.split_once('=').map(|(name, _)| name.to_string()))
        .collect()
}

const WRITE_ENV: &str =
    r#"command = ["sh", "-c", "env > \"$ALMAGEST_RELEASE_DIR/../../env-$ALMAGEST_TAG.txt\""]"#;

// ----- releases client -----

#[tokio::test]
async fn listing_sends_user_agent() {
    let setup = Setup::new().await;
    setup
        .github
        .publish(FakeRelease::new("v1.0.0", "2024-01-01T00:00:00Z"));
    let releases = list_all(&mut setup.client()).await;
    assert_eq!(releases.len(), 1);
    let request = &setup.github.list_requests()[0];
    assert!(
        request
            .header("user-agent")
            .unwrap()
            .starts_with("almagest/")
    );
    assert_eq!(
        request.header("accept"),
        Some("application/vnd.github+json")
    );
}

#[tokio::test]
async fn unchanged_listing_is_not_modified() {
    let setup = Setup::new().await;
    setup
        .github
        .publish(FakeRelease::new("v1.0.0", "2024-01-01T00:00:00Z"));
    let mut client = setup.client();
    let first = client.list(|_| true).await.unwrap();
    assert!(matches!(first, Listing::Modified { .. }));
    let second = client.list(|_| true).await.unwrap();
    assert_eq!(second, Listing::NotModified);
    let requests = setup.github.list_requests();
    assert_eq!(requests[1].header("if-none-match"), client.etag());

    setup
        .github
        .publish(FakeRelease::new("v1.1.0", "2024-02-01T00:00:00Z"));
    let third = client.list(|_| true).await.unwrap();
    assert!(matches!(third, Listing::Modified { .. }));
}

#[tokio::test]
async fn token_sent_in_header() {
    let setup = Setup::new().await;
    let target = setup.target("token = \"ghp_test_token\"");
    let mut client = ReleasesClient::new(target.api_base, target.repo, target.token).unwrap();
    client.list(|_| true).await.unwrap();
    let request = &setup.github.list_requests()[0];
    assert_eq!(
        request.header("authorization"),
        Some("token ghp_test_token")
    );
}

#[tokio::test]
async fn release_fetched_by_tag() {
    let setup = Setup::new().await;
    setup
        .github
        .publish(FakeRelease::new("v1.0.0", "2024-01-01T00:00:00Z"));
    setup
        .github
        .publish(FakeRelease::new("v2.0.0", "2024-02-01T00:00:00Z"));
    let mut client = setup.client();
    let found = client.release_by_tag("v1.0.0").await.unwrap();
    assert_eq!(found.unwrap().tag_name, "v1.0.0");
    let missing = client.release_by_tag("../../v2.0.0").await.unwrap();
    assert_eq!(missing, None);
    let paths: Vec<String> = setup
        .github
        .requests()
        .iter()
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(paths[1], "/repos/acme/wiki/releases/tags/..%2F..%2Fv2.0.0");
}

#[tokio::test]
async fn missing_repository_is_not_found() {
    let setup = Setup::new().await;
    setup.github.set_missing(true);
    let listing = setup.client().list(|_| true).await.unwrap();
    assert_eq!(listing, Listing::NotFound);
}

#[tokio::test]
async fn prereleases_crowding_first_page_paged_past() {
    let setup = Setup::new().await;
    setup
        .github
        .publish(FakeRelease::new("v1.0.0", "2024-01-01T00:00:00Z"));
    for n in 0..60 {
        let tag = format!("v2.0.0-rc.{n}");
        setup
            .github
            .publish(FakeRelease::new(&tag, "2024-02-01T00:00:00Z").prerelease());
    }
    let filter = Filter::default();
    let mut client = setup.client();
    let listing = client
        .list(|releases| select_candidate(releases, &filter).is_some())
        .await
        .unwrap();
    let Listing::Modified { releases, .. } = listing else {
        panic!("expected a listing, got {listing:?}");
    };
    assert_eq!(
        select_candidate(&releases, &filter).unwrap().tag_name,
        "v1.0.0"
    );
    let pages: Vec<String> = setup
        .github
        .list_requests()
        .iter()
        .map(|request| request.param("page").unwrap_or("").to_string())
        .collect();
    assert_eq!(pages, vec!["1", "2"]);
}

#[tokio::test]
async fn rate_limit_waits_for_reset() {
    let setup = Setup::new().await;
    setup
        .github
        .publish(FakeRelease::new("v1.0.0", "2024-01-01T00:00:00Z"));
    setup.github.rate_limit_for(Duration::from_secs(1));
    let mut client = setup.client();

    let error = client.list(|_| true).await.unwrap_err();
    let ReleasesError::RateLimited { until, .. } = error else {
        panic!("expected a rate limit, got {error}");
    };
    assert!(until > SystemTime::now());

    // Until the reset the client sends nothing, and a rate-limit response is not "no releases".
    let again = client.list(|_| true).await.unwrap_err();
    assert!(matches!(again, ReleasesError::RateLimited { .. }));
    assert_eq!(setup.github.list_requests().len(), 1);

    let wait = until.duration_since(SystemTime::now()).unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(50)).await;
    let releases = list_all(&mut client).await;
    assert_eq!(releases[0].tag_name, "v1.0.0");
}

// ----- selection over the fake's JSON -----

/// Returns whether a poll of the fake decides to do nothing after `built_tag` was built.
async fn poll_is_idle(setup: &Setup, built_tag: &str) -> bool {
    let target = setup.target("");
    let releases = list_all(&mut setup.client()).await;
    let state = TargetState {
        built_tag: Some(built_tag.to_string()),
        ..TargetState::default()
    };
    decide(&target, &releases, &state, true, true) == Decision::Idle
}

#[tokio::test]
async fn prerelease_ignored_by_default() {
    let setup = Setup::new().await;
    setup.github.publish(
        FakeRelease::new("v1.0.0", "2024-01-01T00:00:00Z").asset("site-1.tar.gz", site("1")),
    );
    setup.github.publish(
        FakeRelease::new("v1.1.0", "2024-02-01T00:00:00Z")
            .prerelease()
            .asset("site-1.1.tar.gz", site("1.1")),
    );
    assert!(poll_is_idle(&setup, "v1.0.0").await);
}

#[tokio::test]
async fn older_tag_published_later_ignored() {
    let setup = Setup::new().await;
    setup.github.publish(
        FakeRelease::new("v2.0.0", "2024-02-01T00:00:00Z").asset("site-2.tar.gz", site("2")),
    );
    setup.github.publish(
        FakeRelease::new("v1.9.1", "2024-06-01T00:00:00Z")
            .asset("site-1.9.1.tar.gz", site("1.9.1")),
    );
    assert!(poll_is_idle(&setup, "v2.0.0").await);
}

#[tokio::test]
async fn poller_reuses_list_on_not_modified() {
    let setup = Setup::new().await;
    setup.github.publish(
        FakeRelease::new("v1.0.0", "2024-01-01T00:00:00Z").asset("site-1.tar.gz", site("1")),
    );
    let target = setup.target("");
    let mut poller = Poller::new(setup.client());
    let mut state = TargetState::default();

    let first = poller.poll(&target, &state, false, false).await;
    let PollOutcome::Baseline(release) = first else {
        panic!("expected a baseline, got {first:?}");
    };
    state.record_baseline(&release, chrono::Utc::now());

    setup
        .github
        .publish(FakeRelease::new("v2.0.0", "2024-02-01T00:00:00Z"));
    let second = poller.poll(&target, &state, true, true).await;
    assert_eq!(second, PollOutcome::AwaitAsset("v2.0.0".to_string()));
    let third = poller.poll(&target, &state, true, true).await;
    assert_eq!(third, PollOutcome::AwaitAsset("v2.0.0".to_string()));
    let last = setup.github.list_requests().pop().unwrap();
    assert!(last.header("if-none-match").is_some());
}

// ----- builds -----

#[tokio::test]
async fn new_release_unpacked_and_switched() {
    let setup = Setup::new().await;
    setup.github.publish(
        FakeRelease::new("v1.0.0", "2024-01-01T00:00:00Z")
            .asset("site-1.0.0.tar.gz", site("1.0.0")),
    );
    let target = setup.target(WRITE_ENV);
    let release = setup.newest(&target).await;

    let report = build::build(&context(), &target, &release).await.unwrap();

    assert_eq!(report.tag, "v1.0.0");
    assert!(report.asset.as_ref().unwrap().verified);
    assert_eq!(setup.current(), Some(PathBuf::from("releases/v1.0.0")));
    let live = setup.volume().join("current");
    assert_eq!(
        fs::read_to_string(live.join("index.html")).unwrap(),
        "<h1>1.0.0</h1>"
    );
    assert_eq!(
        fs::read_link(live.join("start.html")).unwrap(),
        Path::new("index.html")
    );
    let mode = fs::metadata(live.join("bin/reindex"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o755
    );
}

#[tokio::test]
async fn command_gets_build_env_only() {
    let setup = Setup::new().await;
    setup.github.publish(
        FakeRelease::new("v1.0.0", "2024-01-01T00:00:00Z")
            .asset("site-1.0.0.tar.gz", site("1.0.0")),
    );
    let target = setup.target(WRITE_ENV);
    let release = setup.newest(&target).await;
    build::build(&context(), &target, &release).await.unwrap();

    let env_file = setup.volume().join("env-v1.0.0.txt");
    let text = fs::read_to_string(&env_file).unwrap();
    assert!(text.contains("ALMAGEST_TARGET=wiki\n"), "{text}");
    assert!(text.contains("ALMAGEST_TAG=v1.0.0\n"), "{text}");
    let release_dir = setup.volume().join("releases/v1.0.0");
    assert!(
        text.contains(&format!("ALMAGEST_RELEASE_DIR={}\n", release_dir.display())),
        "{text}"
    );
    // cargo runs tests with CARGO_* variables set: none of them, nor anything else outside
    // the allow-list, reaches the command.
    let allowed = [
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LC_ALL",
        "LC_CTYPE",
        "TZ",
        "TMPDIR",
        "ALMAGEST_TARGET",
        "ALMAGEST_TAG",
        "ALMAGEST_RELEASE_DIR",
        "PWD",
        "SHLVL",
        "_",
        "OLDPWD",
    ];
    for name in env_names(&env_file) {
        assert!(allowed.contains(&name.as_str()), "{name} was inherited");
    }
}

#[tokio::test]
async fn digest_mismatch_rejected() {
    let setup = Setup::new().await;
    let wrong = format!("sha256:{}", "0".repeat(64));
    setup.github.publish(
        FakeRelease::new("v1.0.0", "2024-01-01T00:00:00Z").asset_with_digest(
            "site-1.0.0.tar.gz",
            site("1.0.0"),
            &wrong,
        ),
    );
    let target = setup.target("");
    let release = setup.newest(&target).await;
    let failure = build::build(&context(), &target, &release)
        .await
        .unwrap_err();
    assert_eq!(failure.step, Step::Download);
    assert!(failure.message.contains("digest"), "{failure}");
    assert_eq!(setup.current(), None);
    assert_eq!(tree(&setup.volume()), vec!["releases"]);
}

#[tokio::test]
async fn oversized_asset_rejected() {
    let setup = Setup::new().await;
    setup.github.publish(
        FakeRelease::new("v1.0.0", "2024-01-01T00:00:00Z")
            .asset("site-1.0.0.tar.gz", site("1.0.0")),
    );
    let target = setup.target("max_asset_bytes = 10");
    let release = setup.newest(&target).await;
    let failure = build::build(&context(), &target, &release)
        .await
        .unwrap_err();
    assert_eq!(failure.step, Step::Download);
    assert!(failure.message.contains("max_asset_bytes"), "{failure}");
}

/// Builds a release whose asset is `archive` and returns the failure.
async fn build_archive(setup: &Setup, archive: Vec<u8>) -> BuildFailure {
    setup.github.publish(
        FakeRelease::new("v6.6.6", "2024-01-01T00:00:00Z").asset("site-6.tar.gz", archive),
    );
    let target = setup.target("");
    let release = setup.newest(&target).await;
    build::build(&context(), &target, &release)
        .await
        .unwrap_err()
}

#[tokio::test]
async fn parent_path_entry_rejected() {
    let setup = Setup::new().await;
    let archive = tar_gz(&[
        Entry::File("index.html", b"ok"),
        Entry::File("../evil", b"pwned"),
        Entry::File("../../evil", b"pwned"),
    ]);
    let failure = build_archive(&setup, archive).await;
    assert_eq!(failure.step, Step::Unpack);
    assert!(failure.message.contains(".."), "{failure}");
    assert_eq!(tree(setup.dir.path()), vec!["volume", "volume/releases"]);
}

#[tokio::test]
async fn absolute_path_entry_rejected() {
    let setup = Setup::new().await;
    let outside = setup.dir.path().join("evil");
    let archive = tar_gz(&[Entry::File(outside.to_str().unwrap(), b"pwned")]);
    let failure = build_archive(&setup, archive).await;
    assert_eq!(failure.step, Step::Unpack);
    assert!(failure.message.contains("absolute"), "{failure}");
    assert!(!outside.exists());
    assert_eq!(tree(setup.dir.path()), vec!["volume", "volume/releases"]);
}

#[tokio::test]
async fn escaping_symlink_rejected() {
    let setup = Setup::new().await;
    let archive = tar_gz(&[
        Entry::Symlink("out", "../../.."),
        Entry::File("out/evil", b"pwned"),
    ]);
    let failure = build_archive(&setup, archive).await;
    assert_eq!(failure.step, Step::Unpack);
    assert!(failure.message.contains("outside"), "{failure}");
    assert_eq!(tree(setup.dir.path()), vec!["volume", "volume/releases"]);
}

#[tokio::test]
async fn absolute_symlink_rejected() {
    let setup = Setup::new().await;
    let archive = tar_gz(&[Entry::Symlink("passwd", "/etc/passwd")]);
    let failure = build_archive(&setup, archive).await;
    assert_eq!(failure.step, Step::Unpack);
    assert_eq!(tree(setup.dir.path()), vec!["volume", "volume/releases"]);
}

#[tokio::test]
async fn chained_symlinks_rejected() {
    let setup = Setup::new().await;
    // Each link is inside on its own, but `up/..` resolves through `a/b -> ..` to the
    // directory above the release.
    let archive = tar_gz(&[
        Entry::Symlink("a/b", ".."),
        Entry::Symlink("up", "a/b"),
        Entry::Symlink("escape", "up/.."),
    ]);
    let failure = build_archive(&setup, archive).await;
    assert_eq!(failure.step, Step::Unpack);
    assert_eq!(tree(setup.dir.path()), vec!["volume", "volume/releases"]);
}

#[tokio::test]
async fn zip_asset_unpacked() {
    let setup = Setup::new().await;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
    zip.start_file("site/run.sh", options).unwrap();
    zip.write_all(b"#!/bin/sh\n").unwrap();
    let bytes = zip.finish().unwrap().into_inner();
    setup
        .github
        .publish(FakeRelease::new("v1.0.0", "2024-01-01T00:00:00Z").asset("site-1.zip", bytes));
    let target = setup.target_for("site-*.zip", "");
    let release = setup.newest(&target).await;
    build::build(&context(), &target, &release).await.unwrap();
    let script = setup.volume().join("current/site/run.sh");
    assert_eq!(fs::read(&script).unwrap(), b"#!/bin/sh\n");
}

#[tokio::test]
async fn command_failure_keeps_current() {
    let setup = Setup::new().await;
    let fail_on_v2 = r#"command = ["sh", "-c", "echo checking $ALMAGEST_TAG; test \"$ALMAGEST_TAG\" != v2.0.0"]"#;
    let target = setup.target(fail_on_v2);
    setup.github.publish(
        FakeRelease::new("v1.0.0", "2024-01-01T00:00:00Z").asset("site-1.tar.gz", site("1")),
    );
    let first = setup.newest(&target).await;
    build::build(&context(), &target, &first).await.unwrap();

    setup.github.publish(
        FakeRelease::new("v2.0.0", "2024-02-01T00:00:00Z").asset("site-2.tar.gz", site("2")),
    );
    let second = setup.newest(&target).await;
    let failure = build::build(&context(), &target, &second)
        .await
        .unwrap_err();

    assert_eq!(failure.step, Step::Command);
    assert_eq!(failure.output_tail.as_deref(), Some("checking v2.0.0"));
    assert_eq!(setup.current(), Some(PathBuf::from("releases/v1.0.0")));
    assert!(!setup.volume().join("releases/v2.0.0").exists());
}

#[tokio::test]
async fn rebuild_of_built_tag_runs_again() {
    let setup = Setup::new().await;
    let count = r#"command = ["sh", "-c", "echo run >> ../../runs.txt"]"#;
    let target = setup.target(count);
    setup.github.publish(
        FakeRelease::new("v1.0.0", "2024-01-01T00:00:00Z").asset("site-1.tar.gz", site("1")),
    );
    let release = setup.newest(&target).await;
    build::build(&context(), &target, &release).await.unwrap();
    build::build(&context(), &target, &release).await.unwrap();
    let runs = fs::read_to_string(setup.volume().join("runs.txt")).unwrap();
    assert_eq!(runs.lines().count(), 2);
    assert_eq!(setup.current(), Some(PathBuf::from("releases/v1.0.0")));
    assert_eq!(
        tree(&setup.volume().join("releases"))
            .iter()
            .filter(|n| !n.contains('/'))
            .count(),
        1
    );
}

#[tokio::test]
async fn rollback_switches_to_previous() {
    let setup = Setup::new().await;
    let target = setup.target(WRITE_ENV);
    for (tag, date) in [("v1.0.0", "2024-01-01"), ("v2.0.0", "2024-02-01")] {
        publish_site_release(&setup.github, tag, date);
        let release = setup.newest(&target).await;
        build::build(&context(), &target, &release).await.unwrap();
        // Install times order the releases. Setting v1.0.0's a minute back keeps the order
        // independent of the file system's timestamp resolution.
        let dir = setup.volume().join("releases").join(tag);
        let age = if tag == "v1.0.0" { 60 } else { 0 };
        let when = SystemTime::now() - Duration::from_secs(age);
        fs::File::open(dir).unwrap().set_modified(when).unwrap();
    }
    fs::remove_file(setup.volume().join("env-v1.0.0.txt")).unwrap();

    let report = build::rollback(&context(), &target).await.unwrap();

    assert_eq!(report.tag, "v1.0.0");
    assert_eq!(setup.current(), Some(PathBuf::from("releases/v1.0.0")));
    assert!(
        setup.volume().join("env-v1.0.0.txt").exists(),
        "the command did not run for v1.0.0"
    );
    let again = build::rollback(&context(), &target).await.unwrap_err();
    assert_eq!(again.step, Step::Check);
}

#[tokio::test]
async fn old_releases_pruned() {
    let setup = Setup::new().await;
    let target = setup.target("keep_releases = 2");
    for (n, tag) in ["v1.0.0", "v2.0.0", "v3.0.0"].iter().enumerate() {
        let date = format!("2024-0{}-01T00:00:00Z", n + 1);
        setup
            .github
            .publish(FakeRelease::new(tag, &date).asset(&format!("site-{tag}.tar.gz"), site(tag)));
        let release = setup.newest(&target).await;
        build::build(&context(), &target, &release).await.unwrap();
        let dir = setup.volume().join("releases").join(tag);
        let when = SystemTime::now() - Duration::from_secs(100 - n as u64 * 10);
        fs::File::open(dir).unwrap().set_modified(when).unwrap();
    }
    let kept: Vec<String> = fs::read_dir(setup.volume().join("releases"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(!kept.contains(&"v1.0.0".to_string()), "{kept:?}");
}

#[tokio::test]
async fn hostile_tag_rejected_for_volume() {
    let setup = Setup::new().await;
    for tag in ["$(touch x)", "v1;touch x", "../../evil", "v1/../../evil"] {
        let release = Release {
            tag_name: tag.to_string(),
            ..Release::default()
        };
        let mut release = release;
        release.assets.push(almagest::builder::releases::Asset {
            name: "site-1.tar.gz".to_string(),
            browser_download_url: Some(format!(
                "{}/download/x/site-1.tar.gz",
                setup.github.api_base()
            )),
            ..Default::default()
        });
        let target = setup.target(WRITE_ENV);
        let failure = build::build(&context(), &target, &release)
            .await
            .unwrap_err();
        assert_eq!(failure.step, Step::Check, "tag {tag:?}");
        assert!(failure.message.contains("directory name"), "{failure}");
    }
    assert_eq!(tree(setup.dir.path()), vec!["volume"]);
    assert!(
        setup.github.requests().is_empty(),
        "a hostile tag led to a download"
    );
}

#[tokio::test]
async fn hostile_tag_passed_verbatim_to_command() {
    let setup = Setup::new().await;
    let out = setup.dir.path().join("tag.txt");
    let toml_text = format!(
        "[[targets]]\nname = \"hook\"\nrepo = \"acme/wiki\"\napi_base = \"{}\"\n\
         command = [\"sh\", \"-c\", \"printf '%s' \\\"$ALMAGEST_TAG\\\" > \\\"$0\\\"\", \"{}\"]\n",
        setup.github.api_base(),
        out.display()
    );
    let target = parse_target(&toml_text);
    let tag = "v1$(touch pwned);touch pwned2 `touch pwned3`";
    let release = Release {
        tag_name: tag.to_string(),
        ..Release::default()
    };
    let workdir = std::env::current_dir().unwrap();
    build::build(&context(), &target, &release).await.unwrap();
    assert_eq!(fs::read_to_string(&out).unwrap(), tag);
    for name in ["pwned", "pwned2", "pwned3"] {
        assert!(!workdir.join(name).exists(), "{name} was created");
        assert!(!setup.dir.path().join(name).exists(), "{name} was created");
    }
}

// ----- Kubernetes restart -----

async fn kube_setup(token: &str) -> (FakeKube, BuildContext, tempfile::TempDir) {
    let kube = FakeKube::start("sa-token-123", "wiki").await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    fs::write(&token_file, format!("{token}\n")).unwrap();
    let kubernetes = parse_builder(&format!(
        "[kubernetes]\napi_base = \"{}\"\ntoken_file = \"{}\"",
        kube.base(),
        token_file.display()
    ))
    .kubernetes;
    let context = BuildContext {
        http: http_client(None).unwrap(),
        kubernetes,
    };
    (kube, context, dir)
}

#[tokio::test]
async fn restart_patches_deployment_annotation() {
    let setup = Setup::new().await;
    let (kube, context, _dir) = kube_setup("sa-token-123").await;
    setup.github.publish(
        FakeRelease::new("v1.0.0", "2024-01-01T00:00:00Z").asset("site-1.tar.gz", site("1")),
    );
    let target = setup.target("restart_deployment = \"wiki/wiki-web\"");
    let release = setup.newest(&target).await;
    build::build(&context, &target, &release).await.unwrap();

    let requests = kube.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, warp::http::Method::PATCH);
    assert_eq!(
        request.path,
        "/apis/apps/v1/namespaces/wiki/deployments/wiki-web"
    );
    assert_eq!(request.header("authorization"), Some("Bearer sa-token-123"));
    assert_eq!(
        request.header("content-type"),
        Some("application/strategic-merge-patch+json")
    );
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    let stamp = body["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT]
        .as_str()
        .unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(stamp).is_ok(),
        "{stamp}"
    );
}

#[tokio::test]
async fn refused_restart_switches_back() {
    let setup = Setup::new().await;
    let (_kube, context, _dir) = kube_setup("wrong-token").await;
    let target = setup.target("restart_deployment = \"wiki/wiki-web\"");
    setup.github.publish(
        FakeRelease::new("v1.0.0", "2024-01-01T00:00:00Z").asset("site-1.tar.gz", site("1")),
    );
    let release = setup.newest(&target).await;

    let failure = build::build(&context, &target, &release).await.unwrap_err();

    assert_eq!(failure.step, Step::Restart);
    assert!(failure.message.contains("builder-rbac"), "{failure}");
    assert_eq!(setup.current(), None);
    assert_eq!(tree(&setup.volume()), vec!["releases"]);
}
