"""File fuzz: every mutated edit file is refused with an erasekit error or gives the identical result.

Seeded mutants of real edit files of tiny SD1 (SPACE/CSR, UCE low-rank, UCE dense, and dense
Conv2d weight + bias entries): truncations, byte flips in the length field / header JSON /
tensor data, metadata edits with the old and with a recomputed checksum, CSR structure,
dtype and overflow (float32 and float16 pipelines), stacking. For each: an EraseKitError or
an accepted file whose applied weights are bit-identical to the original's; never another
exception; the pipeline's bytes unchanged after every refusal (and after reverting an
accepted one). ERASEKIT_FUZZ_REPORT=path writes the table.

On other CPUs: the mutations are seeded (the same offsets and classes everywhere) and the assertion
holds on any CPU, but the files are fitted here, so their values follow this CPU's rounding and a flip
at a given offset can land on another bit pattern: the per-outcome counts of the table may shift.
"""

import copy
import hashlib
import json
import os
import random
import struct
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

import erasekit
from erasekit.edit import Edit, LayerEdit
from erasekit.edit_format import canonical_json, content_sha256, tensor_digest
from erasekit.errors import EraseKitError
from erasekit.models.adapter import weight_fingerprint
from erasekit.models.tiny import build_tiny_pipeline

SEED = 9
CLASSES = (
    "truncation",
    "byte flip: length field",
    "byte flip: header JSON",
    "byte flip: tensor data",
    "metadata edit, old checksum",
    "metadata edit, checksum recomputed",
    "CSR structure",
    "dtype and overflow",
    "stacking",
)
MUST_REFUSE = {
    "truncation",
    "byte flip: length field",
    "byte flip: tensor data",
    "metadata edit, old checksum",
    "CSR structure",
    "dtype and overflow",
    "stacking",
}


