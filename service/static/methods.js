// The explanation panels: which endpoint each calls, which of its query parameters the page
// offers as controls (ranges and defaults come from the OpenAPI document), and one line that
// teaches what the method shows.

export const PANELS = [
  {
    id: "saliency",
    title: "Saliency",
    path: "/saliency",
    controls: [{ name: "method", label: "Method", exclude: ["gradcam"] }],
    teaches:
      "The gradient of the class score with respect to every pixel: bright pixels are those " +
      "where a tiny change would move the score the most.",
  },
  {
    id: "occlusion",
    title: "Occlusion",
    path: "/occlusion",
    controls: [
      { name: "window", label: "Window" },
      { name: "stride", label: "Stride" },
      { name: "baseline", label: "Hidden patch" },
    ],
    teaches:
      "Hide one square patch at a time and watch the class score: red where hiding the patch " +
      "lowers the score (it supported the class), blue where it raises it.",
  },
  {
    id: "lime",
    title: "LIME",
    path: "/lime",
    controls: [
      { name: "num_samples", label: "Samples" },
      { name: "num_segments", label: "Superpixels" },
      { name: "seed", label: "Seed" },
    ],
    teaches:
      "Switch superpixels (regions of similar colour) on and off at random, score every " +
      "variant, and fit a local linear model: each region is coloured by its weight.",
  },
  {
    id: "gradcam",
    title: "Grad-CAM",
    path: "/saliency",
    fixed: { method: "gradcam" },
    controls: [],
    teaches:
      "The feature maps of a late convolutional layer, each weighted by the class score's " +
      "average gradient over it, then summed: a coarse map of where the network looked.",
  },
];

// Methods whose maps are signed: positive = evidence for the class, negative = against it.
// The others show magnitude only.
const SIGNED_METHODS = new Set(["integrated_gradients", "occlusion", "lime"]);

export function isSigned(method) {
  return SIGNED_METHODS.has(method);
}
