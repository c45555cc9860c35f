"""Fixtures several test files share."""

from contextlib import contextmanager

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
