#!/usr/bin/env bash
# Template "data": numpy, pandas and matplotlib from Debian's own packages, so
# that it builds without PyPI and without any network inside the sandbox.
#
# The host resolves the packages the guest lacks against the guest image's own
# dpkg status, downloads them, unpacks them and byte-compiles their Python (same
# Python minor version as the guest) at native speed, and the build copies that
# tree in as one tar (templates/_guest_debs.sh). Run from the repository:
#     templates/data.sh        # then: Sandbox(template="data")
set -euo pipefail
cd "$(dirname "$0")/.."
source templates/_guest_debs.sh

download_debs python3-numpy python3-pandas python3-matplotlib
# Build-time only (pulled in through fonttools -> scipy -> pythran): headers, static
# libraries and a compiler that importing the three never touches; and fonttools'
# optional heavyweights: matplotlib draws PNGs without them.
unpack_debs '*-dev_*' 'gcc*' 'g++*' 'cpp*' 'binutils*' 'libbinutils*' 'libgprofng*' 'libctf*' \
  'libisl*' 'libmpc*' 'libmpfr*' 'libcc1*' 'lib[atlu]san*' 'libubsan*' 'libitm*' 'python3-pythran*' \
  'python3-scipy_*' 'python3-sympy_*' 'python3-mpmath_*' 'libboost*'
compile_python /usr/lib/python3/dist-packages
pack_root data

$ember template build data --from base \
  --copy "$work/data.tar.zst:/var/tmp/data.tar.zst" \
  --run "tar --zstd -xf /var/tmp/data.tar.zst -C / --keep-directory-symlink --no-overwrite-dir && rm /var/tmp/data.tar.zst && ldconfig" \
  --run "python3 -c 'import numpy, pandas, matplotlib; print(numpy.__version__, pandas.__version__, matplotlib.__version__)'" \
  --code "import numpy, pandas, matplotlib; matplotlib.use('agg'); import matplotlib.pyplot"
