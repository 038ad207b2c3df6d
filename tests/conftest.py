import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _bind_library_loggers_now() -> None:
    """diffusers and transformers give their root logger a StreamHandler on first use, bound to the sys.stderr of
    that moment. If the first use falls inside a test with ``capsys``, the handler keeps that test's capture stream,
    which is closed afterwards, and every later warning prints "--- Logging error --- Traceback" into another test's
    stderr. Configuring them here binds the handler to pytest's session-long stream instead."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.get_logger("diffusers")
    transformers_logging.get_logger("transformers")


_bind_library_loggers_now()

FAMILIES = ("sd", "sd2", "sdxl")  # the UNet builds most tests run on
# Every tiny build, one or more per registered family (models/families): the registry matrix
# (test_engine, test_families).
ALL_TINY = ("sd", "sd2", "sdxl", "pixart", "sana", "sd3", "flux")


@pytest.fixture(scope="session")
def tiny_pipes():
    """One tiny pipeline per family, built once; tests must leave them as they found them."""
    from erasekit.models.tiny import build_tiny_pipeline

    return {fam: build_tiny_pipeline(fam, seed=0) for fam in FAMILIES}


@pytest.fixture(scope="session")
def all_tiny_pipes(tiny_pipes):
    """Every tiny build (ALL_TINY), the UNet ones shared with ``tiny_pipes``; DiTs built once, on first use."""
    from erasekit.models.tiny import build_tiny_pipeline

    class Lazy(dict):
        def __missing__(self, fam):
            self[fam] = build_tiny_pipeline(fam, seed=0)
            return self[fam]

    return Lazy(tiny_pipes)


def denoiser(pipe):
    """The pipeline's denoiser, as its family names it (``unet`` / ``transformer``)."""
    from erasekit.models.families import identify

    return identify(pipe).get_denoiser(pipe)


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture
def pipe(tiny_pipes, family):
    yield from _guarded(tiny_pipes[family])


def _guarded(p):
    before = {k: v.clone() for k, v in denoiser(p).state_dict().items()}
    yield p
    # Guard: a test that forgot to revert would poison the others.
    after = denoiser(p).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "test left the shared pipeline modified"


@pytest.fixture(scope="session")
def determinism_rows():
    """Rows that tests/test_determinism.py fills: (code path, probe report), printed after the run."""
    return _DETERMINISM_ROWS


_DETERMINISM_ROWS: list = []


def pytest_terminal_summary(terminalreporter):
    if not _DETERMINISM_ROWS:
        return
    tr = terminalreporter
    tr.section("bit-identity promises by CPU code path (tests/test_determinism.py)")
    m0 = _DETERMINISM_ROWS[0][1]["machine"]
    tr.write_line(f"CPU: {m0['cpu']}; SIMD flags: {', '.join(m0['flags'])}; BLAS: {m0['blas']}; torch {m0['torch']}")
    for path, report in _DETERMINISM_ROWS:
        m, checks = report["machine"], report["checks"]
        held = ", ".join(f"{k} {'held' if v['ok'] else 'FAILED'}" for k, v in checks.items())
        fresh = checks.get("gemm", {}).get("fresh_thread_differs")
        extra = f"; unpinned-thread GEMM differs on {len(fresh)} shape(s)" if fresh else ""
        tr.write_line(f"  {path:<50} ATen {m['aten_capability']:<8} {held}{extra}")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tiny problems (``pytestmark = pytest.mark.usefixtures("one_thread")``): no
    OpenMP barrier stalls on a busy machine, and the CPU is shared. The caller's count is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def activation_basis_runs(pipe) -> bool:
    """Whether PURE's activation basis runs on ``pipe``'s default sites (a family that captures along its sampler,
    sites that are attention keys / values: the UNets; on SD3 / FLUX only with sites='joint')."""
    import erasekit
    from erasekit.methods.pure import check_activation_sites
    from erasekit.models.adapter import PipelineAdapter

    try:
        check_activation_sites(PipelineAdapter(pipe))
    except erasekit.MethodError:
        return False
    return True
