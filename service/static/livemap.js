// A partial heatmap as a job streams it (GET /jobs/{id}/events: the JSON grid of format=json),
// drawn the way the service draws its PNGs (service/render/png.py): the same colormaps
// (service/render/colormap.py's anchors, interpolated to 256 entries; a test keeps the two
// lists equal), alpha = 0.8 x magnitude. The final map is still the service's own PNG.

const OPACITY = 0.8;
// prettier-ignore
const INFERNO = [
  [0, 0, 4], [11, 7, 36], [33, 12, 74], [61, 9, 101], [87, 16, 110], [113, 25, 110],
  [138, 34, 106], [163, 44, 97], [188, 55, 84], [210, 70, 68], [228, 90, 49], [241, 115, 29],
  [249, 142, 9], [252, 172, 17], [249, 203, 53], [242, 234, 105], [252, 255, 164],
];
// prettier-ignore
const RDBU_R = [
  [5, 48, 97], [23, 82, 144], [42, 113, 178], [63, 142, 192], [107, 172, 209],
  [155, 201, 224], [194, 221, 236], [224, 236, 243], [247, 246, 246], [251, 229, 216],
  [251, 204, 180], [245, 170, 137], [228, 128, 102], [208, 85, 72], [186, 40, 50],
  [147, 14, 38], [103, 0, 31],
];

function table(anchors) {
  const steps = anchors.length - 1;
  return Array.from({ length: 256 }, (_, i) => {
    const at = (i / 255) * steps;
    const low = Math.min(Math.floor(at), steps - 1);
    const t = at - low;
    return anchors[low].map((c, k) => Math.round(c + (anchors[low + 1][k] - c) * t));
  });
}

const SEQUENTIAL = table(INFERNO);
const DIVERGING = table(RDBU_R);

/** A PNG Blob of ``grid`` ({width, height, signed, values: rows}) in the service's colours. */
export async function gridPng(grid) {
  const canvas = document.createElement("canvas");
  canvas.width = grid.width;
  canvas.height = grid.height;
  const context = canvas.getContext("2d");
  const image = context.createImageData(grid.width, grid.height);
  const colours = grid.signed ? DIVERGING : SEQUENTIAL;
  let offset = 0;
  for (const row of grid.values) {
    for (const value of row) {
      const v = grid.signed ? Math.max(-1, Math.min(1, value)) : Math.max(0, Math.min(1, value));
      const [r, g, b] = colours[Math.round(grid.signed ? (v + 1) * 127.5 : v * 255)];
      image.data.set([r, g, b, Math.round(255 * OPACITY * Math.abs(v))], offset);
      offset += 4;
    }
  }
  context.putImageData(image, 0, 0);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}
