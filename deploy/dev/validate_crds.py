#!/usr/bin/env python3
"""Validates rendered manifests' cert-manager and prometheus-operator objects against the real CRD schemas, offline.

Usage:
  python3 deploy/dev/validate_crds.py FILE...            FILE: multi-document YAML of rendered manifests
  python3 deploy/dev/validate_crds.py --import-crd CRD...  refresh deploy/dev/crds/*.json from upstream CRD YAMLs

The schemas are the `spec.versions[name=v1].schema.openAPIV3Schema` of the upstream CRDs, with their descriptions
stripped, in deploy/dev/crds/<group>_<kind-lowercase>.json (where they come from: deploy/dev/crds/SOURCES.md).

Checked kinds: cert-manager.io/v1 Certificate, Issuer, ClusterIssuer; monitoring.coreos.com/v1 ServiceMonitor,
PrometheusRule. Documents of any other group are skipped silently; a document of group cert-manager.io or
monitoring.coreos.com whose version/kind has no schema here is an error (so a misspelt kind cannot pass).

Strict, like `kubeconform -strict`: a field the schema does not declare is an error, unless the schema node has
`x-kubernetes-preserve-unknown-fields: true` or declares `additionalProperties`. Also errors: a duplicate key in a
mapping (kubectl's strict decoding rejects them) and a null value where the schema does not say `nullable: true`
(the API server would drop it silently: usually an empty template value). `x-kubernetes-int-or-string` allows an
integer or a string; the other x-kubernetes-* keys (CEL `x-kubernetes-validations`, list types) and `format` are
not checked. metadata (not described by the CRD schemas) must be a mapping with a non-empty string `name`.

Output: one line per error, `FILE: Kind/name: <path>: <message>`, then one summary line. Exits 1 on any error or
if no file is given, 0 otherwise.
"""

import difflib
import json
import os
import re
import sys

import jsonschema
import yaml

CRD_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "crds")
GROUPS = ("cert-manager.io", "monitoring.coreos.com")
# (group, version, kind) that have a schema in CRD_DIR.
KINDS = (
    ("cert-manager.io", "v1", "Certificate"),
    ("cert-manager.io", "v1", "Issuer"),
    ("cert-manager.io", "v1", "ClusterIssuer"),
    ("monitoring.coreos.com", "v1", "ServiceMonitor"),
    ("monitoring.coreos.com", "v1", "PrometheusRule"),
)


def schema_file(group, kind):
    return os.path.join(CRD_DIR, "%s_%s.json" % (group, kind.lower()))


# ---------------------------------------------------------------------------------------------------------------
# YAML: like Kubernetes' decoder, timestamps stay strings (go-yaml gives strings for untyped fields); duplicate
# keys are recorded, not silently collapsed.


class _Loader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    self.duplicates.append((key, key_node.start_mark.line + 1))
                seen.add(key)
            except TypeError:  # unhashable key: the base constructor reports it
                pass
        return super().construct_mapping(node, deep)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_documents(text):
    """Yields (document, [(duplicate key, line)]) for each document of a multi-document YAML text."""
    loader = _Loader(text)
    loader.duplicates = []
    try:
        while loader.check_data():
            doc = loader.get_data()
            yield doc, loader.duplicates
            loader.duplicates = []
    finally:
        loader.dispose()


# ---------------------------------------------------------------------------------------------------------------
# Schemas


def _children(node):
    """Yields the sub-schemas of an OpenAPI v3 schema node."""
    for sub in (node.get("properties") or {}).values():
        yield sub
    for key in ("items", "additionalProperties", "not"):
        if isinstance(node.get(key), dict):
            yield node[key]
    for key in ("anyOf", "allOf", "oneOf"):
        for sub in node.get(key) or []:
            yield sub


