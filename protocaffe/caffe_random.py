"""Caffe's random numbers, value for value: its mt19937 and the Boost.Random distributions it uses.

Caffe's CPU code draws everything from ``boost::mt19937`` streams: the global one
(``Caffe::set_random_seed(random_seed)``; fillers, Dropout, the seeds of the data
layers' own streams) and one per data transformer (crops and mirrors). This module
replays them, in float32 arithmetic as Caffe's float build computes them:

- :class:`Stream`: the raw 32-bit outputs of ``mt19937(seed)``, addressed by position;
- :func:`uniform`: ``caffe_rng_uniform`` (``boost::uniform_real<float>(a, nextafter(b))``);
- :func:`gaussian`: ``caffe_rng_gaussian`` (``boost::normal_distribution<float>``, Boost
  1.74's ziggurat with its exponential tail; a variable number of draws per value);
- :func:`bernoulli`: ``caffe_rng_bernoulli`` (``boost::bernoulli_distribution``);
- :class:`CRand`: the C library's ``rand()``, which ``std::random_shuffle`` draws from.

The ziggurat tables are computed here from their definition (128 normal and 256
exponential layers of equal area), to 40 digits with mpmath, then rounded to double:
the tables Boost's headers spell out. Every function was checked against a C++ program
built with Boost 1.74 and against real ``caffe train`` logs (tests/test_caffe_random.py).
"""
import ctypes
import ctypes.util
import functools

import numpy as np

F = np.float32
TWO_TO_MINUS_24 = F(2.0 ** -24)
TWO_TO_MINUS_32 = F(2.0 ** -32)
_EXPF = None


def _expf(x):
    """The C library's single-precision exp, as ``std::exp(float)`` calls it (numpy's may
    differ in the last place, and the ziggurat's accept test compares against it)."""
    global _EXPF
    if _EXPF is None:
        libm = ctypes.CDLL(ctypes.util.find_library("m"))
        libm.expf.restype, libm.expf.argtypes = ctypes.c_float, [ctypes.c_float]
        _EXPF = libm.expf
    return F(_EXPF(float(x)))


def mt19937(seed):
    """The Mersenne twister seeded as ``std::mt19937(seed)`` / ``boost::mt19937(seed)``
    (numpy's legacy seeding is the same init_genrand); ``.random_raw(n)`` gives its outputs."""
    generator = np.random.MT19937(0)
    generator._legacy_seeding(int(seed) & 0xFFFFFFFF)
    return generator


class Stream:
    """The outputs of ``mt19937(seed)``: ``raw(start, count)`` gives outputs start ..
    start + count - 1 (uint64 array), ``next(count)`` the ones after the last read.
    Reading forward costs only the outputs skipped; reading backward starts again.
    Outputs looked at with ``peek`` are kept until read or skipped."""

    def __init__(self, seed):
        self.seed = seed
        self.generator, self.position = mt19937(seed), 0
        self._ahead = np.empty(0, np.uint64)  # outputs drawn from the generator, not yet read
        #: set when a layer whose draws are not replayed (a recurrent net, a Python layer, ...)
        #: took values from Caffe's stream: what follows can no longer be Caffe's
        self.lost = False

    def raw(self, start, count):
        if start < self.position:
            self.generator, self.position, self._ahead = mt19937(self.seed), 0, np.empty(0, np.uint64)
        skip = start - self.position
        ahead = min(skip, len(self._ahead))
        self._ahead, skip = self._ahead[ahead:], skip - ahead
        while skip:
            step = min(skip, 1 << 24)
            self.generator.random_raw(step)
            skip -= step
        self.position = start + count
        if count <= len(self._ahead):
            values, self._ahead = self._ahead[:count], self._ahead[count:]
            return values
        values = np.concatenate([self._ahead, self.generator.random_raw(count - len(self._ahead))])
        self._ahead = self._ahead[:0]
        return values

    def next(self, count=1):
        return self.raw(self.position, count)

    def peek(self, count):
        """The next ``count`` outputs, without moving on."""
        if len(self._ahead) < count:
            self._ahead = np.concatenate([self._ahead, self.generator.random_raw(count - len(self._ahead))])
        return self._ahead[:count]


# ---- uniform and bernoulli ---------------------------------------------------------------

