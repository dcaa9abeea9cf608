"""The method and the baselines it is compared with: one table.

Every way of making the chunks of a video is a row of ``METHODS``: the paper's method (CAM +
APM) and the inference-time baselines and ablations of the evaluation (independent chunks,
no APM, no CAM, FreeNoise). ``sampling.chunk_sampler`` reads a row to build a chunk's
sampler. Plain data, no torch: the command line lists the methods without loading models.
"""

from __future__ import annotations

from dataclasses import dataclass

FREENOISE_STRIDE = 4  # frames between FreeNoise's attention windows (its paper's default)


@dataclass(frozen=True)
class Method:
    """How the chunks after the first are made."""

    description: str
    # Later chunks from the streaming model (UNet + CAM + APM); False: from the base model
    # and the text alone, like the first chunk.
    streaming: bool = True
    cam: bool = True  # the streaming model's CAM (short-term memory)
    apm: bool = True  # the streaming model's APM (long-term memory)
    # The whole video denoised at once by the base model (FreeNoise): one "chunk".
    whole_video: bool = False


METHODS = {
    "streamingt2v": Method("CAM + APM (the paper's method)"),
    "independent": Method(
        "every chunk from the base model and the text alone (hard cuts expected)",
        streaming=False,
    ),
    "no-apm": Method("streaming chunks without the APM (no anchor-frame tokens)", apm=False),
    "no-cam": Method(
        "streaming chunks without the CAM (no conditioning on the previous chunk)", cam=False
    ),
    "freenoise": Method(
        "FreeNoise on the base model: rescheduled noise, window-fused temporal attention, the "
        "whole video denoised at once (memory grows with the length)",
        streaming=False,
        whole_video=True,
    ),
}
