// "Why none of the 8?": the stranger check of a face. Open by itself when /predict says the
// face is none of the classes (``open_set.known`` false), and on request for any face: the map of
// the open-set score (an explanation panel with ``target=open_set``), one sentence of what that
// score is, and the training faces behind it (``open_set.evidence``: per class the nearest
// training photos with their cosine, the nearest of all outlined), their thumbnails fetched
// with the API key (GET /evidence/... is behind it, which an <img src> cannot send).

import { send, withModel } from "./api.js";
import { ExplanationPanel } from "./panel.js";

// The method of the open-set map. Occlusion reads best here: hiding a patch and watching the
// score asks exactly "which part of this face makes it look like someone the model knows, or
// like nobody it knows", its signed blocks read at a glance on a face crop, and it runs on the
// same ONNX rows (logits and embedding) as /predict's score. A gradient map of the score is
// unsigned pixel speckle that cannot say which way a region pushes. Where the service lists
// neither preferred method: its first signed one, else its first (among those that explain the
// open-set score).
const PREFERRED = ["occlusion", "integrated_gradients"];

const PART_WORDS = {
  nearest_training_face_cosine: "the cosine similarity to the nearest training face",
  max_softmax_probability: "the largest class probability",
  max_logit: "the largest logit",
};

/** The method ``PREFERRED`` names first among ``methods`` (GET /explain's), or a fallback. */
export function openSetMethod(methods) {
  // a method whose list of what it explains leaves the open-set score out cannot serve here
  methods = methods.filter((method) => !method.explains || method.explains.includes("open_set"));
  const byName = new Map(methods.map((method) => [method.name, method]));
  const preferred = PREFERRED.map((name) => byName.get(name)).find(Boolean);
  return preferred ?? methods.find((method) => method.signed) ?? methods[0] ?? null;
}

export class StrangerCheck {
  /** ``section``: the page's #stranger; ``toggle``: the button that opens it for any face. */
  constructor(section, toggle) {
    this.section = section;
    this.toggle = toggle;
    this.part = (name) => section.querySelector(`[data-part="${name}"]`);
    this.method = null;
    this.panel = null;
    this.face = null;
    this.thumbnails = [];
    this.abort = null;
    toggle.addEventListener("click", () => this.#setOpen(this.section.hidden));
  }

  /** The methods the service lists (``loadMethods()``): the open-set map uses one of them. */
  setMethods(methods) {
    this.method = openSetMethod(methods);
  }

  /** A new face: its /predict answer, the photo ``{file, url}`` and the classes ``[{id, name}]``.
   * Opens the check for a stranger; for a known face it waits for the toggle. A model without
   * an open-set verdict has no check. */
  show(prediction, photo, classes) {
    this.#release();
    this.panel?.stop();  // the last face's map, if it is still coming
    const openSet = prediction.open_set;
    this.face = openSet ? { openSet, photo, classes, predicted: prediction.label, filled: false } : null;
    this.toggle.hidden = !openSet;
    this.#setOpen(Boolean(openSet && !openSet.known));
  }

  #setOpen(open) {
    this.section.hidden = !open;
    this.toggle.setAttribute("aria-expanded", String(open));
    if (!this.face) return;
    this.toggle.textContent = open ? "Hide the stranger check" : this.#title();
    if (open && !this.face.filled) this.#fill();
  }

  #title() {
    const count = this.face.classes.length;
    return this.face.openSet.known ? `Why one of the ${count}, not a stranger?` : `Why none of the ${count}?`;
  }

  #fill() {
    const { openSet, photo, classes, predicted } = this.face;
    this.face.filled = true;
    document.getElementById("stranger-title").textContent = this.#title();
    this.part("score").textContent = scoreSentence(openSet, classes.length);
    const slot = this.part("map");
    if (!this.method) {
      slot.textContent = "The service lists no explanation method, so there is no map of the score.";
    } else {
      this.panel ??= new ExplanationPanel(this.method, { openSet: true });
      slot.replaceChildren(this.panel.element);
      this.panel.show(photo, classes, predicted);
      this.panel.run();
    }
    this.abort = new AbortController();
    this.#showEvidence(openSet.evidence ?? null, this.abort.signal);
  }

  #showEvidence(evidence, signal) {
    const note = this.part("note");
    const list = this.part("evidence");
    const why = evidence
      ? evidence.thumbnails_note
      : "This model ships no gallery of training faces, so there are no nearest faces to show.";
    note.textContent = why ?? "";
    note.hidden = !why;
    if (!evidence) return list.replaceChildren();
    const { nearest } = evidence;
    list.replaceChildren(
      ...evidence.per_class.map(({ class_id: classId, name, faces }) => {
        const row = element("li", "class-evidence");
        row.dataset.classId = classId;
        const shown = faces.map((face) => {
          const isNearest = classId === nearest.class_id && face.file === nearest.file;
          return this.#face(face, name, isNearest, signal);
        });
        row.append(element("span", "name", name), element("ol", "faces", undefined, shown));
        return row;
      }),
    );
  }

  #face({ file, cosine, thumbnail }, className, isNearest, signal) {
    const item = element("li", isNearest ? "face nearest" : "face");
    item.dataset.file = file;
    if (thumbnail) {
      const img = element("img", "thumbnail");
      img.alt = `Training photo of ${className} (${file})`;
      img.title = file;
      // a thumbnail that cannot be read shows its file name instead (an aborted read: nothing)
      this.#load(img, thumbnail, signal).catch(() => signal.aborted || img.replaceWith(element("span", "file", file)));
      item.append(img);
    } else {
      item.append(element("span", "file", file));
    }
    item.append(element("span", "cosine", `cosine ${cosine.toFixed(3)}`));
    if (isNearest) item.append(element("span", "tag", "nearest of all"));
    return item;
  }

  async #load(img, url, signal) {
    const blob = await (await send(withModel(url), { method: "GET", signal })).blob();
    if (signal.aborted) return;
    const objectUrl = URL.createObjectURL(blob);
    this.thumbnails.push(objectUrl);
    img.src = objectUrl;
  }

  /** Stop the last face's thumbnail reads and free their pictures. */
  #release() {
    this.abort?.abort();
    for (const url of this.thumbnails) URL.revokeObjectURL(url);
    this.thumbnails = [];
  }
}

/** What the open-set score is, from its parts, and what it says on this face. */
function scoreSentence({ score, threshold, known, definition, parts = {} }, count) {
  const named = Object.entries(parts).map(([part, value]) => `${PART_WORDS[part] ?? part.replaceAll("_", " ")} (${figure(value)})`);
  const made =
    definition === "fused" && named.length > 1
      ? `fuses ${named.slice(0, -1).join(", ")} and ${named.at(-1)} into one number`
      : `is ${named[0] ?? String(definition ?? "a score").replaceAll("_", " ")}`;
  const verdict = known
    ? `at or above the threshold ${figure(threshold)}, so the face counts as one of the ${count}`
    : `below the threshold ${figure(threshold)}, so the face counts as none of the ${count}`;
  return `The open-set score ${made}: here ${figure(score)}, ${verdict}. The map shows which parts of the face raise the score and which lower it.`;
}

/** Two decimals, or two significant digits for a small positive value (a stranger's 0.00052). */
function figure(value) {
  return value > 0 && value < 0.01 ? value.toPrecision(2) : value.toFixed(2);
}

function element(tag, className, text = undefined, children = []) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  node.append(...children);
  return node;
}
