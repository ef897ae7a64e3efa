#!/usr/bin/env bash
# Screenshots of the app's main views, in a real window under Xvfb, on the real
# magnetic-tile images in ../shared/data. Writes screenshots/{train,data,threshold,review,inspect}.png
# and labels-grid.png, labels-review.png, teach.png.
#
# Needs (Debian 12): xvfb xauth libgl1-mesa-dri libxcursor1 libxi6 libxkbcommon-x11-0
#                    imagemagick xdotool
# Usage: scripts/screenshots.sh [MODEL]
#   MODEL: a model trained on magnetic_tile (e.g. `flowspect train --data ../shared/data/magnetic_tile
#   --out tile.fsm`, about 25 min on 2 CPU cores). Without it a quicker one is trained first
#   (300 images, 5 epochs per stage, a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
MT=../shared/data/magnetic_tile
OUT=screenshots
BIN=target/release/flowspect
mkdir -p "$OUT"
cargo build --release --locked
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
# Fresh remembered settings, so the run does not depend on this machine's.
export XDG_DATA_HOME=$W/data XDG_CONFIG_HOME=$W/config
MODEL=${1:-$W/model.fsm}
if [ ! -f "$MODEL" ]; then
  "$BIN" train --data "$MT" --limit 300 --epochs 5 --device cpu --out "$MODEL"
fi
. scripts/xvfb-common.sh
start_display 77
focus() { xdotool search --sync --name flowspect windowfocus --sync 2>/dev/null || true; sleep 1; }

# 1. Training in progress: a quick model on 200 images, the loss curves filling in.
"$BIN" gui --train "$MT" --test "$MT" --tab train --epochs 4 --image-size 256 --max-images 200 \
  --start-training 2>"$W/train.log" &
APP=$!
wait_for "$W/train.log" "bmr epoch 2/4" 900
sleep 3
import -window root "$OUT/train.png"
kill $APP; wait $APP 2>/dev/null || true

# 2-4. The full test set scored with MODEL: thumbnails, threshold tuning, heatmap review.
"$BIN" gui --train "$MT" --test "$MT" --model "$MODEL" --score --tab data --select 126 2>"$W/score.log" &
APP=$!
wait_for "$W/score.log" "scoring ended" 900
sleep 3
import -window root "$OUT/data.png"
focus
xdotool key ctrl+3; sleep 2
import -window root "$OUT/threshold.png"
xdotool key ctrl+4; sleep 3
import -window root "$OUT/review.png"
kill $APP; wait $APP 2>/dev/null || true
# 5. The Inspect tab running on parts that arrive one by one.
scripts/screenshot-inspect.sh "$MODEL"
# 6-8. Labels on an unlabeled folder, and a false reject taught (on a copy of MODEL).
scripts/screenshot-teach.sh "$MODEL"
echo "screenshots written to $OUT/"
