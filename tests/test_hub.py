"""Catalogue downloads through the real huggingface_hub client against a small Hub on 127.0.0.1.

The fake Hub answers HEAD/GET /{repo_id}/resolve/{revision}/{filename} the way huggingface_hub 2.x expects
(ETag, X-Repo-Commit, Content-Length, Accept-Ranges, Range). Regular files are served directly; LFS files answer
with a 302 to a second "CDN" server on another port, carrying X-Linked-Etag (the sha256) and X-Linked-Size, as the
real Hub does.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import huggingface_hub.constants as hf_constants
import pytest

from alice_core import hub
from alice_core.errors import AliceError

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO_ROOT = Path(__file__).resolve().parents[1]


def _bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


class FakeHub:
    """Two threaded HTTP servers on 127.0.0.1: the Hub (resolve endpoint) and the CDN that LFS files redirect to."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, str], bytes] = {}  # (repo_id, filename) -> content
        self.lfs: set[tuple[str, str]] = set()
        self.requests: list[dict] = []  # one per request: server, method, path, range, authorization, body_bytes
        self.drop_after: dict[str, int] = {}  # sha256 -> bytes to send before dropping the next GET's connection
        self.corrupt: set[str] = set()  # sha256 of files served (by the CDN or the Hub) with a flipped byte
        self.cdn_get_status: int | None = None  # when set, every CDN GET fails with this status, before any byte
        self._lock = threading.Lock()
        self.hub = ThreadingHTTPServer(("127.0.0.1", 0), self._handler("hub"))
        self.cdn = ThreadingHTTPServer(("127.0.0.1", 0), self._handler("cdn"))
        self.url = f"http://127.0.0.1:{self.hub.server_port}"
        self.cdn_url = f"http://127.0.0.1:{self.cdn.server_port}"
        for server in (self.hub, self.cdn):
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def add(self, repo_id: str, filename: str, content: bytes, lfs: bool) -> str:
        self.files[(repo_id, filename)] = content
        if lfs:
            self.lfs.add((repo_id, filename))
        return hashlib.sha256(content).hexdigest()

    def stop(self) -> None:
        for server in (self.hub, self.cdn):
            server.shutdown()
            server.server_close()

    def log(self, server: str, method: str = None) -> list[dict]:
        return [r for r in self.requests if r["server"] == server and method in (None, r["method"])]

    def _handler(self, role: str):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args) -> None:  # keep test output clean
                pass

            def do_HEAD(self) -> None:
                self._answer(send_body=False)

            def do_GET(self) -> None:
                self._answer(send_body=True)

            def _answer(self, send_body: bool) -> None:
                record = {"server": role, "method": self.command, "path": unquote(urlsplit(self.path).path),
                          "range": self.headers.get("Range"), "authorization": self.headers.get("Authorization"),
                          "body_bytes": 0}
                with fake._lock:
                    fake.requests.append(record)
                if role == "hub":
                    self._hub(record, send_body)
                else:
                    self._cdn(record, send_body)

            def _hub(self, record: dict, send_body: bool) -> None:
                match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", record["path"])
                if not match:
                    return self._empty(404, {"X-Error-Code": "RepoNotFound"})
                repo_id, _revision, filename = match.groups()
                content = fake.files.get((repo_id, filename))
                if content is None:
                    return self._empty(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT})
                if (repo_id, filename) in fake.lfs:
                    sha = hashlib.sha256(content).hexdigest()
                    return self._empty(302, {
                        "Location": f"{fake.cdn_url}/cdn/{sha}", "X-Repo-Commit": COMMIT,
                        "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(content)),
                        "ETag": f'"{hashlib.sha1(content).hexdigest()}"',
                    })
                etag = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()  # a git blob id
                if hashlib.sha256(content).hexdigest() in fake.corrupt:
                    content = bytes([content[0] ^ 0xFF]) + content[1:]
                self._content(record, content, etag, send_body)

            def _cdn(self, record: dict, send_body: bool) -> None:
                sha = record["path"].removeprefix("/cdn/")
                if send_body and fake.cdn_get_status is not None:
                    return self._empty(fake.cdn_get_status, {})
                content = next((c for c in fake.files.values() if hashlib.sha256(c).hexdigest() == sha), None)
                if content is None:
                    return self._empty(404, {})
                if sha in fake.corrupt:
                    content = bytes([content[0] ^ 0xFF]) + content[1:]
                self._content(record, content, sha, send_body)

            def _content(self, record: dict, content: bytes, etag: str, send_body: bool) -> None:
                start, status, total = 0, 200, len(content)
                headers = {"ETag": f'"{etag}"', "X-Repo-Commit": COMMIT, "Accept-Ranges": "bytes"}
                range_match = re.fullmatch(r"bytes=(\d+)-(\d*)", record["range"] or "")
                if range_match:
                    start = int(range_match.group(1))
                    end = int(range_match.group(2) or total - 1)
                    content, status = content[start:end + 1], 206
                    headers["Content-Range"] = f"bytes {start}-{end}/{total}"
                headers["Content-Length"] = str(len(content))
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if not send_body:
                    return
                cut = fake.drop_after.pop(etag, None) if record["method"] == "GET" else None
                body = content if cut is None else content[:cut]
                self.wfile.write(body)
                record["body_bytes"] = len(body)
                if cut is not None:  # the client sees the connection close before Content-Length bytes
                    self.wfile.flush()
                    self.close_connection = True

            def _empty(self, status: int, headers: dict) -> None:
                self.send_response(status)
                for key, value in {**headers, "Content-Length": "0"}.items():
                    self.send_header(key, value)
                self.end_headers()

        return Handler


