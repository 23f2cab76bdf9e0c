#!/usr/bin/env node
// A prompt to a video file from an osp bundle, with Node.js only:
//
//   node examples/js/cli.mjs "a red circle moving left on a black background" -o out.gif
//   node examples/js/cli.mjs "a red circle" --bundle DIR --seed 3 -o frames/clip.png   # clip_000.png, ...

import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, extname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { encodeGif, encodePng } from './lib/images.mjs';
import { BundleError, load } from './node.mjs';

const USAGE = `usage: node cli.mjs PROMPT -o OUT.gif|OUT.png [--bundle DIR] [--variant fp32|fp16|int8]
       [--seed N] [--steps N] [--guidance G] [--negative-prompt TEXT] [--quiet]
OUT.png writes one PNG per frame: OUT_000.png, OUT_001.png, ...`;

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      out: { type: 'string', short: 'o', default: 'out.gif' },
      bundle: { type: 'string', default: join(dirname(fileURLToPath(import.meta.url)), 'bundle') },
      variant: { type: 'string' },
      seed: { type: 'string', default: '0' },
      steps: { type: 'string' },
      guidance: { type: 'string' },
      'negative-prompt': { type: 'string' },
      quiet: { type: 'boolean', short: 'q', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) return console.log(USAGE);
  if (positionals.length !== 1) {
    throw new BundleError(`give one PROMPT, got ${positionals.length} (see --help)`);
  }
  const kind = extname(values.out).toLowerCase();
  if (kind !== '.gif' && kind !== '.png') throw new BundleError(`-o ${values.out}: write a .gif or .png`);
  const number = (name, parse) => {
    if (values[name] === undefined) return undefined;
    const value = parse(values[name]);
    if (Number.isNaN(value)) throw new BundleError(`--${name}: not a number: ${values[name]}`);
    return value;
  };
  const osp = await load(values.bundle, { variant: values.variant });
  const loaded = performance.now();
  let firstFrame;
  const clip = await osp.generate(positionals[0], {
    seed: number('seed', Number),
    steps: number('steps', Number),
    guidance: number('guidance', Number),
    negativePrompt: values['negative-prompt'],
    onProgress: ({ stage, step, steps }) => {
      if (stage === 'done') firstFrame = performance.now();
      if (!values.quiet) process.stderr.write(`\r${stage} ${step}/${steps}   `);
    },
  });
  await mkdir(dirname(values.out) || '.', { recursive: true });
  const written = [];
  if (kind === '.gif') {
    await writeFile(values.out, encodeGif(clip.frames, clip.width, clip.height, clip.fps));
    written.push(values.out);
  } else {
    const stem = values.out.slice(0, -kind.length);
    for (const [i, rgba] of clip.frames.entries()) {
      const path = `${stem}_${String(i).padStart(3, '0')}.png`;
      await writeFile(path, encodePng(rgba, clip.width, clip.height));
      written.push(path);
    }
  }
  const done = performance.now(); // the frames are in their files
  if (!values.quiet) process.stderr.write('\n');
  const seconds = (t) => (t / 1000).toFixed(2); // performance.now() counts from the process's start
  console.log(
    JSON.stringify({
      written,
      variant: osp.variant,
      load_s: Number(seconds(loaded)),
      first_frame_s: Number(seconds(firstFrame)),
      total_s: Number(seconds(done)),
    }),
  );
}

main().catch((err) => {
  // Bad input gets one line and status 2; anything else is a bug and keeps its stack.
  if (err instanceof BundleError || String(err?.code).startsWith('ERR_PARSE_ARGS')) {
    console.error(`error: ${err.message}`);
    process.exit(2);
  }
  console.error(err);
  process.exit(1);
});
