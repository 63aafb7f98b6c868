// The "Compare models" tab: one photo explained by two or more models with one method, side by
// side. Per model: its label and top class probabilities (/predict with ``model=``) and its map
// of its own answer (an explanation panel that asks that model); above them, whether the models
// agree on the label; under them, for each pair of models, how far their maps agree
// (agreement.js). The tab shows only where the service serves two models or more.

import { describeError, postImage } from "./api.js";
import { mapAgreement } from "./agreement.js";
import { percent, probabilityBars } from "./bars.js";
import { loadMethods } from "./methods.js";
import { modelTitle, served } from "./models.js";
import { onPagePhoto, photoBlob } from "./pagephoto.js";
import { ExplanationPanel } from "./panel.js";
import { addView } from "./tabs.js";

const TOP_CLASSES = 3;
const CHOSEN_AT_FIRST = 2;
const $ = (id) => document.getElementById(id);
const section = $("compare");
const form = $("compare-form");
const part = (name) => form.querySelector(`[data-part="${name}"]`);
// photo: the one to compare on, the latest of the first tab's and one chosen here:
// {file, url} (file null until read from the first tab's url)
const state = { photo: null, ownUrl: null, methods: null, run: null, columns: [] };

const tab = addView(section, "Compare models", showMethods);
tab.hidden = true;
served.onLoad((list) => {
  tab.hidden = list.models.length < 2;
  showModels(list);
});
onPagePhoto((url) => {
  state.photo = { file: null, url };
  part("photo-note").textContent = "Uses the photo of the first tab (or choose another here).";
});
$("compare-file").addEventListener("change", (event) => {
  const file = event.target.files[0];
  event.target.value = "";  // choosing the same file again still triggers a change
  if (!file) return;
  if (state.ownUrl) URL.revokeObjectURL(state.ownUrl);
  state.ownUrl = URL.createObjectURL(file);
  state.photo = { file, url: state.ownUrl };
  part("photo-note").textContent = `Uses ${file.name || "the photo chosen here"}.`;
  compare();
});
form.addEventListener("submit", (event) => {
  event.preventDefault();
  compare();
});

/** A checkbox per served model, the first two ticked (the chosen ones kept on a new read). */
function showModels({ models, maxLoaded }) {
  const ticked = new Set(checkedModels());
  const keep = models.some(({ name }) => ticked.has(name));
  part("models").replaceChildren(
    ...models.map((model, index) => {
      const box = Object.assign(document.createElement("input"), { type: "checkbox", name: "models", value: model.name });
      box.checked = !model.unavailable && (keep ? ticked.has(model.name) : index < CHOSEN_AT_FIRST);
      box.disabled = Boolean(model.unavailable);  // failed its load-time checks: says why on hover
      const label = document.createElement("label");
      label.title = model.unavailable ?? "";
      label.append(box, modelTitle(model));
      return label;
    }),
  );
  const held = maxLoaded ? ` The service keeps ${maxLoaded} loaded at once; a model's first use loads it (seconds).` : "";
  form.querySelector(".compare-models .hint").textContent = `two or more.${held}`;
}

function checkedModels() {
  return [...form.querySelectorAll("input[name=models]:checked")].map((box) => box.value);
}

/** The methods (GET /explain) to choose from, read on the first visit; the first that answers
 * at once (not a job) is chosen. */
async function showMethods() {
  if (state.methods) return;
  try {
    state.methods = (await loadMethods()).methods;
  } catch (error) {
    return showError(error);
  }
  const select = $("compare-method");
  select.replaceChildren(...state.methods.map((method) => new Option(method.title, method.name)));
  select.value = (state.methods.find((method) => !method.anytime) ?? state.methods[0])?.name ?? "";
}

/** Every ticked model on the photo, side by side, then the agreement of their maps. */
async function compare() {
  await showMethods();
  const names = checkedModels();
  const method = state.methods?.find(({ name }) => name === $("compare-method").value);
  const why =
    names.length < 2 ? "Choose two or more models to compare." :
    !state.photo ? "Choose a photo first, here or in the first tab." :
    !method ? "Choose an explanation method." : "";
  showError(why || null);
  if (why) return;

  state.run?.abort();
  for (const column of state.columns) column.panel.stop();
  const run = (state.run = new AbortController());
  const photo = await readPhoto(state.photo);
  if (run.signal.aborted) return;
  if (!photo) return showError("The photo is gone: choose it again.");
  section.dataset.state = "busy";
  state.columns = names.map((name) => column(name, method));
  $("compare-columns").replaceChildren(...state.columns.map(({ element }) => element));
  $("compare-verdict").hidden = true;
  $("compare-agreement").hidden = true;

  await Promise.all(state.columns.map((one) => runColumn(one, photo, run.signal)));
  if (run.signal.aborted) return;
  showVerdict(state.columns);
  await showAgreement(state.columns, run.signal);
  if (!run.signal.aborted) section.dataset.state = "done";
}

async function readPhoto(photo) {
  if (photo.file) return photo;
  const blob = await photoBlob(photo.url);
  return blob && { file: new File([blob], "photo", { type: blob.type }), url: photo.url };
}

/** One model's column: its name, a status line, label, bars, and a panel asking that model. */
function column(name, method) {
  const element = node("div", "compare-column");
  element.dataset.model = name;
  const card = node("div", "card compare-prediction");
  const title = node("h3", "", name);
  const status = node("p", "hint compare-status");
  status.setAttribute("role", "status");
  const label = node("span", "label");
  const confidence = node("span", "confidence");
  const headline = node("p", "headline");
  headline.append(label, " ", confidence);
  const marker = node("p", "disagrees", "");
  marker.hidden = true;
  const bars = node("ol", "bars");
  const error = node("div", "alert small");
  error.setAttribute("role", "alert");
  error.hidden = true;
  card.append(title, status, headline, marker, bars, error);
  const panel = new ExplanationPanel(method, { model: name, kind: "compare-panel" });
  element.append(card, panel.element);
  return { name, element, title, status, label, confidence, marker, bars, error, panel, prediction: null };
}

