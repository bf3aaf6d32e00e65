#!/usr/bin/env bash
# Runs every Almagest service on this machine and drives each one, printing what happens.
#
#   examples/demo.sh
#
# Everything runs in a temporary folder and on loopback only. It starts its own redis-server
# on a unix socket, a transmission-daemon and a qbittorrent-nox (offline: no DHT, LSD, PeX or
# port mapping), and local stand-ins for Discord and GitHub (examples/demo_fakes.rs, which
# prints each Discord message it receives). Then it starts the daemon with a generated config.
# It publishes through the HTTP API, calls an rproxy worker, completes a torrent in each
# client, writes a device arrival into a CoreDNS log, publishes a new release, drops a file,
# pings every service and sends a notification from a script. Everything it started is
# stopped on exit.
#
# Needs: cargo, curl, redis-server and redis-cli 7 or newer (apt-get install redis-server
# redis-tools), and for the rproxy step jq. The torrent steps need transmission-daemon,
# transmission-cli and qbittorrent-nox; a client that is not installed is left out, with a
# message.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
work=$(mktemp -d -t almagest-demo.XXXXXX)
prefix=demo
token=demo-token-0123456789
pids=()

cleanup() {
  local status=$?
  if ((${#pids[@]})); then
    kill "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
  if ((status != 0 && status != 130)) && [[ -f $work/almagest.log ]]; then
    echo "--- last lines of the daemon's log ---" >&2
    tail -n 20 "$work/almagest.log" >&2
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { printf '\n== %s\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }

# Runs a command every 0.2 s until it succeeds, for at most 30 s.
wait_for() {
  local what=$1
  shift
  for _ in $(seq 150); do
    if "$@" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.2
  done
  echo "timed out waiting for $what" >&2
  return 1
}

# Waits until FILE has a line containing TEXT, then prints that line.
wait_line() {
  local file=$1 text=$2
  wait_for "\"$text\" in $(basename "$file")" grep -qF -- "$text" "$file"
  grep -F -- "$text" "$file" | sed 's/^/   /'
}

# Prints a free loopback TCP port, one on which no connection is accepted.
free_port() {
  local port
  while :; do
    port=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
}

rcli() { redis-cli -s "$work/redis.sock" "$@"; }

for program in cargo curl redis-server redis-cli; do
  have "$program" || { echo "$program is not installed" >&2; exit 1; }
done
with_transmission=false
if have transmission-daemon && have transmission-remote && have transmission-create \
  && have transmission-show; then
  with_transmission=true
else
  echo "note: transmission-daemon or transmission-cli is not installed: no Transmission step"
fi
with_qbittorrent=false
if have qbittorrent-nox && have transmission-create && have transmission-show; then
  with_qbittorrent=true
else
  echo "note: qbittorrent-nox or transmission-cli is not installed: no qBittorrent step"
fi

step "Building almagest and the demo fakes"
(cd "$root" && cargo build --quiet --bin almagest --example demo_fakes)
almagest=$target_dir/debug/almagest

step "Starting redis-server on $work/redis.sock"
redis-server --port 0 --unixsocket "$work/redis.sock" --unixsocketperm 700 \
  --dir "$work" --save '' --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
wait_for "redis-server" rcli PING

step "Starting the Discord and GitHub fakes"
mkdir -p "$work/releases"
make_release() {
  local tag=$1
  mkdir -p "$work/site/$tag" "$work/releases/$tag.tmp"
  echo "<h1>site $tag</h1>" >"$work/site/$tag/index.html"
  tar -czf "$work/releases/$tag.tmp/site-$tag.tar.gz" -C "$work/site/$tag" .
  mv "$work/releases/$tag.tmp" "$work/releases/$tag"
}
make_release v1.0.0
"$target_dir/debug/examples/demo_fakes" "$work/releases" "$work/fakes.address" \
  >"$work/fakes.log" 2>&1 &
pids+=($!)
wait_for "the fakes" test -s "$work/fakes.address"
fakes=http://$(cat "$work/fakes.address")
echo "   on $fakes"

torrent_clients=""
if $with_transmission; then
  step "Starting transmission-daemon"
  tr_port=$(free_port)
  mkdir -p "$work/transmission/config" "$work/transmission/downloads"
  cat >"$work/transmission/config/settings.json" <<EOF
{"rpc-enabled": true, "rpc-bind-address": "127.0.0.1", "rpc-port": $tr_port,
 "rpc-authentication-required": true, "rpc-username": "almagest",
 "rpc-password": "almagest-demo-password", "rpc-whitelist-enabled": true,
 "rpc-whitelist": "127.0.0.1", "dht-enabled": false, "lpd-enabled": false,
 "pex-enabled": false, "utp-enabled": false, "port-forwarding-enabled": false,
 "peer-port": $(free_port), "bind-address-ipv4": "127.0.0.1",
 "download-dir": "$work/transmission/downloads", "incomplete-dir-enabled": false,
 "message-level": 1}
EOF
  transmission-daemon --foreground --config-dir "$work/transmission/config" \
    >"$work/transmission.log" 2>&1 &
  pids+=($!)
  export TR_AUTH=almagest:almagest-demo-password
  wait_for "transmission-daemon" transmission-remote "127.0.0.1:$tr_port" --authenv --list
  echo "   RPC on 127.0.0.1:$tr_port"
  torrent_clients+="
[[torrent.clients]]
name = \"transmission\"
kind = \"transmission\"
url = \"http://127.0.0.1:$tr_port/transmission/rpc\"
username = \"almagest\"
password = \"almagest-demo-password\"
"
fi

if $with_qbittorrent; then
  step "Starting qbittorrent-nox"
  qb_port=$(free_port)
  mkdir -p "$work/qbittorrent/profile/qBittorrent/config" "$work/qbittorrent/downloads"
  # PBKDF2-HMAC-SHA512 of "almagest-test-password" (100,000 rounds, salt 00..0f), the form
  # qBittorrent stores; the same value as in tests/it/support/qbittorrent.rs.
  qb_hash='@ByteArray(AAECAwQFBgcICQoLDA0ODw==:I3+h0jBZBN27USLrVFq1D9VuEmRRvaIgMityidlBv0+EnakCjFopVZq3D9Q+FUlm+m265IHOxHkOuu+riZicnA==)'
  cat >"$work/qbittorrent/profile/qBittorrent/config/qBittorrent.conf" <<EOF
[LegalNotice]
Accepted=true

[BitTorrent]
Session\\DHTEnabled=false
Session\\LSDEnabled=false
Session\\PeXEnabled=false
Session\\Port=$(free_port)
Session\\InterfaceAddress=127.0.0.1
Session\\QueueingSystemEnabled=false
Session\\DefaultSavePath=$work/qbittorrent/downloads
Session\\AnonymousModeEnabled=true

[Preferences]
Connection\\UPnP=false
WebUI\\Address=127.0.0.1
WebUI\\Port=$qb_port
WebUI\\Username=almagest
WebUI\\Password_PBKDF2="$qb_hash"
WebUI\\LocalHostAuth=true
WebUI\\CSRFProtection=true
EOF
  qbittorrent-nox --profile="$work/qbittorrent/profile" >"$work/qbittorrent.log" 2>&1 &
  pids+=($!)
  qb=http://127.0.0.1:$qb_port
  wait_for "qbittorrent-nox" curl -s -o /dev/null "$qb/api/v2/app/webapiVersion"
  qb_login() {
    curl -sf -c "$work/qb.cookies" --data "username=almagest&password=almagest-test-password" \
      "$qb/api/v2/auth/login" | grep -q Ok
  }
  wait_for "qBittorrent login" qb_login
  echo "   WebUI on $qb"
  torrent_clients+="
[[torrent.clients]]
name = \"qbittorrent\"
kind = \"qbittorrent\"
url = \"$qb\"
username = \"almagest\"
password = \"almagest-test-password\"
"
fi

step "Writing the config and starting almagest"
api_port=$(free_port)
api=http://127.0.0.1:$api_port
mkdir -p "$work/drop"
touch "$work/query.log"
torrent_section=""
if [[ -n $torrent_clients ]]; then
  torrent_section="[torrent]
poll_interval_secs = 1
$torrent_clients"
fi
cat >"$work/almagest.toml" <<EOF
[bus]
backend = "redis"
prefix = "$prefix"
instance = "demo"

[redis]
url = "redis+unix://$work/redis.sock"

[control]
ping_interval_secs = 2
drop_dir = "$work/drop"

[api]
listen = "127.0.0.1:$api_port"

[[api.tokens]]
name = "demo"
token = "$token"
stubs = ["*"]
scopes = ["metrics", "keys", "dns", "status"]

[discord]
token = "demo-bot-token"
default_channel_id = 10
api_proxy = "$fakes"
gateway = false

$torrent_section

[[builder.targets]]
name = "site"
repo = "demo/site"
api_base = "$fakes"
asset_pattern = "site-*.tar.gz"
volume = "$work/volume"
poll_interval_secs = 1

[dnslog]
sources = [{ file = "$work/query.log" }]

[[dnslog.devices]]
name = "sam-phone"
owner = "Sam"
ip = "192.168.1.42"
away_after_secs = 2
EOF
mkdir -p "$work/volume"
echo "   $work/almagest.toml"
"$almagest" --config "$work/almagest.toml" run >"$work/almagest.log" 2>&1 &
pids+=($!)
wait_for "the API" curl -sf "$api/readyz"
echo "   API on $api"

step "Subscribing to $prefix:q:* as a worker script would"
rcli --csv PSUBSCRIBE "$prefix:q:*" >"$work/subscriber.log" 2>&1 &
pids+=($!)
wait_for "the subscription" grep -q psubscribe "$work/subscriber.log"

step "almagest ping: every service replies"
"$almagest" --config "$work/almagest.toml" ping | sed 's/^/   /'

step "POST /api/redis/publish/wiki reaches the subscriber"
curl -sf -H "Authorization: Bearer $token" -d "reload the wiki" "$api/api/redis/publish/wiki" \
  | sed 's/^/   API: /'
echo
wait_line "$work/subscriber.log" "reload the wiki"

if have jq; then
  step "An rproxy call gets its worker's reply (examples/rproxy-worker.sh)"
  REDIS_SOCKET=$work/redis.sock ALMAGEST_PREFIX=$prefix "$root/examples/rproxy-worker.sh" echo \
    >"$work/worker.log" 2>&1 &
  pids+=($!)
  worker_listening() { [[ $(rcli PUBSUB NUMSUB "$prefix:q:echo" | tail -n 1) -ge 1 ]]; }
  wait_for "the worker's subscription" worker_listening
  reply=$(curl -sf -H "Authorization: Bearer $token" -d "ping through Redis" \
    "$api/api/rproxy/echo/hello")
  echo "   reply: $reply"
else
  echo "note: jq is not installed: no rproxy step"
fi

# Adds a torrent without its data, waits until almagest has seen it incomplete, then puts the
# data in place and has the client check it: almagest announces the completion once.
seen_incomplete() { rcli GET "$prefix:torrent:seen:$1" | grep -q '"seen_incomplete":true'; }
has_baseline() { [[ $(rcli EXISTS "$prefix:torrent:baseline:$1") == 1 ]]; }
make_torrent() {
  local name=$1
  mkdir -p "$work/payloads"
  head -c 200000 /dev/urandom >"$work/payloads/$name"
  transmission-create -o "$work/payloads/$name.torrent" -t udp://127.0.0.1:9/announce \
    "$work/payloads/$name" >/dev/null
  transmission-show "$work/payloads/$name.torrent" | sed -n 's/^ *Hash: *//p' \
    | tr 'A-F' 'a-f'
}

if $with_transmission; then
  step "A torrent completes in Transmission"
  wait_for "the Transmission baseline" has_baseline transmission
  hash=$(make_torrent demo-transmission.bin)
  transmission-remote "127.0.0.1:$tr_port" --authenv --add "$work/payloads/demo-transmission.bin.torrent" >/dev/null
  wait_for "almagest to see the torrent" seen_incomplete "$hash"
  cp "$work/payloads/demo-transmission.bin" "$work/transmission/downloads/"
  transmission-remote "127.0.0.1:$tr_port" --authenv --torrent "$hash" --verify >/dev/null
  wait_line "$work/fakes.log" "Finished **demo\\-transmission"
fi

if $with_qbittorrent; then
  step "A torrent completes in qBittorrent"
  wait_for "the qBittorrent baseline" has_baseline qbittorrent
  hash=$(make_torrent demo-qbittorrent.bin)
  curl -sf -b "$work/qb.cookies" -F "torrents=@$work/payloads/demo-qbittorrent.bin.torrent" \
    "$qb/api/v2/torrents/add" >/dev/null
  wait_for "almagest to see the torrent" seen_incomplete "$hash"
  cp "$work/payloads/demo-qbittorrent.bin" "$work/qbittorrent/downloads/"
  curl -sf -b "$work/qb.cookies" --data "hashes=$hash" "$qb/api/v2/torrents/recheck" >/dev/null
  wait_line "$work/fakes.log" "Finished **demo\\-qbittorrent"
fi

step "Sam's phone comes home (CoreDNS query log)"
query() {
  printf '%s [INFO] 192.168.1.42:5353 - 1 "A IN %s udp 40 false 512" NOERROR qr,rd,ra 60 0.000100s\n' \
    "$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)" "$1" >>"$work/query.log"
}
query first.example.
echo "   first query: the phone is seen; two seconds later it counts as away"
phone_away() { rcli HGET "$prefix:dns:devices" sam-phone | grep -q '"home":false'; }
wait_for "the phone to count as away" phone_away
query second.example.
wait_line "$work/fakes.log" "is home"

step "A new release is built into the volume and announced"
echo "   (the empty volume got the current release v1.0.0 built first)"
site_built() { [[ -n $(rcli HGET "$prefix:builder:site" built_tag) ]]; }
wait_for "the first build or baseline of the site" site_built
make_release v1.1.0
wait_line "$work/fakes.log" "v1.1.0"
echo "   $work/volume/current -> $(readlink "$work/volume/current")"

step "A file dropped into the drop folder is published for its stub"
echo "nightly backup done" >"$work/drop/backup.txt"
wait_line "$work/subscriber.log" "nightly backup done"

step "A script notifies: redis-cli PUBLISH $prefix:notify \"hello\""
rcli PUBLISH "$prefix:notify" "hello from a script" | sed 's/^/   receivers: /'
wait_line "$work/fakes.log" "hello from a script"

step "Every Discord message the fake received"
sed -n 's/^discord/   discord/p' "$work/fakes.log"
echo
echo "Done; stopping everything."
