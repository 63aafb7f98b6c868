// One explanation panel: the heatmap (a transparent PNG from the API) laid over the photo with
// CSS, an opacity slider, the method's parameter fields, and a Re-run button. Methods that
// refine a map as they sample (GET /explain: ``anytime``) run as jobs: a progress bar, the map
// drawn again at every event, and a Cancel button; the others answer at once. Every map is
// graded unless its "Grade the map" box is cleared (``quality=true``): a traffic light under
// the map (quality.js), and the method's sanity result beside its name.
//
// A panel answers one question about the face, which its caption states: why the target class
// (plain), why the target and not a contrast class (``contrast=``: the map of logit(target) -
// logit(contrast)), or, for an open-set panel, why one of the classes or none (``target=open_set``,
// the score behind /predict's stranger verdict).
//
// A panel asks the page's chosen model (api.js), or the model it was made for (the compare view
// has one panel per model).

import { ApiError, cancelJob, describeError, getJson, jobEvents, postImage, send } from "./api.js";
import { gridPng } from "./livemap.js";
import { QualityLight, SanityBadge } from "./quality.js";

const NEGLIGIBLE_HEADER = "X-Heatmap-Negligible";
const OPEN_SET = "open_set";
// Asked of every panel by default: the page is where people look at the maps, so it pays for
// the extra pass (GET /explain: methods[].quality.passes) even where the API does not.
const GRADE_FIELD = {
  label: "Grade the map",
  type: "boolean",
  default: true,
  description: "quality=true: test the map against a random one (deletion and insertion) and show how much to believe it",
};

let nextId = 0;

export class ExplanationPanel {
  /** ``method``: an entry of ``loadMethods()`` (GET /explain). ``openSet``: the panel explains
   * the open-set score (``target=open_set``, no contrast) instead of a class. ``model``: the
   * model to ask (default: the page's chosen one). ``kind``: the panel's class, ``panel`` for
   * the method panels; a panel of another kind never counts among them (the open-set panel is
   * ``open-set-panel``). */
  constructor(method, { openSet = false, model = undefined, kind = openSet ? "open-set-panel" : "panel" } = {}) {
    this.method = method;
    this.openSet = openSet;
    this.model = model;
    this.kind = kind;
    this.photo = null;
    this.heatUrl = null;
    this.abort = null;
    this.shown = null;
    this.element = this.#build();
  }

  /** A new photo ``{file, url}``, the classes ``[{id, name}]`` to offer as targets, and the
   * predicted class's id. */
  show(photo, classes, predicted) {
    this.photo = photo;
    this.base.src = photo.url;
    this.shown = null;
    this.#setHeat(null);
    this.negligible.hidden = true;
    this.explains.hidden = true;
    this.quality.show(null, "pending");
    this.classNames = new Map(classes.map((c) => [c.id, c.name]));
    this.predicted = predicted;
    if (this.openSet) {
      this.target.replaceChildren(new Option(`the open-set score: one of the ${classes.length}, or none`, OPEN_SET));
      return;
    }
    this.target.replaceChildren(new Option(`predicted: ${this.classNames.get(predicted)}`, ""));
    for (const { id, name } of classes) this.target.append(new Option(name, id));
    this.target.value = "";
    this.contrast.replaceChildren(new Option("none (plain map)", ""));
    for (const { id, name } of classes) this.contrast.append(new Option(name, id));
    this.contrast.value = "";
    this.#offerContrasts();
  }

  setTarget(classId) {
    this.target.value = classId;
    this.#offerContrasts();
  }

  /** Explain the target against ``classId`` ("" or null: a plain map). */
  setContrast(classId) {
    this.contrast.value = classId ?? "";
    this.#offerContrasts();
  }

