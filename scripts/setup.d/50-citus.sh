#!/usr/bin/env bash
# Citus tests: builds and installs the Citus extension into the machine's PostgreSQL 15 when it is missing.
# Debian does not package Citus, so it is built from the v$CITUS_VERSION release tarball of citusdata/citus
# (checked against CITUS_SHA256) plus the patches in scripts/setup.d/citus/ for Debian's 15.x headers.
# The tarball, first found wins:
#   1. $DISCOUNT_CITUS_SOURCE/citus-$CITUS_VERSION.tar.gz (relative paths are taken from the repository root;
#      its own *.patch files are applied too);
#   2. a vendored copy beside the checkout, so that CI needs no network;
#   3. downloaded from the release's public archive.
# Idempotent: returns at once when citus.so is installed. Fails (so CI fails) when it cannot build: the Citus
# tests never skip. `--check-source` only finds the tarball and checks its sha256 (installed or not), then exits.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO="$(pwd)"

CITUS_VERSION=13.2.2
# sha256 of the release archive (github.com/citusdata/citus/archive/refs/tags/v13.2.2.tar.gz), which unpacks
# to citus-13.2.2/.
CITUS_SHA256=dd2453caec20a830e5e63f1def5c5a98cb6f57ae510407cdcd800916fcdab430
CITUS_URL="https://github.com/citusdata/citus/archive/refs/tags/v$CITUS_VERSION.tar.gz"
VENDORED=../shared/vendor/citus
PG_MAJOR=15
PG_LIB="/usr/lib/postgresql/$PG_MAJOR/lib"

CHECK_SOURCE_ONLY=""
[ "${1:-}" = "--check-source" ] && CHECK_SOURCE_ONLY=1
if [ -z "$CHECK_SOURCE_ONLY" ] && [ -e "$PG_LIB/citus.so" ] &&
  [ -e "/usr/share/postgresql/$PG_MAJOR/extension/citus.control" ]; then
  exit 0
fi

BUILD="$(mktemp -d)"
trap 'rm -rf "$BUILD"' EXIT
TARBALL_NAME="citus-$CITUS_VERSION.tar.gz"
SOURCE=""
if [ -n "${DISCOUNT_CITUS_SOURCE:-}" ]; then
  if [ ! -f "$DISCOUNT_CITUS_SOURCE/$TARBALL_NAME" ]; then
    echo "DISCOUNT_CITUS_SOURCE=$DISCOUNT_CITUS_SOURCE has no $TARBALL_NAME (from $REPO)." >&2
    echo "Point it at a directory holding $TARBALL_NAME (the v$CITUS_VERSION release of citusdata/citus)," >&2
    echo "or unset it to download that release." >&2
    exit 1
  fi
  SOURCE="$(cd "$DISCOUNT_CITUS_SOURCE" && pwd)"
  TARBALL="$SOURCE/$TARBALL_NAME"
  ORIGIN="$TARBALL"
elif [ -f "$VENDORED/$TARBALL_NAME" ]; then
  TARBALL="$(cd "$VENDORED" && pwd)/$TARBALL_NAME"
  ORIGIN="the vendored copy of the release"
else
  TARBALL="$BUILD/$TARBALL_NAME"
  ORIGIN="the downloaded release"
  echo "downloading Citus $CITUS_VERSION from $CITUS_URL"
  if ! curl --fail --silent --show-error --location --retry 3 --output "$TARBALL" "$CITUS_URL"; then
    echo "could not download the Citus $CITUS_VERSION release from $CITUS_URL." >&2
    echo "Download it elsewhere and set DISCOUNT_CITUS_SOURCE to the directory holding it as $TARBALL_NAME," >&2
    echo "or install Citus for PostgreSQL $PG_MAJOR yourself." >&2
    exit 1
  fi
fi
if ! echo "$CITUS_SHA256  $TARBALL" | sha256sum --check --status; then
  echo "$ORIGIN is not the v$CITUS_VERSION release of citusdata/citus:" >&2
  echo "  its sha256 is $(sha256sum "$TARBALL" | cut -d' ' -f1), expected $CITUS_SHA256." >&2
  exit 1
fi
if [ -n "$CHECK_SOURCE_ONLY" ]; then
  echo "Citus $CITUS_VERSION source: $ORIGIN, sha256 as pinned ($CITUS_SHA256)"
  exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
echo "building Citus $CITUS_VERSION for PostgreSQL $PG_MAJOR from $ORIGIN (takes a few minutes)"
# Waits for another apt/dpkg run (e.g. a parallel setup script) instead of failing on its lock.
APT=($SUDO apt-get -qq -o DPkg::Lock::Timeout=600)
"${APT[@]}" update
"${APT[@]}" install -y --no-install-recommends "postgresql-server-dev-$PG_MAJOR" make gcc flex bison \
  libcurl4-openssl-dev liblz4-dev libzstd-dev libkrb5-dev libselinux1-dev libxslt1-dev libpam0g-dev libreadline-dev \
  libssl-dev zlib1g-dev

tar xzf "$TARBALL" -C "$BUILD"
cd "$BUILD/citus-$CITUS_VERSION"
# The repository's patches, then those of DISCOUNT_CITUS_SOURCE that the repository does not have by name.
PATCHES=("$REPO"/scripts/setup.d/citus/*.patch)
if [ -n "$SOURCE" ]; then
  for patch in "$SOURCE"/*.patch; do
    if [ -e "$patch" ] && [ ! -e "$REPO/scripts/setup.d/citus/$(basename "$patch")" ]; then
      PATCHES+=("$patch")
    fi
  done
fi
for patch in "${PATCHES[@]}"; do
  [ -e "$patch" ] || continue
  echo "applying $(basename "$patch")"
  patch -p1 --forward <"$patch"
done
./configure --quiet PG_CONFIG="/usr/lib/postgresql/$PG_MAJOR/bin/pg_config"
make -j2 --silent
$SUDO make install --silent
test -e "$PG_LIB/citus.so"
echo "installed Citus $CITUS_VERSION into $PG_LIB"