def _digest(pipe) -> str:
    h = hashlib.sha256()
    for t in [*pipe.unet.parameters(), *pipe.unet.buffers()]:
        h.update(t.detach().contiguous().view(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _split(data: bytes) -> tuple[dict, dict]:
    """(metadata doc, tensors) of a file's bytes."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".safetensors") as f:
        f.write(data)
        f.flush()
        with safe_open(f.name, framework="pt") as g:
            return json.loads(g.metadata()["erasekit"]), {k: g.get_tensor(k) for k in g.keys()}


def _build(doc, tensors, *, rehash: bool, text: str | None = None) -> bytes:
    if rehash and isinstance(doc, dict):
        doc = dict(doc)
        doc["content_sha256"] = content_sha256(doc, tensors)
    return st_save(tensors, metadata={"erasekit": text if text is not None else json.dumps(doc)})


# ----------------------------------------------------------------- metadata mutations
def _first(doc):
    return next(iter(doc["layers"]))


def _layer(f):
    def m(doc):
        f(doc["layers"][_first(doc)])

    return m


def _set(**kv):
    def m(doc):
        doc.update(kv)

    return m


def _pop(key):
    return lambda doc: doc.pop(key)


def _rename(old, new, where=None):
    def m(doc):
        d = doc if where is None else where(doc)
        d[new] = d.pop(old)

    return m


def _fp(doc):
    return doc["layers"][_first(doc)]["fingerprint"]


def _bump_sketch(doc):
    _fp(doc)["sketch"][0] += 1.0


def _flip_hex(doc):
    s = _fp(doc)["sha256"]
    _fp(doc)["sha256"] = ("1" if s[0] != "1" else "2") + s[1:]


def _swap_concept(doc):
    doc["concepts"]["erase"] = ["Picasso"]


META_MUTATIONS = {
    "concepts null": _set(concepts=None),
    "concepts 'x'": _set(concepts="x"),
    "concepts.erase [1, 2]": _set(concepts={"erase": [1, 2]}),
    "concepts.erase []": lambda d: d["concepts"].update(erase=[]),
    "erased concept swapped": _swap_concept,
    "concept label one letter off": lambda d: d["concepts"].update(erase=[d["concepts"]["erase"][0][:-1] + "x"]),
    "concepts.kind bogus": lambda d: d["concepts"].update(kind="bogus"),
    "method 123": _set(method=123),
    "method nonexistent": _set(method="nonexistent-method"),
    "method null": _set(method=None),
    "config {}": _set(config={}),
    "config list": _set(config=[]),
    "config.lamb 'abc'": lambda d: d["config"].update(lamb="abc"),
    "config.lamb -1": lambda d: d["config"].update(lamb=-1.0),
    "config extra key": lambda d: d["config"].update(bogus=1),
    "config.token first": lambda d: d["config"].update(token="first"),
    "format_version 'abc'": _set(format_version="abc"),
    "format_version null": _set(format_version=None),
    "format_version 0": _set(format_version=0),
    "format_version -1": _set(format_version=-1),
    "format_version true": _set(format_version=True),
    "format_version '2'": _set(format_version="2"),
    "format_version 1.9": _set(format_version=1.9),
    "format_version 4": _set(format_version=4),
    "format_version 2 (v3 keys)": _set(format_version=2),
    "format_version missing": _pop("format_version"),
    "format other": _set(format="other"),
    "layers null": _set(layers=None),
    "layers []": _set(layers=[]),
    "layers {}": _set(layers={}),
    "layers renamed": _rename("layers", "layerz"),
    "fingerprint renamed": _layer(lambda l: l.__setitem__("fingerprinx", l.pop("fingerprint"))),
    "sha256 renamed": lambda d: _fp(d).__setitem__("sha25x", _fp(d).pop("sha256")),
    "dtype renamed": lambda d: _fp(d).__setitem__("dtypf", _fp(d).pop("dtype")),
    "shape renamed": _layer(lambda l: l.__setitem__("shapf", l.pop("shape"))),
    "kind bogus": _layer(lambda l: l.update(kind="bogus")),
    "shape [64]": _layer(lambda l: l.update(shape=[64])),
    "shape [64, 32, 1]": _layer(lambda l: l.update(shape=l["shape"] + [1])),
    "shape strings": _layer(lambda l: l.update(shape=[str(s) for s in l["shape"]])),
    "shape floats": _layer(lambda l: l.update(shape=[float(s) for s in l["shape"]])),
    "shape off by one (both)": _layer(
        lambda l: (
            l["shape"].__setitem__(0, l["shape"][0] + 1),
            l["fingerprint"]["shape"].__setitem__(0, l["shape"][0]),
        )
    ),
    "param bias": _layer(lambda l: l.update(param="bias")),
    "param '1x'": _layer(lambda l: l.update(param="1x")),
    "fingerprint 'abc'": _layer(lambda l: l.update(fingerprint="abc")),
    "fingerprint missing": _layer(lambda l: l.pop("fingerprint")),
    "fingerprint.sha256 digit": _flip_hex,
    "fingerprint.sketch []": lambda d: _fp(d).update(sketch=[]),
    "fingerprint.sketch[0] + 1": _bump_sketch,
    "fingerprint.fro x2": lambda d: _fp(d).update(fro=_fp(d)["fro"] * 2),
    "wrong hash + empty sketch": lambda d: (_flip_hex(d), _fp(d).update(sketch=[])),
    "fingerprint.dtype float8": lambda d: _fp(d).update(dtype="float8"),
    "layer stats.sparsity 'abc'": _layer(lambda l: l["stats"].update(sparsity="abc")),
    "layer stats list": _layer(lambda l: l.update(stats=[])),
    "layer key renamed": lambda d: d["layers"].__setitem__(_first(d) + "x", d["layers"].pop(_first(d))),
    "metadata is a list": lambda d: "LIST",
    "metadata is null": lambda d: "NULL",
    "metadata is 5": lambda d: "FIVE",
    "unknown top-level field": _set(extra=1),
    "compute_dtype float8": _set(compute_dtype="float8"),
    "compute_dtype 5": _set(compute_dtype=5),
    "base list": _set(base=[]),
    "base.d_in 'abc'": lambda d: d["base"].update(d_in="abc"),
    "base.name_or_path changed": lambda d: d["base"].update(name_or_path="elsewhere"),
    "stats 'abc'": _set(stats="abc"),
    "stats extra entry": lambda d: d["stats"].update(note="free-form"),
    "erasekit_version 5": _set(erasekit_version=5),
    "content_sha256 missing": _pop("content_sha256"),
    "content_sha256 123": _set(content_sha256=123),
}
# Text-level edits that json.dumps cannot express.
TEXT_MUTATIONS = {
    "100,000-deep nested JSON": lambda t: t.replace(
        '"stats":{', '"stats":' + "[" * 100_000 + "]" * 100_000 + ',"x":{', 1
    ),
    "NaN in fingerprint": lambda t: t.replace('"fro":', '"fro":NaN,"_":', 1),
    "1e999 in fingerprint": lambda t: t.replace('"fro":', '"fro":1e999,"_":', 1),
    "duplicate key": lambda t: t.replace('{', '{"method":"uce",', 1),
}
_WHOLE = {"LIST": [], "NULL": None, "FIVE": 5}


def _meta_mutants(doc, tensors, rehash, pick):
    """Each mutation applies to the files ``pick(name)`` selects (one per mutation: the run stays short)."""
    out = []
    for name, mut in META_MUTATIONS.items():
        if not pick(name):
            continue
        d = copy.deepcopy(doc)
        res = mut(d)
        if isinstance(res, str) and res in _WHOLE:
            d = _WHOLE[res]
        out.append((name, _build(d, tensors, rehash=rehash)))
    base = copy.deepcopy(doc)
    if rehash:
        base["content_sha256"] = content_sha256(base, tensors)
    canon = canonical_json(base)
    for name, mut in TEXT_MUTATIONS.items():
        if pick(name):
            out.append((name, _build(None, tensors, rehash=False, text=mut(canon))))
    if rehash and pick("format 1 file"):  # a genuine format-1 file: loads (with a warning), identical weights
        v1 = copy.deepcopy(doc)
        v1["format_version"] = 1
        v1.pop("compute_dtype", None)
        v1["layers"] = {k.split("/", 1)[1]: layer for k, layer in v1["layers"].items()}  # format 1: UNet-relative
        for layer in v1["layers"].values():
            layer.pop("param", None)
        t1 = {k.split("/", 1)[1]: v for k, v in tensors.items()}
        v1["content_sha256"] = tensor_digest(t1)
        out.append(("format 1 file", _build(v1, t1, rehash=False)))
    return out


# ----------------------------------------------------------------- CSR / dtype mutants
def _csr_mutants(doc, tensors):
    key = next(k for k, l in doc["layers"].items() if l["kind"] == "csr")
    p = f"{key}.weight"
    crow, col, val = tensors[f"{p}.crow_indices"], tensors[f"{p}.col_indices"], tensors[f"{p}.values"]
    row = int(((crow[1:] - crow[:-1]) >= 2).nonzero()[0])  # a row with two entries or more
    a = int(crow[row])
    d_in = doc["layers"][key]["shape"][1]

    def t(**repl):
        out = dict(tensors)
        out.update({f"{p}.{k}": v for k, v in repl.items()})
        return out

    dup, swap, neg, big = col.clone(), col.clone(), col.clone(), col.clone()
    dup[a + 1] = dup[a]
    swap[a], swap[a + 1] = col[a + 1], col[a]
    neg[0], big[0] = -1, d_in
    bump = crow.clone()
    bump[1:-1] = crow[1:-1].flip(0)
    variants = {
        "col_indices (nnz, 1)": t(col_indices=col[:, None].contiguous()),
        "duplicate (row, col)": t(col_indices=dup),
        "unsorted row": t(col_indices=swap),
        "negative column": t(col_indices=neg),
        "column = d_in": t(col_indices=big),
        "crow not monotone": t(crow_indices=bump),
        "crow[0] = 1": t(crow_indices=torch.cat([crow[:1] + 1, crow[1:]])),
        "crow[-1] != nnz": t(crow_indices=torch.cat([crow[:-1], crow[-1:] - 1])),
        "crow too short": t(crow_indices=crow[:-1].clone()),
        "values 2-D": t(values=val[:, None].contiguous()),
        "values one short": t(values=val[:-1].clone()),
        "col_indices float": t(col_indices=col.float()),
        "crow int16": t(crow_indices=crow.to(torch.int16)),
        "col_indices int8": t(col_indices=col.to(torch.int8)),
    }
    return [(n, _build(doc, ts, rehash=True)) for n, ts in variants.items()]


def _dtype_mutants(doc, tensors, fp16: bool):
    out = []
    for key, layer in list(doc["layers"].items())[:1]:
        names = [k for k in tensors if k.startswith(key + ".")]
        for name in names if not fp16 else ():  # the dtype policy does not depend on the pipeline
            x = tensors[name]
            if not x.is_floating_point():
                continue
            for dt in (torch.float16, torch.float64, torch.bfloat16, torch.int32, torch.bool):
                ts = dict(tensors)
                ts[name] = x.to(dt)
                out.append((f"{name.rsplit('.', 1)[-1]} as {str(dt)[6:]}", _build(doc, ts, rehash=True)))
            for bad in (float("nan"), float("inf")):
                ts = dict(tensors)
                y = x.clone()
                y.view(-1)[0] = bad
                ts[name] = y
                out.append((f"{name.rsplit('.', 1)[-1]} with {bad}", _build(doc, ts, rehash=True)))
        if layer["kind"] == "lowrank":  # finite factors, B·A = 1e60 overflows float32 (and float16)
            ts = dict(tensors)
            for name in names:
                ts[name] = torch.full_like(tensors[name], 1e30)
            out.append((f"B·A overflows {'float16' if fp16 else 'float32'}", _build(doc, ts, rehash=True)))
        elif fp16:  # finite float32 values above float16's 65,504
            ts = dict(tensors)
            for name in names:
                if tensors[name].is_floating_point():
                    ts[name] = torch.full_like(tensors[name], 7e4)
            out.append(("values overflow float16", _build(doc, ts, rehash=True)))
    return out


# ----------------------------------------------------------------- the test
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.manual_seed(0)
    pipe = build_tiny_pipeline("sd", seed=0)
    d = tmp_path_factory.mktemp("fuzz")
    edits = {
        "space-csr": erasekit.erase(
            pipe, method="space", concepts=["Van Gogh"], preserve=["Monet"], target_sparsity=0.8, progress=False
        ),
        "uce-lowrank": erasekit.erase(
            pipe, method="uce", concepts=["Van Gogh"], preserve=["Monet"], storage="lowrank", progress=False
        ),
        "uce-dense": erasekit.erase(pipe, method="uce", concepts=["Van Gogh"], storage="dense", progress=False),
    }
    name, conv = next(
        (n, m) for n, m in pipe.unet.named_modules() if isinstance(m, torch.nn.Conv2d) and m.bias is not None
    )
    les = [
        LayerEdit.dense(name, conv.weight * 0.9, param="weight"),
        LayerEdit.dense(name, conv.bias + 0.01, param="bias"),
    ]
    edits["conv-dense"] = Edit(
        "uce",
        erasekit.make_config("uce").to_dict(),
        edits["uce-dense"].concepts,
        edits["uce-dense"].base,
        les,
        {les[0].key: weight_fingerprint(conv.weight), les[1].key: weight_fingerprint(conv.bias)},
        {},
    )
    files, expected = {}, {}
    base = _digest(pipe)
    for k, e in edits.items():
        path = e.save(d / f"{k}.safetensors")
        files[k] = path.read_bytes()
        loaded = erasekit.load_edit(path, pipe)
        expected[k] = _digest(pipe)
        loaded.revert(pipe)
        assert expected[k] != base and _digest(pipe) == base
    pipe16 = build_tiny_pipeline("sd", seed=0).to(torch.float16)
    small = erasekit.erase(pipe, method="uce", concepts=["Van Gogh"], erase_scale=0.001, progress=False).save(
        d / "small.safetensors"
    )
    return pipe, pipe16, files, expected, d, small.read_bytes()


def _try(pipe, path: Path, data: bytes, before: str, stack: bool = False):
    """(outcome, pipeline changed after a refusal, digest after apply or None, error) for one mutant."""
    path.write_bytes(data)
    applied = erasekit.Edit.applied(pipe)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            edit = erasekit.load_edit(path, pipe, stack=stack)
    except EraseKitError:
        return "refused", _digest(pipe) != before or erasekit.Edit.applied(pipe) != applied, None, None
    except BaseException as e:  # noqa: BLE001 - the point of the test
        return "other", _digest(pipe) != before, None, f"{type(e).__name__}: {str(e)[:120]}"
    after = _digest(pipe)
    edit.revert(pipe)
    assert _digest(pipe) == before
    return "accepted", False, after, None


def test_fuzzed_edit_files(world):
    pipe, pipe16, files, expected, d, small = world
    rng = random.Random(SEED)
    base, base16 = _digest(pipe), _digest(pipe16)
    names = [*META_MUTATIONS, *TEXT_MUTATIONS, "format 1 file"]
    owner = {(n, rehash): rng.choice(sorted(files)) for n in names for rehash in (False, True)}
    table = {c: Counter() for c in CLASSES}
    failures: dict[str, list] = defaultdict(list)
    accepted: list[str] = []
    path = d / "mutant.safetensors"

    def record(cls, name, res, exp=None):
        outcome, changed, after, err = res
        if outcome == "accepted":
            outcome = "accepted-identical" if after == exp else "accepted-different"
            accepted.append(f"{cls}: {name}")
        table[cls]["count"] += 1
        table[cls][outcome] += 1
        table[cls]["pipeline changed"] += int(changed)
        if outcome in ("other", "accepted-different") or changed or (cls in MUST_REFUSE and outcome != "refused"):
            failures[cls].append((name, outcome, err))

    for k, data in files.items():
        hlen = struct.unpack("<Q", data[:8])[0]
        doc, tensors = _split(data)
        for cut in sorted(
            {0, 7, 8, 9, 8 + hlen - 1, 8 + hlen, len(data) - 1} | {rng.randrange(len(data)) for _ in range(4)}
        ):
            if cut < len(data):
                record("truncation", f"{k}[:{cut}]", _try(pipe, path, data[:cut], base), expected[k])
        for _ in range(3):
            b = bytearray(data)
            b[rng.randrange(8)] ^= 1 << rng.randrange(8)
            record("byte flip: length field", k, _try(pipe, path, bytes(b), base), expected[k])
        for region, cls, n in (
            ((8, 8 + hlen), "byte flip: header JSON", 12),
            ((8 + hlen, len(data)), "byte flip: tensor data", 12),
        ):
            for _ in range(n):
                b = bytearray(data)
                b[rng.randrange(*region)] ^= rng.randrange(1, 256)
                record(cls, k, _try(pipe, path, bytes(b), base), expected[k])
        for rehash, cls in ((False, "metadata edit, old checksum"), (True, "metadata edit, checksum recomputed")):
            for name, mutant in _meta_mutants(doc, tensors, rehash, lambda n: owner[(n, rehash)] == k):
                record(cls, f"{k}: {name}", _try(pipe, path, mutant, base), expected[k])
        if k == "space-csr":
            for name, mutant in _csr_mutants(doc, tensors):
                record("CSR structure", name, _try(pipe, path, mutant, base), expected[k])
        for fp16, target in ((False, pipe), (True, pipe16)):
            for name, mutant in _dtype_mutants(doc, tensors, fp16):
                record(
                    "dtype and overflow",
                    f"{k} ({'fp16' if fp16 else 'fp32'}): {name}",
                    _try(target, path, mutant, base16 if fp16 else base),
                    None,
                )

    # Stacking: with an edit applied, no second edit on its layers loads unless stack=True.
    for first in ("uce-lowrank", "space-csr"):
        path.write_bytes(files[first])
        applied = erasekit.load_edit(path, pipe)
        state = _digest(pipe)
        for second, data in [
            ("same file", files[first]),
            ("uce-dense", files["uce-dense"]),
            ("space-csr", files["space-csr"]),
            ("uce erase_scale=0.001", small),
        ]:
            record("stacking", f"{first} then {second}", _try(pipe, path, data, state), None)
        with pytest.raises(EraseKitError, match="already applied"):
            applied.apply(pipe, stack=True)
        stacked = erasekit.load_edit(d / "small.safetensors", pipe, stack=True)  # on purpose: allowed
        stacked.revert(pipe)
        applied.revert(pipe)
    for k, data in files.items():  # the same file twice on the fp16 pipeline
        path.write_bytes(data)
        applied = erasekit.load_edit(path, pipe16)
        record("stacking", f"{k} twice (fp16)", _try(pipe16, path, data, _digest(pipe16)), None)
        applied.revert(pipe16)

    _report(table, accepted)
    assert not failures, dict(failures)
    for cls in CLASSES:
        assert table[cls]["count"] > 0, cls
    assert sum(t["count"] for t in table.values()) >= 300


def _report(table, accepted) -> None:
    cols = ("count", "refused", "accepted-identical", "accepted-different", "other", "pipeline changed")
    lines = [
        "| mutant class | count | refused | accepted-identical | accepted-different | other exception | pipeline "
        "changed after refusal |",
        "|---|---|---|---|---|---|---|",
    ]
    total = Counter()
    for cls, c in table.items():
        lines.append(f"| {cls} | " + " | ".join(str(c[k]) for k in cols) + " |")
        total.update(c)
    lines.append("| **total** | " + " | ".join(str(total[k]) for k in cols) + " |")
    lines += ["", "accepted mutants: " + "; ".join(accepted)]
    text = "\n".join(lines)
    print("\n" + text)
    path = os.environ.get("ERASEKIT_FUZZ_REPORT")
    if path:
        Path(path).write_text(text + "\n")
