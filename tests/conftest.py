"""Fixtures several test files share."""

import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from flowarena.models.toy import ToyConfig, ToyNet, save_toy

TINY = ToyConfig(channels=(8, 16, 16), text_dim=16, heads=2)
"""A toy model small enough that a training epoch takes a fraction of a second."""


@pytest.fixture
def interrupted(monkeypatch):
    """`with interrupted(): run_experiment(...)`: Ctrl-C in the n-th epoch trained (the second
    by default: after the first checkpoint), expected; the trainer is restored afterwards."""
    from flowarena.methods.trainer import Trainer

    @contextmanager
    def at(n: int = 2):
        original, calls = Trainer.train_epoch, {"n": 0}

        def dying(self, epoch):
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt
            return original(self, epoch)

        monkeypatch.setattr(Trainer, "train_epoch", dying)
        try:
            with pytest.raises(KeyboardInterrupt):
                yield
        finally:
            monkeypatch.setattr(Trainer, "train_epoch", original)
    return at


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    """The tiny toy model, random weights (seed 0), as a weights file."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "toy.safetensors"
    save_toy(ToyNet(TINY), path, dtype=torch.float32)
    return str(path)


@pytest.fixture(scope="module")
def offline_single_thread():
    """No hub access; one thread, since the tiny real networks are too small to gain from
    more, and two spinning threads on busy cores made such files ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipeline_dirs(tmp_path_factory):
    """The tiny diffusers pipelines (tests/tiny_pipelines.py), saved as a user's checkpoints are:
    model name → directory."""
    from tests.tiny_pipelines import BUILDERS, save_tiny

    root = tmp_path_factory.mktemp("pipelines")
    return {name: save_tiny(name, root / name) for name in BUILDERS}


@pytest.fixture(scope="module")
def scorer_dirs(tmp_path_factory):
    """The tiny VQA judge and PickScore (tests/tiny_scorers.py), saved: "judge" / "pickscore" → directory."""
    from tests.tiny_scorers import save_clip, save_qwen3_vl

    root = tmp_path_factory.mktemp("scorers")
    return {"judge": save_qwen3_vl(root / "judge"), "pickscore": save_clip(root / "pickscore")}


@pytest.fixture
def methods_with(tmp_path):
    """`methods_with(name, code)`: a copy of the package's methods/ with one more file in it, the
    other packages linked; returns the directory to put first on sys.path (where `flowarena`
    is that copy), so a subprocess imports the new method as a user's one file would be."""
    def copy(name: str, code: str) -> Path:
        root, dst = Path(__file__).resolve().parents[1], tmp_path / "copy" / "flowarena"
        dst.mkdir(parents=True)
        for package in ("core", "tasks", "models", "rewards"):
            (dst / package).symlink_to(root / package)
        shutil.copytree(root / "methods", dst / "methods", ignore=shutil.ignore_patterns("__pycache__"))
        (dst / "methods" / name).write_text(code)
        return dst.parent
    return copy
