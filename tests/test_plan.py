"""``--plan`` times the run's own sampler: the same batches, guidance and precision."""

from __future__ import annotations

import pytest

from streamingt2v.plan import make_plan
from streamingt2v.streaming import stream

FAST = dict(steps=2, scheduler="ddim")


def _batches_seen(pipe, run) -> set[tuple[str, int]]:
    """(UNet, batch of frames) of every UNet evaluation ``run()`` makes."""
    seen = set()
    unets = {"base": pipe.unet, "streaming": pipe.stream_unet}
    hooks = [
        unet.conv_in.register_forward_pre_hook(
            lambda _, args, name=name: seen.add((name, args[0].shape[0]))
        )
        for name, unet in unets.items()
    ]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return seen


@pytest.mark.parametrize(
    "guidance, stream_guidance", [(7.5, None), (1.0, None), (7.5, 1.0), (1.0, 3.0)]
)
def test_the_plan_measures_the_batches_the_run_makes(tiny_pipe, guidance, stream_guidance):
    """At guidance 1 a chunk runs the prompt's branch alone (half the batch): the plan must
    time that batch where the run makes it, at the first chunk's and the streaming chunks'
    own guidance (it once timed the streaming step at the first chunk's)."""
    request = tiny_pipe.request(
        "a red circle", 24, guidance=guidance, stream_guidance=stream_guidance, **FAST
    )
    planned = _batches_seen(tiny_pipe, lambda: make_plan(tiny_pipe, request))
    ran = _batches_seen(tiny_pipe, lambda: list(stream(tiny_pipe.chunk_models(), request)))
    assert planned == ran
    doubled = {g: 1 if g == 1 else 2 for g in (guidance, request.sample.chunk_guidance)}
    assert {b for _, b in ran} == {
        16 * doubled[guidance],
        16 * doubled[request.sample.chunk_guidance],
    }
