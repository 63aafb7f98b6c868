// The page: upload a photo (picker, drag and drop, paste), show the prediction with its face
// box and class probabilities, and run the explanation panels on it: for the predicted class, a
// class bar's, and against the "Why not …?" class; and the stranger check (stranger.js). Where
// the service serves several models, all of it comes from the model chosen beside the upload
// (models.js); choosing another asks it about the same photo again.

import { apiKey, chosenModel, describeError, getJson, postImage } from "./api.js";
import { percent, probabilityBars } from "./bars.js";
import { loadMethods } from "./methods.js";
import { ModelChoice, served } from "./models.js";
import { ExplanationPanel } from "./panel.js";
import { StrangerCheck } from "./stranger.js";
import { ContrastChoice } from "./whynot.js";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const READY_RETRY_MS = 3000;

const state = { file: null, photo: null, predicting: null };
const stranger = new StrangerCheck($("stranger"), $("stranger-toggle"));
const whyNot = new ContrastChoice($("contrast"), explainAgainst);
const panelsReady = buildPanels();
const modelChoice = new ModelChoice($("model-choice"), $("model"));
served.onLoad((list) => modelChoice.show(list));
chosenModel.onChange((model, previous) => {
  if (!previous) return;  // the service's default, named now that the list is read: no change
  refreshSanity();
  if (state.file) analyse(state.file);
});

setUpKey();
setUpUpload();
checkReady();
if (apiKey.get()) served.ensure();

/** One panel per method of GET /explain (none when the list cannot be read), and the rule of
 * their quality lights. */
async function buildPanels() {
  const { methods, rule } = await loadMethods().catch(() => ({ methods: [], rule: "" }));
  $("quality-rule").querySelector("[data-part=rule]").textContent = rule;
  $("quality-rule").hidden = !rule;
  stranger.setMethods(methods);
  const panels = methods.map((method) => new ExplanationPanel(method));
  $("panels").append(...panels.map((panel) => panel.element));
  return panels;
}

async function checkReady(waited = false) {
  const status = $("status");
  try {
    const ready = await getJson("/readyz", { model: null });
    status.textContent = `Model ${ready.model.name} ${ready.model.version} ready (${ready.provider.replace("ExecutionProvider", "")})`;
    status.dataset.state = "ready";
    if (waited) refreshSanity();
  } catch (error) {
    status.textContent = `Model not ready: ${error.message}`;
    status.dataset.state = "waiting";
    setTimeout(() => checkReady(true), READY_RETRY_MS);
  }
}

/** The methods' sanity results once the model is loaded (GET /explain has none before), or of
 * the model just chosen. */
async function refreshSanity() {
  const [{ methods }, panels] = await Promise.all([loadMethods(), panelsReady]).catch(() => [{ methods: [] }, []]);
  const sanity = new Map(methods.map((method) => [method.name, method.sanity ?? null]));
  for (const panel of panels) {
    if (sanity.has(panel.method.name)) panel.showSanity(sanity.get(panel.method.name));
  }
}

function setUpKey() {
  const input = $("api-key");
  input.value = apiKey.get();
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    apiKey.set(input.value.trim());
    $("key-box").open = false;
    served.ensure();  // GET /models may have needed the key
    if (state.file) analyse(state.file);  // retry the photo that needed the key
  });
}

function setUpUpload() {
  const input = $("file");
  input.addEventListener("change", () => {
    analyse(input.files[0]);
    input.value = "";  // choosing the same file again still triggers a change
  });
  const zone = $("drop-zone");
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  for (const type of ["dragleave", "dragend"]) {
    document.addEventListener(type, (event) => {
      if (!event.relatedTarget) zone.classList.remove("dragging");
    });
  }
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    analyse(event.dataTransfer?.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const file = [...(event.clipboardData?.files ?? [])][0];
    if (!file) return;  // pasting text into a field stays as it is
    event.preventDefault();
    analyse(file);
  });
}

/** Classify ``file``; on success show it and run every explanation panel on it. */
async function analyse(file) {
  if (!file) return;
  state.file = file;
  state.predicting?.abort();
  const abort = (state.predicting = new AbortController());
  showError(null);
  const zone = $("drop-zone");
  const model = chosenModel.get();
  // a model's first request waits for it to load (seconds): say so rather than look stuck
  zone.dataset.busy = served.loading(model) ? `Loading ${model}…` : "Classifying…";
  zone.setAttribute("aria-busy", "true");
  let prediction;
  try {
    prediction = await postImage("/predict", file, { signal: abort.signal });
    served.ensure();  // a request passes now: the list of models can be read
    served.answered(prediction.model?.name);
  } catch (error) {
    if (!abort.signal.aborted) showError(error);
    return;
  } finally {
    if (state.predicting === abort) zone.setAttribute("aria-busy", "false");
  }
  if (abort.signal.aborted) return;
  if (state.photo) URL.revokeObjectURL(state.photo.url);
  state.photo = { file, url: URL.createObjectURL(file) };
  await showPrediction(prediction, state.photo.url);
  const classes = prediction.probabilities
    .map(({ id, name }) => ({ id, name }))
    .sort((a, b) => a.name.localeCompare(b.name));
  whyNot.show(classes, prediction.label);
  const panels = await panelsReady;
  $("explanations").hidden = false;
  for (const panel of panels) {
    panel.show(state.photo, classes, prediction.label);
    panel.run();
  }
  stranger.show(prediction, state.photo, classes);
}

