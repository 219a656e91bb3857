"""Weights from the Hugging Face Hub: the catalogue's files (`catalogue.py`) found in their folders, offline-safe
downloads.

Nothing is fetched unless a caller passes `download=True` (the CLI's --download, the node toggle, the app button).
Downloads use huggingface_hub's own metadata request and HTTP transfer, so HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE
mean what they mean everywhere else. A transfer writes to a hidden `.NAME.<etag>.incomplete` file beside its target
and resumes from it after an interruption (within a run and across runs); the file is renamed into place only when
its size and sha256 are right, and deleted when they are not.

Folders follow ComfyUI's names (diffusion_models, text_encoders, vae, loras, clip_vision). Standalone Alice keeps them under
$ALICE_HOME (default ~/.cache/alice); ComfyUI nodes pass ComfyUI's own folder paths in `folders` (this module
never imports ComfyUI).
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

try:
    import fcntl
except ImportError:  # not POSIX: no lock, one download at a time is up to the user
    fcntl = None

from .catalogue import (
    FOLDER_KINDS, SHA256_HEX, Catalogue, CatalogueFile, hub_endpoint, load_catalogue,
)
from .errors import AliceError
from .loading.output import file_sha256, place

# Left free on the disk beyond the downloads themselves, so a download never fills a disk to the last byte.
DISK_HEADROOM = 256 * 1024**2
_GIT_BLOB = re.compile(r"[0-9a-f]{40}")

# progress(label, bytes_done, bytes_total or None); it may raise to cancel (the partial file is kept for resuming).
ProgressCallback = Callable[[str, int, "int | None"], None]
# ComfyUI-style folder kind -> folders to look in; downloads go to the first one.
Folders = Mapping[str, Sequence["str | Path"]]


class HubUnreachable(AliceError):
    """The Hub could not be asked or could not deliver: offline mode, no network, a server error."""


# ---- where files live ---------------------------------------------------------------------------------------------

def alice_home() -> Path:
    """Root of standalone Alice's model folders: $ALICE_HOME, else ~/.cache/alice."""
    return Path(os.environ.get("ALICE_HOME") or "~/.cache/alice").expanduser()


def standalone_folders(root: str | Path | None = None) -> dict[str, list[Path]]:
    """{kind: [root/kind]} for every folder kind; root defaults to alice_home()."""
    root = Path(root).expanduser() if root else alice_home()
    return {kind: [root / kind] for kind in FOLDER_KINDS}


def _folders_for(file: CatalogueFile, folders: Folders) -> list[Path]:
    paths = [Path(p).expanduser() for p in folders.get(file.folder, ())]
    if not paths:
        raise AliceError(f"no {file.folder!r} model folder was given for {file.relative_path}; add one to `folders`")
    return paths


def find_local(file: CatalogueFile, folders: Folders | None = None) -> Path | None:
    """The file if it is already in one of its folders (never checks the network)."""
    for folder in _folders_for(file, folders if folders is not None else standalone_folders()):
        if (folder / file.relative_path).is_file():
            return folder / file.relative_path
    return None


def target_path(file: CatalogueFile, folders: Folders | None = None) -> Path:
    """Where a download of `file` is placed: its first folder."""
    return _folders_for(file, folders if folders is not None else standalone_folders())[0] / file.relative_path


def partial_path(dest: Path, etag: str) -> Path:
    """Where an unfinished download of `dest` is kept; named after the remote version so a changed file starts over."""
    tag = re.sub(r"[^0-9A-Za-z]", "", etag)[:16]
    return dest.with_name(f".{dest.name}.{tag}.incomplete")


# ---- the Hub ------------------------------------------------------------------------------------------------------



