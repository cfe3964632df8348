"""The sdxs-rt desktop app (PySide6), installed as `sdxs_rt_desktop`; run `sdxs-rt-desktop`."""
