// How much to believe a panel's map: a traffic light for the answer's ``quality.verdict`` (the
// rule GET /explain states as ``quality_rule``), its figures on hover and keyboard focus, and one
// sentence of what the verdict means; and a badge for the method's result in the bundle's sanity
// check (GET /explain's ``methods[].sanity``). Colour is never the only sign: every state has its
// word, and the figures are the light's description for screen readers.

const VERDICTS = {
  strong: {
    label: "strong",
    says:
      "Deleting the pixels this map marks first removes the prediction much faster than " +
      "deleting random pixels: it points at what the model uses.",
  },
  weak: {
    label: "weak",
    says:
      "The map beats random pixels, but not by the margin of a strong one (or the method's " +
      "own checks are shaky): take it as a rough guide.",
  },
  unreliable: {
    label: "unreliable",
    says:
      "The map finds what the prediction rests on no better than random pixels do (or the " +
      "test cannot tell on this face): do not trust it.",
  },
};
const NOT_GRADED = {
  pending: "The map is still coming; it is graded once it is finished.",
  ungraded: "This map was not graded: tick “Grade the map” and re-run to see how far to trust it.",
  none: "No finished map, so nothing was graded.",
};
const SIGNALS = {
  completeness_gap: "Completeness gap",
  surrogate_r2: "Surrogate R²",
  split_half_agreement: "Split-half agreement",
};

let nextId = 0;

/** The traffic light of one panel: ``element`` goes into the panel, ``show`` sets it. */
export class QualityLight {
  constructor() {
    const id = `quality-${nextId++}`;
    this.element = node("div", "quality");
    this.light = node("button", "light");
    this.light.type = "button";
    this.lamp = node("span", "lamp");
    this.lamp.setAttribute("aria-hidden", "true");
    this.word = node("span", "word");
    this.light.append(this.lamp, "Quality: ", this.word);
    this.tip = node("div", "tip");
    this.tip.id = `${id}-figures`;
    this.tip.setAttribute("role", "tooltip");
    this.light.setAttribute("aria-describedby", this.tip.id);
    this.says = node("p", "says");
    const anchor = node("div", "anchor");  // the tip hangs under the light's row, panel-wide
    anchor.append(this.light, this.tip);
    this.element.append(anchor, this.says);
    dismissOnEscape(anchor, this.light);
    this.show(null, "pending");
  }

  /** Show ``quality`` (an answer's ``quality`` object); when it is null, ``why`` says why there
   * is none: ``pending`` (the map is still coming), ``ungraded`` (grading was off) or ``none``
   * (no finished map: an error, a cancelled job). */
  show(quality, why = "ungraded") {
    const state = quality ? quality.verdict : why;
    const verdict = VERDICTS[state];
    this.element.dataset.verdict = state;
    this.word.textContent = verdict ? verdict.label : "not graded";
    this.says.textContent = verdict ? verdict.says : NOT_GRADED[state];
    const none = node("p", "", "No figures: the map was not graded.");
    this.tip.replaceChildren(...(quality ? figures(quality) : [none]));
  }
}

/** The figures of a quality report, as the light's tip shows them. */
function figures(quality) {
  const list = node("dl");
  const row = (name, key, text) => {
    const value = node("dd", "", text);
    value.dataset.figure = key;
    const pair = node("div");
    pair.append(node("dt", "", name), value);
    list.append(pair);
  };
  row(
    "Deletion",
    "deletion",
    `area ${fixed(quality.deletion_auc, 3)} vs random ${fixed(quality.random_deletion_auc, 3)}, ` +
      `ratio ${ratio(quality.deletion_ratio)} (below 1 beats random)`,
  );
  row(
    "Insertion",
    "insertion",
    `area ${fixed(quality.insertion_auc, 3)} vs random ${fixed(quality.random_insertion_auc, 3)}, ` +
      `ratio ${ratio(quality.insertion_ratio)} (above 1 beats random)`,
  );
  row(
    "Gain",
    "gain",
    quality.gain == null
      ? "n/a"
      : `${fixed(quality.gain, 2)} over a random map (0: no better; mean of both curves' gains)`,
  );
  for (const [name, value] of Object.entries(quality.signals ?? {})) {
    row(SIGNALS[name] ?? name.replaceAll("_", " "), name, fixed(value, 2));
  }
  row(
    "Probability",
    "probability",
    `${fixed(quality.probability, 2)} on the photo, ${fixed(quality.deleted_probability, 2)} ` +
      `with every pixel deleted (${quality.steps} steps per curve)`,
  );
  row(`Why ${quality.verdict}`, "reasons", quality.reasons.join("; "));
  const rule = node("p", "rule", "The rule: “How the quality light is decided”, above the panels.");
  return [list, rule];
}

/** The sanity badge beside a method's name: shown only where the bundle has a result. */
export class SanityBadge {
  constructor() {
    const id = `sanity-${nextId++}`;
    this.element = node("span", "sanity");
    this.element.tabIndex = 0;
    this.word = node("span", "word");
    this.tip = node("span", "tip");
    this.tip.id = `${id}-note`;
    this.tip.setAttribute("role", "tooltip");
    this.element.setAttribute("aria-describedby", this.tip.id);
    this.element.append(this.word, this.tip);
    dismissOnEscape(this.element, this.element);
    this.show(null);
  }

  /** ``sanity``: ``{passed, note}`` or null (no badge). */
  show(sanity) {
    this.element.hidden = !sanity;
    if (!sanity) return;
    this.element.dataset.passed = String(sanity.passed);
    this.word.textContent = sanity.passed ? "sanity ✓" : "sanity ✗";
    this.tip.textContent = sanity.note;
  }
}

// Escape hides a tip that hover or focus opened (WCAG 1.4.13), until the pointer or the focus
// leaves.
function dismissOnEscape(root, focusable) {
  focusable.addEventListener("keydown", (event) => {
    if (event.key === "Escape") root.classList.add("dismissed");
  });
  for (const type of ["mouseleave", "focusout"]) {
    root.addEventListener(type, () => root.classList.remove("dismissed"));
  }
}

function node(tag, className = "", text = undefined) {
  const element = document.createElement(tag);
  if (className) element.className = className;
  if (text !== undefined) element.textContent = text;
  return element;
}

function fixed(value, digits) {
  return Number(value).toFixed(digits);
}

function ratio(value) {
  return value == null ? "n/a (the random map's area is 0)" : fixed(value, 2);
}
