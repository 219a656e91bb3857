"""Hostile and broken weight files, crafted here: nothing declared is materialised before it is checked against the
bytes on disk, no pickle runs, and every refusal says what the file is and what to do."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from alice_core.errors import AliceError
from alice_core.loading.checkpoint import load_torch_file, open_checkpoint, read_state_dict
from alice_core.loading.dit import load_dit
from alice_core.models.config import DIT_PRESETS
from alice_core.models.dit import WanDiT
from tests.bundles import random_tiny_bundle, save_dit
from tests.hardening import assert_one_line_error, peak_rss_growth, run_alice, write_safetensors_header
from tests.test_text_encoders import tiny_umt5  # noqa: F401 (fixture)

MB = 1024 * 1024


def wan_shapes(preset: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in WanDiT(DIT_PRESETS[preset]).state_dict().items()}


def write_expanded_pt(path, preset: str = "wan2.1-t2v-1.3b"):
    """Every tensor of a real Wan DiT as a stride-0 view of one stored float: a few hundred KB claiming GBs."""
    torch.save({k: torch.zeros(1).expand(shape) for k, shape in wan_shapes(preset).items()}, path)
    return path


@pytest.mark.parametrize("preset", ["wan2.1-t2v-1.3b", "wan2.1-t2v-14b"])
def test_expanded_pt_is_refused_before_materialising(tmp_path, preset):
    path = write_expanded_pt(tmp_path / "expanded.pt", preset)
    claimed = sum(torch.Size(s).numel() * 4 for s in wan_shapes(preset).values())
    assert path.stat().st_size < MB and claimed > 5e9  # 1.3B: 5.7 GB, 14B: 57 GB from under 1 MB
    for load in (lambda: open_checkpoint(path), lambda: read_state_dict(path), lambda: load_dit(path)):
        result, grown, seconds = peak_rss_growth(load)
        assert isinstance(result, AliceError) and "expanded or overlapping view" in str(result), result
        assert grown < 64 * MB and seconds < 2.0, (grown, seconds)


def test_many_views_over_one_storage_are_refused(tmp_path):
    base = torch.zeros(1024 * 1024)  # 4 MB stored, 40 views of all of it: 160 MB claimed
    path = tmp_path / "views.pt"
    torch.save({f"w{i}": base[i:] for i in range(40)}, path)
    with pytest.raises(AliceError, match="views needing"):
        load_torch_file(path)
    tied = tmp_path / "tied.pt"  # a tied weight (the same view twice) is fine
    torch.save({"a": base, "b": base}, tied)
    assert set(load_torch_file(tied)) == {"a", "b"}


def test_huge_safetensors_header_is_refused_in_milliseconds(tmp_path):
    entries = 1_700_000
    entry = '"t%07d":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'
    header = ("{" + ",".join(entry % i for i in range(entries)) + "}").encode()
    path = write_safetensors_header(tmp_path / "bomb.safetensors", header, b"\0" * 4)
    assert path.stat().st_size > 90 * MB
    del header
    for load in (lambda: open_checkpoint(path), lambda: read_state_dict(path), lambda: load_dit(path)):
        result, grown, seconds = peak_rss_growth(load)
        assert isinstance(result, AliceError) and "header is" in str(result), result
        assert grown < 4 * MB and seconds < 0.1, (grown, seconds)


def test_header_longer_than_the_file_is_refused(tmp_path):
    path = write_safetensors_header(tmp_path / "short.safetensors", b"{}")
    path.write_bytes(path.read_bytes()[:8])  # the length says 2, no bytes follow
    with pytest.raises(AliceError, match="truncated or not safetensors"):
        read_state_dict(path)


def test_too_many_tensors_are_refused(tmp_path):
    from alice_core.loading import guards

    header = {f"t{i}": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]} for i in range(guards.MAX_TENSORS + 1)}
    path = write_safetensors_header(tmp_path / "many.safetensors", header, b"\0" * 4)
    assert path.stat().st_size < guards.MAX_SAFETENSORS_HEADER
    with pytest.raises(AliceError, match="tensors"):
        open_checkpoint(path)


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_pickle_refusal_names_the_global_and_runs_nothing(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"w": RunsCode()}, path)
    proc = run_alice("convert", str(path), str(tmp_path / "out.safetensors"), "--to", "official", cwd=tmp_path)
    line = assert_one_line_error(proc, "wants to run code", "posix.system", "safetensors")
    assert len(line) < 300
    assert not (tmp_path / "PWNED").exists()


def test_legacy_pickle_with_a_global_is_refused_too(tmp_path):
    path = tmp_path / "evil_legacy.pt"
    with open(path, "wb") as f:
        pickle.dump({"w": RunsCode()}, f, protocol=2)
    with pytest.raises(AliceError) as err:
        read_state_dict(path)
    assert "posix.system" in str(err.value) or "unreadable" in str(err.value)
    assert not (tmp_path / "PWNED").exists()


# Random bytes make torch's unpickler fail in several ways (UnpicklingError, IndexError, EOFError, ...): each
# must read the same. Fixed seeds keep a failure reproducible.
@pytest.mark.parametrize("content, says", [
    *((np.random.default_rng(seed).bytes(4096), "pickle data is unreadable") for seed in range(16)),
    (b"hello, this is not a model\n", "it is a text file"),
    (b"", "it is an empty file"),
])
def test_non_checkpoints_are_named_for_what_they_are(tmp_path, content, says):
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    with pytest.raises(AliceError) as err:
        read_state_dict(path)
    assert says in str(err.value) and "download or export it again" in str(err.value)
    assert "code" not in str(err.value)  # not the pickle-that-runs-code message


def test_legacy_non_zip_checkpoint_still_loads(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save({"w": torch.arange(6.0)}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(load_torch_file(path)["w"], torch.arange(6.0))


def test_text_file_as_model_is_named_as_such(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my prompts\n")
    proc = run_alice("generate", "a ball", "-o", str(tmp_path / "o.gif"), "--model", str(notes), cwd=tmp_path)
    assert_one_line_error(proc, "text file")
    assert "single DiT checkpoint" not in proc.stderr


def test_nan_weights_are_refused(tmp_path):
    from alice_core.models.config import WanDiTConfig

    dit = WanDiT(WanDiTConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=1, in_dim=16, out_dim=16, text_dim=32))
    dit.blocks[0].ffn[0].weight.data[0, 0] = float("nan")
    path = save_dit(dit, tmp_path / "nan.safetensors")
    with pytest.raises(AliceError, match="NaN/inf"):
        load_dit(path)


def test_inf_weights_are_counted_and_large_finite_ones_load(tmp_path):
    from alice_core.models.config import WanDiTConfig

    dit = WanDiT(WanDiTConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=1, in_dim=16, out_dim=16, text_dim=32))
    dit.blocks[0].ffn[0].weight.data[:4] = 3e38  # finite, but their float32 sum overflows: not refused
    good = save_dit(dit, tmp_path / "large.safetensors")
    assert torch.equal(load_dit(good, precision="fp32").blocks[0].ffn[0].weight, dit.blocks[0].ffn[0].weight)
    dit.blocks[0].ffn[0].weight.data[1, :3] = torch.tensor([float("inf"), -float("inf"), float("nan")])
    bad = save_dit(dit, tmp_path / "inf.safetensors")
    with pytest.raises(AliceError, match="'blocks.0.ffn.0.weight' holds 3 NaN/inf values"):
        load_dit(bad, precision="fp32")


def test_integer_weights_are_refused(tmp_path):
    from alice_core.models.config import WanDiTConfig

    dit = WanDiT(WanDiTConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=1, in_dim=16, out_dim=16, text_dim=32))
    state = {k: v.contiguous() for k, v in dit.state_dict().items()}
    state["blocks.0.ffn.0.weight"] = state["blocks.0.ffn.0.weight"].to(torch.int32)
    path = tmp_path / "int.safetensors"
    save_file(state, str(path), metadata={"alice_dit_config": json.dumps(dit.config.to_dict())})
    with pytest.raises(AliceError, match="int32"):
        load_dit(path)


@pytest.mark.parametrize("meta", ["{not json", "[1, 2]", '{"dim": 32, "num_heads": 0}', '{"dim": "wide"}'])
def test_bad_stored_config_is_one_clear_error(tmp_path, meta):
    from alice_core.models.config import WanDiTConfig

    dit = WanDiT(WanDiTConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=1, in_dim=16, out_dim=16, text_dim=32))
    path = tmp_path / "bad_meta.safetensors"
    save_file({k: v.contiguous() for k, v in dit.state_dict().items()}, str(path), metadata={"alice_dit_config": meta})
    with pytest.raises(AliceError, match="alice_dit_config"):
        load_dit(path)


# -- text-encoder folders -----------------------------------------------------------------------------------------
def encoder_folder_with_code(tmp_path, tiny_umt5, config_file: str):
    """A copy of the tiny umT5 folder whose `config_file` names code in the folder that would leave a marker."""
    import shutil

    root, _, _ = tiny_umt5
    folder = tmp_path / "encoder"
    shutil.copytree(root / "text_encoder", folder)
    for f in (root / "tokenizer").iterdir():
        shutil.copy(f, folder)
    marker = tmp_path / "CODE_RAN"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\nfrom transformers import UMT5Config\n"
                                    "class EvilConfig(UMT5Config):\n    pass\n")
    config = json.loads((folder / config_file).read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoTokenizer": ["evil.EvilConfig", None]}
    (folder / config_file).write_text(json.dumps(config))
    return folder, marker


@pytest.mark.parametrize("config_file", ["config.json", "tokenizer_config.json"])
def test_model_folder_code_never_runs_and_nothing_asks(tmp_path, tiny_umt5, config_file):
    from alice_core.loading.text_encoders import load_text_encoder

    folder, marker = encoder_folder_with_code(tmp_path, tiny_umt5, config_file)
    with pytest.raises(AliceError, match="never"):
        load_text_encoder(folder)
    bundle = random_tiny_bundle(tmp_path / "bundle")
    # "y" on stdin would answer transformers' "run this code?" prompt; nothing may read it.
    proc = run_alice("generate", "a ball", "-o", str(tmp_path / "o.gif"), "--model", str(bundle.folder),
                     "--text-encoder", str(folder), cwd=tmp_path, input="y\ny\n", timeout=120)
    assert_one_line_error(proc, "auto_map", "never")
    assert not marker.exists()


def test_transformers_itself_is_told_not_to_run_folder_code(tmp_path, tiny_umt5):
    """Past Alice's own check, transformers gets trust_remote_code=False: it refuses rather than prompting."""
    from transformers import AutoConfig

    folder, marker = encoder_folder_with_code(tmp_path, tiny_umt5, "config.json")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "evil-unknown"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError):
        AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    assert not marker.exists()


