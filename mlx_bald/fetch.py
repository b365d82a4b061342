"""Fetch registry packages (PyPI wheels/sdists with pip, Debian .debs with apt-get, npm
tarballs from the npm registry) into the cache and unpack them. The machine's configured
index, mirror or registry applies."""
from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from mlx_bald.errors import MlxBaldError
from mlx_bald.fsutil import atomic_dir
from mlx_bald.paths import downloads_dir


class FetchError(MlxBaldError):
    pass


def _log(msg: str) -> None:
    print(f"mlx-bald: {msg}", file=sys.stderr, flush=True)


def pip_fetch(name: str, version: str, sdist: bool = False) -> Path:
    """Download ``name==version`` (no deps) once; return the archive path in the cache."""
    dest = downloads_dir() / "pypi" / f"{name}-{version}{'-sdist' if sdist else ''}"
    done = list(dest.glob("[!.]*")) if dest.exists() else []  # [!.]: not atomic_dir's marker
    if done:
        return done[0]
    _log(f"fetching {name}=={version} from PyPI ...")
    if sdist:  # `pip download` of an sdist builds its metadata: minutes of build tools on a fresh machine
        try:
            with atomic_dir(dest, overwrite=True) as tmp:
                _download_sdist(name, version, tmp)
            return next(dest.glob("[!.]*"))
        except (OSError, ValueError) as e:
            _log(f"reading the package index directly failed ({e}); asking pip ...")
    with atomic_dir(dest, overwrite=True) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps",
               "--disable-pip-version-check", "-d", str(tmp), f"{name}=={version}"]
        # --no-binary for this package only: ":all:" would also build its build tools from source
        cmd += ["--no-binary", name] if sdist else ["--only-binary", ":all:"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        files = list(tmp.glob("*"))
        if proc.returncode != 0 or len(files) != 1:
            err = "\n".join(l for l in proc.stderr.splitlines() if "WARNING" not in l)[-800:]
            raise FetchError(f"could not download {name}=={version} with pip:\n{err}")
    return next(dest.glob("[!.]*"))


def _index_url() -> str:
    """The index pip would use: $PIP_INDEX_URL, pip's configured global.index-url, else PyPI."""
    import os

    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"]
    got = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                         capture_output=True, text=True)
    return got.stdout.strip() if got.returncode == 0 and got.stdout.strip() else "https://pypi.org/simple"


def _download_sdist(name: str, version: str, out: Path) -> None:
    """The ``name-version.tar.gz`` file from the index's simple page (PEP 503), sha256-checked."""
    import hashlib
    import re
    import urllib.request
    from urllib.parse import urljoin

    page_url = f"{_index_url().rstrip('/')}/{re.sub(r'[-_.]+', '-', name).lower()}/"
    with urllib.request.urlopen(page_url, timeout=60) as r:
        page = r.read().decode("utf-8", "replace")
    wanted = re.compile(rf"{re.escape(name)}-{re.escape(version)}\.tar\.gz", re.I)
    for href in re.findall(r'href="([^"]+)"', page):
        url, _, fragment = href.replace("&amp;", "&").partition("#")
        filename = url.rsplit("/", 1)[-1]
        if not wanted.fullmatch(filename):
            continue
        data = urllib.request.urlopen(urljoin(page_url, url), timeout=600).read()
        algo, _, digest = fragment.partition("=")
        if algo in hashlib.algorithms_guaranteed and hashlib.new(algo, data).hexdigest() != digest:
            raise ValueError(f"{filename}: {algo} does not match the index")
        (out / filename).write_bytes(data)
        return
    raise ValueError(f"no {name}-{version}.tar.gz on {page_url}")


