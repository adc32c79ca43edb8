"""The gpu loader's made-ahead batches (``alexnet.data.ahead``): the consumer gets exactly what a
plain loop would make, in order; an error surfaces at its item; leaving early stops the thread."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from alexnet.data.ahead import made_ahead

CPU = torch.device("cpu")


def make(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((2, 3), float(i)), torch.tensor([i, -i])


def ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "alexnet-ahead"]


def test_batches_come_in_order_and_equal_a_plain_loop() -> None:
    got = list(made_ahead(range(7), make, CPU, depth=2))
    want = [make(i) for i in range(7)]
    assert all(
        torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(got, want, strict=True)
    )
    assert len(got) == 7


def test_the_thread_really_works_ahead() -> None:
    made: list[int] = []

    def slow_consumer_sees(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        made.append(i)
        return make(i)

    batches = made_ahead(range(10), slow_consumer_sees, CPU, depth=3)
    next(batches)
    deadline = time.time() + 5
    while len(made) < 1 + 3 and time.time() < deadline:  # the one taken, then depth waiting
        time.sleep(0.01)
    assert made[:4] == [0, 1, 2, 3]
    batches.close()


def test_an_error_is_raised_at_its_item() -> None:
    def fails_at_three(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i == 3:
            raise ValueError("record 3 is corrupt")
        return make(i)

    seen = []
    with pytest.raises(ValueError, match="record 3 is corrupt"):
        for _, labels in made_ahead(range(6), fails_at_three, CPU):
            seen.append(int(labels[0]))
    assert seen == [0, 1, 2]


def test_leaving_early_stops_the_thread_and_closes_the_source() -> None:
    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    batches = made_ahead(endless(), make, CPU, depth=2)
    assert int(next(batches)[1][0]) == 0
    batches.close()
    assert closed.wait(5) and not ahead_threads()
