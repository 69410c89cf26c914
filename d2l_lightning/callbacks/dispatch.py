"""Fewer hook calls per step: a callback's per-batch hooks that do nothing are not dispatched.

Lightning calls every per-batch hook of every callback (six per training step), each through
a profiler context and an f-string that names the callback (``bench/callback_cost.py``: about
15 µs per callback per step on our CPU), even when the callback inherits ``Callback``'s no-op.
Lightning skips a hook whose attribute is not callable (``trainer/call.py``,
``_call_callback_hooks``: ``if callable(fn)``), so setting the inherited no-ops to ``None`` on
the instance removes those calls without changing what runs.

One inherited hook that is not a no-op is also known to be idle: ``ModelCheckpoint``'s
``on_train_batch_end`` saves only for ``every_n_train_steps`` or ``train_time_interval``;
without either it returns after its checks (Lightning 2.6), so ``train.py``'s per-epoch
``best`` and ``last`` checkpoints need not hear of every batch.
"""

from __future__ import annotations

from collections.abc import Iterable

from lightning.pytorch.callbacks import Callback, ModelCheckpoint

#: hooks Lightning calls once per batch (or per optimizer step)
BATCH_HOOKS = (
    "on_train_batch_start", "on_train_batch_end", "on_before_backward", "on_after_backward",
    "on_before_optimizer_step", "on_before_zero_grad", "on_validation_batch_start",
    "on_validation_batch_end", "on_test_batch_start", "on_test_batch_end",
    "on_predict_batch_start", "on_predict_batch_end",
)


def _idle(cb: Callback, name: str) -> bool:
    """Whether the hook ``name`` of ``cb`` is known to do nothing."""
    if name in vars(cb):
        return False
    hook = getattr(type(cb), name)
    if hook is getattr(Callback, name):
        return True
    return (name == "on_train_batch_end" and hook is ModelCheckpoint.on_train_batch_end
            and getattr(cb, "_every_n_train_steps", 1) < 1
            and getattr(cb, "_train_time_interval", 0) is None)


def skip_idle_batch_hooks(callbacks: Iterable[Callback]) -> int:
    """Stop the dispatch of the per-batch hooks of ``callbacks`` that are known to do nothing.

    Returns:
        How many hook dispatches per batch of each kind were removed, in all.
    """
    removed = 0
    for cb in callbacks:
        for name in BATCH_HOOKS:
            if _idle(cb, name):
                setattr(cb, name, None)
                removed += 1
    return removed
