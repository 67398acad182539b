"""CPU torch tensors in a model are shared with the workers, zero-copy.

One pool for every observation: each worker imports torch, which is slow.
"""

from __future__ import annotations

import numpy as np
import torch

from budgeted.lenskit import invoker
from test_lenskit_invoker import SHM, config, mapping_of, our_segments  # noqa: F401


def describe_shared(model, x):
    """What a worker sees of the model's arrays and tensors, and a product."""
    array, tensor, weight, bias = model
    return {
        "owndata": array.flags.owndata,
        "writeable": array.flags.writeable,
        "files": {mapping_of(array.ctypes.data), mapping_of(tensor.data_ptr())}
        | {mapping_of(weight.data_ptr()), mapping_of(bias.data_ptr())},
        "sum": float(array.sum()) + float(tensor.sum()),
        "product": weight @ x + bias,
        "weight": (type(weight).__name__, weight.requires_grad, weight.dtype),
    }


def test_arrays_and_tensors_are_views_of_the_shared_segment():
    model = (
        np.arange(100_000, dtype=np.float64),
        torch.arange(1000, dtype=torch.float32)[10:20],  # a strided view
        torch.nn.Parameter(torch.ones(3, 2, dtype=torch.bfloat16)),
        torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16),
    )
    expected = float(model[0].sum()) + float(model[1].sum())
    x = torch.ones(2, dtype=torch.bfloat16)
    with invoker(model, describe_shared, n_jobs=2) as inv:
        (segment,) = our_segments()
        seen = list(inv.map([x] * 4))
    for view in seen:
        assert not view["owndata"] and not view["writeable"]
        assert view["files"] == {str(SHM / segment)}
        assert view["sum"] == expected
        assert view["product"].tolist() == [3.0, 4.0, 5.0]
        assert view["weight"] == ("Parameter", True, torch.bfloat16)
    assert our_segments() == []
