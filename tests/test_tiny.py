"""Tests for ppo_core.modeling.tiny: char tokenizer + tiny GPT-2 checkpoints matching the TRL baseline."""

from __future__ import annotations

import hashlib
import json
import os
import re

import pytest
import torch

from ppo_core.modeling.tiny import (
    MODEL_SIZES,
    build_char_tokenizer,
    build_tiny_model,
    init_model,
)

# The TRL baseline's small policy (make_tiny_models.py --size small, seed 0): parameter count and the sha256 of
# its model.safetensors (README: "small policy sha256 8bae9d54…"). Matching these proves the same workload.
BASELINE_SMALL_PARAMS = 3_217_664
BASELINE_SMALL_SHA256 = "8bae9d5414c5bfde19642bba62143956d3485fca0b971afa46cd24884b1918e5"


def _sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _baseline_id(ch: str) -> int:
    # baseline scheme: ["<pad>", "<bos>", "<eos>", "<unk>"] + [chr(i) for i in range(0x20, 0x7F)]
    return 4 + ord(ch) - 0x20


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return init_model(tmp_path_factory.mktemp("ckpt") / "tiny", "tiny", seed=0)


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    return init_model(tmp_path_factory.mktemp("ckpt") / "small", "small", seed=0)


# ----------------------------------------------------------------------------------------------- tokenizer


def test_special_token_ids(tok):
    assert [tok.convert_tokens_to_ids(t) for t in ["<pad>", "<bos>", "<eos>", "<unk>"]] == [0, 1, 2, 3]
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.pad_token_id != tok.eos_token_id
    assert len(tok) == 99


def test_char_ids_match_baseline_scheme(tok):
    assert tok.convert_tokens_to_ids(" ") == 4
    assert tok.convert_tokens_to_ids("a") == 69
    assert tok.convert_tokens_to_ids("~") == 98
    for i in range(0x20, 0x7F):
        ch = chr(i)
        assert tok.convert_tokens_to_ids(ch) == _baseline_id(ch)
        assert tok(ch, add_special_tokens=False).input_ids == [_baseline_id(ch)]


def test_encode_prepends_bos_and_round_trips(tok):
    text = "reverse: abc ="
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id
    assert ids == [1] + [_baseline_id(c) for c in text]
    assert tok(text, add_special_tokens=False).input_ids == ids[1:]
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(ids) == "<bos>" + text
    # every printable char (spaces, punctuation, repeated spaces) survives a round trip
    allchars = "".join(chr(i) for i in range(0x20, 0x7F)) + "  x  "
    assert tok.decode(tok(allchars).input_ids, skip_special_tokens=True) == allchars
    # out-of-vocabulary characters map to <unk>
    assert tok("é\n", add_special_tokens=False).input_ids == [3, 3]


def test_left_padding_and_no_chat_template(tok):
    assert tok.padding_side == "left"
    assert not getattr(tok, "chat_template", None)
    batch = tok(["a", "abc"], padding=True, return_tensors="pt")
    assert batch.input_ids.tolist() == [[0, 0, 1, 69], [1, 69, 70, 71]]
    assert batch.attention_mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]


# ----------------------------------------------------------------------------------------------- models


def test_model_sizes():
    assert MODEL_SIZES["small"] == dict(n_layer=4, n_head=4, n_embd=256, n_positions=128)
    assert MODEL_SIZES["medium"] == dict(n_layer=6, n_head=8, n_embd=512, n_positions=128)
    assert MODEL_SIZES["tiny"] == dict(n_layer=2, n_head=2, n_embd=64, n_positions=128)


def test_unknown_size_raises(tmp_path):
    with pytest.raises(ValueError, match="tiny.*small.*medium"):
        build_tiny_model("huge")
    with pytest.raises(ValueError, match="known sizes"):
        init_model(tmp_path / "x", "huge")
    assert not (tmp_path / "x").exists()


