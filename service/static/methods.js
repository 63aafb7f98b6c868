// The explanation methods, as the service lists them (GET /explain): the page makes one panel
// per method, its parameter fields from the method's JSON Schema, its legend from whether the
// method's map is signed. Nothing here names a method: a method added to the service appears.

import { getJson } from "./api.js";
import { fieldsOf } from "./schema.js";

/** ``[{name, title, shows, signed, units, fields}]`` in the service's order; ``fields``: see
 * ``fieldsOf``. */
export async function loadMethods() {
  const { methods } = await getJson("/explain");
  return methods.map((method) => ({ ...method, fields: fieldsOf(method.parameters) }));
}
