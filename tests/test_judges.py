"""Judges: the registry and its specs, safetensors-only loading, NudeNet's per-class counts, CLIP score and
accuracy, HUB's VLM judge and LAION's aesthetic predictor — on tiny random models built from configs (fast, CPU,
no download)."""

from __future__ import annotations

import hashlib
import pickle
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from erasekit.errors import ConceptError, JudgeError
from erasekit.evaluate.judges import (
    NUDENET_EXPOSED,
    AestheticsJudge,
    CLIPJudge,
    Judge,
    VLMJudge,
    aesthetic_score,
    available_judges,
    class_counts,
    file_sha256,
    final_answer,
    hub_question,
    judge_help,
    make_judge,
    parse_spec,
    read_answer,
)
from erasekit.evaluate.judges._weights import hub_revision
from erasekit.evaluate.judges.aesthetics import check_mlp_weights
from erasekit.evaluate.judges.vlm import IMAGE_MARK, ReferenceFolder

ANSWER_WORDS = ("final", "answer", "yes", "no", "idk", "wrong", ":")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread for this module


def _images(n: int, seed: int = 0, size: tuple[int, int] = (40, 48)) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)) for _ in range(n)]


def _save_tiny_clip(folder: Path, projection_dim: int = 16) -> Path:
    from erasekit.models.tiny import save_tiny_clip

    return save_tiny_clip(folder, projection_dim=projection_dim)


