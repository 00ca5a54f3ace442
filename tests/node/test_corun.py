"""``CoRun`` and ``batched`` (graphflow/node/batching.py): members one at a time, same-key calls
made once, a failing batched call made again per member so only the bad one fails."""

from __future__ import annotations

import pytest

from graphflow.node.batching import CoRun, batched


def doubling(log: list):
    def call(xs: list) -> list:
        log.append(list(xs))
        if any(x < 0 for x in xs):
            raise ValueError(f"negative input {min(xs)}")
        return [2 * x for x in xs]
    return call


def test_same_key_calls_are_one_call_and_members_run_one_at_a_time():
    log: list = []
    running, overlap = [0], [False]

    def body(k: int):
        def f():
            out = []
            for step in range(3):
                running[0] += 1
                overlap[0] |= running[0] > 1
                running[0] -= 1
                out.append(batched(("model", step), 10 * k + step, doubling(log)))
            return out
        return f

    co = CoRun()
    assert co.run([body(k) for k in range(4)]) == [[2 * (10 * k + s) for s in range(3)] for k in range(4)]
    assert log == [[0, 10, 20, 30], [1, 11, 21, 31], [2, 12, 22, 32]]
    assert co.sizes == [4, 4, 4] and not overlap[0]


def test_other_keys_are_called_apart_and_members_may_end_early():
    log: list = []

    def body(key, steps):
        return lambda: [batched((key, s), s, doubling(log)) for s in range(steps)]

    co = CoRun()
    assert co.run([body("a", 2), body("b", 1), body("a", 1)]) == [[0, 2], [0], [0]]
    assert sorted(map(tuple, log)) == [(0,), (0, 0), (1,)]
    assert sorted(co.sizes) == [1, 1, 2]


def test_a_failing_batched_call_fails_only_the_member_whose_input_fails():
    log: list = []
    co = CoRun()
    out = co.run([lambda k=k: batched("m", k, doubling(log)) for k in (1, -5, 3)])
    assert out[0] == 2 and out[2] == 6
    assert isinstance(out[1], ValueError) and str(out[1]) == "negative input -5"
    assert log == [[1, -5, 3], [1], [-5], [3]]  # together, then each alone


def test_a_member_that_raises_leaves_the_group():
    def bad():
        raise KeyError("boom")

    out = CoRun().run([bad, lambda: batched("m", 4, doubling([]))])
    assert isinstance(out[0], KeyError) and out[1] == 8


def test_outside_a_group_the_call_is_made_at_once():
    log: list = []
    assert batched("m", 3, doubling(log)) == 6 and log == [[3]]


@pytest.mark.parametrize("n", [0, 1])
def test_empty_and_single_groups(n):
    assert CoRun().run([lambda: batched("m", 1, doubling([]))] * n) == [2] * n


def test_per_sample_with_distinct_computes_equal_inputs_once_and_gives_each_caller_its_rows():
    """Text encoders' batching (nodes/batch_calls.py): the items of a batch that share a prompt
    get one row of the call, as unbatched runs would encode it once and find it in the cache."""
    import torch
    from graphflow_nodes.batch_calls import per_sample

    from graphflow.node.context import Context

    seen: list = []

    def encode(args):
        seen.append(args[0][:, 0].tolist())
        return args[0] * 2, args[0][:, :1]

    ids = [torch.tensor([[1, 7]]), torch.tensor([[2, 7]]), torch.tensor([[1, 7]]), torch.tensor([[3, 7]])]
    out = CoRun().run([lambda x=x: per_sample(Context(), "te", (x,), encode, distinct=True) for x in ids])
    assert seen == [[1, 2, 3]]  # one call, each distinct row once
    assert all(a.untyped_storage().nbytes() == a.nbytes for a, _ in out)  # each its own rows, not a view of the batch
    assert [(a.tolist(), b.tolist()) for a, b in out] == [([[2, 14]], [[1]]), ([[4, 14]], [[2]]), ([[2, 14]], [[1]]),
                                                          ([[6, 14]], [[3]])]
    seen.clear()
    CoRun().run([lambda x=x: per_sample(Context(), "te", (x,), encode) for x in ids])
    assert seen == [[1, 2, 1, 3]]  # without distinct: every caller's row
