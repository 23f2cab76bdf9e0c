// A prompt to a video from an osp bundle (`osp export --target onnx --bundle-for node|web`): tokenizer,
// text encoder, flow-Euler sampling with classifier-free guidance, transformer, VAE decoder, RGBA frames.
// The runtime is injected (onnxruntime-node or onnxruntime-web) with a reader for the bundle's files, so
// the same code runs in Node and in the browser; node.mjs and web/osp-web.mjs supply them.

import { Tokenizer } from '@huggingface/tokenizers';

import { portableNoise } from './noise.mjs';
import { eulerStep, flowSchedule, guide, toFrames } from './sampler.mjs';

export const FORMAT = 'osp-bundle';
export const FORMAT_VERSION = 1;
const NOISE = 'philox4x32-10-box-muller';
const NOISE_VERSION = 1;
const MAX_STEPS = 1000;

/** A bad bundle or bad request: one sentence naming the file or option. */
export class BundleError extends Error {
  constructor(message) {
    super(message);
    this.name = 'BundleError';
  }
}

/**
 * Open a bundle. `io.json(path)` reads a JSON file of the bundle, `io.model(path)` returns what
 * `ort.InferenceSession.create` takes (a file path in Node, bytes in a browser); `variant` picks the
 * weights (fp32, fp16, int8; default: the bundle's first), `sessionOptions` go to every session.
 */
export async function openBundle(io, { ort, variant, sessionOptions = {} } = {}) {
  const manifest = checkManifest(await io.json('manifest.json'));
  const name = variant ?? manifest.default_variant;
  const chosen = Object.hasOwn(manifest.variants, name) ? manifest.variants[name] : null;
  if (!chosen) {
    const have = Object.keys(manifest.variants).join(', ');
    throw new BundleError(`variant: the bundle holds ${have}, not ${name}`);
  }
  const folder = manifest.tokenizer.folder;
  const tokenizer = new Tokenizer(
    await io.json(`${folder}/tokenizer.json`),
    await io.json(`${folder}/tokenizer_config.json`),
  );
  const sessions = {};
  for (const [component, file] of Object.entries(chosen.files)) {
    sessions[component] = await ort.InferenceSession.create(await io.model(file.file), sessionOptions);
  }
  return new VideoGenerator(ort, manifest, name, tokenizer, sessions);
}

function checkManifest(manifest) {
  if (manifest?.format !== FORMAT) {
    throw new BundleError(`manifest.json: not an osp bundle (format ${JSON.stringify(manifest?.format)})`);
  }
  if (manifest.format_version !== FORMAT_VERSION) {
    throw new BundleError(
      `manifest.json: bundle format version ${manifest.format_version}; this library reads version ` +
        `${FORMAT_VERSION} (re-export the bundle with the osp that matches it)`,
    );
  }
  const noise = manifest.noise ?? {};
  if (noise.name !== NOISE || noise.version !== NOISE_VERSION) {
    throw new BundleError(
      `manifest.json: noise generator ${noise.name} v${noise.version}; this library makes ${NOISE} v1`,
    );
  }
  if (manifest.sampler?.scheduler !== 'flow-euler') {
    const scheduler = manifest.sampler?.scheduler;
    throw new BundleError(`manifest.json: sampler ${scheduler}; this library runs flow-euler`);
  }
  return manifest;
}

class VideoGenerator {
  constructor(ort, manifest, variant, tokenizer, sessions) {
    this.ort = ort;
    this.manifest = manifest;
    this.variant = variant;
    this.tokenizer = tokenizer;
    this.sessions = sessions;
  }

