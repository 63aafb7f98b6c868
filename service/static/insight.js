// The "Model insight" tab: what the network has learned, layer by layer, from the /insight
// endpoints -- filters, the current photo's strongest activation maps, receptive fields, the
// training patches that excite a channel most, and images synthesised to excite a channel or a
// class. It shares only the photo the page shows (#photo), the chosen model and the API key with
// the rest; another model chosen starts it afresh (its layers are another network's).

import { chosenModel, describeError, getJson, send, withModel } from "./api.js";
import { onPagePhoto, photoBlob } from "./pagephoto.js";
import { addView, shownView } from "./tabs.js";

const GAP = 2; // pixels between grid tiles (service/insight/grid.py)
const TOP_MAPS = 16;
const $ = (id) => document.getElementById(id);

const section = $("insight");
const state = { layers: [], classes: [], photoUrl: null, photoShown: null, channels: [], urls: new Map() };
let started = null;

section.append(...buildSection());
addView(section, "Model insight", start);
onPagePhoto((url) => {
  state.photoUrl = url;
  refreshActivations();
});
chosenModel.onChange(() => {
  started = null;
  state.layers = [];
  state.photoShown = null;
  if (shownView() === "insight") start();
});

function buildSection() {
  const head = element("div", "section-head");
  head.append(
    element("h2", "", "What has the network learned?", { id: "insight-title" }),
    element("p", "", "Pick a layer, from the first convolution (stem) to the last stage (layer5), and a channel of it. " +
      "Click one of your photo's maps to pick its channel."),
  );

  const controls = element("form", "card insight-controls");
  controls.addEventListener("submit", (event) => event.preventDefault());
  const layer = element("select", "", "", { id: "insight-layer", name: "layer" });
  const channel = element("input", "", "", { id: "insight-channel", name: "channel", type: "number", min: "0", step: "1", value: "0", inputMode: "numeric" });
  layer.addEventListener("change", () => {
    channel.value = "0";
    showLayer();
  });
  channel.addEventListener("change", () => channel.reportValidity() && showChannel());
  controls.append(
    field("Layer", layer),
    field("Channel", channel),
    element("p", "hint insight-field", "", { id: "insight-field" }),
  );

  const synthesis = figure("insight-synthesis", "Synthesised to excite it",
    "Gradient ascent on the pixels from random colours, with smoothness penalties (a few seconds).");
  const classSelect = element("select", "", "", { id: "insight-class", name: "class" });
  const actions = element("div", "insight-actions");
  actions.append(
    element("button", "button", "Channel", { type: "button", id: "insight-maximize-channel" }),
    field("or class", classSelect),
    element("button", "button", "Class", { type: "button", id: "insight-maximize-class" }),
  );
  synthesis.append(actions);
  actions.children[0].addEventListener("click", () => synthesise({ layer: layer.value, channel: channel.value }));
  actions.children[2].addEventListener("click", () => synthesise({ class: classSelect.value }));

  const figures = element("div", "insight-figures");
  figures.append(
    figure("insight-filters", "Filters", "Each tile is one filter that makes a channel of this layer (mid-grey = 0)."),
    figure("insight-activations", "Your photo's strongest maps", "Choose a photo in the first tab."),
    figure("insight-patches", "Training patches that excite the channel most", ""),
    synthesis,
  );
  figures.querySelector("#insight-activations").addEventListener("click", pickChannel);
  return [head, controls, figures];
}

function element(tag, className, text = "", attributes = {}) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text) node.textContent = text;
  return Object.assign(node, attributes);
}

function field(label, input) {
  const wrapper = element("div", "field");
  wrapper.append(element("label", "", label, { htmlFor: input.id }), input);
  return wrapper;
}

function figure(id, title, caption) {
  const card = element("figure", "card insight-figure");
  card.dataset.state = "idle";
  const frame = element("div", "insight-frame");
  frame.append(element("img", "", "", { id, alt: "" }), element("div", "spinner", "", { hidden: true }));
  card.append(element("h3", "", title), frame, element("figcaption", "", caption, { id: `${id}-caption` }));
  return card;
}

/** First visit: the layers (with their receptive fields) and the classes, then everything. */
function start() {
  started ??= (async () => {
    try {
      const [fields, model] = await Promise.all([getJson("/insight/receptive-field"), getJson("/model")]);
      state.layers = fields.layers;
      state.classes = model.meta.classes;
    } catch (error) {
      started = null; // try again on the next visit (e.g. after the API key is entered)
      caption("insight-field", error);
      return;
    }
    $("insight-layer").replaceChildren(...state.layers.map((l) => new Option(`${l.name} (${l.channels} channels)`, l.name)));
    $("insight-class").replaceChildren(...state.classes.map((c) => new Option(c.name, c.id)));
    showLayer();
  })();
  if (state.layers.length) refreshActivations();
}

function currentLayer() {
  return state.layers.find((l) => l.name === $("insight-layer").value);
}

