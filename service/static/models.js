// The models the service serves (GET /models) and the page's choice among them: a select beside
// the upload, hidden where there is only one model, each option with the model's test accuracy.
// The choice goes to api.js (``chosenModel``), so that every request of the page asks that model.
// A service without GET /models (an older one) serves one model: the page names none.

import { ApiError, chosenModel, getJson } from "./api.js";

/** ``{default, maxLoaded, models}`` as GET /models lists them: ``models`` ``[{name, version,
 * default, loaded, accuracy, classes, ...}]`` (``accuracy``: the test accuracy, or null). A
 * service without GET /models (an older one, 404) serves one model: none listed. */
async function loadModels() {
  try {
    const answer = await getJson("/models", { model: null });
    const models = answer.models.map((model) => ({ ...model, accuracy: model.metrics?.test_accuracy ?? null }));
    return { default: answer.default, maxLoaded: answer.max_loaded ?? null, models };
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return { default: null, maxLoaded: null, models: [] };
    throw error;
  }
}

/** "celebs8 1.0.0 · test accuracy 99.6 %" (and "default" for the service's default, or
 * "unavailable" for a bundle that failed its load-time checks). */
export function modelTitle(model) {
  const accuracy = model.accuracy == null ? "no test accuracy" : `test accuracy ${(model.accuracy * 100).toFixed(1)} %`;
  const note = model.unavailable ? " · unavailable" : model.default ? " · default" : "";
  return `${model.name} ${model.version} · ${accuracy}${note}`;
}

/** What the page knows of the served models, shared by its views: the list, and whether each
 * is loaded (a request to a model that is not waits for it to load: the page says so).
 *
 * GET /models is behind the API key where the service has one, and a refused request is an
 * error in the browser's console: the page reads the list once it knows a request can pass (a
 * key entered, or a first answer from /predict), not on every load. ``onLoad(listener)``:
 * ``listener(list)`` now if the list has been read, and after every read. */
class ModelList {
  constructor() {
    this.models = [];
    this.maxLoaded = null;
    this.listeners = [];
    this.read = false;
    this.reading = null;
  }

  /** Read the list unless it has been read (or is being read). */
  ensure() {
    if (!this.read) this.reading ??= this.reload().finally(() => (this.reading = null));
    return this.reading;
  }

  /** Read the list (again); one that cannot be read (the key is missing or wrong, the service
   * is away) changes nothing, and the next ``ensure()`` tries again. */
  async reload() {
    let answer;
    try {
      answer = await loadModels();
    } catch {
      return this;
    }
    Object.assign(this, { models: answer.models, maxLoaded: answer.maxLoaded, read: true });
    for (const listener of this.listeners) listener(this);
    return this;
  }

  onLoad(listener) {
    this.listeners.push(listener);
    if (this.read) listener(this);
  }

  byName(name) {
    return this.models.find((model) => model.name === name) ?? null;
  }

  /** Whether a request to ``name`` waits for the model to load (unknown models: no). */
  loading(name) {
    return this.byName(name)?.loaded === false;
  }

  /** ``name`` answered a request: it is loaded now. */
  answered(name) {
    const model = this.byName(name);
    if (model) model.loaded = true;
  }
}

/** The served models (GET /models). */
export const served = new ModelList();

/** The page's model select (``select`` inside ``wrapper``, which is hidden for fewer than two
 * models): fills it from ``list`` and sets ``chosenModel`` on every choice. */
export class ModelChoice {
  constructor(wrapper, select) {
    this.wrapper = wrapper;
    this.select = select;
    select.addEventListener("change", () => chosenModel.set(select.value));
  }

  /** Offer the models of ``list`` (``served``): the one chosen before if it is still there, else
   * the service's default. */
  show({ models }) {
    this.wrapper.hidden = models.length < 2;
    if (!models.length) return;
    this.select.replaceChildren(
      ...models.map((model) => {
        const option = new Option(modelTitle(model), model.name);
        option.disabled = Boolean(model.unavailable);
        option.title = model.unavailable ?? "";
        return option;
      }),
    );
    const kept = models.find((model) => model.name === chosenModel.get());
    const chosen = kept ?? models.find((model) => model.default) ?? models[0];
    this.select.value = chosen.name;
    chosenModel.set(chosen.name);
  }
}
