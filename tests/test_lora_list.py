"""The LoRA list ComfyUI users see (Alice LoRA Loader's lora_name, filled from folder_paths.get_filename_list) and
the app's: a finetune's two files (X and X.teacher) are one entry X, and applying X puts each file on its own
network; run the way ComfyUI's executor runs the nodes."""

from __future__ import annotations

import pytest
import torch

from alice_core.bundle import bundled_loras
from alice_core.errors import AliceError
from alice_core.loading.lora import write_loras
from alice_core.train.finetune_job import without_teacher_halves

from tests.bundles import random_tiny_bundle
from tests.comfy_host import ComfyFolders, ComfyHost, load_pack

MODEL = "random-test/model.json"
KEY = "diffusion_model.blocks.0.self_attn.q.lora_{}.weight"


def lora(path, seed: int, applies_to: str | None) -> torch.Tensor:
    """A rank-2 LoRA on the first block's query (PEFT names, no alpha: scale 1) with `alice finetune`'s metadata
    naming its network (None: a LoRA made elsewhere). Returns its weight difference up @ down."""
    g = torch.Generator().manual_seed(seed)
    down, up = torch.randn(2, 32, generator=g) * 0.1, torch.randn(32, 2, generator=g) * 0.1
    path.parent.mkdir(parents=True, exist_ok=True)
    write_loras([(path, {KEY.format("A"): down, KEY.format("B"): up}, {"applies_to": applies_to} if applies_to else {})])
    return up @ down


@pytest.fixture
def comfy(tmp_path):
    """ComfyUI folders with a random bundle and, in models/loras: two finetunes (one in a subfolder), a teacher
    LoRA whose student is gone, and a LoRA made elsewhere."""
    root = tmp_path / "comfyui"
    random_tiny_bundle(root / "models" / "diffusion_models" / "random-test")
    loras = root / "models" / "loras"
    deltas = {"style.safetensors": lora(loras / "style.safetensors", 1, "rcm"),
              "style.teacher.safetensors": lora(loras / "style.teacher.safetensors", 2, "teacher"),
              "sub/mine.safetensors": lora(loras / "sub" / "mine.safetensors", 3, "rcm"),
              "sub/mine.teacher.safetensors": lora(loras / "sub" / "mine.teacher.safetensors", 4, "teacher"),
              "lonely.teacher.safetensors": lora(loras / "lonely.teacher.safetensors", 5, "teacher"),
              "plain.safetensors": lora(loras / "plain.safetensors", 6, None)}
    return ComfyHost(ComfyFolders(root), throttle=False), deltas


def test_a_finetunes_teacher_file_is_not_its_own_entry(comfy):
    host, deltas = comfy
    with host.installed():
        listed = host.modules["folder_paths"].get_filename_list("loras")
        choices = load_pack().NODE_CLASS_MAPPINGS["AliceLoraLoader"].INPUT_TYPES()["required"]["lora_name"][0]
    assert sorted(listed) == sorted(deltas)  # ComfyUI lists every file
    shipped = [name for name in bundled_loras() if name not in listed]
    assert choices == ["lonely.teacher.safetensors", "plain.safetensors",
                       "style.safetensors", "sub/mine.safetensors", *shipped]
    assert without_teacher_halves(["a.teacher.safetensors", "b.safetensors", "a.safetensors"]) == [
        "b.safetensors", "a.safetensors"]


def test_the_one_entry_puts_each_file_on_its_own_network(comfy):
    host, deltas = comfy
    model = host.run("AliceModelLoader", model_name=MODEL, precision="fp32", offload=False, download=False)[0]
    base = {sampler: dit.blocks[0].self_attn.q.weight.detach().clone() for sampler, dit in model.dits.items()}
    for name, teacher in (("style.safetensors", "style.teacher.safetensors"),
                          ("sub/mine.safetensors", "sub/mine.teacher.safetensors")):
        patched = host.run("AliceLoraLoader", model=model, lora_name=name, strength=0.5)[0]
        for sampler, file in (("rcm", name), ("teacher", teacher)):
            torch.testing.assert_close(patched.dits[sampler].blocks[0].self_attn.q.weight,
                                       base[sampler] + 0.5 * deltas[file], atol=1e-6, rtol=0)
        assert patched.loras == ((name.rsplit("/")[-1], 0.5), (teacher.rsplit("/")[-1], 0.5))
    # a LoRA made elsewhere goes on both networks; a teacher LoRA without its student on the teacher alone
    plain = host.run("AliceLoraLoader", model=model, lora_name="plain.safetensors", strength=1.0)[0]
    lonely = host.run("AliceLoraLoader", model=model, lora_name="lonely.teacher.safetensors", strength=1.0)[0]
    for sampler in ("rcm", "teacher"):
        torch.testing.assert_close(plain.dits[sampler].blocks[0].self_attn.q.weight,
                                   base[sampler] + deltas["plain.safetensors"], atol=1e-6, rtol=0)
    torch.testing.assert_close(lonely.dits["rcm"].blocks[0].self_attn.q.weight, base["rcm"], atol=0, rtol=0)


def test_a_graph_that_also_applies_the_teacher_file_alone_is_refused(comfy):
    """A graph made when the two files were two entries: the Finetune node's teacher_lora_name on a second loader
    (trained_lora). Its teacher half would go on twice, in either order."""
    host, _ = comfy
    model = host.run("AliceModelLoader", model_name=MODEL, precision="fp32", offload=False, download=False)[0]
    both = host.run("AliceLoraLoader", model=model, lora_name="plain.safetensors", strength=1.0,
                    trained_lora="style.safetensors")[0]
    teacher_only = host.run("AliceLoraLoader", model=model, lora_name="plain.safetensors", strength=1.0,
                            trained_lora="style.teacher.safetensors")[0]
    assert teacher_only.loras == (("style.teacher.safetensors", 1.0),)
    fix = ("Alice LoRA Loader: style.teacher.safetensors is already on the model, and a finetune's LoRA applies it "
           "together with its student LoRA; remove the LoRA loader that applies style.teacher.safetensors alone")
    for first, second in ((both, "style.teacher.safetensors"), (teacher_only, "style.safetensors")):
        with pytest.raises(AliceError) as caught:
            host.run("AliceLoraLoader", model=first, lora_name="plain.safetensors", strength=1.0, trained_lora=second)
        assert str(caught.value) == fix