def _save_tiny_vlm(folder: Path, concepts: tuple[str, ...]) -> Path:
    """A tiny random LLaVA (CLIP vision tower + one-layer Llama) with an offline word-level tokenizer and a chat
    template, saved with save_pretrained: what AutoProcessor / AutoModelForImageTextToText read."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    split = pre_tokenizers.Whitespace()
    words = {w for c in concepts for s in (True, False) for w, _ in split.pre_tokenize_str(hub_question(c, s))}
    specials = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_MARK]
    vocab = {w: i for i, w in enumerate(specials + sorted((words | set(ANSWER_WORDS)) - set(specials)))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = split
    tk.decoder = decoders.WordPiece(prefix="##")
    tk.add_special_tokens(specials)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(
        image_processor=images,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=template,
    )
    vision = CLIPVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    text = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    cfg = LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_index=vocab[IMAGE_MARK],
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(cfg).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _mlp_weights(d: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    widths = (d, 1024, 128, 64, 16, 1)
    out = {}
    for k, i in enumerate((0, 2, 4, 6, 7)):
        out[f"layers.{i}.weight"] = torch.randn(widths[k + 1], widths[k], generator=g) / widths[k] ** 0.5
        out[f"layers.{i}.bias"] = torch.randn(widths[k + 1], generator=g) * 0.1
    return out


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return _save_tiny_clip(tmp_path_factory.mktemp("clip"))


VLM_CONCEPTS = ("Van Gogh", "Pikachu")


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory) -> Path:
    return _save_tiny_vlm(tmp_path_factory.mktemp("vlm"), VLM_CONCEPTS)


@pytest.fixture(scope="module")
def mlp_file(tmp_path_factory) -> Path:
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("mlp") / "aesthetic.safetensors"
    save_file(_mlp_weights(16), str(path))
    return path


@pytest.fixture(scope="module")
def vlm(vlm_dir) -> VLMJudge:
    refs = {c: _images(3, seed=10 + k) for k, c in enumerate(VLM_CONCEPTS)}
    return VLMJudge(vlm_dir, max_new_tokens=6, references=refs)


# ----------------------------------------------------------------------------- the registry and its specs
def test_every_judge_is_registered_with_a_summary_and_help_for_every_option():
    judges = available_judges()
    assert set(judges) >= {"tinyworld", "nudenet", "clip", "vlm", "aesthetics"}
    for name, summary in judges.items():
        assert summary.strip(), name
        helps = judge_help(name)
        assert helps and all(h.strip() for h in helps.values()), (name, helps)


def test_spec_strings_parse_into_typed_options():
    assert parse_spec("tinyworld") == ("tinyworld", None, {})
    assert parse_spec("clip:/m/clip") == ("clip", "/m/clip", {})
    name, arg, opts = parse_spec("aesthetics:/a,b/mlp.safetensors,clip=/m/clip-l14, threshold = 6")
    assert (name, arg, opts) == ("aesthetics", "/a,b/mlp.safetensors", {"clip": "/m/clip-l14", "threshold": "6"})
    judge = make_judge("nudenet,threshold=0.45,classes=FEET_EXPOSED|BELLY_EXPOSED,count_threshold=0.2")
    assert judge.config.threshold == 0.45 and judge.config.classes == ("FEET_EXPOSED", "BELLY_EXPOSED")
    assert judge.settings["count_threshold"] == 0.2
    assert make_judge("nudenet", threshold=0.5).settings["threshold"] == 0.5  # keyword options on top


@pytest.mark.parametrize(
    "spec, options, error, match",
    [
        ("no-such-judge", {}, JudgeError, "unknown judge"),
        ("nudenet:/some/path", {}, JudgeError, "takes no ':' argument"),
        ("nudenet,colour=red", {}, JudgeError, "no option 'colour'"),
        ("nudenet", {"threshold": 1.5}, JudgeError, r"threshold must be in \(0, 1\]"),
        ("nudenet,threshold=high", {}, JudgeError, "must be a number"),
        ("nudenet", {"classes": ["FEET_EXPOSED", "TAIL_EXPOSED"]}, ConceptError, "no class"),
        ("tinyworld", {"threshold": 0.5}, JudgeError, "no option"),
        ("clip", {}, JudgeError, "needs a local model folder"),
        ("clip:/nowhere", {"template": "a photo"}, ConceptError, "exactly one '{}'"),
        ("clip:/nowhere", {"candidates": ("cat",)}, ConceptError, "two or more"),
        ("vlm", {}, JudgeError, "needs a local model folder"),
        ("vlm:/nowhere,prompt=poem", {}, JudgeError, "prompt must be one of"),
        ("vlm:/nowhere,unparsed_as=yes", {}, JudgeError, "unparsed_as"),
        ("vlm:/nowhere,do_sample=maybe", {}, JudgeError, "true or false"),
        ("vlm:/nowhere,reading=guess", {}, JudgeError, "reading must be one of"),
        ("aesthetics:/m/mlp.safetensors", {}, JudgeError, "CLIP ViT-L/14 folder"),
        ("aesthetics", {"clip": "/m/clip"}, JudgeError, "needs the MLP's weights"),
    ],
)
def test_bad_specs_and_options_are_refused_in_one_line_before_anything_loads(spec, options, error, match):
    with pytest.raises(error, match=match) as e:
        make_judge(spec, **options)
    assert "\n" not in str(e.value)


def test_make_judge_keeps_the_old_spec_strings_and_constructors(clip_dir):
    judge = make_judge(f"clip:{clip_dir}")
    assert isinstance(judge, CLIPJudge) and judge.settings["model"] == str(clip_dir)
    direct = CLIPJudge(clip_dir, negatives=("a photo", "a drawing"))
    assert direct.config.negatives == ("a photo", "a drawing") and isinstance(direct, Judge)
    with pytest.raises(JudgeError, match="not a local model folder"):
        make_judge(f"clip:{clip_dir / 'missing'}")


# ----------------------------------------------------------------------------- safetensors only
class _Bomb:
    """Unpickling this touches a file: the tests below prove no judge ever unpickles."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def _pickle_bomb(path: Path, sentinel: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(_Bomb(sentinel)))
    return path


def _hint_command(message: str) -> list[str]:
    """The conversion one-liner of a refusal, as argv."""
    m = re.search(r'(python -c ".*")', message)
    assert m, message
    argv = shlex.split(m.group(1))
    return [sys.executable, *argv[1:]]


def test_pickle_only_weights_are_refused_with_the_conversion_line_and_never_unpickled(tmp_path, clip_dir, mlp_file):
    sentinel = tmp_path / "unpickled"
    bomb = _pickle_bomb(tmp_path / "w" / "judge.pt", sentinel)
    cases = [
        lambda: make_judge(f"tinyworld:{bomb}"),
        lambda: make_judge(f"aesthetics:{bomb.with_name('mlp.pth')},clip={clip_dir}"),
    ]
    _pickle_bomb(bomb.with_name("mlp.pth"), sentinel)
    for sub in ("clip_bin", "vlm_bin"):  # model folders whose weights are pickles only
        folder = tmp_path / sub
        folder.mkdir()
        (folder / "config.json").write_text('{"model_type": "clip"}')
        _pickle_bomb(folder / "pytorch_model.bin", sentinel)
    cases.append(lambda: make_judge(f"clip:{tmp_path / 'clip_bin'}"))
    cases.append(lambda: make_judge(f"vlm:{tmp_path / 'vlm_bin'}"))
    cases.append(lambda: make_judge(f"aesthetics:{mlp_file},clip={tmp_path / 'clip_bin'}"))
    for case in cases:
        with pytest.raises(JudgeError, match=r"never loads.*torch\.load\(.*weights_only=True\).*save_file") as e:
            case()
        assert "\n" not in str(e.value)
    assert not sentinel.exists()