def test_build_tiny_model_restores_rng_and_is_seeded():
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    m1 = build_tiny_model("tiny", seed=5, n_positions=64)
    assert torch.equal(torch.rand(3), expected)  # caller's RNG stream untouched
    m2 = build_tiny_model("tiny", seed=5, n_positions=64)
    m3 = build_tiny_model("tiny", seed=6, n_positions=64)
    w1, w2, w3 = (m.transformer.h[0].attn.c_attn.weight for m in (m1, m2, m3))
    assert torch.equal(w1, w2) and not torch.equal(w1, w3)
    cfg = m1.config
    assert (cfg.vocab_size, cfg.n_positions, cfg.n_layer, cfg.n_embd) == (99, 64, 2, 64)
    assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (0, 1, 2)
    assert all(p.dtype == torch.float32 for p in m1.parameters())


def test_init_model_loads_with_auto_classes(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    assert sorted(os.listdir(tiny_dir)) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert json.loads((tiny_dir / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    # no leftover temporary siblings
    assert [p.name for p in tiny_dir.parent.iterdir()] == ["tiny"]

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.padding_side == "left"
    assert tok("reverse: abc =").input_ids == build_char_tokenizer()("reverse: abc =").input_ids
    gen = GenerationConfig.from_pretrained(tiny_dir)
    assert (gen.pad_token_id, gen.bos_token_id, gen.eos_token_id) == (0, 1, 2)
    assert model.config.vocab_size == len(tok) == 99

    batch = tok(["reverse: abc =", "reverse: xy ="], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, batch.input_ids.shape[1], 99)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_same_seed_identical_bytes_different_seed_differs(tiny_dir, tmp_path):
    again = init_model(tmp_path / "again", "tiny", seed=0)
    other = init_model(tmp_path / "other", "tiny", seed=1)
    for name in ["model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"]:
        assert (again / name).read_bytes() == (tiny_dir / name).read_bytes(), name
    assert _sha256(other / "model.safetensors") != _sha256(tiny_dir / "model.safetensors")


def test_small_matches_baseline(small_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(small_dir)
    assert sum(p.numel() for p in model.parameters()) == BASELINE_SMALL_PARAMS
    assert sum(p.numel() for p in build_tiny_model("small").parameters()) == BASELINE_SMALL_PARAMS
    cfg = model.config
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.n_positions, cfg.vocab_size) == (4, 4, 256, 128, 99)
    # byte-identical weights to the TRL baseline's small policy (seed 0)
    assert _sha256(small_dir / "model.safetensors") == BASELINE_SMALL_SHA256


def test_existing_dir_refused_unless_overwrite(tmp_path):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "keep.txt").write_text("do not clobber")
    with pytest.raises(FileExistsError, match=re.escape(str(out))):
        init_model(out, "tiny")
    assert sorted(os.listdir(out)) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp dir left behind

    init_model(out, "tiny", seed=3, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]

    empty = tmp_path / "empty"
    empty.mkdir()
    assert init_model(empty, "tiny") == empty.absolute()  # an empty existing dir is fine
    assert (empty / "tokenizer.json").is_file()


def test_crash_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    from transformers import GPT2LMHeadModel

    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "keep.txt").write_text("old checkpoint")

    def boom(self, *a, **k):
        raise RuntimeError("simulated crash while saving")

    monkeypatch.setattr(GPT2LMHeadModel, "save_pretrained", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        init_model(tmp_path / "new", "tiny")
    with pytest.raises(RuntimeError, match="simulated crash"):
        init_model(out, "tiny", overwrite=True)
    # nothing half-written: the new dir was never created, the old checkpoint is intact, no temp dirs remain
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert sorted(os.listdir(out)) == ["keep.txt"]


def test_overwrite_never_replaces_the_current_directory(tmp_path, monkeypatch, capsys):
    """`init-model . --overwrite` (or `..`) must not replace the directory the user stands in."""
    from ppo_core.cli import main

    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "notes.txt").write_text("mine\n")
    monkeypatch.chdir(tmp_path / "work")
    for target in (".", ".."):
        assert main(["init-model", target, "--size", "tiny", "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert "refusing to --overwrite" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "work" / "notes.txt").read_text() == "mine\n"
