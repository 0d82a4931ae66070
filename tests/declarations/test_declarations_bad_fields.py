"""One bad field per case: each error names the file, document, object, field path and fix.

Every case changes one field of the valid documents in `declaration_manifests` and expects the
error at `field`, with `problem` and `fix` as substrings of what the user reads.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from declaration_manifests import (
    DECLARATIONS_FILE,
    DELETE,
    EXTERNAL_SECRET,
    SSM_STORE,
    VAULT_STORE,
    base_documents,
    dump,
    error_at,
    load_errors,
    with_field,
    write,
)

OBJECTS = {
    SSM_STORE: ("SecretStore", "aws-ssm"),
    VAULT_STORE: ("ClusterSecretStore", "vault"),
    EXTERNAL_SECRET: ("ExternalSecret", "payment"),
}
NOT_YET = "not supported by secrets-agent yet"


@dataclass(frozen=True)
class Case:
    id: str
    document: int
    path: str
    value: Any
    field: str
    problem: str
    fix: str
    # Some inputs are wrong in two ways (a misspelt required field is also missing).
    errors: int = 1
    # The kind and name the error names, when the case changes them.
    kind: str | None = None
    name: str | None = None
    # Other fields the case sets, path -> value.
    also: tuple[tuple[str, Any], ...] = ()


def es(id: str, path: str, value: Any, problem: str, fix: str, **options: Any) -> Case:
    """Build an ExternalSecret case. The error is expected at `path` unless `field` is given."""
    field = options.pop("field", path)
    return Case(id, EXTERNAL_SECRET, path, value, field, problem, fix, **options)


def ssm(id: str, path: str, value: Any, problem: str, fix: str, **options: Any) -> Case:
    field = options.pop("field", path)
    return Case(id, SSM_STORE, path, value, field, problem, fix, **options)


def vault(id: str, path: str, value: Any, problem: str, fix: str, **options: Any) -> Case:
    field = options.pop("field", path)
    return Case(id, VAULT_STORE, path, value, field, problem, fix, **options)


AUTH = "spec.provider.vault.auth"
AWS = "spec.provider.aws"
REMOTE_REF = "spec.data[0].remoteRef"

EXTERNAL_SECRET_CASES = [
    # header and metadata
    es("kind missing", "kind", DELETE, "required field is missing", "only SecretStore", kind=""),
    es("kind Secret", "kind", "Secret", "Secret is not supported", "Store", kind="Secret"),
    es(
        "kind ClusterExternalSecret",
        "kind",
        "ClusterExternalSecret",
        "ClusterExternalSecret is not supported",
        "ExternalSecret",
        kind="ClusterExternalSecret",
    ),
    es("apiVersion missing", "apiVersion", DELETE, "required field", "secrets-agent.io/v1alpha1"),
    es(
        "apiVersion ESO v1alpha1",
        "apiVersion",
        "external-secrets.io/v1alpha1",
        "not supported",
        "external-secrets.io/v1beta1",
    ),
    es("top-level stringData", "stringData", {"a": "b"}, "not supported", "remove it"),
    es("metadata missing", "metadata", DELETE, "required field is missing", "add it", name=""),
    es("metadata.name missing", "metadata.name", DELETE, "required field", "add it", name=""),
    es("metadata.name empty", "metadata.name", "", "must not be empty", "give it", name=""),
    es(
        "label not a string",
        "metadata.labels.version",
        2,
        "expected a string",
        "quote the value",
    ),
    es(
        "label key a number",
        "metadata.labels",
        {1: "payment"},
        "map key must be a string",
        "quote the key",
        field='metadata.labels["1"]',
    ),
    es(
        "field name a number",
        f"{REMOTE_REF}",
        {"key": "/production/payment/db-password", 1: "x"},
        "field name must be a string",
        "quote it",
        field=f'{REMOTE_REF}["1"]',
    ),
    es(
        "file-mode annotation not octal",
        'metadata.annotations["secrets-agent.io/file-mode"]',
        "rw-r",
        "invalid file mode",
        '"0440"',
    ),
    es(
        "file-mode annotation with setuid",
        'metadata.annotations["secrets-agent.io/file-mode"]',
        "4755",
        "invalid file mode",
        "permission bits",
    ),
    es(
        "file-uid annotation negative",
        'metadata.annotations["secrets-agent.io/file-uid"]',
        "-1",
        "invalid file uid",
        "from 0 to 4294967294",
    ),
    es(
        "file-gid annotation too large",
        'metadata.annotations["secrets-agent.io/file-gid"]',
        "4294967295",
        "invalid file gid",
        "from 0 to 4294967294",
    ),
    es(
        "own annotation misspelt",
        'metadata.annotations["secrets-agent.io/file-modee"]',
        "0440",
        "unknown secrets-agent annotation",
        "did you mean secrets-agent.io/file-mode?",
    ),
    es(
        "own annotation unknown",
        'metadata.annotations["secrets-agent.io/owner"]',
        "payments",
        "unknown secrets-agent annotation",
        "secrets-agent reads only secrets-agent.io/file-mode",
    ),
    es(
        "own subdomain annotation unknown",
        'metadata.annotations["notify.secrets-agent.io/target"]',
        "x",
        "unknown secrets-agent annotation",
        "remove it",
    ),
    # spec
    es("spec missing", "spec", DELETE, "required field is missing", "add it"),
    es("spec a list", "spec", ["data"], "expected a mapping", "indentation"),
    es("secretStoreRef missing", "spec.secretStoreRef", DELETE, "required field", "add it"),
    es("secretStoreRef.name missing", "spec.secretStoreRef.name", DELETE, "required", "add it"),
    es(
        "secretStoreRef.kind invalid",
        "spec.secretStoreRef.kind",
        "Store",
        "invalid value",
        "use 'SecretStore' or 'ClusterSecretStore'",
    ),
    es("refreshInterval with space", "spec.refreshInterval", "1 h", "space", "1h30m"),
    es("refreshInterval bare number", "spec.refreshInterval", 10, "needs a unit", "600s"),
    es("refreshInterval negative", "spec.refreshInterval", "-5m", "negative", "Go duration"),
    es("refreshInterval days", "spec.refreshInterval", "1d", "days", "24h"),
    es("refreshInterval boolean", "spec.refreshInterval", True, "true or false", "Go duration"),
    es("refreshInterval 1ms", "spec.refreshInterval", "1ms", "shorter than 1s", "0 to fetch once"),
    es("refreshInterval 999ms", "spec.refreshInterval", "999ms", "shorter than 1s", "1s or more"),
    es(
        "refreshPolicy OnChange",
        "spec.refreshPolicy",
        "OnChange",
        "only the default 'Periodic' is supported by secrets-agent yet",
        "refreshInterval 0 fetches once",
    ),
    es("syncWindows", "spec.syncWindows", {"kind": "allow"}, NOT_YET, "refreshInterval"),
    es("misspelt data", "spec.datas", [], "unknown field", "did you mean data?"),
    es(
        "nothing to fetch",
        "spec.data",
        DELETE,
        "nothing to fetch",
        "add spec.data or spec.dataFrom",
        field="spec",
    ),
    # target
    es(
        "target.template.templateFrom",
        "spec.target.template.templateFrom",
        [{"configMap": {"name": "templates", "items": [{"key": "app.properties"}]}}],
        NOT_YET,
        "write each template in spec.target.template.data",
    ),
    es(
        "target.template.engineVersion v1",
        "spec.target.template.engineVersion",
        "v1",
        "only the default 'v2' is supported by secrets-agent yet",
        "rendered with Jinja2",
    ),
    es(
        "target.template.mergePolicy invalid",
        "spec.target.template.mergePolicy",
        "Overwrite",
        "invalid value",
        "use 'Replace' or 'Merge'",
    ),
    es("target.manifest", "spec.target.manifest", {"kind": "ConfigMap"}, NOT_YET, "remove it"),
    es(
        "target.creationPolicy CreateOrMerge",
        "spec.target.creationPolicy",
        "CreateOrMerge",
        "invalid value",
        "use 'Owner', 'Orphan', 'Merge' or 'None'",
    ),
    es(
        "deletionPolicy Delete with creationPolicy Merge",
        "spec.target",
        {"name": "payment-secrets", "creationPolicy": "Merge", "deletionPolicy": "Delete"},
        "deletionPolicy Delete cannot be combined with creationPolicy Merge",
        "use creationPolicy Owner",
    ),
    es(
        "deletionPolicy Merge with creationPolicy None",
        "spec.target",
        {"name": "payment-secrets", "creationPolicy": "None", "deletionPolicy": "Merge"},
        "deletionPolicy Merge cannot be combined with creationPolicy None",
        "deletionPolicy Retain",
    ),
    es(
        "target.immutable string", "spec.target.immutable", "yes", "expected true or false", "write"
    ),
    es("target.name unsafe", "spec.target.name", "..payment", "target name", "plain directory"),
    es("target.name with slash", "spec.target.name", "a/b", "contains '/'", "plain directory"),
    es("target.name with newline", "spec.target.name", "a\nb", "control character", "plain"),
    es("target.name padded", "spec.target.name", "payment ", "ends with whitespace", "plain"),
    es("secretKey with tab", "spec.data[0].secretKey", "db\tpass", "control character", "plain"),
    es(
        "target.name from unsafe metadata.name",
        "spec.target",
        {},
        "target name '..payment'",
        "plain directory",
        field="metadata.name",
        name="..payment",
        also=(("metadata.name", "..payment"),),
    ),
    # data[]
    es("data a mapping", "spec.data", {"db-password": "/x"}, "expected a list", "'- '"),
    es("data entry a string", "spec.data[0]", "db-password", "expected a mapping", "indent"),
    es("secretKey missing", "spec.data[0].secretKey", DELETE, "required field", "add it"),
    es("secretKey empty", "spec.data[0].secretKey", "", "must not be empty", "give it a value"),
    es("secretKey number", "spec.data[0].secretKey", 5432, "expected a string", "quote"),
    es("secretKey reserved", "spec.data[0].secretKey", "..data", "reserved", "plain file name"),
    es("secretKey dot", "spec.data[0].secretKey", ".", "is '.'", "plain file name"),
    es("secretKey NUL", "spec.data[0].secretKey", "a\x00b", "NUL", "plain file name"),
    es("secretKey too long", "spec.data[0].secretKey", "k" * 256, "256 bytes", "plain file"),
    es(
        "secretKey nested while nested keys are off",
        "spec.data[0].secretKey",
        "tls/key.pem",
        "contains '/'",
        "--nested-keys",
    ),
    es(
        "secretKey declared twice",
        "spec.data[1].secretKey",
        "db-password",
        "'db-password' is declared twice (also spec.data[0])",
        "remove one of the entries",
    ),
    es("data sourceRef", "spec.data[0].sourceRef", {"storeRef": {"name": "x"}}, NOT_YET, "spec"),
    es(
        "misspelt remoteRef",
        "spec.data[0].remoteref",
        {"key": "x"},
        "unknown field",
        "did you mean remoteRef?",
        errors=2,
        also=((REMOTE_REF, DELETE),),
    ),
    es("remoteRef missing", REMOTE_REF, DELETE, "required field is missing", "add it"),
    es("remoteRef.key missing", f"{REMOTE_REF}.key", DELETE, "required field", "add it"),
    es("remoteRef.key empty", f"{REMOTE_REF}.key", "", "must not be empty", "give it a value"),
    es("remoteRef.key mapping", f"{REMOTE_REF}.key", {"a": 1}, "expected a string", "quote"),
    es("remoteRef.version number", f"{REMOTE_REF}.version", 3, "expected a string", "quote"),
    es("remoteRef.property boolean", f"{REMOTE_REF}.property", True, "a string", "quote"),
    es(
        "remoteRef.decodingStrategy lower case",
        f"{REMOTE_REF}.decodingStrategy",
        "base64",
        "invalid value",
        "use 'None', 'Base64', 'Base64URL' or 'Auto'",
    ),
    es(
        "remoteRef.metadataPolicy Fetch",
        f"{REMOTE_REF}.metadataPolicy",
        "Fetch",
        "only the default 'None' is supported by secrets-agent yet",
        "metadata is not supported",
    ),
    es(
        "remoteRef.conversionStrategy Unicode",
        f"{REMOTE_REF}.conversionStrategy",
        "Unicode",
        "only the default 'Default'",
        "remove it",
    ),
    es("remoteRef.nullBytePolicy", f"{REMOTE_REF}.nullBytePolicy", "Fail", NOT_YET, "remove it"),
    es(
        "remoteRef unknown field",
        f"{REMOTE_REF}.value",
        "x",
        "field not supported",
        "key, property, version, decodingStrategy",
    ),
    # dataFrom[]
    es(
        "dataFrom sourceRef generator kind",
        "spec.dataFrom",
        [{"sourceRef": {"generatorRef": {"kind": "Password", "name": "pw"}}}],
        "this generator kind is not supported by secrets-agent yet",
        "use a VaultDynamicSecret",
        field="spec.dataFrom[0].sourceRef.generatorRef.kind",
    ),
    es(
        "dataFrom sourceRef storeRef",
        "spec.dataFrom",
        [
            {
                "extract": {"key": "/a"},
                "sourceRef": {"storeRef": {"name": "other"}},
            }
        ],
        NOT_YET,
        "name the store in spec.secretStoreRef",
        field="spec.dataFrom[0].sourceRef.storeRef",
        # sourceRef.generatorRef is then missing too.
        errors=2,
    ),
    es(
        "dataFrom sourceRef generator apiVersion",
        "spec.dataFrom",
        [
            {
                "sourceRef": {
                    "generatorRef": {
                        "apiVersion": "external-secrets.io/v1",
                        "kind": "VaultDynamicSecret",
                        "name": "db",
                    }
                }
            }
        ],
        "not a generator apiVersion",
        "generators.external-secrets.io/v1alpha1",
        field="spec.dataFrom[0].sourceRef.generatorRef.apiVersion",
    ),
    es(
        "dataFrom extract and find",
        "spec.dataFrom",
        [{"extract": {"key": "/a"}, "find": {"path": "/b"}}],
        "found extract and find, expected exactly one source",
        "keep one of them",
        field="spec.dataFrom[0]",
    ),
    es(
        "dataFrom with neither extract nor find",
        "spec.dataFrom",
        [{"rewrite": [{"regexp": {"source": "a", "target": "b"}}]}],
        "no source is set, expected exactly one (extract, find, sourceRef)",
        "add one of them",
        field="spec.dataFrom[0]",
    ),
    es(
        "dataFrom extract metadataPolicy Fetch",
        "spec.dataFrom",
        [{"extract": {"key": "/a", "metadataPolicy": "Fetch"}}],
        "only the default 'None'",
        "metadata is not supported",
        field="spec.dataFrom[0].extract.metadataPolicy",
    ),
    es(
        "find.tags",
        "spec.dataFrom",
        [{"find": {"tags": {"team": "payment"}}}],
        NOT_YET,
        "find.path and find.name.regexp",
        field="spec.dataFrom[0].find.tags",
    ),
    es(
        "find with nothing to find",
        "spec.dataFrom",
        [{"find": {"decodingStrategy": "Auto"}}],
        "nothing to find",
        "set find.path, find.name.regexp or both",
        field="spec.dataFrom[0].find",
    ),
    es(
        "find.name.regexp invalid",
        "spec.dataFrom",
        [{"find": {"name": {"regexp": "db-(password"}}}],
        "invalid regular expression",
        "fix the pattern",
        field="spec.dataFrom[0].find.name.regexp",
    ),
    es(
        "find.conversionStrategy Unicode",
        "spec.dataFrom",
        [{"find": {"path": "/a", "conversionStrategy": "Unicode"}}],
        "only the default 'Default'",
        "remove it",
        field="spec.dataFrom[0].find.conversionStrategy",
    ),
    es(
        "rewrite transform",
        "spec.dataFrom",
        [{"find": {"path": "/a"}, "rewrite": [{"transform": {"template": "x"}}]}],
        NOT_YET,
        "only rewrite[].regexp",
        field="spec.dataFrom[0].rewrite[0].transform",
        errors=2,
    ),
    es(
        "rewrite regexp source invalid",
        "spec.dataFrom",
        [{"find": {"path": "/a"}, "rewrite": [{"regexp": {"source": "(", "target": "x"}}]}],
        "invalid regular expression",
        "fix the pattern",
        field="spec.dataFrom[0].rewrite[0].regexp.source",
    ),
    es(
        "rewrite regexp lookahead",
        "spec.dataFrom",
        [{"find": {"path": "/a"}, "rewrite": [{"regexp": {"source": "a(?=b)", "target": "x"}}]}],
        "lookahead and lookbehind assertions",
        "remove them",
        field="spec.dataFrom[0].rewrite[0].regexp.source",
    ),
    es(
        "find.name.regexp Python-only \\Z",
        "spec.dataFrom",
        [{"find": {"name": {"regexp": "db\\Z"}}}],
        "\\Z is not part of Go's regular expression syntax",
        "write \\z",
        field="spec.dataFrom[0].find.name.regexp",
    ),
    es(
        "rewrite regexp target missing",
        "spec.dataFrom",
        [{"find": {"path": "/a"}, "rewrite": [{"regexp": {"source": "^/a/"}}]}],
        "required field is missing",
        "add it",
        field="spec.dataFrom[0].rewrite[0].regexp.target",
    ),
]

SECRET_REF = f"{AWS}.auth.secretRef"
VALID_SECRET_REF = {
    "accessKeyIDSecretRef": {"name": "aws", "key": "id"},
    "secretAccessKeySecretRef": {"name": "aws", "key": "secret"},
    "sessionTokenSecretRef": {"name": "aws", "key": "session-token"},
}
OBJECT_NAME_FIX = "lowercase letters, digits, '-' and '.'"
DATA_KEY_FIX = "letters, digits, '-', '_' and '.'"
VAULT = "spec.provider.vault"


def secret_ref_case(id: str, field: str, value: str, problem: str, fix: str) -> Case:
    """An SSM store case whose secretRef has one bad `name` or `key` (field relative to it)."""
    secret_ref = with_field(copy.deepcopy(VALID_SECRET_REF), field, value)
    return ssm(id, SECRET_REF, secret_ref, problem, fix, field=f"{SECRET_REF}.{field}")


REFERENCE_CASES = [
    secret_ref_case(
        "secretRef name ..",
        "accessKeyIDSecretRef.name",
        "..",
        "invalid Kubernetes object name",
        OBJECT_NAME_FIX,
    ),
    secret_ref_case(
        "secretRef name with slash",
        "accessKeyIDSecretRef.name",
        "aws/../../etc",
        "invalid Kubernetes object name",
        OBJECT_NAME_FIX,
    ),
    secret_ref_case(
        "secretRef name upper case",
        "secretAccessKeySecretRef.name",
        "AWS-Keys",
        "invalid Kubernetes object name",
        "(e.g. vault-token)",
    ),
    secret_ref_case(
        "secretRef name too long",
        "secretAccessKeySecretRef.name",
        "a" * 254,
        "invalid Kubernetes object name",
        "at most 253 characters",
    ),
    secret_ref_case(
        "secretRef key with slash",
        "accessKeyIDSecretRef.key",
        "victim/file",
        "invalid Secret or ConfigMap key",
        DATA_KEY_FIX,
    ),
    secret_ref_case(
        "secretRef key absolute",
        "accessKeyIDSecretRef.key",
        "/etc/passwd",
        "invalid Secret or ConfigMap key",
        DATA_KEY_FIX,
    ),
    secret_ref_case(
        "secretRef key ..",
        "secretAccessKeySecretRef.key",
        "..",
        "invalid Secret or ConfigMap key",
        "not '.' or '..'",
    ),
    secret_ref_case(
        "sessionTokenSecretRef name ..",
        "sessionTokenSecretRef.name",
        "..",
        "invalid Kubernetes object name",
        OBJECT_NAME_FIX,
    ),
    ssm(
        "aws jwt serviceAccountRef name ..",
        f"{AWS}.auth.jwt.serviceAccountRef.name",
        "..",
        "invalid Kubernetes object name",
        OBJECT_NAME_FIX,
        also=((f"{AWS}.role", "arn:aws:iam::000000000000:role/payment"),),
    ),
    vault(
        "vault caProvider name ..",
        f"{VAULT}.caProvider",
        {"type": "Secret", "name": "..", "key": "ca.crt"},
        "invalid Kubernetes object name",
        OBJECT_NAME_FIX,
        field=f"{VAULT}.caProvider.name",
    ),
    vault(
        "vault caProvider key absolute",
        f"{VAULT}.caProvider",
        {"type": "ConfigMap", "name": "vault-ca", "key": "/etc/ssl/ca.crt"},
        "invalid Secret or ConfigMap key",
        DATA_KEY_FIX,
        field=f"{VAULT}.caProvider.key",
    ),
    vault(
        "vault kubernetes serviceAccountRef name ..",
        f"{AUTH}.kubernetes.serviceAccountRef",
        {"name": "../../../../etc"},
        "invalid Kubernetes object name",
        OBJECT_NAME_FIX,
        field=f"{AUTH}.kubernetes.serviceAccountRef.name",
    ),
    vault(
        "vault tokenSecretRef key with slash",
        AUTH,
        {"tokenSecretRef": {"name": "vault-token", "key": "victim/file"}},
        "invalid Secret or ConfigMap key",
        DATA_KEY_FIX,
        field=f"{AUTH}.tokenSecretRef.key",
    ),
    vault(
        "vault appRole secretRef name ..",
        AUTH,
        {"appRole": {"roleId": "fake-role-id", "secretRef": {"name": "..", "key": "secret-id"}}},
        "invalid Kubernetes object name",
        OBJECT_NAME_FIX,
        field=f"{AUTH}.appRole.secretRef.name",
    ),
]

# Problems that `once` used to find only when it reached the store.
LOAD_TIME_CASES = [
    ssm(
        "aws jwt without role",
        f"{AWS}.auth",
        {"jwt": {"serviceAccountRef": {"name": "payment"}}},
        "auth.jwt is set but role is missing",
        "set role to the ARN",
        field=AWS,
    ),
    vault(
        "vault.caBundle base64 of no certificate",
        f"{VAULT}.caBundle",
        "ZmFrZS1jYS1idW5kbGU=",
        "contains no PEM certificate",
        "-----BEGIN CERTIFICATE-----",
    ),
    vault(
        "vault.caBundle PEM block with a broken body",
        f"{VAULT}.caBundle",
        "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        "contains no PEM certificate",
        "as base64 of that text",
    ),
    vault("vault.server without host", f"{VAULT}.server", "http://", "has no host", "https://"),
    vault(
        "vault.server with user and password",
        f"{VAULT}.server",
        "http://agent:fake-password-1@vault.example:8200",
        "contains a user name or password",
        "log in with spec.provider.vault.auth",
    ),
    vault(
        "vault.server with a path",
        f"{VAULT}.server",
        "http://vault.example:8200/v1/",
        "the URL has a path, query or fragment",
        "drop it",
    ),
    vault(
        "vault.server with a query",
        f"{VAULT}.server",
        "https://vault.example:8200?tls=1",
        "the URL has a path, query or fragment",
        "drop it",
    ),
    vault("vault.server bad port", f"{VAULT}.server", "https://vault:99999", "invalid URL", "e.g."),
    vault(
        "vault.server with a space",
        f"{VAULT}.server",
        "https://vault example:8200",
        "a space or a control character",
        "https://",
    ),
    vault(
        "vault.namespace with ..",
        f"{VAULT}.namespace",
        "team-a/../admin",
        "'..' path segment",
        "team-a/payments",
    ),
    vault(
        "vault.namespace with an empty segment",
        f"{VAULT}.namespace",
        "team-a//payments",
        "an empty, '.' or '..' path segment",
        "team-a/payments",
    ),
    vault("vault.namespace only a slash", f"{VAULT}.namespace", "/", "only '/'", "VAULT_NAMESPACE"),
    vault(
        "vault.auth.namespace with ..",
        f"{AUTH}.namespace",
        "..",
        "'..' path segment",
        "team-a",
    ),
    vault(
        "own annotation on a store",
        'metadata.annotations["secrets-agent.io/file-mode"]',
        "0440",
        "unknown secrets-agent annotation",
        "on ExternalSecrets",
    ),
]

STORE_CASES = [
    ssm("store spec.controller", "spec.controller", "dev", NOT_YET, "External Secrets Operator"),
    ssm("store retrySettings", "spec.retrySettings", {"maxRetries": 3}, NOT_YET, "own backoff"),
    ssm(
        "store refreshInterval",
        "spec.refreshInterval",
        60,
        NOT_YET,
        "set it on each ExternalSecret",
    ),
    ssm("provider missing", "spec.provider", DELETE, "required field is missing", "add it"),
    ssm(
        "provider empty",
        "spec.provider",
        {},
        "no provider is set, expected exactly one (aws, vault)",
        "add one of them",
    ),
    ssm("provider gcpsm", "spec.provider.gcpsm", {"projectID": "p"}, NOT_YET, "provider.aws"),
    ssm("aws a string", f"{AWS}", "ParameterStore", "expected a mapping", "indentation"),
    ssm(
        "aws.service CertificateManager",
        f"{AWS}.service",
        "CertificateManager",
        "invalid value",
        "use 'ParameterStore' or 'SecretsManager'",
    ),
    ssm("aws.service missing", f"{AWS}.service", DELETE, "required field", "add it"),
    ssm("aws.region number", f"{AWS}.region", 1, "expected a string", "quote"),
    ssm("aws.additionalRoles", f"{AWS}.additionalRoles", ["arn:x"], NOT_YET, "chaining"),
    ssm("aws.externalID", f"{AWS}.externalID", "x", NOT_YET, "provider.aws.role"),
    ssm("aws.sessionTags", f"{AWS}.sessionTags", [], NOT_YET, "session tags"),
    ssm("aws.prefix", f"{AWS}.prefix", "/production", NOT_YET, "full name in each remote key"),
    ssm("aws.secretsManager", f"{AWS}.secretsManager", {}, NOT_YET, "pushing secrets"),
    ssm(
        "aws.auth empty",
        f"{AWS}.auth",
        {},
        "no auth method is set",
        "remove auth to use the pod's own identity",
    ),
    ssm(
        "aws.auth with two methods",
        f"{AWS}.auth",
        {
            "jwt": {"serviceAccountRef": {"name": "payment"}},
            "secretRef": {
                "accessKeyIDSecretRef": {"name": "aws", "key": "id"},
                "secretAccessKeySecretRef": {"name": "aws", "key": "secret"},
            },
        },
        "found jwt and secretRef",
        "keep one of them",
    ),
    ssm(
        "aws.auth.secretRef without secret key",
        f"{AWS}.auth.secretRef",
        {"accessKeyIDSecretRef": {"name": "aws", "key": "id"}},
        "required field is missing",
        "add it",
        field=f"{AWS}.auth.secretRef.secretAccessKeySecretRef",
    ),
    ssm(
        "aws.auth.secretRef misspelt key id",
        f"{AWS}.auth.secretRef",
        {
            "accessKeyIdSecretRef": {"name": "aws", "key": "id"},
            "secretAccessKeySecretRef": {"name": "aws", "key": "secret"},
        },
        "unknown field",
        "did you mean accessKeyIDSecretRef?",
        field=f"{AWS}.auth.secretRef.accessKeyIdSecretRef",
        errors=2,
    ),
    ssm(
        "aws.auth.jwt account name empty",
        f"{AWS}.auth.jwt.serviceAccountRef.name",
        "",
        "must not be empty",
        "give it a value",
    ),
    vault(
        "vault.server not a URL",
        "spec.provider.vault.server",
        "vault:8200",
        "not an http",
        "https://",
    ),
    vault("vault.version v3", "spec.provider.vault.version", "v3", "invalid value", "'v1' or 'v2'"),
    vault("vault.tls", "spec.provider.vault.tls", {"certSecretRef": {}}, NOT_YET, "client cert"),
    vault("vault.headers", "spec.provider.vault.headers", {"X-A": "b"}, NOT_YET, "headers"),
    vault("vault.checkAndSet", "spec.provider.vault.checkAndSet", {}, NOT_YET, "pushing"),
    vault(
        "vault.caProvider type",
        "spec.provider.vault.caProvider",
        {"type": "Vault", "name": "ca", "key": "ca.crt"},
        "invalid value",
        "use 'Secret' or 'ConfigMap'",
        field="spec.provider.vault.caProvider.type",
    ),
    vault("vault.auth missing", AUTH, DELETE, "required field is missing", "add it"),
    vault(
        "vault.auth.jwt",
        f"{AUTH}.jwt",
        {"path": "jwt", "role": "payment"},
        NOT_YET,
        "use auth.kubernetes, auth.appRole or auth.tokenSecretRef",
    ),
    vault("vault.auth.userPass", f"{AUTH}.userPass", {"username": "u"}, NOT_YET, "appRole"),
    vault(
        "vault.auth with two methods",
        f"{AUTH}.tokenSecretRef",
        {"name": "vault-token", "key": "token"},
        "found tokenSecretRef and kubernetes",
        "keep one of them",
        field=AUTH,
    ),
    vault(
        "vault.auth.kubernetes role missing",
        f"{AUTH}.kubernetes.role",
        DELETE,
        "required field is missing",
        "add it",
    ),
    vault(
        "vault.auth.appRole with roleId and roleRef",
        AUTH,
        {
            "appRole": {
                "roleId": "fake-role-id",
                "roleRef": {"name": "approle", "key": "role-id"},
                "secretRef": {"name": "approle", "key": "secret-id"},
            }
        },
        "found roleId and roleRef",
        "keep one of them",
        field=f"{AUTH}.appRole",
    ),
    vault(
        "vault.auth.appRole secretRef missing",
        AUTH,
        {"appRole": {"roleId": "fake-role-id"}},
        "required field is missing",
        "add it",
        field=f"{AUTH}.appRole.secretRef",
    ),
    vault(
        "vault.auth.tokenSecretRef a string",
        AUTH,
        {"tokenSecretRef": "vault-token"},
        "expected a mapping",
        "indentation",
        field=f"{AUTH}.tokenSecretRef",
    ),
]


ALL_CASES = EXTERNAL_SECRET_CASES + STORE_CASES + REFERENCE_CASES + LOAD_TIME_CASES


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda case: case.id)
def test_bad_field_reported(case: Case, tmp_path: Path) -> None:
    documents = base_documents()
    with_field(documents[case.document - 1], case.path, case.value)
    for path, value in case.also:
        with_field(documents[case.document - 1], path, value)
    file = write(tmp_path, DECLARATIONS_FILE, dump(documents))

    errors = load_errors(file)
    error = error_at(errors, case.field)

    kind, name = OBJECTS[case.document]
    assert len(errors) == case.errors, [str(e) for e in errors]
    assert error.source == str(file)
    assert error.document == case.document
    assert error.kind == (kind if case.kind is None else case.kind)
    assert error.name == (name if case.name is None else case.name)
    assert case.problem in error.problem
    assert case.fix in error.fix
    assert error.fix, "every error says what to do"
    assert "Input should" not in str(error)  # pydantic's own wording never reaches the user
