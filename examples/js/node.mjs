// osp bundles in Node.js: onnxruntime-node (CPU) and files read from a folder.
//
//   import { load } from './node.mjs';
//   const osp = await load('bundle/');
//   const clip = await osp.generate('a red circle moving left on a black background', { seed: 0 });
//   clip.frames[0]  // Uint8ClampedArray of clip.width * clip.height RGBA pixels

import { readFile, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';

import * as ort from 'onnxruntime-node';

import { BundleError, openBundle } from './lib/pipeline.mjs';

export { BundleError };

/** Open the bundle folder `dir`; options: variant (fp32, fp16, int8), sessionOptions for ONNX Runtime. */
export async function load(dir, { variant, sessionOptions } = {}) {
  if (typeof dir !== 'string' || dir === '') throw new BundleError('bundle: give the bundle folder');
  const root = resolve(dir);
  const found = await stat(join(root, 'manifest.json')).catch(() => null);
  if (!found) {
    throw new BundleError(
      `${dir}: not an osp bundle (no manifest.json); make one with ` +
        `osp export --model MODEL --target onnx --bundle-for node --out ${dir}`,
    );
  }
  const io = {
    json: async (path) => {
      const file = join(root, path);
      const text = await readFile(file, 'utf8').catch(() => {
        throw new BundleError(`${file}: missing from the bundle`);
      });
      try {
        return JSON.parse(text);
      } catch (err) {
        throw new BundleError(`${file}: not valid JSON (${err.message})`);
      }
    },
    model: async (path) => {
      const file = join(root, path);
      if (!(await stat(file).catch(() => null))) throw new BundleError(`${file}: missing from the bundle`);
      return file;
    },
  };
  return openBundle(io, { ort, variant, sessionOptions });
}

/** One clip from the bundle folder `bundle`: load + generate (see lib/pipeline.mjs for the options). */
export async function generate(prompt, { bundle, variant, ...options } = {}) {
  const generator = await load(bundle, { variant });
  return generator.generate(prompt, options);
}