def apt_fetch(package: str) -> Path:
    """Download a Debian package's .deb once (``apt-get download``); return its path.
    Without apt-get (macOS), put the .deb in $MLX_BALD_CACHE/downloads/debian/ yourself."""
    dest = downloads_dir() / "debian"
    dest.mkdir(parents=True, exist_ok=True)
    found = sorted(dest.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    if shutil.which("apt-get") is None:
        raise FetchError(f"the Debian package {package} is needed and apt-get is not available: "
                         f"download {package}_*.deb from a Debian mirror into {dest}")
    _log(f"fetching Debian package {package} ...")
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        proc = subprocess.run(["apt-get", "download", "-q", package], cwd=tmp,
                              capture_output=True, text=True)
        if proc.returncode != 0:  # the package lists may be missing on a fresh machine
            subprocess.run(["apt-get", "update", "-q"], capture_output=True)
            proc = subprocess.run(["apt-get", "download", "-q", package], cwd=tmp,
                                  capture_output=True, text=True)
        debs = list(Path(tmp).glob("*.deb"))
        if proc.returncode != 0 or len(debs) != 1:
            raise FetchError(f"apt-get download {package} failed: {proc.stderr.strip()[-500:]}")
        final = dest / debs[0].name
        debs[0].rename(final)
    return final


def _npm_registry() -> str:
    """$NPM_CONFIG_REGISTRY, npm's configured registry when npm is installed, else npmjs.org."""
    import os

    if os.environ.get("NPM_CONFIG_REGISTRY"):
        return os.environ["NPM_CONFIG_REGISTRY"]
    if shutil.which("npm"):
        got = subprocess.run(["npm", "config", "get", "registry"], capture_output=True, text=True)
        if got.returncode == 0 and got.stdout.strip().startswith("http"):
            return got.stdout.strip()
    return "https://registry.npmjs.org/"


def npm_fetch(name: str, version: str) -> Path:
    """Download the npm package ``name@version`` (a .tgz) once, checked against the registry's
    sha512 integrity; return its path. npm itself is not needed."""
    import base64
    import hashlib
    import json
    import urllib.request

    dest = downloads_dir() / "npm"
    final = dest / f"{name.replace('/', '+')}-{version}.tgz"
    if final.is_file():
        return final
    _log(f"fetching {name}@{version} from the npm registry ...")
    url = f"{_npm_registry().rstrip('/')}/{name.replace('/', '%2f')}/{version}"
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            dist = json.loads(r.read())["dist"]
        data = urllib.request.urlopen(dist["tarball"], timeout=600).read()
    except (OSError, KeyError, ValueError) as e:
        raise FetchError(f"could not download {name}@{version} from {url}: {e}") from e
    algo, _, digest = dist.get("integrity", "").partition("-")
    if algo != "sha512" or base64.b64encode(hashlib.sha512(data).digest()).decode() != digest:
        raise FetchError(f"{name}@{version}: the tarball does not match the registry's integrity")
    dest.mkdir(parents=True, exist_ok=True)
    tmp = final.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(final)
    return final


def check_debian_language(what: str, prefix: str, lang: str, suffix: str = "") -> None:
    """Refuse a language for which Debian has no ``{prefix}{lang}{suffix}`` package, naming the
    languages it has (apt's package lists; without apt, apt_fetch's own message applies)."""
    if list((downloads_dir() / "debian").glob(f"{prefix}{lang}{suffix}_*.deb")) or shutil.which("apt-cache") is None:
        return

    def languages() -> list[str]:
        names = subprocess.run(["apt-cache", "pkgnames", prefix], capture_output=True, text=True).stdout.split()
        codes = {n[len(prefix): len(n) - len(suffix)] for n in names if n.endswith(suffix)}
        return sorted(c for c in codes if c.isalpha() and 2 <= len(c) <= 3)

    found = languages()
    if not found:  # no package lists yet (a fresh machine): read them once
        subprocess.run(["apt-get", "update", "-q"], capture_output=True)
        found = languages()
    if found and lang not in found:
        raise FetchError(f"unknown language {lang!r} for {what}: Debian has it in {', '.join(found)}")


def extract_wheel(archive: Path, out: Path, members_prefix: str = "") -> None:
    with zipfile.ZipFile(archive) as z:
        for m in z.namelist():
            if m.startswith(members_prefix) and not m.endswith("/"):
                z.extract(m, out)


def extract_deb(deb: Path, out: Path, members_prefix: str = "") -> None:
    """Unpack a .deb's data.tar.* (ar archive; pure Python, no dpkg needed)."""
    data = deb.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise FetchError(f"{deb} is not a Debian package")
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size % 2)
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
                # symlinks too: a shared library is found by its soname link (libflite.so.1)
                members = [m for m in tar.getmembers() if (m.isfile() or m.issym())
                           and m.name.lstrip("./").startswith(members_prefix)]
                tar.extractall(out, members=members, filter="data")
            return
    raise FetchError(f"{deb}: no data archive inside")


def extract_sdist(archive: Path, out: Path, members_contain: str) -> None:
    with tarfile.open(archive, "r:*") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and members_contain in m.name]
        tar.extractall(out, members=members, filter="data")
