"""`bench run --log-to tensorboard|wandb`: the live logs carry the metrics.jsonl names and values."""

import json

import pytest

from flowarena.harness.live import LiveLogError, check_log_to, scalars
from flowarena.harness.run import plan, run_experiment
from tests.test_run import PRESET

EVAL_TAGS = {"eval/gm", "eval/am", "eval/kl_to_pretrained", "eval/preference_ood"}


def _rows(cell):
    return [json.loads(line) for line in (cell / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_gets_the_metrics_jsonl_names_and_values(tiny_path, tmp_path):  # noqa: F811
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = run_experiment(plan(tmp_path / "r", ["dppo"], "toy", PRESET, 1, tiny_path, log_to="tensorboard"),
                         progress=False)
    rows = _rows(run / "toy" / "dppo" / "seed0")
    acc = EventAccumulator(str(run / "tensorboard" / "toy" / "dppo" / "seed0"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert set(scalars(rows[0])) <= tags and EVAL_TAGS <= tags
    assert any("/i1/" in t for t in tags)  # the later inner loop's diagnostics too
    for key in ("reward_mean", "k0/ratio_mean", "loss"):
        logged = acc.Scalars(key)
        assert [e.step for e in logged] == [r["epoch"] + 1 for r in rows]
        assert [e.value for e in logged] == pytest.approx([r[key] for r in rows], rel=1e-6)
    assert [e.step for e in acc.Scalars("eval/gm")] == list(range(PRESET.epochs + 1))  # eval every epoch


def test_wandb_offline_needs_no_account(tiny_path, tmp_path, monkeypatch):  # noqa: F811
    import wandb

    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    calls = []
    log = wandb.sdk.wandb_run.Run.log

    def spy(self, data, step=None, **kw):
        calls.append((dict(data), step))
        return log(self, data, step=step, **kw)

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", spy)
    run = run_experiment(plan(tmp_path / "r", ["grpo"], "toy", PRESET, 1, tiny_path, log_to="wandb"),
                         progress=False)
    rows = _rows(run / "toy" / "grpo" / "seed0")
    epochs = [(data, step) for data, step in calls if "reward_mean" in data]
    assert [step for _, step in epochs] == [r["epoch"] + 1 for r in rows]
    assert [data for data, _ in epochs] == [scalars(r) for r in rows]  # the metrics.jsonl rows
    assert any(EVAL_TAGS <= set(data) for data, _ in calls)
    offline = sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1  # offline by default: written locally, sent nowhere
    written = offline[0].read_bytes()  # wandb's own record of the run holds every name and value
    for key in scalars(rows[-1]):
        assert key.encode() in written, key
    assert repr(rows[-1]["reward_mean"]).encode() in written


def test_unknown_backend_fails_before_any_work(tmp_path, tiny_path):  # noqa: F811
    with pytest.raises(LiveLogError, match="use one of"):
        check_log_to("mlflow9")
    with pytest.raises(LiveLogError):
        run_experiment(plan(tmp_path / "r", ["grpo"], "toy", PRESET, 1, tiny_path, log_to="x"),
                       progress=False)
    assert not (tmp_path / "r").exists()
