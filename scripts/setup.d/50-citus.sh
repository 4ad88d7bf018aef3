#!/usr/bin/env bash
# Citus tests: builds and installs the Citus extension into the machine's PostgreSQL 15 when it is missing.
# Debian does not package Citus, so it is built from its release tarball plus a patch for Debian's 15.x headers.
# The source directory holds citus-<version>.tar.gz and *.patch; DISCOUNT_CITUS_SOURCE overrides where it is
# (relative paths are taken from the repository root). Idempotent: returns at once when citus.so is installed.
# Fails (so CI fails) when it cannot build: the Citus tests never skip.
set -euo pipefail
cd "$(dirname "$0")/../.."

CITUS_VERSION=13.2.2
PG_MAJOR=15
PG_LIB="/usr/lib/postgresql/$PG_MAJOR/lib"

if [ -e "$PG_LIB/citus.so" ] && [ -e "/usr/share/postgresql/$PG_MAJOR/extension/citus.control" ]; then
  exit 0
fi

SOURCE="${DISCOUNT_CITUS_SOURCE:-../shared/vendor/citus}"
TARBALL="$SOURCE/citus-$CITUS_VERSION.tar.gz"
if [ ! -f "$TARBALL" ]; then
  echo "Citus $CITUS_VERSION is not installed ($PG_LIB/citus.so is missing) and its source was not found:" >&2
  echo "  no $TARBALL (from $(pwd))." >&2
  echo "Set DISCOUNT_CITUS_SOURCE to a directory holding citus-$CITUS_VERSION.tar.gz (the v$CITUS_VERSION release" >&2
  echo "of citusdata/citus) and its *.patch files, or install Citus for PostgreSQL $PG_MAJOR yourself." >&2
  exit 1
fi
SOURCE="$(cd "$SOURCE" && pwd)"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
echo "building Citus $CITUS_VERSION for PostgreSQL $PG_MAJOR from $SOURCE (takes a few minutes)"
# Waits for another apt/dpkg run (e.g. a parallel setup script) instead of failing on its lock.
APT=($SUDO apt-get -qq -o DPkg::Lock::Timeout=600)
"${APT[@]}" update
"${APT[@]}" install -y --no-install-recommends "postgresql-server-dev-$PG_MAJOR" make gcc flex bison \
  libcurl4-openssl-dev liblz4-dev libzstd-dev libkrb5-dev libselinux1-dev libxslt1-dev libpam0g-dev libreadline-dev \
  libssl-dev zlib1g-dev

BUILD="$(mktemp -d)"
trap 'rm -rf "$BUILD"' EXIT
tar xzf "$TARBALL" -C "$BUILD"
cd "$BUILD/citus-$CITUS_VERSION"
for patch in "$SOURCE"/*.patch; do
  [ -e "$patch" ] || continue
  echo "applying $(basename "$patch")"
  patch -p1 --forward <"$patch"
done
./configure --quiet PG_CONFIG="/usr/lib/postgresql/$PG_MAJOR/bin/pg_config"
make -j2 --silent
$SUDO make install --silent
test -e "$PG_LIB/citus.so"
echo "installed Citus $CITUS_VERSION into $PG_LIB"