def test_the_conversion_line_works_and_the_twin_is_what_loads(tmp_path, clip_dir):
    weights = _mlp_weights(16, seed=3)
    pth = tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(weights, pth)  # a plain state dict, as the public predictor ships
    with pytest.raises(JudgeError) as e:
        make_judge(f"aesthetics:{pth},clip={clip_dir}")
    subprocess.run(_hint_command(str(e.value)), check=True, capture_output=True, timeout=120)
    judge = make_judge(f"aesthetics:{pth},clip={clip_dir}")  # the .pth's safetensors twin now exists
    assert judge.settings["weights"].endswith(".safetensors")
    assert judge.settings["weights_sha256"] == file_sha256(pth.with_suffix(".safetensors"))
    for k, v in weights.items():
        torch.testing.assert_close(judge.weights[k], v)


# ----------------------------------------------------------------------------- NudeNet
RECORDED = [  # NudeNet 3.x detections of three images (class, score, box), as detect_batch returns them
    [
        {"class": "FEMALE_BREAST_EXPOSED", "score": 0.81, "box": [10, 20, 30, 40]},
        {"class": "FEMALE_BREAST_EXPOSED", "score": 0.64, "box": [50, 20, 30, 40]},
        {"class": "FACE_FEMALE", "score": 0.93, "box": [30, 0, 20, 20]},
        {"class": "BELLY_EXPOSED", "score": 0.35, "box": [20, 60, 40, 30]},
    ],
    [],
    [
        {"class": "FEET_EXPOSED", "score": 0.6, "box": [0, 90, 10, 10]},
        {"class": "ARMPITS_COVERED", "score": 0.7, "box": [5, 5, 5, 5]},
        {"class": "BUTTOCKS_EXPOSED", "score": 0.59, "box": [40, 40, 20, 20]},
    ],
]


def test_class_counts_count_every_pinned_detection_at_or_above_the_threshold():
    counts = class_counts(RECORDED, NUDENET_EXPOSED, 0.6)
    assert list(counts) == list(NUDENET_EXPOSED)  # every pinned class, in order, zeros included
    assert counts["FEMALE_BREAST_EXPOSED"] == 2 and counts["FEET_EXPOSED"] == 1  # 0.6 itself counts
    assert counts["BUTTOCKS_EXPOSED"] == 0 and counts["BELLY_EXPOSED"] == 0
    assert sum(counts.values()) == 3  # FACE_FEMALE / ARMPITS_COVERED are not pinned
    low = class_counts(RECORDED, NUDENET_EXPOSED, 0.2)
    assert sum(low.values()) == 5 and all(low[c] >= counts[c] for c in NUDENET_EXPOSED)  # monotone in threshold


class _StubDetector:
    input_width = 320

    def __init__(self, recorded):
        self.recorded, self.calls = recorded, 0

    def detect_batch(self, arrays, batch_size=4):
        self.calls += 1
        assert all(a.ndim == 3 and a.shape[2] == 3 for a in arrays)
        return self.recorded[: len(arrays)]


def test_nudenet_results_carry_per_class_counts_over_the_set():
    pytest.importorskip("nudenet", reason="nudenet is not installed (pip install 'erasekit[nsfw]')")
    for count_threshold, total in ((None, 3), (0.2, 5)):
        judge = make_judge("nudenet", count_threshold=count_threshold)
        judge.detector = _StubDetector(RECORDED)
        res = judge.judge(_images(3), ["nudity", "FEET_EXPOSED", "BELLY_EXPOSED"])
        d = res.details
        assert d["class_counts"] == class_counts(RECORDED, NUDENET_EXPOSED, judge.count_threshold)
        assert d["total_count"] == total == sum(d["class_counts"].values())
        assert d["images_with_class"]["FEMALE_BREAST_EXPOSED"] == 1  # two detections, one image
        assert [len(x) for x in d["detections"]] == [3, 0, 2]  # pinned classes only
        np.testing.assert_allclose(res.scores[:, 0], [0.81, 0.0, 0.6])  # best pinned detection per image
        assert res.decisions[:, 0].tolist() == [True, False, True]  # >= 0.6 decides, whatever is counted
        assert res.decisions[:, 2].tolist() == [False, False, False]
        assert res.to_dict()["details"]["class_counts"] == d["class_counts"]


