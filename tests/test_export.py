"""Exports through the real loaders: diffusers' LoRA loader (PEFT and kohya keys), merged folders,
refusals, and reading a LoRA export back. The oracle is always ``edit.apply`` (or the file's own
factors for a truncated-SVD LoRA, checked against an independent SVD of ΔW)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import erasekit
from erasekit.edit import LayerEdit
from erasekit.errors import EditFileError
from erasekit.export import ExportError, ExportFormat, export, get_format, list_formats, register_format
from erasekit.export.ldm_names import UNET_PREFIX, unet_to_ldm

EPS32 = torch.finfo(torch.float32).eps


def _state(p):
    return {k: v.detach().clone() for k, v in p.unet.state_dict().items()}


def _applied_state(edit, p):
    edit.apply(p)
    try:
        return _state(p)
    finally:
        edit.revert(p)


def _latents(p, seed=0):
    out = p(
        "a cat on a mat", num_inference_steps=2, generator=torch.Generator().manual_seed(seed), output_type="latent"
    )
    return out.images


def _max_diff(a, b):
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def edits(tiny_pipes):
    """Per family: a low-rank UCE edit, a dense UCE edit, a SPACE (CSR) edit and a mixed-rank low-rank edit."""
    out = {}
    for fam, p in tiny_pipes.items():
        p.set_progress_bar_config(disable=True)
        lr = erasekit.erase(p, "uce", ["a cat"], preserve=["a dog"], progress=False, storage="lowrank")
        mixed_layers, g = [], torch.Generator().manual_seed(1)
        for i, (path, le) in enumerate(lr.layers.items()):  # ranks 1, 2, 3: the loaders' per-module scale is exercised
            r = 1 + i % 3
            mixed_layers.append(
                LayerEdit.lowrank(
                    path, 0.05 * torch.randn(le.shape[0], r, generator=g), torch.randn(r, le.shape[1], generator=g)
                )
            )
        out[fam] = {
            "uce-lowrank": lr,
            "uce-dense": erasekit.erase(p, "uce", ["a cat"], preserve=["a dog"], progress=False, storage="dense"),
            "space": erasekit.erase(p, "space", ["a cat"], progress=False, target_sparsity=0.8),
            "mixed": erasekit.Edit("uce", lr.config, lr.concepts, lr.base, mixed_layers, lr.fingerprints),
        }
    return out


@pytest.mark.parametrize("fmt", ["lora", "lora-kohya"])
@pytest.mark.parametrize("kind", ["uce-lowrank", "uce-dense", "mixed"])
def test_lora_loads_in_diffusers_exactly_as_apply(pipe, family, edits, kind, fmt, tmp_path):
    edit = edits[family][kind]
    base, want = _state(pipe), _applied_state(edit, pipe)
    edit.apply(pipe)
    want_latents = _latents(pipe)
    edit.revert(pipe)
    plain_latents = _latents(pipe)
    res = export(edit, fmt, tmp_path / "e.safetensors", pipe=pipe)
    assert res.exact and res.rel_error < 1e-6
    try:
        pipe.load_lora_weights(str(res.path))
        got_latents = _latents(pipe)  # unfused: the LoRA branch runs beside the base weight
        pipe.fuse_lora()
        pipe.unload_lora_weights()  # keeps the fused weights, drops the adapter modules
        got = _state(pipe)
    finally:
        pipe.unet.load_state_dict(base)
    assert sorted(got) == sorted(want)
    scale = max(float(want[k + ".weight"].abs().max()) for k in edit.layers)
    assert _max_diff(want, got) <= 8 * EPS32 * scale, "fused LoRA differs from edit.apply beyond fp32 rounding"
    effect = float((want_latents - plain_latents).abs().max())
    assert effect > 1e-3  # the edit visibly changes generation, so the next check can fail
    assert float((got_latents - want_latents).abs().max()) <= 1e-4 * max(1.0, float(want_latents.abs().max()))


def test_kohya_names_follow_the_trainers_spelling(tiny_pipes, edits, tmp_path):
    """SD 1.x / 2.x: diffusers spelling; SDXL: LDM spelling whose dotted form is the single file's module holding that
    weight."""
    for fam, p in tiny_pipes.items():
        edit = edits[fam]["uce-lowrank"]
        path = export(edit, "lora-kohya", tmp_path / f"{fam}.safetensors", pipe=p).path
        names = {k.split(".")[0] for k in load_file(str(path))}
        ldm = unet_to_ldm(p.unet.state_dict(), p.unet.config)
        flat = {
            k.removeprefix(UNET_PREFIX).removesuffix(".weight").replace(".", "_"): v
            for k, v in ldm.items()
            if k.endswith(".weight")
        }
        for lpath in edit.layers:
            diffusers_name = "lora_unet_" + lpath.replace(".", "_")
            if fam == "sdxl":
                assert diffusers_name not in names
                name = next(
                    n
                    for n in names
                    if torch.equal(
                        flat.get(n.removeprefix("lora_unet_"), torch.empty(0)), p.unet.get_submodule(lpath).weight
                    )
                )
                assert name.startswith(
                    ("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_")
                )
            else:
                assert diffusers_name in names
        assert len(names) == len(edit.layers)


def test_sparse_edit_is_refused_without_rank_and_truncated_with_it(pipe, family, edits, tmp_path):
    edit = edits[family]["space"]
    out = tmp_path / "space.safetensors"
    with pytest.raises(ExportError, match="'diff', 'diffusers' or 'single-file'"):
        export(edit, "lora", out, pipe=pipe)
    assert not out.exists() and os.listdir(tmp_path) == []
    k = 2
    res = export(edit, "lora", out, pipe=pipe, rank=k)
    assert not res.exact and res.rank == k
    tensors = load_file(str(out))
    meta = json.loads(safe_open(str(out), "pt").metadata()["erasekit_export"])
    num = den = 0.0
    for lpath, le in edit.layers.items():
        W0 = pipe.unet.get_submodule(lpath).weight.double()
        dW = le.materialize(W0).double() - W0
        s = torch.linalg.svdvals(dW)  # Eckart–Young: the best rank-k error is the tail of the spectrum
        tail = float(s[k:].norm())
        assert meta["layers"][lpath]["rel_error"] == pytest.approx(tail / float(dW.norm()), rel=1e-5)
        B, A = tensors[f"unet.{lpath}.lora_B.weight"].double(), tensors[f"unet.{lpath}.lora_A.weight"].double()
        assert float((dW - B @ A).norm()) == pytest.approx(tail, rel=1e-5)
        num, den = num + tail**2, den + float(dW.norm()) ** 2
    assert res.rel_error == pytest.approx((num / den) ** 0.5, rel=1e-5) and meta["rel_error"] == pytest.approx(
        res.rel_error, rel=1e-6
    )


def test_diff_is_the_full_delta(pipe, family, edits, tmp_path):
    edit = edits[family]["space"]
    want = _applied_state(edit, pipe)
    t = load_file(str(export(edit, "diff", tmp_path / "d.safetensors", pipe=pipe).path))
    assert len(t) == len(edit.layers) and all(k.endswith(".diff") for k in t)
    base = pipe.unet.state_dict()
    by_shape = {}
    for lpath in edit.layers:  # W0 + diff = edit.apply, layer by layer (names checked by the kohya test)
        match = [
            k
            for k, d in t.items()
            if d.shape == base[lpath + ".weight"].shape
            and torch.allclose(base[lpath + ".weight"] + d, want[lpath + ".weight"], atol=8 * EPS32, rtol=0)
        ]
        assert match, lpath
        by_shape[lpath] = match
    assert len({m[0] for m in by_shape.values()}) == len(edit.layers)


def test_lora_export_reads_back_as_an_edit(pipe, family, edits, tmp_path, tiny_pipes):
    edit = edits[family]["uce-dense"]
    want = _applied_state(edit, pipe)
    for fmt in ("lora", "lora-kohya"):
        path = export(edit, fmt, tmp_path / f"{fmt}.safetensors", pipe=pipe).path
        back = erasekit.load_edit(path, pipe)  # strict: the fingerprints travel in the export
        try:
            got = _state(pipe)
        finally:
            back.revert(pipe)
        assert back.method == edit.method and back.concepts == edit.concepts and back.stats["export"]["format"] == fmt
        assert _max_diff(want, got) <= 8 * EPS32 * max(float(v.abs().max()) for v in want.values())
    other = next(f for f in tiny_pipes if f != family)
    with pytest.raises(EditFileError, match="does not fit"):
        erasekit.load_edit(path, tiny_pipes[other])
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x40  # one flipped bit in the tensor data
    bad = tmp_path / "tampered.safetensors"
    bad.write_bytes(bytes(raw))
    with pytest.raises(EditFileError, match="checksum"):
        erasekit.load_edit(bad)


def test_merged_diffusers_folder_reloads_with_the_edit_in_place(pipe, family, edits, tmp_path):
    from diffusers import DiffusionPipeline

    edit = edits[family]["space"]
    want = _applied_state(edit, pipe)
    res = export(edit, "diffusers", tmp_path / "merged", pipe=pipe)
    assert (res.path / "erasekit_export.json").is_file() and not [
        p for p in tmp_path.iterdir() if p.name.startswith(".")
    ]
    loaded = DiffusionPipeline.from_pretrained(str(res.path))
    got = loaded.unet.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    for comp in ("vae", "text_encoder", "text_encoder_2"):
        if getattr(pipe, comp, None) is not None:
            a, b = getattr(pipe, comp).state_dict(), getattr(loaded, comp).state_dict()
            assert all(torch.equal(a[k], b[k]) for k in a), comp
    with pytest.raises(EditFileError, match="weights differ"):
        edit.check_compatible(loaded)  # baked in: the base fingerprints no longer match


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_merged_diffusers_folder_respects_the_umask(tiny_pipes, edits, tmp_path, umask):
    """safetensors writes 0600 and mkdtemp 0700: the exported folder must still have the user's usual modes."""
    import stat

    old = os.umask(umask)
    try:
        res = export(edits["sd"]["space"], "diffusers", tmp_path / "merged", pipe=tiny_pipes["sd"])
    finally:
        os.umask(old)
    modes = {p.relative_to(tmp_path): stat.S_IMODE(p.stat().st_mode) for p in [res.path, *res.path.rglob("*")]}
    want = {p: (0o777 if (tmp_path / p).is_dir() else 0o666) & ~umask for p in modes}
    assert modes == want
    assert any(p.suffix == ".safetensors" for p in modes)