def uniform(stream, n, low, high):
    """``caffe_rng_uniform(n, low, high)``: float32 values in [low, high]. Boost's
    uniform_real over [low, nextafter(high)) turns each output into one value and skips an
    output whose value rounds up to that bound, so the values are the accepted ones in order."""
    parts, missing = [], n
    while missing:
        values, accepted = uniform_values(stream.next(missing), low, high)
        parts.append(values[accepted])
        missing -= int(accepted.sum())
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def uniform_values(raw, low, high):
    """The values Boost's uniform_real over [low, nextafter(high)) makes of the outputs ``raw``
    (``low`` and ``high`` may be arrays, one bound per output), and whether each is accepted
    (an output whose value rounds up to the open bound is skipped and the next one taken)."""
    low = np.asarray(low, np.float32)
    top = np.nextafter(np.asarray(high, np.float32), F(np.inf))
    span, divisor = (top - low).astype(np.float32), F(F(4294967295.0) + F(1.0))
    values = (np.asarray(raw).astype(np.float32) / divisor * span + low).astype(np.float32)
    return values, values < top


def bernoulli(stream, n, p, dtype=np.float64):
    """``caffe_rng_bernoulli(n, p)``: output u gives ``u <= p * (2^32 - 1)``, computed in
    ``dtype``: double for Dropout (which passes ``1. - ratio``), float for the sparse
    gaussian filler (which passes a float probability)."""
    if p == 0:
        return np.zeros(n, bool)
    if dtype == np.float32:
        return stream.next(n).astype(np.float32) <= F(F(p) * F(4294967295.0))
    return stream.next(n).astype(np.float64) <= p * 4294967295.0


# ---- the ziggurats -------------------------------------------------------------------------

@functools.cache
def ziggurat(kind):
    """(x, y) tables of Boost's ziggurat: ``normal`` (f = exp(-x^2 / 2), 128 layers) or
    ``exponential`` (f = exp(-x), 256 layers). x[0] = v / f(r), x[1] = r, each layer of
    area v, y[i] = f(x[i]), x[n] = 0, y[n] = 1; r solves the last layer's closure."""
    import mpmath as mp
    mp.mp.dps = 40
    if kind == "normal":
        layers, guess = 128, mp.mpf("3.44261985589665")
        f, inverse = (lambda x: mp.exp(-x * x / 2)), (lambda y: mp.sqrt(-2 * mp.log(y)))
        tail = lambda r: mp.sqrt(mp.pi / 2) * mp.erfc(r / mp.sqrt(2))  # noqa: E731
    else:
        layers, guess = 256, mp.mpf("7.69711747013105")
        f, inverse, tail = (lambda x: mp.exp(-x)), (lambda y: -mp.log(y)), (lambda r: mp.exp(-r))

    def build(r):
        v = r * f(r) + tail(r)
        x, y = [v / f(r), r], [mp.mpf(0), f(r)]
        for i in range(1, layers - 1):
            y.append(y[i] + v / x[i])
            x.append(inverse(y[-1]))
        return x, y, v

    def closure(r):
        x, y, v = build(r)
        return y[-1] + v / x[-1] - 1
    x, y, _ = build(mp.findroot(closure, guess))
    return np.array([float(v) for v in x + [0]]), np.array([float(v) for v in y + [1]])


def _uniform_01(stream):
    """Boost's uniform_01<float>: one output times 2^-32, redrawn while it rounds to 1."""
    while True:
        result = F(F(int(stream.next()[0])) * TWO_TO_MINUS_32)
        if result < F(1):
            return result


def _pair(u):
    """generate_int_float_pair<float, 8> from one 32-bit output: (the float from its top 24
    bits, the 8-bit bucket from its low bits)."""
    return (u >> 8).astype(np.float32) * TWO_TO_MINUS_24, (u & 0xFF).astype(np.int64)


def _exponential(stream):
    """One unit exponential (Boost's ziggurat), drawing as it goes."""
    x_table, y_table = ziggurat("exponential")
    shift = F(0)
    while True:
        r, i = _pair(stream.next())
        r, i = r[0], int(i[0])
        x = F(r * F(x_table[i]))
        if x < F(x_table[i + 1]):
            return F(shift + x)
        if i == 0:
            shift = F(shift + F(x_table[1]))
            continue
        y01 = _uniform_01(stream)
        y = F(F(y_table[i]) + F(y01 * F(y_table[i + 1] - y_table[i])))
        above_upper = F(F(F(x_table[i] - x_table[i + 1]) * y01) - F(F(x_table[i]) - x))
        above_lower = F(y - F(F(y_table[i + 1]) + F(F(F(x_table[i + 1]) - x) * F(y_table[i + 1]))))
        if above_upper < 0 and (above_lower < 0 or y < _expf(F(-x))):
            return F(x + shift)


