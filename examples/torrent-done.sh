#!/bin/sh
# Done-hook for Transmission and qBittorrent: reports to Almagest that a torrent finished by
# publishing {"client":NAME,"hash":HEX} to PREFIX:torrent:done. Almagest looks the torrent
# up itself, so the name (which may contain quotes, spaces, & or emoji) never passes through
# a command line here.
#
# Transmission (settings.json, daemon stopped while editing):
#   "script-torrent-done-enabled": true,
#   "script-torrent-done-filename": "/usr/local/bin/torrent-done.sh"
#   Transmission passes the hash in TR_TORRENT_HASH.
#
# qBittorrent (Options > Downloads > Run external program on torrent finished):
#   /usr/local/bin/torrent-done.sh "%I"
#   Pass only %I (the v1 info hash). A v2-only torrent has no v1 hash (qBittorrent passes
#   "-"); the script then exits and Almagest's poller reports the completion instead.
#
# Settings, from the environment of the torrent client or edited below:
#   ALMAGEST_CLIENT  the client's name in [[torrent.clients]] (default: transmission or
#                    qbittorrent, by how the script was called)
#   ALMAGEST_PREFIX  bus.prefix (default: almagest)
#   REDIS_URL        redis://host:port/db (default: redis://127.0.0.1:6379); put a password
#                    in REDISCLI_AUTH, not in the URL, so that it stays out of `ps`.
#   REDIS_SOCKET     path of Redis's unix socket; used instead of REDIS_URL when set
set -eu

if [ "$#" -ge 1 ]; then
    hash=$1
    default_client=qbittorrent
else
    hash=${TR_TORRENT_HASH:-}
    default_client=transmission
fi
client=${ALMAGEST_CLIENT:-$default_client}
prefix=${ALMAGEST_PREFIX:-almagest}
redis_url=${REDIS_URL:-redis://127.0.0.1:6379}

# Only hex hashes and plain client names go into the JSON, so it needs no escaping.
case $hash in
    *[!0-9a-fA-F]* | "")
        echo "torrent-done: no info hash given (got \"$hash\"): expected 40 or 64 hex digits" >&2
        exit 2
        ;;
esac
if [ "${#hash}" -ne 40 ] && [ "${#hash}" -ne 64 ]; then
    echo "torrent-done: invalid info hash length ${#hash}: expected 40 or 64 hex digits" >&2
    exit 2
fi
case $client in
    *[!A-Za-z0-9_.-]* | "")
        echo "torrent-done: invalid client name \"$client\": use letters, digits and _.-" >&2
        exit 2
        ;;
esac

message="{\"client\":\"$client\",\"hash\":\"$hash\"}"
if [ -n "${REDIS_SOCKET:-}" ]; then
    exec redis-cli -s "$REDIS_SOCKET" PUBLISH "$prefix:torrent:done" "$message" >/dev/null
fi
exec redis-cli -u "$redis_url" PUBLISH "$prefix:torrent:done" "$message" >/dev/null