async function runColumn(one, photo, signal) {
  const { name, status } = one;
  one.element.dataset.state = "busy";
  // a model's first request waits for it to load (seconds): say so rather than look stuck
  status.textContent = served.loading(name) ? `Loading ${name}…` : "Classifying…";
  try {
    one.prediction = await postImage("/predict", photo.file, { model: name, signal });
  } catch (error) {
    if (signal.aborted) return;
    const { summary, detail } = describeError(error);
    one.error.replaceChildren(summary, node("small", "", detail));
    one.error.hidden = false;
    status.textContent = "";
    one.element.dataset.state = "error";
    return;
  }
  served.answered(name);
  const { prediction } = one;
  one.title.textContent = `${prediction.model.name} ${prediction.model.version}`;
  one.label.textContent = (prediction.open_set?.known === false ? "closest: " : "") + prediction.name;
  one.label.dataset.label = prediction.label;
  one.confidence.textContent = percent(prediction.probability);
  one.bars.replaceChildren(...probabilityBars(prediction.probabilities, prediction.label, { top: TOP_CLASSES }));
  const classes = prediction.probabilities.map(({ id, name: className }) => ({ id, name: className }));
  one.panel.show(photo, classes, prediction.label);
  status.textContent = `Explaining ${prediction.name} with ${one.panel.method.title}…`;
  await one.panel.run();
  if (signal.aborted) return;
  status.textContent = "";
  one.element.dataset.state = one.panel.element.dataset.state;
}

/** Whether the models agree on the label; a marker on each column that differs from the
 * label most of them give. */
function showVerdict(columns) {
  const answered = columns.filter(({ prediction }) => prediction);
  if (answered.length < 2) return;
  const votes = new Map();
  for (const { prediction } of answered) votes.set(prediction.label, (votes.get(prediction.label) ?? 0) + 1);
  const [majority] = [...votes].sort((a, b) => b[1] - a[1])[0];
  const agree = votes.size === 1;
  const verdict = $("compare-verdict");
  verdict.dataset.agree = String(agree);
  verdict.textContent = agree
    ? `The ${answered.length} models agree: ${answered[0].prediction.name}.`
    : "The models disagree on the label: " +
      answered.map(({ name, prediction }) => `${name} says ${prediction.name}`).join(", ") +
      ". Each map explains its own model's answer.";
  verdict.hidden = false;
  for (const { prediction, marker, element } of answered) {
    const differs = !agree && prediction.label !== majority;
    element.dataset.disagrees = String(!agree);
    marker.hidden = agree;
    marker.textContent = differs ? "Disagrees with the others" : "The models disagree";
  }
}

/** For each pair of finished maps: Spearman's rank correlation of their values. */
async function showAgreement(columns, signal) {
  const done = columns.filter(({ panel }) => panel.element.dataset.state === "done");
  const answers = await Promise.all(done.map(({ panel }) => panel.json().catch(() => null)));
  if (signal.aborted) return;
  const pairs = [];
  for (let i = 0; i < done.length; i++) {
    for (let j = i + 1; j < done.length; j++) {
      if (answers[i] && answers[j]) pairs.push(pair(done[i], answers[i], done[j], answers[j]));
    }
  }
  $("compare-agreement").querySelector("[data-part=pairs]").replaceChildren(...pairs);
  $("compare-agreement").hidden = !pairs.length;
}

function pair(a, answerA, b, answerB) {
  const negligible = answerA.heatmap.negligible || answerB.heatmap.negligible;
  const rho = negligible ? null : mapAgreement(answerA.heatmap, answerB.heatmap);
  const item = node("li", "pair");
  item.dataset.models = `${a.name} ${b.name}`;
  item.dataset.rho = rho === null ? "" : rho.toFixed(4);
  const names = node("span", "names", `${a.name} and ${b.name}`);
  const value = node("span", "rho", rho === null ? "ρ n/a" : `ρ = ${rho.toFixed(2)}`);
  const words = negligible
    ? "a map is negligible (no evidence), so there is nothing to rank"
    : rho === null
      ? "a map is flat over the marked pixels, so there is nothing to rank"
      : agreementWords(rho);
  const same = a.prediction.label === b.prediction.label;
  const labels = same
    ? `both say ${a.prediction.name}`
    : `different labels: ${a.prediction.name} and ${b.prediction.name}, so the maps explain different classes`;
  item.append(names, value, node("span", "says", `${words}; ${labels}.`));
  return item;
}

function agreementWords(rho) {
  if (rho >= 0.7) return "largely the same pixels matter most to both";
  if (rho >= 0.3) return "partly the same pixels";
  if (rho > -0.3) return "little relation: they look at different pixels";
  return "opposite orders: what one ranks first, the other ranks last";
}

function showError(error) {
  const box = part("error");
  box.hidden = !error;
  if (!error) return box.replaceChildren();
  if (typeof error === "string") return box.replaceChildren(error);
  const { summary, detail } = describeError(error);
  box.replaceChildren(summary, node("small", "", detail));
}

function node(tag, className, text = undefined) {
  const element = document.createElement(tag);
  if (className) element.className = className;
  if (text !== undefined) element.textContent = text;
  return element;
}
