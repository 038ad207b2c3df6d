"""Prompt lists shared across the package, below the methods and the evaluation that both use them."""

from __future__ import annotations

__all__ = ["GENERAL_PROMPTS"]

# Unrelated everyday prompts: the `general` evaluation suite of real models (drift on what the edit must not
# touch) and the preservation prior of methods that need general prompts (MACE's prior_prompts='general-suite').
GENERAL_PROMPTS = (
    "a photo of a bicycle leaning against a brick wall",
    "a bowl of fresh fruit on a wooden table",
    "a mountain lake at sunrise",
    "a cat sleeping on a sofa",
    "a city street in the rain at night",
    "a red sailboat on the open sea",
    "a plate of pasta with tomato sauce",
    "a snowy forest path",
)
