// The "Why not …?" choice beside the class bars: one contrast class for every panel at once, as
// a class bar is one target for every panel. It offers every class except the one explained
// (a class is no contrast to itself: the API refuses it), "none" (plain maps) first.

export class ContrastChoice {
  /** ``select``: the page's select; ``onChoose(classId)`` runs when the user picks one ("":
   * none). */
  constructor(select, onChoose) {
    this.select = select;
    this.classes = [];
    this.target = null;
    select.addEventListener("change", () => onChoose(this.value));
  }

  /** The chosen contrast class id, or "" for none. */
  get value() {
    return this.select.value;
  }

  /** A new face: its classes ``[{id, name}]`` and the explained (predicted) class; back to
   * none. */
  show(classes, target) {
    this.classes = classes;
    this.target = target;
    this.#offer("");
  }

  /** The class the panels now explain: it leaves the list, and a contrast equal to it goes back
   * to none. */
  setTarget(classId) {
    this.target = classId;
    this.#offer(this.value === classId ? "" : this.value);
  }

  #offer(chosen) {
    const others = this.classes.filter(({ id }) => id !== this.target);
    this.select.replaceChildren(
      new Option("none: plain maps", ""),
      ...others.map(({ id, name }) => new Option(name, id)),
    );
    this.select.value = chosen;
  }
}