def test_refusals_write_nothing(tiny_pipes, edits, tmp_path):
    sd, sdxl = tiny_pipes["sd"], tiny_pipes["sdxl"]
    edit = edits["sd"]["uce-lowrank"]
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    cases = [
        (lambda: export(edit, "lora", blocker / "e.safetensors", pipe=sd), ExportError, "is not a folder"),
        (lambda: export(edit, "lora", tmp_path, pipe=sd), ExportError, "is a directory"),
        (lambda: export(edit, "single-file", tmp_path / "x.safetensors", pipe=sdxl), EditFileError, "does not fit"),
        (lambda: export(edit, "lora", tmp_path / "x.safetensors", pipe=sdxl), EditFileError, "does not fit"),
        (lambda: export(edit, "diff", tmp_path / "x.safetensors"), ExportError, "needs its base pipeline"),
        (lambda: export(sd, "lora", tmp_path / "x.safetensors"), ExportError, "carries an edit"),
        (
            lambda: export(edit, "single-file", tmp_path / "x.safetensors", pipe=sd, rank=2),
            ExportError,
            r"'single-file' format does not take rank \(rank is taken by lora, lora-kohya, lora-kohya-flux\); "
            "it accepts save_dtype, layout",
        ),
        (lambda: export(edit, "onnx", tmp_path / "x.safetensors", pipe=sd), ExportError, "unknown export format"),
        (lambda: export(edit, "diffusers", blocker, pipe=sd), ExportError, "existing file"),
    ]
    before = _state(sd)
    for call, err, msg in cases:
        with pytest.raises(err, match=msg):
            call()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
    assert _max_diff(before, _state(sd)) == 0.0 and erasekit.Edit.applied(sd) == []


