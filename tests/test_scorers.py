"""The real scorers (VQA judge, PickScore, GenEval's detector and colour model) on tiny
random models built from configs, saved, and loaded through `from_pretrained`; the CLI on
them; their failures as one line."""

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from flowarena.harness.cli import app
from flowarena.rewards import RewardError, WeightedRewards, build_rewards
from flowarena.rewards.judge import answer_forms
from flowarena.rewards.vqa import VQAJudge
from flowarena.tasks.geneval_rules import Detection
from tests.tiny_scorers import save_clip, save_mask2former, save_qwen3_vl

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("offline_single_thread")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("scorers")
    return {"qwen": save_qwen3_vl(root / "qwen"), "clip": save_clip(root / "clip"),
            "m2f": save_mask2former(root / "m2f")}


@pytest.fixture(scope="module")
def judge(saved):
    return VQAJudge(str(saved["qwen"]), batch_size=3)


def images(n, seed=0):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# --- the VQA judge ---------------------------------------------------------------------
def test_answer_forms():
    assert answer_forms("Yes") == ["Yes", "yes", " yes", " Yes"]
    assert answer_forms("seven") == ["seven", "Seven", " seven", " Seven", "7", " 7"]
    with pytest.raises(RewardError, match="neither yes/no nor a number"):
        answer_forms("purple")


def test_soft_and_hard_scores_fromfirst_token_logits(judge, monkeypatch):
    """Soft = the summed probability of the accepted forms' first tokens; hard = argmax is one."""
    tok = judge.tokenizer
    first = {f: tok.encode(f, add_special_tokens=False)[0] for f in answer_forms("Yes") + answer_forms("two")}
    assert first[" yes"] != first[" Yes"]  # the tiny tokenizer merges " yes" into one token
    V = len(tok)
    logits = torch.full((2, V), -1e4)
    # row 0: P(" yes") = 0.5, P("Y") (first token of "Yes") = 0.25, the rest on "q"
    logits[0, first[" yes"]], logits[0, first["Yes"]] = np.log(0.5), np.log(0.25)
    logits[0, tok.encode("q", add_special_tokens=False)[0]] = np.log(0.25)
    # row 1 (a count of two): P("2") = 0.3, argmax "q" at 0.7: soft 0.3, hard wrong
    logits[1, first["2"]], logits[1, tok.encode("q", add_special_tokens=False)[0]] = np.log(0.3), np.log(0.7)
    monkeypatch.setattr(judge, "first_token_logits", lambda imgs, qs: logits[: len(qs)])
    soft, hard = judge.answer([None, None], ["Is it?", "How many?"], ["Yes", "two"])
    assert soft == pytest.approx([0.75, 0.3], abs=1e-6)
    assert hard.tolist() == [True, False]


def test_geneval2_reward_is_soft_tifa_of_the_judge(saved, monkeypatch):
    reward = build_rewards("geneval2", judge=str(saved["qwen"]))
    values = iter([[0.9, 0.4], [0.5]])
    monkeypatch.setattr(reward.judge, "score_batch", lambda imgs, vqa: [next(values) for _ in vqa])
    recs = [{"vqa_list": [["q1", "Yes"], ["q2", "two"]]}, {"vqa_list": [["q3", "Yes"]]}]
    out = reward(images(2), ["a", "b"], recs)
    assert out.scores.tolist() == pytest.approx([np.sqrt(0.9 * 0.4), 0.5])


def test_judge_runs_the_tiny_qwen3_vl_batch_invariant(judge):
    imgs = images(3)
    vqa = [[["Is there a cat?", "Yes"], ["How many dogs are in the image?", "two"]],
           [["Is the dog brown?", "Yes"]], [["How many?", "seven"]]]
    soft, hard = judge.judge_batch(imgs, vqa)
    assert [len(s) for s in soft] == [2, 1, 1]
    flat = np.array([v for s in soft for v in s])
    assert ((flat > 0) & (flat <= 1)).all() and all(h in (0.0, 1.0) for s in hard for h in s)
    # each question alone (no left padding) scores as in the padded batch
    alone = [judge.judge_batch(imgs[i:i + 1], [[qa]])[0][0][0] for i, v in enumerate(vqa) for qa in v]
    assert alone == pytest.approx(flat.tolist(), rel=1e-4)
    vs = judge.vqascore(imgs, ["a cat", "a brown dog", "seven red circles"])
    assert vs.shape == (3,) and ((vs > 0) & (vs <= 1)).all()


def test_judge_that_is_not_a_vlm_is_one_line(saved):
    with pytest.raises(RewardError, match="VQA judge") as e:
        VQAJudge(str(saved["clip"]))
    assert "\n" not in str(e.value)


