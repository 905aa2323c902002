"""engine/distributed.py: the rank-to-rank helpers."""
import inspect

from hgltr_cli.engine import distributed

OBJECT_COLLECTIVES = ("broadcast_object_list", "all_gather_object", "gather_object", "scatter_object_list",
                      "send_object_list", "recv_object_list")


def test_collectives_are_tensor_only():
    """The engine only barriers and all-reduces tensors; DistContext.broadcast_object (a pickling
    object collective) had no caller and was removed rather than kept untested."""
    assert not hasattr(distributed.DistContext, "broadcast_object")
    src = inspect.getsource(distributed)
    assert [name for name in OBJECT_COLLECTIVES if name in src] == []
