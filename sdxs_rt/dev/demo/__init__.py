"""The demo-model recipe: how the built-in `sdxs_rt/models/demo-shapes` was made.

`data` draws the shapes dataset (shape x colour x background, English and Russian captions),
`components` shrinks the tiny builders into the demo's U-Net, VAE and text encoder, `model`
trains them (`python -m sdxs_rt.dev.demo.model OUT_DIR`) and `check` measures shapes and colours
from pixels to score held-out prompts.
"""
