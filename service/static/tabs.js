// The page's views as tabs over <main>: "Photo and explanations" (everything in <main> that is
// no other view's section) and one tab per view that a module adds (insight.js, compare.js).
// ``main.dataset.tab`` names the view shown: "photo", or the id of the view's section.

const PHOTO = "photo";
const main = document.getElementById("main");
const list = document.createElement("div");
list.className = "tabs";
list.setAttribute("role", "tablist");
list.setAttribute("aria-label", "Views");
main.prepend(list);
const views = new Map();  // view id -> {tab, section, onShow}

addTab(PHOTO, "Photo and explanations", null, () => {});
select(PHOTO);

/** A tab labelled ``label`` for ``section`` (a child of <main>, with an id); ``onShow()`` runs
 * each time it is chosen. Returns the tab (hide it while the view has nothing to show). */
export function addView(section, label, onShow = () => {}) {
  section.classList.add("view");
  section.setAttribute("role", "tabpanel");
  section.setAttribute("aria-labelledby", `tab-${section.id}`);
  return addTab(section.id, label, section, onShow);
}

/** The view shown: "photo" or a view section's id. */
export function shownView() {
  return main.dataset.tab;
}

function addTab(id, label, section, onShow) {
  const tab = Object.assign(document.createElement("button"), { type: "button", id: `tab-${id}`, className: "tab", textContent: label });
  tab.setAttribute("role", "tab");
  tab.setAttribute("aria-selected", "false");
  if (section) tab.setAttribute("aria-controls", section.id);
  tab.addEventListener("click", () => select(id));
  list.append(tab);
  views.set(id, { tab, section, onShow });
  return tab;
}

function select(id) {
  main.dataset.tab = id;
  for (const [name, view] of views) {
    view.tab.setAttribute("aria-selected", String(name === id));
    view.section?.classList.toggle("shown", name === id);
  }
  views.get(id).onShow();
}