function showError(error) {
  const box = $("error");
  box.hidden = !error;
  if (!error) return box.replaceChildren();
  const { summary, detail } = describeError(error);
  const small = document.createElement("small");
  small.textContent = detail;
  box.replaceChildren(summary, small);
  if (error.code === "missing_api_key" || error.code === "invalid_api_key") {
    $("key-box").open = true;
    $("api-key").focus();
  }
}

async function showPrediction(prediction, url) {
  const photo = $("photo");
  photo.src = url;
  await photo.decode().catch(() => {});
  drawBoxes(prediction);
  showVerdict(prediction);
  showBars(prediction);
  const { model, image, timings, batch_size: batch } = prediction;
  $("timings").textContent =
    `model ${model.name} ${model.version} · ${image.width}×${image.height} ${image.format} · ` +
    `inference ${ms(timings.inference_ms)} (batch of ${batch}) · total ${ms(timings.total_ms)}`;
  $("timings").dataset.model = model.name;
  $("result").hidden = false;
}

function drawBoxes({ image, face_box: used, faces = [] }) {
  const svg = $("boxes");
  svg.setAttribute("viewBox", `0 0 ${image.width} ${image.height}`);
  const rect = (box, className) => {
    const element = document.createElementNS(SVG, "rect");
    for (const key of ["x", "y", "width", "height"]) element.setAttribute(key, box[key]);
    element.setAttribute("class", className);
    return element;
  };
  const others = faces.filter((face) => !sameBox(face, used));
  svg.replaceChildren(...others.map((face) => rect(face, "other-face")));
  if (used && used.source !== "whole_image") svg.append(rect(used, "used-face"));

  const caption = $("face-caption");
  if (!used || used.source === "whole_image") {
    caption.textContent = "No face box: the whole photo was classified.";
  } else {
    const score = faces.find((face) => sameBox(face, used))?.score;
    caption.textContent =
      `Classified the detected face (solid box${score === undefined ? "" : `, detector score ${score.toFixed(2)}`})` +
      (others.length ? `; ${others.length} other face${others.length > 1 ? "s" : ""} dashed.` : ".");
  }
  $("photo").alt = `The uploaded photo${used && used.source !== "whole_image" ? ", with the face used marked" : ""}`;
}

function sameBox(a, b) {
  return Boolean(a && b) && ["x", "y", "width", "height"].every((key) => a[key] === b[key]);
}

function showVerdict({ open_set: openSet, probabilities }) {
  const verdict = $("verdict");
  verdict.hidden = !openSet;
  $("label").classList.toggle("unknown", Boolean(openSet && !openSet.known));
  if (!openSet) return;
  const test = `score ${openSet.score.toFixed(2)} ${openSet.known ? "≥" : "<"} threshold ${openSet.threshold.toFixed(2)}`;
  verdict.dataset.known = String(openSet.known);
  verdict.replaceChildren(
    openSet.known
      ? `Known face: one of the ${probabilities.length} people the model knows`
      : `Unknown: probably none of the ${probabilities.length} people the model knows`,
    Object.assign(document.createElement("small"), { textContent: ` (${test})` }),
  );
}

function showBars(prediction) {
  const label = $("label");
  label.textContent = (prediction.open_set?.known === false ? "closest: " : "") + prediction.name;
  label.dataset.label = prediction.label;
  $("confidence").textContent = percent(prediction.probability);
  $("bars").replaceChildren(...probabilityBars(prediction.probabilities, prediction.label, { onChoose: explainClass }));
}

async function explainClass(classId) {
  for (const button of $("bars").querySelectorAll("button")) {
    button.setAttribute("aria-pressed", String(button.dataset.classId === classId));
  }
  whyNot.setTarget(classId);
  for (const panel of await panelsReady) {
    panel.setTarget(classId);
    panel.setContrast(whyNot.value);
    panel.run();
  }
}

/** Every panel again, as "why the target and not ``classId``" ("": plain maps). */
async function explainAgainst(classId) {
  for (const panel of await panelsReady) {
    panel.setContrast(classId);
    panel.run();
  }
}

function ms(value) {
  return value >= 1000 ? `${(value / 1000).toFixed(1)} s` : `${Math.round(value)} ms`;
}