def strip_descriptions(node):
    """A copy of a schema node without its "description" keywords (a property called "description" stays)."""
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "description":
            continue
        if key == "properties":
            out[key] = {name: strip_descriptions(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = strip_descriptions(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [strip_descriptions(sub) for sub in value]
        else:
            out[key] = value
    return out


_GO_FLAGS = re.compile(r"\(\?([imsU-]+)\)")


def go_regexp_to_python(pattern):
    """Rewrites Go (RE2) syntax Python's re lacks: a flag group like `^(?i)x` that is not at the start of the
    pattern becomes a scoped one, `^(?i:x)`, up to the end of its enclosing group (as in Go); `\\z` becomes `\\Z`."""
    out, extra, i = [], [0], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            out.append("\\Z" if pattern[i : i + 2] == "\\z" else pattern[i : i + 2])
            i += 2
            continue
        if c == "[":  # a character class, copied as is
            j = i + 1
            if pattern[j : j + 1] == "^":
                j += 1
            if pattern[j : j + 1] == "]":
                j += 1
            while j < len(pattern) and pattern[j] != "]":
                j += 2 if pattern[j] == "\\" else 1
            out.append(pattern[i : j + 1])
            i = j + 1
            continue
        flags = _GO_FLAGS.match(pattern, i)
        if flags and i > 0:
            out.append("(?%s:" % flags.group(1))
            extra[-1] += 1
            i = flags.end()
            continue
        if c == "(":
            extra.append(0)
        elif c == ")" and len(extra) > 1:
            out.append(")" * extra.pop())
        out.append(c)
        i += 1
    out.append(")" * extra[0])
    return "".join(out)


def to_strict_draft7(node):
    """Turns an OpenAPI v3 (Kubernetes structural) schema node into a strict JSON Schema draft 7 one, in place."""
    for sub in _children(node):
        to_strict_draft7(sub)
    if isinstance(node.get("pattern"), str):
        node["pattern"] = go_regexp_to_python(node["pattern"])
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
        node.pop("type", None)
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable"):
        if isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
        if "enum" in node and None not in node["enum"]:
            node["enum"] = list(node["enum"]) + [None]
        if "anyOf" in node:
            node["anyOf"] = list(node["anyOf"]) + [{"type": "null"}]
    if (
        node.get("type") == "object"
        and "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        node["additionalProperties"] = False
    return node


def load_validators():
    validators = {}
    for group, version, kind in KINDS:
        path = schema_file(group, kind)
        with open(path, encoding="utf-8") as f:
            schema = to_strict_draft7(json.load(f))
        # metadata is not described by the CRD schemas; checked by hand (see check_metadata).
        schema.setdefault("properties", {})["metadata"] = {"type": "object"}
        try:
            jsonschema.Draft7Validator.check_schema(schema)
        except jsonschema.exceptions.SchemaError as e:
            raise SystemExit("crds: %s: not a usable schema at %s: %s" % (path, json_path(e.absolute_path), e.message))
        validators[(group, version, kind)] = jsonschema.Draft7Validator(schema)
    return validators


# ---------------------------------------------------------------------------------------------------------------
# Errors

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def json_path(parts):
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += "[%d]" % part
        elif _PLAIN_KEY.match(str(part)):
            out += ("." if out else "") + str(part)
        else:
            out += "[%s]" % json.dumps(str(part))
    return out or "(root)"


def _type_name(value):
    """The JSON type of a value, with its article: "an integer", "a string"..."""
    if value is None:
        return "null"
    for cls, name in ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"),
                      (list, "an array"), (dict, "an object")):
        if isinstance(value, cls):
            return name
    return "a " + type(value).__name__


def _expected(schema):
    if schema.get("x-kubernetes-int-or-string"):
        return "an integer or a string"
    types = schema.get("type")
    if isinstance(types, str):
        types = [types]
    names = {"integer": "an integer", "array": "an array", "object": "an object"}
    return " or ".join(names.get(t, "a " + t) for t in types or [] if t != "null") or "a value"


def describe(error):
    """Yields (path parts, message) for one jsonschema error, in words a chart author can act on."""
    path = list(error.absolute_path)
    instance = error.instance
    if error.validator == "additionalProperties" and error.validator_value is False:
        declared = sorted(error.schema.get("properties", {}))
        for key in sorted(set(instance) - set(declared), key=str):
            close = difflib.get_close_matches(str(key), declared, n=1)
            hint = ("did you mean %r?" % close[0]) if close else "declared fields: %s" % ", ".join(declared)
            yield path + [key], "unknown field %r (not in the schema; %s)" % (key, hint)
        return
    if instance is None and error.validator in ("type", "anyOf"):
        yield path, "null (empty value) where the schema expects %s (the API server would drop it silently)" % (
            _expected(error.schema)
        )
        return
    if error.validator == "type":
        yield path, "%s is %s, the schema expects %s" % (
            json.dumps(instance, default=str),
            _type_name(instance),
            _expected(error.schema),
        )
        return
    if error.validator == "anyOf" and error.schema.get("x-kubernetes-int-or-string"):
        yield path, "%s is %s, the schema expects an integer or a string" % (
            json.dumps(instance, default=str),
            _type_name(instance),
        )
        return
    if error.validator == "enum":
        types = error.schema.get("type")
        types = [types] if isinstance(types, str) else types or []
        if types and not any(jsonschema.Draft7Validator.TYPE_CHECKER.is_type(instance, t) for t in types):
            return  # the "type" error on the same field says it better
        yield path, "%s is not one of %s" % (json.dumps(instance, default=str), json.dumps(error.validator_value))
        return
    if error.validator in ("anyOf", "oneOf") and error.context:
        best = jsonschema.exceptions.best_match(error.context)
        yield path + list(best.relative_path), "%s (%s)" % (error.message, best.message)
        return
    yield path, error.message


# ---------------------------------------------------------------------------------------------------------------
# Checking


def check_metadata(obj):
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        return [(["metadata"], "missing, or not a mapping")]
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        return [(["metadata", "name"], "missing, or not a non-empty string")]
    return []


def unknown_kind_message(group, version, kind):
    known = ["%s/%s %s" % k for k in KINDS if k[0] == group]
    close = [k for k in KINDS if k[0] == group and k[2].lower() == str(kind).lower()]
    if not close:
        names = difflib.get_close_matches(str(kind), [k[2] for k in KINDS if k[0] == group], n=1)
        close = [k for k in KINDS if k[0] == group and k[2] in names]
    hint = (" (did you mean %s/%s %s?)" % close[0]) if close else ""
    return "no schema for %s/%s %s%s; known: %s" % (group, version, kind, hint, ", ".join(known))


def _path_order(error):
    return [(0, p, "") if isinstance(p, int) else (1, 0, str(p)) for p in error.absolute_path]


def check_file(path, validators, counts, errors):
    """Checks one file; appends error lines to `errors` and counts checked objects per (apiVersion, kind)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        errors.append("%s: cannot read: %s" % (path, e.strerror or e))
        return 0
    checked = 0
    try:
        for index, (doc, duplicates) in enumerate(load_documents(text)):
            if not isinstance(doc, dict):
                if doc is not None:
                    errors.append("%s: document %d: not a mapping but %s" % (path, index + 1, _type_name(doc)))
                continue
            api_version, kind = doc.get("apiVersion"), doc.get("kind")
            if not isinstance(api_version, str) or "/" not in api_version:
                continue  # core group or not a Kubernetes object: not ours
            group, version = api_version.split("/", 1)
            if group not in GROUPS:
                continue
            checked += 1
            metadata = doc.get("metadata")
            name = metadata.get("name") if isinstance(metadata, dict) else None
            label = "%s/%s" % (kind, name if isinstance(name, str) and name else "<document %d>" % (index + 1))
            problems = [(["(document)"], "duplicate key %r at line %d" % dup) for dup in duplicates]
            validator = validators.get((group, version, kind))
            if validator is None:
                problems.append((["kind"], unknown_kind_message(group, version, kind)))
            else:
                counts[(api_version, kind)] = counts.get((api_version, kind), 0) + 1
                problems += check_metadata(doc)
                for error in sorted(validator.iter_errors(doc), key=_path_order):
                    problems += list(describe(error))
            for parts, message in problems:
                where = parts[0] if parts == ["(document)"] else json_path(parts)
                errors.append("%s: %s: %s: %s" % (path, label, where, message))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = "line %d, column %d: " % (mark.line + 1, mark.column + 1) if mark else ""
        problem = getattr(e, "problem", None) or " ".join(str(e).split())
        errors.append("%s: YAML error: %s%s" % (path, where, problem))
    return checked


def validate(paths):
    validators = load_validators()
    counts, errors, checked = {}, [], 0
    for path in paths:
        checked += check_file(path, validators, counts, errors)
    for line in errors:
        print(line)
    if errors:
        print("crds: %d error(s) in %d objects" % (len(errors), checked))
        return 1
    summary = ", ".join("%d x %s (%s)" % (n, kind, api) for (api, kind), n in sorted(counts.items()))
    print("crds: %d objects valid (%s)" % (checked, summary or "none of group %s" % " or ".join(GROUPS)))
    return 0


# ---------------------------------------------------------------------------------------------------------------
# Refreshing the schemas


def import_crds(paths):
    """Writes CRD_DIR/<group>_<kind>.json from upstream CustomResourceDefinition YAMLs (Helm markup tolerated)."""
    wanted = {(g, k): v for g, v, k in KINDS}
    status = 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            # cert-manager's Helm-chart copies carry {{ ... }} in metadata: drop template-only lines, blank the rest.
            lines = [l for l in f.read().splitlines() if not re.fullmatch(r"\s*\{\{.*\}\}\s*", l)]
        text = re.sub(r"\{\{.*?\}\}", "x", "\n".join(lines))
        found = False
        for doc in yaml.safe_load_all(text):
            if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"]
            if (group, kind) not in wanted:
                continue
            versions = [v for v in doc["spec"]["versions"] if v.get("name") == wanted[(group, kind)]]
            if not versions:
                print("%s: %s %s has no version %s" % (path, group, kind, wanted[(group, kind)]))
                status = 1
                continue
            schema = strip_descriptions(versions[0]["schema"]["openAPIV3Schema"])
            out = schema_file(group, kind)
            with open(out, "w", encoding="utf-8") as f:
                json.dump(schema, f, indent=0, separators=(",", ":"), ensure_ascii=False)
                f.write("\n")
            print("%s: %s/%s %s -> %s" % (path, group, wanted[(group, kind)], kind, os.path.relpath(out)))
            found = True
        if not found:
            print("%s: no CRD of a checked kind" % path)
            status = 1
    return status


def main(argv):
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if argv and argv[0] == "--import-crd":
        if len(argv) < 2:
            print("usage: validate_crds.py --import-crd CRD_YAML...", file=sys.stderr)
            return 1
        return import_crds(argv[1:])
    if not argv:
        print("usage: validate_crds.py FILE...  (multi-document YAML of rendered manifests)", file=sys.stderr)
        return 1
    return validate(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