def _normal_tail(stream):
    x_table, _ = ziggurat("normal")
    start = F(x_table[1])
    while True:
        x = F(_exponential(stream) / start)
        y = _exponential(stream)
        if F(F(2) * y) > F(x * x):
            return F(x + start)


def _normal_slow(stream, r, i):
    """One unit normal whose first pair (r, i) left the fast path; draws what it needs."""
    x_table, _ = ziggurat("normal")
    while True:
        sign = F((i & 1) * 2 - 1)
        i >>= 1
        x = F(r * F(x_table[i]))
        if x < x_table[i + 1]:
            return F(x * sign)
        if i == 0:
            return F(_normal_tail(stream) * sign)
        if _normal_wedge(np.array([i]), np.array([x], np.float32), np.array([_uniform_01(stream)], np.float32))[0]:
            return F(x * sign)
        r, i = _pair(stream.next())
        r, i = r[0], int(i[0])


class _Ahead:
    """Outputs already peeked at, read one by one from index ``at``; IndexError past the end."""

    def __init__(self, values, at):
        self.values, self.at = values, at

    def next(self, count=1):
        if self.at + count > len(self.values):
            raise IndexError
        self.at += count
        return self.values[self.at - count:self.at]


def _accepted(u, events, x, layer):
    """Whether each slow (non-tail) pair at ``events`` is accepted, its uniform being the
    output after it."""
    y01 = (u[events + 1].astype(np.float32) * TWO_TO_MINUS_32).astype(np.float32)
    return _normal_wedge(layer[events], x[events], y01)


def _normal_wedge(i, x, y01):
    """The normal ziggurat's wedge test for layers ``i`` (not 0), values ``x`` and uniforms
    ``y01`` (arrays), in float32 as Boost computes it: which are accepted."""
    x_table, y_table = ziggurat("normal")
    xi, xi1, yi, yi1 = (x_table[i].astype(np.float32), x_table[i + 1], y_table[i].astype(np.float32),
                        y_table[i + 1])
    y = (yi + y01 * (yi1 - y_table[i]).astype(np.float32)).astype(np.float32)
    slope = (((xi - x) * yi).astype(np.float32) * xi).astype(np.float32)
    near = ((x_table[i] - xi1).astype(np.float32) * y01 - (xi - x)).astype(np.float32)
    far = (y - (yi + slope)).astype(np.float32)
    convex = x_table[i] >= 1
    above_upper, above_lower = np.where(convex, near, far), np.where(convex, far, near)
    density = np.exp(-((x * x).astype(np.float32) / np.float32(2))).astype(np.float32)
    close = np.abs(y - density) <= 4 * np.spacing(density)  # numpy's exp may differ from expf in the last place
    for k in np.flatnonzero(close & (above_upper < 0) & ~(above_lower < 0)):
        density[k] = _expf(F(-F(F(x[k] * x[k]) / F(2))))
    return (above_upper < 0) & ((above_lower < 0) | (y < density))


