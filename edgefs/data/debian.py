"""Fetch Debian (and npm) packages into a local cache, verified, never installed system-wide.

A Debian package is downloaded with ``apt-get download`` into a temporary folder
inside the cache, checked against the size and SHA256 that ``apt-cache show``
states for that version, then renamed into ``CACHE/debs/``; only complete,
verified files ever carry their final name. A cached .deb that no longer matches
is deleted and fetched again; one that matches but does not unpack (damage the
index cannot see) is deleted and fetched once more. It is unpacked with ``dpkg -x``
into a temporary folder renamed to ``CACHE/pkgs/<name>_<version>/`` when complete
(a ``.unpacked`` marker records the verified digest). :func:`unpack_deb` is that
step on its own, for callers with their own layout (the glyph benchmark's fonts).
npm packages go the same way with ``npm pack`` and the registry's
``dist.integrity`` (SHA-512) instead of apt's SHA256.

Every failure raises :class:`PackageFetchError` with what failed and what to do.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from edgefs.errors import DataError
from edgefs.fileio import replacing_dir


class PackageFetchError(DataError):
    """A package could not be downloaded, verified or unpacked."""


class _DpkgFailed(PackageFetchError):
    """``dpkg -x`` rejected the archive."""


@dataclass(frozen=True)
class Package:
    """An unpacked, verified package.

    Attributes:
        name: package name (``npm:flag-icons`` for npm packages).
        version: exact version fetched.
        licence: licence(s) as the package states them.
        sha256: SHA256 of the .deb or .tgz that was unpacked.
        root: folder the package was unpacked into.
    """

    name: str
    version: str
    licence: str
    sha256: str
    root: Path

    def record(self) -> dict[str, str]:
        """The manifest entry: name, version, licence, sha256."""
        return {"name": self.name, "version": self.version, "licence": self.licence, "sha256": self.sha256}


Fetcher = Callable[[str], Package]
"""Package name (``npm:NAME`` for npm) -> unpacked :class:`Package`."""


def default_cache() -> Path:
    """``$EDGEFS_CACHE`` when set, else ``~/.cache/edgefs``."""
    root = os.environ.get("EDGEFS_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "edgefs"


def fetch(name: str, cache: Path | None = None, log: Callable[[str], None] = print) -> Package:
    """Fetch and unpack ``name`` (a Debian package, or ``npm:NAME[@VERSION]``) into ``cache``."""
    cache = Path(cache) if cache else default_cache()
    if name.startswith("npm:"):
        return fetch_npm(name[4:], cache, log)
    return fetch_deb(name, cache, log)


def _need(tool: str, hint: str) -> None:
    if shutil.which(tool) is None:
        raise PackageFetchError(f"'{tool}' is not available: {hint}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def apt_record(name: str, required: bool = True) -> dict[str, str] | None:
    """The candidate version's fields from ``apt-cache show`` (Version, Size, SHA256, Filename, ...).

    When the index does not know the package (or ``apt-cache`` is missing) this raises, or
    returns None when not ``required``: the download then goes unverified, and a file that
    does not unpack is the only damage caught.
    """
    if not required and shutil.which("apt-cache") is None:
        return None
    _need("apt-cache", "domains are built from Debian packages; use a Debian or Ubuntu machine")
    proc = subprocess.run(["apt-cache", "show", "--no-all-versions", name], capture_output=True, text=True)
    fields: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        if not line.strip() and fields:
            break  # the first stanza is the candidate
        m = re.match(r"^([A-Za-z0-9-]+): (.*)$", line)
        if m and m.group(1) not in fields:
            fields[m.group(1)] = m.group(2).strip()
    if "SHA256" in fields:
        fields["SHA256"] = fields["SHA256"].lower()
    wanted = ("Version", "SHA256", "Filename") if required else ("SHA256", "Filename")
    if proc.returncode == 0 and all(k in fields for k in wanted):
        return fields
    if not required:
        return None
    raise PackageFetchError(
        f"Debian package {name!r} is not known to apt on this machine "
        f"({(proc.stderr or 'no Version/SHA256/Filename in apt-cache show').strip().splitlines()[-1]}); "
        "run 'apt-get update' (with the main archive in /etc/apt/sources.list) and retry")


def fetch_deb(name: str, cache: Path, log: Callable[[str], None] = print) -> Package:
    """Download (or reuse), verify and unpack one Debian package; see the module docstring."""
    fields = apt_record(name)
    assert fields is not None  # required=True raises instead
    version = fields["Version"]
    target = cache / "pkgs" / f"{name}_{version}"
    unpack_deb(name, cache / "debs", fields, target, log)
    return Package(name, version, deb_licence(target, name), fields["SHA256"], target)


def unpack_deb(name: str, debs: Path, fields: dict[str, str] | None, target: Path,
               log: Callable[[str], None] = print) -> Path:
    """Make sure ``target`` holds the unpacked ``name``; returns the verified .deb in ``debs``.

    ``fields`` is the package index entry (:func:`apt_record`), or None when there is none.
    The .deb is the cached file the index names when it matches the index's size and SHA256
    (without an index: the newest cached ``name_*.deb``), else downloaded into a temporary
    folder, verified and renamed. A cached .deb that fails the check is deleted; one that
    does not unpack (damage the index cannot see, or no index) is deleted and fetched once
    more. A .deb that was just downloaded and still does not unpack is an error.
    """
    _need("apt-get", "install apt or use a Debian/Ubuntu machine")
    _need("dpkg", "install dpkg or use a Debian/Ubuntu machine")
    debs.mkdir(parents=True, exist_ok=True)
    deb = _cached_deb(name, debs, fields, log)
    fresh = deb is None
    if deb is None:
        deb = _download_deb(name, debs, fields, log)
    problem = _try_unpack(deb, target, fields)
    if problem and not fresh:
        log(f"  {deb} does not unpack ({problem}); deleting it and downloading it again")
        deb.unlink(missing_ok=True)
        deb = _download_deb(name, debs, fields, log)
        problem = _try_unpack(deb, target, fields)
    if problem:
        raise PackageFetchError(
            f"'dpkg -x {deb.name}' failed: {problem}. The file was downloaded just now; "
            f"check the disk space in {debs} and the package mirror ('apt-get update')")
    return deb


def _mismatch(deb: Path, fields: dict[str, str]) -> str:
    """Why ``deb`` is not the indexed file ("" when size (if indexed) and SHA256 match)."""
    size, want = deb.stat().st_size, fields.get("Size", "")
    if want.isdigit() and size != int(want):
        return f"{size} bytes, the package index says {want}"
    if _sha256(deb) != fields["SHA256"]:
        return "its SHA256 differs from the package index"
    return ""


def _cached_deb(name: str, debs: Path, fields: dict[str, str] | None, log: Callable[[str], None]) -> Path | None:
    """The cached .deb to use, or None; a cached indexed file that fails the check is deleted."""
    if fields is None:
        found = sorted(debs.glob(f"{name}_*.deb"))
        return found[-1] if found else None
    deb = debs / Path(fields["Filename"]).name
    if not deb.exists():
        return None
    why = _mismatch(deb, fields)
    if why:
        log(f"  {deb} is damaged or incomplete ({why}); deleting it and downloading it again")
        deb.unlink()
        return None
    return deb


def deb_identity(filename: str) -> tuple[str, str, str] | None:
    """``(package, version, architecture)`` of a .deb file name, or None when it is not ``P_V_A.deb``.

    ``apt-get download`` writes the version's epoch into the name URL-quoted
    (``kdegames-card-data-kf5_4%3a22.12.3-1_all.deb`` for version ``4:22.12.3-1``); the
    archive's ``Filename`` leaves the epoch out (``kdegames-card-data-kf5_22.12.3-1_all.deb``).
    Both give their parts unquoted here. None of the three parts can hold ``_``.
    """
    if not filename.endswith(".deb"):
        return None
    parts = filename[: -len(".deb")].split("_")
    if len(parts) != 3 or not all(parts):
        return None
    package, version, arch = (unquote(part) for part in parts)
    return package, version, arch


def _without_epoch(version: str) -> str:
    """``4:22.12.3-1`` -> ``22.12.3-1``; a version without an epoch as it is."""
    return re.sub(r"^[0-9]+:", "", version)


def _not_indexed(filename: str, name: str, fields: dict[str, str]) -> str:
    """Why the downloaded ``filename`` is not the package the index entry describes ("" when it is).

    Package, version (epoch included) and architecture from the file name must be ``name`` and the
    entry's ``Version`` and ``Architecture``; where the entry lacks one, the ``Filename``'s part
    stands in (its version has no epoch, so the epoch is then left out of the comparison).
    """
    got = deb_identity(filename)
    indexed_name = Path(fields["Filename"]).name
    if got is None:
        return f"apt-get wrote {filename}, not a PACKAGE_VERSION_ARCH.deb name; the index names {indexed_name}"
    indexed = deb_identity(indexed_name)
    package, version, arch = got
    if "Version" in fields:
        want_version, have_version = fields["Version"], version
    elif indexed is not None:
        want_version, have_version = indexed[1], _without_epoch(version)
    else:
        want_version = have_version = ""  # nothing to compare with: size and SHA256 still decide
    want_arch = fields.get("Architecture") or (indexed[2] if indexed else arch)
    if (package, have_version, arch) != (name, want_version, want_arch):
        return (f"apt-get wrote {filename} (package {package}, version {version}, architecture {arch}), "
                f"the index names {indexed_name} (package {name}, version {fields.get('Version', want_version)}, "
                f"architecture {want_arch})")
    return ""


def _download_deb(name: str, debs: Path, fields: dict[str, str] | None, log: Callable[[str], None]) -> Path:
    """``apt-get download`` into a temporary folder; verified against the index, then renamed into ``debs``.

    The download must be the indexed package (name, version with its epoch, architecture: see
    :func:`deb_identity`) with the indexed size and SHA256; it is kept under the index's file name.
    """
    spec = f"{name}={fields['Version']}" if fields and "Version" in fields else name
    with tempfile.TemporaryDirectory(prefix=".download-", dir=debs) as tmp:
        proc = subprocess.run(["apt-get", "download", spec], cwd=tmp, capture_output=True, text=True)
        got = sorted(Path(tmp).glob("*.deb"))
        if proc.returncode != 0 or not got:
            err = (proc.stderr or proc.stdout).strip().splitlines()
            raise PackageFetchError(
                f"'apt-get download {spec}' failed: {err[-1] if err else 'no .deb written'}; "
                "check the network and apt sources ('apt-get update'), then retry")
        deb = got[-1]
        final = debs / deb.name
        if fields is not None:
            why = _not_indexed(deb.name, name, fields) or _mismatch(deb, fields)
            if why:
                raise PackageFetchError(f"the downloaded {deb.name} does not match the package index ({why}); "
                                        "run 'apt-get update' and try again")
            final = debs / Path(fields["Filename"]).name  # the name _cached_deb looks for
        os.replace(deb, final)  # same file system: the complete, verified file appears at once
    log(f"  {name}: downloaded {final.stat().st_size / 1e6:.1f} MB")
    return final


def _try_unpack(deb: Path, target: Path, fields: dict[str, str] | None) -> str:
    """Unpack ``deb`` into ``target`` (skipped when already done); dpkg's complaint, or "" on success."""
    try:
        _unpack(target, fields["SHA256"] if fields else _sha256(deb), lambda tmp: _dpkg_x(deb, tmp))
    except _DpkgFailed as e:
        return str(e)
    return ""


