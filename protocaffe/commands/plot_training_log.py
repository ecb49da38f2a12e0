"""``protocaffe plot_training_log CHART OUT.png LOG.log [LOG.log ...]``: Caffe's
tools/extra/plot_training_log.py.example, drawn with matplotlib (Agg) into a PNG.

Chart types, as Caffe numbers them (y against x):

    0: Test accuracy  vs. Iters          4: Train learning rate  vs. Iters
    1: Test accuracy  vs. Seconds        5: Train learning rate  vs. Seconds
    2: Test loss  vs. Iters              6: Train loss  vs. Iters
    3: Test loss  vs. Seconds            7: Train loss  vs. Seconds

As in Caffe's parse_log.sh, "Test accuracy" is test output #0 and "Test loss" output #1;
"Train loss" is the (smoothed) loss of the ``Iteration N ..., loss = X`` lines and the
learning rate that of the ``lr =`` lines. Each log is one line, labelled by its file name.
"""
import os
import re

from protocaffe.commands.parse_log import line_time
from protocaffe.errors import CaffeError

SEPARATOR = "  vs. "
X_FIELDS = ("Iters", "Seconds")
Y_FIELDS = ("Test accuracy", "Test loss", "Train learning rate", "Train loss")
CHART_TYPES = [y + SEPARATOR + x for y in Y_FIELDS for x in X_FIELDS]
LOG_SUFFIX = ".log"

_TESTING = re.compile(r"Iteration (\d+), Testing net")
_TEST_OUTPUT = re.compile(r"Test net output #([01]): \S+ = ([\.\deE+-]+)")
_TRAIN_LOSS = re.compile(r"Iteration (\d+)\b.*, loss = ([\.\deE+-]+)")
_RATE = re.compile(r"Iteration (\d+), lr = ([\.\deE+-]+)")


def read_series(path, y_field):
    """(xs by Iters, xs by Seconds, ys) for one y field of one log."""
    with open(path) as f:
        lines = f.read().splitlines()
    year = 2000  # a leap year: only differences of timestamps are used
    solving = next((line for line in lines if "] Solving " in line), None)
    if solving is None:
        raise CaffeError(f"{path}: no 'Solving' line, so this is not a training log")
    start = line_time(solving, year)
    iters, seconds, ys = [], [], []
    current = None
    for line in lines:
        if y_field.startswith("Test"):
            match = _TESTING.search(line)
            if match:
                current = (int(match.group(1)), (line_time(line, year) - start).total_seconds())
            match = _TEST_OUTPUT.search(line)
            if match and current and int(match.group(1)) == Y_FIELDS.index(y_field):
                iters.append(current[0])
                seconds.append(current[1])
                ys.append(float(match.group(2)))
            continue
        match = (_RATE if y_field == "Train learning rate" else _TRAIN_LOSS).search(line)
        if match:
            iters.append(int(match.group(1)))
            seconds.append((line_time(line, year) - start).total_seconds())
            ys.append(float(match.group(2)))
    return iters, seconds, ys


def plot_chart(chart_type, png_path, log_paths):
    """Draw chart ``chart_type`` (0-7) of the logs into ``png_path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y_field, x_field = CHART_TYPES[chart_type].split(SEPARATOR)
    fig, ax = plt.subplots()
    markers = "osd^v<>p*h"
    for k, path in enumerate(log_paths):
        iters, seconds, ys = read_series(path, y_field)
        label = os.path.basename(path)[:-len(LOG_SUFFIX)]
        ax.plot(iters if x_field == "Iters" else seconds, ys, label=label,
                marker=markers[k % len(markers)], linewidth=0.75)
    loc = "upper right" if ("loss" in y_field or "learning rate" in y_field) else "lower right"
    ax.legend(loc=loc, ncol=1)
    ax.set_title(CHART_TYPES[chart_type])
    ax.set_xlabel(x_field)
    ax.set_ylabel(y_field)
    fig.savefig(png_path)
    plt.close(fig)


def usage():
    lines = [f"usage: protocaffe plot_training_log chart_type[0-{len(CHART_TYPES) - 1}] "
             f"/where/to/save.png /path/to/first{LOG_SUFFIX} ...",
             f"Log file names must end in {LOG_SUFFIX}; several logs give several lines.",
             "Supported chart types:"]
    return "\n".join(lines + [f"    {i}: {name}" for i, name in enumerate(CHART_TYPES)])


def run(argv):
    if len(argv) < 3 or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    try:
        chart_type = int(argv[0])
    except ValueError:
        chart_type = -1
    if not 0 <= chart_type < len(CHART_TYPES):
        raise CaffeError(f"chart type must be 0 to {len(CHART_TYPES) - 1}, found '{argv[0]}'")
    png_path, logs = argv[1], argv[2:]
    if not png_path.endswith(".png"):
        raise CaffeError(f"{png_path}: the output path must end in .png")
    for path in logs:
        if not os.path.exists(path):
            raise CaffeError(f"{path}: no such log file")
        if not path.endswith(LOG_SUFFIX):
            raise CaffeError(f"{path}: log file names must end in {LOG_SUFFIX}")
    plot_chart(chart_type, png_path, logs)
    print(f"Wrote {png_path}")
    return 0