def test_malicious_pytorch_model_bin_is_refused_by_name(tmp_path, tiny_umt5):
    import shutil

    from alice_core.loading.text_encoders import load_text_encoder

    root, _, _ = tiny_umt5
    shutil.copytree(root, tmp_path / "enc")
    folder = tmp_path / "enc" / "text_encoder"
    for f in folder.glob("*.safetensors"):
        f.unlink()
    torch.save({"shared.weight": RunsCode()}, folder / "pytorch_model.bin")
    with pytest.raises(AliceError, match="wants to run code .posix.system"):
        load_text_encoder(folder)
    assert not (tmp_path / "PWNED").exists() and not os.path.exists("PWNED")


def test_legacy_non_zip_wan_t5_checkpoint_loads(tmp_path, tiny_umt5):
    from alice_core.loading.text_encoders import load_umt5
    from tests.test_text_encoders import PROMPTS

    from tests.test_text_encoders import wan_umt5_state

    root, model, _ = tiny_umt5
    file = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    torch.save(wan_umt5_state(model), file, _use_new_zipfile_serialization=False)
    legacy = load_umt5(file, tokenizer_path=root / "tokenizer")
    folder = load_umt5(root)
    torch.testing.assert_close(legacy.encode(PROMPTS), folder.encode(PROMPTS), atol=1e-6, rtol=1e-6)


def test_vae_z_dim_advice_is_in_cli_words(tmp_path):
    from alice_core.loading.vae import load_wan_vae
    from alice_core.models.config import WanVAEConfig
    from alice_core.models.vae import WanVAE

    cfg = WanVAEConfig(base_dim=8, z_dim=48, dim_mult=(1, 2, 2, 2), num_res_blocks=1,
                       latents_mean=(0.0,) * 48, latents_std=(1.0,) * 48)
    path = tmp_path / "wan2.2_vae.safetensors"
    save_file({k: v.contiguous() for k, v in WanVAE(cfg).state_dict().items()}, str(path))
    with pytest.raises(AliceError) as err:
        load_wan_vae(path)
    message = str(err.value)
    assert "Wan2.1 VAE (z_dim 16)" in message and "Wan2.2 VAE (z_dim 48)" in message
    assert "--vae" in message and "alice download wan2.1-vae" in message
    assert "WanVAEConfig" not in message  # a Python class the CLI cannot take
