"""Valid declarations: External Secrets Operator manifests as a GitOps repository stores them.

Each manifest is written as ESO's users write them (v1beta1 and v1), with metadata, labels,
annotations and a `status` block, and must load unchanged with ESO's defaults applied.
"""

from __future__ import annotations

import json
from pathlib import Path

from declaration_manifests import base_documents, dump, write

from agent.declarations import load_declarations
from agent.writer import FileOwnership

SSM_V1BETA1 = """\
# Parameter Store for the payment service, read with the service account's IRSA role.
apiVersion: external-secrets.io/v1beta1
kind: SecretStore
metadata:
  name: aws-parameter-store
  namespace: payments
  labels:
    app.kubernetes.io/part-of: payments
  annotations:
    argocd.argoproj.io/sync-wave: "-1"
spec:
  provider:
    aws:
      service: ParameterStore
      region: eu-central-1
      role: arn:aws:iam::123456789012:role/payment-reader
      auth:
        jwt:
          serviceAccountRef:
            name: payment-service
---
apiVersion: external-secrets.io/v1beta1
kind: ExternalSecret
metadata:
  name: payment-db
  namespace: payments
  finalizers: []
  generation: 3
spec:
  refreshInterval: 15m
  secretStoreRef:
    name: aws-parameter-store
    kind: SecretStore
  target:
    name: payment-db-credentials
    creationPolicy: Owner
    deletionPolicy: Retain
  data:
  - secretKey: username
    remoteRef:
      key: /production/payment/db
      property: username
  - secretKey: password
    remoteRef:
      key: /production/payment/db
      property: password
      version: "3"
  dataFrom:
  - extract:
      key: /production/payment/feature-flags
  - find:
      path: /production/payment/api
      name:
        regexp: ".*-token$"
    rewrite:
    - regexp:
        source: "^/production/payment/api/(.*)$"
        target: "api_$1"
status:
  refreshTime: "2024-05-01T10:00:00Z"
  syncedResourceVersion: 3-0123456789abcdef
  conditions:
  - type: Ready
    status: "True"
    reason: SecretSynced
"""

SECRETS_MANAGER_V1 = """\
apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata:
  name: aws-secrets-manager
spec:
  provider:
    aws:
      service: SecretsManager
      region: us-east-1
      auth:
        secretRef:
          accessKeyIDSecretRef:
            name: aws-credentials
            key: access-key-id
            namespace: external-secrets
          secretAccessKeySecretRef:
            name: aws-credentials
            key: secret-access-key
            namespace: external-secrets
---
apiVersion: external-secrets.io/v1
kind: SecretStore
metadata:
  name: pod-identity
spec:
  provider:
    aws:
      service: SecretsManager
---
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata:
  name: order-service
spec:
  refreshInterval: "1h0m0s"
  secretStoreRef:
    kind: ClusterSecretStore
    name: aws-secrets-manager
  target:
    creationPolicy: Orphan
    deletionPolicy: Retain
    immutable: true
  data:
  - secretKey: stripe-api-key
    remoteRef:
      key: production/order-service/stripe
      property: api_key
      version: uuid/123e4567-e89b-12d3-a456-426614174000
      decodingStrategy: None
  - secretKey: signing-key.pem
    remoteRef:
      key: production/order-service/signing-key
      decodingStrategy: Base64
      conversionStrategy: Default
      metadataPolicy: None
---
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata:
  name: order-worker
spec:
  secretStoreRef:
    name: pod-identity
  dataFrom:
  - extract:
      key: production/order-worker/config
      decodingStrategy: Auto
"""

VAULT_V1 = """\
apiVersion: external-secrets.io/v1
kind: SecretStore
metadata:
  name: vault-kv
  namespace: orders
spec:
  provider:
    vault:
      server: "https://vault.example.internal:8200/"
      path: secret
      version: v2
      namespace: team-orders
      caProvider:
        type: ConfigMap
        name: vault-ca
        key: ca.crt
      auth:
        kubernetes:
          mountPath: kubernetes-prod
          role: order-service
          serviceAccountRef:
            name: order-service
            audiences: [vault]
---
apiVersion: external-secrets.io/v1beta1
kind: ClusterSecretStore
metadata:
  name: vault-approle
spec:
  provider:
    vault:
      server: http://127.0.0.1:8200
      path: kv
      version: v1
      auth:
        appRole:
          path: approle-ci
          roleRef:
            name: vault-approle
            key: role-id
          secretRef:
            name: vault-approle
            key: secret-id
---
apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata:
  name: vault-token
spec:
  provider:
    vault:
      server: https://vault.example.internal:8200
      caBundle: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tClptRnJaUT09Ci0tLS0tRU5EIENFUlRJRklDQVRFLS0tLS0K
      auth:
        namespace: admin
        tokenSecretRef:
          name: vault-token
          key: token
---
apiVersion: external-secrets.io/v1
kind: SecretStore
metadata:
  name: vault-minimal
spec:
  provider:
    vault:
      server: https://vault.example.internal:8200
      auth:
        kubernetes:
          role: order-service
---
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata:
  name: order-db
  namespace: orders
spec:
  refreshInterval: "0"
  secretStoreRef:
    name: vault-kv
  target:
    name: order-db
  data:
  - secretKey: password
    remoteRef:
      key: order-service/db
      property: password
  - secretKey: application.properties
    remoteRef:
      key: order-service/config
      property: spring.properties
      version: "2"
  dataFrom:
  - extract:
      key: order-service/feature-flags
      version: "4"
"""