DIT = _bytes(11_000_000, 1)  # over one of huggingface_hub's 10 MiB transfer chunks, so a resume has a chunk to keep
VAE = _bytes(5_000, 2)
TOKENIZER = b'{"model": "tiny"}'


@pytest.fixture
def fake_hub(monkeypatch):
    fake = FakeHub()
    # conftest puts the suite offline (and huggingface_hub read that at import): go online for these tests only.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield fake
    fake.stop()


@pytest.fixture
def catalogue(fake_hub, tmp_path) -> hub.Catalogue:
    dit_sha = fake_hub.add("acme/video", "weights/dit.safetensors", DIT, lfs=True)
    fake_hub.add("acme/video", "vae.pth", VAE, lfs=False)
    fake_hub.add("acme/video", "tok/tokenizer.json", TOKENIZER, lfs=False)
    spec = {
        "files": {
            "acme-dit": {"repo_id": "acme/video", "filename": "weights/dit.safetensors", "folder": "diffusion_models",
                         "sha256": dit_sha, "size": len(DIT)},
            "acme-vae": {"repo_id": "acme/video", "filename": "vae.pth", "folder": "vae"},
            "acme-tokenizer": {"repo_id": "acme/video", "filename": "tok/tokenizer.json", "folder": "text_encoders",
                               "local_path": "tok/tokenizer.json"},
        },
        "models": {"acme": {"description": "test model", "files": {"dit": "acme-dit", "vae": "acme-vae"},
                            "extra_files": ["acme-tokenizer"]}},
    }
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps(spec))
    return hub.load_catalogue(path)


def _expected_paths(root: Path) -> dict[str, tuple[Path, bytes]]:
    return {"acme-dit": (root / "diffusion_models" / "dit.safetensors", DIT),
            "acme-vae": (root / "vae" / "vae.pth", VAE),
            "acme-tokenizer": (root / "text_encoders" / "tok" / "tokenizer.json", TOKENIZER)}


