#!/bin/sh
# A long-poll client of Vane's HTTP API (docs/http-api.md) in POSIX sh and
# curl: follows one group's versions, writes each new snapshot to a file
# atomically (a temporary file in the same directory, then rename), checks
# it with an optional command, and ACKs it — or NACKs it with the
# command's output and keeps the file it had. Errors back off (1 s doubling
# to 30 s, with jitter, or the server's Retry-After).
#
# Usage: longpoll.sh SERVER GROUP NODE OUTPUT [--once]
#   SERVER   http://127.0.0.1:7070 or https://...
#   --once   exit 0 after the first version written (and acked)
# Environment:
#   VANE_TOKEN  bearer token (role agent on GROUP), if the server wants one
#   CURL_OPTS   more curl flags: --cacert ca.pem --cert agent.pem --key agent.key
#   WAIT        how long the server may hold a poll (default 30s, at most 60s)
#   FORMAT      json (default) or yaml
#   CHECK_CMD   run with the new file's path; non-zero exit = NACK
set -u

[ $# -ge 4 ] || { echo "usage: $0 SERVER GROUP NODE OUTPUT [--once]" >&2; exit 2; }
server=${1%/} group=$2 node=$3 out=$4 once=${5:-}
wait=${WAIT:-30s} format=${FORMAT:-json}
version=0 backoff=1
# The ETag of the file we run, sent as If-None-Match: after a restart of
# the server, it records this node as running it. Empty after a refusal,
# so the refused version is not served again.
etag=
tmp="$out.tmp.$$" head="$out.head.$$"
trap 'rm -f "$tmp" "$head"' EXIT
trap 'exit 130' INT TERM

# curl with the caller's flags and token.
call() {
    # shellcheck disable=SC2086 # CURL_OPTS is a list of flags
    if [ -n "${VANE_TOKEN:-}" ]; then
        curl -sS ${CURL_OPTS:-} -H "Authorization: Bearer $VANE_TOKEN" "$@"
    else
        curl -sS ${CURL_OPTS:-} "$@"
    fi
}

# The value of response header $1 (case-insensitive) in $head.
header() {
    tr -d '\r' <"$head" | awk -F': *' -v h="$1" 'tolower($1) == h { print $2 }' | tail -n 1
}

# Sleeps $1 seconds or a random time between half and all of $backoff.
pause() {
    secs=${1:-$(awk -v b="$backoff" 'BEGIN { srand(); printf "%.1f", b / 2 + rand() * b / 2 }')}
    sleep "$secs"
    backoff=$((backoff * 2)); [ "$backoff" -le 30 ] || backoff=30
}

# ACK (no $3) or NACK (message $3) version $1 with hash $2.
report() {
    if [ $# -ge 3 ]; then
        error=$(printf '%s' "$3" | head -c 2000 | awk 'BEGIN { ORS = "" } { gsub(/\\/, "\\\\"); gsub(/"/, "\\\""); gsub(/\t/, " "); if (NR > 1) print "\\n"; print }')
        error="{\"message\": \"$error\"}"
    else
        error=null
    fi
    body="{\"node\": \"$node\", \"version\": $1, \"hash\": \"$2\", \"error\": $error}"
    code=$(call -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
        --data-binary "$body" "$server/v1/groups/$group/ack") || code=000
    [ "$code" = 204 ] || echo "longpoll: reporting version $1 got HTTP $code" >&2
}

while :; do
    set -- "$server/v1/groups/$group/snapshot?node=$node&after_version=$version&wait=$wait&format=$format"
    [ -z "$etag" ] || set -- -H "If-None-Match: \"$etag\"" "$@"
    code=$(call -o "$tmp" -D "$head" -w '%{http_code}' --max-time 90 "$@") || code=000
    case $code in
    200)
        new=$(header vane-version)
        hash=$(header etag | tr -d '"')
        if [ -n "${CHECK_CMD:-}" ] && ! why=$($CHECK_CMD "$tmp" 2>&1); then
            echo "longpoll: version $new refused by $CHECK_CMD: $why" >&2
            report "$new" "$hash" "${why:-$CHECK_CMD failed}"
            etag=
        else
            mv -f "$tmp" "$out"
            echo "longpoll: wrote version $new (sha256 $(echo "$hash" | cut -c1-12)) to $out" >&2
            report "$new" "$hash"
            etag=$hash
            [ "$once" = --once ] && exit 0
        fi
        # Refused or not, that version is known: wait for the next one.
        version=$new backoff=1
        ;;
    304)
        backoff=1
        ;;
    *)
        message=$(cat "$tmp" 2>/dev/null)
        echo "longpoll: HTTP $code ${message:-(no answer)}" >&2
        retry=$(header retry-after 2>/dev/null)
        pause "${retry:-}"
        ;;
    esac
done
