"""Fetching a Debian package whose version has an epoch.

``apt-get download`` names the file with the epoch URL-quoted (``kdegames-card-data-kf5_4%3a22.12.3-1_all.deb``)
while the archive's ``Filename`` has no epoch (``kdegames-card-data-kf5_22.12.3-1_all.deb``); the download is the
indexed package all the same. The package names, versions and ``Filename`` paths below are the Debian 12 (bookworm)
index's. The .deb files are real archives built with ``dpkg-deb --build`` and unpacked with the real ``dpkg -x``; only
the network is replaced: ``apt-get`` and ``apt-cache`` on ``PATH`` are small scripts that write the archive under the
name apt-get gives it and print its index entry (size and SHA256 of the local archive), so nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from edgefs.data import debian

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None or shutil.which("dpkg") is None,
                                reason="needs dpkg-deb and dpkg (a Debian/Ubuntu machine)")

# (package, version, Filename) as `apt-cache show --no-all-versions` gives them on bookworm.
EPOCH_PACKAGES = [
    ("kdegames-card-data-kf5", "4:22.12.3-1", "pool/main/libk/libkdegames/kdegames-card-data-kf5_22.12.3-1_all.deb"),
    ("kgeography-data", "4:22.12.3-1", "pool/main/k/kgeography/kgeography-data_22.12.3-1_all.deb"),
    ("breeze-icon-theme", "4:5.103.0-1", "pool/main/b/breeze-icons/breeze-icon-theme_5.103.0-1_all.deb"),
    ("openclipart-png", "1:0.18+dfsg-19", "pool/main/o/openclipart/openclipart-png_0.18+dfsg-19_all.deb"),
    ("oxygen-icon-theme", "5:5.103.0-1", "pool/main/o/oxygen-icons5/oxygen-icon-theme_5.103.0-1_all.deb"),
]
CARDS = EPOCH_PACKAGES[0]
CARDS_APT_NAME = "kdegames-card-data-kf5_4%3a22.12.3-1_all.deb"  # what apt-get download writes


def apt_file_name(package: str, version: str, arch: str = "all") -> str:
    return f"{package}_{version.replace(':', '%3a')}_{arch}.deb"


def build_deb(tmp_path: Path, package: str, version: str) -> Path:
    """A real .deb of ``package`` ``version`` with a machine-readable copyright file."""
    root = tmp_path / "build" / package
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: all\nMaintainer: edgefs <edgefs@example.org>\n"
        "Description: test package\n")
    doc = root / "usr" / "share" / "doc" / package
    doc.mkdir(parents=True)
    (doc / "copyright").write_text("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
                                   "Files: *\nLicense: LGPL-2.1+\n")
    (root / "usr" / "share" / package).mkdir(parents=True)
    (root / "usr" / "share" / package / "data.bin").write_bytes(os.urandom(20_000))
    for d in (root, root / "DEBIAN"):
        d.chmod(0o755)
    out = tmp_path / "served" / f"{package}.deb"
    out.parent.mkdir(exist_ok=True)
    proc = subprocess.run(["dpkg-deb", "--build", "-Zgzip", str(root), str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out


def fake_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, package: str, version: str, filename: str,
             served: Path, written_as: str, indexed: Path | None = None) -> Path:
    """``apt-get download`` copies ``served`` into the current folder as ``written_as``; ``apt-cache show``
    prints the index entry: ``package``, ``version``, ``filename`` and the size and SHA256 of ``indexed``
    (default ``served``). Returns the log of apt-get's arguments."""
    indexed = indexed or served
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "apt-get.log"
    (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "$@" >> {log}\ncp {served} "./{written_as}"\n')
    digest = hashlib.sha256(indexed.read_bytes()).hexdigest()
    (bin_dir / "apt-cache").write_text(
        "#!/bin/sh\ncat <<'EOF'\n"
        f"Package: {package}\nSource: x\nVersion: {version}\nArchitecture: all\n"
        f"Filename: {filename}\nSize: {indexed.stat().st_size}\nSHA256: {digest}\n\n"
        "EOF\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


@pytest.mark.parametrize(("package", "version", "filename"), EPOCH_PACKAGES, ids=[p[0] for p in EPOCH_PACKAGES])
def test_a_version_with_an_epoch_is_fetched_verified_and_cached(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, package: str, version: str, filename: str) -> None:
    served = build_deb(tmp_path, package, version)
    log = fake_apt(tmp_path, monkeypatch, package, version, filename, served, apt_file_name(package, version))
    cache = tmp_path / "cache"
    lines: list[str] = []
    pkg = debian.fetch(package, cache, log=lines.append)
    assert log.read_text().split() == ["download", f"{package}={version}"]
    assert pkg.name == package and pkg.version == version and pkg.licence == "LGPL-2.1+"
    assert pkg.sha256 == hashlib.sha256(served.read_bytes()).hexdigest()
    assert (pkg.root / "usr" / "share" / package / "data.bin").is_file()
    # Kept under the index's name, so the next run finds it without downloading.
    assert sorted(p.name for p in (cache / "debs").iterdir()) == [Path(filename).name]
    log.unlink()
    assert debian.fetch(package, cache, log=lines.append) == pkg
    assert not log.exists()


@pytest.mark.parametrize("written_as", [
    "kdegames-card-data-kf5_5%3a22.12.3-1_all.deb",  # another epoch
    "kdegames-card-data-kf5_22.12.3-1_all.deb",  # no epoch: not version 4:22.12.3-1
    "kdegames-card-data-kf5_4%3a22.12.2-1_all.deb",  # another version
    "kdegames-card-data-kf5_4%3a22.12.3-1_amd64.deb",  # another architecture
    "kdegames-card-data_4%3a22.12.3-1_all.deb",  # another package
    "kdegames-card-data-kf5.deb",  # not PACKAGE_VERSION_ARCH
], ids=["epoch", "no-epoch", "version", "arch", "package", "bare"])
def test_a_download_of_another_package_or_version_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, written_as: str) -> None:
    package, version, filename = CARDS
    served = build_deb(tmp_path, package, version)
    fake_apt(tmp_path, monkeypatch, package, version, filename, served, written_as)
    cache = tmp_path / "cache"
    with pytest.raises(debian.PackageFetchError,
                       match=rf"the downloaded {written_as} does not match the package index \(apt-get wrote "
                             rf"{written_as}.*kdegames-card-data-kf5_22.12.3-1_all.deb"):
        debian.fetch(package, cache, log=lambda _: None)
    assert list((cache / "debs").iterdir()) == []  # nothing kept, no temporary folder left


def test_the_epoch_named_download_is_still_checked_against_size_and_sha256(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package, version, filename = CARDS
    served = build_deb(tmp_path, package, version)
    (tmp_path / "other").mkdir()
    indexed = build_deb(tmp_path / "other", package, version)  # same size (same tree shape), other bytes
    fake_apt(tmp_path, monkeypatch, package, version, filename, served, CARDS_APT_NAME, indexed=indexed)
    cache = tmp_path / "cache"
    with pytest.raises(debian.PackageFetchError,
                       match=rf"the downloaded {CARDS_APT_NAME} does not match the package index \("
                             r"(its SHA256 differs from the package index|\d+ bytes, the package index says \d+)\)"):
        debian.fetch(package, cache, log=lambda _: None)
    assert list((cache / "debs").iterdir()) == []


@pytest.mark.parametrize(("filename", "identity"), [
    (CARDS_APT_NAME, ("kdegames-card-data-kf5", "4:22.12.3-1", "all")),
    ("kdegames-card-data-kf5_22.12.3-1_all.deb", ("kdegames-card-data-kf5", "22.12.3-1", "all")),
    ("openclipart-png_1%3a0.18+dfsg-19_all.deb", ("openclipart-png", "1:0.18+dfsg-19", "all")),
    ("famfamfam-flag-png_0.1-3_all.deb", ("famfamfam-flag-png", "0.1-3", "all")),
    ("kdegames-card-data-kf5.deb", None),
    ("kdegames-card-data-kf5_4%3a22.12.3-1_all.tar", None),
])
def test_deb_identity_reads_apt_and_archive_file_names(filename: str, identity: tuple[str, str, str] | None) -> None:
    assert debian.deb_identity(filename) == identity
