#!/usr/bin/env bash
# Waits (up to SHARDGATE_WAIT_SECS, default 60) until the router of the compose deployment
# answers `GET /rep` on 127.0.0.1:SHARDGATE_HTTP_PORT (default 5000), then prints the answer.
set -euo pipefail
port="${SHARDGATE_HTTP_PORT:-5000}"
if ! command -v curl >/dev/null; then
  echo "docker-wait: no curl here; not waiting for the router on 127.0.0.1:$port" >&2
  exit 0
fi
deadline=$((SECONDS + ${SHARDGATE_WAIT_SECS:-60}))
while true; do
  if rep=$(curl -sf --max-time 2 "http://127.0.0.1:$port/rep" 2>/dev/null); then
    echo "shardgate is up on 127.0.0.1:$port: $rep"
    exit 0
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "docker-wait: the router on 127.0.0.1:$port did not answer /rep in time;" \
      "see: docker-compose -p ${SHARDGATE_PROJECT:-shardgate} logs" >&2
    exit 1
  fi
  sleep 0.2
done
