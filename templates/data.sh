#!/usr/bin/env bash
# Template "data": numpy, pandas and matplotlib from Debian's own packages, so
# that it builds without PyPI and without any network inside the sandbox.
#
# The host resolves the packages the guest lacks against the guest image's own
# dpkg status, downloads them, unpacks them and byte-compiles their Python (same
# Python minor version as the guest) at native speed, and the build copies that
# tree in as one tar: running dpkg and py3compile inside a guest whose CPU may be
# emulated (TCG) takes many minutes. Run from the repository:
#     templates/data.sh        # then: Sandbox(template="data")
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
ember="${EMBER:-.venv/bin/ember}"
packages=(python3-numpy python3-pandas python3-matplotlib)

rootfs=$($python -c 'from ember.images import find_guest_images; from ember.settings import Settings
print(find_guest_images(Settings.from_env()).rootfs)')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work" # apt downloads as user _apt
mkdir -p "$work/debs/partial" "$work/root"
debugfs -R "cat /var/lib/dpkg/status" "$rootfs" >"$work/status" 2>/dev/null

echo "==> downloading the Debian packages the guest lacks"
apt-get -q update >/dev/null # current package lists: stale ones name versions the mirror no longer has
apt-get -q -o Dir::State::status="$work/status" -o Dir::Cache::archives="$work/debs" \
  -o Debug::NoLocking=1 -o APT::Install-Recommends=false install --download-only -y \
  "${packages[@]}" >/dev/null
echo "    $(ls "$work"/debs/*.deb | wc -l) packages, $(du -sh "$work/debs" | cut -f1)"

echo "==> unpacking and byte-compiling them on the host"
for deb in "$work"/debs/*.deb; do
  case "$(basename "$deb")" in
    # Build-time only (pulled in through fonttools -> scipy -> pythran): a compiler,
    # headers and static libraries that importing the three never touches.
    *-dev_* | gcc* | g++* | cpp* | binutils* | libbinutils* | libgprofng* | libctf* | libisl* | \
      libmpc* | libmpfr* | libcc1* | lib[atlu]san* | libubsan* | libitm* | python3-pythran*) continue ;;
    # fonttools' optional heavyweights: matplotlib draws PNGs without them.
    python3-scipy_* | python3-sympy_* | python3-mpmath_* | libboost*) continue ;;
  esac
  dpkg-deb -x "$deb" "$work/root"
done
# What the maintainer scripts would have done that numpy needs: the alternatives
# (BLAS, LAPACK, OpenBLAS), each link to its highest-priority provider.
mkdir "$work/control"
for deb in "$work"/debs/*.deb; do dpkg-deb -e "$deb" "$work/control/$(basename "$deb")"; done
$python - "$work/root" "$work"/control/*/postinst <<'PY'
import os, re, shlex, sys
root, scripts = sys.argv[1], sys.argv[2:]
best = {}
for script in scripts:
    text = open(script).read().replace("\\\n", " ")
    for line in re.findall(r"update-alternatives --install ([^\n;]+)", text):
        words = shlex.split(line)
        if len(words) >= 4 and words[3].isdigit():
            link, _, path, priority = words[:4]
            if os.path.lexists(root + path) and int(priority) > best.get(link, ("", -1))[1]:
                best[link] = (path, int(priority))
for link, (path, _) in best.items():
    target = root + link
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.lexists(target):
        os.unlink(target)
    os.symlink(path, target)
    print(f"    alternative {link} -> {path}")
PY
$python -m compileall -q -j 0 --invalidation-mode unchecked-hash -s "$work/root" -p / \
  "$work/root/usr/lib/python3/dist-packages" >/dev/null || true
tar -C "$work/root" --exclude=./usr/share/doc --exclude=./usr/share/man -cf "$work/data.tar" .
echo "    $(du -sh "$work/data.tar" | cut -f1) to copy in"

$ember template build data --from base \
  --copy "$work/data.tar:/var/tmp/data.tar" \
  --run "tar -xf /var/tmp/data.tar -C / --keep-directory-symlink --no-overwrite-dir && rm /var/tmp/data.tar && ldconfig" \
  --run "python3 -c 'import numpy, pandas, matplotlib; print(numpy.__version__, pandas.__version__, matplotlib.__version__)'" \
  --code "import numpy, pandas, matplotlib; matplotlib.use('agg'); import matplotlib.pyplot"