def test_ssm_v1beta1_manifest_loads(tmp_path: Path) -> None:
    declarations = load_declarations([write(tmp_path, "payment.yaml", SSM_V1BETA1)])

    store = declarations.stores[("SecretStore", "aws-parameter-store")]
    aws = store.spec.provider.aws
    assert store.display_name == "aws-parameter-store"
    assert store.origin.document == 1
    assert aws is not None
    assert aws.service == "ParameterStore"
    assert aws.region == "eu-central-1"
    assert aws.role == "arn:aws:iam::123456789012:role/payment-reader"
    assert aws.auth is not None
    assert aws.auth.jwt is not None
    assert aws.auth.jwt.service_account_ref.name == "payment-service"
    assert store.spec.provider.vault is None

    [declaration] = declarations.external_secrets
    spec = declaration.spec
    assert declaration.name == "payment-db"
    assert declaration.namespace == "payments"
    assert declaration.origin.document == 2
    assert declaration.target == "payment-db-credentials"
    assert declaration.store_ref == ("SecretStore", "aws-parameter-store")
    assert spec.refresh_interval == 900.0
    assert [item.secret_key for item in spec.data] == ["username", "password"]
    assert spec.data[0].remote_ref.property_path == "username"
    assert spec.data[1].remote_ref.version == "3"
    assert spec.data[1].remote_ref.decoding_strategy == "None"
    assert spec.data_from[0].extract is not None
    assert spec.data_from[0].extract.key == "/production/payment/feature-flags"
    find = spec.data_from[1].find
    assert find is not None
    assert find.path == "/production/payment/api"
    assert find.name is not None
    assert find.name.regexp == ".*-token$"
    assert spec.data_from[1].rewrite[0].regexp.target == "api_$1"


def test_secrets_manager_v1_manifest_loads(tmp_path: Path) -> None:
    declarations = load_declarations([write(tmp_path, "orders.yaml", SECRETS_MANAGER_V1)])

    store = declarations.stores[("ClusterSecretStore", "aws-secrets-manager")]
    aws = store.spec.provider.aws
    assert store.display_name == "ClusterSecretStore/aws-secrets-manager"
    assert aws is not None
    assert aws.service == "SecretsManager"
    assert aws.auth is not None
    assert aws.auth.secret_ref is not None
    assert aws.auth.secret_ref.access_key_id_secret_ref.key == "access-key-id"
    assert aws.auth.secret_ref.secret_access_key_secret_ref.namespace == "external-secrets"
    assert aws.auth.secret_ref.session_token_secret_ref is None

    pod_identity = declarations.stores[("SecretStore", "pod-identity")].spec.provider.aws
    assert pod_identity is not None
    assert pod_identity.region is None  # from AWS_REGION at run time
    assert pod_identity.auth is None

    order_service, order_worker = declarations.external_secrets
    assert order_service.target == "order-service"  # target.name defaults to metadata.name
    assert order_service.store_ref == ("ClusterSecretStore", "aws-secrets-manager")
    assert order_service.spec.refresh_interval == 3600.0
    assert order_service.spec.target.creation_policy == "Orphan"
    assert order_service.spec.target.immutable is True
    assert order_service.spec.data[0].remote_ref.version.startswith("uuid/")
    assert order_service.spec.data[1].remote_ref.decoding_strategy == "Base64"
    assert order_worker.store_ref == ("SecretStore", "pod-identity")  # kind defaults
    assert order_worker.spec.refresh_interval == 3600.0  # ESO's default
    assert order_worker.spec.target.creation_policy == "Owner"
    assert order_worker.spec.target.deletion_policy == "Retain"
    assert order_worker.spec.data == []
    assert order_worker.spec.data_from[0].extract.decoding_strategy == "Auto"


