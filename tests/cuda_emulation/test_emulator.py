"""The emulation itself: correct kernels run correctly under every schedule, and each of the
deliberately broken kernels of broken_kernels.cu is reported."""

import ctypes
import os

import pytest
import torch

import emulation


def launcher(name):
    function = getattr(emulation.library(), name)
    function.restype = ctypes.c_char_p
    return function


def error_of(name, *args, stream=True):
    """Runs launcher `name` on `args` (tensors as device pointers) on the current stream (or on
    the legacy default stream with stream=False); returns its error message, or None."""
    lib = emulation.library()
    lib.cuda_emulation_current_stream.restype = ctypes.c_void_p
    converted = [ctypes.c_void_p(a.data_ptr()) if torch.is_tensor(a) else ctypes.c_int(a) for a in args]
    handle = ctypes.c_void_p(lib.cuda_emulation_current_stream() if stream else None)
    error = launcher(name)(*converted, handle)
    return error.decode() if error else None


def test_correct_reductions_agree_with_torch_under_every_schedule():
    blocks, threads = 5, 96
    x = torch.randn(blocks * threads)
    for schedule in emulation.SCHEDULES:
        out = torch.empty(2 * blocks)
        with emulation.schedule(schedule, seed=3):
            assert error_of("launch_warp_reductions", x, out, blocks, threads) is None
        sums = x.view(blocks, threads).sum(1)
        torch.testing.assert_close(out[0::2], sums)
        warp_sums = x.view(blocks, threads // 32, 32).sum(2)
        assert out[1::2].tolist() == (warp_sums > 0).sum(1).float().tolist()


def test_missing_syncthreads_gives_results_that_depend_on_the_schedule():
    blocks = 3
    x = torch.randn(blocks * 256)
    with_barrier, without = {}, {}
    for schedule in emulation.SCHEDULES:
        with emulation.schedule(schedule, seed=1):
            with_barrier[schedule] = torch.empty(blocks)
            assert error_of("launch_block_sum", x, with_barrier[schedule], blocks, 1) is None
            without[schedule] = torch.empty(blocks)
            assert error_of("launch_block_sum", x, without[schedule], blocks, 0) is None
    for out in with_barrier.values():
        torch.testing.assert_close(out, x.view(blocks, 256).sum(1))
    # Thread 0 runs first in the forward schedule and reads the poison of the others' slots.
    assert without["forward"].isnan().all()
    assert not torch.equal(without["forward"], without["reverse"])


def test_a_write_one_past_the_end_is_reported_with_the_kernel():
    out = torch.empty(100)
    error = error_of("launch_fill_one_past_the_end", out, 100)
    assert error is not None and "past the end of a 400-byte allocation" in error
    assert "fill_one_past_the_end_kernel" in error
    assert len(emulation.take_faults()) == 1
    assert (out == 1).all()


def test_a_shuffle_in_a_partial_warp_is_reported():
    out = torch.empty(64)
    assert error_of("launch_shuffle", out, 64) is None
    assert out.tolist() == [float(i ^ 1) for i in range(64)]
    error = error_of("launch_shuffle", out, 48)
    assert error is not None and "names lanes that do not exist" in error and "warp 1 has 16 lanes" in error
    assert "shuffle_kernel" in error
    assert len(emulation.take_faults()) == 1


def test_a_shuffle_naming_an_exited_lane_is_reported():
    error = error_of("launch_shuffle_after_exit", torch.empty(64))
    assert error is not None and ("which has exited" in error or "thread exited while lane" in error)
    assert len(emulation.take_faults()) == 1


def test_uninitialised_shared_memory_reads_as_nan():
    out = torch.empty(64)
    assert error_of("launch_read_half_written_tile", out) is None
    assert (out[:32] == 1).all() and out[32:].isnan().all()


@pytest.mark.parametrize("grid_x, grid_y, threads, problem", [
    (1, 70000, 32, "y <= 65535"),
    (1, 1, 1025, "at most 1024"),
    (0, 1, 32, "no blocks"),
])
def test_launches_beyond_cuda_limits_are_launch_errors(grid_x, grid_y, threads, problem):
    out = torch.empty(2048)
    error = error_of("launch_fill", out, grid_x, grid_y, threads)
    assert error is not None and "invalid configuration argument" in error and problem in error
    assert out.isnan().all(), "a failed launch ran"


def test_a_barrier_that_part_of_a_warp_never_reaches_is_a_deadlock_not_a_hang():
    error = error_of("launch_barrier_in_divergent_warp", torch.empty(64))
    assert error is not None and "deadlock" in error and "barrier_in_divergent_warp_kernel" in error
    assert len(emulation.take_faults()) == 1


def test_more_than_48_kib_of_static_shared_memory_is_reported():
    error = error_of("launch_too_much_shared", torch.empty(32))
    assert error is not None and "48 KiB of static shared memory" in error
    assert len(emulation.take_faults()) == 1


def test_a_launch_on_a_stream_other_than_the_current_one_is_an_error():
    error = error_of("launch_fill", torch.empty(32), 1, 1, 32, stream=False)
    assert error is not None and "not the current stream" in error


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores to run blocks at the same time")
def test_a_plain_add_where_an_atomic_belongs_loses_updates():
    blocks = 256
    expected = blocks * 256 * 64  # threads per block, increments per thread
    counter = torch.zeros(1, dtype=torch.int32)
    with emulation.schedule("forward", workers=2):
        assert error_of("launch_count", counter, blocks, 1) is None
        assert counter.item() == expected
        lost = False
        for _ in range(20):
            counter.zero_()
            assert error_of("launch_count", counter, blocks, 0) is None
            lost = counter.item() < expected
            if lost:
                break
    assert lost, "blocks running concurrently never lost an update of the plain +="
