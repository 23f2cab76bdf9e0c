// osp bundles in a browser: onnxruntime-web (WebGPU when the browser has a GPU adapter, else WASM on the
// CPU) and files fetched from the bundle's URL.

import * as ort from 'onnxruntime-web';

import { BundleError, openBundle } from '../lib/pipeline.mjs';

export { BundleError };

/**
 * Open the bundle at `url` (a folder URL, relative to the page). Options: variant (fp32, fp16, int8),
 * backend ('webgpu', 'wasm'; default WebGPU when an adapter is there, WASM otherwise).
 * The returned generator's `backend` says which one runs.
 */
export async function load(url, { variant, backend } = {}) {
  const base = new URL(url.endsWith('/') ? url : `${url}/`, location.href);
  const get = async (path) => {
    const target = new URL(path, base);
    const response = await fetch(target).catch((err) => {
      throw new BundleError(`${target}: cannot fetch (${err.message})`);
    });
    if (!response.ok) {
      const hint = path === 'manifest.json' ? '; not an osp bundle folder (osp export --bundle-for web)' : '';
      throw new BundleError(`${target}: ${response.status} ${response.statusText}${hint}`);
    }
    return response;
  };
  const io = {
    json: async (path) => {
      const text = await (await get(path)).text();
      try {
        return JSON.parse(text);
      } catch (err) {
        throw new BundleError(`${new URL(path, base)}: not valid JSON (${err.message})`);
      }
    },
    model: async (path) => new Uint8Array(await (await get(path)).arrayBuffer()),
  };
  const wanted = backend ?? ((await hasWebGpu()) ? 'webgpu' : 'wasm');
  const open = (providers) =>
    openBundle(io, { ort, variant, sessionOptions: { executionProviders: providers } });
  let generator;
  try {
    // Operators WebGPU lacks run on the WASM backend inside the same session.
    generator = await open(wanted === 'webgpu' ? ['webgpu', 'wasm'] : ['wasm']);
  } catch (err) {
    if (wanted !== 'webgpu' || err instanceof BundleError) throw err;
    generator = await open(['wasm']);
    generator.fallback = `WebGPU failed (${err.message}); running on WASM`;
    generator.backend = 'wasm';
    return generator;
  }
  generator.backend = wanted;
  return generator;
}

async function hasWebGpu() {
  if (!('gpu' in navigator)) return false;
  return Boolean(await navigator.gpu.requestAdapter().catch(() => null));
}
