"""The data layers' worker processes: the same numbers on every path, clean shutdown, no leaks."""
import gc
import os
import signal
import time

import numpy as np
import pytest
import torch

from conftest import cuda
from protocaffe.data import transform
from protocaffe.data.prefetch import Synchronous, WorkerPool, default_workers
from protocaffe.proto import caffe_pb2
from test_data import data_layer, data_net, run_batches

TRAIN_SETTINGS = "crop_size: 24 mirror: true scale: 0.25 mean_file: 'data/mean.binaryproto'"


def child_pids():
    """Live processes whose parent is this one (zombies are not live)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            pids.append(int(entry))
    return set(pids)


def fill_squares(k, out):
    out[:] = k * k
    return k


def test_pool_gives_batches_in_order_whatever_the_workers():
    for workers, depth in [(1, 1), (2, 4), (3, 2)]:
        pool = WorkerPool(fill_squares, (2, 3), np.int64, 5, workers, depth)
        got = [pool.get() for _ in range(7)]
        pool.close()
        assert [k for k, _ in got] == list(range(5, 12))
        for k, tensor in got:
            assert torch.equal(tensor, torch.full((2, 3), k * k))


def test_pool_and_synchronous_agree_and_hand_out_their_own_tensors():
    pool = WorkerPool(fill_squares, (4,), np.float32, 0, 2, 2)
    sync = Synchronous(fill_squares, (4,), np.float32, 0)
    got, expected = [pool.get() for _ in range(6)], [sync.get() for _ in range(6)]
    pool.close()
    for (k, a), (j, b) in zip(got, expected):  # two slots were refilled three times meanwhile
        assert k == j and torch.equal(a, b) and torch.equal(a, torch.full((4,), float(k * k)))


def test_batches_are_lent_without_copies_and_copied_only_when_slots_run_out():
    pool = WorkerPool(fill_squares, (1000,), np.float32, 0, 1, 1)
    in_a_slot = lambda t: any(np.shares_memory(t.numpy(), slot) for slot in pool.slots)  # noqa: E731
    held = [pool.get()[1] for _ in range(8)]  # three slots: the rest must be copies
    assert [in_a_slot(t) for t in held] == [True, True, False, False, False, False, False, False]
    for k, t in enumerate(held):
        assert torch.equal(t, torch.full((1000,), float(k * k)))
    del held, t
    for k in range(8, 30):  # once dropped, slots are lent again and again
        tensor = pool.get()[1]
        assert in_a_slot(tensor) and torch.equal(tensor, torch.full((1000,), float(k * k)))
    pool.close()


def fail_on_three(k, out):
    if k == 3:
        raise ValueError("broken record")
    out[:] = k
    return k


def test_a_worker_error_reaches_the_caller_with_its_traceback():
    pool = WorkerPool(fail_on_three, (1,), np.float32, 0, 2, 2)
    assert [pool.get()[0] for _ in range(3)] == [0, 1, 2]
    with pytest.raises(RuntimeError, match=r"(?s)data worker failed on batch 3.*ValueError: broken record"):
        pool.get()
    assert not any(p.is_alive() for p in pool.procs)


def test_a_killed_worker_is_reported_not_waited_for(golden_cwd):
    net = data_net("data/train_lmdb", batch=4, workers=2)
    net()
    os.kill(data_layer(net)._batches.procs[1].pid, signal.SIGKILL)
    with pytest.raises(RuntimeError, match="data worker 1 stopped"):
        for _ in range(10):
            net()


def test_workers_stop_with_the_net_and_repeated_nets_leak_none(golden_cwd):
    gc.collect()
    before = child_pids()
    for _ in range(4):
        net = data_net("data/train_lmdb", TRAIN_SETTINGS, caffe_pb2.TRAIN, workers=2)
        net()
        assert len(child_pids() - before) == 2
        del net
        gc.collect()
        assert child_pids() == before
    net = data_net("data/train_lmdb", workers=2)
    net()
    data_layer(net).close()
    assert child_pids() == before
    net()  # starts again where it stood
    assert len(child_pids() - before) == 2


def test_workers_exit_when_their_parent_dies(golden_cwd):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a parent with a data layer, killed without any cleanup
        try:
            os.close(read)
            net = data_net("data/train_lmdb", workers=1)
            net()
            os.write(write, str(data_layer(net)._batches.procs[0].pid).encode())
        finally:
            os.kill(os.getpid(), signal.SIGKILL)
    os.close(write)
    worker = int(os.read(read, 100))
    os.waitpid(pid, 0)
    for _ in range(40):
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    pytest.fail("the orphaned worker is still running")


@pytest.mark.parametrize("settings", [TRAIN_SETTINGS, "mirror: true mean_value: 3 mean_value: 4 mean_value: 5"])
def test_device_arithmetic_equals_the_workers_bit_for_bit(golden_cwd, tmp_path, settings):
    from protocaffe.cli import main
    assert main(["compute_pca", "data/train_lmdb", str(tmp_path / "pca.binaryproto")]) == 0
    settings += f' pca_file: "{tmp_path / "pca.binaryproto"}"'
    on_workers = run_batches(data_net("data/train_lmdb", settings, caffe_pb2.TRAIN, batch=16), 3)[0]
    on_device = run_batches(data_net("data/train_lmdb", settings, caffe_pb2.TRAIN, batch=16,
                                     device_transform=True), 3)[0]
    np.testing.assert_array_equal(on_workers, on_device)


def test_apply_gathers_mirrored_mean_windows():
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (3, 2, 4, 4), dtype=np.uint8)
    mean = rng.normal(size=(2, 6, 7)).astype(np.float32)
    draws = transform.Draws(np.array([[0, 0], [2, 3], [1, 1]]), np.array([False, True, True]))
    out = transform.apply(torch.from_numpy(batch), torch.from_numpy(mean), np.float32(0.5), draws).numpy()
    for i, ((y, x), flip) in enumerate(zip(draws.offsets, draws.flips)):
        window = mean[:, y:y + 4, x:x + 4]
        expected = (batch[i].astype(np.float32) - (window[..., ::-1] if flip else window)) * np.float32(0.5)
        np.testing.assert_array_equal(out[i], expected)


def test_default_workers_follow_the_environment(monkeypatch):
    monkeypatch.setenv("PROTOCAFFE_DATA_WORKERS", "3")
    assert default_workers() == 3
    monkeypatch.setenv("PROTOCAFFE_DATA_WORKERS", "0")
    assert default_workers() == 0
    monkeypatch.delenv("PROTOCAFFE_DATA_WORKERS")
    assert 1 <= default_workers() <= 4


@cuda
@pytest.mark.cuda
def test_cuda_batches_equal_cpu_batches(golden_cwd):
    cpu = run_batches(data_net("data/train_lmdb", TRAIN_SETTINGS, caffe_pb2.TRAIN, batch=16), 3)[0]
    net = data_net("data/train_lmdb", TRAIN_SETTINGS, caffe_pb2.TRAIN, batch=16).to("cuda")
    out = [net() for _ in range(3)]
    assert all(o["data"].is_cuda for o in out)
    np.testing.assert_array_equal(np.stack([o["data"].cpu().numpy() for o in out]), cpu)


def test_the_database_closes_with_the_last_net_reading_it(golden_cwd):
    import lmdb
    net = data_net("data/train_lmdb", workers=1)
    net()
    del net
    gc.collect()
    lmdb.open("data/train_lmdb", readonly=True, lock=False).close()  # LMDB refuses a second open


OPENCV_THEN_WORKERS = """
import sys, time
import cv2, numpy as np
from protocaffe.data.prefetch import WorkerPool
image = np.zeros((1500, 1500, 3), np.uint8)
for _ in range(3):
    cv2.resize(image, (1000, 1000), interpolation=cv2.INTER_CUBIC)  # OpenCV's threads start
time.sleep(1.5)  # and fall asleep
def fill(k, out):
    out[:] = cv2.resize(image, (1000, 1000)).mean() + k
    return k
pool = WorkerPool(fill, (2,), np.float32, 0, 1, 1)
print(pool.get()[0], pool.get()[0])
pool.close()
"""


def test_workers_start_after_opencv_threads_fell_asleep():
    """A worker forked while OpenCV's thread pool sleeps in the parent inherits the pool's locks
    without its threads; it must still run (it hung in cv2.setNumThreads before the pool was let go)."""
    import subprocess
    import sys
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", OPENCV_THEN_WORKERS], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 0 and done.stdout.split() == ["0", "1"], done.stderr
