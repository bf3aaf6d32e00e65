#!/usr/bin/env bash
# An rproxy worker: replies to the HTTP requests that the Almagest API publishes for one stub.
# Copy it and change handle() to do real work; this one echoes the request body back. It needs
# the Redis backend (bus.backend = "redis"), because it subscribes with redis-cli.
#
#   examples/rproxy-worker.sh wiki
#   curl -H "Authorization: Bearer $TOKEN" -d hello http://127.0.0.1:8411/api/rproxy/wiki
#
# Environment:
#   REDIS_URL        redis://[:PASSWORD@]HOST:PORT/DB (default redis://127.0.0.1:6379)
#   REDIS_SOCKET     a unix socket path, used instead of REDIS_URL when set
#   ALMAGEST_PREFIX  the daemon's bus.prefix (default almagest)
#
# Needs bash, jq and redis-cli 7 or newer (for --json). It handles one request at a time;
# start several copies to serve requests in parallel (each request reaches every copy, so
# only do that for handlers whose replies may race: the first reply wins).
set -euo pipefail

stub=${1:?usage: rproxy-worker.sh STUB}
prefix=${ALMAGEST_PREFIX:-almagest}
if [[ -n ${REDIS_SOCKET:-} ]]; then
  redis=(redis-cli -s "$REDIS_SOCKET")
else
  redis=(redis-cli -u "${REDIS_URL:-redis://127.0.0.1:6379}")
fi

# Reads one http.request object on standard input and writes the reply object:
# {"id", "status", "headers": {NAME: [VALUES]}, "body", "body_base64"}.
handle() {
  jq -c '{
    id,
    status: 200,
    headers: {"content-type": (.headers["content-type"] // ["text/plain; charset=utf-8"])},
    body,
    body_base64
  }'
}

# Serves requests until the subscription ends (Redis restarted or unreachable), then
# subscribes again after a second, so the worker outlives Redis restarts.
serve() {
  # redis-cli --json prints each message as one line: ["message", CHANNEL, PAYLOAD].
  "${redis[@]}" --json SUBSCRIBE "$prefix:q:$stub" |
    while IFS= read -r line; do
      # Skip the subscribe confirmation and plain messages published for the same stub.
      request=$(jq -c 'select(type == "array" and .[0] == "message") | .[2] | fromjson?
                       | select(type == "object" and .type == "http.request")' \
        <<<"$line" 2>/dev/null) || continue
      [[ -n $request ]] || continue
      if ! reply=$(handle <<<"$request"); then
        reply=$(jq -c '{id, status: 500, body: "the worker failed"}' <<<"$request")
      fi
      reply_to=$(jq -r .reply_to <<<"$request")
      # -x takes the last argument from standard input: replies may exceed the argv limit.
      printf '%s' "$reply" | "${redis[@]}" -x PUBLISH "$reply_to" >/dev/null
    done
}

while true; do
  serve || true
  echo "rproxy-worker: subscription to $prefix:q:$stub ended; subscribing again in 1 s" >&2
  sleep 1
done
