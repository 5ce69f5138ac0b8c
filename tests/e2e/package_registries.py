"""Tiny package registries laid out as files, for the test internet to serve (netlab ``files``).

Each writes what the real client fetches, in the layout the real client expects:
a PEP 503 simple index with one wheel, an npm registry document with one tarball,
and a Debian repository (Release, Packages, one .deb) for the guest's suites. Built
here from nothing, so the tests need no package from anywhere.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import io
import json
import subprocess
import tarfile
import tempfile
import zipfile
from pathlib import Path


def publish_wheel(index: Path, name: str, version: str, module_source: str) -> None:
    """``index/<name>/index.html`` linking a pure-Python wheel of one module (the name, with _)."""
    module = name.replace("-", "_")
    dist_info = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": module_source.encode(),
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [f"{path},sha256={_urlsafe_sha256(data)},{len(data)}" for path, data in files.items()]
    files[f"{dist_info}/RECORD"] = "\n".join([*record, f"{dist_info}/RECORD,,", ""]).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)
    filename = f"{module}-{version}-py3-none-any.whl"
    (index / name).mkdir(parents=True)
    (index / name / filename).write_bytes(buffer.getvalue())
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()
    page = f'<!DOCTYPE html><html><body><a href="{filename}#sha256={digest}">{filename}</a></body></html>\n'
    (index / name / "index.html").write_text(page)


def publish_npm_package(site: Path, registry_url: str, name: str, version: str, index_js: str) -> None:
    """``site/<name>/index.json``, the registry's document for ``name``, and its tarball."""
    package_json = json.dumps({"name": name, "version": version, "main": "index.js"}).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tarball:
        for path, data in (("package/package.json", package_json), ("package/index.js", index_js.encode())):
            member = tarfile.TarInfo(path)
            member.size, member.mode = len(data), 0o644
            tarball.addfile(member, io.BytesIO(data))
    data = buffer.getvalue()
    tarball_name = f"{name}-{version}.tgz"
    (site / name / "-").mkdir(parents=True)
    (site / name / "-" / tarball_name).write_bytes(data)
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    document = {
        "name": name,
        "dist-tags": {"latest": version},
        "versions": {
            version: {
                "name": name,
                "version": version,
                "main": "index.js",
                "dist": {
                    "tarball": f"{registry_url.rstrip('/')}/{name}/-/{tarball_name}",
                    "shasum": hashlib.sha1(data).hexdigest(),
                    "integrity": integrity,
                },
            }
        },
    }
    (site / name / "index.json").write_text(json.dumps(document))


def publish_deb(archive: Path, suites: list[str], package: str, version: str, script: str) -> None:
    """A Debian archive at ``archive`` (the mirror's root) whose first suite holds one package
    installing ``script`` as ``/usr/bin/<package>``; the other suites are empty. Unsigned: a
    test trusts it in the guest (a real mirror carries Debian's signature)."""
    control = (
        f"Package: {package}\nVersion: {version}\nArchitecture: all\n"
        f"Maintainer: Ember tests <tests@ember.invalid>\nDescription: {package}, made by a test\n"
    )
    deb = archive / "pool/main" / f"{package}_{version}_all.deb"
    deb.parent.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as scratch:
        build = Path(scratch)
        (build / "DEBIAN").mkdir()
        (build / "DEBIAN/control").write_text(control)
        (build / "usr/bin").mkdir(parents=True)
        (build / "usr/bin" / package).write_text(script)
        (build / "usr/bin" / package).chmod(0o755)
        build.chmod(0o755)
        command = ["dpkg-deb", "--root-owner-group", "--build", build, deb]
        subprocess.run(command, check=True, capture_output=True)
    data = deb.read_bytes()
    stanza = (
        control.replace("Architecture: all\n", "Architecture: all\nInstalled-Size: 1\n")
        + f"Filename: pool/main/{deb.name}\nSize: {len(data)}\nSHA256: {hashlib.sha256(data).hexdigest()}\n"
    )
    for number, suite in enumerate(suites):
        packages = (stanza if number == 0 else "").encode()
        index = archive / "dists" / suite / "main/binary-amd64/Packages"
        index.parent.mkdir(parents=True)
        index.write_bytes(packages)
        release = (
            f"Suite: {suite}\nCodename: {suite}\nDate: {email.utils.formatdate(usegmt=True)}\n"
            "Architectures: amd64 all\nComponents: main\nSHA256:\n"
            f" {hashlib.sha256(packages).hexdigest()} {len(packages)} main/binary-amd64/Packages\n"
        )
        (archive / "dists" / suite / "Release").write_text(release)


def _urlsafe_sha256(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
