#!/usr/bin/env python3
"""Writes tables.rs: the protobuf field tables of the kinds `kubectl create` makes.

The facts come from two crates in the cargo registry (fetch them with `cargo fetch` in a project
that depends on them): k8s-pb 0.8 gives each message's field numbers and protobuf types, and
k8s-openapi 0.29 (the Kubernetes version Shoal serves) gives each field's JSON name. A field that
k8s-openapi does not know is newer than that version and is left out, so the decoder names it
instead of guessing.

Run: python3 crates/api/src/protobuf/generate.py > crates/api/src/protobuf/tables.rs
"""
import glob
import os
import re
import sys

REGISTRY = os.path.expanduser('~/.cargo/registry/src')
PB = glob.glob(f'{REGISTRY}/*/k8s-pb-0.8.*/src')[0]
OPENAPI = glob.glob(f'{REGISTRY}/*/k8s-openapi-0.29.*/src/v1_33')[0]

# The kinds decoded: (apiVersion, kind, module of k8s-pb).
ROOTS = [
    ('v1', 'Namespace', 'api/core/v1'),
    ('v1', 'ConfigMap', 'api/core/v1'),
    ('v1', 'Secret', 'api/core/v1'),
    ('v1', 'Service', 'api/core/v1'),
    ('apps/v1', 'Deployment', 'api/apps/v1'),
    ('batch/v1', 'Job', 'api/batch/v1'),
    ('batch/v1', 'CronJob', 'api/batch/v1'),
    ('networking.k8s.io/v1', 'Ingress', 'api/networking/v1'),
    # `kubectl create serviceaccount|role|clusterrole|rolebinding|clusterrolebinding|token`.
    ('v1', 'ServiceAccount', 'api/core/v1'),
    ('rbac.authorization.k8s.io/v1', 'Role', 'api/rbac/v1'),
    ('rbac.authorization.k8s.io/v1', 'ClusterRole', 'api/rbac/v1'),
    ('rbac.authorization.k8s.io/v1', 'RoleBinding', 'api/rbac/v1'),
    ('rbac.authorization.k8s.io/v1', 'ClusterRoleBinding', 'api/rbac/v1'),
    ('authentication.k8s.io/v1', 'TokenRequest', 'api/authentication/v1'),
    # `kubectl autoscale` (kubectl >= 1.32 sends it as protobuf).
    ('autoscaling/v2', 'HorizontalPodAutoscaler', 'api/autoscaling/v2'),
    # `kubectl auth whoami` and `kubectl auth can-i [--list]`.
    ('authentication.k8s.io/v1', 'SelfSubjectReview', 'api/authentication/v1'),
    ('authorization.k8s.io/v1', 'SelfSubjectAccessReview', 'api/authorization/v1'),
    ('authorization.k8s.io/v1', 'SelfSubjectRulesReview', 'api/authorization/v1'),
]

# Messages whose JSON form is not an object: decoded by the decoder itself.
SPECIAL = {
    ('apimachinery/pkg/apis/meta/v1', 'Time'): 'Time',
    ('apimachinery/pkg/apis/meta/v1', 'MicroTime'): 'MicroTime',
    ('apimachinery/pkg/apis/meta/v1', 'Duration'): 'Duration',
    ('apimachinery/pkg/apis/meta/v1', 'FieldsV1'): 'FieldsV1',
    ('apimachinery/pkg/api/resource', 'Quantity'): 'Quantity',
    ('apimachinery/pkg/util/intstr', 'IntOrString'): 'IntOrString',
    ('apimachinery/pkg/runtime', 'RawExtension'): 'RawExtension',
}

# Numbers that are plain (not pointer) fields in Go with `omitempty`: Kubernetes' protobuf encoder
# writes them even when zero, and zero means unset. Every other number is kept as sent, zero
# included (`replicas: 0`, `backoffLimit: 0`, `runAsUser: 0` mean what they say).
ZERO_IS_UNSET = {
    ('ObjectMeta', 'generation'),
    ('Condition', 'observedGeneration'),
    ('ServiceSpec', 'healthCheckNodePort'),
    ('ServicePort', 'nodePort'),
    ('DeploymentSpec', 'minReadySeconds'),
    ('DeploymentStatus', 'observedGeneration'),
    ('DeploymentStatus', 'replicas'),
    ('DeploymentStatus', 'updatedReplicas'),
    ('DeploymentStatus', 'readyReplicas'),
    ('DeploymentStatus', 'availableReplicas'),
    ('DeploymentStatus', 'unavailableReplicas'),
    ('JobStatus', 'active'),
    ('JobStatus', 'succeeded'),
    ('JobStatus', 'failed'),
    ('ServiceBackendPort', 'number'),
    ('ContainerPort', 'hostPort'),
    ('Probe', 'initialDelaySeconds'),
    ('Probe', 'timeoutSeconds'),
    ('Probe', 'periodSeconds'),
    ('Probe', 'successThreshold'),
    ('Probe', 'failureThreshold'),
    ('GcePersistentDiskVolumeSource', 'partition'),
    ('AwsElasticBlockStoreVolumeSource', 'partition'),
}

