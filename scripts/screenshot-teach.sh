#!/usr/bin/env bash
# Screenshots of labelling and teaching in the real window under Xvfb. An unlabeled folder of
# 24 real magnetic-tile test images (14 good, 10 defects of five kinds, named part-00..23 with
# the defects spread among the good ones) is scored with MODEL; a person marks six of them with
# the G and D keys (stepping with the arrow keys), then marks the good image the model rejects
# with the highest score as good and clicks "Add to good samples".
# Writes screenshots/labels-grid.png (Data tab: label badges on the grid),
# screenshots/labels-review.png (Review tab of a labelled image) and screenshots/teach.png
# (Review tab after the teach: the new score, the counts before and after).
#
# Needs what scripts/screenshots.sh needs (Debian 12: xvfb xauth libgl1-mesa-dri
# libxcursor1 libxi6 libxkbcommon-x11-0 imagemagick xdotool).
# Usage: scripts/screenshot-teach.sh MODEL   (a model trained on magnetic_tile; a copy is taught)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?usage: scripts/screenshot-teach.sh MODEL}
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
cp "$MODEL" "$W/model.fsm"

# The folder: defects at these positions, good images everywhere else.
DEFECT_AT=" 2 5 7 10 12 15 17 19 21 23 "
mapfile -t GOOD < <(ls "$MT/good" | head -14)
BAD=()
for k in blowhole crack fray uneven break; do
  while read -r f; do BAD+=("$k/$f"); done < <(ls "$MT/$k" | head -2)
done
g=0; b=0
for i in $(seq 0 23); do
  name=$(printf 'part-%02d.jpg' "$i")
  if [[ "$DEFECT_AT" == *" $i "* ]]; then
    cp "$MT/${BAD[$b]}" "$LINE/$name"; b=$((b + 1))
  else
    cp "$MT/good/${GOOD[$g]}" "$LINE/$name"; g=$((g + 1))
  fi
done

# The good image to teach: the highest-scoring good one (a false reject if it is above the
# model's threshold).
"$BIN" predict --model "$W/model.fsm" --input "$LINE" --out "$W/pred" >/dev/null
TEACH=$(tail -n +2 "$W/pred/scores.csv" | awk -F, -v d="$DEFECT_AT" '{
  n = $1; sub(/.*part-/, "", n); sub(/\.jpg/, "", n); i = n + 0;
  if (index(d, " " i " ") == 0 && $2 > best) { best = $2; at = i } } END { print at }')
echo "teaching part-$(printf %02d "$TEACH").jpg"

. scripts/xvfb-common.sh
start_display 79
"$BIN" gui --test "$LINE" --model "$W/model.fsm" --score --tab review --select 0 2>"$W/app.log" &
APP=$!
wait_for "$W/app.log" "scoring ended" 600
sleep 2
xdotool search --sync --name flowspect windowfocus --sync 2>/dev/null || true
sleep 1
# Six labels: G on part-00, part-01 and part-03, D on part-02, part-05 and part-07.
at=0
go() { while [ "$at" -lt "$1" ]; do xdotool key Right; at=$((at + 1)); sleep 0.3; done
       while [ "$at" -gt "$1" ]; do xdotool key Left; at=$((at - 1)); sleep 0.3; done; sleep 1; }
for step in 0:g 1:g 2:d 3:g 5:d 7:d; do
  go "${step%%:*}"
  xdotool key "${step##*:}"
  sleep 0.5
done
sleep 2
import -window root "$OUT/labels-review.png"
xdotool key ctrl+1; xdotool mousemove 1390 890; sleep 3
import -window root "$OUT/labels-grid.png"
xdotool key ctrl+4; sleep 1
# The false reject: marked good, then taught.
go "$TEACH"
xdotool key g; sleep 1
# "Add to good samples" on the Review tab's label bar (1400x900 window).
xdotool mousemove 418 67 click 1
wait_for "$W/app.log" "false alarms .* -> " 600
sleep 4
import -window root "$OUT/teach.png"
grep -E "taught|false alarms" "$W/app.log"
kill $APP; wait $APP 2>/dev/null || true
echo "screenshots written to $OUT/"
