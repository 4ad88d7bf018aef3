#!/usr/bin/env bash
# The Docker image, built for real and checked as an operator would (scripts/image_check.py).
#
# Builds the Dockerfile with rootful podman from a fresh `git clone` of the committed tree (so no
# untracked or ignored file can reach the image), then runs the checks against it. Needs root:
# it installs podman, runc and mmdebstrap when they are missing and writes two settings into
# /etc/containers/containers.conf that podman needs on this kind of host.
#
# No image registry is reachable from CI, so the official base (the Dockerfile's default
# BASE_IMAGE) cannot be pulled; a stand-in Debian bookworm base with python3 is built once with
# mmdebstrap and used instead. Set BASE_IMAGE to build on another base.
#
# Usage: scripts/image-check.sh   (exit status non-zero if any check fails)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
BASE_IMAGE="${BASE_IMAGE:-localhost/discount-base:bookworm}"
IMAGE="${DISCOUNT_IMAGE:-localhost/discount-service:check}"
started=$SECONDS

[ "$(id -u)" = 0 ] || { echo "image check: needs root (rootful podman)" >&2; exit 1; }

echo "== container tools"
missing=()
for tool in podman runc mmdebstrap; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# crun refuses this host's hybrid cgroup setup, and the default ulimits (RLIMIT_NOFILE, RLIMIT_NPROC)
# cannot be set inside this machine's own container.
CONF=/etc/containers/containers.conf
set_conf() { # table key value: set `key = value` in [table], leaving the rest of the file alone
  local table=$1 key=$2 value=$3
  touch "$CONF"
  if grep -qxF "$key = $value" "$CONF"; then
    return
  elif grep -qE "^[[:space:]]*$key[[:space:]]*=" "$CONF"; then
    sed -i -E "s|^[[:space:]]*$key[[:space:]]*=.*|$key = $value|" "$CONF"
  elif grep -qxF "[$table]" "$CONF"; then
    sed -i "/^\[$table\]\$/a $key = $value" "$CONF"
  else
    printf '\n[%s]\n%s = %s\n' "$table" "$key" "$value" >>"$CONF"
  fi
  echo "$CONF: [$table] $key = $value"
}
set_conf engine runtime '"runc"'
set_conf containers default_ulimits '[]'
podman --version

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if ! podman image exists "$BASE_IMAGE"; then
  echo "== stand-in base $BASE_IMAGE (Debian bookworm minbase + python3, mmdebstrap)"
  t=$SECONDS
  mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    bookworm "$work/base.tar"
  podman import --quiet "$work/base.tar" "$BASE_IMAGE" >/dev/null
  rm -f "$work/base.tar"
  echo "base built in $((SECONDS - t)) s"
fi

echo "== build $IMAGE from a clean clone of $(git rev-parse --short HEAD) on $BASE_IMAGE"
git clone --quiet --no-hardlinks "$ROOT" "$work/src"
# pip in the build reaches the package index only with this machine's CA bundle and pip settings:
# mounted for the build's RUN steps only, never copied into the image.
mounts=()
for file in /etc/ssl/certs/ca-certificates.crt /etc/pip.conf; do
  if [ -f "$file" ]; then mounts+=(--volume "$file:$file:ro"); fi
done
previous="$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
t=$SECONDS
# --layers=false: no per-step cache images left behind by every run (the pip step reruns on any
# source change anyway), only the tagged image.
podman build --quiet --layers=false --format docker --build-arg "BASE_IMAGE=$BASE_IMAGE" "${mounts[@]}" \
  --tag "$IMAGE" "$work/src" >/dev/null
build_seconds=$((SECONDS - t))
echo "built in $build_seconds s"
current="$(podman image inspect --format '{{.Id}}' "$IMAGE")"
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
  podman rmi --force "$previous" >/dev/null 2>&1 || true # the last run's image, now untagged
fi

echo "== checks"
status=0
.venv/bin/python scripts/image_check.py --image "$IMAGE" --base "$BASE_IMAGE" \
  --build-seconds "$build_seconds" || status=$?
echo "image check: $((SECONDS - started)) s in all"
exit "$status"