  /**
   * Generate one clip. Options default to the bundle's (steps, guidance, negative prompt); `seed` is
   * an integer in [0, 2^53). `onProgress({stage, step, steps})` is called as the work advances (stage
   * encode, denoise, decode, done). Returns {frames: RGBA Uint8ClampedArray per frame, width, height, fps}.
   */
  async generate(prompt, { seed = 0, steps, guidance, negativePrompt, onProgress = () => {} } = {}) {
    const sampler = this.manifest.sampler;
    steps = steps ?? sampler.steps;
    guidance = guidance ?? sampler.guidance;
    negativePrompt = negativePrompt ?? sampler.negative_prompt;
    if (typeof prompt !== 'string' || prompt.trim() === '') {
      throw new BundleError('prompt: give a non-empty prompt');
    }
    if (!Number.isSafeInteger(seed) || seed < 0) {
      throw new BundleError(`seed: an integer in [0, 2^53), got ${seed}`);
    }
    if (!Number.isInteger(steps) || steps < 1 || steps > MAX_STEPS) {
      throw new BundleError(`steps: an integer from 1 to ${MAX_STEPS}, got ${steps}`);
    }
    if (!Number.isFinite(guidance) || guidance < 0) {
      throw new BundleError(`guidance: a number >= 0, got ${guidance}`);
    }
    // 1. Encode the prompt, and the negative prompt for guidance (each alone, as osp does).
    onProgress({ stage: 'encode', step: 0, steps });
    const cond = await this.encode(prompt);
    const guided = guidance !== 1; // osp skips the unconditional branch at guidance 1
    const uncond = guided ? await this.encode(negativePrompt) : null;
    // 2. Noise and flow-Euler steps, one transformer call on [cond; uncond] per step.
    const [channels, t, h, w] = this.manifest.shapes.latent;
    const shape = [channels, t, h, w];
    const size = channels * t * h * w;
    const x = portableNoise(size, seed);
    const { sigmas, timesteps } = flowSchedule(steps, sampler.timestep_scale);
    const batch = guided ? 2 : 1;
    const text = concat(guided ? [cond.states, uncond.states] : [cond.states]);
    const mask = concat(guided ? [cond.mask, uncond.mask] : [cond.mask]);
    const length = this.manifest.shapes.text_length;
    for (let i = 0; i < steps; i++) {
      const feeds = {
        latents: this.tensor('float32', concat(Array(batch).fill(x)), [batch, ...shape]),
        timestep: this.tensor('float32', new Float32Array(batch).fill(timesteps[i]), [batch]),
        encoder_hidden_states: this.tensor('float32', text, [batch, length, text.length / (batch * length)]),
        encoder_attention_mask: this.tensor('bool', mask, [batch, length]),
      };
      const output = await this.run('transformer', feeds);
      const v = guided ? guide(output, size, guidance) : output.subarray(0, size);
      eulerStep(x, v, sigmas[i], sigmas[i + 1]);
      onProgress({ stage: 'denoise', step: i + 1, steps });
    }
    // 3. Decode the latents (the decoder divides by the VAE's scaling factor itself) to RGBA frames.
    onProgress({ stage: 'decode', step: steps, steps });
    const video = await this.run('vae_decoder', { latents: this.tensor('float32', x, [1, ...shape]) });
    const { frames: count, size: pixels, fps } = this.manifest.shapes;
    const frames = toFrames(video, count, pixels[0], pixels[1]);
    onProgress({ stage: 'done', step: steps, steps });
    return { frames, width: pixels[1], height: pixels[0], fps };
  }

  /** The text encoder's states for `text`, and the mask of its real tokens. */
  async encode(text) {
    const { max_length: length, pad_id: pad } = this.manifest.tokenizer;
    const ids = tokenIds(this.tokenizer, text, length);
    const inputIds = new BigInt64Array(length).fill(BigInt(pad));
    const attention = new BigInt64Array(length);
    const mask = new Uint8Array(length);
    ids.forEach((id, i) => {
      inputIds[i] = BigInt(id);
      attention[i] = 1n;
      mask[i] = 1;
    });
    const feeds = {
      input_ids: this.tensor('int64', inputIds, [1, length]),
      attention_mask: this.tensor('int64', attention, [1, length]),
    };
    return { states: await this.run('text_encoder', feeds), mask };
  }

  tensor(type, data, dims) {
    return new this.ort.Tensor(type, data, dims);
  }

  // The session's first output as a Float32Array, fed only the inputs the file declares.
  async run(component, feeds) {
    const session = this.sessions[component];
    const inputs = Object.fromEntries(session.inputNames.map((name) => [name, feeds[name]]));
    const outputs = await session.run(inputs);
    return outputs[session.outputNames[0]].data;
  }
}

/**
 * The ids the text encoder reads for `text`, as transformers' tokenizer(text, truncation=True,
 * max_length=length) gives them: the prompt's tokens cut to fit beside the special tokens, then
 * wrapped in them (padding is the caller's).
 */
export function tokenIds(tokenizer, text, length) {
  const full = tokenizer.encode(text).ids;
  const bare = tokenizer.encode(text, { add_special_tokens: false }).ids;
  const start = findRun(full, bare);
  const prefix = full.slice(0, start);
  const suffix = full.slice(start + bare.length);
  return [...prefix, ...bare.slice(0, length - prefix.length - suffix.length), ...suffix];
}

// Where `run` starts inside `list` (the prompt's tokens inside the tokens with special tokens added).
function findRun(list, run) {
  for (let start = 0; start + run.length <= list.length; start++) {
    if (run.every((value, i) => list[start + i] === value)) return start;
  }
  throw new BundleError('tokenizer: its special tokens change the prompt tokens instead of wrapping them');
}

function concat(arrays) {
  const out = new arrays[0].constructor(arrays.reduce((n, a) => n + a.length, 0));
  let offset = 0;
  for (const a of arrays) {
    out.set(a, offset);
    offset += a.length;
  }
  return out;
}
