// The portable initial noise of osp (osp/diffusion/portable_noise.py): Philox4x32-10 keyed by the seed,
// one block of four 32-bit words per two elements, turned into two normals by Box-Muller in float64 and
// rounded to float32. Same seed, same shape -> the same float32 values as `osp generate --noise portable`.

const M0 = 0xd2511f53;
const M1 = 0xcd9e8d57;
const W0 = 0x9e3779b9;
const W1 = 0xbb67ae85;
const TWO16 = 65536;
const TWO26 = 67108864;
const TWO32 = 4294967296;
const TWO53 = 9007199254740992;

// The high 32 bits of the 64-bit product of two uint32 values, exact in float64: a = ah * 2^16 + al.
function mulhi(a, b) {
  const high = (a >>> 16) * b; // < 2^48
  const low = (a & 0xffff) * b; // < 2^48
  const top = Math.floor(high / TWO16);
  return (top + Math.floor(((high - top * TWO16) * TWO16 + low) / TWO32)) >>> 0;
}

/** Philox4x32-10 of the counter (c0, c1, c2, c3) under the key (k0, k1): four uint32 words. */
export function philox4x32(c0, c1, c2, c3, k0, k1) {
  for (let round = 0; round < 10; round++) {
    const hi0 = mulhi(M0, c0);
    const lo0 = Math.imul(M0, c0) >>> 0;
    const hi1 = mulhi(M1, c2);
    const lo1 = Math.imul(M1, c2) >>> 0;
    c0 = (hi1 ^ c1 ^ k0) >>> 0;
    c1 = lo1;
    c2 = (hi0 ^ c3 ^ k1) >>> 0;
    c3 = lo0;
    k0 = (k0 + W0) >>> 0;
    k1 = (k1 + W1) >>> 0;
  }
  return [c0, c1, c2, c3];
}

/** `count` standard normals of one clip's latent (C-order), as float32. */
export function portableNoise(count, seed) {
  if (!Number.isSafeInteger(seed) || seed < 0) {
    throw new RangeError(`seed: the portable noise takes an integer in [0, 2^53), got ${seed}`);
  }
  const k0 = seed % TWO32;
  const k1 = Math.floor(seed / TWO32);
  const out = new Float32Array(count);
  for (let n = 0; n < count; n += 2) {
    const block = n / 2;
    const [w0, w1, w2, w3] = philox4x32(block % TWO32, Math.floor(block / TWO32), 0, 0, k0, k1);
    const u1 = ((w0 >>> 5) * TWO26 + (w1 >>> 6) + 0.5) / TWO53;
    const u2 = ((w2 >>> 5) * TWO26 + (w3 >>> 6)) / TWO53;
    const radius = Math.sqrt(-2.0 * Math.log(u1));
    const angle = 2.0 * Math.PI * u2;
    out[n] = radius * Math.cos(angle); // a Float32Array store rounds to nearest float32
    if (n + 1 < count) out[n + 1] = radius * Math.sin(angle);
  }
  return out;
}
