// How far two heatmaps of the same photo agree: Spearman's rank correlation of their values
// (the JSON grids of ``format=json``), over the pixels that either map marks. Ranks, not the
// values themselves: two methods' or two models' maps have their own scales, and "do they put
// the same pixels first?" is the question. Pixels where both maps are 0 (outside both models'
// face crops, or where neither found anything) say nothing about agreement and are left out.

/** Spearman's rho of grids ``a`` and ``b`` (``{width, height, values: rows}``), in [-1, 1];
 * null where it is undefined (fewer than two pixels marked, or a map constant over them). A
 * grid of another size is read at the nearest pixel of ``a``'s. */
export function mapAgreement(a, b) {
  const x = [];
  const y = [];
  for (let row = 0; row < a.height; row++) {
    const rowB = b.values[Math.min(b.height - 1, Math.floor(((row + 0.5) * b.height) / a.height))];
    for (let column = 0; column < a.width; column++) {
      const valueA = a.values[row][column];
      const valueB = rowB[Math.min(b.width - 1, Math.floor(((column + 0.5) * b.width) / a.width))];
      if (valueA === 0 && valueB === 0) continue;
      x.push(valueA);
      y.push(valueB);
    }
  }
  return x.length < 2 ? null : pearson(ranks(x), ranks(y));
}

/** The ranks of ``values`` (1 = the smallest), ties given the mean of their ranks. */
export function ranks(values) {
  const order = values.map((_, index) => index).sort((i, j) => values[i] - values[j]);
  const ranked = new Float64Array(values.length);
  for (let start = 0; start < order.length; ) {
    let end = start + 1;
    while (end < order.length && values[order[end]] === values[order[start]]) end++;
    const rank = (start + end + 1) / 2;  // the mean of ranks start+1 .. end
    for (let k = start; k < end; k++) ranked[order[k]] = rank;
    start = end;
  }
  return ranked;
}

function pearson(x, y) {
  const n = x.length;
  let meanX = 0;
  let meanY = 0;
  for (let i = 0; i < n; i++) {
    meanX += x[i] / n;
    meanY += y[i] / n;
  }
  let covariance = 0;
  let varianceX = 0;
  let varianceY = 0;
  for (let i = 0; i < n; i++) {
    const dx = x[i] - meanX;
    const dy = y[i] - meanY;
    covariance += dx * dy;
    varianceX += dx * dx;
    varianceY += dy * dy;
  }
  if (varianceX === 0 || varianceY === 0) return null;
  return Math.max(-1, Math.min(1, covariance / Math.sqrt(varianceX * varianceY)));
}
