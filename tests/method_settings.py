"""Cheap settings for every registered method, shared by the test matrices that run all of them.

A few steps of each fine-tuning method, SPACE at a fixed λ instead of a sparsity search, PURE on the bare
concept; the other closed forms run as they are. ``templates`` is the ``--[no-]templates`` flag.
"""

CHEAP: dict[str, dict] = {
    "uce": {},
    "space": {"lam": 0.05},
    "rece": {"epochs": 1},
    "speed": {},
    "cure": {},
    "pure": {"n_latents": 1, "steps": 2, "templates": False},
    "ace": {"train_steps": 1, "adv_steps": 1, "pool_latents": 1, "pool_steps": 2, "batch_size": 1},
    "mace": {"train_steps": 1, "n_images": 1, "image_steps": 2},
    "esd": {"iterations": 1, "pool_latents": 1, "pool_steps": 2},
    "esd-u": {"iterations": 1, "pool_latents": 1, "pool_steps": 2},
    "esd-x": {"iterations": 1, "pool_latents": 1, "pool_steps": 2},
    "esd-x-strict": {"iterations": 1, "pool_latents": 1, "pool_steps": 2},
}
