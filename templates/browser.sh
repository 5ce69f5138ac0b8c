#!/usr/bin/env bash
# Template "browser": Debian's headless Chromium driven by Playwright for Python,
# with a browser and a page already open in the REPL (templates/ember_browser.py):
#     sb = Sandbox(template="browser")
#     sb.run_code("page.goto(url); screenshot(page)")  # a PNG result
#
# Chromium comes from Debian (chromium-headless-shell, the packages the guest lacks,
# unpacked on the host: templates/_guest_debs.sh); Playwright and its driver from
# the host's package index, as a wheel for the guest's Python, unpacked on the host
# too. Playwright's own browser download never happens, and the sandbox needs no
# network. Its sandboxes have 2 GiB of memory (MEMORY_MB; a template's sandboxes
# keep its size, so it boots its own VM rather than start from base), of which an
# idle browser uses ~250 MiB. Run from the repository:
#     templates/browser.sh     # then: Sandbox(template="browser")
set -euo pipefail
cd "$(dirname "$0")/.."
source templates/_guest_debs.sh
memory_mb=${MEMORY_MB:-2048}

download_debs chromium-headless-shell
# Desktop helpers chromium-common asks for, never called headless; a Vulkan debugging layer.
unpack_debs 'x11-utils_*' 'xdg-utils_*'
rm -f "$work/root/usr/lib/chromium/libVkLayer_khronos_validation.so"

# The guest's Python minor version, from its python3 package ("3.11.2-1+b1" -> 3.11).
guest_python=$(awk '/^Package: python3$/ { found = 1 } found && /^Version:/ { print $2; exit }' "$work/status" |
  cut -d. -f1,2)
site_packages=/usr/local/lib/python$guest_python/dist-packages
echo "==> Playwright for Python $guest_python from the host's package index"
$python -m pip install -q --disable-pip-version-check --no-compile --target "$work/root$site_packages" \
  --only-binary=:all: --platform manylinux2014_x86_64 --implementation cp --python-version "$guest_python" \
  playwright
rm -rf "${work:?}/root$site_packages/bin" # console scripts for the host's Python; the guest imports it
cp templates/ember_browser.py "$work/root$site_packages/"
compile_python "$site_packages"
pack_root browser

# The page cache of the unpacking is dropped before the snapshot: the template's memory
# keeps what the running browser touched, not the whole tar.
$ember template build browser --memory "$memory_mb" \
  --copy "$work/browser.tar.zst:/var/tmp/browser.tar.zst" \
  --run "tar --zstd -xf /var/tmp/browser.tar.zst -C / --keep-directory-symlink --no-overwrite-dir && rm /var/tmp/browser.tar.zst && ldconfig" \
  --run "chromium-headless-shell --version && sync && echo 3 >/proc/sys/vm/drop_caches" \
  --code "from playwright.sync_api import sync_playwright
from ember_browser import PNG, launch, new_page, screenshot
playwright = sync_playwright().start()
browser = launch(playwright)
page = new_page(browser)
page.set_content('<p>ready</p>')
page.screenshot()
print(playwright.chromium.name, browser.version)"