def _files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_fresh_download_places_every_file_of_a_model(fake_hub, catalogue, tmp_path):
    root = tmp_path / "models"
    seen: dict[str, tuple[int, int | None]] = {}  # last progress report per file

    def progress(label: str, done: int, total: int | None) -> None:
        seen[label] = (done, total)

    roles = hub.resolve_catalogue_model("acme", download=True, folders=hub.standalone_folders(root),
                                        catalogue=catalogue, progress=progress)
    expected = _expected_paths(root)
    assert roles == {"dit": expected["acme-dit"][0], "vae": expected["acme-vae"][0]}
    for path, content in expected.values():
        assert path.read_bytes() == content
    assert _files_under(root) == sorted(p for p, _ in expected.values())  # no partial files left
    assert seen == {"dit.safetensors": (len(DIT), len(DIT)), "vae.pth": (len(VAE), len(VAE)),
                    "tok/tokenizer.json": (len(TOKENIZER), len(TOKENIZER))}
    # The LFS file came from the CDN it was redirected to, the regular ones from the resolve endpoint.
    assert [r["path"] for r in fake_hub.log("cdn", "GET")] == [f"/cdn/{hashlib.sha256(DIT).hexdigest()}"]
    assert {r["path"] for r in fake_hub.log("hub", "GET")} == {"/acme/video/resolve/main/vae.pth",
                                                                "/acme/video/resolve/main/tok/tokenizer.json"}


def test_resume_after_the_connection_drops_mid_transfer(fake_hub, catalogue, tmp_path):
    # huggingface_hub writes in chunks and resumes after the last whole chunk it wrote.
    chunk = hf_constants.DOWNLOAD_CHUNK_SIZE
    fake_hub.drop_after[hashlib.sha256(DIT).hexdigest()] = chunk + 5_000
    paths = hub.ensure_files("acme-dit", download=True, folders=hub.standalone_folders(tmp_path), catalogue=catalogue)
    assert paths["acme-dit"].read_bytes() == DIT
    gets = fake_hub.log("cdn", "GET")
    assert [(r["range"], r["body_bytes"]) for r in gets] == [
        (None, chunk + 5_000), (f"bytes={chunk}-", len(DIT) - chunk)]


def test_resume_from_the_partial_file_of_an_interrupted_run(fake_hub, catalogue, tmp_path):
    dest = tmp_path / "diffusion_models" / "dit.safetensors"
    partial = hub.partial_path(dest, hashlib.sha256(DIT).hexdigest())
    partial.parent.mkdir(parents=True)
    partial.write_bytes(DIT[:123_457])
    hub.ensure_files("acme-dit", download=True, folders=hub.standalone_folders(tmp_path), catalogue=catalogue)
    assert dest.read_bytes() == DIT and not partial.exists()
    gets = fake_hub.log("cdn", "GET")
    assert [(r["range"], r["body_bytes"]) for r in gets] == [("bytes=123457-", len(DIT) - 123_457)]


def test_checksum_mismatch_is_rejected_and_nothing_is_kept(fake_hub, catalogue, tmp_path):
    fake_hub.corrupt.add(hashlib.sha256(DIT).hexdigest())
    with pytest.raises(AliceError, match="failed its checksum"):
        hub.ensure_files("acme-dit", download=True, folders=hub.standalone_folders(tmp_path), catalogue=catalogue)
    assert _files_under(tmp_path / "diffusion_models") == []


def test_catalogue_hash_that_disagrees_with_the_hub_is_refused_before_any_transfer(fake_hub, tmp_path):
    fake_hub.add("acme/video", "other.safetensors", DIT, lfs=True)
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps({"files": {"other": {"repo_id": "acme/video", "filename": "other.safetensors",
                                                     "folder": "loras", "sha256": "0" * 64}}}))
    with pytest.raises(AliceError, match="has changed"):
        hub.ensure_files("other", download=True, folders=hub.standalone_folders(tmp_path / "m"),
                         catalogue=hub.load_catalogue(path))
    assert fake_hub.log("cdn") == [] and _files_under(tmp_path / "m") == []