# --- PickScore -------------------------------------------------------------------------
def test_pickscore_is_clip_logit_scale_times_cosine(saved):
    from transformers import CLIPModel

    from flowarena.rewards.judge import to_pil

    reward = build_rewards("pickscore", pickscore=str(saved["clip"]))
    imgs, prompts = images(3), ["a red circle", "two blue squares", "x"]
    scaled = reward(imgs, prompts, None).scores
    clip = CLIPModel.from_pretrained(saved["clip"]).eval()
    proc = reward.clip
    with torch.no_grad():
        pix = proc.image_processor(images=[to_pil(i) for i in imgs], return_tensors="pt")["pixel_values"]
        tok = proc.tokenizer(prompts, padding=True, return_tensors="pt")
        logits = clip(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                      pixel_values=pix).logits_per_image.diagonal()
    assert (scaled * 26).tolist() == pytest.approx(logits.tolist(), rel=1e-4, abs=1e-5)


# --- GenEval: detector and colour ------------------------------------------------------
@pytest.fixture(scope="module")
def scorer(saved):
    from flowarena.rewards.geneval import GenEvalScorer

    s = GenEvalScorer(str(saved["m2f"]), str(saved["clip"]))
    head = s.detector.model.class_predictor  # make every query a confident "person" (label 0)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-10.0)
        head.bias[0] = 10.0
    return s


def test_detector_reads_instances_like_mmdet(scorer):
    pil = Image.new("RGB", (48, 40), (120, 30, 30))
    from flowarena.tasks.geneval_rules import keep_detections

    dets = scorer.detector.detect([pil])[0]  # the top 100 (query, class) pairs, thresholds later
    assert len(dets["person"]) == 10  # every query is a person
    assert max(d.score for name, ds in dets.items() if name != "person" for d in ds) < 1e-6
    assert set(keep_detections(dets, "single_object")) == {"person"}
    for d in dets["person"]:
        assert d.mask.shape == (40, 48) and d.mask.any()
        ys, xs = np.nonzero(d.mask)
        assert d.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)  # the mask's extent
        assert 0 < d.score <= 1 and d.score > 0.5  # class score ~1 times a mask score above 0.5


