#!/usr/bin/env bash
# Screenshot of the Inspect tab running (line mode), in a real window under Xvfb: the app
# watches an empty folder while real magnetic-tile test images (good ones and defects)
# are dropped into it one by one. Writes screenshots/inspect.png.
#
# Needs what scripts/screenshots.sh needs (Debian 12: xvfb xauth libgl1-mesa-dri
# libxcursor1 libxi6 libxkbcommon-x11-0 imagemagick xdotool).
# Usage: scripts/screenshot-inspect.sh MODEL   (a model trained on magnetic_tile)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?usage: scripts/screenshot-inspect.sh MODEL}
MT=../shared/data/magnetic_tile/test
OUT=screenshots
BIN=target/release/flowspect
mkdir -p "$OUT"
[ -x "$BIN" ] || cargo build --release --locked
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
export XDG_DATA_HOME=$W/data XDG_CONFIG_HOME=$W/config
LINE=$W/line
mkdir -p "$LINE"
. scripts/xvfb-common.sh
start_display 78
"$BIN" gui --model "$MODEL" --inspect "$LINE" --start-inspect --tab inspect 2>"$W/app.log" &
APP=$!
for _ in $(seq 120); do grep -q "inspection log" "$W/app.log" && break; sleep 1; done
# Parts arrive: written under a temporary name and renamed into place, as a camera does.
n=0
for f in $(ls "$MT"/good/*.jpg | head -8) $(ls "$MT"/crack/*.jpg | head -3) $(ls "$MT"/good/*.jpg | sed -n 9,12p) \
         $(ls "$MT"/blowhole/*.jpg | head -2) $(ls "$MT"/good/*.jpg | sed -n 13,16p) $(ls "$MT"/uneven/*.jpg | head -1); do
  n=$((n + 1))
  cp "$f" "$LINE/.part_$n.tmp" && mv "$LINE/.part_$n.tmp" "$LINE/part_$(printf %03d $n).jpg"
  sleep 0.7
done
for _ in $(seq 120); do [ "$(grep -c '^inspect: ' "$W/app.log")" -ge "$n" ] && break; sleep 1; done
sleep 2
import -window root "$OUT/inspect.png"
kill $APP; wait $APP 2>/dev/null || true
echo "wrote $OUT/inspect.png ($n parts)"