@pytest.mark.parametrize("how", ["environment", "client constant"])
def test_offline_mode_names_each_missing_file_its_url_and_folder(fake_hub, catalogue, tmp_path, monkeypatch, how):
    if how == "environment":  # set after huggingface_hub was imported
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:  # set before the import, as usual
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    root = tmp_path / "models"
    with pytest.raises(hub.HubUnreachable) as err:
        hub.ensure_files("acme", download=True, folders=hub.standalone_folders(root), catalogue=catalogue)
    message = str(err.value)
    assert "HF_HUB_OFFLINE" in message and "\n" not in message
    for file in catalogue.expand(["acme"]):
        assert f"{fake_hub.url}/acme/video/resolve/main/{file.filename}" in message
        assert f"into {hub.target_path(file, hub.standalone_folders(root)).parent}" in message
    assert fake_hub.requests == [] and _files_under(root) == []


def test_unreachable_hub_lists_every_missing_file_and_writes_nothing(catalogue, tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", closed)
    root = tmp_path / "models"
    with pytest.raises(hub.HubUnreachable, match="cannot reach") as err:
        hub.ensure_files("acme", download=True, folders=hub.standalone_folders(root), catalogue=catalogue)
    for name in ("dit.safetensors", "vae.pth", "tok/tokenizer.json"):
        assert name in str(err.value)
    assert f"{closed}/acme/video/resolve/main/vae.pth" in str(err.value)
    assert _files_under(root) == []


def test_present_files_are_not_fetched_again_and_any_comfyui_folder_counts(fake_hub, catalogue, tmp_path):
    unet, diffusion_models = tmp_path / "unet", tmp_path / "diffusion_models"
    folders = {**hub.standalone_folders(tmp_path), "diffusion_models": [diffusion_models, unet]}
    (unet / "dit.safetensors").parent.mkdir()
    (unet / "dit.safetensors").write_bytes(b"already here")  # in ComfyUI's second folder for this kind
    paths = hub.ensure_files("acme", download=True, folders=folders, catalogue=catalogue)
    assert paths["acme-dit"] == unet / "dit.safetensors"
    assert paths["acme-dit"].read_bytes() == b"already here"
    assert not diffusion_models.exists()
    assert {r["path"] for r in fake_hub.requests if r["method"] == "HEAD"} == {
        "/acme/video/resolve/main/vae.pth", "/acme/video/resolve/main/tok/tokenizer.json"}
    fake_hub.requests.clear()
    assert hub.ensure_files("acme", download=True, folders=folders, catalogue=catalogue) == paths
    assert fake_hub.requests == []  # everything present: not even a metadata request


def test_missing_files_without_download_are_listed_and_the_hub_is_not_contacted(fake_hub, catalogue, tmp_path):
    with pytest.raises(AliceError, match="downloads happen only when asked") as err:
        hub.ensure_files("acme", folders=hub.standalone_folders(tmp_path), catalogue=catalogue)
    assert "alice download" in str(err.value) and f"{fake_hub.url}/acme/video/resolve/main/vae.pth" in str(err.value)
    assert fake_hub.requests == []


def test_hf_token_goes_to_the_hub_but_not_to_the_cdn(fake_hub, catalogue, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    hub.ensure_files("acme-dit", download=True, folders=hub.standalone_folders(tmp_path), catalogue=catalogue)
    assert {r["authorization"] for r in fake_hub.log("hub")} == {"Bearer hf_test_token"}
    assert {r["authorization"] for r in fake_hub.log("cdn")} == {None}


def test_free_disk_space_is_checked_before_transferring(fake_hub, catalogue, tmp_path, monkeypatch):
    monkeypatch.setattr(hub.shutil, "disk_usage", lambda _path: type("Usage", (), {"free": 10_000_000})())
    with pytest.raises(AliceError, match="not enough free disk space"):
        hub.ensure_files("acme-dit", download=True, folders=hub.standalone_folders(tmp_path), catalogue=catalogue)
    assert [r["method"] for r in fake_hub.requests] == ["HEAD"]
    assert _files_under(tmp_path / "diffusion_models") == []


def test_alice_home_sets_the_standalone_root(monkeypatch, tmp_path):
    monkeypatch.setenv("ALICE_HOME", str(tmp_path / "alice"))
    assert hub.standalone_folders()["vae"] == [tmp_path / "alice" / "vae"]
    monkeypatch.delenv("ALICE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert hub.alice_home() == tmp_path / ".cache" / "alice"
    assert set(hub.standalone_folders()) == {"diffusion_models", "text_encoders", "vae", "loras", "clip_vision"}


def test_catalogue_rejects_bad_entries_and_unknown_names(tmp_path, catalogue):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"files": {"x": {"repo_id": "a/b", "filename": "x.pt", "folder": "checkpoints"}}}))
    with pytest.raises(AliceError, match=r"files\.x\.folder is 'checkpoints'"):
        hub.load_catalogue(path)
    with pytest.raises(AliceError, match="'nope' is not in the model catalogue; models: acme"):
        catalogue.expand(["nope"])