def test_geneval_scorer_end_to_end(scorer):
    recs = [{"tag": "single_object", "include": [{"class": "person", "count": 1}], "prompt": "a person"},
            {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a cat"},
            {"tag": "colors", "include": [{"class": "person", "count": 1, "color": "red"}], "prompt": "p"}]
    correct, partial = scorer.score(images(3), recs)
    assert correct[:2] == [True, False] and partial[:2] == [1.0, 0.0]
    # ten persons for one asked: count credit 0; the colour is whatever tiny CLIP says (0 or 1)
    assert partial[2] in (0.0, 0.5)


def test_colour_crop_pastes_the_mask_on_grey(scorer):
    image = Image.new("RGB", (20, 20), (255, 0, 0))
    mask = np.zeros((20, 20), bool)
    mask[5:10, 5:10] = True
    crop = np.asarray(scorer.colours.crop(image, Detection((4, 4, 12, 12), 1.0, mask)))
    assert crop.shape == (8, 8, 3)
    assert (crop[1:6, 1:6] == [255, 0, 0]).all() and (crop[0] == [153, 153, 153]).all()
    colours = scorer.colours(image, "person", [Detection((4, 4, 12, 12), 1.0, mask)])
    clf = scorer.colours._classifier("person")
    assert len(colours) == 1 and clf.shape[0] == 10
    assert clf.norm(dim=1).tolist() == pytest.approx([1.0] * 10)


def test_detector_needs_coco_labels(tmp_path):
    from flowarena.rewards.geneval import Detector

    with pytest.raises(RewardError, match="has 3 labels, not COCO's 80"):
        Detector(str(save_mask2former(tmp_path / "m", names=["cat", "dog", "cow"])))


# --- several rewards from the CLI's spec -----------------------------------------------
def test_weighted_real_rewards(saved):
    r = build_rewards("geneval2=1.0,pickscore=0.5", judge=str(saved["qwen"]), pickscore=str(saved["clip"]))
    assert isinstance(r, WeightedRewards)
    recs = [{"vqa_list": [["Is there a cat?", "Yes"]]}, {"vqa_list": [["How many?", "two"]]}]
    out = r(images(2), ["a cat", "two dogs"], recs)
    comp = out.details["components"]
    assert out.scores.tolist() == pytest.approx((comp["geneval2"] + 0.5 * comp["pickscore"]).tolist())
    assert not out.scores.requires_grad
    with pytest.raises(RewardError, match="'judge' applies to none of pickscore"):
        build_rewards("pickscore", judge="x")


# --- the CLI ---------------------------------------------------------------------------
def test_bench_eval_geneval2_on_the_toy_model(saved, tmp_path):
    res = runner.invoke(app, ["eval", "--model", "toy", "--benchmark", "geneval2",
                              "--judge", str(saved["qwen"]), "--limit", "3", "--steps", "2",
                              "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert "geneval2: 3 prompts" in res.output and "VQAScore" in res.output and "plumbing" in res.output
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["benchmark"] == "geneval2" and len(r["soft_tifa"]["per_prompt_gm"]) == 3
    assert 0 < r["soft_tifa"]["am"] <= 100 and 0 <= r["tifa"]["am"] <= 100


def test_bench_eval_and_the_reward_take_a_served_judge(saved, judge, tmp_path):
    from flowarena.rewards.served_judge import ServedJudge
    from tests.judge_server import serve_judge

    args = ["eval", "--model", "toy", "--benchmark", "geneval2", "--judge", str(saved["qwen"]),
            "--limit", "3", "--steps", "2"]
    assert runner.invoke(app, [*args, "--json", str(tmp_path / "here.json")]).exit_code == 0
    with serve_judge(judge, str(saved["qwen"]), whole=True) as url:
        res = runner.invoke(app, [*args, "--judge-url", url, "--json", str(tmp_path / "served.json")])
        assert res.exit_code == 0, res.output
        reward = build_rewards("geneval2", judge=str(saved["qwen"]), judge_url=url)
        assert isinstance(reward.judge, ServedJudge) and reward.judge.url == url
    here, served = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("here", "served"))
    assert served["soft_tifa"]["per_prompt_gm"] == pytest.approx(here["soft_tifa"]["per_prompt_gm"], rel=1e-4)
    assert served["scorer"] == {"judge": str(saved["qwen"]), "judge_url": url}
    res = runner.invoke(app, ["eval", "--benchmark", "pickscore", "--judge-url", url])
    assert res.exit_code != 0 and "judge_url" in res.output and "Traceback" not in res.output


def test_bench_eval_geneval_and_pickscore(saved, tmp_path):
    res = runner.invoke(app, ["eval", "--benchmark", "geneval", "--detector", str(saved["m2f"]),
                              "--clip", str(saved["clip"]), "--limit", "6", "--steps", "2",
                              "--images-per-prompt", "2"])
    assert res.exit_code == 0, res.output
    assert "geneval: 6 prompts, 12 images" in res.output and "tag: counting" in res.output
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n\ntwo blue squares\n")
    res = runner.invoke(app, ["eval", "--benchmark", "pickscore", "--pickscore", str(saved["clip"]),
                              "--prompts", str(prompts), "--steps", "2"])
    assert res.exit_code == 0, res.output
    assert "pickscore: 2 prompts" in res.output and "PickScore" in res.output
    assert "plumbing" not in res.output  # the toy model knows every word of these prompts


@pytest.mark.parametrize("args, msg", [
    (["--benchmark", "geneval2", "--judge", "/no/such/dir"], "VQA judge /no/such/dir: directory not found"),
    (["--benchmark", "geneval2", "--judge", "nobody/no-such-judge"], "HF_HUB_OFFLINE is set"),
    (["--benchmark", "geneval", "--detector", "/no/such/dir"], "GenEval detector /no/such/dir"),
    (["--benchmark", "pickscore", "--pickscore", "/no/such/dir"], "PickScore model /no/such/dir"),
    (["--benchmark", "imagenet"], "unknown benchmark 'imagenet'"),
    (["--benchmark", "toy", "--prompts", "x.txt"], "--prompts is for"),
])
def test_eval_errors_are_one_line(args, msg):
    res = runner.invoke(app, ["eval", "--limit", "2", *args])
    assert res.exit_code == 1 and msg in res.output and res.output.count("\n") == 1, res.output


def test_malformed_prompt_file_is_one_line(saved, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a cat", "atom_count": 1, "vqa_list": [["Is there a cat?"]],
                               "skills": ["object"]}) + "\n")
    res = runner.invoke(app, ["eval", "--benchmark", "geneval2", "--judge", str(saved["qwen"]),
                              "--prompts", str(bad)])
    assert res.exit_code == 1 and "bad.jsonl:1: 'vqa_list'" in res.output and res.output.count("\n") == 1