SCALARS = {'string': 'Str', 'bytes': 'Bytes', 'int32': 'Int32', 'int64': 'Int64', 'bool': 'Bool', 'double': 'Double'}


def parse_module(module):
    path = f'{PB}/{module}/mod.rs'
    source = open(path).read()
    structs = {}
    for match in re.finditer(r'pub struct (\w+) \{(.*?)\n\}', source, re.S):
        fields, attr, declaration = [], None, None
        for line in match.group(2).split('\n'):
            line = line.strip()
            if declaration is not None:
                # A long field type continues on the next lines, up to its comma.
                declaration += line
                if line.endswith(',') and declaration.count('<') == declaration.count('>'):
                    f = re.match(r'pub (?:r#)?(\w+):\s*(.*)', declaration)
                    fields.append((attr, f.group(1), f.group(2)))
                    attr, declaration = None, None
                continue
            a = re.match(r'#\[prost\((.*)\)\]', line)
            if a:
                attr = a.group(1)
                continue
            if attr and line.startswith('pub '):
                declaration = line
                if line.endswith(',') and line.count('<') == line.count('>'):
                    f = re.match(r'pub (?:r#)?(\w+):\s*(.*)', declaration)
                    fields.append((attr, f.group(1), f.group(2)))
                    attr, declaration = None, None
        structs[match.group(1)] = fields
    return structs


MODULES = {}


def module(name):
    if name not in MODULES:
        MODULES[name] = parse_module(name)
    return MODULES[name]


def resolve(current, rust_type):
    """(module, struct) of a message field's Rust type path, relative to `current`."""
    inner = re.search(r'(?:Option|Vec)<(.*)>$', rust_type.rstrip(','))
    path = (inner.group(1) if inner else rust_type).rstrip(',')
    parts = path.split('::')
    name = parts[-1]
    mod = current.split('/')
    for part in parts[:-1]:
        if part == 'super':
            mod = mod[:-1]
        elif part:
            mod = mod + [part]
    return '/'.join(mod), name


def map_value(rust_type):
    """The value type of a `BTreeMap<String, V>` field type."""
    return re.search(r'BTreeMap<\s*[\w:]*String,\s*(.*?),?\s*>,?$', rust_type).group(1)


def snake(name):
    """`DownwardAPIVolumeSource` -> `downward_api_volume_source`, as k8s-openapi names files."""
    name = re.sub(r'(.)([A-Z][a-z]+)', r'\1_\2', name)
    return re.sub(r'([a-z0-9])([A-Z])', r'\1_\2', name).lower()


def json_names(mod, struct):
    """Rust field name -> JSON name, from k8s-openapi's serde code for the same type."""
    rel = mod[len('api/'):] if mod.startswith('api/') else mod
    candidates = [f'{OPENAPI}/{"api/" + rel if mod.startswith("api/") else rel}/{snake(struct)}.rs']
    for path in candidates:
        if os.path.exists(path):
            source = open(path).read()
            # Keyed without underscores: k8s-openapi writes `type_` and `target_wwns` where k8s-pb
            # writes `type` and `target_ww_ns`.
            return dict((rust.replace('_', ''), json) for json, rust in re.findall(r'"([^"]+)" => Field::Key_(\w+),', source))
    return None


def static_name(mod, struct, taken):
    base = snake(struct).upper()
    if taken.get(base, (mod, struct)) != (mod, struct):
        base = mod.split('/')[-2].upper() + '_' + base
    taken[base] = (mod, struct)
    return base


