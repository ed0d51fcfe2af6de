from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from autoslm import data
from autoslm.errors import ChecksumError, UserError


def test_manifest_lists_every_shipped_file_with_matching_sha() -> None:
    files = data.manifest()["files"]
    assert set(files) == {"calibration-sotu", "heldout-austen", "task-hyperbaton", "task-cloze"}
    for name, entry in files.items():
        records = data.read_records(name)
        assert len(records) == entry["records"] > 0


def test_corpora_are_real_text() -> None:
    heldout = data.corpus_texts("heldout")
    assert any("Anne Elliot" in t for t in heldout)  # Persuasion
    assert any("Catherine Morland" in t for t in heldout)  # Northanger Abbey
    calibration = data.corpus_texts("calibration")
    assert len(calibration) == 66 and not any("[Applause]" in t for t in calibration)


def test_tasks_have_expected_shape() -> None:
    hyper = data.load_task("hyperbaton")
    assert len(hyper) == 1000 and {"a", "b", "correct"} <= set(hyper[0])
    assert sorted(hyper[0]["a"].split()) == sorted(hyper[0]["b"].split())  # same words, different order
    cloze = data.load_task("cloze")
    assert len(cloze) > 300 and all(c["target"].isalpha() for c in cloze)


def test_token_windows_deterministic_with_prefix_property(tiny) -> None:
    a = data.token_windows(tiny.tokenizer, "heldout", seq_len=64, count=8, seed=3)
    b = data.token_windows(tiny.tokenizer, "heldout", seq_len=64, count=8, seed=3)
    small = data.token_windows(tiny.tokenizer, "heldout", seq_len=64, count=3, seed=3)
    other = data.token_windows(tiny.tokenizer, "heldout", seq_len=64, count=8, seed=4)
    assert a.shape == (8, 64)
    assert a.equal(b)
    assert small.equal(a[:3])
    assert not other.equal(a)


def test_too_many_windows_is_a_clear_error(tiny) -> None:
    with pytest.raises(UserError, match=r"only .* windows"):
        data.token_windows(tiny.tokenizer, "heldout", seq_len=4096, count=10_000)


def test_corrupted_file_is_rejected(tmp_path: Path) -> None:
    copy = tmp_path / "data"
    shutil.copytree(data.DATA_DIR / "files", copy / "files")
    target = copy / "files" / "task-cloze.jsonl.gz"
    blob = bytearray(target.read_bytes())
    blob[100] ^= 0xFF
    target.write_bytes(bytes(blob))
    with pytest.raises(ChecksumError, match="does not match its recorded sha256"):
        data.read_records("task-cloze", data_dir=copy)
    (copy / "files" / "task-hyperbaton.jsonl.gz").unlink()
    with pytest.raises(ChecksumError, match="missing"):
        data.read_records("task-hyperbaton", data_dir=copy)


def test_unknown_names_and_hf_syntax() -> None:
    with pytest.raises(UserError, match="unknown corpus"):
        data.corpus_texts("wikipedia")
    with pytest.raises(UserError, match="hf:PATH"):
        data.corpus_texts("hf:wikitext")


class _WithBos:
    """A tokenizer that puts a BOS id before every text it encodes with special tokens, as Gemma's does."""

    name_or_path = "with-bos"

    def __init__(self, tokenizer, bos: int = 1) -> None:
        self.tokenizer, self.bos = tokenizer, bos

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return {"input_ids": ([self.bos] if add_special_tokens else []) + ids}

    def __len__(self) -> int:
        return len(self.tokenizer)


def test_windows_start_with_the_tokenizers_own_prefix(tiny) -> None:
    plain = tiny.tokenizer
    assert data.text_prefix(plain) == []  # SmolLM2's tokenizer adds no BOS: windows are plain corpus tokens
    tokens = data.corpus_tokens(plain, "heldout")
    windows = data.token_windows(plain, "heldout", seq_len=16, count=3)
    for row in windows:
        start = next(i for i in range(0, tokens.numel() - 16, 16) if tokens[i : i + 16].equal(row))
        assert start % 16 == 0
    bos = _WithBos(plain)
    assert data.text_prefix(bos) == [1]
    with_bos = data.token_windows(bos, "heldout", seq_len=16, count=3)
    assert with_bos.shape == (3, 16) and with_bos[:, 0].tolist() == [1, 1, 1]
    for row in with_bos:  # then 15 consecutive corpus tokens, at a multiple of 15
        starts = [i for i in range(0, tokens.numel() - 15, 15) if tokens[i : i + 15].equal(row[1:])]
        assert starts
    with pytest.raises(UserError, match="seq_len >= 3"):
        data.token_windows(bos, "heldout", seq_len=2, count=1)