function showLayer() {
  const layer = currentLayer();
  if (!layer) return;
  $("insight-channel").max = String(layer.channels - 1);
  const { size, jump } = layer.rows;
  $("insight-field").textContent =
    `${layer.name}: ${layer.channels} maps of ${layer.height}×${layer.width}; each unit sees ${size}×${layer.cols.size} ` +
    `input pixels (its receptive field), and neighbouring units are ${jump} pixels apart.`;
  load("insight-filters", `/insight/filters?${new URLSearchParams({ layer: layer.name })}`,
    `The ${layer.channels} filters that make ${layer.name}'s channels` +
    (layer.name === "stem" ? ", in colour (7×7 on RGB)." : ", each averaged over its input channels."));
  refreshActivations(true);
  showChannel();
}

function showChannel() {
  const layer = currentLayer();
  if (!layer) return;
  const channel = Number($("insight-channel").value);
  const query = new URLSearchParams({ layer: layer.name, channel });
  load("insight-patches", `/insight/top-patches?${query}`,
    `Channel ${channel} of ${layer.name}: the 9 training images on which it peaks highest, cropped to the unit's receptive field.`);
}

/** Post the page's photo to /insight/activations (when this tab shows and it changed). */
async function refreshActivations(force = false) {
  const layer = currentLayer();
  if (!layer || !state.photoUrl || shownView() !== "insight") return;
  const key = `${state.photoUrl}|${layer.name}`;
  if (!force && state.photoShown === key) return;
  state.photoShown = key;
  const photo = await photoBlob(state.photoUrl);
  if (!photo) return; // the page has already moved on to another photo
  const body = new FormData();
  body.append("file", photo, "photo");
  const query = new URLSearchParams({ layer: layer.name, top: TOP_MAPS });
  await load("insight-activations", `/insight/activations?${query}`, "", { method: "POST", body }, (response) => {
    state.channels = (response.headers.get("X-Channels") ?? "").split(",").filter(Boolean).map(Number);
    return `Channels ${state.channels.join(", ")} of ${layer.name}, strongest first (black 0, yellow the strongest). Click a map to pick its channel.`;
  });
}

function pickChannel(event) {
  const img = event.currentTarget;
  const count = state.channels.length;
  if (!count || !img.naturalWidth) return;
  const columns = Math.ceil(Math.sqrt(count));
  const tile = (img.naturalWidth - (columns + 1) * GAP) / columns;
  const box = img.getBoundingClientRect();
  const scale = img.naturalWidth / box.width;
  const column = Math.floor(((event.clientX - box.left) * scale - GAP) / (tile + GAP));
  const row = Math.floor(((event.clientY - box.top) * scale - GAP) / (tile + GAP));
  const index = row * columns + column;
  if (column < 0 || column >= columns || index < 0 || index >= count) return;
  $("insight-channel").value = String(state.channels[index]);
  showChannel();
}

async function synthesise(params) {
  const buttons = document.querySelectorAll(".insight-actions .button");
  buttons.forEach((button) => (button.disabled = true));
  const query = new URLSearchParams({ ...params, format: "json" });
  try {
    await load("insight-synthesis", `/insight/maximize?${query}`, "", {}, async (response) => {
      const body = await response.json();
      const probability = body.probability_end === null ? ""
        : `; probability ${body.probability_start.toFixed(2)} → ${body.probability_end.toFixed(2)}`;
      const blob = await (await fetch(body.image)).blob();
      return [`${body.objective}: score ${body.score_start.toFixed(2)} → ${body.score_end.toFixed(2)}${probability} ` +
        `after ${body.steps} steps${body.cached ? " (cached)" : ""}.`, blob];
    });
  } finally {
    buttons.forEach((button) => (button.disabled = false));
  }
}

/** Fetch ``path`` into the image ``id``; ``describe(response)`` gives the caption (and, where it
 * reads the body itself, the image blob). Errors are shown in the caption, in plain words. */
async function load(id, path, text, init = {}, describe = null) {
  const img = $(id);
  const card = img.closest(".insight-figure");
  card.querySelector(".spinner").hidden = false;
  card.dataset.state = "busy";
  const request = (state.urls.get(id)?.request ?? 0) + 1;
  state.urls.set(id, { ...state.urls.get(id), request });
  try {
    const response = await send(withModel(path), { method: "GET", ...init });
    const described = describe ? await describe(response) : text;
    const [words, blob] = Array.isArray(described) ? described : [described, await response.blob()];
    if (state.urls.get(id).request !== request) return; // a newer request replaced this one
    const previous = state.urls.get(id).url;
    if (previous) URL.revokeObjectURL(previous);
    const url = URL.createObjectURL(blob);
    state.urls.set(id, { request, url });
    img.src = url;
    img.alt = words;
    await img.decode().catch(() => {});
    caption(`${id}-caption`, words);
    card.dataset.state = "done";
  } catch (error) {
    if (state.urls.get(id).request !== request) return;
    img.removeAttribute("src");
    caption(`${id}-caption`, error);
    card.dataset.state = "error";
  } finally {
    if (state.urls.get(id).request === request) card.querySelector(".spinner").hidden = true;
  }
}

function caption(id, content) {
  const node = $(id);
  if (!(content instanceof Error)) {
    node.textContent = content;
    node.classList.remove("alert", "small");
    return;
  }
  // The insight endpoints' own errors say what is valid; show their message as it is.
  const own = ["unknown_layer", "unknown_channel", "unknown_class", "no_top_patches"].includes(content.code);
  const { summary, detail } = describeError(content);
  node.textContent = own ? content.message : `${summary} ${detail}`;
  node.classList.add("alert", "small");
}
