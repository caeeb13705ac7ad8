#!/usr/bin/env bash
# ansible-test sanity, offline: on a copy of the collection at <tmp>/ansible_collections/netlock/killswitch,
# with a stand-in for the pip bootstrap script ansible-test cannot download here.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d /var/tmp/netlock-sanity.XXXXXX)"
trap 'rm -rf "$work"' EXIT
dest="$work/ansible_collections/netlock/killswitch"
mkdir -p "$dest"
# Tracked and new files, never ignored ones (venv, caches, reports).
(cd "$root" && git ls-files -z --cached --others --exclude-standard | xargs -0 -I{} cp --parents -P {} "$dest/")
cache="$HOME/.ansible/test/cache"
mkdir -p "$cache"
for version in 24_2 25_0 25_1 25_2 26_0; do
  printf 'import ensurepip\nensurepip.bootstrap(upgrade=True)\n' > "$cache/get_pip_$version.py"
done
cd "$dest"
git init -q && git add -A  # ansible-test lists the collection's files through git
ansible-test sanity --local --python "$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
  --requirements --color no "$@"
