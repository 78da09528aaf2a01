#!/usr/bin/env bash
# Tears down the compose deployment SHARDGATE_PROJECT (default shardgate):
#   1. stops the manager, which stops and removes the node containers it started, then the
#      router;
#   2. force-removes any container still labelled io.shardgate.project=PROJECT (what a
#      killed manager could not remove);
#   3. `docker-compose down`: the manager and router containers and the network.
# With --volumes, also every volume of the deployment: the manager's and each node's
# (labelled io.shardgate.project=PROJECT). Without it, data stays for the next `make up`.
# Removes nothing that is not the deployment's.
set -euo pipefail
cd "$(dirname "$0")/.."

volumes=0
for arg in "$@"; do
  case "$arg" in
    --volumes|-v) volumes=1 ;;
    *) echo "usage: $0 [--volumes]" >&2; exit 2 ;;
  esac
done

export SHARDGATE_PROJECT="${SHARDGATE_PROJECT:-shardgate}"
project="$SHARDGATE_PROJECT"
label="io.shardgate.project=$project"
compose=(docker-compose -p "$project" -f docker-compose.yml)

# The manager first: stopped, it removes its nodes (the router would only log errors).
"${compose[@]}" stop -t 30 manager || true
"${compose[@]}" stop -t 10 || true

leftover=$(docker ps -aq --filter "label=$label")
if [ -n "$leftover" ]; then
  echo "docker-down: removing node containers left behind: $(echo $leftover)" >&2
  docker rm -f $leftover >/dev/null
fi

if [ "$volumes" = 1 ]; then
  "${compose[@]}" down --remove-orphans --volumes
  vols=$(docker volume ls -q --filter "label=$label")
  if [ -n "$vols" ]; then
    docker volume rm $vols >/dev/null
  fi
else
  "${compose[@]}" down --remove-orphans
fi