# ------------------------------------------------------------ the format registry
def test_every_registered_format_round_trips_or_says_it_cannot(tiny_pipes, edits, tmp_path):
    """Each registered format writes; one with a read_back gives back an edit whose apply equals the original's
    (to fp32 rounding), and load_edit picks that reader from the file; one without is refused by load_edit, named."""
    sd = tiny_pipes["sd"]
    edit = edits["sd"]["uce-dense"]
    want = _applied_state(edit, sd)
    scale = max(float(v.abs().max()) for v in want.values())
    formats = list_formats()
    assert {"single-file", "diffusers", "lora", "lora-kohya", "diff"} <= set(formats)
    for name, fmt in formats.items():
        assert fmt.name == name and get_format(name) is fmt
        out = tmp_path / (name if fmt.folder else f"{name}.safetensors")
        if not fmt.takes("sd"):  # another family's layout (FLUX's: tests/test_export_flux.py): refused, named
            with pytest.raises(ExportError, match=f"'{name}' format writes .*'lora-kohya'"):
                export(edit, name, out, pipe=sd)
            assert not out.exists()
            continue
        res = export(edit, name, out, pipe=sd)
        assert res.path == out and res.nbytes > 0 and out.exists() and erasekit.Edit.applied(sd) == []
        if fmt.read_back is None:
            with pytest.raises(EditFileError, match=f"'{name}' export"):
                erasekit.load_edit(out)
            continue
        for back in (fmt.read_back(out), erasekit.load_edit(out)):
            assert back.method == edit.method and back.concepts == edit.concepts
            assert set(back.layers) == set(edit.layers)
            back.apply(sd)
            try:
                got = _state(sd)
            finally:
                back.revert(sd)
            assert _max_diff(want, got) <= 8 * EPS32 * scale, name
    assert any(f.read_back is not None for f in formats.values())


