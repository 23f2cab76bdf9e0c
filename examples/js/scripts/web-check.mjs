#!/usr/bin/env node
// Drive web/index.html in headless Chromium: serve examples/js and a bundle on 127.0.0.1, type a prompt,
// wait for the clip, save a screenshot and (optionally) the frames as raw RGBA bytes; print the page's
// timings as JSON. Used by tests/test_embed_js.py and benchmarks/embed.py.
//
//   node scripts/web-check.mjs --bundle DIR --prompt TEXT --screenshot shot.png [--frames clip.rgba]
//        [--seed N] [--steps N] [--variant fp32|fp16|int8] [--chromium /usr/bin/chromium] [--timeout SECONDS]

import { createReadStream } from 'node:fs';
import { stat, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { dirname, extname, join, normalize, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { chromium } from 'playwright-core';

const ROOT = dirname(dirname(fileURLToPath(import.meta.url)));
const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.mjs': 'text/javascript',
  '.js': 'text/javascript',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.onnx': 'application/octet-stream',
  '.txt': 'text/plain',
};

// A static server: /bundle/* from the bundle folder, everything else from examples/js. Local only.
function serve(bundle) {
  const server = createServer(async (request, response) => {
    const path = decodeURIComponent(new URL(request.url, 'http://localhost').pathname);
    const [root, rest] = path.startsWith('/bundle/') ? [bundle, path.slice(8)] : [ROOT, path.slice(1)];
    const file = normalize(join(root, rest));
    const info = await stat(file).catch(() => null);
    if (!file.startsWith(normalize(root) + sep) || !info?.isFile()) {
      response.writeHead(404).end('not found');
      return;
    }
    response.writeHead(200, {
      'content-type': TYPES[extname(file)] ?? 'application/octet-stream',
      'content-length': info.size,
    });
    createReadStream(file).pipe(response);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

async function main() {
  const { values } = parseArgs({
    options: {
      bundle: { type: 'string' },
      prompt: { type: 'string', default: 'a red circle moving left on a black background' },
      seed: { type: 'string', default: '0' },
      steps: { type: 'string' },
      variant: { type: 'string' },
      screenshot: { type: 'string' },
      frames: { type: 'string' },
      chromium: { type: 'string', default: '/usr/bin/chromium' },
      timeout: { type: 'string', default: '180' },
    },
  });
  if (!values.bundle || !values.screenshot) throw new Error('give --bundle DIR and --screenshot PNG');
  const timeout = Number(values.timeout) * 1000;
  const server = await serve(normalize(values.bundle));
  const query = new URLSearchParams({ bundle: '/bundle/' });
  if (values.variant) query.set('variant', values.variant);
  const url = `http://127.0.0.1:${server.address().port}/web/index.html?${query}`;
  // --no-sandbox: Chromium refuses to start its sandbox as root, which CI runs as.
  const browser = await chromium.launch({
    executablePath: values.chromium,
    headless: true,
    args: ['--no-sandbox'],
  });
  const messages = [];
  try {
    const page = await browser.newPage({ viewport: { width: 820, height: 720 } });
    page.on('console', (message) => messages.push(`console.${message.type()}: ${message.text()}`));
    page.on('pageerror', (err) => messages.push(`page error: ${err.message}`));
    const opened = performance.now();
    await page.goto(url);
    await page.waitForSelector('#status[data-state="ready"], #status[data-state="error"]', { timeout });
    await page.fill('#prompt', values.prompt);
    await page.fill('#seed', values.seed);
    if (values.steps) await page.fill('#steps', values.steps);
    const clicked = performance.now();
    await page.click('#go');
    await page.waitForSelector('#status[data-state="done"], #status[data-state="error"]', { timeout });
    const finished = performance.now();
    const state = await page.getAttribute('#status', 'data-state');
    const text = await page.textContent('#status');
    await page.waitForTimeout(300); // let the player draw a few frames before the picture
    await page.screenshot({ path: values.screenshot });
    if (state !== 'done') throw new Error(`the page says: ${text}`);
    const result = await page.evaluate(() => ({
      timings: window.ospTimings,
      frames: window.ospClip.frames.length,
      width: window.ospClip.width,
      height: window.ospClip.height,
      bytes: window.ospClip.frames.map((f) => Array.from(f)),
    }));
    if (values.frames) {
      await writeFile(values.frames, Buffer.from(result.bytes.flat()));
    }
    console.log(
      JSON.stringify({
        status: text,
        ...result.timings,
        frames: result.frames,
        width: result.width,
        height: result.height,
        page_open_to_ready_s: (clicked - opened) / 1000,
        click_to_done_s: (finished - clicked) / 1000,
      }),
    );
  } catch (err) {
    console.error(messages.join('\n'));
    throw err;
  } finally {
    await browser.close();
    server.close();
  }
}

main().catch((err) => {
  console.error(`error: ${err.message}`);
  process.exit(1);
});
