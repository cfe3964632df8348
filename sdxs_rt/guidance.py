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


class ScheduledGuidance:
    """`guided_model` whose conditions may change between steps (prompt schedules).

    `conditions(step)` gives the (cond, uncond) pair of 1-based `step`, each (1, D) or uncond
    None; the samplers call the model once per step and the pipeline's per-step hook calls
    `after_step`. The guided model, and with it the batch's context and the U-Net's folded
    cross-attention values, is rebuilt only when the pair changes.
    """

    def __init__(
        self,
        unet: UNet,
        conditions: Callable[[int], tuple[Array, Array | None]],
        batch: int,
        guidance_scale: float,
        ops: ArrayOps,
    ) -> None:
        self.unet, self.conditions, self.batch = unet, conditions, batch
        self.guidance_scale, self.ops = guidance_scale, ops
        self.step = 1
        self._pair: tuple[Array, Array | None] | None = None
        self._model: ModelFn | None = None

    def __call__(self, x: Array, t: float) -> Array:
        return self._current()(x, t)

    def after_step(self, index: int, x: Array) -> Array:
        self.step = index + 2  # the 0-based step `index` is done: the next is 1-based index + 2
        return x

    def _current(self) -> ModelFn:
        pair = self.conditions(self.step)
        if self._model is None or self._pair is None or not _same(pair, self._pair):
            cond, uncond = pair
            context = self.ops.concat([cond] * self.batch)[:, None]
            uncontext = None if uncond is None else self.ops.concat([uncond] * self.batch)[:, None]
            self._model = guided_model(self.unet, context, uncontext, self.guidance_scale, self.ops)
            self._pair = pair
        return self._model


def _same(a: tuple[Array, Array | None], b: tuple[Array, Array | None]) -> bool:
    return a[0] is b[0] and a[1] is b[1]