def test_packaged_catalogue_has_the_models_the_project_promises():
    catalogue = hub.load_catalogue()
    rcm = catalogue.files["rcm-wan2.1-t2v-1.3b-480p"]
    assert (rcm.repo_id, rcm.filename, rcm.folder) == ("worstcoder/rcm-Wan", "rCM_Wan2.1_T2V_1.3B_480p.pt",
                                                       "diffusion_models")
    assert catalogue.files["turbowan2.1-t2v-1.3b-480p"].repo_id == "TurboDiffusion/TurboWan2.1-T2V-1.3B-480P"
    loras = [f for f in catalogue.files.values() if f.folder == "loras"]
    assert loras and all(f.repo_id == "lightx2v/Wan2.1-Distill-Loras" and
                         f.filename.endswith("_lora_rank64_lightx2v_4step.safetensors") for f in loras)
    folders = {"dit": "diffusion_models", "dit_low": "diffusion_models", "vae": "vae", "text_encoder": "text_encoders",
               "clip_vision": "clip_vision", "lora": "loras"}
    for model in catalogue.models.values():
        assert {"dit", "vae", "text_encoder"} <= set(model.roles) <= set(folders)
        assert all(catalogue.files[file].folder == folders[role] for role, file in model.roles.items()), model.name
    # lightx2v's 4-step LoRAs with their base models (the I2V one with the CLIP vision file), 4-step preset
    for name, base in (("lightx2v-wan2.1-t2v-14b", "wan2.1_t2v_14B_fp16.safetensors"),
                       ("lightx2v-wan2.1-i2v-14b-480p", "wan2.1_i2v_480p_14B_fp16.safetensors")):
        roles = {r: catalogue.files[f].filename.rsplit("/", 1)[-1] for r, f in catalogue.models[name].roles.items()}
        assert roles["dit"] == base and roles["lora"].endswith("_lora_rank64_lightx2v_4step.safetensors")
        assert catalogue.models[name].defaults["rcm_steps"] == 4
    assert "clip_vision" in catalogue.models["lightx2v-wan2.1-i2v-14b-480p"].roles
    ti2v = catalogue.models["wan2.2-ti2v-5b"]
    assert catalogue.files[ti2v.roles["vae"]].filename == "Wan2.2_VAE.pth" and ti2v.defaults["frames"] == 121
    # the released 4-step Wan2.2 I2V pair, with rCM's I2V preset (sigma_max 200, boundary 0.9: two steps per expert)
    pair = catalogue.models["turbowan2.2-i2v-a14b-720p"]
    assert [catalogue.files[pair.roles[r]].filename for r in ("dit", "dit_low")] == [
        "TurboWan2.2-I2V-A14B-high-720P.pth", "TurboWan2.2-I2V-A14B-low-720P.pth"]
    assert catalogue.files[catalogue.models["turbowan2.2-i2v-a14b-720p-quant"].roles["dit_low"]].filename.endswith(
        "-low-720P-quant.pth")
    assert {k: pair.defaults[k] for k in ("rcm_steps", "sigma_max", "boundary", "width", "height")} == {
        "rcm_steps": 4, "sigma_max": 200.0, "boundary": 0.9, "width": 1280, "height": 720}
    rcm_pair = catalogue.models["rcm-wan2.2-i2v-a14b"]
    assert [(catalogue.files[rcm_pair.roles[r]].repo_id, catalogue.files[rcm_pair.roles[r]].filename)
            for r in ("dit", "dit_low")] == [("worstcoder/rcm-Wan", "Wan2.2-I2V-A14B-high-rCM4.0-merged.pt"),
                                             ("worstcoder/rcm-Wan", "Wan2.2-I2V-A14B-low-rCM1.0-merged.pt")]
    assert rcm_pair.defaults == pair.defaults and "clip_vision" not in rcm_pair.roles  # Wan2.2 I2V: no CLIP
    t2v = catalogue.models["wan2.2-t2v-a14b"]
    assert [catalogue.files[t2v.roles[r]].filename.rsplit("/", 1)[-1] for r in ("dit", "dit_low")] == [
        "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"]
    # Wan2.2 T2V-A14B's own settings (wan/configs: 40 steps, guide (3, 4) as (low, high), shift 12, boundary 0.875)
    assert {k: t2v.defaults[k] for k in ("sampler", "teacher_steps", "guidance", "guidance_low", "shift", "boundary")} \
        == {"sampler": "teacher", "teacher_steps": 40, "guidance": 4.0, "guidance_low": 3.0, "shift": 12.0,
            "boundary": 0.875}
    assert catalogue.files["wan2.2-vae"].filename == "Wan2.2_VAE.pth"
    # Wan2.1 I2V's CLIP vision encoder in both shipped forms, into ComfyUI's clip_vision folder
    assert {(f.filename.rsplit("/", 1)[-1], f.folder) for f in catalogue.files.values() if "clip" in f.name} == {
        ("clip_vision_h.safetensors", "clip_vision"), ("models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
                                                        "clip_vision")}
    assert {"rcm-wan2.1-t2v-14b", "rcm-wan2.1-t2v-14b-hd720", "turbowan2.1-t2v-14b"} <= set(catalogue.models)
    turbo720 = catalogue.models["turbowan2.1-t2v-14b-hd720"]
    assert catalogue.files[turbo720.roles["dit"]].filename == "TurboWan2.1-T2V-14B-720P.pth"
    assert (turbo720.defaults["width"], turbo720.defaults["height"], turbo720.defaults["rcm_steps"]) == (1280, 720, 4)
    # Alice's umT5 loader finds the tokenizer in google/umt5-xxl/ beside the encoder file.
    standalone = catalogue.expand(["rcm-wan2.1-t2v-1.3b"])
    assert {f.relative_path for f in standalone if f.folder == "text_encoders"} >= {
        "models_t5_umt5-xxl-enc-bf16.pth", "google/umt5-xxl/tokenizer.json"}


