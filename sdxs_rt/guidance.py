"""Classifier-free guidance as a wrapper around the U-Net."""

from __future__ import annotations

from collections.abc import Callable

from sdxs_rt.components import Array, ArrayOps, UNet

ModelFn = Callable[[Array, float], Array]


def guided_model(
    unet: UNet, cond: Array, uncond: Array | None, guidance_scale: float, ops: ArrayOps
) -> ModelFn:
    """Return `model(x, t)` for the samplers.

    At guidance_scale <= 1 (or without an unconditional embedding) only the conditional branch
    runs: half the work. Otherwise one U-Net call on the batch [negative..., positive...], as
    the model card orders it, combined as `uncond + guidance_scale * (cond - uncond)`.
    """
    if uncond is None or guidance_scale <= 1.0:
        return lambda x, t: unet(x, t, cond)
    context = ops.concat([uncond, cond])
    batch = cond.shape[0]

    def model(x: Array, t: float) -> Array:
        out = unet(ops.concat([x, x]), t, context)
        out_uncond, out_cond = out[:batch], out[batch:]
        return out_uncond + guidance_scale * (out_cond - out_uncond)

    return model