def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub saw it at import, or as it is set now."""
    from huggingface_hub import is_offline_mode

    return is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _transport_errors() -> tuple[type[BaseException], ...]:
    import httpx2  # huggingface_hub 2.x's HTTP client

    return (httpx2.TransportError, ConnectionError, TimeoutError)


@dataclass(frozen=True)
class RemoteFile:
    """What the Hub says about a file just before it is fetched."""

    url: str                 # where the bytes come from: the resolve URL or the CDN it redirects to
    etag: str
    size: int | None
    sha256: str | None       # expected content hash: the catalogue's, else the LFS ETag
    send_token: bool         # False when the bytes come from another host (a signed CDN URL)


def remote_file(file: CatalogueFile) -> RemoteFile:
    """One HEAD request through huggingface_hub; raises AliceError (HubUnreachable when offline or unreachable)."""
    from huggingface_hub import get_hf_file_metadata
    from huggingface_hub.errors import (
        FileMetadataError, HfHubHTTPError, OfflineModeIsEnabled, RemoteEntryNotFoundError, RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint, url = hub_endpoint(), file.url()
    where = f"{file.repo_id}@{file.revision} on {endpoint}"
    no_access = (f"{file.repo_id} on {endpoint} is gated, private or gone; accept its terms on the Hub and set "
                 "HF_TOKEN, or check HF_ENDPOINT")
    not_hub = f"{endpoint} does not answer like a Hugging Face Hub; check HF_ENDPOINT"
    try:
        meta = get_hf_file_metadata(url, endpoint=endpoint)
    except OfflineModeIsEnabled as exc:
        raise HubUnreachable("HF_HUB_OFFLINE is set") from exc
    except (RevisionNotFoundError, RemoteEntryNotFoundError) as exc:
        raise AliceError(f"{file.filename} is not in {where}; catalogue entry {file.name!r} is out of date") from exc
    except RepositoryNotFoundError as exc:  # also GatedRepoError
        raise AliceError(no_access) from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            raise AliceError(no_access) from exc
        raise HubUnreachable(f"{endpoint} answered HTTP {status}") from exc
    except FileMetadataError as exc:
        raise HubUnreachable(not_hub) from exc
    except _transport_errors() as exc:
        raise HubUnreachable(f"cannot reach {endpoint}: {type(exc).__name__}") from exc
    if meta.commit_hash is None or not meta.etag:
        raise HubUnreachable(not_hub)

    etag = meta.etag.lower()
    lfs_sha256 = etag if SHA256_HEX.fullmatch(etag) else None  # the Hub's ETag of an LFS file is its sha256
    if file.sha256 and lfs_sha256 and lfs_sha256 != file.sha256:
        raise AliceError(f"{file.filename} in {where} has changed (Hub sha256 {lfs_sha256[:12]}..., catalogue "
                         f"{file.sha256[:12]}...); update catalogue entry {file.name!r} or pin its revision")
    if file.size and meta.size and meta.size != file.size:
        raise AliceError(f"{file.filename} in {where} is {meta.size} bytes, the catalogue says {file.size}; "
                         f"update catalogue entry {file.name!r} or pin its revision")
    origin = urlsplit(url)
    location = urlsplit(meta.location)
    same_host = (origin.scheme, origin.hostname, origin.port) == (location.scheme, location.hostname, location.port)
    return RemoteFile(url=meta.location, etag=etag, size=meta.size if meta.size is not None else file.size,
                      sha256=file.sha256 or lfs_sha256, send_token=same_host)


def git_blob_sha1(path: str | Path) -> str:
    """The git blob id of a file: sha1 of "blob <size>\\0" and the content (what the Hub's ETag is for non-LFS files)."""
    path = Path(path)
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while chunk := f.read(8 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _progress_bar_class(progress: ProgressCallback | None, label: str) -> type:
    """The part of tqdm's interface huggingface_hub's http_get uses, reporting to `progress` instead of a terminal."""

    class CallbackBar:
        def __init__(self, *_args, total: int | None = None, initial: int = 0, **_kwargs) -> None:
            self.total, self.n = total, initial
            self._report()

        def update(self, n: int = 1) -> None:
            self.n += n
            self._report()

        def _report(self) -> None:
            if progress is not None:
                progress(label, self.n, self.total)

        def close(self) -> None:
            pass

        def __enter__(self) -> "CallbackBar":
            return self

        def __exit__(self, *_exc) -> None:
            return None

    return CallbackBar


def _check_digest(partial: Path, actual: str, expected: str, message: str) -> None:
    """Delete the downloaded file and raise `message` ({actual} and {expected} filled in, shortened) unless the
    digests agree."""
    if actual != expected:
        partial.unlink()
        raise AliceError(message.replace("{actual}", f"{actual[:12]}...").replace("{expected}", f"{expected[:12]}..."))


def download_file(
    file: CatalogueFile, dest: str | Path, progress: ProgressCallback | None = None, remote: RemoteFile | None = None,
) -> Path:
    """Fetch `file` into `dest` (resuming a partial download), check it and rename it into place."""
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    dest = Path(dest)
    remote = remote or remote_file(file)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(dest, remote.etag)
    for stale in dest.parent.glob(f".{glob.escape(dest.name)}.*.incomplete"):
        if stale != partial:  # a partial of an older version of the file
            stale.unlink(missing_ok=True)
    headers = build_hf_headers()  # HF_TOKEN (or the stored token) and the user agent
    if not remote.send_token:
        headers.pop("authorization", None)  # never hand the token to a CDN
    kept = f"the partial download {partial} is kept; run the download again to resume"

    def drop_if_empty() -> str:  # a GET that failed before its first byte leaves nothing worth keeping
        if partial.exists() and partial.stat().st_size == 0:
            partial.unlink()
            return "nothing was kept; run the download again"
        return kept

    with open(partial, "ab") as out:  # created when missing, never truncated by opening: a resume appends
        _lock_or_refuse(out, file, dest)
        done = out.tell()
        if remote.size is not None and done > remote.size:
            out.truncate(0)
            done = 0
        try:
            http_get(remote.url, out, resume_size=done, headers=headers, expected_size=remote.size,
                     displayed_filename=file.relative_path,
                     tqdm_class=_progress_bar_class(progress, file.relative_path))
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            raise HubUnreachable(f"the transfer of {file.filename} failed with HTTP {status}; {drop_if_empty()}") from exc
        except _transport_errors() as exc:
            raise HubUnreachable(f"the transfer of {file.filename} broke off ({type(exc).__name__}); {drop_if_empty()}") from exc
        except OSError as exc:  # wrong length, full disk
            partial.unlink(missing_ok=True)
            raise AliceError(f"downloading {file.filename} failed ({exc}); the partial file was deleted") from exc
        out.flush()
        if remote.sha256:
            _check_digest(partial, file_sha256(partial), remote.sha256,
                          f"{file.filename} from {file.repo_id} failed its checksum (sha256 {{actual}}, expected "
                          f"{{expected}}) and was deleted; download it again, and if this repeats the catalogue "
                          f"entry {file.name!r} is out of date")
        elif _GIT_BLOB.fullmatch(remote.etag):
            # A non-LFS file's ETag is its git blob id: check the bytes against it (a pinned sha256 goes first).
            _check_digest(partial, git_blob_sha1(partial), remote.etag,
                          f"{file.filename} from {file.repo_id} does not match the Hub's git blob id ({{actual}}, "
                          "expected {expected}) and was deleted; download it again")
        place(partial, dest)  # exclusive: a file that appeared at dest meanwhile is never replaced
    return dest


def _lock_or_refuse(out, file: CatalogueFile, dest: Path) -> None:
    """One transfer per partial file: a second run fetching the same file at once is the clear loser."""
    if fcntl is None:
        return
    try:
        fcntl.flock(out.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise AliceError(f"another download of {file.filename} into {dest.parent} is running; wait for it to "
                         "finish, then run this again") from None


def _check_free_space(plans: Sequence[tuple[CatalogueFile, Path, RemoteFile]]) -> None:
    """Refuse before transferring anything when a disk cannot take all the remaining bytes."""
    per_disk: dict[int, tuple[Path, int]] = {}
    for _file, dest, remote in plans:
        if remote.size is None:
            continue
        partial = partial_path(dest, remote.etag)
        remaining = remote.size - (partial.stat().st_size if partial.exists() else 0)
        probe = next(p for p in (dest.parent, *dest.parents) if p.exists())
        device = probe.stat().st_dev
        first_probe, total = per_disk.get(device, (probe, 0))
        per_disk[device] = (first_probe, total + max(remaining, 0))
    for probe, total in per_disk.values():
        free, spare = shutil.disk_usage(probe).free, disk_headroom(total)
        if free < total + spare:
            raise AliceError(
                f"not enough free disk space in {probe}: the download needs {_gb(total)} GB (plus "
                f"{_gb(spare)} GB to spare) and {_gb(free)} GB is free; free some space or choose another "
                "models folder (ALICE_HOME or `alice download --folder`)"
            )


def disk_headroom(total: int) -> int:
    """Space to leave free beyond a download: a tenth of it, at least 1 MiB and at most DISK_HEADROOM."""
    return min(DISK_HEADROOM, max(1024**2, total // 10))


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f}"


def _missing_message(files: Sequence[CatalogueFile], folders: Folders, reason: str, advice: str) -> str:
    listing = "; ".join(f"{f.relative_path} from {f.url()} into {target_path(f, folders).parent}" for f in files)
    noun = "file" if len(files) == 1 else "files"
    return f"{len(files)} model {noun} missing ({reason}): {listing}. {advice}"


_BY_HAND = "Put each file in the folder named (keeping the name shown), or retry when the Hub is reachable"
_ASK_FOR_DOWNLOAD = ("Put each file in the folder named, or ask for a download: `alice download NAME` or "
                     "`alice generate --download`, the node's download toggle, or the app's Download button")


def ensure_files(
    names: str | Iterable[str],
    download: bool = False,
    progress: ProgressCallback | None = None,
    folders: Folders | None = None,
    catalogue: Catalogue | None = None,
) -> dict[str, Path]:
    """Local paths of catalogue files (or of every file of catalogue models), keyed by file entry name.

    Files already in their folders are used as they are, without any network request. Missing files are fetched
    only when `download` is true; otherwise, or when the Hub is offline or unreachable, AliceError lists every
    missing file with its URL and the folder to put it in.
    """
    catalogue = catalogue or load_catalogue()
    folders = folders if folders is not None else standalone_folders()
    files = catalogue.expand([names] if isinstance(names, str) else names)
    paths = {f.name: find_local(f, folders) for f in files}
    missing = [f for f in files if paths[f.name] is None]
    if not missing:
        return paths
    if not download:
        raise AliceError(_missing_message(missing, folders, "downloads happen only when asked", _ASK_FOR_DOWNLOAD))
    if hub_offline():
        raise HubUnreachable(_missing_message(missing, folders, "HF_HUB_OFFLINE is set", _BY_HAND))
    try:
        plans = [(f, target_path(f, folders), remote_file(f)) for f in missing]
    except HubUnreachable as exc:
        raise HubUnreachable(_missing_message(missing, folders, str(exc), _BY_HAND)) from exc
    _check_free_space(plans)
    for i, (file, dest, remote) in enumerate(plans):
        try:
            paths[file.name] = download_file(file, dest, progress, remote)
        except HubUnreachable as exc:
            raise HubUnreachable(_missing_message(missing[i:], folders, str(exc), _BY_HAND)) from exc
    return paths


def resolve_catalogue_model(
    name: str,
    download: bool = False,
    progress: ProgressCallback | None = None,
    folders: Folders | None = None,
    catalogue: Catalogue | None = None,
) -> dict[str, Path]:
    """{role: local path} ("dit", "vae", "text_encoder") of a catalogue model, fetching it first if asked."""
    catalogue = catalogue or load_catalogue()
    if name not in catalogue.models:
        raise AliceError(f"{name!r} is not a catalogue model; choose one of {', '.join(catalogue.models)}")
    paths = ensure_files([name], download, progress, folders, catalogue)
    return {role: paths[file_name] for role, file_name in catalogue.models[name].roles.items()}