def test_vault_manifests_load(tmp_path: Path) -> None:
    declarations = load_declarations([write(tmp_path, "vault.yaml", VAULT_V1)])

    kv = declarations.stores[("SecretStore", "vault-kv")].spec.provider.vault
    assert kv is not None
    assert kv.server == "https://vault.example.internal:8200"  # trailing slash dropped
    assert kv.path == "secret"
    assert kv.namespace == "team-orders"
    assert kv.ca_provider is not None
    assert kv.ca_provider.type == "ConfigMap"
    assert kv.auth.kubernetes is not None
    assert kv.auth.kubernetes.mount_path == "kubernetes-prod"
    assert kv.auth.kubernetes.service_account_ref.audiences == ["vault"]

    approle = declarations.stores[("ClusterSecretStore", "vault-approle")].spec.provider.vault
    assert approle is not None
    assert approle.version == "v1"
    assert approle.auth.app_role is not None
    assert approle.auth.app_role.path == "approle-ci"
    assert approle.auth.app_role.role_id is None
    assert approle.auth.app_role.role_ref.key == "role-id"

    token = declarations.stores[("ClusterSecretStore", "vault-token")].spec.provider.vault
    assert token is not None
    assert token.ca_bundle.startswith("LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t")
    assert token.auth.namespace == "admin"
    assert token.auth.token_secret_ref.name == "vault-token"

    minimal = declarations.stores[("SecretStore", "vault-minimal")].spec.provider.vault
    assert minimal is not None
    assert minimal.version == "v2"
    assert minimal.path is None
    assert minimal.auth.kubernetes.mount_path == "kubernetes"
    assert minimal.auth.kubernetes.service_account_ref is None

    [declaration] = declarations.external_secrets
    assert declaration.spec.refresh_interval == 0.0  # fetch once
    assert declaration.spec.data[1].secret_key == "application.properties"
    assert declaration.spec.data[1].remote_ref.property_path == "spring.properties"
    assert declaration.spec.data_from[0].extract.version == "4"


def test_agent_api_version_and_file_annotations(tmp_path: Path) -> None:
    documents = base_documents()
    for document in documents:
        document["apiVersion"] = "secrets-agent.io/v1alpha1"
    documents[2]["metadata"]["annotations"] = {
        "secrets-agent.io/file-mode": "0440",
        "secrets-agent.io/file-gid": "2000",
    }
    declarations = load_declarations([write(tmp_path, "agent.yaml", dump(documents))])

    [declaration] = declarations.external_secrets
    ownership = declaration.ownership(FileOwnership(mode=0o400, uid=1000, gid=None))
    assert declaration.file_mode == 0o440
    assert declaration.file_uid is None
    assert declaration.file_gid == 2000
    assert ownership == FileOwnership(mode=0o440, uid=1000, gid=2000)


def test_json_declarations_load(tmp_path: Path) -> None:
    store, vault_store, external_secret = base_documents()
    write(tmp_path, "stores.json", json.dumps(store, indent="\t"))
    write(tmp_path, "external-secret.json", json.dumps(external_secret))

    declarations = load_declarations([tmp_path])

    assert list(declarations.stores) == [("SecretStore", "aws-ssm")]
    assert declarations.external_secrets[0].origin.source == str(tmp_path / "external-secret.json")
    assert declarations.external_secrets[0].origin.document == 1


def test_null_fields_count_as_absent(tmp_path: Path) -> None:
    text = dump(base_documents()).replace("  target:\n    name: payment-secrets\n", "  target:\n")
    text = text.replace("refreshInterval: 1h", "refreshInterval:")

    declarations = load_declarations([write(tmp_path, "nulls.yaml", text)])

    [declaration] = declarations.external_secrets
    assert declaration.target == "payment"
    assert declaration.spec.refresh_interval == 3600.0


def test_yaml_anchors_and_merge_keys(tmp_path: Path) -> None:
    stores = dump(base_documents()[:1])
    external_secret = """\
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: payment}
spec:
  secretStoreRef: {name: aws-ssm}
  data:
  - secretKey: db-user
    remoteRef: &db {key: /production/payment/db, property: user}
  - secretKey: db-password
    remoteRef:
      <<: *db
      property: password
"""
    declarations = load_declarations(
        [write(tmp_path, "stores.yaml", stores), write(tmp_path, "app.yaml", external_secret)]
    )

    data = declarations.external_secrets[0].spec.data
    assert data[1].remote_ref.key == "/production/payment/db"
    assert data[1].remote_ref.property_path == "password"
    assert data[0].remote_ref.property_path == "user"


def test_nested_secret_keys_when_allowed(tmp_path: Path) -> None:
    documents = base_documents()
    documents[2]["spec"]["data"][0]["secretKey"] = "tls/tls.key"
    documents[2]["spec"]["data"][1]["secretKey"] = "tls/ca/ca.crt"

    declarations = load_declarations(
        [write(tmp_path, "nested.yaml", dump(documents))], allow_nested=True
    )

    keys = [item.secret_key for item in declarations.external_secrets[0].spec.data]
    assert keys == ["tls/tls.key", "tls/ca/ca.crt"]


def test_thousand_external_secrets_load(tmp_path: Path) -> None:
    store = base_documents()[0]
    documents = [store]
    for number in range(1000):
        external_secret = base_documents()[2]
        external_secret["metadata"]["name"] = f"service-{number}"
        external_secret["spec"]["target"]["name"] = f"service-{number}"
        documents.append(external_secret)
    path = write(tmp_path, "many.yaml", dump(documents))

    declarations = load_declarations([path])

    assert len(declarations.external_secrets) == 1000
    assert declarations.external_secrets[-1].origin.document == 1001
    assert declarations.external_secrets[-1].target == "service-999"
