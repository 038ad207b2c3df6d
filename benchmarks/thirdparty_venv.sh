#!/usr/bin/env bash
# Make .venv-3p: the third-party loaders that check erasekit's exports (tests/test_export.py::test_third_party_loaders,
# benchmarks/export_thirdparty.py). A venv of its own, never the project's: these packages pin old libraries.
#   LyCORIS (the LoRA code A1111 / ComfyUI users run), sd-mecha (key lists of real SD 1.5 / SDXL checkpoints),
#   stable-diffusion-sdkit (the original LDM UNet code). --no-deps for sdkit: its declared dependencies would
#   replace torch and pull torchvision / open-clip.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv-3p}
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q torch==2.13.0
"$venv/bin/pip" install -q --no-deps stable-diffusion-sdkit==2.1.5
"$venv/bin/pip" install -q -c <(echo torch==2.13.0) einops pillow omegaconf lycoris-lora==4.1.3 sd-mecha==1.1.8
echo "third-party loaders ready in $venv"
