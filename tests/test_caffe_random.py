"""protocaffe.caffe_random against Boost 1.74, the library Caffe 1.0 draws with.

The expected digests are of the values a C++ program built against Boost 1.74's headers
wrote (boost::mt19937(7); normal_distribution<float>(0.5, 2) x 1,000,000, then
uniform_real<float>(-0.25, nextafter(0.75)) x 100,000, bernoulli_distribution<double>(0.3)
and <float>(0.25) x 100,000 each, through variate_generator, as Caffe's caffe_rng_* do),
with the engine's next output after the gaussians and after the rest.
"""
import hashlib

import numpy as np

from protocaffe import caffe_random


def digest(values):
    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()


def test_distributions_are_boosts_value_for_value():
    stream = caffe_random.Stream(7)
    normal = caffe_random.gaussian(stream, 1_000_000, 0.5, 2)
    assert normal.dtype == np.float32
    np.testing.assert_allclose(normal[:3], [0.6864608, 0.01717466, 4.4464045], rtol=1e-6)
    assert digest(normal) == "0d1e625d969e62a94c74ec6be55a8e0b8d21b887198b686ff40502c957b2e36f"
    assert int(stream.next()[0]) == 2138471077  # the ziggurat took as many outputs as Boost's
    uniform = caffe_random.uniform(stream, 100_000, -0.25, 0.75)
    assert digest(uniform) == "90459f52cebb4ba1a8168da5c61b2b036db2ef51c98361a4a61a4b0c0baa26cb"
    double = caffe_random.bernoulli(stream, 100_000, 0.3)
    assert digest(double) == "ad45d9f0d6b42384c8990c41eb0207e248d0a0337bd12ae4892492471f9d514d"
    single = caffe_random.bernoulli(stream, 100_000, 0.25, np.float32)
    assert digest(single) == "df6b08a93302ffd4705874f5c4381f482fc1f08dca233cc84610a1b631b27ca4"
    assert int(stream.next()[0]) == 1051536989


def test_the_normal_is_standard():
    values = caffe_random.gaussian(caffe_random.Stream(3), 200_000, 0, 1).astype(np.float64)
    assert abs(values.mean()) < 0.01 and abs(values.std() - 1) < 0.01
    assert (np.abs(values) > 3.44262).mean() > 0  # the tail beyond the ziggurat's base is reached


def test_ziggurat_tables_close_their_layers():
    for kind, layers in (("normal", 128), ("exponential", 256)):
        x, y = caffe_random.ziggurat(kind)
        assert len(x) == len(y) == layers + 1 and x[-1] == 0 and y[-1] == 1
        assert np.all(np.diff(x[1:]) < 0) and np.all(np.diff(y[1:]) > 0)


def test_stream_reads_by_position():
    stream = caffe_random.Stream(7)
    first = stream.raw(0, 6)
    assert int(first[0]) == 327741615  # std::mt19937(7)'s first output
    assert np.array_equal(stream.peek(2), caffe_random.Stream(7).raw(6, 2)) and stream.position == 6
    assert np.array_equal(stream.raw(2, 3), first[2:5])


def test_shuffle_is_caffes_with_boosts_uniform_int():
    """caffe::shuffle (include/caffe/util/rng.hpp) on 0..n-1 with boost::mt19937, from a C++
    program built with Boost 1.74: n 10 (seed 5, once) and n 1000 (seed 9, three times)."""
    stream = caffe_random.Stream(5)
    assert caffe_random.shuffle(list(range(10)), stream) == [4, 8, 9, 3, 7, 1, 5, 6, 0, 2]
    assert int(stream.next()[0]) == 385778404
    stream, values = caffe_random.Stream(9), list(range(1000))
    for _ in range(3):
        values = caffe_random.shuffle(values, stream)
    assert digest(np.array(values, np.int64)) == "62edc30b4833a95cdec2f80b34af197c8bbd44b81cebca1a5bda23b204545e8d"
    assert int(stream.next()[0]) == 3426701255
