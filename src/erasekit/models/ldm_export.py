"""Moved to :mod:`erasekit.export` (``single_file``, ``ldm_names``); kept so old imports work."""

from ..export.ldm_names import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX, clip_to_ldm, unet_to_ldm, vae_to_ldm  # noqa: F401
from ..export.single_file import export_single_file, pipeline_to_ldm  # noqa: F401
