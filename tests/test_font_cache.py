"""The font package cache: downloads land under a temporary name and are verified; a damaged cached .deb is
deleted and fetched again; a failure is an error, never a silent switch to other fonts.

The .deb files here are real Debian archives built with ``dpkg-deb --build`` and unpacked with the real
``dpkg -x``. Only the network is replaced: ``apt-get`` and ``apt-cache`` on ``PATH`` are small scripts that
serve the locally built archive and its index entry (size and SHA256), since tests download nothing. The real
mirror was exercised by hand (see the commit that added this test).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from edgefs.data import debian
from edgefs.data import fonts as F

PKG = "fonts-edgefs-test"
DEB = f"{PKG}_1.0_all.deb"

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None or shutil.which("dpkg") is None,
                                reason="needs dpkg-deb and dpkg (a Debian/Ubuntu machine)")


@pytest.fixture()
def good_deb(tmp_path: Path) -> Path:
    root = tmp_path / "build"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {PKG}\nVersion: 1.0\nArchitecture: all\nMaintainer: edgefs <edgefs@example.org>\n"
        "Description: test font package\n")
    font_dir = root / "usr" / "share" / "fonts" / "truetype" / "test"
    font_dir.mkdir(parents=True)
    (font_dir / "Test.ttf").write_bytes(os.urandom(200_000))  # incompressible: truncation hits the data
    for d in (root, root / "DEBIAN"):
        d.chmod(0o755)  # dpkg-deb refuses a control folder that is not 0755
    out = tmp_path / "served" / DEB
    out.parent.mkdir()
    proc = subprocess.run(["dpkg-deb", "--build", "-Zgzip", str(root), str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out


def fake_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, served: Path | None, index: bool) -> Path:
    """``apt-get download`` copies ``served`` into the current folder (or fails: no network when None);
    ``apt-cache show`` prints the index entry of ``served`` when ``index``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "apt-get.log"
    get = f'echo "$@" >> {log}\n' + (f'cp {served} .\n' if served else
                                      'echo "E: Failed to fetch: no network" >&2\nexit 100\n')
    (bin_dir / "apt-get").write_text("#!/bin/sh\n" + get)
    show = ""
    if index and served is not None:
        digest = hashlib.sha256(served.read_bytes()).hexdigest()
        show = (f'echo "Package: {PKG}"\necho "Filename: pool/main/f/{PKG}/{DEB}"\n'
                f'echo "Size: {served.stat().st_size}"\necho "SHA256: {digest}"\n')
    (bin_dir / "apt-cache").write_text("#!/bin/sh\n" + show)
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def truncated_cache(tmp_path: Path, good: Path) -> Path:
    cache = tmp_path / "cache"
    (cache / "debs").mkdir(parents=True)
    data = good.read_bytes()
    (cache / "debs" / DEB).write_bytes(data[: len(data) // 2])  # what Ctrl-C during a download left
    return cache


@pytest.mark.parametrize("index", [True, False], ids=["index", "no-index"])
def test_truncated_cached_deb_is_deleted_and_fetched_again(good_deb: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch, index: bool) -> None:
    cache = truncated_cache(tmp_path, good_deb)
    apt_log = fake_network(tmp_path, monkeypatch, good_deb, index)
    lines: list[str] = []
    [(name, root)] = F.fetch_font_packages(cache, [PKG], log=lines.append)
    text = "\n".join(lines)
    if index:  # caught by size before unpacking
        assert f"{cache / 'debs' / DEB} is damaged or incomplete ({good_deb.stat().st_size // 2} bytes, the " \
               f"package index says {good_deb.stat().st_size}); deleting it and downloading it again" in text
    else:  # caught by dpkg
        assert f"{cache / 'debs' / DEB} does not unpack (" in text and "deleting it and downloading it again" in text
    assert apt_log.read_text().split() == ["download", PKG]
    assert (cache / "debs" / DEB).read_bytes() == good_deb.read_bytes()
    assert name == PKG and [p.name for p in F.package_font_files(root)] == ["Test.ttf"]
    assert sorted(p.name for p in (cache / "debs").iterdir()) == [DEB]  # no partial or temporary files left
    # The next run uses the cache and fetches nothing.
    apt_log.unlink()
    assert F.fetch_font_packages(cache, [PKG], log=lines.append) == [(PKG, root)]
    assert not apt_log.exists()


def test_damaged_cache_without_network_is_an_error_naming_the_cause(good_deb: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    cache = truncated_cache(tmp_path, good_deb)
    fake_network(tmp_path, monkeypatch, None, False)
    lines: list[str] = []
    with pytest.raises(F.FetchError, match=f"'apt-get download {PKG}' failed: E: Failed to fetch: no network"):
        F.fetch_font_packages(cache, [PKG], log=lines.append)
    assert any("does not unpack" in line and "deleting it" in line for line in lines)
    assert list((cache / "debs").iterdir()) == []  # the damaged file is gone; the next run fetches it
    assert not (cache / "pkgs" / PKG / ".unpacked").exists()


def test_a_download_that_does_not_match_the_index_is_not_kept(good_deb: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    fake_network(tmp_path, monkeypatch, good_deb, True)  # the index describes the good file
    good_deb.write_bytes(good_deb.read_bytes()[:-100])  # ...but the mirror serves a short one
    with pytest.raises(F.FetchError, match=r"does not match the package index \(\d+ bytes, the package index says"):
        F.fetch_font_packages(cache, [PKG], log=lambda _: None)
    assert list((cache / "debs").iterdir()) == []


def test_domain_fetch_shares_the_checks(good_deb: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``debian.fetch`` (colour domains) and the font fetch are one implementation: size check, refetch."""
    cache = truncated_cache(tmp_path, good_deb)
    apt_log = fake_network(tmp_path, monkeypatch, good_deb, True)
    apt_cache = tmp_path / "bin" / "apt-cache"
    apt_cache.write_text(apt_cache.read_text() + 'echo "Version: 1.0"\n')
    lines: list[str] = []
    pkg = debian.fetch(PKG, cache, log=lines.append)
    assert f"{cache / 'debs' / DEB} is damaged or incomplete ({good_deb.stat().st_size // 2} bytes" in "\n".join(lines)
    assert apt_log.read_text().split() == ["download", f"{PKG}=1.0"]
    assert pkg.sha256 == hashlib.sha256(good_deb.read_bytes()).hexdigest() and pkg.version == "1.0"
    assert pkg.root == cache / "pkgs" / f"{PKG}_1.0"
    assert [p.name for p in F.package_font_files(pkg.root)] == ["Test.ttf"]
    assert sorted(p.name for p in (cache / "debs").iterdir()) == [DEB]


def test_a_fresh_download_that_does_not_unpack_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served = tmp_path / "served" / DEB
    served.parent.mkdir()
    served.write_bytes(b"not a debian archive")
    apt_log = fake_network(tmp_path, monkeypatch, served, False)
    with pytest.raises(F.FetchError, match=rf"'dpkg -x {DEB}' failed: .*The file was downloaded just now"):
        F.fetch_font_packages(tmp_path / "cache", [PKG], log=lambda _: None)
    assert apt_log.read_text().split() == ["download", PKG]  # downloaded once, not again
    assert not (tmp_path / "cache" / "pkgs" / PKG).exists()