def main():
    order, seen, taken, names = [], set(), {}, {}
    pending = [(mod, kind) for _, kind, mod in ROOTS]
    while pending:
        key = pending.pop(0)
        if key in seen or key in SPECIAL:
            continue
        seen.add(key)
        order.append(key)
        names[key] = static_name(*key, taken)
        mod, struct = key
        for attr, rust, rust_type in module(mod)[struct]:
            if attr.startswith('message'):
                pending.append(resolve(mod, rust_type))
            elif 'string, message' in attr and resolve(mod, map_value(rust_type))[1] != 'ExtraValue':
                pending.append(resolve(mod, map_value(rust_type)))

    out = ['// Generated by generate.py from k8s-pb 0.8 (field numbers) and k8s-openapi 0.29, v1_33',
           '// (JSON names). Do not edit: change generate.py and run it again.',
           '',
           'use super::Type::*;',
           'use super::{Schema, list, omit_zero, one};',
           '']
    missing, used = [], set()
    # Go structs embedded with `json:",inline"` (VolumeSource in Volume, ProbeHandler in Probe,
    # IngressRuleValue in IngressRule) are a message field in protobuf but have no JSON name: their
    # fields are written into the parent. k8s-openapi names them under the parent's type.
    inline_parent = {}
    for key in order:
        mod, struct = key
        jsons = json_names(mod, struct)
        if key in inline_parent:
            jsons = {**(jsons or {}), **(json_names(*inline_parent[key]) or sys.exit(f"{key} inline in {inline_parent[key]}, which has no k8s-openapi type"))}
        for attr, rust, rust_type in module(mod)[struct]:
            if attr.startswith('message') and rust.replace('_', '') not in (jsons or {}):
                target = resolve(mod, rust_type)
                if target not in SPECIAL and json_names(*target) is None:
                    inline_parent[target] = inline_parent.get(key, key)
    for key in order:
        mod, struct = key
        jsons = json_names(mod, struct)
        if key in inline_parent:
            jsons = {**(jsons or {}), **(json_names(*inline_parent[key]) or sys.exit(f"{key} inline in {inline_parent[key]}, which has no k8s-openapi type"))}
        if jsons is None:
            sys.exit(f'no k8s-openapi type for {mod}/{struct}')
        rows = []
        for attr, rust, rust_type in module(mod)[struct]:
            number = int(re.search(r'tag = "(\d+)"', attr).group(1))
            if attr.startswith('message') and rust.replace('_', '') not in jsons and resolve(mod, rust_type) not in SPECIAL:
                rows.append((number, f'one({number}, "", Inline(&{names[resolve(mod, rust_type)]}))'))
                continue
            json = jsons.get(rust.replace('_', ''))
            if json is None:
                missing.append(f'{struct}.{rust}')
                continue
            repeated = 'repeated' in attr
            kind = attr.split(',')[0].strip()
            if kind.startswith('btree_map'):
                value = re.search(r'btree_map = "string, (\w+)"', attr).group(1)
                if value == 'message':
                    target = resolve(mod, map_value(rust_type))
                    if target == ('apimachinery/pkg/api/resource', 'Quantity'):
                        ty = 'QuantityMap'
                    elif target[1] == 'ExtraValue':
                        ty = 'StrListMap'
                    else:
                        sys.exit(f'a map of {target} in {struct}.{rust}')
                else:
                    ty = {'string': 'StrMap', 'bytes': 'BytesMap'}[value]
            elif kind == 'message':
                target = resolve(mod, rust_type)
                ty = SPECIAL[target] if target in SPECIAL else f'Msg(&{names[target]})'
            elif kind == 'enumeration':
                sys.exit(f'an enumeration in {struct}.{rust}')
            else:
                ty = SCALARS[kind]
            constructor = 'list' if repeated else 'one'
            if (struct, json) in ZERO_IS_UNSET:
                constructor = 'omit_zero'
                used.add((struct, json))
            rows.append((number, f'{constructor}({number}, "{json}", {ty})'))
        rows.sort()
        body = ''.join(f'        {row},\n' for _, row in rows)
        out.append(f'pub(super) static {names[key]}: Schema = Schema {{\n    name: "{struct}",\n    fields: &[\n{body}    ],\n}};')
        out.append('')
    if used != ZERO_IS_UNSET:
        sys.exit(f'ZERO_IS_UNSET names fields no table has: {ZERO_IS_UNSET - used}')
    out.append('/// The kinds decoded: (apiVersion, kind, message).')
    roots = ''.join(f'    ("{v}", "{k}", &{names[(m, k)]}),\n' for v, k, m in ROOTS)
    out.append(f'pub(super) static KINDS: &[(&str, &str, &Schema)] = &[\n{roots}];')
    if missing:
        out.append('')
        out.append('// Left out, newer than v1_33:')
        out.extend(f'// - {field}' for field in missing)
    print('\n'.join(out))


main()
