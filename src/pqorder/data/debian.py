"""Offline data from Debian packages, unpacked into the cache without installing them.

``apt-get download`` fetches the .deb (no root needed once the package lists exist) and
``dpkg-deb -x`` unpacks it into a temporary folder; callers copy the files they need into
the cache. A package installed system-wide is used in place instead.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pqorder.errors import AssetError


def _apt_download(package: str, folder: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            ["apt-get", "download", package], cwd=folder, capture_output=True, text=True
        )
    except FileNotFoundError as exc:
        raise AssetError(
            f"apt-get is not available: this data comes from the Debian package {package}"
        ) from exc


def _download(package: str, folder: str) -> Path:
    """The package's .deb in ``folder`` (one ``apt-get update`` retry when it is unknown)."""
    if _apt_download(package, folder).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False)
        result = _apt_download(package, folder)
        if result.returncode != 0:
            why = (result.stderr or "apt-get failed").strip().splitlines()[-1]
            raise AssetError(
                f"cannot download the Debian package {package}: {why} "
                "(run `apt-get update` as root, then `pqorder prepare`)"
            )
    return next(Path(folder).glob("*.deb"))


def fetch_package_files(package: str, member: str, names: Sequence[str], target: Path) -> Path:
    """Copy ``names`` from the folder ending in ``member`` inside ``package`` to ``target``.

    Returns ``target`` at once when it already holds every file; writes atomically.
    """
    if all((target / n).exists() for n in names):
        return target
    with tempfile.TemporaryDirectory() as tmp:
        deb = _download(package, tmp)
        subprocess.run(["dpkg-deb", "-x", str(deb), f"{tmp}/x"], check=True)
        found = [p for p in Path(tmp, "x").rglob(names[0]) if p.parent.as_posix().endswith(member)]
        if not found:
            raise AssetError(f"{deb.name} does not contain {member}/{names[0]}")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        for name in names:
            shutil.copy(found[0].parent / name, staging / name)
        staging.rename(target)
    return target


def package_folder(
    system: Path, package: str, member: str, names: Sequence[str], cache: Path
) -> Path:
    """The system-wide install of the files if present, else the cache (fetched on demand)."""
    if all((system / n).exists() for n in names):
        return system
    return fetch_package_files(package, member, names, cache)
