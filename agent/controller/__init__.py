"""The Kubernetes controller: `secrets-agent controller` keeps Secret copies of ExternalSecrets.

It watches `ExternalSecret`, `SecretStore` and `ClusterSecretStore` of `secrets-agent.io/v1alpha1`
and, for each ExternalSecret, fetches through the store, builds the snapshot with
`agent.snapshot` (the same code as the in-pod agent) and creates or updates the target Secret.
See docs/controller.md. kopf is imported only by `agent.controller.handlers` and the modules
it loads, so importing this package costs nothing for the in-pod agent.
"""

from __future__ import annotations

GROUP = "secrets-agent.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Labels on every Secret the controller writes. The controller watches only Secrets with the
# first one (a server-side label selector), so it never caches other Secrets.
MANAGED_LABEL = "secrets-agent.io/managed"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "secrets-agent"

# Annotations on managed Secrets: the hash of the managed data (drift detection), which secret
# keys each ExternalSecret owns (a JSON object of name -> key list), and Stakater Reloader's
# search-mode opt-in.
DATA_HASH_ANNOTATION = "secrets-agent.io/data-hash"
MANAGED_KEYS_ANNOTATION = "secrets-agent.io/managed-keys"
RELOADER_MATCH_ANNOTATION = "reloader.stakater.com/match"
# The lease records of dynamic secrets (a JSON object of ExternalSecret name -> records; lease
# ids, times and secret key names, never a value), read back after a restart.
LEASES_ANNOTATION = "secrets-agent.io/leases"
# The labels and annotations `spec.target.template.metadata` set (a JSON object of ExternalSecret
# name -> {"labels": [...], "annotations": [...]}), so that removing one there removes it here.
TEMPLATE_METADATA_ANNOTATION = "secrets-agent.io/template-metadata"

FINALIZER = "secrets-agent.io/finalizer"