def test_bench_run_with_two_real_rewards(saved, tmp_path):
    """`--reward geneval2=1.0,pickscore=0.5` trains the toy model on the VQA judge and PickScore
    (the tiny ones), with the model options recorded in the run's configuration."""
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", "--preset", "smoke", "--methods", "grpo", "--seeds", "1",
                              "--epochs", "1", "--reward", "geneval2=1.0,pickscore=0.5",
                              "--reward-aggregation", "normalised", "--judge", str(saved["qwen"]),
                              "--pickscore", str(saved["clip"]), "--out", str(out)])
    assert res.exit_code == 0, res.output
    resolved = json.loads((out / "manifest.json").read_text())["config"]["resolved"]
    assert resolved["reward"] == "geneval2=1.0,pickscore=0.5"
    assert resolved["reward_options"] == {"judge": str(saved["qwen"]), "pickscore": str(saved["clip"])}
    metrics = (out / "toy" / "grpo" / "seed0" / "metrics.jsonl").read_text().splitlines()
    log = [json.loads(line) for line in metrics]
    assert log and all(np.isfinite(e["reward_mean"]) for e in log)


# --- GenEval's original backends (optional; not installed here) -----------------------
def test_mmdet_outputs_read_in_both_formats():
    from types import SimpleNamespace

    from flowarena.rewards.geneval import mmdet_instances

    names = ["person", "bicycle", "car"]
    mask = np.zeros((8, 8), bool)
    mask[1:3, 2:5] = True
    # mmdet 2.x (GenEval's pin): per class an [N, 5] array of x1, y1, x2, y2, score, and masks
    bbox = [np.array([[2, 1, 5, 3, 0.9]]), np.zeros((0, 5)), np.array([[0, 0, 4, 4, 0.2], [1, 1, 2, 2, 0.5]])]
    segm = [[mask], [], [mask, mask]]
    two = mmdet_instances((bbox, segm), names)
    assert set(two) == {"person", "car"} and [d.score for d in two["car"]] == [0.2, 0.5]
    assert two["person"][0].box == (2.0, 1.0, 5.0, 3.0) and two["person"][0].mask.sum() == 6

    class Instances(SimpleNamespace):  # mmengine's InstanceData answers `in`
        def __contains__(self, key):
            return hasattr(self, key)
    three = SimpleNamespace(pred_instances=Instances(
        bboxes=torch.tensor([[2.0, 1, 5, 3], [0, 0, 4, 4]]), scores=torch.tensor([0.9, 0.2]),
        labels=torch.tensor([0, 2]), masks=torch.from_numpy(np.stack([mask, mask]))))
    got = mmdet_instances(three, names)
    assert {k: [(d.box, round(d.score, 3)) for d in v] for k, v in got.items()} == {
        "person": [((2.0, 1.0, 5.0, 3.0), 0.9)], "car": [((0.0, 0.0, 4.0, 4.0), 0.2)]}


@pytest.mark.parametrize("option, module, msg", [
    ({"detector": "mmdet:cfg.py:ckpt.pth"}, "mmdet", "needs mmdet with a compiled mmcv"),
    ({"clip": "open_clip:ViT-L-14:openai"}, "open_clip", "needs the openclip extra"),
    ({"detector": "mmdet:cfg.py"}, None, "write the backend as mmdet:CONFIG:CHECKPOINT"),
])
def test_optional_backends_fail_in_one_line(saved, monkeypatch, option, module, msg):
    from flowarena.rewards.geneval import GenEvalScorer

    if module:
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed
        monkeypatch.setitem(sys.modules, module + ".apis", None)
    kw = {"detector": str(saved["m2f"]), "clip": str(saved["clip"]), **option}
    with pytest.raises(RewardError, match=msg):
        GenEvalScorer(**kw)