def gaussian(stream, n, mean, sigma):
    """``caffe_rng_gaussian(n, mean, sigma)``: float32 ``unit * sigma + mean`` per value.

    Boost's ziggurat turns one output into a value on its fast path; a pair off it takes
    the next output as its uniform and gives a value or nothing (then the output after
    starts afresh); the rare tail draws on, on its own. Outputs are read in blocks and the
    fast path, the pairs' starts and the wedge tests computed for a block at once."""
    x_table, _ = ziggurat("normal")
    x_low = x_table.astype(np.float32)
    parts, have = [], 0
    while have < n:
        start = stream.position
        u = stream.peek(int(min((n - have) * 1.05, 1 << 22)) + 64)
        r, bucket = _pair(u)
        layer = bucket >> 1
        x = (r * x_low[layer]).astype(np.float32)
        values = x * ((bucket & 1) * 2 - 1).astype(np.float32)
        starts = np.ones(len(u), bool)  # outputs that begin a value (not taken by one before)
        ends = np.arange(1, len(u) + 1)   # for each start, the output after what its value took
        events, cut = [], len(u) - 1
        for q in np.flatnonzero(~(x < x_table[layer + 1])).tolist():
            if q >= cut:
                break
            if not starts[q]:
                continue
            if layer[q] and u[q + 1] < 0xFFFFFF80:  # a wedge test: takes the next output as its uniform
                starts[q + 1] = False
                ends[q] = q + 2
                events.append(q)
                continue
            ahead = _Ahead(u[:cut], q + 1)  # the tail, or a uniform redrawn: finished one by one
            try:
                values[q] = _normal_slow(ahead, r[q], int(bucket[q]))
            except IndexError:
                cut = q
                break
            starts[q + 1:ahead.at] = False
            ends[q] = ahead.at
        events = np.array(events, np.int64)
        emits = starts.copy()
        emits[cut:] = False
        if len(events):
            emits[events] = _accepted(u, events, x, layer)
        positions = np.flatnonzero(emits)[:n - have]
        parts.append(values[positions])
        have += len(positions)
        if have == n:
            stream.raw(start + int(ends[positions[-1]]), 0)
            break
        stream.raw(start + cut, 0)
        if cut < len(u) - 1:  # a value the block could not finish: drawn live
            r0, i0 = _pair(stream.next())
            parts.append(np.array([_normal_slow(stream, r0[0], int(i0[0]))], np.float32))
            have += 1
    out = np.concatenate(parts) if len(parts) > 1 else parts[0]
    return (out * F(sigma) + F(mean)).astype(np.float32)


# ---- caffe::shuffle (ImageData's shuffle) ---------------------------------------------------

def shuffle(values, stream):
    """``caffe::shuffle(begin, end, gen)`` in place: for i = n - 1 down to 1, swap item i with
    item ``boost::uniform_int(0, i)``. Boost's uniform_int over i + 1 values from 32-bit
    outputs divides each output by a bucket size and redraws a quotient above i; the
    quotients are computed for all i at once and only a redraw is finished one by one."""
    n = len(values)
    if n < 2:
        return values
    ranges = np.arange(n - 1, 0, -1, dtype=np.uint64)  # i for each step, in draw order
    brange = np.uint64(0xFFFFFFFF)
    buckets = brange // (ranges + 1)
    buckets += (brange % (ranges + 1) == ranges)  # Boost's exact bucket when brange is the max
    picks = np.empty(n - 1, np.int64)
    done = 0
    while done < n - 1:
        start = stream.position
        raw = stream.peek(n - 1 - done)
        quotients = raw // buckets[done:]
        bad = np.flatnonzero(quotients > ranges[done:])
        stop = int(bad[0]) if len(bad) else len(raw)
        picks[done:done + stop] = quotients[:stop]
        stream.raw(start + stop, 0)
        done += stop
        if done < n - 1:  # a redraw for this step: draw until the quotient fits
            while True:
                quotient = int(stream.next()[0]) // int(buckets[done])
                if quotient <= int(ranges[done]):
                    picks[done] = quotient
                    break
            done += 1
    for i, j in zip(range(n - 1, 0, -1), picks.tolist()):
        values[i], values[j] = values[j], values[i]
    return values


# ---- the C library's rand() (std::random_shuffle) -------------------------------------------

class CRand:
    """The C library's ``rand()`` as glibc computes it (its TYPE_3 additive generator), from
    seed 1: the stream Caffe's ``std::random_shuffle`` draws from (libstdc++'s shuffle calls
    ``rand()``; Caffe never calls ``srand``), so Caffe's HDF5 shuffles are the same in every
    run, whatever the solver's random_seed, and so are protocaffe's. (So are the SSD fork's
    channel reorderings in distort_param.)"""

    def __init__(self, seed=1):
        state = [seed or 1]
        for _ in range(30):
            hi, lo = divmod(state[-1], 127773)
            word = 16807 * lo - 2836 * hi
            state.append(word + 2147483647 if word < 0 else word)
        self.state = state + state[:3]
        for _ in range(310):
            self.rand()

    def rand(self):
        state = self.state
        value = (state[-31] + state[-3]) & 0xFFFFFFFF
        state.append(value)
        if len(state) > 64:
            del state[:-34]
        return value >> 1

    def shuffle(self, values):
        """libstdc++'s ``std::random_shuffle(first, last)``, in place."""
        for i in range(1, len(values)):
            j = self.rand() % (i + 1)
            values[i], values[j] = values[j], values[i]
