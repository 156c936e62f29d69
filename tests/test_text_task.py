"""The text task (``lti-reduce train|sweep --task text``): its corpus, its determinism, and the command end to end.

The corpus is read from the standard library; its hashes are checked against ``hashlib`` on the files read
directly, the split against the file lists, and the batches and validation windows against a second draw.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from adapters.torch.experiment.config import ConfigError
from adapters.torch.experiment.text import (
    TRAIN_FILES,
    VAL_FILES,
    TextConfig,
    build_text_model,
    load_corpus,
    train_batches,
    train_text_run,
    val_windows,
)


def _tiny(**kw):
    base = dict(d_model=8, d_state=8, rank=4, n_layers=1, head_dim=8, seq_len=12, batch_size=2, steps=6, n_val=4,
                eval_every=2, calib_windows=2, progress=False)
    base.update(kw)
    return TextConfig(**base)


def test_the_split_is_by_file_and_its_hashes_are_those_of_the_files():
    corpus = load_corpus()
    assert not set(TRAIN_FILES) & set(VAL_FILES) and "pydoc_data/topics.py" in TRAIN_FILES
    root = Path(sysconfig.get_paths()["stdlib"])
    for split, names, data in (("train", TRAIN_FILES, corpus.train), ("val", VAL_FILES, corpus.val)):
        raw = b"".join((root / n).read_bytes() + b"\n" for n in names)
        assert corpus.sha256[split] == hashlib.sha256(raw).hexdigest()
        assert bytes(data.numpy()) == raw
    again = load_corpus()
    assert again.sha256 == corpus.sha256 and torch.equal(again.val, corpus.val)


def test_a_missing_standard_library_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="pydoc_data/topics.py"):
        load_corpus(str(tmp_path))


def test_batches_are_fixed_by_the_seed_and_validation_by_nothing():
    corpus, config = load_corpus(), _tiny()
    first, again, other = (list(train_batches(corpus, config, s)) for s in (0, 0, 1))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    assert first[0].shape == (2, 13) and first[0].dtype == torch.int64 and int(first[0].max()) < 256
    assert torch.equal(val_windows(corpus, config), val_windows(corpus, replace(config, seed=5)))


@pytest.mark.parametrize("model", ["mamba", "mamba2"])
def test_a_run_is_deterministic_and_the_cut_reaches_the_rank(model):
    corpus, config = load_corpus(), _tiny(model=model)
    records = []
    for _ in range(2):
        net = build_text_model(config, seed=3)
        records.append(train_text_run(net, corpus, config, seed=3, cut=True))
    a, b = records
    assert [c[2] for c in a["curve"]] == [c[2] for c in b["curve"]]
    assert a["cut"]["step"] == 1 and a["d_state"] == 4 == net.config.state_size
    assert a["curve"][-1][0] == config.steps and a["val_bpb"] > 0


def test_the_chunk_size_of_mamba2_is_the_context():
    net = build_text_model(_tiny(model="mamba2", seq_len=12))
    assert net.config.chunk_size == 12


def test_bad_text_options_are_refused():
    with pytest.raises(ConfigError, match="rank"):
        _tiny(rank=8).check()
    with pytest.raises(ConfigError, match="mamba"):
        _tiny(model="lru").check()


def test_train_task_text_end_to_end(tmp_path, capsys):
    from adapters.torch.experiment.cli import main

    out = tmp_path / "text"
    code = main(["train", "--task", "text", "--model", "mamba2", "--quick", "--steps", "6", "--d-state", "8",
                 "--rank", "4", "--seq-len", "12", "--d-model", "8", "--head-dim", "4", "--no-progress",
                 "--out", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0 and "compressed - scratch" in stdout and "bits/byte" in stdout
    saved = json.loads((out / "results.json").read_text())
    assert saved["dataset"]["sha256"] == load_corpus().sha256
    assert [r["d_state"] for r in saved["summary"]] == [8, 4, 4]
    assert saved["config"]["head_dim"] == 4 and saved["config"]["d_model"] == 8
    assert set(saved["timing"]["0"]) == {"full", "compressed", "scratch"}


def test_task_and_model_must_agree(tmp_path, capsys):
    from adapters.torch.experiment.cli import main

    assert main(["sweep", "--model", "mamba", "--out", str(tmp_path / "x")]) != 0
    assert "--task text" in capsys.readouterr().err
    assert main(["train", "--task", "text", "--model", "mamba", "--tol", "0.1", "--out", str(tmp_path / "y")]) != 0
    assert "--rank" in capsys.readouterr().err
    assert main(["train", "--task", "text", "--device", "cuda", "--out", str(tmp_path / "z")]) != 0
    assert "runs on the CPU" in capsys.readouterr().err
