# Sourced by the template recipes: Debian packages the guest image lacks, resolved
# against the guest image's own dpkg status, downloaded with this host's apt (its
# mirror, its proxy) and unpacked on the host at native speed. Running dpkg and
# maintainer scripts inside a guest whose CPU may be emulated (TCG) takes many
# minutes; a recipe copies the unpacked tree in as one tar instead.
#
# After sourcing (from the repository's root): $python, $ember, $work (a scratch
# directory, removed on exit), $rootfs (the guest image) and the functions below.
python=${PYTHON:-.venv/bin/python}
ember="${EMBER:-.venv/bin/ember}"

rootfs=$($python -c 'from ember.images import find_guest_images; from ember.settings import Settings
print(find_guest_images(Settings.from_env()).rootfs)')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work" # apt downloads as user _apt
mkdir -p "$work/debs/partial" "$work/root" "$work/control"
debugfs -R "cat /var/lib/dpkg/status" "$rootfs" >"$work/status" 2>/dev/null

# download_debs PACKAGE...: the packages and whatever of their dependencies the guest lacks.
download_debs() {
  echo "==> downloading the Debian packages the guest lacks"
  apt-get -q update >/dev/null # current package lists: stale ones name versions the mirror no longer has
  apt-get -q -o Dir::State::status="$work/status" -o Dir::Cache::archives="$work/debs" \
    -o Debug::NoLocking=1 -o APT::Install-Recommends=false install --download-only -y "$@" >/dev/null
  echo "    $(ls "$work"/debs/*.deb | wc -l) packages, $(du -sh "$work/debs" | cut -f1)"
}

# unpack_debs [GLOB...]: unpack every downloaded package into $work/root but those whose
# file name matches a GLOB, and link the alternatives their maintainer scripts would have.
unpack_debs() {
  echo "==> unpacking them on the host"
  local deb skip
  for deb in "$work"/debs/*.deb; do
    for skip in "$@"; do
      # shellcheck disable=SC2053 # $skip is a glob
      [[ $(basename "$deb") == $skip ]] && continue 2
    done
    dpkg-deb -x "$deb" "$work/root"
    dpkg-deb -e "$deb" "$work/control/$(basename "$deb")"
  done
  # Each alternative links to its highest-priority provider, as update-alternatives would.
  $python - "$work/root" "$work"/control/*/postinst <<'PY'
import os, re, shlex, sys
root, scripts = sys.argv[1], [path for path in sys.argv[2:] if os.path.exists(path)]
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
}

# compile_python DIR...: byte-compile the Python under $work/root/DIR (DIR as the guest sees
# it) with hash-based .pyc files, valid in the guest's read-only layers whatever the mtimes.
# The host's Python must be the guest's minor version.
compile_python() {
  local dir
  for dir in "$@"; do
    $python -m compileall -q -j 0 --invalidation-mode unchecked-hash -s "$work/root" -p / \
      "$work/root$dir" >/dev/null || true
  done
}

# pack_root NAME: $work/NAME.tar.zst of $work/root, without documentation; prints its size.
# Compressed, the copy into the guest is a third and unpacking it costs the guest's CPU a
# little more: a 434 MB tree went in and out in 27 s instead of 33 s, measured under TCG.
pack_root() {
  tar -C "$work/root" --exclude=./usr/share/doc --exclude=./usr/share/man --exclude=./usr/share/locale \
    -cf - . | zstd -q -3 -T0 -o "$work/$1.tar.zst"
  echo "    $(du -sh "$work/$1.tar.zst" | cut -f1) to copy in"
}
