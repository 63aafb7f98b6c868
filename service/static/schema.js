// Query parameters of the API's endpoints, read from its OpenAPI document: the page's controls
// take their ranges, choices and defaults from there, so they follow the API as served.

import { getJson } from "./api.js";

/** ``(path) => Map(name -> {type, minimum, maximum, default, choices, description})`` for the
 * POST operations of the served API; an empty map where the document or the path is missing. */
export async function loadQueryParameters() {
  let doc;
  try {
    doc = await getJson("/openapi.json");
  } catch {
    doc = { paths: {} };
  }
  return (path) => {
    const found = new Map();
    for (const parameter of doc.paths?.[path]?.post?.parameters ?? []) {
      if (parameter.in !== "query") continue;
      const schema = resolve(doc, parameter.schema ?? {});
      found.set(parameter.name, {
        type: schema.type,
        minimum: schema.minimum,
        maximum: schema.maximum,
        default: schema.default,
        choices: schema.enum,
        description: parameter.description ?? schema.description ?? "",
      });
    }
    return found;
  };
}

// Follows $ref and picks the non-null branch of an optional (anyOf [..., null]), keeping the
// outer default and description.
function resolve(doc, schema) {
  let current = schema;
  if (current.$ref) current = { ...lookup(doc, current.$ref), ...withoutRef(current) };
  const branches = current.anyOf ?? current.oneOf;
  if (branches) {
    const branch = branches.find((option) => option.type !== "null") ?? {};
    const { anyOf, oneOf, ...outer } = current;
    current = { ...resolve(doc, branch), ...outer };
  }
  if (current.const !== undefined && !current.enum) current = { ...current, enum: [current.const] };
  return current;
}

function lookup(doc, ref) {
  return ref.replace(/^#\//, "").split("/").reduce((node, key) => node?.[key], doc) ?? {};
}

function withoutRef({ $ref, ...rest }) {
  return rest;
}