def test_an_option_a_format_does_not_take_is_refused(tiny_pipes, edits, tmp_path):
    sd, edit = tiny_pipes["sd"], edits["sd"]["uce-lowrank"]
    values = {"rank": 2, "kohya_names": "diffusers", "layout": "sd1", "save_dtype": "float32"}
    formats = list_formats()
    every = {o for f in formats.values() for o in f.options}
    assert every == set(values)
    refused = 0
    for name, fmt in formats.items():
        for option in sorted(every - set(fmt.options)):
            with pytest.raises(
                ExportError, match=f"'{name}' format does not take {option} .*it accepts " + ", ".join(fmt.options)
            ):
                export(edit, name, tmp_path / "x.safetensors", pipe=sd, **{option: values[option]})
            refused += 1
        with pytest.raises(ExportError, match=f"'{name}' format does not take bogus .*no format takes bogus"):
            export(edit, name, tmp_path / "x.safetensors", pipe=sd, bogus=1)
        export_ok = fmt.accept({o: values[o] for o in fmt.options})  # every option it lists is taken
        assert export_ok == {o: values[o] for o in fmt.options}
    assert refused > 0 and list(tmp_path.iterdir()) == [] and erasekit.Edit.applied(sd) == []


def _export_parser_choices():
    import argparse

    from erasekit.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    fmt = next(a for a in sub.choices["export"]._actions if a.dest == "format")
    return fmt.choices, fmt.default


def test_cli_format_choices_are_the_registry():
    choices, default = _export_parser_choices()
    assert tuple(choices) == tuple(list_formats()) and default in choices


def test_a_registered_format_is_a_cli_choice_and_dispatched(tiny_pipes, edits, tmp_path):
    """A plugin format (one register_format call) is a --format choice, receives only the options it takes,
    and is refused an option it does not."""
    from erasekit.export import base
    from erasekit.export._common import ExportResult

    calls = []

    def write(edit, pipe, path, *, progress=False, **options):
        calls.append((edit, pipe, options))
        Path(path).write_bytes(b"x")
        return ExportResult(Path(path), "test-plugin", 1)

    fmt = register_format(ExportFormat(name="test-plugin", kind="edit", help="a test", write=write, options=("rank",)))
    try:
        assert "test-plugin" in _export_parser_choices()[0]
        edit = edits["sd"]["uce-lowrank"]
        export(edit, "test-plugin", tmp_path / "a", rank=3, save_dtype=None)
        assert calls == [(edit, None, {"rank": 3})]
        with pytest.raises(ExportError, match="'test-plugin' format does not take save_dtype .*it accepts rank"):
            export(edit, "test-plugin", tmp_path / "b", save_dtype="float16")
        with pytest.raises(ExportError, match="already registered"):
            register_format(ExportFormat(name="test-plugin", kind="model", help="another", write=write))
        with pytest.raises(ExportError, match="kind must be one of"):
            ExportFormat(name="x", kind="weights", help="h", write=write)
        with pytest.raises(ExportError, match="distinct keyword names"):
            ExportFormat(name="x", kind="edit", help="h", write=write, options=("path",))
        assert register_format(fmt) is fmt  # the same format again: a no-op
    finally:
        base._REGISTRY.pop(fmt.name, None)
    assert "test-plugin" not in _export_parser_choices()[0]


def test_a_lowrank_lora_needs_no_pipeline(edits, tmp_path):
    edit = edits["sd"]["uce-lowrank"]
    res = export(edit, "lora", tmp_path / "e.safetensors")
    back = erasekit.load_edit(res.path)
    for lpath, le in edit.layers.items():
        assert torch.equal(back.layers[lpath].tensors["weight.lora_B"], le.tensors["weight.lora_B"])
        assert torch.equal(back.layers[lpath].tensors["weight.lora_A"], le.tensors["weight.lora_A"])