def test_pickled_weights_are_refused(saved, tmp_path):
    """Safetensors only: a model directory holding a pickle (.bin) is never unpickled."""
    import shutil

    from safetensors.torch import load_file

    d = tmp_path / "clip-bin"
    shutil.copytree(saved["clip"], d)
    torch.save(load_file(str(d / "model.safetensors")), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    with pytest.raises(RewardError, match=r"pickled weights only \(pytorch_model.bin\); FlowArena loads"):
        build_rewards("pickscore", pickscore=str(d))


def test_judge_takes_the_processor_chat_template(saved, tmp_path):
    """Checkpoints that keep the chat template beside the processor (chat_template.json),
    not in the tokenizer, still get their own template."""
    import shutil

    from tests.tiny_scorers import QWEN_VL_TEMPLATE

    d = tmp_path / "qwen"
    shutil.copytree(saved["qwen"], d)
    (d / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    (d / "chat_template.json").write_text(json.dumps({"chat_template": QWEN_VL_TEMPLATE}))
    judge = VQAJudge(str(d))
    assert judge.tokenizer.chat_template == QWEN_VL_TEMPLATE
    assert len(judge.judge_batch(images(1), [[["Is there a cat?", "Yes"]]])[0][0]) == 1


def test_judge_computes_only_the_logits_it_reads(judge, monkeypatch):
    """`logits_to_keep=1`: the last position's logits alone, equal to the full forward's last row
    (the full one costs batch × length × vocab floats)."""
    assert judge._keep == {"logits_to_keep": 1}
    from flowarena.rewards.judge import to_pil

    pils = [to_pil(im) for im in images(2)]
    questions = ["Is there a cat? Answer in one word.", "How many dogs are in the image? Answer in one word."]
    kept = judge.first_token_logits(pils, questions)
    monkeypatch.setattr(judge, "_keep", {})
    torch.testing.assert_close(kept, judge.first_token_logits(pils, questions), rtol=1e-5, atol=1e-5)


def test_each_image_is_encoded_once_for_all_its_questions(judge, monkeypatch):
    """The vision tower runs once per image of a batch, not once per question, and the scores
    equal those of encoding it with every question (the older transformers' path)."""
    assert judge.encode_once
    imgs = images(2, seed=3)
    vqa = [[["Is there a cat?", "Yes"], ["How many dogs are in the image?", "two"]],
           [["Is the dog brown?", "Yes"], ["How many?", "seven"], ["Is there a tree?", "No"],
            ["Is it red?", "No"]]]
    seen = []
    visual = judge.model.model.visual
    forward = visual.forward
    monkeypatch.setattr(visual, "forward", lambda pixels, **kw: seen.append(kw["grid_thw"].shape[0])
                        or forward(pixels, **kw))
    once = judge.judge_batch(imgs, vqa)
    assert seen == [2, 1]  # batches of 3 questions: images 0 and 1, then image 1 (not 3 and 3 encodings)
    monkeypatch.setattr(judge, "encode_once", False)
    for a, b in zip(once, judge.judge_batch(imgs, vqa)):
        assert sum(a, []) == pytest.approx(sum(b, []), rel=1e-4, abs=1e-6)
    assert seen[2:] == [3, 3]


def test_the_served_judge_scores_as_the_judge_in_process(saved, judge):
    """`--judge-url`: the same Soft-TIFA and TIFA answers through an OpenAI-compatible server
    (a loopback one over the tiny judge), scored from the first token's top log-probabilities."""
    from flowarena.rewards.served_judge import ServedJudge
    from tests.judge_server import serve_judge

    name = str(saved["qwen"])
    imgs = images(3, seed=1)
    vqa = [[["Is there a cat?", "Yes"], ["How many dogs are in the image?", "two"]],
           [["Is the dog brown?", "No"]], [["How many?", "seven"]]]
    with serve_judge(judge, name) as url:
        served = ServedJudge(url, name, top_logprobs=len(judge.tokenizer))  # the whole distribution
        soft, hard = served.judge_batch(imgs, vqa)
        ref_soft, ref_hard = judge.judge_batch(imgs, vqa)
        assert [s for q in soft for s in q] == pytest.approx([s for q in ref_soft for s in q], rel=1e-5)
        assert hard == ref_hard
        prompts = ["a cat", "a brown dog", "seven red circles"]
        assert served.vqascore(imgs, prompts) == pytest.approx(judge.vqascore(imgs, prompts), rel=1e-5)
        top20 = ServedJudge(url, name).judge_batch(imgs, vqa)[0]  # a lower bound: forms outside the top 20
        assert all(0 <= a <= b + 1e-6 for a, b in zip(sum(top20, []), sum(ref_soft, [])))
        served.model = "another-judge"  # a name the server does not serve
        with pytest.raises(RewardError, match="HTTP 404: .*another-judge` does not exist"):
            served.answer([to_pil_image(imgs[0])], ["Is it?"], ["Yes"])


def to_pil_image(image):
    from flowarena.rewards.judge import to_pil

    return to_pil(image)


def test_a_served_judge_out_of_reach_is_one_line(saved):
    from flowarena.rewards.served_judge import ServedJudge

    with pytest.raises(RewardError, match="must be an http"):
        ServedJudge("localhost:8000", str(saved["qwen"]))
    judge = ServedJudge("http://127.0.0.1:9/v1", str(saved["qwen"]), timeout=5)  # port 9: nobody listens
    with pytest.raises(RewardError, match=r"served judge http://127.0.0.1:9/v1: cannot reach it"):
        judge.answer([to_pil_image(images(1)[0])], ["Is it?"], ["Yes"])