  // The target itself is no contrast (the API refuses it): its option is disabled, and a
  // contrast that has become the target goes back to none.
  #offerContrasts() {
    if (this.openSet) return;
    const target = this.target.value || this.predicted;
    for (const option of this.contrast.options) option.disabled = option.value === target;
    if (this.contrast.value === target) this.contrast.value = "";
  }

  /** Fetch the heatmap for the current photo and controls; replaces any run in progress. */
  async run() {
    if (!this.photo) return;
    this.abort?.abort();
    this.#dropJob();
    const abort = (this.abort = new AbortController());
    const params = this.#params();
    const { title } = this.method;
    const started = performance.now();
    this.#setBusy(true);
    this.error.hidden = true;
    this.shown = null;
    this.quality.show(null, "pending");
    try {
      const { response, answer, json } = this.method.anytime
        ? await this.#runJob(params, abort.signal)
        : await this.#runNow(params, abort.signal);
      const png = await response.blob();
      if (abort.signal.aborted) return;
      // A negligible map is drawn fully transparent: say so rather than show an empty photo.
      const negligible = response.headers.get(NEGLIGIBLE_HEADER) === "true";
      const seconds = (performance.now() - started) / 1000;
      const question = this.#question(params);
      this.heat.alt = `${title} heatmap: ${question.caption}, laid over the photo`;
      await this.#setHeat(png);
      this.#setLegend(question, negligible);
      this.explains.textContent = question.caption;
      this.explains.hidden = false;
      this.element.dataset.explains = question.kind;
      this.timing.textContent = `${seconds.toFixed(1)} s`;
      this.shown = once(json);
      const graded = params.quality ? await answer() : null;
      if (abort.signal.aborted) return;
      this.quality.show(graded?.quality ?? null, "ungraded");
      this.rerun.classList.remove("attention");
      this.element.dataset.state = "done";
    } catch (error) {
      if (abort.signal.aborted || error.name === "AbortError") return;
      this.quality.show(null, "none");
      const { summary, detail } = describeError(error);
      this.error.replaceChildren(summary, Object.assign(document.createElement("small"), { textContent: detail }));
      this.error.hidden = false;
      this.timing.textContent = "";
      this.element.dataset.state = error.code === "cancelled" ? "cancelled" : "error";
    } finally {
      if (this.abort === abort) this.#setBusy(false);
    }
  }

  /** The JSON answer (``format=json``: the heatmap's values, the prediction, the quality) of
   * the map the panel shows; null while it shows none. */
  async json() {
    return this.shown ? this.shown() : null;
  }

  /** The PNG answer of POST /explain/{method} (``response``), and ``answer()`` and ``json()``:
   * its JSON one. A PNG carries only the verdict (X-Quality-Verdict), so the figures come from
   * asking again for JSON: the service keeps the map and its grade, so that answer costs no
   * forward pass. */
  async #runNow(params, signal) {
    const path = `/explain/${encodeURIComponent(this.method.name)}`;
    const { file } = this.photo;
    const { model } = this;
    const response = await postImage(path, file, { params: { ...params, format: "png" }, as: "response", signal, model });
    const answer = once(() => postImage(path, file, { params: { ...params, format: "json" }, signal, model }));
    return { response, answer, json: answer };
  }

  /** The same map as a job: progress and the refining map on the way, then its PNG result
   * (``response``), ``answer()``: its last event, which carries the answer's ``quality``, and
   * ``json()``: its JSON result. */
  async #runJob(params, signal) {
    const path = `/jobs/${encodeURIComponent(this.method.name)}`;
    const { model } = this;
    const job = await postImage(path, this.photo.file, { params: { ...params, format: "png" }, signal, model });
    this.job = job.id;
    this.element.dataset.job = job.id;
    this.progress.value = 0;
    this.progress.hidden = false;
    this.cancel.hidden = false;
    let last = job;
    for await (const event of jobEvents(job.id, { signal })) {
      last = event;
      this.progress.value = event.progress;
      this.timing.textContent = progressText(event);
      if (event.heatmap) {
        await this.#setHeat(await gridPng(event.heatmap));
        this.element.dataset.partials = String(Number(this.element.dataset.partials ?? 0) + 1);
      }
    }
    this.job = null;
    if (last.state === "done") {
      const result = `/jobs/${encodeURIComponent(job.id)}/result`;
      const response = await send(`${result}?format=png`, { method: "GET", signal });
      // the job names its model: its result is read without one
      const json = () => getJson(`${result}?format=json`, { signal, model: null });
      return { response, answer: async () => last, json };
    }
    if (last.state === "cancelled") throw new ApiError("cancelled", "the explanation was cancelled");
    throw new ApiError(last.error?.code ?? "job_failed", last.error?.message ?? "the job failed");
  }

  /** Stop the run in progress, if any (its job cancelled on the service): a panel that is put
   * away should not keep the service busy. */
  stop() {
    if (this.element.dataset.state !== "busy") return;
    this.abort?.abort();
    this.#dropJob();
    this.#setBusy(false);
    this.element.dataset.state = "idle";
  }

  /** Cancel the job of a run that is being replaced or stopped. */
  #dropJob() {
    if (this.job) cancelJob(this.job);
    this.job = null;
  }

  /** The method's sanity result (GET /explain's ``methods[].sanity``; null: no badge). */
  showSanity(sanity) {
    this.sanity.show(sanity);
  }

  #params() {
    const values = {};
    for (const input of this.form.querySelectorAll("[name]")) {
      values[input.name] = input.type === "checkbox" ? input.checked : input.value;
    }
    return values;
  }

  #setBusy(busy) {
    this.element.setAttribute("aria-busy", String(busy));
    this.element.dataset.state = busy ? "busy" : this.element.dataset.state;
    this.spinner.hidden = !busy;
    this.rerun.disabled = busy;
    if (busy) delete this.element.dataset.partials;
    if (!busy) {
      this.progress.hidden = true;
      this.cancel.hidden = true;
    }
  }

  async #setHeat(blob) {
    if (this.heatUrl) URL.revokeObjectURL(this.heatUrl);
    this.heatUrl = blob ? URL.createObjectURL(blob) : null;
    if (!this.heatUrl) {
      this.heat.removeAttribute("src");
      this.heat.hidden = true;
      return;
    }
    this.heat.src = this.heatUrl;
    this.heat.hidden = false;
    await this.heat.decode().catch(() => {});
  }

  /** What a run with ``params`` asks, in words: ``{kind, caption, subject, low, high}`` (the
   * legend's ends for a signed map: what negative and positive values are evidence for). */
  #question(params) {
    const name = (id) => this.classNames.get(id);
    if (params.target === OPEN_SET) {
      const count = this.classNames.size;
      return {
        kind: "open_set",
        caption: `Why one of the ${count}, or none: the open-set score`,
        subject: "the open-set score",
        low: "a stranger",
        high: `one of the ${count}`,
      };
    }
    const target = name(params.target) ?? name(this.predicted);
    if (params.contrast) {
      const contrast = name(params.contrast);
      return {
        kind: "contrast",
        caption: `Why ${target} and not ${contrast}`,
        subject: `${target} over ${contrast}`,
        low: contrast,
        high: target,
      };
    }
    return { kind: "class", caption: `Why ${target}`, subject: target, low: "against", high: "for" };
  }

  #setLegend(question, negligible) {
    const { signed } = this.method;
    this.legend.className = `legend ${signed ? "signed" : "unsigned"}`;
    this.legendLow.textContent = signed ? question.low : "none";
    this.legendTarget.textContent = question.subject;
    this.legendHigh.textContent = signed ? question.high : "strong";
    this.legend.hidden = negligible;
    this.negligible.textContent = `No evidence for ${question.subject}: the map is negligible (every value is below the model's numerical noise), so nothing is drawn.`;
    this.negligible.hidden = !negligible;
  }

  #build() {
    const id = `panel-${this.method.name}-${nextId++}`;
    const root = document.getElementById("panel-template").content.firstElementChild.cloneNode(true);
    const part = (name) => root.querySelector(`[data-part="${name}"]`);
    root.dataset.method = this.method.name;
    root.classList.replace("panel", this.kind);
    if (this.model) root.dataset.model = this.model;
    root.setAttribute("aria-labelledby", `${id}-title`);
    Object.assign(part("title"), { id: `${id}-title`, textContent: this.method.title });
    this.sanity = new SanityBadge();
    this.sanity.show(this.method.sanity ?? null);
    part("title").after(this.sanity.element);
    part("teaches").textContent = this.method.shows;
    this.base = part("base");
    this.heat = part("heat");
    this.spinner = part("spinner");
    this.explains = part("explains");
    this.timing = part("timing");
    this.error = part("error");
    this.legend = part("legend");
    this.legendLow = part("legend-low");
    this.legendTarget = part("legend-target");
    this.legendHigh = part("legend-high");
    this.negligible = Object.assign(document.createElement("p"), { className: "hint negligible", hidden: true });
    this.negligible.dataset.part = "negligible";
    this.legend.after(this.negligible);
    this.quality = new QualityLight();
    this.negligible.after(this.quality.element);
    this.form = part("form");
    this.rerun = part("rerun");
    this.progress = part("progress");
    this.progress.setAttribute("aria-label", `${this.method.title}: progress`);
    this.cancel = part("cancel");
    this.cancel.addEventListener("click", () => {
      const job = this.job;
      this.job = null;
      if (job) cancelJob(job); // its events end with "cancelled", which the run reports
    });

    const opacity = part("opacity");
    const shown = part("opacity-value");
    opacity.id = `${id}-opacity`;
    part("opacity-label").htmlFor = opacity.id;
    opacity.addEventListener("input", () => {
      this.heat.style.opacity = String(opacity.value / 100);
      shown.value = `${opacity.value}%`;
    });

    this.target = this.#field(part("fields"), `${id}-target`, "Explain class", document.createElement("select"));
    this.target.name = "target";
    if (!this.openSet) {
      this.contrast = this.#field(part("fields"), `${id}-contrast`, "and not", document.createElement("select"));
      this.contrast.name = "contrast";
      this.contrast.title = "contrast=: why the target and not this class (the map of logit(target) - logit(contrast))";
      this.contrast.parentElement.classList.add("wide");
      this.target.addEventListener("change", () => this.#offerContrasts());
    }
    for (const [name, field] of this.method.fields) this.#control(part("fields"), id, name, field);
    this.#control(part("fields"), id, "quality", GRADE_FIELD);

    this.form.addEventListener("input", (event) => {
      if (event.target !== opacity) this.rerun.classList.add("attention");
    });
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (this.form.reportValidity()) this.run();
    });
    return root;
  }

  // A labelled input for one of the method's parameters, typed by its schema: a choice is a
  // select, a boolean a checkbox, a number a number field, anything else text (empty: the
  // service's default).
  #control(fields, id, name, schema) {
    let input;
    if (schema.choices) {
      input = document.createElement("select");
      // no default of its own (perturbation methods' score: it depends on the question asked):
      // an empty first choice leaves it to the service
      if (schema.default === undefined || schema.default === null) input.append(new Option("default", ""));
      for (const choice of schema.choices) {
        input.append(new Option(String(choice).replaceAll("_", " "), choice));
      }
    } else {
      input = document.createElement("input");
      const numeric = schema.type === "integer" || schema.type === "number";
      input.type = schema.type === "boolean" ? "checkbox" : numeric ? "number" : "text";
      if (schema.type === "integer") input.step = "1";
      if (schema.type === "number") input.step = "any";
      if (schema.minimum !== undefined) input.min = schema.minimum;
      if (schema.maximum !== undefined) input.max = schema.maximum;
      if (schema.maxLength !== undefined) input.maxLength = schema.maxLength;
      if (numeric) input.inputMode = "decimal";
      if (input.type === "text") input.placeholder = "default";
    }
    input.name = name;
    if (schema.default !== undefined && schema.default !== null) {
      if (input.type === "checkbox") input.checked = Boolean(schema.default);
      else input.value = schema.default;
    }
    if (schema.description) input.title = schema.description;
    this.#field(fields, `${id}-${name}`, schema.label, input);
  }

  #field(fields, id, label, input) {
    const wrapper = document.createElement("div");
    wrapper.className = "field";
    const caption = Object.assign(document.createElement("label"), { htmlFor: id, textContent: label });
    input.id = id;
    wrapper.append(caption, input);
    fields.append(wrapper);
    return input;
  }
}

/** ``make()``'s promise, made on the first call only. */
function once(make) {
  let made = null;
  return () => (made ??= make());
}

/** "42 % · about 3 s left" for a job's event. */
function progressText({ state, progress, remaining_s: remaining }) {
  if (state === "queued") return "waiting for a turn";
  const left = remaining == null ? "" : ` · about ${Math.ceil(remaining)} s left`;
  return `${Math.round(progress * 100)} %${left}`;
}
