"""The emulator's checks (csrc/emulate/checker.h), which run over every emulated test: what a
GPU would do differently is reproduced on the CPU. Here: they report nothing on the real
kernels, under every thread order and with poisoned shared memory and registers (results
bit for bit equal); and each deliberate defect of the CTA code (R2P1D_EMULATOR_MUTATION) is
reported by the check made for it."""
import pytest
import torch

import r2p1d_ext  # noqa: F401  (loads the library)

from conftest import env_setting
from tc_emulation import EMU
from test_tc_emulated import _rand, _spatial_inputs, _temporal_inputs

DTYPES = [torch.bfloat16, torch.float32]


def _every_op(dtype, tile=1):
    """Every emulated op on small shapes (the spatial and temporal GEMMs forward and
    backward, the inference op), their results in one list."""
    x, w, b, st, pd, gy, gmean, gvar = _spatial_inputs("past-tile", dtype)
    y, mean, var = EMU.spatial_conv_stats(x, w, b, st, pd, 132, tile)
    out = [y, mean, var, *EMU.spatial_conv_backward(gy, x, w, y, mean, gmean, gvar, st, pd, [True] * 3, 132, tile)]
    ty, tmean, scale, shift, tw, tb, tst, tpt = _temporal_inputs("k3", dtype)
    o = EMU.temporal_conv_bnrelu(ty, tmean, scale, shift, tw, tb, tst, tpt, 132, tile)
    go = _rand(o.shape, dtype, torch.Generator().manual_seed(5))
    out += [o, *EMU.temporal_conv_bnrelu_backward(go, ty, tmean, scale, shift, tw, tst, tpt, [True] * 6, 132, tile)]
    g = torch.Generator().manual_seed(6)
    xe, ws, bs = _rand((1, 8, 4, 6, 5), dtype, g), _rand((16, 8, 1, 3, 3), dtype, g, 0.3), _rand((16,), dtype, g)
    wt, bt = _rand((12, 16, 3, 1, 1), dtype, g, 0.3), _rand((12,), dtype, g)
    out.append(EMU.fused_eval(xe, ws, bs, wt, bt, [1, 1, 1], [1, 1, 1], sm_count=132, tile=tile))
    return out


def _bitwise_equal(a, b):
    return all(torch.equal(p, q) for p, q in zip(a, b))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tile", [0, 1], ids=["large", "small"])
def test_other_thread_orders_give_the_same_bits(dtype, tile):
    """Between two barriers no thread may depend on another's step: reversed or shuffled,
    the threads (and the warps' MMAs) give the results of the forward order bit for bit."""
    want = _every_op(dtype, tile)
    for order in ("reverse", "shuffle"):
        with env_setting("R2P1D_EMULATOR_ORDER", order):
            assert _bitwise_equal(_every_op(dtype, tile), want), order


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_poisoned_state_gives_the_same_bits(dtype):
    """With the checks on, shared memory and every thread's registers start each CTA as NaN
    bytes; with them off, as zeros: nothing the kernels use is left uninitialised."""
    poisoned = _every_op(dtype)
    with env_setting("R2P1D_EMULATOR_CHECKS", "off"):
        assert _bitwise_equal(_every_op(dtype), poisoned)


def _spatial_fprop(tile=1, c=40, m=24, shape=(1, 40, 2, 9, 8), dtype=torch.bfloat16):
    """A spatial forward with statistics: more K tiles than pipeline stages (360 taps *
    channels: 12 of 32 for bf16, 23 of 16 for TF32), M = 24 not a multiple of the tile, a
    column reduction at the end. In bf16 both operands arrive by cp.async; in float32 (TF32)
    both go through registers."""
    g = torch.Generator().manual_seed(1)
    x, w = _rand(shape, dtype, g), _rand((m, c, 1, 3, 3), dtype, g, 0.3)
    return EMU.spatial_conv_stats(x, w, None, [1, 1], [1, 1], 132, tile)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["async", "registers"])