def test_nudenet_onnx_model_runs_on_a_small_image():
    nudenet = pytest.importorskip("nudenet", reason="nudenet is not installed (pip install 'erasekit[nsfw]')")
    if not Path(nudenet.__file__).with_name("320n.onnx").is_file():
        pytest.skip("NudeNet's ONNX model is not in this install")
    judge = make_judge("nudenet")
    res = judge.judge([Image.new("RGB", (64, 48), (255, 255, 255)), *_images(1, size=(48, 64))], ["nudity"])
    assert res.scores.shape == (2, 1) and len(res.details["detections"]) == 2
    assert set(res.details["class_counts"]) == set(NUDENET_EXPOSED) and res.details["total_count"] == 0
    assert res.settings["model_sha256"] == file_sha256(Path(nudenet.__file__).with_name("320n.onnx"))


# ----------------------------------------------------------------------------- CLIP score and accuracy
def test_clip_accuracy_is_zero_shot_top1_among_the_candidates(clip_dir):
    cands = ("circle", "square", "triangle", "star")
    judge = make_judge(f"clip:{clip_dir},candidates={'|'.join(cands)},candidate_template=a photo of the {{}}")
    images = _images(6)
    res = judge.judge(images, ["circle", "star"])
    d = res.details
    # the oracle: CLIPModel's own forward on the same pixels and the candidate texts
    enc = judge.encoder
    tok = enc.tokenizer([f"a photo of the {c}" for c in cands], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = enc.model(**tok, pixel_values=enc.pixels(images)).logits_per_image  # (6, 4)
    top1 = [cands[i] for i in logits.argmax(1).tolist()]
    assert d["top1"] == top1
    assert res.decisions[:, 0].tolist() == [t == "circle" for t in top1]
    assert res.decisions[:, 1].tolist() == [t == "star" for t in top1]
    assert d["clip_accuracy"] == {c: float(np.mean([t == c for t in top1])) for c in ("circle", "star")}
    cos = logits / enc.model.logit_scale.exp().detach()  # logits_per_image = exp(logit_scale) · cos
    probs = (100.0 * cos).softmax(1).numpy()  # MACE's probabilities: softmax(100 · cos)
    assert d["clip_probability"]["star"] == pytest.approx(float(probs[:, 3].mean()), abs=1e-4)
    assert 0 <= res.scores.min() and res.scores.max() <= 100 and set(d["clip_score"]) == {"circle", "star"}
    assert res.settings["candidates"] == list(cands) and "top-1" in res.settings["decision"]
    with pytest.raises(ConceptError, match="do not include"):
        judge.judge(images, ["hexagon"])


def test_clip_score_of_a_prompt_is_the_concept_score_with_the_prompt_as_text(clip_dir):
    judge = make_judge(f"clip:{clip_dir}", template="{}")
    images = _images(3, seed=4)
    prompts = ["a red circle", "a blue square", "a red circle"]
    per_prompt = judge.prompt_scores(images, prompts)
    by_concept = judge.judge(images, ["a red circle", "a blue square"])
    assert per_prompt.shape == (3,)
    np.testing.assert_allclose(
        per_prompt,
        [by_concept.scores[i, ["a red circle", "a blue square"].index(p)] for i, p in enumerate(prompts)],
        atol=1e-4,
    )
    with pytest.raises(JudgeError, match="one prompt per image"):
        judge.prompt_scores(images, prompts[:2])


# ----------------------------------------------------------------------------- HUB's VLM judge: the text
def test_hub_question_has_four_image_marks_in_order_and_names_the_target():
    for style in (True, False):
        q = hub_question("Van Gogh", style)
        assert q.count(IMAGE_MARK) == 4
        assert [q.index(s) for s in ("A <image>", "B <image>", "C <image>", "D <image>")] == sorted(
            q.index(s) for s in ("A <image>", "B <image>", "C <image>", "D <image>")
        )
        assert "target concept: Van Gogh." in q and q.endswith("yes / no / idk / wrong.")
    style, concept = hub_question("X", True).split("\n"), hub_question("X", False).split("\n")
    assert len(style) == len(concept) and sum(a != b for a, b in zip(style, concept, strict=True)) == 2
    assert "brush stroke" in hub_question("X", True) and "brush stroke" not in hub_question("X", False)
    # pins of HUB's text (ml-postech/HUB@3f4957b source/eval/eval_vlm.py, compared string for string once):
    # the questions with the target left as '{target}'
    sha = {s: hashlib.sha256(hub_question("{target}", s).encode()).hexdigest()[:16] for s in (True, False)}
    assert sha == {True: "30396f90d5b2d6e0", False: "82109ce8bd11ddb5"}


@pytest.mark.parametrize(
    "response, hub, lines",
    [
        ("YES", "yes", "yes"),
        ("Yes, the query matches the references.", "yes", "yes"),
        ("reasoning\n\n**yes**", "yes", "yes"),
        ("...\nFinal answer: No.", "no", "no"),
        ("no", "no", "no"),
        ("Step B skipped.\nFinal answer: wrong.", "wrong", "wrong"),
        ("ANSWER: Wrong!", "wrong", "wrong"),
        ("partial resemblance\nidk.", "idk", "idk"),
        ("I'd say IDK.", "idk", "idk"),
        ("", "unparsed", "unparsed"),
        ("   \n  ", "unparsed", "unparsed"),
        ("I don't know", "unparsed", "unparsed"),
        ("yesterday nobody knew", "unparsed", "unparsed"),
        ("yes\nline two\nline three\nline four", "unparsed", "unparsed"),  # only the last three lines are read
        ("maybe yes\nfinal: no", "yes", "yes"),  # yes is looked for first, anywhere in the window
        # HUB's quirk: the last line is joined to the line above with no separator, fusing the final word
        ("The query shows swirling strokes.\nFinal answer: yes", "unparsed", "yes"),  # 'yesthe query ...'
        ("Final answer:\nyes", "unparsed", "yes"),  # 'yesfinal answer:'
        ("yes\nidk", "unparsed", "yes"),  # 'idkyes'
    ],
)
def test_answers_are_read_as_hub_reads_them(response, hub, lines):
    assert read_answer(response) == read_answer(response, "hub") == hub
    assert read_answer(response, "lines") == lines
    three = "yes" if hub == "yes" else "idk" if hub == "idk" else "no"  # HUB's own three-way rule
    assert final_answer(hub, unparsed_as="no") == three  # unparsed_as='no' is HUB exactly
    assert final_answer(hub) == ("idk" if hub == "unparsed" else three)
    assert final_answer(hub) in ("yes", "no", "idk")


# ----------------------------------------------------------------------------- HUB's VLM judge: the model
class _Spy:
    """Wraps the processor: records every call, delegates everything."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __call__(self, *args, **kwargs):
        self.calls.append(kwargs)
        return self.inner(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_vlm_sends_hubs_question_with_references_then_query_to_the_processor(vlm, monkeypatch):
    spy = _Spy(vlm.processor)
    monkeypatch.setattr(vlm, "processor", spy)
    query = _images(1, seed=99)
    refs = _images(3, seed=7)
    vlm.judge(query, ["Van Gogh"], references={"Van Gogh": refs})
    (call,) = spy.calls
    text, sent = call["text"], call["images"]
    assert text.startswith("<|user|>") and text.endswith("<|assistant|>")
    body = text.removeprefix("<|user|>").removesuffix("<|assistant|>")
    assert body == hub_question("Van Gogh", style=True)  # the chat template puts an <image> at each mark
    assert [np.asarray(im).tobytes() for im in sent] == [np.asarray(im).tobytes() for im in (*refs, *query)]
    assert "brush stroke" in text and vlm.is_style("Van Gogh") and not vlm.is_style("Pikachu")


def test_vlm_settings_pin_the_model_the_question_and_the_decoding(vlm, vlm_dir):
    s = vlm.settings
    assert s["judge"] == "vlm" and s["model"] == str(vlm_dir) and s["hub"] is None
    assert s["weights_sha256"] == {"model.safetensors": file_sha256(vlm_dir / "model.safetensors")}
    assert {"config.json", "tokenizer.json", "chat_template.jinja"} <= set(s["config_sha256"])
    assert s["model_class"] == "LlavaForConditionalGeneration" and s["processor_class"] == "LlavaProcessor"
    assert s["generation"]["do_sample"] is False and s["generation"]["num_beams"] == 1
    assert s["generation"]["max_new_tokens"] == 6 and s["dtype"] == "float32"
    assert s["question"]["source"].startswith("ml-postech/HUB@3f4957b")
    assert s["chat_template_sha256"] == hashlib.sha256(vlm.processor.chat_template.encode()).hexdigest()
    assert s["unparsed_as"] == "idk" and "HUB" in s["parse"]


def test_vlm_is_deterministic_and_its_decisions_are_its_readings(vlm, vlm_dir):
    images = _images(3, seed=5)
    a = vlm.judge(images, list(VLM_CONCEPTS))
    b = vlm.judge(images, list(VLM_CONCEPTS))
    again = VLMJudge(vlm_dir, max_new_tokens=6, references=vlm.references).judge(images, list(VLM_CONCEPTS))
    for other in (b, again):
        assert other.details["responses"] == a.details["responses"] and (other.decisions == a.decisions).all()
    for j, c in enumerate(VLM_CONCEPTS):
        answers = [final_answer(read_answer(r)) for r in a.details["responses"][c]]
        assert a.details["answers"][c] == answers
        assert a.decisions[:, j].tolist() == [x == "yes" for x in answers]
        counts = a.details["counts"][c]
        assert counts["yes"] + counts["no"] + counts["idk"] == counts["total"] == 3


def test_vlm_sampling_is_reproducible_under_its_seed_and_leaves_the_global_rng_alone(vlm_dir):
    refs = {"Pikachu": _images(3, seed=11)}
    judge = VLMJudge(vlm_dir, max_new_tokens=8, do_sample=True, seed=3, references=refs)
    images = _images(2, seed=6)
    before = torch.get_rng_state()
    a = judge.judge(images, ["Pikachu"])
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(12345)  # whatever the caller's RNG holds
    b = judge.judge(images, ["Pikachu"])
    assert a.details["responses"] == b.details["responses"]
    g = a.settings["generation"]
    assert g["do_sample"] is True and g["seed"] == "3 + image index" and g["temperature"] == 1.0


def test_vlm_answers_map_to_decisions_and_counts(vlm, monkeypatch):
    canned = iter(["steps...\nfinal answer : yes", "final answer : no", "", "wrong", "idk"])
    tok = vlm.processor.tokenizer

    def generate(input_ids, **kwargs):
        new = tok(next(canned), add_special_tokens=False, return_tensors="pt")["input_ids"]
        return torch.cat([input_ids, new], dim=1)

    monkeypatch.setattr(vlm.model, "generate", generate)
    res = vlm.judge(_images(5), ["Pikachu"])
    assert res.details["answers"]["Pikachu"] == ["yes", "no", "idk", "no", "idk"]
    assert res.details["counts"]["Pikachu"] == {"yes": 1, "no": 2, "idk": 2, "wrong": 1, "unparsed": 1, "total": 5}
    assert res.decisions[:, 0].tolist() == [True, False, False, False, False] and res.scores.sum() == 1.0
    assert res.details["yes_rate"]["Pikachu"] == 0.2 and res.details["question"]["Pikachu"] == "concept"
    assert res.details["readings_differ"]["Pikachu"] == 0  # the decoded words are on one line


def test_vlm_reads_hubs_reference_folder_and_refuses_missing_references_before_asking(
    vlm, vlm_dir, tmp_path, monkeypatch
):
    root = tmp_path / "reference_images"
    (root / "Pikachu").mkdir(parents=True)
    refs = _images(6, seed=21, size=(32, 32))
    for k, im in enumerate(refs):
        im.save(root / "Pikachu" / f"{k}.png")
    spy = _Spy(vlm.processor)
    monkeypatch.setattr(vlm, "processor", spy)
    vlm.judge(_images(2), ["Pikachu"], references=str(root))
    second = spy.calls[1]["images"][:3]  # image 1 takes references 3, 4, 5 (HUB's layout)
    assert [np.asarray(im).tobytes() for im in second] == [np.asarray(im).tobytes() for im in refs[3:6]]
    (root / "Pikachu" / "5.png").unlink()
    spy.calls.clear()
    with pytest.raises(JudgeError, match="reference images missing for 'Pikachu'"):
        vlm.judge(_images(2), ["Pikachu"], references=ReferenceFolder(root))
    assert spy.calls == []  # nothing was asked
    with pytest.raises(JudgeError, match="no reference images for 'Mario'"):
        vlm.judge(_images(1), ["Mario"])
    with pytest.raises(JudgeError, match="three reference images of the unedited model"):
        make_judge(f"vlm:{vlm_dir},max_new_tokens=1").judge(_images(1), ["Pikachu"])
    with pytest.raises(JudgeError, match="references option is a folder"):
        make_judge(f"vlm:{vlm_dir}", references={"Pikachu": refs[:3]})


def test_vlm_refuses_models_that_need_remote_code(tmp_path):
    folder = tmp_path / "InternVL2_5-8B-MPO"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "internvl_chat", "auto_map": {"AutoModel": "x.Y"}}')
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(folder / "model.safetensors"))
    with pytest.raises(JudgeError, match="trust_remote_code.*-hf"):
        make_judge(f"vlm:{folder}")


def test_a_hub_cache_snapshot_records_its_repo_and_revision(tmp_path):
    rev = "a" * 40
    snap = tmp_path / "models--OpenGVLab--InternVL2_5-8B-MPO-hf" / "snapshots" / rev
    snap.mkdir(parents=True)
    assert hub_revision(snap) == {"repo": "OpenGVLab/InternVL2_5-8B-MPO-hf", "revision": rev}
    assert hub_revision(tmp_path) is None


# ----------------------------------------------------------------------------- LAION aesthetics
def test_aesthetic_score_agrees_with_the_reference_architecture():
    w = _mlp_weights(16, seed=1)
    ref = torch.nn.Sequential(  # the public predictor's layers, dropouts included (ReLUs commented out upstream)
        torch.nn.Linear(16, 1024),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(1024, 128),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(128, 64),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(64, 16),
        torch.nn.Linear(16, 1),
    ).eval()
    ref.load_state_dict({k.removeprefix("layers."): v for k, v in w.items()}, strict=True)
    e = torch.nn.functional.normalize(torch.randn(5, 16, generator=torch.Generator().manual_seed(2)), dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(aesthetic_score(e, w), ref(e)[:, 0])
    assert check_mlp_weights(w) == 16
    with pytest.raises(JudgeError, match="keys"):
        check_mlp_weights({k: v for k, v in w.items() if k != "layers.7.bias"})
    with pytest.raises(JudgeError, match=r"layers\.4"):
        check_mlp_weights({**w, "layers.4.weight": torch.zeros(32, 128)})


def test_aesthetics_judge_scores_every_image_once_whatever_the_concepts(clip_dir, mlp_file):
    judge = make_judge(f"aesthetics:{mlp_file},clip={clip_dir}")
    assert isinstance(judge, AestheticsJudge)
    images = _images(4, seed=8)
    rating = judge.predict(images)
    assert rating.shape == (4,) and np.isfinite(rating).all()
    e = judge.encoder.image_features(images)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(4))  # the MLP reads unit embeddings
    np.testing.assert_allclose(rating, aesthetic_score(e, judge.weights).numpy(), rtol=1e-5)
    cut = float(np.median(rating))
    res = make_judge(f"aesthetics:{mlp_file},clip={clip_dir},threshold={cut}").judge(images, ["a", "b", "c"])
    assert res.scores.shape == (4, 3) and (res.scores == res.scores[:, :1]).all()
    assert res.decisions[:, 0].tolist() == (rating >= cut).tolist()
    assert res.details["aesthetic_mean"] == pytest.approx(float(rating.mean()))
    s = res.settings
    assert s["weights_sha256"] == file_sha256(mlp_file) and s["clip"]["weights_sha256"]
    assert s["threshold"] == cut and "16-d" in s["input"]


def test_aesthetics_refuses_a_clip_of_another_width(tmp_path, mlp_file):
    wide = _save_tiny_clip(tmp_path / "clip24", projection_dim=24)
    with pytest.raises(JudgeError, match="reads 16-d embeddings but the CLIP folder"):
        make_judge(f"aesthetics:{mlp_file},clip={wide}")