def test_cli_export_lora_and_refusals(tiny_pipes, edits, tmp_path, capsys):
    from erasekit.cli import main

    sp = edits["sd"]["space"].save(tmp_path / "space.safetensors")
    out = tmp_path / "space-lora.safetensors"
    assert main(["export", "--model", "tiny-sd", "--edit", str(sp), "--format", "lora", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "erasekit: error:" in line]
    assert len(errors) == 1 and "--rank" in errors[0] and "Traceback" not in err and not out.exists()
    assert (
        main(
            [
                "export",
                "--model",
                "tiny-sd",
                "--edit",
                str(sp),
                "--format",
                "lora-kohya",
                "--rank",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (
        "relative error" in capsys.readouterr().err and erasekit.load_edit(out).stats["export"]["rank_requested"] == 3
    )
    assert (
        main(
            [
                "export",
                "--model",
                "tiny-sdxl",
                "--edit",
                str(sp),
                "--format",
                "diff",
                "--out",
                str(tmp_path / "d.safetensors"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "does not fit" in err and "Traceback" not in err and not (tmp_path / "d.safetensors").exists()
    assert main(["export", "--model", "tiny-sd", "--format", "lora", "--out", str(tmp_path / "nofile" / "x")]) == 2
    assert "give --edit" in capsys.readouterr().err


def _tinyworld_lora_round_trip(tmp_path):
    p = erasekit.load_pipeline("tinyworld")
    # last-token columns: a ΔW of small numerical rank, an exact LoRA whatever the per-model defaults add
    edit = erasekit.erase(p, "uce", ["circle"], kind="object", progress=False, token="last")
    base, want = _state(p), _applied_state(edit, p)
    for fmt in ("lora", "lora-kohya"):
        p.load_lora_weights(str(export(edit, fmt, tmp_path / f"{fmt}.safetensors", pipe=p).path))
        p.fuse_lora()
        p.unload_lora_weights()
        got = _state(p)
        p.unet.load_state_dict(base)
        assert _max_diff(want, got) <= 8 * EPS32 * max(float(v.abs().max()) for v in want.values()), fmt


def test_tinyworld_lora_round_trip(tmp_path):
    _tinyworld_lora_round_trip(tmp_path)


# ------------------------------------------------------------ third-party loaders
def _third_party_python() -> str | None:
    """The separate venv with stable-diffusion-sdkit, lycoris-lora and sd-mecha (never the project's venv)."""
    cand = os.environ.get("ERASEKIT_3P_PYTHON") or str(
        Path(__file__).resolve().parents[1] / ".venv-3p" / "bin" / "python"
    )
    return cand if Path(cand).is_file() else None


@pytest.mark.skipif(_third_party_python() is None, reason="third-party loaders absent (.venv-3p or ERASEKIT_3P_PYTHON)")
def test_third_party_loaders(tiny_pipes, edits, tmp_path):
    """Original LDM code (sdkit) loads SD 1.x / 2.x single files strictly; LyCORIS applies the kohya LoRA and .diff
    to exactly the edited modules; sd-mecha's key lists match real-size exports
    (see benchmarks/export_thirdparty.py)."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "export_thirdparty.py"
    subprocess.run([sys.executable, str(script), "prepare", str(tmp_path)], check=True)
    run = subprocess.run([_third_party_python(), str(script), "check", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    res = json.loads(run.stdout.strip().splitlines()[-1])
    assert res["failures"] == [], res


@pytest.mark.slow  # drives the benchmark script; the formats' round trips run in the default tests above
def test_export_matrix_benchmark_runs_and_exact_formats_are_exact():
    """benchmarks/export_matrix.py on tiny SD1: every format × kind exports and loads back; the exact ones match
    edit.apply to fp32 rounding, and the truncated LoRA of the sparse edit reports its error."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "export_matrix.py"
    spec = importlib.util.spec_from_file_location("export_matrix", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.matrix(["sd"], rank=2)
    assert {(r[0], r[2]) for r in rows} == {
        (f, k)
        for f in ("lora", "lora-kohya", "diff", "diffusers", "single-file")
        for k in ("low-rank (UCE)", "sparse (SPACE)", "dense (UCE)")
    }
    for fmt, _, kind, nbytes, _, err, note in rows:
        assert nbytes > 0
        if fmt.startswith("lora") and kind.startswith("sparse"):
            assert note.startswith("rank 2, rel. err") and err > 1e-4  # truncated: not exact, and says so
        else:
            assert err <= 1e-6, (fmt, kind, err)
