"""An in-process HashiCorp Vault API emulator for tests, the demo and benchmarks.

It responds over real HTTP (or HTTPS) the way Vault 1.1x does. Its conformance tests drive it
with hvac 2.4 and check Vault's replies for: the `/v1/` transport (LIST and `?list=true`,
`X-Vault-Token` and `Authorization: Bearer`, namespaces), the success and error envelopes,
`sys/health`, `sys/seal-status`, `sys/mounts`, `sys/internal/ui/mounts`, policies, token auth,
Kubernetes, AppRole and JWT logins, KV v1 and v2, the `database` engine and `sys/leases`.

Use it as a context manager:

    with VaultEmulator() as vault:
        client = hvac.Client(url=vault.url, token=vault.root_token)

Limitation: response wrapping, batch tokens, token roles, cubbyhole, identity, static database
roles and the AWS engine are not emulated; requests for them get a 400 or 404 naming the path.
"""

from .emulator import VaultEmulator
from .leases import CredentialHooks
from .state import RequestRecord
from .tls import CertificateFiles, write_test_certificates

__all__ = [
    "CertificateFiles",
    "CredentialHooks",
    "RequestRecord",
    "VaultEmulator",
    "write_test_certificates",
]
