#!/usr/bin/env bash
# Template "data": numpy, pandas and matplotlib from Debian's own packages, so
# that it builds without PyPI and without any network inside the sandbox. The
# host downloads the .debs the guest lacks (resolved against the guest image's
# own dpkg status, so nothing already installed is fetched), and the build
# copies them in and installs them with dpkg. Run from the repository:
#     templates/data.sh        # then: Sandbox(template="data")
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
ember="${EMBER:-.venv/bin/ember}"

rootfs=$($python -c 'from ember.images import find_guest_images; from ember.settings import Settings
print(find_guest_images(Settings.from_env()).rootfs)')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"  # apt downloads as user _apt
mkdir -p "$work/debs/partial"
debugfs -R "cat /var/lib/dpkg/status" "$rootfs" >"$work/status" 2>/dev/null

echo "==> downloading the Debian packages the guest lacks"
apt-get -q -o Dir::State::status="$work/status" -o Dir::Cache::archives="$work/debs" \
  -o Debug::NoLocking=1 install --download-only -y --no-install-recommends \
  python3-numpy python3-pandas python3-matplotlib >/dev/null
rm -rf "$work/debs/partial" "$work/debs/lock"
echo "    $(ls "$work/debs" | wc -l) packages, $(du -sh "$work/debs" | cut -f1)"

$ember template build data --from base \
  --copy "$work/debs:/tmp/debs" \
  --run "dpkg -i /tmp/debs/*.deb >/dev/null && rm -rf /tmp/debs" \
  --run "python3 -c 'import numpy, pandas, matplotlib; print(numpy.__version__, pandas.__version__, matplotlib.__version__)'"