def _dpkg_x(deb: Path, dest: Path) -> None:
    proc = subprocess.run(["dpkg", "-x", str(deb), str(dest)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise _DpkgFailed((proc.stderr or proc.stdout).strip()[-300:] or f"exit status {proc.returncode}")


def _unpack(target: Path, digest: str, unpack: Callable[[Path], None]) -> None:
    """Unpack into a temporary sibling of ``target`` and rename it when complete."""
    marker = target / ".unpacked"
    if marker.exists() and marker.read_text().strip() == digest:
        return
    with replacing_dir(target) as tmp:
        unpack(tmp)
        (tmp / ".unpacked").write_text(digest + "\n")


def deb_licence(root: Path, name: str) -> str:
    """Licence names from the package's machine-readable ``copyright`` file (in order, unique)."""
    path = root / "usr" / "share" / "doc" / name / "copyright"
    if not path.exists():
        return "unknown (no copyright file)"
    names: list[str] = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("License:"):
            lic = line.split(":", 1)[1].strip()
            if lic and lic not in names:
                names.append(lic)
    if names:
        return ", ".join(names)
    text = path.read_text(errors="replace").lower()
    if "public domain" in text:  # not machine-readable, e.g. openclipart: a public-domain dedication
        return "public-domain (per /usr/share/doc/" + name + "/copyright)"
    return "see /usr/share/doc/" + name + "/copyright"


def fetch_npm(spec: str, cache: Path, log: Callable[[str], None] = print) -> Package:
    """``npm pack`` one package, verify it against the registry's SHA-512, unpack it."""
    _need("npm", "install Node.js and npm (Debian: apt-get install npm)")
    proc = subprocess.run(["npm", "view", spec, "name", "version", "license", "dist.integrity", "--json"],
                          capture_output=True, text=True, timeout=120)
    try:
        info = json.loads(proc.stdout)
    except json.JSONDecodeError:
        info = None
    if proc.returncode != 0 or not isinstance(info, dict) or "dist.integrity" not in info:
        err = [line for line in (proc.stderr or proc.stdout).strip().splitlines()
               if line.strip() and "complete log" not in line and "_logs" not in line]
        raise PackageFetchError(f"'npm view {spec}' failed: {err[0] if err else 'no answer'}; "
                                "check the package name and that the npm registry is reachable, then retry")
    name, version, integrity = info["name"], info["version"], info["dist.integrity"]
    algo, _, want = integrity.partition("-")
    if algo != "sha512":
        raise PackageFetchError(f"npm {name}@{version}: unsupported integrity {algo!r}")
    npm_dir = cache / "npm"
    npm_dir.mkdir(parents=True, exist_ok=True)
    tgz = npm_dir / f"{name.replace('/', '_')}-{version}.tgz"

    def digest_ok(path: Path) -> bool:
        return base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode() == want

    if tgz.exists() and not digest_ok(tgz):
        log(f"  npm {name}: cached {tgz.name} does not match the registry's SHA-512; fetching it again")
        tgz.unlink()
    if not tgz.exists():
        with tempfile.TemporaryDirectory(prefix=".download-", dir=npm_dir) as tmp:
            p = subprocess.run(["npm", "pack", f"{name}@{version}", "--pack-destination", tmp],
                               capture_output=True, text=True, timeout=300)
            got = sorted(Path(tmp).glob("*.tgz"))
            if p.returncode != 0 or not got or not digest_ok(got[0]):
                raise PackageFetchError(f"'npm pack {name}@{version}' failed or gave a file that does not match "
                                        "the registry's SHA-512; check the network and retry")
            os.replace(got[0], tgz)
        log(f"  npm {name}@{version}: downloaded {tgz.stat().st_size / 1e6:.1f} MB")
    sha = _sha256(tgz)

    def untar(dest: Path) -> None:
        try:
            with tarfile.open(tgz) as tf:
                tf.extractall(dest, filter="data")
        except (tarfile.TarError, OSError) as e:
            raise PackageFetchError(f"unpacking {tgz.name} failed: {e}") from e

    target = cache / "pkgs" / f"npm_{name.replace('/', '_')}_{version}"
    _unpack(target, sha, untar)
    lic = info.get("license") or "unknown"
    return Package(f"npm:{name}", version, str(lic), sha, target)
