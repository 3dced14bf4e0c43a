// Draws the extension's icon, media/icon.png (128x128 RGBA), with no dependencies: three lines of code on a
// dark rounded square, the middle one ending in a cursor and a faded run of "ghost text" after it.
//
//   node media/make-icon.mjs [out.png]
//
// Shapes are signed-distance rounded rectangles, 4x4 supersampled; the PNG is written with node:zlib.
import { writeFileSync } from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { crc32, deflateSync } from "node:zlib";

const SIZE = 128;
const SAMPLES = 4;

/** [x0, y0, x1, y1, radius, [r, g, b, a]] in icon pixels, painted in order. */
const SHAPES = [
  [4, 4, 124, 124, 24, [0x1e, 0x22, 0x30, 255]], // background
  [24, 34, 76, 46, 6, [0x7a, 0xa2, 0xf7, 255]], // code line 1
  [24, 58, 58, 70, 6, [0xe0, 0xaf, 0x68, 255]], // code line 2, typed...
  [62, 54, 67, 74, 2, [0xff, 0xff, 0xff, 255]], // ...the cursor...
  [72, 58, 104, 70, 6, [0x9a, 0xa5, 0xce, 110]], // ...and the ghost text after it
  [36, 82, 92, 94, 6, [0x9e, 0xce, 0x6a, 255]], // code line 3
];

function roundedBoxDistance(x, y, [x0, y0, x1, y1, r]) {
  const cx = (x0 + x1) / 2;
  const cy = (y0 + y1) / 2;
  const qx = Math.abs(x - cx) - ((x1 - x0) / 2 - r);
  const qy = Math.abs(y - cy) - ((y1 - y0) / 2 - r);
  return Math.hypot(Math.max(qx, 0), Math.max(qy, 0)) + Math.min(Math.max(qx, qy), 0) - r;
}

/** Straight-alpha RGBA pixels, row by row. */
export function drawIcon() {
  const pixels = Buffer.alloc(SIZE * SIZE * 4);
  for (let py = 0; py < SIZE; py++) {
    for (let px = 0; px < SIZE; px++) {
      let [r, g, b, a] = [0, 0, 0, 0]; // premultiplied sums over the samples
      for (let sy = 0; sy < SAMPLES; sy++) {
        for (let sx = 0; sx < SAMPLES; sx++) {
          const x = px + (sx + 0.5) / SAMPLES;
          const y = py + (sy + 0.5) / SAMPLES;
          let [sr, sg, sb, sa] = [0, 0, 0, 0];
          for (const shape of SHAPES) {
            if (roundedBoxDistance(x, y, shape) <= 0) {
              const [cr, cg, cb, ca] = shape[5];
              const alpha = ca / 255;
              [sr, sg, sb] = [cr * alpha + sr * (1 - alpha), cg * alpha + sg * (1 - alpha), cb * alpha + sb * (1 - alpha)];
              sa = alpha + sa * (1 - alpha);
            }
          }
          [r, g, b, a] = [r + sr, g + sg, b + sb, a + sa];
        }
      }
      const n = SAMPLES * SAMPLES;
      const i = (py * SIZE + px) * 4;
      const alpha = a / n;
      pixels[i] = alpha > 0 ? Math.round(r / n / alpha) : 0;
      pixels[i + 1] = alpha > 0 ? Math.round(g / n / alpha) : 0;
      pixels[i + 2] = alpha > 0 ? Math.round(b / n / alpha) : 0;
      pixels[i + 3] = Math.round(alpha * 255);
    }
  }
  return pixels;
}

function chunk(type, data) {
  const length = Buffer.alloc(4);
  length.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type, "latin1"), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([length, body, crc]);
}

/** A PNG file (8-bit RGBA, no filter) of `pixels`. */
export function encodePng(pixels, width = SIZE, height = SIZE) {
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header.set([8, 6, 0, 0, 0], 8); // bit depth 8, colour type RGBA, deflate, no filter method, no interlace
  const rows = Buffer.alloc((width * 4 + 1) * height);
  for (let y = 0; y < height; y++) {
    pixels.copy(rows, y * (width * 4 + 1) + 1, y * width * 4, (y + 1) * width * 4); // filter byte 0 first
  }
  const signature = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  return Buffer.concat([signature, chunk("IHDR", header), chunk("IDAT", deflateSync(rows, { level: 9 })), chunk("IEND", Buffer.alloc(0))]);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const out = process.argv[2] ?? path.join(path.dirname(fileURLToPath(import.meta.url)), "icon.png");
  writeFileSync(out, encodePng(drawIcon()));
  console.log(`wrote ${out}`);
}
