// Flow-Euler sampling with classifier-free guidance, in osp's float32 arithmetic (osp/diffusion/samplers.py
// FlowEuler, osp/diffusion/guidance.py). Each float32 operation of PyTorch is one float64 operation
// rounded by Math.fround: exact for +, -, * of float32 values, so the numbers are PyTorch's to the bit.

const f32 = Math.fround;

/**
 * The noise levels sigma_0..sigma_steps (float32) and the transformer's timesteps t_i = 1000 sigma_i.
 * torch.linspace(1, 0, steps + 1) in float64 (its two halves computed from either end), cast to
 * float32; the last level is 0, where the chain ends.
 */
export function flowSchedule(steps, timestepScale = 1000) {
  const count = steps + 1;
  const step = -1 / steps;
  const halfway = Math.floor(count / 2);
  const sigmas = new Float32Array(count);
  for (let i = 0; i < steps; i++) {
    sigmas[i] = i < halfway ? 1 + step * i : 0 - step * (count - i - 1);
  }
  const timesteps = sigmas.subarray(0, steps).map((s) => f32(s * timestepScale));
  return { sigmas, timesteps };
}

/** v = u + g (c - u) on the first `n` values of each half of the [cond; uncond] model output. */
export function guide(output, n, guidance) {
  const g = f32(guidance);
  const guided = new Float32Array(n);
  const half = output.length / 2; // a learned-sigma model has more channels than it guides
  for (let i = 0; i < n; i++) {
    const c = output[i];
    const u = output[half + i];
    guided[i] = f32(u + f32(g * f32(c - u)));
  }
  return guided;
}

/** One Euler step x <- x + (sigma_next - sigma) v, in place. */
export function eulerStep(x, v, sigma, sigmaNext) {
  const dt = f32(sigmaNext - sigma);
  for (let i = 0; i < x.length; i++) x[i] = f32(x[i] + f32(dt * v[i]));
}

/** Decoded video (1, 3, T, H, W) in about [-1, 1] -> T frames of RGBA bytes, as osp's from_model. */
export function toFrames(video, frames, height, width) {
  const plane = height * width;
  const out = [];
  for (let t = 0; t < frames; t++) {
    const rgba = new Uint8ClampedArray(plane * 4);
    for (let c = 0; c < 3; c++) {
      const base = (c * frames + t) * plane;
      for (let p = 0; p < plane; p++) rgba[p * 4 + c] = toByte(video[base + p]);
    }
    for (let p = 0; p < plane; p++) rgba[p * 4 + 3] = 255;
    out.push(rgba);
  }
  return out;
}

// uint8(clamp(round((x + 1) * 127.5), 0, 255)) with float32 arithmetic and PyTorch's round half to even.
function toByte(x) {
  const v = f32(f32(x + 1) * 127.5);
  const floor = Math.floor(v);
  const frac = v - floor;
  const r = frac > 0.5 || (frac === 0.5 && floor % 2 !== 0) ? floor + 1 : floor;
  return r < 0 ? 0 : r > 255 ? 255 : r;
}