@pytest.mark.parametrize("mutation,match", [
    ("skip_barrier:vectors", None),  # no prologue vectors here: nothing to report (see below)
    ("skip_barrier:prologue", r"shared-memory race at offset \d+: read of what thread \d+ wrote"),
    ("skip_barrier:ktile", r"shared-memory race"),
    ("skip_barrier:staging", r"shared-memory race"),
    ("skip_barrier:reduction", r"shared-memory race"),
    ("skip_barrier:slots", r"shared-memory race"),
    # into the stage the MMAs read: a race through registers, a copy not yet landed by cp.async
    ("wrong_buffer", r"(shared-memory race at offset \d+: write, and a read by thread|cp.async there has not landed|"
                     r"before thread \d+'s cp.async there has landed)"),
    ("row_bound", r"global read at 0x[0-9a-f]+ outside every tensor of the GEMM.*weight"),
    ("divergent_barrier", r"a barrier reached by 32 of the CTA's 128 threads"),
    ("missing_wait", r"before thread \d+'s cp.async there has landed \(a missing cp.async.wait_group\)"),
])
def test_each_defect_is_reported_by_its_check(mutation, match, dtype):
    _spatial_fprop(dtype=dtype)  # clean
    if mutation == "missing_wait" and dtype == torch.float32:
        match = None  # no cp.async in the register path: nothing to wait for
    with env_setting("R2P1D_EMULATOR_MUTATION", mutation):
        if match is None:
            _spatial_fprop(dtype=dtype)
            return
        with pytest.raises(RuntimeError, match=r"(?s)r2p1d emulator: \d+ finding\(s\) in spatial_fprop:.*" + match):
            _spatial_fprop(dtype=dtype)


def test_a_skipped_vectors_barrier_is_reported_where_a_prologue_reads_them():
    """The temporal forward's BatchNorm+ReLU reads the channel vectors every thread staged:
    without the barrier after staging them, a thread reads what another wrote."""
    ty, tmean, scale, shift, tw, tb, tst, tpt = _temporal_inputs("k3", torch.bfloat16)
    EMU.temporal_conv_bnrelu(ty, tmean, scale, shift, tw, tb, tst, tpt, 132, 1)
    with env_setting("R2P1D_EMULATOR_MUTATION", "skip_barrier:vectors"):
        with pytest.raises(RuntimeError, match=r"(?s)in temporal_fprop:.*shared-memory race at offset \d+: read of what"):
            EMU.temporal_conv_bnrelu(ty, tmean, scale, shift, tw, tb, tst, tpt, 132, 1)


def test_a_report_names_the_cta_and_thread():
    with env_setting("R2P1D_EMULATOR_MUTATION", "skip_barrier:prologue"):
        with pytest.raises(RuntimeError, match=r"in spatial_fprop:\n  CTA \(\d+, \d+, split \d+\), thread \d+: shared-memory race"):
            _spatial_fprop()


@pytest.mark.parametrize("name,value,match", [
    ("R2P1D_EMULATOR_CHECKS", "maybe", r"R2P1D_EMULATOR_CHECKS to be on or off, but got 'maybe'"),
    ("R2P1D_EMULATOR_ORDER", "sideways", r"R2P1D_EMULATOR_ORDER to be forward, reverse or shuffle"),
    ("R2P1D_EMULATOR_MUTATION", "typo", r"R2P1D_EMULATOR_MUTATION to be none, wrong_buffer"),
    ("R2P1D_EMULATOR_MUTATION", "skip_barrier:nope", r"expected skip_barrier:vectors\|prologue"),
    ("R2P1D_EMULATOR_COUNTERS", "yes", r"R2P1D_EMULATOR_COUNTERS to be on or off, but got 'yes'"),
    ("R2P1D_EMULATOR_SAMPLE", "-2", r"R2P1D_EMULATOR_SAMPLE to be a count of CTAs >= 0, but got '-2'"),
])
def test_bad_settings_are_errors(name, value, match):
    with env_setting(name, value):
        with pytest.raises(ValueError, match=match):
            _spatial_fprop()


def test_a_mutation_needs_the_checks():
    with env_setting("R2P1D_EMULATOR_CHECKS", "off"), env_setting("R2P1D_EMULATOR_MUTATION", "row_bound"):
        with pytest.raises(ValueError, match=r"needs the checks on"):
            _spatial_fprop()


def test_misaligned_vector_loads_are_reported():
    """The stem's 3 input channels take element-wise loads; read as 16-byte chunks (the
    vector_loads switch) the addresses are misaligned, as a GPU would fault on."""
    x, w, b, st, pd, *_ = _spatial_inputs("odd-channels-stride2", torch.bfloat16)
    EMU.spatial_conv_stats(x, w, b, st, pd, 132, 1)
    with env_setting("R2P1D_EMULATOR_MUTATION", "vector_loads"):
        with pytest.raises(RuntimeError, match=r"misaligned 16-byte read at 0x"):
            EMU.spatial_conv_stats(x, w, b, st, pd, 132, 1)