def test_cli_download_in_a_fresh_process_honours_the_environment(fake_hub, tmp_path):
    """HF_ENDPOINT and HF_HUB_OFFLINE set before huggingface_hub is imported, as users set them."""
    file = next(f for f in hub.load_catalogue().files.values() if f.sha256 is None and f.folder == "loras")
    content = _bytes(4_000, 3)
    fake_hub.add(file.repo_id, file.filename, content, lfs=True)
    env = {**os.environ, "HF_ENDPOINT": fake_hub.url, "HF_HUB_OFFLINE": "0", "ALICE_HOME": str(tmp_path),
           "PYTHONPATH": str(REPO_ROOT)}
    script = "import sys; from alice_core.cli import main; sys.exit(main(sys.argv[1:]))"
    run = subprocess.run([sys.executable, "-c", script, "download", file.name], env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    dest = tmp_path / "loras" / file.relative_path
    assert run.stdout.strip() == str(dest) and dest.read_bytes() == content
    # Verified against the LFS ETag (the catalogue has no sha256 for this file): a corrupted copy is refused.
    dest.unlink()
    fake_hub.corrupt.add(hashlib.sha256(content).hexdigest())
    run = subprocess.run([sys.executable, "-c", script, "download", file.name], env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode != 0 and "failed its checksum" in run.stderr and not dest.exists()


def test_generate_hook_maps_a_present_catalogue_model_to_pipeline_paths(tmp_path, monkeypatch):
    from alice_core.cli.download import catalogue_pipeline_args

    monkeypatch.setenv("ALICE_HOME", str(tmp_path))
    catalogue = hub.load_catalogue()
    for file in catalogue.expand(["rcm-wan2.1-t2v-1.3b"]):  # stand-ins: only presence matters here
        path = hub.target_path(file)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    args = catalogue_pipeline_args("rcm-wan2.1-t2v-1.3b", download=False)
    assert args == {"model": str(tmp_path / "diffusion_models" / "rCM_Wan2.1_T2V_1.3B_480p.pt"),
                    "vae": str(tmp_path / "vae" / "Wan2.1_VAE.pth"),
                    "text_encoder": str(tmp_path / "text_encoders" / "models_t5_umt5-xxl-enc-bf16.pth"),
                    "low_noise_model": None, "clip_vision": None, "lora": None,
                    "defaults": catalogue.models["rcm-wan2.1-t2v-1.3b"].defaults}
    for file in catalogue.expand(["turbowan2.2-i2v-a14b-720p"]):
        path = hub.target_path(file)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    pair = catalogue_pipeline_args("turbowan2.2-i2v-a14b-720p", download=False)
    assert pair["low_noise_model"] == str(tmp_path / "diffusion_models" / "TurboWan2.2-I2V-A14B-low-720P.pth")
    assert pair["defaults"]["boundary"] == 0.9
    assert catalogue_pipeline_args("alice-tiny", download=False) is None
    with pytest.raises(AliceError, match="--download fetches catalogue models only"):
        catalogue_pipeline_args("alice-tiny", download=True)
    with pytest.raises(AliceError, match="ComfyUI's own loaders"):
        catalogue_pipeline_args("rcm-wan2.1-t2v-1.3b-comfy", download=False)
    with pytest.raises(AliceError, match="downloads happen only when asked"):
        catalogue_pipeline_args("turbowan2.1-t2v-1.3b", download=False)


def test_a_get_that_fails_before_its_first_byte_leaves_no_empty_partial(fake_hub, catalogue, tmp_path):
    fake_hub.cdn_get_status = 403
    with pytest.raises(hub.HubUnreachable, match="nothing was kept"):
        hub.ensure_files("acme-dit", download=True, folders=hub.standalone_folders(tmp_path), catalogue=catalogue)
    assert _files_under(tmp_path / "diffusion_models") == []


def test_non_lfs_files_are_checked_against_their_git_blob_id(fake_hub, catalogue, tmp_path):
    fake_hub.corrupt.add(hashlib.sha256(VAE).hexdigest())  # served by the Hub itself, not the CDN
    with pytest.raises(AliceError, match="git blob id"):
        hub.ensure_files("acme-vae", download=True, folders=hub.standalone_folders(tmp_path), catalogue=catalogue)
    assert _files_under(tmp_path / "vae") == []
    fake_hub.corrupt.clear()
    paths = hub.ensure_files("acme-vae", download=True, folders=hub.standalone_folders(tmp_path), catalogue=catalogue)
    assert paths["acme-vae"].read_bytes() == VAE


def test_disk_headroom_is_proportional_to_the_download(fake_hub, catalogue, tmp_path, monkeypatch):
    assert hub.disk_headroom(1_000_000) == 1024**2 and hub.disk_headroom(100 * 1024**3) == hub.DISK_HEADROOM
    assert hub.disk_headroom(len(DIT)) == len(DIT) // 10
    # 11 MB to fetch with 14 MB free: enough (a fixed 256 MB of headroom refused this).
    monkeypatch.setattr(hub.shutil, "disk_usage", lambda _path: type("Usage", (), {"free": len(DIT) + 3_000_000})())
    paths = hub.ensure_files("acme-dit", download=True, folders=hub.standalone_folders(tmp_path), catalogue=catalogue)
    assert paths["acme-dit"].read_bytes() == DIT
