// The page: load the bundle (?bundle=URL, default ../bundle/; ?variant=fp32|fp16|int8; ?backend=wasm|webgpu),
// generate on submit, show progress, play the clip on a loop. The last clip and its timings stay on
// window.ospClip / window.ospTimings for whoever drives the page.

import { load } from './osp-web.mjs';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const status = (state, text) => {
  $('status').dataset.state = state;
  $('status').textContent = text;
};
let player;

function play(clip) {
  const canvas = $('clip');
  canvas.width = clip.width;
  canvas.height = clip.height;
  const context = canvas.getContext('2d');
  const images = clip.frames.map((rgba) => new ImageData(rgba, clip.width, clip.height));
  let index = 0;
  clearInterval(player);
  context.putImageData(images[0], 0, 0);
  player = setInterval(() => {
    index = (index + 1) % images.length;
    context.putImageData(images[index], 0, 0);
  }, 1000 / clip.fps);
}

async function main() {
  const started = performance.now();
  const osp = await load(params.get('bundle') ?? '../bundle/', {
    variant: params.get('variant') ?? undefined,
    backend: params.get('backend') ?? undefined,
  });
  const loadSeconds = (performance.now() - started) / 1000;
  const { manifest } = osp;
  const megabytes = (manifest.variants[osp.variant].bytes / 1e6).toFixed(1);
  const about = `${manifest.model}, ${osp.variant} weights (${megabytes} MB) on ${osp.backend}`;
  const fallback = osp.fallback ? `; ${osp.fallback}` : '';
  $('details').textContent = `${about}; loaded in ${loadSeconds.toFixed(1)} s${fallback}`;
  $('steps').value = manifest.sampler.steps;
  status('ready', 'Ready: type a prompt and press Generate.');
  $('go').disabled = false;
  $('form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const prompt = $('prompt').value || $('prompt').placeholder;
    $('go').disabled = true;
    status('running', 'Encoding the prompt…');
    const begun = performance.now();
    try {
      const clip = await osp.generate(prompt, {
        seed: Number($('seed').value),
        steps: Number($('steps').value),
        onProgress: ({ stage, step, steps }) => {
          $('progress').value = stage === 'done' ? 1 : (step + (stage === 'decode' ? 0.5 : 0)) / (steps + 1);
          if (stage === 'denoise') status('running', `Denoising: step ${step} of ${steps}`);
          if (stage === 'decode') status('running', 'Decoding the frames…');
        },
      });
      const seconds = (performance.now() - begun) / 1000;
      window.ospClip = clip;
      const { backend, variant } = osp;
      window.ospTimings = { load_s: loadSeconds, total_s: seconds, backend, variant };
      play(clip);
      const size = `${clip.width}×${clip.height}`;
      status('done', `“${prompt}”: ${clip.frames.length} frames at ${size} in ${seconds.toFixed(1)} s`);
    } catch (err) {
      status('error', err.message);
    } finally {
      $('go').disabled = false;
    }
  });
}

main().catch((err) => status('error', err.message));
