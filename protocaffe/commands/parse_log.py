"""``protocaffe parse_log LOGFILE OUTPUT_DIR``: Caffe's tools/extra/parse_log.py.

Reads a Caffe (or protocaffe) training log and writes two CSV tables into
OUTPUT_DIR, ``LOGFILE.train`` and ``LOGFILE.test``: one row per iteration that
printed net outputs, with columns NumIters, Seconds (since the ``Solving`` line),
LearningRate (the last ``lr =`` printed before the row) and one column per net
output. Rows, columns, number formats and the CSV dialect are parse_log.py's.
"""
import argparse
import csv
import datetime
import math
import os
import re
from collections import OrderedDict

from protocaffe.errors import CaffeError

ITERATION = re.compile(r"Iteration (\d+)")
TRAIN_OUTPUT = re.compile(r"Train net output #(\d+): (\S+) = ([\.\deE+-]+)")
TEST_OUTPUT = re.compile(r"Test net output #(\d+): (\S+) = ([\.\deE+-]+)")
LEARNING_RATE = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")


def line_time(line, year):
    """The glog timestamp of a line (``I0210 13:39:22.381027 ...``) as a datetime in ``year``."""
    fields = line.strip().split()
    stamp, fraction = fields[1].rsplit(".", 1)
    hour, minute, second = (int(x) for x in stamp.split(":"))
    return datetime.datetime(year, int(fields[0][1:3]), int(fields[0][3:]), hour, minute, second,
                             int(fraction))


def _start_time(lines, year):
    for line in lines:
        if "Solving" in line:
            return line_time(line, year)
    return None


class _Table:
    """Rows of one kind (train or test), assembled as parse_log.py assembles them: a row is
    kept once it has as many columns as the first row, or when a new iteration starts."""

    def __init__(self, regex):
        self.regex, self.rows, self.row = regex, [], None

    def feed(self, line, iteration, seconds, rate):
        match = self.regex.search(line)
        if match:
            if self.row is None or self.row["NumIters"] != iteration:
                if self.row is not None:
                    self.rows.append(self.row)
                self.row = OrderedDict([("NumIters", iteration), ("Seconds", seconds), ("LearningRate", rate)])
            self.row[match.group(2)] = float(match.group(3))
        if self.row is not None and self.rows and len(self.row) == len(self.rows[0]):
            self.rows.append(self.row)
            self.row = None

    def finish(self):
        """The learning rate is printed after the first rows: they take the second row's."""
        if len(self.rows) > 1:
            self.rows[0]["LearningRate"] = self.rows[1]["LearningRate"]
        return self.rows


def parse_log(path):
    """(train rows, test rows), each a list of OrderedDicts."""
    try:
        year = datetime.datetime.fromtimestamp(os.path.getctime(path)).year
        with open(path, encoding="utf-8") as f:
            lines = iter(f.read().splitlines())
    except OSError as e:
        raise CaffeError(f"{path}: cannot read log ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise CaffeError(f"{path}: not a text log (byte {e.start} is not UTF-8)") from None
    start = _start_time(lines, year)
    if start is None:
        raise CaffeError(f"{path}: no 'Solving' line, so this is not a training log")
    train, test = _Table(TRAIN_OUTPUT), _Table(TEST_OUTPUT)
    iteration, rate, last = -1, math.nan, start
    for line in lines:
        match = ITERATION.search(line)
        if match:
            iteration = float(match.group(1))
        if iteration == -1:
            continue
        try:
            when = line_time(line, year)
        except (ValueError, IndexError):
            continue  # not a glog line (e.g. a solver dump when resuming)
        if when.month < last.month:  # the log ran into a new year
            year += 1
            when = line_time(line, year)
        last = when
        seconds = (when - start).total_seconds()
        match = LEARNING_RATE.search(line)
        if match:
            rate = float(match.group(1))
        train.feed(line, iteration, seconds, rate)
        test.feed(line, iteration, seconds, rate)
    return train.finish(), test.finish()


def write_csv(path, rows, delimiter=",", verbose=False):
    """One table as CSV (excel dialect, header from the first row); nothing when there are no rows."""
    if not rows:
        if verbose:
            print(f"Not writing {path}; no lines to write")
        return
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), dialect=csv.excel, delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    if verbose:
        print(f"Wrote {path}")


def save_csv_files(log_path, output_dir, train, test, delimiter=",", verbose=False):
    """Write LOGNAME.train and LOGNAME.test into ``output_dir``."""
    if not os.path.isdir(output_dir):
        raise CaffeError(f"{output_dir}: no such folder for the CSV files")
    base = os.path.join(output_dir, os.path.basename(log_path))
    write_csv(base + ".train", train, delimiter, verbose)
    write_csv(base + ".test", test, delimiter, verbose)


def run(argv):
    p = argparse.ArgumentParser(prog="protocaffe parse_log", description=(
        "Parse a Caffe training log into two CSV files containing training and testing information"))
    p.add_argument("logfile_path", help="Path to log file")
    p.add_argument("output_dir", help="Directory in which to place output CSV files")
    p.add_argument("--verbose", action="store_true", help="Print some extra info (e.g., output filenames) (default: off)")
    p.add_argument("--delimiter", default=",", help="Column delimiter in output files (default: '%(default)s')")
    args = p.parse_args(argv)
    train, test = parse_log(args.logfile_path)
    save_csv_files(args.logfile_path, args.output_dir, train, test, args.delimiter, args.verbose)
    return 0
