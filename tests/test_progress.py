"""Progress suits its stream: bars on a terminal, a few plain lines on a pipe or file, never '\\r' frames."""

from __future__ import annotations

import io
import re

from menet.cli import main
from menet.progress import LineProgress, no_progress, stream_progress


class Clock:
    """A fake clock: each call advances it by ``step`` seconds."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_file_gets_a_bounded_number_of_plain_lines():
    stream = io.StringIO()
    progress = LineProgress(stream, percent=5, seconds=2, clock=Clock(1.0))
    assert list(progress(range(1000), desc="epoch 1/3")) == list(range(1000))  # items pass through, in order
    text = stream.getvalue()
    lines = text.splitlines()
    assert "\r" not in text
    assert 15 <= len(lines) <= 21, lines  # one per 5% (20) and a closing one at most
    assert lines[-1].startswith("epoch 1/3: 1000/1000 (100%)")
    done = [int(re.match(r"epoch 1/3: (\d+)/1000 \(\d+%\), \d+ s$", line).group(1)) for line in lines]
    assert done == sorted(done) and all(b - a >= 50 for a, b in zip(done, done[1:]))


def test_lines_are_also_spaced_in_time():
    stream = io.StringIO()  # a fast loop: 1000 items in 1 s of fake time, lines at least 2 s apart
    list(LineProgress(stream, percent=1, seconds=2, clock=Clock(0.001))(range(1000), desc="x"))
    assert stream.getvalue() == ""  # under 2 s in all: not even a closing line


def test_unknown_length_prints_at_most_one_line_per_interval():
    stream = io.StringIO()
    list(LineProgress(stream, interval=30, clock=Clock(1.0))(iter(range(300)), desc="build"))
    lines = stream.getvalue().splitlines()
    assert 9 <= len(lines) <= 11 and lines[0] == "build: 30, 30 s", lines


def test_stream_choice_terminal_pipe_quiet():
    assert stream_progress(io.StringIO(), quiet=True) is no_progress
    assert isinstance(stream_progress(io.StringIO()), LineProgress)
    terminal = Terminal()
    list(stream_progress(terminal)(range(50), desc="bar", total=50))
    assert "\r" in terminal.getvalue() and "bar" in terminal.getvalue()  # tqdm's bar on a terminal


def test_train_on_a_pipe_writes_no_carriage_returns(tmp_path, capsys):
    args = ["train", "--runs", str(tmp_path), "--set", "train_limit=64", "--set", "batch_size=8", "--set", "epochs=1",
            "--set", "eval_every=1", "--set", "test_limit=64"]  # not --quiet: progress goes to (captured) stderr
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and len(err.splitlines()) <= 44, err  # at most ~21 lines per loop (train, test)
